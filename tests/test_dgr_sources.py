"""DGR's replay sources (``dgr.replay_source``): exact replay draws only earlier tasks' real rows
and trains on the current task's, noise replays noise, none replays nothing; the loop hands a
cumulative method the row where the current task begins."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import dgr as dgr_config
from experiments.configs import ogm as ogm_config
from gmcl import loop
from gmcl.data.build import training_examples
from gmcl.data.sampling import sample_current, sample_past, task_arrays
from gmcl.losses.classification import softmax_cross_entropy
from gmcl.methods import build_method

SHAPE = (8, 8, 1)
K = 4


def _config(source):
  c = dgr_config.get_config("smoke")
  c.model.gan = "mlp"
  c.model.classifier_hidden = (8,)
  c.dgr.replay_source = source
  return c


def _cumulative(n_old=30, n_new=20):
  """Rows of classes 0, 1 (earlier tasks), then class 2 (the current task) from ``start`` on."""
  rng = np.random.default_rng(0)
  y = np.concatenate([rng.choice([0, 1], n_old), np.full(n_new, 2)]).astype(np.int32)
  x = (rng.uniform(-1, 1, (y.size,) + SHAPE) * 0.1 + y[:, None, None, None] * 0.3 - 0.4).astype(np.float32)
  return task_arrays(x, y, capacity=y.size + 10, start=n_old), x, y


def _rows(x):
  return {tuple(np.ravel(r)) for r in np.asarray(x)}


def test_sampling_from_the_current_and_the_earlier_rows():
  data, x, y = _cumulative()
  xc, yc = sample_current(data, jax.random.PRNGKey(0), 256)
  xp, yp = sample_past(data, jax.random.PRNGKey(1), 256)
  assert set(np.asarray(yc).tolist()) == {2} and set(np.asarray(yp).tolist()) == {0, 1}
  assert _rows(xc) <= _rows(x[30:]) and _rows(xp) <= _rows(x[:30])
  plain = task_arrays(x[30:], y[30:])  # not cumulative: every real row is the current task's
  assert plain.start is None
  assert set(np.asarray(sample_current(plain, jax.random.PRNGKey(0), 64)[1]).tolist()) == {2}
  with pytest.raises(ValueError, match="only cumulative data"):
    sample_past(plain, jax.random.PRNGKey(0), 4)
  with pytest.raises(ValueError, match="start=50"):
    task_arrays(x, y, start=50)


def test_training_examples_say_where_the_current_task_begins():
  from gmcl.data.tasks import per_class_tasks  # pylint: disable=import-outside-toplevel

  class D:  # the two fields training_examples reads
    x_train = np.arange(12, dtype=np.float32).reshape(12, 1, 1, 1)
    y_train = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2], np.int32)

  seq = per_class_tasks(3)
  x, y, start = training_examples(D, seq, 2, True, with_start=True)
  assert start == 8 and y[:start].tolist() == [0] * 4 + [1] * 4 and set(y[start:].tolist()) == {2}
  x, y, start = training_examples(D, seq, 2, True, limit=3, with_start=True)
  assert start == 6 and y.tolist() == [0] * 3 + [1] * 3 + [2] * 3


def _after_first_task(method):
  state = method.init(jax.random.PRNGKey(0))
  state = method.end_task(method.begin_task(state, 0, np.arange(K) < 2))
  return method.begin_task(state, 1, np.arange(K) < 3)


def test_exact_replay_trains_on_the_current_task_and_replays_earlier_real_images():
  method = build_method("dgr", _config("exact"), SHAPE, K)
  assert method.data_mode == "cumulative" and not method.has_generator
  assert [p.name for p in method.phases()] == ["solver"]
  data, x, _ = _cumulative()
  state = _after_first_task(method)
  xr, yr = method.real_batch(data, jax.random.PRNGKey(3))
  assert set(np.asarray(yr).tolist()) == {2} and _rows(xr) <= _rows(x[30:])
  replayed = method.replay_inputs(state, jax.random.PRNGKey(4), data)
  assert replayed.shape == (method.batch_size,) + SHAPE and _rows(replayed) <= _rows(x[:30])
  # the solver's loss: r * CE on the current task + (1 - r) * the replay loss on those images
  key = jax.random.PRNGKey(5)
  _, metrics = method.solver_step(state, data, key)
  k_batch, k_replay = jax.random.split(key)
  xb, yb = method.real_batch(data, k_batch)
  logits = method.classifier.apply({"params": state.solver.params}, xb)
  real = float(jnp.mean(softmax_cross_entropy(logits=logits, labels=yb, where=state.active)))
  np.testing.assert_allclose(float(metrics["solver_real_loss"]), real, rtol=1e-5)
  xk = method.replay_inputs(state, k_replay, data)
  teacher = jnp.argmax(jnp.where(np.arange(K) < 2, method.classifier.apply(
      {"params": state.frozen.solver_params}, xk), -1e9), -1)
  rep = float(jnp.mean(softmax_cross_entropy(logits=method.classifier.apply({"params": state.solver.params}, xk),
                                              labels=teacher, where=state.active)))
  np.testing.assert_allclose(float(metrics["solver_replay_loss"]), rep, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["solver_loss"]), 0.5 * real + 0.5 * rep, rtol=1e-5)


def test_noise_replays_uniform_noise_and_none_replays_nothing():
  data, x, _ = _cumulative()
  current = task_arrays(x[30:], np.full(20, 2, np.int32))
  noise = build_method("dgr", _config("noise"), SHAPE, K)
  state = _after_first_task(noise)
  images = np.asarray(noise.replay_inputs(state, jax.random.PRNGKey(0), current))
  assert images.min() >= -1.0 and images.max() <= 1.0 and not (_rows(images) & _rows(x))
  assert abs(images.mean()) < 0.05 and images.std() == pytest.approx(2 / np.sqrt(12), rel=0.05)
  none = build_method("dgr", _config("none"), SHAPE, K)
  state = _after_first_task(none)
  losses = jnp.array([0.5, 1.5, 2.0])
  loss, extra = none.replay_objective(state.solver.params, state, losses, jax.random.PRNGKey(0), current)
  assert float(loss) == pytest.approx(4.0 / 3) and extra == {}


def test_exact_replay_runs_through_the_loop(tmp_path):
  """The loop hands DGR with exact replay all data so far and the current task's first row."""
  c = _config("exact")
  c.data.max_tasks = 3
  c.checkpoint.enabled = False
  seen = []
  method_real_batch = type(build_method("dgr", c, (32, 32, 1), 10)).real_batch

  def spy(self, data, key):
    seen.append(data.start)
    return method_real_batch(self, data, key)

  import gmcl.methods.dgr as dgr_module  # pylint: disable=import-outside-toplevel
  original = dgr_module.DGR.real_batch
  dgr_module.DGR.real_batch = spy
  try:
    res = loop.run(c, str(tmp_path / "run"), progress=False, log=lambda *_: None)
  finally:
    dgr_module.DGR.real_batch = original
    loop.release_compiled()
  assert res["completed_tasks"] == 3 and all(np.isfinite(res["A"]))
  assert seen and all(s is not None for s in seen)  # traced with a start (values are tracers)


def test_methods_that_replay_the_generative_memory_refuse_other_sources():
  c = ogm_config.get_config("smoke")
  c.dgr.replay_source = "exact"
  with pytest.raises(ValueError, match=r"dgr\.replay_source.*'generator'"):
    build_method("ogm", c, (32, 32, 1), 10)
  c = dgr_config.get_config("smoke")
  c.dgr.replay_source = "real"
  with pytest.raises(ValueError, match=r"dgr\.replay_source='real'"):
    build_method("dgr", c, (32, 32, 1), 10)
