"""The contract every registered method keeps with the task loop, on tiny shapes.

One test per property, parametrized over the method registry (``gmcl.methods.METHODS``): a new
method is tested by registering it. For each method: init, two tasks of every phase, predict; a
K-step chunk equals K single steps; jit equals no-jit; the checkpoint template has the state's
structure, shapes and dtypes; the snapshots taken at a task's end are never changed by training.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmcl.data.sampling import task_arrays
from gmcl.methods import METHODS, build_method
from gmcl.methods.base import run_chunk
from tolerances import assert_mostly_within_rounding

SHAPE = (8, 8, 1)
K = 10
TASKS = ([0, 1], [2, 3])  # two tasks of two classes: per-class and task-incremental methods alike
STEPS = 2  # of every phase (fewer where a phase has fewer)


def _config(name):
  """The method's smoke config, shrunk further: MLP models of a few units."""
  c = importlib.import_module(f"experiments.configs.{name}").get_config("smoke")
  c.data.protocol, c.data.classes_per_task = "split", 2
  c.model.gan = "mlp"
  c.model.classifier_hidden = (16,)
  c.model.generator_features = c.model.critic_features = 8
  c.model.z_dim = K  # DGM writes the one-hot label into z's first K entries
  c.train.n_critic = 1  # one critic update per GAN step: the contract, not the schedule, is tested
  if name == "mergan":
    c.mergan.oracle = False
  if name == "dgm":
    c.dgm.architecture, c.dgm.critic, c.dgm.hidden = "dense", "mlp", (8, 16)
  if name == "lgm":
    c.lgm.generator_hidden = c.lgm.critic_hidden = (16,)
    c.lgm.z_dim, c.lgm.prototype_steps = 4, 2
  if name == "lsa":
    c.lsa.bridge_hidden = 16
  return c


def _data(classes, n=32, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.choice(classes, size=n).astype(np.int32)
  x = rng.uniform(-1, 1, (n,) + SHAPE) + y[:, None, None, None] * 0.1  # something to learn
  return task_arrays(np.clip(x, -1, 1).astype(np.float32), y, capacity=n)


def _active(t):
  return np.isin(np.arange(K), sum(TASKS[:t + 1], []))


def _train_task(method, state, t, chunk=1, steps=STEPS):
  """Begins task t and runs ``steps`` of each phase in chunks of ``chunk`` steps."""
  state = method.begin_task(state, t, _active(t))
  data = _data(TASKS[t], seed=t)
  for p, phase in enumerate(method.phases()):
    key = jax.random.fold_in(jax.random.PRNGKey(10 + t), p)
    n = min(steps, phase.num_steps)
    for start in range(0, n, chunk):
      state, metrics = run_chunk(phase.step, state, data, key, start, min(chunk, n - start))
      for name, value in metrics.items():
        assert np.isfinite(float(value)), (method.name, phase.name, name)
  return state


def _largest_lr(c):
  """The largest learning rate that moves the method's parameters: no parameter moves by much more
  per update (Adam's step is about one learning rate; HAT's SGD step the rate times a clipped
  gradient). ogm's lookahead steps are off in its smoke config (variant distill)."""
  rates = [c.train.solver_lr, c.train.gan_lr]
  if c.method == "lsa":
    rates.append(c.lsa.bridge_lr)
  if c.method == "hat":
    rates.append(c.hat.learning_rate)
  return max(rates)


def _updates_per_step(c):
  """An upper bound on the updates one step makes to a parameter: a GAN step's n_critic critic
  updates (and one of the generator), ogm's lookahead and main updates."""
  return 2 * (c.train.n_critic + 1)


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _float_leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)
          if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]


@pytest.fixture(scope="module", params=sorted(METHODS))
def after_task_1(request):
  """(method, config, a function giving the state after task 0 ended) per registered method."""
  name = request.param
  c = _config(name)
  method = build_method(name, c, SHAPE, K)
  state = method.end_task(_train_task(method, method.init(jax.random.PRNGKey(0)), 0))
  host = jax.device_get(state)  # chunks donate their input: each test gets its own copy
  return method, c, lambda: jax.tree.map(jnp.asarray, host)


def test_two_tasks_then_predict(after_task_1):
  method, _, fresh = after_task_1
  state = fresh()
  state = method.end_task(_train_task(method, state, 1))
  x = jnp.asarray(_data(TASKS[1]).x[:5])
  logits = np.asarray(method.predict(state, x))
  assert logits.shape == (5, K) and np.all(np.isfinite(logits[:, _active(1)]))
  if method.scenario != "task_incremental":  # one head over every class seen: unseen ones masked
    assert np.all(np.argmax(logits, -1) < 4)
  task_logits = np.asarray(method.predict_task(state, x, jnp.asarray(0, jnp.int32)))
  assert task_logits.shape == (5, K)


def _begun_second_task(after_task_1):
  """(method, config, state with task 1 begun, task 1's data), from the module's fixture."""
  method, c, fresh = after_task_1
  return method, c, method.begin_task(fresh(), 1, _active(1)), _data(TASKS[1], seed=1)


def test_k_step_chunk_equals_single_steps(after_task_1):
  method, c, state, data = _begun_second_task(after_task_1)
  for p, phase in enumerate(method.phases()):
    if phase.num_steps < 2:
      continue
    key = jax.random.fold_in(jax.random.PRNGKey(11), p)
    single = _copy(state)
    for i in range(3):
      single, _ = run_chunk(phase.step, single, data, key, i, 1)
    chunked, _ = run_chunk(phase.step, _copy(state), data, key, 0, 3)
    split, _ = run_chunk(phase.step, _copy(state), data, key, 0, 1)
    split, _ = run_chunk(phase.step, split, data, key, 1, 2)
    # The same steps in the same order, in one program or in three: equal up to the rounding of
    # what XLA fuses differently, which Adam can carry over whole (tests/tolerances.py).
    for other in (chunked, split):
      assert_mostly_within_rounding(single, other, lr=_largest_lr(c), updates=3 * _updates_per_step(c),
                                    what=f"{method.name} {phase.name}")
    moved = [not np.array_equal(a, b) for a, b in zip(_float_leaves(state), _float_leaves(chunked))]
    assert any(moved), f"{method.name} {phase.name}: the chunk changed nothing"
    state = chunked  # the next phase starts where this one ended (lsa's bridge: after the solver)


def test_jit_equals_no_jit(after_task_1):
  method, c, state, data = _begun_second_task(after_task_1)
  for p, phase in enumerate(method.phases()):
    if not phase.num_steps:
      continue
    key = jax.random.PRNGKey(3 + p)
    jitted, m_jit = jax.jit(phase.step)(_copy(state), data, key)
    with jax.disable_jit():
      eager, m_eager = phase.step(_copy(state), data, key)
    for name in m_jit:
      np.testing.assert_allclose(float(m_jit[name]), float(m_eager[name]), rtol=1e-4, atol=1e-5,
                                 err_msg=f"{method.name} {phase.name} {name}")
    assert_mostly_within_rounding(jitted, eager, lr=_largest_lr(c), updates=_updates_per_step(c),
                                  what=f"{method.name} {phase.name}")


def test_checkpoint_template_has_the_state_structure(after_task_1):
  method, _, fresh = after_task_1
  state = fresh()
  state = _train_task(method, state, 1)
  meta = {"position": {"task": 1, "phase": 0, "step": 0, "global_step": 0, "begun": True},
          "method": method.checkpoint_meta(state)}
  template = method.state_template(jax.random.PRNGKey(0), meta)
  spec = lambda tree: jax.tree.map(lambda x: (jnp.shape(x), jnp.asarray(x).dtype), tree)
  assert jax.tree.structure(template) == jax.tree.structure(state), method.name
  assert spec(template) == spec(state), method.name


def test_snapshots_are_never_changed_by_training(after_task_1):
  method, _, fresh = after_task_1
  state = fresh()
  frozen = state.frozen
  before = [np.array(x) for x in jax.tree.leaves(frozen)]
  trained = _train_task(method, state, 1)
  after = jax.tree.leaves(trained.frozen)
  assert len(after) == len(before), method.name
  for a, b in zip(before, after):
    np.testing.assert_array_equal(a, np.asarray(b))  # neither differentiated, nor donated


def test_every_registered_method_has_an_experiment_config():
  for name in METHODS:
    config = importlib.import_module(f"experiments.configs.{name}").get_config("smoke")
    assert config.method == name


def test_stacked_seeds_chunk_equals_each_seed_alone(after_task_1):
  """Two seeds stacked on a leading axis and run in one chunk (gmcl.seeds), batched under vmap or
  one after another, equal each seed's chunk run alone, up to the rounding of batched or
  differently fused operations (tests/tolerances.py)."""
  from gmcl import seeds  # pylint: disable=import-outside-toplevel
  method, c, state, data = _begun_second_task(after_task_1)
  for p, phase in enumerate(method.phases()):
    if not phase.num_steps:
      continue
    keys = [jax.random.fold_in(jax.random.PRNGKey(20 + s), p) for s in range(2)]
    other = jax.tree.map(lambda x: x, state)  # the second seed starts elsewhere: one step further
    other, _ = run_chunk(phase.step, _copy(other), data, keys[1], 100, 1)
    starts = [state, other]
    alone = [run_chunk(phase.step, _copy(s), data, k, 0, 2) for s, k in zip(starts, keys)]
    for axis in ("vmap", "unroll"):
      together, metrics = run_chunk(phase.step, seeds.stack([_copy(s) for s in starts]), data,
                                    jnp.stack(keys), 0, 2, seeds=axis)
      for s in range(2):
        mine, what = seeds.take(together, s), f"{method.name} {phase.name} seed {s} ({axis})"
        assert jax.tree.structure(mine) == jax.tree.structure(alone[s][0]), what
        assert_mostly_within_rounding(alone[s][0], mine, lr=_largest_lr(c), updates=2 * _updates_per_step(c),
                                      what=what)
        for name, value in alone[s][1].items():
          np.testing.assert_allclose(float(metrics[name][s]), float(value), rtol=1e-3, atol=1e-4,
                                     err_msg=f"{what} {name}")
    state = alone[0][0]
