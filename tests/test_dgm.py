"""DGM: the masked growing generator, its growth and protection of earlier tasks, and the method."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import dgm as dgm_config
from gmcl.models import dgm_generator
from gmcl.data.sampling import task_arrays
from gmcl.methods import build_method, run_chunk
from gmcl.methods.dgm import s_schedule

SHAPE = (32, 32, 1)


def _naive_conv_transpose(x, w, stride, padding):
  """torch.nn.functional.conv_transpose2d by its definition (scatter-add), NHWC and a (k, k, in, out)
  kernel; torch's kernel is this one flipped in space."""
  b, h, wd, _ = x.shape
  k = w.shape[0]
  out = np.zeros((b, (h - 1) * stride + k, (wd - 1) * stride + k, w.shape[-1]))
  wf = w[::-1, ::-1]
  for i in range(h):
    for j in range(wd):
      out[:, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
          "bc,uvco->buvo", x[:, i, j], wf)
  end_h, end_w = out.shape[1] - padding, out.shape[2] - padding
  return out[:, padding:end_h, padding:end_w]


@pytest.mark.parametrize("size, stride, padding", [(1, 1, 0), (4, 2, 1), (3, 2, 1)])
def test_conv_transpose_is_torchs(size, stride, padding):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  w = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)
  got = np.asarray(dgm_generator._conv_transpose(jnp.asarray(x), jnp.asarray(w), stride, padding))
  want = _naive_conv_transpose(x, w, stride, padding)
  assert got.shape == want.shape == (2, (size - 1) * stride - 2 * padding + 4,) * 1 + got.shape[2:]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_official_generator_shapes():
  spec = dgm_generator.GeneratorSpec(kind="conv", widths=(24, 12, 6))
  p, st = dgm_generator.init_params(spec, jax.random.PRNGKey(0))
  p, st = dgm_generator.add_task(spec, p, st, jax.random.PRNGKey(1))
  assert [k.shape for k in p["kernel"]] == [(4, 4, 128, 24), (4, 4, 24, 12), (4, 4, 12, 6)]
  assert p["head"][0].shape == (4, 4, 6, 1)
  assert [e.shape for e in p["embedding"]] == [(10, 4, 4, 128, 24), (10, 4, 4, 24, 12), (10, 4, 4, 12, 6)]
  images, gates, _ = dgm_generator.generate(spec, p, st, jnp.zeros((3, 128)), 0, 1.0, train=True)
  assert images.shape == (3, 32, 32, 1) and float(jnp.max(jnp.abs(images))) <= 1.0
  np.testing.assert_array_equal(gates[0], 0.5)  # embeddings start at 0, as in the official code
  with pytest.raises(ValueError, match="64x64 images, not 32x32"):
    dgm_generator.GeneratorSpec(kind="conv", widths=(8, 4, 2, 1))
  with pytest.raises(ValueError, match="task 1 has not begun"):
    dgm_generator.generate(spec, p, st, jnp.zeros((3, 128)), 1, 1.0)


def test_noise_carries_the_one_hot_label():
  z = dgm_generator.noise(jax.random.PRNGKey(0), jnp.array([3, 0]), 16, 10)
  np.testing.assert_array_equal(z[:, :10], np.eye(10)[[3, 0]])
  assert float(jnp.std(z[:, 10:])) > 0.3


def test_growth_plan_hand_computed():
  # DGMw on the official shapes: z 128 -> 24 -> 12 -> 6, 4x4 kernels (K = 16).
  spec = dgm_generator.GeneratorSpec(kind="conv", widths=(24, 12, 6))
  p, _ = dgm_generator.init_params(spec, jax.random.PRNGKey(0))
  new = [5000, 1000, 700]
  a1 = math.ceil(5000 / (128 * 16))  # 3
  a2 = max(math.ceil((1000 - a1 * 12 * 16) / ((24 + a1) * 16)), 0)  # ceil(424 / 432) = 1
  a3 = max(math.ceil((700 - a2 * 6 * 16) / ((12 + a2) * 16)), 0)  # ceil(604 / 208) = 3
  assert dgm_generator.growth_plan(spec, p, new) == [a1, a2, a3] == [3, 1, 3]
  # Layer 3 gains 6 * 16 = 96 weights from the unit layer 2 adds: enough for 10, so none of its own.
  assert dgm_generator.growth_plan(spec, p, [0, 10, 10]) == [0, 1, 0]
  # DGMa: exactly the newly reserved units.
  spec_a = dgm_generator.GeneratorSpec(kind="conv", widths=(24, 12, 6), mask="activation")
  assert dgm_generator.growth_plan(spec_a, p, [7, 0, 2]) == [7, 0, 2]


def test_keep_multipliers_hand_computed():
  spec = dgm_generator.GeneratorSpec(kind="dense", z_dim=2, widths=(3, 2), mask="activation",
                           image_shape=(2, 2, 1))
  reserved = [jnp.array([1.0, 0.0, 1.0]), jnp.array([0.0, 1.0])]
  k0, k1 = dgm_generator.keep_multipliers(spec, reserved)
  np.testing.assert_array_equal(k0, [[0, 1, 0], [0, 1, 0]])  # z is unmasked: 1 - a_out
  np.testing.assert_array_equal(k1, [[1, 0], [1, 1], [1, 0]])  # 1 - min(a_out, a_in)
  spec_w = dgm_generator.GeneratorSpec(kind="dense", z_dim=2, widths=(3,), mask="weight", image_shape=(2, 2, 1))
  r = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
  np.testing.assert_array_equal(dgm_generator.keep_multipliers(spec_w, [r])[0], 1 - r)


def test_sparsity_weight_scales_with_the_network():
  spec = dgm_generator.GeneratorSpec(kind="dense", widths=(10, 20, 30), image_shape=(4, 4, 1))
  p, _ = dgm_generator.init_params(spec, jax.random.PRNGKey(0))
  assert dgm_generator.sparsity_weight(0.08, spec, p) == pytest.approx(0.08)
  p, _ = dgm_generator.resize(spec, p, dgm_generator.empty_reserved(spec, p), (15, 20, 37), 1, jax.random.PRNGKey(1))
  assert dgm_generator.sparsity_weight(0.08, spec, p) == pytest.approx(0.08 * 72 / 60)


def test_s_schedules_follow_the_official_formulas():
  s_max, steps = 1e4, 30  # three epochs of ten steps
  # DGMw, epoch 0: s_max_epoch = 1/s_max, so s starts at s_max and falls (the official quirk).
  s, s_ep = s_schedule(0, steps, 3, s_max, nested=True)
  assert float(s_ep) == pytest.approx(1 / s_max) and float(s) == pytest.approx(s_max)
  s, s_ep = s_schedule(25, steps, 3, s_max, nested=True)  # epoch 2, step 5 of 10
  want_ep = (s_max - 1 / s_max) * 2 / 3 + 1 / s_max
  assert float(s_ep) == pytest.approx(want_ep)
  assert float(s) == pytest.approx((want_ep - 1 / want_ep) * 0.5 + 1 / want_ep)
  # The last step of the task ends an epoch: s close to that epoch's maximum.
  s, s_ep = s_schedule(29, steps, 3, s_max, nested=True)
  assert float(s) == pytest.approx((want_ep - 1 / want_ep) * 0.9 + 1 / want_ep)
  # DGMa: constant within an epoch.
  a = [float(s_schedule(i, steps, 3, 1e5, nested=False)[0]) for i in (10, 15, 19)]
  assert a[0] == a[1] == a[2] == pytest.approx((1e5 - 1e-5) / 3 + 1e-5, rel=1e-6)


@pytest.mark.parametrize("mask", ["weight", "activation"])
def test_growth_preserves_earlier_outputs_exactly_and_adds_the_stated_units(mask):
  spec = dgm_generator.GeneratorSpec(kind="conv", widths=(6, 4, 2), mask=mask, z_dim=16)
  p, st = dgm_generator.init_params(spec, jax.random.PRNGKey(0))
  p, st = dgm_generator.add_task(spec, p, st, jax.random.PRNGKey(1))
  p["embedding"] = [e.at[0].set(jax.random.normal(jax.random.PRNGKey(l), e.shape[1:]))
                    for l, e in enumerate(p["embedding"])]
  z = jax.random.normal(jax.random.PRNGKey(5), (4, 16))
  run = jax.jit(lambda tp, ts: dgm_generator.generate(spec, tp, ts, z, 0, hard=True)[0])
  before = np.asarray(run(*dgm_generator.task_params(spec, p, st, 0)))
  empty = dgm_generator.empty_reserved(spec, p)
  reserved = dgm_generator.task_mask(spec, p, 0)
  new = dgm_generator.newly_reserved(empty, reserved)
  assert new == [int(jnp.sum(r)) for r in reserved] and min(new) > 0
  grown, reserved2, adds = dgm_generator.grow(spec, p, empty, reserved, 1, jax.random.PRNGKey(9))
  assert adds == dgm_generator.growth_plan(spec, p, new) and sum(adds) > 0
  assert dgm_generator.current_widths(grown) == tuple(w + a for w, a in zip((6, 4, 2), adds))
  if mask == "activation":
    assert list(adds) == new  # one new unit per newly reserved unit: the free capacity is kept
  after = np.asarray(run(*dgm_generator.task_params(spec, grown, st, 0)))
  np.testing.assert_array_equal(after, before)
  # New entries are shut for the finished task (-90), open (0) for the next; old values kept.
  e0 = grown["embedding"][0]
  old = (slice(None),) * 0 + tuple(slice(0, d) for d in p["embedding"][0].shape[1:])
  np.testing.assert_array_equal(e0[0][old], p["embedding"][0][0])
  assert float(jnp.sum(e0[0] == -90.0)) == e0[0].size - p["embedding"][0][0].size
  assert float(jnp.max(jnp.abs(e0[1]))) == 0.0
  # The cumulative mask is zero-padded.
  assert float(jnp.sum(reserved2[0])) == float(jnp.sum(reserved[0]))


def _tiny_config(variant, growth):
  c = dgm_config.get_config(f"smoke,variant={variant}")
  c.dgm.architecture = "dense"
  c.dgm.hidden = (8, 16, 16)
  c.model.z_dim = 16
  c.train.batch_size = 16
  c.train.generator_steps = 6
  c.dgm.growth = growth
  return c


def _task_data(t, n=64):
  rng = np.random.default_rng(t)
  x = rng.uniform(-1, 1, size=(n,) + SHAPE).astype(np.float32)
  x[:, t, :, 0] = 1.0  # class t lights row t
  return task_arrays(x, np.full((n,), t, np.int32))


@pytest.mark.slow
@pytest.mark.parametrize("variant, growth", [("dgmw", True), ("dgmw", False), ("dgma", True),
                                             ("dgma", False)])
def test_later_tasks_leave_earlier_generators_bitwise_unchanged(variant, growth):
  c = _tiny_config(variant, growth)
  method = build_method("dgm", c, SHAPE, 10)
  state = method.init(jax.random.PRNGKey(0))
  z = dgm_generator.noise(jax.random.PRNGKey(7), jnp.zeros((8,), jnp.int32), 16, 10)
  task0 = jax.jit(lambda tp, ts: method.generate_task(tp, ts, z, 0))
  outputs, kernels, reserved = [], [], []
  for t in range(3):
    state = method.begin_task(state, t, np.arange(10) <= t)
    kernels.append([np.asarray(k) for k in state.generator.params["kernel"]])
    reserved.append([np.asarray(r) for r in state.reserved])
    for i in range(c.train.generator_steps):
      state, metrics = run_chunk(method.gan_step, state, _task_data(t), jax.random.PRNGKey(t), i, 1)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    if t > 0:  # compensation: weights reserved before the task did not move; free ones did
      keep = dgm_generator.keep_multipliers(method.spec, [jnp.asarray(x) for x in reserved[t]])
      frozen_total = 0
      for l, k_before in enumerate(kernels[t]):
        k_after = np.asarray(state.generator.params["kernel"][l])
        frozen = np.asarray(keep[l]) == 0
        frozen_total += int(frozen.sum())
        np.testing.assert_array_equal(k_after[frozen], k_before[frozen])
        assert np.any(k_after[~frozen] != k_before[~frozen])
      assert frozen_total > 0
    widths_before = dgm_generator.current_widths(state.generator.params)
    state = method.end_task(state)
    widths_after = dgm_generator.current_widths(state.generator.params)
    assert (widths_after > widths_before) if growth else (widths_after == widths_before)
    outputs.append(np.asarray(task0(*dgm_generator.task_params(method.spec, state.generator.params,
                                                     state.generator.batch_stats, 0))))
  np.testing.assert_array_equal(outputs[1], outputs[0])
  np.testing.assert_array_equal(outputs[2], outputs[0])
  sizes = method.extra_scores(state, None, None, 2, None)["generator_size"]
  assert sizes["widths"] == list(dgm_generator.current_widths(state.generator.params))
  assert all(0 < f <= 1 for f in sizes["reserved_fraction"])


@pytest.mark.slow
def test_replay_is_a_fixed_pool_indexed_like_the_real_batch():
  c = _tiny_config("dgmw", True)
  method = build_method("dgm", c, SHAPE, 10)
  state = method.init(jax.random.PRNGKey(0))
  for t in range(2):
    state = method.begin_task(state, t, np.arange(10) <= t)
    if t == 0:
      state = method.end_task(state)
  a, ya = method.replay(state, 0, jnp.arange(16))
  b, yb = method.replay(state, 0, jnp.arange(16)[::-1])
  np.testing.assert_array_equal(np.asarray(a)[::-1], np.asarray(b))  # sample i is sample i
  np.testing.assert_array_equal(ya, 0)
  assert float(jnp.std(a[0] - a[1])) > 0  # different indices, different noise


@pytest.mark.slow
def test_generator_gradient_jit_equals_no_jit():
  """The generator's objective (masked forward, batch norm, sparsity) and its gradient at task 1,
  after growth, compiled and op by op."""
  spec = dgm_generator.GeneratorSpec(kind="conv", widths=(6, 4, 2), mask="weight", z_dim=16)
  p, st = dgm_generator.init_params(spec, jax.random.PRNGKey(0))
  p, st = dgm_generator.add_task(spec, p, st, jax.random.PRNGKey(1))
  p["embedding"] = [e.at[0].set(jax.random.normal(jax.random.PRNGKey(l), e.shape[1:]))
                    for l, e in enumerate(p["embedding"])]
  reserved = dgm_generator.task_mask(spec, p, 0)
  empty = dgm_generator.empty_reserved(spec, p)
  p, reserved, _ = dgm_generator.grow(spec, p, empty, reserved, 1, jax.random.PRNGKey(2))
  p, st = dgm_generator.add_task(spec, p, st, jax.random.PRNGKey(3))
  z = dgm_generator.noise(jax.random.PRNGKey(4), jnp.full((8,), 1), 16, 10)

  def loss(params):
    images, gates, _ = dgm_generator.generate(spec, params, st, z, 1, 37.0, train=True)
    return jnp.mean(jnp.square(images - 0.3)) + 0.08 * hat_sparsity(gates, reserved)

  from gmcl.losses.hat import sparsity_regularizer as hat_sparsity
  l_jit, g_jit = jax.jit(jax.value_and_grad(loss))(p)
  with jax.disable_jit():
    l_eager, g_eager = jax.value_and_grad(loss)(p)
  np.testing.assert_allclose(l_jit, l_eager, rtol=1e-5)
  assert float(jnp.max(jnp.abs(g_jit["kernel"][0]))) > 0
  for a, b in zip(jax.tree.leaves(g_jit), jax.tree.leaves(g_eager)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Task 0's batch norm and head get no gradient from task 1's objective.
  assert all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves((g_jit["bn"][0], g_jit["head"][0])))


def test_bad_dgm_config_is_named():
  from gmcl.config import validate_config
  c = dgm_config.get_config("smoke")
  c.dgm.variant = "dgmx"
  with pytest.raises(ValueError, match=r"dgm.variant='dgmx'.*'dgmw' or 'dgma'"):
    validate_config(c)
  c = dgm_config.get_config("smoke")
  c.data.pad_to = 0
  with pytest.raises(ValueError, match="data.pad_to=0.*32"):
    validate_config(c)
  with pytest.raises(ValueError, match="variant='gan'"):
    dgm_config.get_config("variant=gan")
  c = dgm_config.get_config("smoke")
  c.dgm.critic_init = "xavier"
  with pytest.raises(ValueError, match=r"dgm.critic_init='xavier'.*'lecun' or 'dcgan'"):
    validate_config(c)


@pytest.mark.parametrize("args, init", [("variant=dgmw", "dcgan"), ("variant=dgma", "dcgan"),
                                        ("variant=dgmw,cpu", "lecun"), ("variant=dgma,demo", "lecun")])
def test_critic_init_is_the_official_one_except_where_results_were_measured_without(args, init):
  c = dgm_config.get_config(args)
  assert c.dgm.critic_init == init
  method = build_method("dgm", c, (32, 32, 1), 10) if c.dgm.critic == "dcgan" else None
  if method is not None:
    assert method.critic.param_init == init
  # A checkpoint or record from before the key existed is the code that drew Flax's defaults.
  from gmcl.registry import method_spec
  assert method_spec("dgm").added_keys["dgm.critic_init"] == "lecun"


@pytest.mark.parametrize("reinit", [True, False])
def test_critic_is_reinitialised_or_keeps_its_trunk(reinit):
  c = _tiny_config("dgmw", True)
  c.dgm.reinit_critic = reinit
  method = build_method("dgm", c, SHAPE, 10)
  state = method.end_task(method.begin_task(method.init(jax.random.PRNGKey(0)), 0, np.arange(10) <= 0))
  before = state.critic.params
  after = method.begin_task(state, 1, np.arange(10) <= 1).critic.params
  for name in before:
    same = all(bool(jnp.array_equal(a, b)) for a, b in
               zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])))
    # The official code resets both heads at every task, and the whole critic with reinit_D.
    assert same == (not reinit and name not in ("wgan_head", "aux_head")), name


@pytest.mark.parametrize("args, every", [
    ("variant=dgmw", 2 * math.ceil(9494 / 101)), ("variant=dgma", 5 * math.ceil(9494 / 101)),
    ("variant=dgmw,dataset=svhn_cropped", 2 * math.ceil(14194 / 151)),
    ("variant=dgmw,cpu", 2 * 100), ("variant=dgma,cpu", 5 * 100), ("variant=dgmw,smoke", 2 * 2)])
def test_validation_cadence_is_in_epochs_and_follows_an_override_of_the_steps(args, every):
  """The official cadence (every 2 epochs DGMw, 5 DGMa), also after --config.train.generator_steps=N."""
  from gmcl.config import validate_config
  c = dgm_config.get_config(args)
  assert c.eval.validation_every_steps == every
  k = 2 if "dgmw" in args else 5
  c.train.generator_steps = 3001  # a command-line override lands after get_config, as here
  assert c.eval.validation_every_steps == k * math.ceil(3001 / c.dgm.epochs)
  c.dgm.epochs = 7
  assert c.eval.validation_every_steps == k * math.ceil(3001 / 7)
  c.eval.validation_every_steps = 50  # the cadence's own override wins and leaves the steps alone
  assert (c.eval.validation_every_steps, c.train.generator_steps) == (50, 3001)
  assert c.to_dict()["eval"]["validation_every_steps"] == 50
  # The docstring's "no hold-out": both keys, and the config is valid.
  c.eval.validation_fraction, c.eval.validation_every_steps = 0.0, 0
  validate_config(c)
  # A_t as the DGM code's valid(): the mean of the tasks' accuracies; gmcl's pooled average is a value
  assert c.eval.accuracy_average == "tasks"
  c.eval.accuracy_average = "examples"
  validate_config(c)
  c.eval.accuracy_average = "classes"
  with pytest.raises(ValueError, match=r"config\.eval\.accuracy_average='classes' is invalid; valid: \"examples\""):
    validate_config(c)
