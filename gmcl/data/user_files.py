"""SVHN, CIFAR-10 and ImageNet32 (for ImageNet-50) from a user's own files, stored under TFDS's
built-in names.

No package index ships these datasets (each is over an index's size limit), and TFDS's builders
only download them. A user who has the original files (a TPU VM's bucket, a lab's share) puts
them in one folder and runs ``python -m gmcl.data.prepare NAME --manual_dir DIR``; the files are
parsed here and stored as the built-in TFDS dataset (same name, version and features, examples in
the files' order, TFDS's ``id`` strings), so ``tfds.builder(NAME)`` loads them as a download.

* ``svhn_cropped``: ``train_32x32.mat`` and ``test_32x32.mat`` (``extra_32x32.mat`` too, if
  present), MATLAB files with ``X`` (32, 32, 3, N) and ``y`` (N, 1) in 1..10, 10 meaning the
  digit 0 (TFDS's labels: ``y % 10``).
* ``cifar10``: ``cifar-10-binary.tar.gz`` (TFDS's own download: ``cifar-10-batches-bin/
  data_batch_{1..5}.bin`` and ``test_batch.bin``, records of 1 label byte and 3072 image bytes,
  channel-major) or ``cifar-10-python.tar.gz`` (``cifar-10-batches-py/``: pickled batches with
  ``data`` (N, 3072) and ``labels``).
* ``imagenet50``: ``Imagenet32_train_npz.zip`` and ``Imagenet32_val_npz.zip`` (the downsampled
  ImageNet of Chrabaszcz et al. 2017, TFDS's own download for ``imagenet_resized/32x32``), stored
  as that dataset with all 1000 classes; ImageNet-50 keeps its fifty when it loads.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from typing import Optional

import numpy as np

# name -> (file, size in bytes of the original, what it holds); the first of CIFAR's suffices
FILES = {
    "svhn_cropped": (("train_32x32.mat", 182_040_794, "the training split"),
                     ("test_32x32.mat", 64_275_384, "the test split"),
                     ("extra_32x32.mat", None, "optional: the extra split, about 1.3 GB")),
    "cifar10": (("cifar-10-binary.tar.gz", 170_052_171, "TFDS's own download (binary batches)"),
                ("cifar-10-python.tar.gz", 170_498_071, "or: the python version (pickled batches)")),
    # stored as TFDS's imagenet_resized/32x32, all 1000 classes (ImageNet-50 filters its fifty)
    "imagenet50": (("Imagenet32_train_npz.zip", None, "Imagenet32's training batches, train_data_batch_*.npz"),
                   ("Imagenet32_val_npz.zip", None, "Imagenet32's validation batch, val_data.npz")),
}
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def supported(name: str) -> bool:
  return name in FILES


def what_to_put_where(name: str, manual_dir: str = "DIR", data_dir: Optional[str] = None) -> str:
  """The message for a missing file: which files, of which sizes, in which folder, and the command."""
  lines = [f"Put these files (as distributed; sizes of the originals) in {manual_dir}:"]
  lines += [f"  {f}  (" + (f"{size:,} bytes; " if size else "") + f"{what})" for f, size, what in FILES[name]]
  lines.append(f"then run: python -m gmcl.data.prepare {name} --manual_dir {manual_dir}"
               + (f" --data_dir {data_dir}" if data_dir else ""))
  return "\n".join(lines)


def read_svhn_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
  """``(images (N, 32, 32, 3) uint8, labels (N,) int64 in 0..9)`` of a ``*_32x32.mat`` file."""
  import scipy.io  # pylint: disable=import-outside-toplevel
  data = scipy.io.loadmat(path)
  if "X" not in data or "y" not in data:
    raise ValueError(f"{path}: holds {sorted(k for k in data if not k.startswith('__'))}; an SVHN "
                     "cropped-digits file holds X (32, 32, 3, N) and y (N, 1).")
  x, y = np.asarray(data["X"]), np.asarray(data["y"]).reshape(-1)
  if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
    raise ValueError(f"{path}: X is {x.shape} and y {data['y'].shape}; expected (32, 32, 3, N) and (N, 1).")
  if y.size and (y.min() < 1 or y.max() > 10):
    raise ValueError(f"{path}: labels in [{y.min()}, {y.max()}]; SVHN's are 1..10 (10: the digit 0).")
  return np.ascontiguousarray(np.moveaxis(x, -1, 0).astype(np.uint8)), (y % 10).astype(np.int64)


def _cifar_binary(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  record = 1 + 3072
  if len(blob) % record:
    raise ValueError(f"{where}: {len(blob)} bytes is not a whole number of {record}-byte CIFAR-10 records.")
  rows = np.frombuffer(blob, np.uint8).reshape(-1, record)
  images = rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), rows[:, 0].astype(np.int64)


def _cifar_pickle(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  batch = pickle.load(io.BytesIO(blob), encoding="bytes")  # the files CIFAR-10's authors wrote
  data, labels = batch.get(b"data"), batch.get(b"labels")
  if data is None or labels is None:
    raise ValueError(f"{where}: a pickled CIFAR-10 batch holds b'data' and b'labels'; it holds {sorted(batch)}.")
  data = np.asarray(data, np.uint8)
  if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels):
    raise ValueError(f"{where}: data is {data.shape} with {len(labels)} labels; expected (N, 3072).")
  return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), np.asarray(labels, np.int64)


def read_cifar10(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{"train": (images, labels), "test": ...}`` of ``cifar-10-binary.tar.gz`` or
  ``cifar-10-python.tar.gz`` (told apart by their folder inside)."""
  with tarfile.open(path, "r:gz") as tar:
    names = {m.name: m for m in tar.getmembers() if m.isfile()}
    binary = any(n.startswith("cifar-10-batches-bin/") for n in names)
    folder, suffix, parse = (("cifar-10-batches-bin/", ".bin", _cifar_binary) if binary
                             else ("cifar-10-batches-py/", "", _cifar_pickle))
    out = {}
    for split, files in (("train", CIFAR_TRAIN), ("test", ("test_batch",))):
      parts = []
      for f in files:
        member = folder + f + suffix
        if member not in names:
          raise ValueError(f"{path}: {member} is missing; a CIFAR-10 archive holds {folder}"
                           f"{{{', '.join(CIFAR_TRAIN)}, test_batch}}{suffix}.")
        parts.append(parse(tar.extractfile(names[member]).read(), f"{path}:{member}"))
      out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
  for split, (_, y) in out.items():
    if y.size and (y.min() < 0 or y.max() > 9):
      raise ValueError(f"{path}: {split} labels in [{y.min()}, {y.max()}]; CIFAR-10's are 0..9.")
  return out


def iter_imagenet32(path: str):
  """``(key, image (32, 32, 3) uint8, label 0..999)`` of an Imagenet32 ``*_npz.zip``, in TFDS's
  order and keys (each member's ``data`` (N, 3072) channel-major rows and 1-based ``labels``)."""
  import zipfile  # pylint: disable=import-outside-toplevel
  with zipfile.ZipFile(path) as z:
    members = [m for m in z.namelist() if m.endswith(".npz")]
    if not members:
      raise ValueError(f"{path} holds no .npz batch; an Imagenet32 archive holds train_data_batch_*.npz "
                       "or val_data.npz.")
    for member in members:  # the archive's order, as TFDS's builder reads it
      with np.load(io.BytesIO(z.read(member)), allow_pickle=False) as batch:
        if "data" not in batch.files or "labels" not in batch.files:
          raise ValueError(f"{path}:{member} holds {batch.files}; an Imagenet32 batch holds data and labels.")
        data, labels = batch["data"], batch["labels"]
      if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise ValueError(f"{path}:{member}: data {data.shape} with {len(labels)} labels; expected (N, 3072).")
      if len(labels) and (min(labels) < 1 or max(labels) > 1000):
        raise ValueError(f"{path}:{member}: labels in [{min(labels)}, {max(labels)}]; Imagenet32's are 1..1000.")
      images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
      for i in range(images.shape[0]):
        yield os.path.basename(member) + str(i), np.ascontiguousarray(images[i], np.uint8), int(labels[i]) - 1


def _import_imagenet32(manual_dir: str, data_dir: str) -> str:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  paths = {split: os.path.join(manual_dir, f) for split, (f, _, _) in zip(("train", "validation"),
                                                                          FILES["imagenet50"])}
  missing = [os.path.basename(p) for p in paths.values() if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"{manual_dir} lacks {missing}.\n" + what_to_put_where("imagenet50", manual_dir))
  reference = tfds.builder("imagenet_resized/32x32", data_dir=data_dir)
  examples = {split: ((key, {"image": image, "label": label}) for key, image, label in iter_imagenet32(path))
              for split, path in paths.items()}
  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name="imagenet_resized", config="32x32", version=str(reference.version), features=reference.info.features,
      split_datasets=examples, data_dir=data_dir, disable_shuffling=True,
      description="imagenet_resized/32x32 imported from the user's Imagenet32 files by gmcl.data.user_files.")
  return str(builder.data_path)


def read_user_files(name: str, manual_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The splits in ``manual_dir``'s files of dataset ``name``.

  Raises:
    FileNotFoundError: a file is missing; the message names the files, their sizes and the command.
  """
  if name == "svhn_cropped":
    needed = [f for f, _, _ in FILES[name][:2] if not os.path.exists(os.path.join(manual_dir, f))]
    if needed:
      raise FileNotFoundError(f"{manual_dir} lacks {needed}.\n" + what_to_put_where(name, manual_dir))
    return {split: read_svhn_mat(os.path.join(manual_dir, f"{split}_32x32.mat"))
            for split in ("train", "test", "extra") if os.path.exists(os.path.join(manual_dir, f"{split}_32x32.mat"))}
  if name == "cifar10":
    for f, _, _ in FILES[name]:
      if os.path.exists(os.path.join(manual_dir, f)):
        return read_cifar10(os.path.join(manual_dir, f))
    raise FileNotFoundError(f"{manual_dir} holds neither {FILES[name][0][0]} nor {FILES[name][1][0]}.\n"
                            + what_to_put_where(name, manual_dir))
  raise ValueError(f"read_user_files: {name!r} is not read from user files; valid: {sorted(FILES)}.")


def import_user_files(name: str, manual_dir: str, *, data_dir: Optional[str] = None) -> str:
  """Parses ``manual_dir``'s files and stores them as the built-in TFDS dataset ``name``; returns
  the prepared dataset's path."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from gmcl.data.sources import default_data_dir  # pylint: disable=import-outside-toplevel
  data_dir = data_dir or default_data_dir()
  if name == "imagenet50":
    return _import_imagenet32(manual_dir, data_dir)
  splits = read_user_files(name, manual_dir)
  reference = tfds.builder(name, data_dir=data_dir)
  width = 6 if name == "svhn_cropped" else 5  # TFDS's id strings: train_000001 / train_00001
  examples = {split: [(i, {"id": f"{split}_{i:0{width}d}", "image": x[i], "label": int(y[i])})
                      for i in range(x.shape[0])] for split, (x, y) in splits.items()}
  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version=str(reference.version), features=reference.info.features,
      split_datasets=examples, data_dir=data_dir, disable_shuffling=True,
      description=f"{name} imported from the user's files by gmcl.data.user_files.import_user_files.")
  return str(builder.data_path)
