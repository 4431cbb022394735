"""iCaRL: herding's choice, the exemplar budget and its layout, the distillation loss and the
nearest-mean classifier, each against a hand (numpy) computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import icarl as icarl_config
from gmcl.data.sampling import task_arrays
from gmcl.methods import build_method
from gmcl.methods.icarl import herding, sigmoid_distillation_loss
from gmcl.models.classifiers import Classifier

SHAPE = (4, 4, 1)
K = 4


def _numpy_herding(feats, num):
  """Algorithm 4 of the paper, plainly."""
  mu = feats.mean(axis=0)
  chosen, total = [], np.zeros_like(mu)
  for k in range(1, num + 1):
    dist = [np.inf if i in chosen else np.sum((mu - (total + f) / k) ** 2) for i, f in enumerate(feats)]
    i = int(np.argmin(dist))
    chosen.append(i)
    total = total + feats[i]
  return chosen


def test_herding_picks_what_the_algorithm_picks():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(12, 3)).astype(np.float32)
  feats /= np.linalg.norm(feats, axis=1, keepdims=True)
  valid = np.arange(12) < 10  # rows 10, 11 are padding
  got = np.asarray(herding(jnp.asarray(feats), jnp.asarray(valid), 4, 6))
  assert got[:4].tolist() == _numpy_herding(feats[:10], 4)
  assert got[4:].tolist() == [-1, -1]  # beyond num: nothing
  # the first pick is the row nearest the mean; no row is picked twice even when all are asked for
  everything = np.asarray(herding(jnp.asarray(feats), jnp.asarray(valid), 10, 12))
  assert sorted(everything[:10].tolist()) == list(range(10)) and everything[10:].tolist() == [-1, -1]


def test_sigmoid_distillation_loss_by_hand():
  logits = jnp.array([[2.0, -1.0, 0.5, 9.0]])
  teacher = jnp.array([[1.0, 0.0, -3.0, 0.0]])
  new = jnp.array([False, False, True, True])
  active = jnp.array([True, True, True, False])
  sig = lambda v: 1 / (1 + np.exp(-v))
  bce = lambda z, t: -(t * np.log(sig(z)) + (1 - t) * np.log(1 - sig(z)))
  # class 2 is new and the label (target 1); classes 0, 1 old (targets the teacher's sigmoids); 3 inactive
  want = bce(2.0, sig(1.0)) + bce(-1.0, sig(0.0)) + bce(0.5, 1.0)
  got = sigmoid_distillation_loss(logits=logits, labels=jnp.array([2]), teacher_logits=teacher, new=new,
                                  active=active)
  np.testing.assert_allclose(float(got[0]), want, rtol=1e-5)
  plain = sigmoid_distillation_loss(logits=logits, labels=jnp.array([2]), teacher_logits=None, new=new,
                                    active=active)
  np.testing.assert_allclose(float(plain[0]), bce(2.0, 0) + bce(-1.0, 0) + bce(0.5, 1), rtol=1e-5)


def _method(memory=8):
  c = icarl_config.get_config("smoke")
  c.data.protocol, c.data.classes_per_task = "split", 2
  c.model.classifier_hidden = (6,)
  c.train.batch_size = 8
  c.icarl.memory_size = memory
  return build_method("icarl", c, SHAPE, K)


def _data(classes, n=24, seed=0):
  rng = np.random.default_rng(seed)
  y = np.repeat(classes, n // len(classes)).astype(np.int32)
  x = np.clip(rng.uniform(-1, 1, (y.size,) + SHAPE) + y[:, None, None, None] * 0.2, -1, 1).astype(np.float32)
  return task_arrays(x, y, capacity=y.size + 4)


def _features(method, params, x):
  f = np.asarray(method.classifier.apply({"params": params}, x, method=Classifier.encode), np.float64)
  return f / np.linalg.norm(f, axis=1, keepdims=True)


def _task(method, state, t, classes, steps=3):
  state = method.begin_task(state, t, np.isin(np.arange(K), sum(classes, [])))
  data = _data(classes[-1], seed=t)
  for i in range(steps):
    state, _ = jax.jit(method.solver_step)(state, data, jax.random.PRNGKey(10 * t + i))
  state, metrics = jax.jit(method.exemplar_step)(state, data, jax.random.PRNGKey(0))
  return method.end_task(state), data, metrics


def test_exemplars_follow_the_budget_herding_and_the_old_classes_priority():
  method = _method(memory=8)
  state = method.init(jax.random.PRNGKey(0))
  state, data0, m0 = _task(method, state, 0, [[0, 1]])
  assert float(m0["per_class"]) == 4 and float(m0["exemplars"]) == 8  # 8 // 2 classes
  x0 = np.asarray(data0.x)
  for c, rows in ((0, slice(0, 4)), (1, slice(4, 8))):  # rank order: class 0 first
    feats = _features(method, state.solver.params, x0[:int(data0.count)][np.asarray(data0.y)[:int(data0.count)] == c])
    idx = _numpy_herding(feats, 4)
    want = x0[:int(data0.count)][np.asarray(data0.y)[:int(data0.count)] == c][idx]
    np.testing.assert_array_equal(np.asarray(state.exemplars_x[rows]), want)
    assert set(np.asarray(state.exemplars_y[rows]).tolist()) == {c}
  first = np.asarray(state.exemplars_x)
  state, data1, m1 = _task(method, state, 1, [[0, 1], [2, 3]])
  assert float(m1["per_class"]) == 2  # 8 // 4 classes
  ex = np.asarray(state.exemplars_x)
  np.testing.assert_array_equal(ex[0:2], first[0:2])  # class 0 keeps its first two
  np.testing.assert_array_equal(ex[2:4], first[4:6])  # class 1 its first two, moved to rows 2, 3
  assert np.asarray(state.exemplars_y).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
  assert bool(jnp.all(state.filled))
  # the class means: of the exemplars' normalised features with the final network, normalised
  feats = _features(method, state.solver.params, jnp.asarray(ex))
  for c in range(K):
    mean = feats[2 * c:2 * c + 2].mean(axis=0)
    np.testing.assert_allclose(np.asarray(state.means[c]), mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
  # nearest mean of exemplars: logits are minus the squared distances
  x = jnp.asarray(np.asarray(data1.x)[:3])
  fx = _features(method, state.solver.params, x)
  want = -np.sum((fx[:, None, :] - np.asarray(state.means, np.float64)[None]) ** 2, axis=-1)
  np.testing.assert_allclose(np.asarray(method.predict(state, x)), want, rtol=1e-4, atol=1e-5)


def test_training_batches_mix_the_task_and_the_exemplars():
  method = _method(memory=8)
  state = method.init(jax.random.PRNGKey(0))
  state, _, _ = _task(method, state, 0, [[0, 1]])
  state = method.begin_task(state, 1, np.isin(np.arange(K), [0, 1, 2, 3]))
  data = _data([2, 3], seed=1)  # 24 images; 8 exemplars: a third of the pool
  shares = [float(method.solver_step(state, data, jax.random.PRNGKey(i))[1]["exemplar_share"]) for i in range(40)]
  assert np.mean(shares) == pytest.approx(8 / 32, abs=0.06)


def test_bad_values_are_refused():
  c = icarl_config.get_config("smoke")
  c.icarl.memory_size = 3
  with pytest.raises(ValueError, match=r"icarl\.memory_size=3.*10 classes"):
    build_method("icarl", c, (32, 32, 1), 10)
  c = icarl_config.get_config("smoke")
  c.data.protocol = "permuted"
  with pytest.raises(ValueError, match=r"data\.protocol='permuted'"):
    build_method("icarl", c, (32, 32, 1), 10)
