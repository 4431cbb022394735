"""Data-parallel steps on 2 and 8 simulated CPU devices give the parameters of one device."""

import jax
import numpy as np
import pytest

from experiments.configs import dgr as dgr_config
from experiments.configs import mergan as mergan_config
from gmcl.data.sampling import task_arrays
from gmcl.methods import build_method
from gmcl.methods.base import run_chunk
from gmcl.parallel import make_parallel
from tolerances import ROUNDING_PER_UPDATE, assert_match_up_to_summation_order, ravel

SHAPE = (32, 32, 1)
N_STEPS = 3

needs_8_devices = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


CASES = {"dgr-unconditional": ("dgr", {}), "dgr-conditional": ("dgr", {"conditional": True}),
         "mergan-ra": ("mergan", {"variant": "ra"}), "mergan-jr": ("mergan", {"variant": "jr"})}


def _config(case):
  method, options = CASES[case]
  if method == "dgr":
    c = dgr_config.get_config("smoke")
    c.model.conditional = options.get("conditional", False)
  else:
    c = mergan_config.get_config(f"smoke,variant={options['variant']}")
    c.mergan.oracle = False
    c.mergan.ra_weight = 1.0  # large enough that the alignment term moves the generator
  c.model.gan = "mlp"
  c.train.batch_size = 16  # 2 per device
  return c


def _data(classes, n=64):
  rng = np.random.default_rng(0)
  y = rng.choice(classes, size=n).astype(np.int32)
  x = np.clip(rng.uniform(-1, 1, (n,) + SHAPE) + y[:, None, None, None] * 0.1, -1, 1)
  return task_arrays(x.astype(np.float32), y)


def _train(mode, case, devices=8):
  """Task 0 then N_STEPS of each phase of task 1 (with replay) under ``mode``."""
  parallel = make_parallel(mode, devices)
  method = build_method(CASES[case][0], _config(case), SHAPE, 10, parallel)
  state = method.begin_task(method.init(jax.random.PRNGKey(0)), 0, np.arange(10) < 1)
  for t, data in ((0, _data([0])), (1, _data([1]))):
    if t == 1:
      state = method.begin_task(method.end_task(state), 1, np.arange(10) < 2)
    for p, phase in enumerate(method.phases()):
      key = jax.random.fold_in(jax.random.PRNGKey(t), p)
      for i in range(N_STEPS):
        state, metrics = run_chunk(phase.step, state, data, key, i, 1, "unroll", parallel)
  return jax.device_get(state.replace(frozen=None)), jax.device_get(metrics)




@pytest.fixture(scope="module", params=list(CASES))
def one_device(request):
  return request.param, _train("none", request.param)


@pytest.mark.slow
@needs_8_devices
@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_eight_devices_match_one(one_device, mode):
  _check_devices_match_one(one_device, mode, 8)


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (simulated) devices")
def test_two_devices_jit_match_one():
  """The fast tier's data-parallel check: DGR (generator, critic and solver, with replay) on a
  mesh of two devices equals one device up to summation order."""
  case = "dgr-unconditional"
  _check_devices_match_one((case, _train("none", case)), "jit", 2)


def _model(state, name):
  """A model of a state by name: DGR's generator and critic live in its generative memory."""
  return getattr(state.memory, name) if name != "solver" and hasattr(state, "memory") else getattr(state, name)


def _check_devices_match_one(one_device, mode, devices):
  case, (single, m_single) = one_device
  multi, m_multi = _train(mode, case, devices)
  c = _config(case)
  updates = 2 * N_STEPS  # two tasks
  t = c.train
  solver, gan = (t.solver_lr, (t.solver_b1, t.solver_b2)), (t.gan_lr, (t.gan_b1, t.gan_b2))
  settings = {"solver": solver + (updates,), "generator": gan + (updates,),
              "critic": gan + (updates * t.n_critic,)}
  for name, (lr, betas, n) in settings.items():
    diff = assert_match_up_to_summation_order(
        _model(single, name).params, _model(multi, name).params, lr=lr, betas=betas, updates=n,
        what=f"{name}, 1 vs {devices} devices ({mode}, {case})")
    if name == "solver":
      solver_diff = diff
  # The metrics' own cross-device reduction: a wrong one (a sum for a mean, one device's rows for
  # all) is off by a factor of order one. Rounding is bounded on the parameters above; through
  # G_{t-1}'s replays and C_{t-1}'s targets, each rounded by its own summation order, it reaches the
  # losses amplified, so they are held to a thousandth, far below what the check must catch.
  for key in ("solver_loss", "solver_real_loss", "solver_replay_loss"):
    np.testing.assert_allclose(m_single[key], m_multi[key], rtol=1e-3)
  # And training moved the parameters far more than that.
  init = build_method(CASES[case][0], c, SHAPE, 10).init(jax.random.PRNGKey(0))
  moved = np.abs(ravel(init.solver.params) - ravel(single.solver.params))
  assert np.median(moved) > 100 * np.median(solver_diff)
  assert np.mean(moved > ROUNDING_PER_UPDATE * updates * c.train.solver_lr) > 0.5


@pytest.mark.slow
@needs_8_devices
@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_lsa_eight_devices_match_one(mode):
  """lsa's solver, bridge and generative-memory steps (lsa.replay = "generator") are data-parallel:
  two tasks, N_STEPS of each phase, on 8 devices equal one device up to summation order."""
  from experiments.configs import lsa as lsa_config
  c = lsa_config.get_config("smoke")
  c.lsa.replay = "generator"
  c.model.classifier_hidden = (32,)
  c.model.generator_features = c.model.critic_features = 16
  c.train.batch_size = 16  # 2 per device
  states = {}
  for m in ("none", mode):
    parallel = make_parallel(m, 8)
    method = build_method("lsa", c, SHAPE, 10, parallel)
    state = method.init(jax.random.PRNGKey(0))
    for t, classes in ((0, [0, 1]), (1, [2, 3])):
      state = method.begin_task(state, t, np.isin(np.arange(10), sum(([0, 1], [2, 3])[:t + 1], [])))
      for p, phase in enumerate(method.phases()):
        key = jax.random.fold_in(jax.random.PRNGKey(t), p)
        for i in range(N_STEPS):
          state, metrics = run_chunk(phase.step, state, _data(classes), key, i, 1, "unroll",
                                     parallel)
        if phase.name == "bridge" and t == 1:
          assert float(metrics["bridge_replay_loss"]) > 0
      if t == 0:
        state = method.end_task(state)
    states[m] = jax.device_get((state.solver.params, state.bridge.params,
                                state.memory.generator.params, metrics))
  (s1, b1, g1, m1), (s8, b8, g8, m8) = states["none"], states[mode]
  updates = 2 * N_STEPS  # at most two tasks of N_STEPS updates each
  t = c.train
  for what, one, eight, lr, betas in (
      ("solver", s1, s8, t.solver_lr, (t.solver_b1, t.solver_b2)),
      ("bridge", b1, b8, c.lsa.bridge_lr, (0.9, 0.999)),  # lsa's bridge optimiser
      ("generator", g1, g8, t.gan_lr, (t.gan_b1, t.gan_b2))):
    diff = assert_match_up_to_summation_order(one, eight, lr=lr, betas=betas, updates=updates,
                                              what=f"lsa {what} ({mode})")
    if what == "bridge":
      bridge_diff = diff
  for key in ("bridge_loss", "bridge_current_loss", "bridge_replay_loss"):
    np.testing.assert_allclose(m1[key], m8[key], rtol=1e-4)
  b0 = build_method("lsa", c, SHAPE, 10).init(jax.random.PRNGKey(0)).bridge.params
  assert np.median(np.abs(ravel(b0) - ravel(b1))) > 100 * np.median(bridge_diff)


JIT_CASES = {"ogm-lookahead": ("ogm", "lookahead", {}), "ogm-project": ("ogm", "project", {}),
             "lgm-ra-bridge": ("lgm", "ra-bridge", {}),
             "lgm-hat-prototype": ("lgm", "hat-prototype", {})}


@pytest.mark.slow
@needs_8_devices
@pytest.mark.parametrize("case", list(JIT_CASES))
def test_jit_mesh_of_eight_devices_matches_one(case):
  """ogm and lgm run data-parallel as jit over a mesh (XLA partitions the global batch): two
  tasks, N_STEPS of each phase, on 8 devices equal one device up to summation order."""
  import importlib
  name, variant, section = JIT_CASES[case]
  c = importlib.import_module(f"experiments.configs.{name}").get_config(f"smoke,variant={variant}")
  for key, value in section.items():
    c[name][key] = value
  c.model.classifier_hidden = (32,)
  c.model.generator_features = c.model.critic_features = 16
  if name == "lgm":
    c.lgm.generator_hidden = c.lgm.critic_hidden = (32,)
    c.lgm.prototype_steps = 2
  c.train.batch_size = 16  # 2 per device
  finals = {}
  for m in ("none", "jit"):
    parallel = make_parallel(m, 8)
    method = build_method(name, c, SHAPE, 10, parallel)
    state = method.init(jax.random.PRNGKey(0))
    start = ravel(jax.device_get(state.solver.params))  # before the chunks donate it
    for t, classes in ((0, [0, 1]), (1, [2, 3])):
      state = method.begin_task(state, t, np.isin(np.arange(10), [0, 1, 2, 3][:2 * t + 2]))
      for p, phase in enumerate(method.phases()):
        key = jax.random.fold_in(jax.random.PRNGKey(t), p)
        for i in range(min(N_STEPS, phase.num_steps)):
          state, _ = run_chunk(phase.step, state, _data(classes), key, i, 1, "unroll", parallel)
      state = method.end_task(state)
    finals[m] = jax.device_get(state.solver.params)
  # Each phase's step updates the solver at most twice (ogm's lookahead and main updates).
  t = c.train
  diff = assert_match_up_to_summation_order(finals["none"], finals["jit"], lr=t.solver_lr,
                                            betas=(t.solver_b1, t.solver_b2),
                                            updates=4 * N_STEPS, what=f"{case} solver")
  one = ravel(finals["none"])
  assert np.median(np.abs(one - start)) > 100 * np.median(diff)  # training moved it


@needs_8_devices
def test_batch_must_divide_over_devices():
  c = _config("dgr-unconditional")
  c.train.batch_size = 12
  with pytest.raises(ValueError, match="batch_size=12 must be divisible by the 8 devices"):
    build_method("dgr", c, SHAPE, 10, make_parallel("pmap", 8))


@pytest.mark.slow
@needs_8_devices
@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_loop_runs_data_parallel(mnist_data, tmp_path, mode):
  from experiments.configs import sft
  from gmcl import loop
  runs = {}
  for m in ("none", mode):
    c = sft.get_config("smoke")
    c.data.max_tasks = 2
    c.parallel.mode = m
    runs[m] = loop.run(c, str(tmp_path / m), data=mnist_data, progress=False, log=lambda s: None)
  np.testing.assert_allclose(runs[mode]["A"], runs["none"]["A"], atol=0.01)
  assert runs[mode]["config"]["parallel"]["mode"] == mode
