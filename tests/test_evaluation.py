import numpy as np
import jax.numpy as jnp
import pytest

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
  # the DGM code's average: each task's accuracy weighs alike, (2/5 + 1/3) / 2, whatever the tasks' sizes
  tasks_mean = evaluation.evaluate_after_task(predictor, x, y, seq, 1, batch_size=3, average="tasks")
  np.testing.assert_allclose(tasks_mean["A"], (2 / 5 + 1 / 3) / 2)
  np.testing.assert_allclose(tasks_mean["row"], out["row"])  # the row is the same either way
  np.testing.assert_allclose(evaluation.evaluate_after_task(predictor, x, y, seq, 0, average="tasks")["A"], 2 / 5)


def test_A_t_per_class_average_is_the_mean_of_the_classes_accuracies():
  # one class per task, unequal test sets: class 0 has 4 images (3 right), class 1 has 1 (wrong)
  y = np.array([0, 0, 0, 0, 1], np.int32)
  x = np.array([0, 0, 0, 5, 1], np.float32).reshape(-1, 1, 1, 1)
  seq = tasks.split_tasks(2, 1)
  predictor = lambda xb: jnp.stack([xb[:, 0, 0, 0] == 0, xb[:, 0, 0, 0] == 5], -1).astype(jnp.float32)
  pooled = evaluation.evaluate_after_task(predictor, x, y, seq, 1)
  classes = evaluation.evaluate_after_task(predictor, x, y, seq, 1, average="tasks")
  assert pooled["A"] == 3 / 5 and classes["A"] == (3 / 4 + 0) / 2
  assert pooled["per_class"] == classes["per_class"] == {0: 0.75, 1: 0.0}
  with pytest.raises(ValueError, match=r"average='classes'; valid: \['examples', 'tasks'\]"):
    evaluation.evaluate_after_task(predictor, x, y, seq, 1, average="classes")


def test_per_class_accuracy_and_confusion_by_hand():
  y = np.array([0, 0, 1, 1, 1, 2, 3, 3], np.int32)
  x = y.astype(np.float32).reshape(-1, 1, 1, 1)
  seq = tasks.split_tasks(4, 2)

  def predictor(xb):  # classes 0 and 2 right; 1 -> 0; 3 -> 2
    v = xb[:, 0, 0, 0]
    return jnp.stack([v <= 1, jnp.zeros_like(v), v >= 2, jnp.zeros_like(v)], -1).astype(jnp.float32)

  out = evaluation.evaluate_after_task(predictor, x, y, seq, 0, batch_size=100)
  assert out["per_class"] == {0: 1.0, 1: 0.0}  # the classes seen only
  np.testing.assert_array_equal(out["confusion"], [[2, 0, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  out = evaluation.evaluate_after_task(predictor, x, y, seq, 1, batch_size=100)
  assert out["per_class"] == {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0}
  np.testing.assert_array_equal(out["confusion"], [[2, 0, 0, 0], [3, 0, 0, 0], [0, 0, 1, 0], [0, 0, 2, 0]])
  assert out["confusion"].sum() == len(y)


def test_forward_transfer_and_intransigence_by_hand():
  R = np.array([[0.9, 0.3, 0.2],
                [0.8, 0.9, 0.4],
                [0.7, 0.8, 0.9]])
  b = np.array([0.1, 0.1, 0.1])
  # FWT: mean(R[0,1] - b1, R[1,2] - b2) = mean(0.2, 0.3)
  np.testing.assert_allclose(evaluation.forward_transfer(R, b), 0.25)
  assert evaluation.forward_transfer(R[:1, :1], b) is None  # one task: nothing to transfer to
  masked = R.copy()
  masked[0, 1] = np.nan  # class-incremental: task 1's classes are not live before it
  assert evaluation.forward_transfer(masked, b) is None
  joint = np.array([[0.95, 0, 0], [0.9, 0.97, 0], [0.9, 0.9, 0.99]])
  np.testing.assert_allclose(evaluation.intransigence(R, joint), [0.05, 0.07, 0.09])
  np.testing.assert_allclose(evaluation.intransigence(R[:2, :2], joint), [0.05, 0.07])


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


def _pool_sampler(x_pool, y_pool):
  """A 'generator' that draws real images of the class it is asked for (by key), or noise."""
  import jax
  by_class = {int(c): jnp.asarray(x_pool[y_pool == c]) for c in np.unique(y_pool)}

  def sample(key, labels):
    c = int(labels[0])
    idx = jax.random.randint(key, (labels.shape[0],), 0, by_class[c].shape[0])
    return by_class[c][idx]
  return sample


def test_reverse_accuracy_tells_a_faithful_generator_from_noise(mnist_data):
  """Samples that are the class's real images teach a fresh MLP the classes (near the real-data
  accuracy); noise teaches nothing; labels from a classifier for an unconditional generator are
  masked to the classes seen."""
  import jax
  from gmcl.evaluation import reverse
  d = mnist_data
  classes = [0, 1, 2]
  faithful = _pool_sampler(d.x_train, d.y_train)
  kwargs = dict(steps=150, per_class=300, sample_batch=100, batch_size=64)
  acc = reverse.reverse_accuracy(faithful, classes, d.x_test, d.y_test, jax.random.PRNGKey(0), 10, **kwargs)
  assert acc > 0.9
  noise = lambda key, labels: jax.random.uniform(key, (labels.shape[0],) + d.x_train.shape[1:], minval=-1.0)
  acc_noise = reverse.reverse_accuracy(noise, classes, d.x_test, d.y_test, jax.random.PRNGKey(0), 10, **kwargs)
  # Noise carries no class: what the classifier learns is an arbitrary rule on real images (chance,
  # 1/3, in expectation over the noise; any one draw lands anywhere), far from the faithful score.
  assert acc_noise < acc - 0.3
  # unconditional: pool of every class, labelled by the true class of each image (a perfect labeller)
  x_all = jnp.asarray(d.x_train[:3000])
  draw = lambda key, labels: x_all[jax.random.randint(key, (labels.shape[0],), 0, x_all.shape[0])]
  lookup = {np.asarray(x).tobytes(): int(y) for x, y in zip(d.x_train[:3000], d.y_train[:3000])}
  labeller = lambda xb: jax.nn.one_hot(jnp.asarray([lookup[np.asarray(x).tobytes()] for x in xb]), 10)
  x, y = reverse.generated_dataset(draw, classes, jax.random.PRNGKey(1), 100, 100, label_fn=labeller,
                                   num_classes=10)
  assert x.shape[0] == 300 and set(np.unique(y)) <= set(classes)  # unseen classes masked to seen ones
  kept = np.isin([lookup[np.asarray(v).tobytes()] for v in x], classes)
  np.testing.assert_array_equal(y[kept], [lookup[np.asarray(v).tobytes()] for v in x[kept]])
