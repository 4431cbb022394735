"""SVHN and CIFAR-10 (binary and python archives) from a user's files, on small files generated in
the real formats: prepare -> TFDS load under the built-in name -> a smoke training; missing files
named with their sizes."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from gmcl import loop
from gmcl.data import prepare, sources, user_files


def _svhn(folder, n=(40, 20), seed=0):
  import scipy.io  # pylint: disable=import-outside-toplevel
  rng, out = np.random.default_rng(seed), {}
  for split, count in zip(("train", "test"), n):
    x = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
    y = (np.arange(count) % 10 + 1).reshape(-1, 1)  # 1..10, 10 for the digit 0
    scipy.io.savemat(os.path.join(folder, f"{split}_32x32.mat"), {"X": x, "y": y})
    out[split] = (np.moveaxis(x, -1, 0), y.reshape(-1) % 10)
  return out


def _cifar(folder, kind, per_batch=10, seed=0):
  """``cifar-10-binary.tar.gz`` or ``cifar-10-python.tar.gz`` with 5 train batches and a test batch."""
  rng, out = np.random.default_rng(seed), {"train": [], "test": []}
  inner = "cifar-10-batches-bin" if kind == "binary" else "cifar-10-batches-py"
  path = os.path.join(folder, f"cifar-10-{kind}.tar.gz")
  with tarfile.open(path, "w:gz") as tar:
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
      chw = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
      labels = (rng.permutation(per_batch) % 10).astype(np.uint8)  # every class in every batch
      if kind == "binary":
        blob = b"".join(bytes([labels[i]]) + chw[i].tobytes() for i in range(per_batch))
        member = f"{inner}/{name}.bin"
      else:
        blob = pickle.dumps({b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                             b"data": chw.reshape(per_batch, 3072), b"filenames": [b"x.png"] * per_batch})
        member = f"{inner}/{name}"
      info = tarfile.TarInfo(member)
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
      out["test" if name == "test_batch" else "train"].append((chw.transpose(0, 2, 3, 1), labels))
  return {k: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for k, v in out.items()}


def _check_loaded(name, data_dir, expected):
  for split, (x, y) in expected.items():
    images, labels = sources.load_split(name, split, data_dir=data_dir, prepare=False)
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)


def _smoke_train(name, data_dir, workdir):
  from experiments.configs import dgr  # pylint: disable=import-outside-toplevel
  c = dgr.get_config(f"dataset={name},smoke")
  c.data.data_dir, c.data.max_tasks, c.model.gan = data_dir, 2, "mlp"
  res = loop.run(c, workdir, progress=False, log=lambda s: None)
  assert res["completed_tasks"] == 2 and res["dataset"] == name and 0.0 <= res["A"][-1] <= 1.0


def test_svhn_from_its_mat_files(tmp_path):
  manual, data_dir = tmp_path / "files", str(tmp_path / "tfds")
  manual.mkdir()
  expected = _svhn(str(manual))
  assert expected["train"][1].min() == 0  # label 10 became the digit 0
  sources.prepare_dataset("svhn_cropped", data_dir=data_dir, manual_dir=str(manual), source="manual")
  assert sources.is_prepared("svhn_cropped", data_dir)
  _check_loaded("svhn_cropped", data_dir, expected)
  _smoke_train("svhn_cropped", data_dir, str(tmp_path / "run"))


@pytest.mark.parametrize("kind", ["binary", "python"])
def test_cifar10_from_either_archive(tmp_path, kind):
  manual, data_dir = tmp_path / "files", str(tmp_path / "tfds")
  manual.mkdir()
  expected = _cifar(str(manual), kind)
  assert prepare.main(["cifar10", "--manual_dir", str(manual), "--data_dir", data_dir]) == 0
  _check_loaded("cifar10", data_dir, expected)
  if kind == "binary":
    _smoke_train("cifar10", data_dir, str(tmp_path / "run"))


def test_missing_files_are_named_with_their_sizes(tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  for name, files in (("svhn_cropped", ["train_32x32.mat", "182,040,794", "test_32x32.mat", "64,275,384"]),
                      ("cifar10", ["cifar-10-binary.tar.gz", "170,052,171", "cifar-10-python.tar.gz"])):
    code = prepare.main([name, "--manual_dir", str(empty), "--data_dir", str(tmp_path / "tfds")])
    err = capsys.readouterr().err
    assert code == 2 and all(f in err for f in files), err
    assert f"python -m gmcl.data.prepare {name} --manual_dir {empty}" in err
  with pytest.raises(sources.DatasetUnavailableError, match="train_32x32.mat"):  # no files given at all
    sources.prepare_dataset("svhn_cropped", data_dir=str(tmp_path / "tfds"), source="manual")


def test_malformed_files_are_refused_naming_what_is_wrong(tmp_path):
  import scipy.io  # pylint: disable=import-outside-toplevel
  scipy.io.savemat(str(tmp_path / "train_32x32.mat"), {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": [[1], [2]]})
  with pytest.raises(ValueError, match=r"expected \(32, 32, 3, N\)"):
    user_files.read_svhn_mat(str(tmp_path / "train_32x32.mat"))
  with tarfile.open(tmp_path / "cifar-10-binary.tar.gz", "w:gz") as tar:
    info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
    info.size = 100
    tar.addfile(info, io.BytesIO(b"\0" * 100))
  with pytest.raises(ValueError, match="not a whole number of 3073-byte"):
    user_files.read_cifar10(str(tmp_path / "cifar-10-binary.tar.gz"))


def _imagenet32(folder, per_class=2, seed=0):
  """Imagenet32_{train,val}_npz.zip holding images of ImageNet-50's classes and of three others;
  returns, per split, the images and 0-based source labels in the files' order."""
  import zipfile  # pylint: disable=import-outside-toplevel
  rng, out = np.random.default_rng(seed), {}
  labels_all = np.array(list(sources.IMAGENET50_CLASSES) * per_class + [0, 500, 999])  # 0-based
  for split, members in (("train", ("train_data_batch_1.npz", "train_data_batch_2.npz")),
                         ("validation", ("val_data.npz",))):
    xs, ys = [], []
    path = os.path.join(folder, f"Imagenet32_{'train' if split == 'train' else 'val'}_npz.zip")
    with zipfile.ZipFile(path, "w") as z:
      for member in members:
        labels = rng.permutation(labels_all)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, data=data, labels=labels + 1)  # Imagenet32's labels are 1-based
        z.writestr(member, buf.getvalue())
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    out[split] = (np.concatenate(xs), np.concatenate(ys))
  return out


def test_imagenet50_constants_are_the_dgm_codes_classes_in_tfds_label_order():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  path = tfds.core.tfds_path("image_classification/imagenet_resized_labels.txt")
  wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
  chosen = [sorted(wnids)[i] for i in sources.DGM_IMAGENET_POSITIONS]
  assert tuple(chosen) == sources.IMAGENET50_WNIDS
  assert tuple(wnids.index(w) for w in chosen) == sources.IMAGENET50_CLASSES
  assert sources.imagenet50_classes("") == sources.IMAGENET50_CLASSES
  with pytest.raises(ValueError, match="imagenet50_classes='1,2'.*50 distinct"):
    sources.imagenet50_classes("1,2")


def test_imagenet50_from_the_imagenet32_files(tmp_path):
  from experiments.configs import dgr  # pylint: disable=import-outside-toplevel
  from gmcl.data.build import load_data  # pylint: disable=import-outside-toplevel
  manual, data_dir = tmp_path / "files", str(tmp_path / "tfds")
  manual.mkdir()
  files = _imagenet32(str(manual))
  assert prepare.main(["imagenet50", "--manual_dir", str(manual), "--data_dir", data_dir]) == 0
  assert sources.is_prepared("imagenet50", data_dir)  # stored as imagenet_resized/32x32
  c = dgr.get_config("dataset=imagenet50,protocol=split,smoke")
  c.data.data_dir, c.data.classes_per_task, c.data.pad_to, c.data.value_range = data_dir, 10, 32, (0.0, 255.0)
  data = load_data(c)
  position = {label: k for k, label in enumerate(sources.IMAGENET50_CLASSES)}
  for x, y, (src_x, src_y) in ((data.x_train, data.y_train, files["train"]),
                               (data.x_test, data.y_test, files["validation"])):
    keep = np.isin(src_y, sources.IMAGENET50_CLASSES)  # the three other classes are left out
    np.testing.assert_array_equal(y, [position[v] for v in src_y[keep]])
    np.testing.assert_array_equal(x, src_x[keep].astype(np.float32))
  assert data.num_classes == 50 and sorted(set(data.y_train.tolist())) == list(range(50))
  # another list of fifty, in its own order
  c.data.imagenet50_classes = ",".join(map(str, sources.IMAGENET50_CLASSES[::-1]))
  assert load_data(c).y_test.tolist() == [49 - position[v] for v in files["validation"][1] if v in position]
  # and a smoke training on five tasks of ten classes
  c = dgr.get_config("dataset=imagenet50,protocol=split,smoke")
  c.data.data_dir, c.data.classes_per_task, c.data.max_tasks, c.model.gan = data_dir, 10, 2, "mlp"
  res = loop.run(c, str(tmp_path / "run"), progress=False, log=lambda s: None)
  assert res["tasks"][1] == list(range(10, 20)) and res["completed_tasks"] == 2


def test_imagenet50_without_files_names_them(tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  assert prepare.main(["imagenet50", "--manual_dir", str(empty), "--data_dir", str(tmp_path / "tfds")]) == 2
  err = capsys.readouterr().err
  assert "Imagenet32_train_npz.zip" in err and "Imagenet32_val_npz.zip" in err
