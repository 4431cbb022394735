"""Online generative memory (gmcl.methods.ogm): the three variants' steps, memory, chunks, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from experiments.configs import ogm as ogm_config
from gmcl.data.sampling import sample_batch, task_arrays
from gmcl.methods.base import run_chunk
from gmcl.methods.classifier import ClassifierMethod, ClassifierState
from gmcl.methods.ogm import VARIANTS, check_config, lookahead_objective, make_ogm
from gmcl.models.classifiers import make_classifier
from gmcl.parallel import Parallel
from tolerances import assert_chunks_equal_single_steps

SHAPE = (32, 32, 1)
ACTIVE = np.arange(10) < 2  # the second task of per-class MNIST: classes {0, 1} seen


def _config(variant="distill", model=None, **ogm):
  c = ogm_config.get_config("smoke")
  c.ogm.variant = variant  # as get_config("smoke,variant=...") sets it
  for k, v in ogm.items():
    c.ogm[k] = v
  for k, v in (model or {}).items():
    c.model[k] = v
  return c


_CACHE = {}


def _method(variant="distill", **ogm):
  """One method object per setting, so that tests share its compiled steps (run_chunk caches them)."""
  key = (variant, tuple(sorted(ogm.items())))
  if key not in _CACHE:
    _CACHE[key] = make_ogm(_config(variant, **ogm), SHAPE, 10)
  return _CACHE[key]


# Settings shared by several tests (each compiles once).
FREE = dict(epsilon=1e9, refresh_every=100)  # project: the constraint never binds
FROZEN = dict(epsilon=0.0, refresh_every=100)  # project: predictions on X must not move
DISTILL = dict(distill_weight=0.7, temperature=2.0, refresh_every=2)
LOOKAHEAD = dict(lookahead_steps=2, lookahead_lr=0.1, inner_lr=0.1, lookahead_clip=0.0)  # moves theta visibly
# Clipping that binds (D's gradient norm is far above 1e-2 here) and the anchored objective.
LOOKAHEAD_CLIPPED = dict(LOOKAHEAD, lookahead_clip=1e-2, lookahead_target="saved", refresh_every=2)


def _sft():
  """Sequential fine-tuning with the same classifier and Adam: the unprotected step."""
  if "sft" not in _CACHE:
    _CACHE["sft"] = ClassifierMethod(_config(), SHAPE, 10)
  return _CACHE["sft"]


def _step(method, state, data, key, i=0):
  """Step ``i`` of a phase keyed by ``key``, compiled once per method (state copied: run_chunk
  donates it)."""
  return run_chunk(method.solver_step, _copy(state), data, key, i, 1)


def _sft_step(state, data, key, i=0):
  return _step(_sft(), ClassifierState(solver=state.solver, active=state.active), data, key, i)


def _data(classes=(0, 1), n=64, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.choice(classes, size=n).astype(np.int32)
  x = rng.uniform(-1, 1, (n,) + SHAPE).astype(np.float32)
  x += y[:, None, None, None] * 0.1  # something to learn
  return task_arrays(np.clip(x, -1, 1), y, capacity=2 * n)


def _state(method):
  """A state that has begun the second task (memory "current" needs no first task)."""
  return method.begin_task(method.init(jax.random.PRNGKey(0)), 1, ACTIVE)


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _max_change(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _numpy_drift(method, state, norm):
  """||f(X) - Y|| over the seen classes, from an actual forward pass, in numpy."""
  logits = np.asarray(method.classifier.apply({"params": state.solver.params}, state.memory.x))
  diff = (logits - np.asarray(state.memory.logits))[:, np.asarray(state.active)].astype(np.float64)
  return np.linalg.norm(diff, "fro" if norm == "frobenius" else 2)


# -- (c) project -------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["frobenius", "spectral"])
def test_projected_step_keeps_memory_predictions_within_epsilon(norm):
  data, key = _data(), jax.random.PRNGKey(1)
  free_method = _method("project", **FREE)
  start, n = _state(free_method), free_method.config.ogm.memory_batch
  # The unprotected Adam step (sequential fine-tuning's, the same batch) on the batch step 0 saves.
  free, _ = _sft_step(start, data, key)
  x_mem = sample_batch(data, jax.random.split(jax.random.fold_in(key, 0))[1], n)[0]
  apply = lambda p: np.asarray(_sft().classifier.apply({"params": p}, x_mem), np.float64)
  free_diff = (apply(free.solver.params) - apply(start.solver.params))[:, ACTIVE]
  free_drift = np.linalg.norm(free_diff, "fro" if norm == "frobenius" else 2)
  assert free_drift > 0.05  # the plain Adam step moves the memory predictions
  eps = 0.25 * free_drift

  method = _method("project", epsilon=eps, norm=norm, refresh_every=100)  # one saved batch
  state, alphas = _state(method), []
  for i in range(3):
    state, metrics = _step(method, state, data, key, i)
    drift = _numpy_drift(method, state, norm)
    assert drift <= eps * (1 + 1e-5) + 1e-6, (i, drift, eps)
    np.testing.assert_allclose(float(metrics["ogm_memory_drift"]), drift, rtol=1e-4, atol=1e-6)
    alphas.append(float(metrics["ogm_alpha"]))
  np.testing.assert_array_equal(np.asarray(state.memory.x), np.asarray(x_mem))
  assert 0.0 < alphas[0] < 1.0, alphas  # the constraint bound, and part of the in-span step was let in
  assert all(a in [0.0] + [2.0 ** -j for j in range(9)] for a in alphas)
  assert drift > 0.1 * eps  # predictions did move within the bound


def test_projected_step_with_large_epsilon_is_the_adam_step():
  method = _method("project", **FREE)
  data, key = _data(), jax.random.PRNGKey(2)
  state = _state(method)
  for i in range(2):  # Adam's moments are not fresh
    state, _ = _step(method, state, data, key, i)
  new, metrics = _step(method, state, data, key, 2)
  ref, ref_metrics = _sft_step(state, data, key, 2)  # the same training batch, the same Adam
  assert float(metrics["ogm_alpha"]) == 1.0
  _assert_trees_close(new.solver, ref.solver, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(metrics["solver_loss"]), float(ref_metrics["solver_loss"]),
                             rtol=1e-6)
  assert float(metrics["ogm_span_fraction"]) > 0.01  # the unprojected step would move f(X)


def test_projected_step_with_zero_epsilon_keeps_memory_predictions():
  method = _method("project", **FROZEN)
  data, key = _data(), jax.random.PRNGKey(3)
  before, _ = _step(method, _state(method), data, key, 0)  # saves X, Y; takes a step
  after, metrics = _step(method, before, data, key, 1)
  np.testing.assert_array_equal(np.asarray(after.memory.x), np.asarray(before.memory.x))
  assert float(metrics["ogm_alpha"]) == 0.0
  apply = lambda s, x: np.asarray(method.classifier.apply({"params": s.solver.params}, x))
  x_mem, x_other = after.memory.x, data.x[:32]
  seen = np.asarray(ACTIVE)
  assert _max_change(after.solver.params, before.solver.params) > 1e-4  # the parameters moved
  moved = np.max(np.abs(apply(after, x_other) - apply(before, x_other))[:, seen])
  assert moved > 1e-3  # the step changes predictions off the memory
  # On the memory it changes them by rounding only: float32 forward passes and the SVD's
  # projection residual (~eps_f32 times the inputs' condition number), far below 1% of what the
  # same step does elsewhere (a step that ignored the constraint would move them by ~moved).
  np.testing.assert_allclose(apply(after, x_mem)[:, seen], apply(before, x_mem)[:, seen],
                             rtol=0, atol=1e-2 * moved)
  assert _numpy_drift(method, after, "frobenius") < 1e-2 * moved * np.sqrt(x_mem.shape[0] * seen.sum())


# -- (a) lookahead -----------------------------------------------------------------------------


@pytest.mark.parametrize("anchored", [False, True], ids=["current", "saved"])
def test_lookahead_objective_gradient_matches_finite_differences(anchored):
  with jax.enable_x64(True):
    model = make_classifier("mlp", 3, hidden=(4,))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 2, 2, 1)))
    y = jnp.asarray(rng.integers(0, 2, size=5), jnp.int32)
    x_mem = jnp.asarray(rng.normal(size=(3, 2, 2, 1)))
    where = jnp.asarray([True, True, False])
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    flat, unravel = ravel_pytree(params)
    assert flat.dtype == jnp.float64
    apply_fn = lambda p, xb: model.apply({"params": p}, xb)

    def loss_fn(p):
      logp = jax.nn.log_softmax(jnp.where(where, apply_fn(p, x), -1e30))
      return -jnp.mean(logp[jnp.arange(5), y])

    eta = 0.5
    target = jnp.asarray(rng.normal(size=(3, 3))) if anchored else None  # the saved Y
    objective = lambda v: lookahead_objective(unravel(v), apply_fn=apply_fn, loss_fn=loss_fn,
                                              x_memory=x_mem, inner_lr=eta, where=where,
                                              target=target)

    def first_order(v):  # the gradient through grad L dropped (first-order MAML)
      p = unravel(v)
      g = jax.lax.stop_gradient(jax.grad(loss_fn)(p))
      virtual = jax.tree.map(lambda a, b: a - eta * b, p, g)
      anchor = apply_fn(p, x_mem) if target is None else target
      diff = jnp.where(where, anchor - apply_fn(virtual, x_mem), 0.0)
      return jnp.mean(jnp.sum(diff ** 2, -1))

    h = 1e-6
    steps = h * jnp.eye(flat.size, dtype=jnp.float64)

    @jax.jit
    def everything(v):
      fd = jax.vmap(lambda e: (objective(v + e) - objective(v - e)) / (2 * h))(steps)
      return (jax.grad(objective)(v), fd, jax.grad(first_order)(v), objective(v),
              first_order(v))

    grad, fd, grad_fo, value, value_fo = map(np.asarray, everything(flat))
    scale = np.max(np.abs(fd))
    assert scale > 1e-4
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(value_fo, value, rtol=1e-12)
    # The second-order term matters here, so the check above would catch its loss.
    assert np.max(np.abs(grad_fo - fd)) > 1e-2 * scale


@pytest.mark.parametrize("setting", [LOOKAHEAD, LOOKAHEAD_CLIPPED], ids=["proposal", "clipped-saved"])
def test_lookahead_moves_parameters_before_the_main_step(setting):
  method = _method("lookahead", **setting)
  data, key = _data(), jax.random.PRNGKey(4)
  state = _state(method)
  if setting.get("lookahead_target") == "saved":
    # The saved logits Y differ from f_theta(X) here, as after earlier steps of a refresh interval.
    state = state.replace(memory_step=jnp.ones((), jnp.int32), memory=state.memory.replace(
        x=sample_batch(data, jax.random.PRNGKey(9), method.memory_batch)[0],
        logits=jax.random.normal(jax.random.PRNGKey(8), state.memory.logits.shape)))
  new, metrics = _step(method, state, data, key)
  assert float(metrics["ogm_lookahead_objective"]) > 0
  shift = float(metrics["ogm_lookahead_shift"])
  assert shift > 1e-3
  clip = setting["lookahead_clip"]
  if clip:  # each of the k steps moves theta by at most lookahead_lr * clip, and here exactly that
    bound = setting["lookahead_steps"] * setting["lookahead_lr"] * clip
    assert shift <= bound * (1 + 1e-5)
    assert shift > 0.5 * bound
  # The main step alone would be sequential fine-tuning's Adam step; the lookahead changed it.
  ref, ref_metrics = _sft_step(state, data, key)
  assert _max_change(new.solver.params, ref.solver.params) > 1e-4
  # The training batch (the same key as sft's) is the same: the loss at the moved point differs.
  assert float(metrics["solver_loss"]) != float(ref_metrics["solver_loss"])
  for m in (metrics, ref_metrics):
    assert all(np.isfinite(float(v)) for v in m.values())
  # By hand: k plain SGD steps on D (second order) from theta, then optax's Adam at the moved point.
  c = method.config
  apply = lambda p, xb: method.classifier.apply({"params": p}, xb)
  active = jnp.asarray(ACTIVE)

  @jax.jit
  def by_hand(state):
    k_batch, k_memory = jax.random.split(jax.random.fold_in(key, 0))  # run_chunk's key of step 0
    x, y = sample_batch(data, k_batch, c.train.batch_size)
    if c.ogm.lookahead_target == "saved":  # the saved memory (no refresh at memory_step 1)
      x_mem, target = state.memory.x, state.memory.logits
    else:
      x_mem, target = sample_batch(data, k_memory, c.ogm.memory_batch)[0], None

    def ce(p):
      logp = jax.nn.log_softmax(jnp.where(active, apply(p, x), -1e30))
      return -jnp.mean(logp[jnp.arange(x.shape[0]), y])

    params = state.solver.params
    for _ in range(c.ogm.lookahead_steps):
      g = jax.grad(lambda p: lookahead_objective(p, apply_fn=apply, loss_fn=ce, x_memory=x_mem,
                                                 inner_lr=c.ogm.inner_lr, where=active,
                                                 target=target))(params)
      if c.ogm.lookahead_clip:
        g, _ = optax.clip_by_global_norm(c.ogm.lookahead_clip).update(g, None)
      params = jax.tree.map(lambda p, d: p - c.ogm.lookahead_lr * d, params, g)
    tx = optax.adam(c.train.solver_lr, b1=c.train.solver_b1, b2=c.train.solver_b2)
    u, _ = tx.update(jax.grad(ce)(params), state.solver.opt_state, params)
    return optax.apply_updates(params, u)

  expected = by_hand(state)
  for a, b in zip(jax.tree.leaves(new.solver.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


# -- (b) distill -------------------------------------------------------------------------------


def test_distill_step_is_main_step_then_distillation_from_the_pre_update_teacher():
  method = _method("distill", **DISTILL)
  c = method.config
  data, key = _data(), jax.random.PRNGKey(5)
  state = _state(method)
  for i in range(2):  # both Adam states advanced, and differently
    state, _ = _step(method, state, data, key, i)
  assert int(state.memory_step) % c.ogm.refresh_every == 0  # this step saves a new batch
  new, metrics = _step(method, state, data, key, 2)

  # By hand: the same draws, plain optax Adam with the two separate states.
  tx = optax.adam(c.train.solver_lr, b1=c.train.solver_b1, b2=c.train.solver_b2)
  apply = lambda p, xb: method.classifier.apply({"params": p}, xb)
  active = jnp.asarray(ACTIVE)
  t, weight = c.ogm.temperature, c.ogm.distill_weight

  @jax.jit
  def by_hand(state):
    k_batch, k_memory = jax.random.split(jax.random.fold_in(key, 2))  # run_chunk's key of step 2
    x, y = sample_batch(data, k_batch, c.train.batch_size)
    x_mem, _ = sample_batch(data, k_memory, c.ogm.memory_batch)

    def ce(p):
      logp = jax.nn.log_softmax(jnp.where(active, apply(p, x), -1e30))
      return -jnp.mean(logp[jnp.arange(x.shape[0]), y])

    theta0 = state.solver.params
    u, main_opt = tx.update(jax.grad(ce)(theta0), state.solver.opt_state, theta0)
    theta1 = optax.apply_updates(theta0, u)
    teacher = jax.nn.softmax(jnp.where(active, apply(theta0, x_mem), -1e30) / t)

    def distill(p):
      log_student = jax.nn.log_softmax(jnp.where(active, apply(p, x_mem), -1e30) / t)
      return t ** 2 * jnp.mean(-jnp.sum(jnp.where(active, teacher * log_student, 0.0), -1))

    d_loss, d_grads = jax.value_and_grad(distill)(theta1)
    v, distill_opt = tx.update(d_grads, state.distill_opt_state, theta1)
    v = jax.tree.map(lambda g: weight * g, v)  # distill_weight scales the step, not the loss
    return x_mem, theta1, optax.apply_updates(theta1, v), main_opt, distill_opt, d_loss

  x_mem, theta1, theta2, main_opt, distill_opt, d_loss = by_hand(state)
  np.testing.assert_array_equal(np.asarray(new.memory.x), np.asarray(x_mem))
  _assert_trees_close(new.solver.params, theta2, rtol=1e-5, atol=2e-6)
  _assert_trees_close(new.solver.opt_state, main_opt, rtol=1e-4, atol=1e-9)
  _assert_trees_close(new.distill_opt_state, distill_opt, rtol=1e-4, atol=1e-9)
  np.testing.assert_allclose(float(metrics["ogm_distill_loss"]), float(d_loss), rtol=1e-5)
  assert _max_change(theta2, theta1) > 1e-4  # the distillation step did something


# -- memory ------------------------------------------------------------------------------------


def test_memory_is_refreshed_every_refresh_every_steps():
  method = _method("distill", **DISTILL)
  every = method.config.ogm.refresh_every
  data, key = _data(), jax.random.PRNGKey(6)
  state = _state(method)
  for i in range(3 * every + 1):
    before = state
    state, metrics = _step(method, state, data, key, i)
    refreshed = i % every == 0
    assert float(metrics["ogm_refreshed"]) == float(refreshed)
    same_x = np.array_equal(np.asarray(state.memory.x), np.asarray(before.memory.x))
    same_y = np.array_equal(np.asarray(state.memory.logits), np.asarray(before.memory.logits))
    assert same_x == same_y == (not refreshed), i
    if refreshed:  # Y = the model's logits on X with the parameters before the step
      np.testing.assert_allclose(
          np.asarray(state.memory.logits),
          np.asarray(method.classifier.apply({"params": before.solver.params}, state.memory.x)),
          rtol=1e-5, atol=1e-5)
  # A new task starts with a new batch, whatever the counter said.
  assert int(state.memory_step) % every != 0
  state = method.begin_task(state, 2, np.arange(10) < 3)
  state, metrics = _step(method, state, data, key, 0)
  assert float(metrics["ogm_refreshed"]) == 1.0


def test_generator_memory_draws_from_the_previous_generator():
  method = _method("distill", memory="generator")
  assert [p.name for p in method.phases()] == ["generator", "solver"]
  assert [p.name for p in _method("distill", **DISTILL).phases()] == ["solver"]
  n, key = method.config.ogm.memory_batch, jax.random.PRNGKey(7)
  state = method.begin_task(method.init(jax.random.PRNGKey(0)), 0, np.arange(10) < 1)
  data0 = _data((0,))
  first, refreshed = method.refreshed_memory(state, data0, key)  # no G_{t-1} yet: current inputs
  assert bool(refreshed)
  np.testing.assert_array_equal(np.asarray(first.x), np.asarray(sample_batch(data0, key, n)[0]))
  state = method.begin_task(method.end_task(state.replace(memory=first)), 1, ACTIVE)
  assert state.frozen is not None
  second, _ = method.refreshed_memory(state, _data(), key)
  replay = method.generative.replay_batch(state.frozen, key, n)[0]
  np.testing.assert_allclose(np.asarray(second.x), np.asarray(replay), rtol=1e-6, atol=1e-6)
  assert not np.allclose(np.asarray(second.x), np.asarray(first.x))
  np.testing.assert_allclose(
      np.asarray(second.logits),
      np.asarray(method.classifier.apply({"params": state.solver.params}, second.x)),
      rtol=1e-5, atol=1e-5)
  assert method.sample(state, key, jnp.zeros((2,), jnp.int32)).shape == (2,) + SHAPE
  assert _method("distill", **DISTILL).sample(state, key, jnp.zeros((2,), jnp.int32)) is None


# -- chunks ------------------------------------------------------------------------------------


CHUNK_CASES = [("lookahead", LOOKAHEAD), ("distill", DISTILL), ("project", FROZEN)]
assert [v for v, _ in CHUNK_CASES] == list(VARIANTS)  # every variant


@pytest.mark.slow
@pytest.mark.parametrize("variant,settings", CHUNK_CASES)
def test_k_step_chunk_equals_single_steps(variant, settings):
  method = _method(variant, **settings)
  base = _state(method)
  data, key = _data(), jax.random.PRNGKey(8)
  o, tr = method.config.ogm, method.config.train
  # The largest step a parameter takes: Adam's (the main step, and distill's scaled by its weight)
  # or a lookahead SGD step; updates per step: the lookahead steps, the main and distill steps.
  lr = max(tr.solver_lr * (1 + o.distill_weight), o.lookahead_lr if variant == "lookahead" else 0.0)
  _, chunked = assert_chunks_equal_single_steps(
      method.solver_step, base, data, key, lr=lr, updates_per_step=o.lookahead_steps + 2,
      what=f"ogm {variant}")
  assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(chunked.solver.params))
  assert int(chunked.memory_step) == 3
  assert _max_change(chunked.solver.params, base.solver.params) > 1e-5


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,value", [("variant", "maml"), ("memory", "buffer"),
                                       ("norm", "nuclear"), ("refresh_every", 0),
                                       ("temperature", 0.0), ("epsilon", -1.0),
                                       ("lookahead_clip", -1.0), ("lookahead_target", "virtual")])
def test_bad_ogm_values_name_the_key(key, value):
  c = _config()
  c.ogm[key] = value
  with pytest.raises(ValueError, match=rf"config\.ogm\.{key}="):
    check_config(c)
  with pytest.raises(ValueError, match=rf"config\.ogm\.{key}="):
    make_ogm(c, SHAPE, 10)


def test_config_variant_argument():
  assert ogm_config.get_config("smoke").ogm.variant == "distill"
  for variant in VARIANTS:
    assert ogm_config.get_config(f"smoke,variant={variant}").ogm.variant == variant


def test_unsupported_combinations_are_refused():
  c = _config("project", model={"classifier": "cnn"})
  with pytest.raises(ValueError, match=r"model\.classifier='cnn'.*ogm\.variant='project'"):
    check_config(c)
  with pytest.raises(ValueError, match=r"model\.classifier='cnn'.*ogm\.variant='project'"):
    make_ogm(c, SHAPE, 10)
  make_ogm(_config("distill", model={"classifier": "cnn"}), SHAPE, 10)  # fine for the others
  with pytest.raises(ValueError, match="parallel.mode='pmap' is not implemented.*'jit'"):
    make_ogm(_config(), SHAPE, 10, Parallel("pmap", tuple(jax.devices()[:2])))
  c = _config()
  c.parallel.mode = "pmap"
  with pytest.raises(ValueError, match="parallel.mode='pmap' is not implemented"):
    check_config(c)


# -- the loop ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_run_through_the_loop(mnist_data, tmp_path):
  from gmcl import loop  # pylint: disable=import-outside-toplevel
  c = _config("project", memory="generator", epsilon=2.0)
  c.train.n_critic = 1  # a smaller generator step to compile
  c.data.max_tasks = 2
  results = loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lambda s: None)
  R = np.array(results["accuracy_matrix"], dtype=float)
  assert R.shape == (2, 2)
  assert np.all(np.isfinite(np.tril(R))) and np.isnan(R[0, 1])
  assert len(results["A"]) == 2 and all(np.isfinite(results["A"]))
  metrics = results["per_task"][1]["metrics"]
  for name in ("solver/ogm_alpha", "solver/ogm_memory_drift", "generator/generator_loss"):
    assert np.isfinite(metrics[name]), name
  assert (tmp_path / "samples_task02.png").exists()
