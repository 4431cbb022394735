import numpy as np
import jax.numpy as jnp

from gmcl import evaluation
from gmcl.data import tasks


def test_forgetting_and_backward_transfer_by_hand():
  R = np.array([[1.0, 0.0, 0.0],
                [0.8, 0.9, 0.0],
                [0.6, 0.7, 1.0]])
  # forgetting: mean(max(1.0, 0.8) - 0.6, 0.9 - 0.7) = mean(0.4, 0.2)
  np.testing.assert_allclose(evaluation.average_forgetting(R), 0.3)
  # BWT: mean(0.6 - 1.0, 0.7 - 0.9)
  np.testing.assert_allclose(evaluation.backward_transfer(R), -0.3)
  assert evaluation.average_forgetting(R[:1, :1]) == 0.0


def test_class_incremental_row_and_A_t():
  # Test set: classes 0..3, a predictor that always says "the largest active class seen".
  y = np.array([0, 0, 1, 1, 1, 2, 3, 3], np.int32)
  x = y.astype(np.float32).reshape(-1, 1, 1, 1)
  seq = tasks.split_tasks(4, 2)

  def predictor(xb):  # right on classes 0 and 2, wrong on 1 and 3
    v = xb[:, 0, 0, 0]
    return jnp.stack([v == 0, jnp.zeros_like(v), v >= 2, jnp.zeros_like(v)], -1).astype(jnp.float32)

  out = evaluation.evaluate_after_task(predictor, x, y, seq, 1, batch_size=3)
  np.testing.assert_allclose(out["row"], [2 / 5, 1 / 3])
  np.testing.assert_allclose(out["A"], 3 / 8)  # weighted by examples, not by tasks
  out0 = evaluation.evaluate_after_task(predictor, x, y, seq, 0, batch_size=100)
  np.testing.assert_allclose(out0["A"], 2 / 5)


def test_predict_labels_pads_the_last_batch():
  x = np.arange(7, dtype=np.float32).reshape(7, 1, 1, 1)
  calls = []

  def fn(xb):
    calls.append(xb.shape[0])
    return jnp.stack([xb[:, 0, 0, 0] % 2, 1 - xb[:, 0, 0, 0] % 2], -1)

  pred = evaluation.predict_labels(fn, x, batch_size=3)
  np.testing.assert_array_equal(pred, [1, 0, 1, 0, 1, 0, 1])
  assert set(calls) == {3}  # one batch shape: one compile


def test_format_table():
  text = evaluation.format_table([1.0, 0.5])
  assert "A_1" in text and "A_2" in text and "100.00" in text and "50.00" in text
