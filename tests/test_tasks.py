import numpy as np
import pytest

from gmcl.data import sampling, tasks


def test_per_class_tasks_have_one_class_each_in_order():
  seq = tasks.per_class_tasks(10)
  assert len(seq) == 10
  assert [t.classes for t in seq] == [(c,) for c in range(10)]
  assert seq.scenario == "class_incremental"
  assert seq.seen_classes(4) == (0, 1, 2, 3, 4)
  np.testing.assert_array_equal(seq.active_mask(2), [1, 1, 1] + [0] * 7)


def test_split_tasks_follow_class_order():
  order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
  seq = tasks.split_tasks(10, 2, order)
  assert [t.classes for t in seq] == [(9, 8), (7, 6), (5, 4), (3, 2), (1, 0)]
  assert seq.seen_classes(1) == (9, 8, 7, 6)


@pytest.mark.parametrize("order", [[0, 1, 2], [0] * 10, list(range(1, 11))])
def test_bad_class_order_is_refused(order):
  with pytest.raises(ValueError, match="permutation of 0..9"):
    tasks.per_class_tasks(10, order)


def test_split_needs_a_divisor():
  with pytest.raises(ValueError, match="classes_per_task=3"):
    tasks.split_tasks(10, 3)


def test_permuted_tasks_are_fixed_permutations():
  a = tasks.permuted_tasks(3, 16, seed=7)
  b = tasks.permuted_tasks(3, 16, seed=7)
  for ta, tb in zip(a, b):
    np.testing.assert_array_equal(ta.permutation, tb.permutation)  # fixed by the seed
    assert sorted(ta.permutation) == list(range(16))
    assert ta.classes == tuple(range(10))
  assert not np.array_equal(a[0].permutation, a[1].permutation)
  first = tasks.permuted_tasks(2, 16, first_identity=True)
  np.testing.assert_array_equal(first[0].permutation, np.arange(16))


def _toy(n_per_class=3, size=4):
  y = np.repeat(np.arange(10), n_per_class).astype(np.int32)
  x = np.arange(y.size * size * size, dtype=np.float32).reshape(y.size, size, size, 1)
  return x, y


def test_task_examples_select_classes_and_accumulate():
  x, y = _toy()
  seq = tasks.split_tasks(10, 2)
  xt, yt = tasks.task_examples(x, y, seq, 1)
  assert sorted(set(yt)) == [2, 3] and len(yt) == 6
  np.testing.assert_array_equal(xt, x[np.isin(y, [2, 3])])
  xc, yc = tasks.task_examples(x, y, seq, 2, cumulative=True)
  assert sorted(set(yc)) == [0, 1, 2, 3, 4, 5] and len(yc) == 18
  with pytest.raises(ValueError, match="task index 5"):
    tasks.task_examples(x, y, seq, 5)


def test_permuted_examples_move_pixels_not_labels():
  x, y = _toy()
  seq = tasks.permuted_tasks(2, 16, seed=1)
  xt, yt = tasks.task_examples(x, y, seq, 1)
  np.testing.assert_array_equal(yt, y)
  perm = seq[1].permutation
  np.testing.assert_array_equal(xt.reshape(len(y), 16)[:, :], x.reshape(len(y), 16)[:, perm])
  xc, yc = tasks.task_examples(x, y, seq, 1, cumulative=True)
  assert xc.shape[0] == 2 * x.shape[0] and yc.shape[0] == 2 * y.shape[0]


def test_preprocess_pads_and_scales():
  img = np.full((2, 28, 28, 1), 255, np.uint8)
  img[0, 0, 0, 0] = 0
  out = tasks.preprocess_images(img, pad_to=32, value_range=(-1.0, 1.0))
  assert out.shape == (2, 32, 32, 1) and out.dtype == np.float32
  assert out[0, 2, 2, 0] == -1.0  # the zero pixel, shifted by the 2-pixel pad
  assert out[0, 2, 3, 0] == 1.0
  assert np.all(out[:, :2] == -1.0) and np.all(out[:, :, -2:] == -1.0)  # padding is black
  unit = tasks.preprocess_images(img, value_range=(0.0, 1.0))
  assert unit.shape == (2, 28, 28, 1) and unit.max() == 1.0 and unit.min() == 0.0
  with pytest.raises(ValueError, match="uint8"):
    tasks.preprocess_images(img.astype(np.float32))
  with pytest.raises(ValueError, match="pad_to=20"):
    tasks.preprocess_images(img, pad_to=20)


def test_sampling_never_reads_padding():
  import jax
  x = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1) + 1.0
  y = np.arange(5, dtype=np.int32)
  data = sampling.task_arrays(x, y, capacity=50)
  assert data.x.shape == (50, 1, 1, 1) and int(data.count) == 5
  xb, yb = sampling.sample_batch(data, jax.random.PRNGKey(0), 4000)
  assert set(np.asarray(yb).tolist()) == set(range(5))  # all real rows, no padding rows
  np.testing.assert_array_equal(np.asarray(xb)[:, 0, 0, 0], np.asarray(yb) + 1.0)
  with pytest.raises(ValueError, match="capacity=3"):
    sampling.task_arrays(x, y, capacity=3)
