"""Pure transitions of the methods: chunks, jit, snapshots, replay wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import dgr as dgr_config
from gmcl.data.sampling import task_arrays
from gmcl.methods import build_method
from gmcl.methods.base import run_chunk
from tolerances import assert_chunks_equal_single_steps

SHAPE = (32, 32, 1)


def _config(**model):
  c = dgr_config.get_config("smoke")
  c.model.gan = "mlp"
  for k, v in model.items():
    c.model[k] = v
  return c


def _data(classes, n=64, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.choice(classes, size=n).astype(np.int32)
  x = rng.uniform(-1, 1, (n,) + SHAPE).astype(np.float32)
  x += y[:, None, None, None] * 0.1  # something to learn
  return task_arrays(np.clip(x, -1, 1), y, capacity=2 * n)


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _state_at_second_task(method, steps=2):
  """A state that has finished task 0 (so it holds snapshots) and begun task 1."""
  state = method.init(jax.random.PRNGKey(0))
  state = method.begin_task(state, 0, np.arange(10) < 1)
  data0 = _data([0])
  for phase in method.phases():
    for i in range(steps):
      state, _ = run_chunk(phase.step, state, data0, jax.random.PRNGKey(1), i, 1)
  state = method.end_task(state)
  return method.begin_task(state, 1, np.arange(10) < 2)


@pytest.fixture(scope="module")
def dgr_method():
  return build_method("dgr", _config(), SHAPE, 10)


@pytest.mark.slow
@pytest.mark.parametrize("phase_index", [0, 1], ids=["generator", "solver"])
@pytest.mark.parametrize("mode", ["unroll", "scan"])
def test_k_step_chunk_equals_single_steps(dgr_method, phase_index, mode):
  method = dgr_method
  base = _state_at_second_task(method)
  phase = method.phases()[phase_index]
  data, key = _data([1]), jax.random.PRNGKey(7)
  tr = method.config.train
  _, chunked = assert_chunks_equal_single_steps(
      phase.step, base, data, key, lr=max(tr.solver_lr, tr.gan_lr), num_steps=4, modes=(mode,),
      updates_per_step=tr.n_critic + 1 if phase.name == "generator" else 1, what=f"dgr {phase.name}")
  # The chunk really trained: parameters moved.
  moved = jax.tree.leaves(chunked.solver.params if phase_index else chunked.memory.generator.params)
  before = jax.tree.leaves(base.solver.params if phase_index else base.memory.generator.params)
  assert any(not np.allclose(a, b) for a, b in zip(moved, before))


@pytest.mark.slow
@pytest.mark.parametrize("phase_index", [0, 1], ids=["generator", "solver"])
def test_jit_equals_no_jit(dgr_method, phase_index):
  method = dgr_method
  state = _state_at_second_task(method)
  step = method.phases()[phase_index].step
  data, key = _data([1]), jax.random.PRNGKey(3)
  jitted, m_jit = jax.jit(step)(_copy(state), data, key)
  with jax.disable_jit():
    eager, m_eager = step(_copy(state), data, key)
  _assert_trees_close(m_jit, m_eager, rtol=1e-4, atol=1e-6)
  # Parameters: Adam divides by sqrt(v), so a bias whose gradient is zero up to rounding
  # (a Dense bias before batch norm) takes a rounding-sized step of either sign; 1e-4 is the
  # GAN learning rate, so atol=2e-4 still catches any real difference in an update.
  _assert_trees_close(jitted, eager, rtol=1e-4, atol=2e-4)


@pytest.mark.slow  # the fast tier: test_contract (snapshots unchanged), test_mergan (no gradient)
def test_snapshot_gets_no_gradient_and_stays_frozen(dgr_method):
  method = dgr_method
  state = _state_at_second_task(method)
  frozen_before = _copy(state.frozen)
  data, key = _data([1]), jax.random.PRNGKey(5)

  for phase in method.phases():
    def new_params_sum(frozen, phase):
      new_state, _ = phase.step(state.replace(frozen=frozen), data, key)
      trained = new_state.memory.generator if phase.name == "generator" else new_state.solver
      return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(trained.params))

    def of_snapshot_params(params, phase=phase):
      frozen = state.frozen.replace(solver_params=params[0],
                                    memory=state.frozen.memory.replace(generator_params=params[1]))
      return new_params_sum(frozen, phase)

    grads = jax.grad(of_snapshot_params)((state.frozen.solver_params,
                                          state.frozen.memory.generator_params))
    for g in jax.tree.leaves(grads):
      np.testing.assert_array_equal(np.asarray(g), 0.0)

  # Train for a few chunks: the live models move, the snapshot does not (and is not donated).
  trained = state
  for phase in method.phases():
    trained, _ = run_chunk(phase.step, trained, data, key, 0, 3)
  _assert_trees_close(trained.frozen, frozen_before, rtol=0, atol=0)
  assert not np.allclose(jax.tree.leaves(trained.solver.params)[0],
                         jax.tree.leaves(frozen_before.solver_params)[0])


def _expected_solver_loss(method, state, data, key, targets, temperature):
  """DGR's solver loss recomputed by hand from the snapshot models, in numpy."""
  from gmcl.data.sampling import sample_batch
  k_batch, k_replay = jax.random.split(key)
  x, y = sample_batch(data, k_batch, method.batch_size)
  z = jax.random.normal(jax.random.split(k_replay)[0], (method.batch_size, method.memory.z_dim))
  fr = state.frozen
  x_rep = method.memory.generator.apply({"params": fr.memory.generator_params,
                                         "batch_stats": fr.memory.generator_batch_stats}, z, None,
                                        train=False)
  apply = lambda p, xb: np.asarray(method.classifier.apply({"params": p}, xb), np.float64)
  def log_softmax(z, mask):
    z = np.where(mask, z, -np.inf)
    return z - np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1, keepdims=True)) - z.max(-1, keepdims=True)
  now, old = np.asarray(state.active), np.asarray(fr.memory.active)
  real = -log_softmax(apply(state.solver.params, x), now)[np.arange(len(y)), np.asarray(y)]
  student, teacher = apply(state.solver.params, x_rep), apply(fr.solver_params, x_rep)
  if targets == "hard":
    labels = np.argmax(np.where(old, teacher, -np.inf), -1)
    rep = -log_softmax(student, now)[np.arange(len(labels)), labels]
  else:
    p = np.exp(log_softmax(teacher / temperature, old))
    with np.errstate(invalid="ignore"):  # 0 * -inf for masked classes, dropped by the where
      rep = -temperature ** 2 * np.sum(np.where(p > 0, p * log_softmax(student / temperature, now), 0), -1)
  r = float(state.memory.ratio)
  return r * real.mean() + (1 - r) * rep.mean(), real.mean(), rep.mean()


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_solver_loss_is_the_dgr_mixture(targets):
  c = _config()
  c.dgr.targets = targets
  method = build_method("dgr", c, SHAPE, 10)
  state = _state_at_second_task(method)
  assert float(state.memory.ratio) == pytest.approx(0.5)  # balanced: r = 1/t with t = 2
  data, key = _data([1]), jax.random.PRNGKey(2)
  _, metrics = method.solver_step(state, data, key)
  loss, real, rep = _expected_solver_loss(method, state, data, key, targets, c.dgr.temperature)
  np.testing.assert_allclose(float(metrics["solver_real_loss"]), real, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["solver_replay_loss"]), rep, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["solver_loss"]), loss, rtol=1e-4)
  first = method.begin_task(method.init(jax.random.PRNGKey(0)), 0, np.arange(10) < 1)
  _, m0 = method.solver_step(first, _data([0]), jax.random.PRNGKey(2))
  assert "solver_replay_loss" not in m0  # nothing to replay in the first task


def test_fixed_replay_ratio():
  for value in (0.3, "0.3"):
    c = _config()
    c.dgr.replay_ratio = value
    method = build_method("dgr", c, SHAPE, 10)
    state = method.begin_task(method.init(jax.random.PRNGKey(0)), 4, np.arange(10) < 5)
    assert float(state.memory.ratio) == pytest.approx(0.3)
  balanced = build_method("dgr", _config(), SHAPE, 10)
  state = balanced.begin_task(balanced.init(jax.random.PRNGKey(0)), 4, np.arange(10) < 5)
  assert float(state.memory.ratio) == pytest.approx(1 / 5)


@pytest.mark.slow
def test_conditional_replay_draws_only_old_classes():
  method = build_method("dgr", _config(conditional=True), SHAPE, 10)
  state = _state_at_second_task(method, steps=1)
  state = method.end_task(method.begin_task(state, 1, np.arange(10) < 3))  # old: {0, 1, 2}
  images, labels = method.memory.replay_batch(state.frozen.memory, jax.random.PRNGKey(0), 512)
  assert images.shape == (512,) + SHAPE
  assert set(np.asarray(labels).tolist()) == {0, 1, 2}
  # And the conditional generator step runs with replay (AC-GAN terms included).
  state = method.begin_task(state, 3, np.arange(10) < 4)
  _, metrics = method.generator_step(state, _data([3]), jax.random.PRNGKey(1))
  assert np.isfinite(float(metrics["critic_loss"]))


def test_conditional_critic_learns_its_class_head_on_fakes_only_when_asked(monkeypatch):
  """dgr.critic_aux_on_fake: the critic's class term is on real images and G_{t-1}'s replays
  and, when asked, on G_t's samples of both too; the generator's is one term either way.
  The class terms are counted as traced (the critic's updates are one traced loop body)."""
  from gmcl.methods import memory as memory_module  # pylint: disable=import-outside-toplevel
  original = memory_module.auxiliary_classifier_loss
  counts = {}
  for on_fake in (False, True):
    c = _config(conditional=True)
    c.dgr.critic_aux_on_fake = on_fake
    method = build_method("dgr", c, SHAPE, 10)
    state = _state_at_second_task(method, steps=1)
    calls = []
    monkeypatch.setattr(memory_module, "auxiliary_classifier_loss",
                        lambda calls=calls, **kw: calls.append(kw["labels"].shape) or original(**kw))
    method.generator_step(state, _data([1]), jax.random.PRNGKey(1))
    counts[on_fake] = len(calls)
  assert counts[False] == 2 + 1  # critic: real data, replays; generator: its samples
  assert counts[True] == 2 + 2 + 1  # and the critic on G_t's samples for each


@pytest.mark.slow
def test_dcgan_dgr_steps_run():
  method = build_method("dgr", dgr_config.get_config("smoke"), SHAPE, 10)
  state = _state_at_second_task(method, steps=1)
  new, metrics = method.generator_step(state, _data([1]), jax.random.PRNGKey(0))
  assert np.isfinite(float(metrics["generator_loss"]))
  assert not np.allclose(jax.tree.leaves(new.memory.generator.params)[0],
                         jax.tree.leaves(state.memory.generator.params)[0])


def test_sft_predictions_are_masked_to_seen_classes():
  method = build_method("sft", _config(), SHAPE, 10)
  state = method.begin_task(method.init(jax.random.PRNGKey(0)), 2, np.arange(10) < 3)
  logits = method.predict(state, jnp.zeros((4,) + SHAPE))
  assert set(np.asarray(jnp.argmax(logits, -1)).tolist()) <= {0, 1, 2}
  assert method.data_mode == "current"
  assert build_method("joint", _config(), SHAPE, 10).data_mode == "cumulative"
  with pytest.raises(ValueError, match=r"config.method='agem' is invalid; valid: \['dgm', 'dgr'"):
    build_method("agem", _config(), SHAPE, 10)
