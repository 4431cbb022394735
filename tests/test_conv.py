"""gmcl.ops.conv and gmcl.models.layers: every implementation is the native convolution, in value
and in first and second derivatives; the layers are flax's, parameter for parameter."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmcl.models import DCGANCritic, DCGANGenerator
from gmcl.models.layers import Conv, ConvTranspose
from gmcl.ops import conv as C

GEOMETRIES = {  # name: (geometry, c_in, c_out)
    "mergan G 4->8": (C.conv_transpose_geometry((4, 4), (5, 5), 2), 6, 4),
    "mergan G 16->32 to 1": (C.conv_transpose_geometry((16, 16), (5, 5), 2), 3, 1),
    "mergan D 32->16": (C.conv_geometry((32, 32), (5, 5), 2), 1, 3),
    "mergan D 16->8": (C.conv_geometry((16, 16), (5, 5), 2), 3, 4),
    "mergan D 8->4": (C.conv_geometry((8, 8), (5, 5), 2), 4, 5),
    "odd 7->14 transposed": (C.conv_transpose_geometry((7, 7), (5, 5), 2), 3, 2),
    "odd 7->4 strided": (C.conv_geometry((7, 7), (5, 5), 2), 3, 2),
    "cnn 3x3 same": (C.conv_geometry((6, 6), (3, 3), 1), 2, 3),
    "dgm torch k4 8->16": (C.torch_conv_transpose_geometry((8, 8), 4, 2, 1), 4, 3),
    "dgm torch 1->4": (C.torch_conv_transpose_geometry((1, 1), 4, 1, 0), 5, 3),
    "transposed stride 3": (C.conv_transpose_geometry((4, 4), (5, 5), 3), 2, 2),
    "valid transposed (no sub-pixel)": (C.conv_transpose_geometry((4, 4), (3, 3), 2, "VALID"), 2, 2),
}


def _inputs(g, cin, cout, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, *g.in_hw, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*g.kernel_hw, cin, cout)), jnp.float32)
  return x, w


def _close(a, b, rtol=2e-5):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  scale = max(float(np.max(np.abs(b))), 1e-6)
  err = float(np.max(np.abs(a - b))) / scale
  assert err < rtol, f"relative error {err:.2e}"


def test_native_geometry_is_flax():
  """The geometries are exactly flax.linen's Conv / ConvTranspose ("SAME") and torch's ConvTranspose2d."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 7, 3)), jnp.float32)
  for layer, geometry in ((nn.Conv(4, (5, 5), strides=2), C.conv_geometry((7, 7), (5, 5), 2)),
                          (nn.ConvTranspose(4, (5, 5), strides=(2, 2)),
                           C.conv_transpose_geometry((7, 7), (5, 5), 2)),
                          (nn.Conv(4, (3, 3)), C.conv_geometry((7, 7), (3, 3), 1))):
    v = layer.init(jax.random.PRNGKey(0), x)
    y = layer.apply(v, x) - v["params"]["bias"]
    np.testing.assert_array_equal(y, C.conv(x, v["params"]["kernel"], geometry))
  # torch ConvTranspose2d(k=4, s=2, p=1): out[o] = sum_{i, k: o = 2i - 1 + k} x[i] w_torch[k],
  # stored here unflipped as w[k'] = w_torch[3 - k'].
  g = C.torch_conv_transpose_geometry((5, 5), 4, 2, 1)
  xs = np.random.default_rng(1).normal(size=(1, 5, 5, 1)).astype(np.float32)
  wt = np.random.default_rng(2).normal(size=(4, 4)).astype(np.float32)
  ref = np.zeros((10, 10), np.float32)
  for i in range(5):
    for j in range(5):
      for a in range(4):
        for b in range(4):
          o, p = 2 * i - 1 + a, 2 * j - 1 + b
          if 0 <= o < 10 and 0 <= p < 10:
            ref[o, p] += xs[0, i, j, 0] * wt[a, b]
  w = jnp.asarray(wt[::-1, ::-1].copy())[:, :, None, None]
  np.testing.assert_allclose(C.conv(jnp.asarray(xs), w, g)[0, :, :, 0], ref, rtol=1e-5, atol=1e-5)


# The fast tier checks a sub-pixel transposed convolution, the critic's 16x16 -> 8x8 patches plan
# and a same-padded 3x3; make test-all the rest.
FAST_GEOMETRIES = ("mergan G 4->8", "mergan D 16->8", "cnn 3x3 same")


@pytest.mark.parametrize("name", [n if n in FAST_GEOMETRIES else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(GEOMETRIES)])
def test_every_implementation_equals_native_to_second_order(name):
  g, cin, cout = GEOMETRIES[name]
  x, w = _inputs(g, cin, cout)
  loss = lambda x, w, plan: jnp.sum(jnp.sin(C.conv(x, w, g, plan)))
  # The gradient penalty's shape: a function of the input gradient, differentiated again.
  penalty = lambda x, w, plan: jnp.sum(jnp.square(jax.grad(loss)(x, w, plan)))
  ref = (C.conv(x, w, g), jax.grad(loss, (0, 1))(x, w, None), jax.grad(penalty, (0, 1))(x, w, None))
  impls = [i for i in C.IMPLEMENTATIONS if not i.startswith("subpixel") or g.subpixel_ok()]
  plans = [C.Plan(i, i, i) for i in impls] + [C.cpu_plan(g), C.Plan("patches", "native", "patches")]
  for plan in plans:
    got = (C.conv(x, w, g, plan), jax.grad(loss, (0, 1))(x, w, plan),
           jax.grad(penalty, (0, 1))(x, w, plan))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
      _close(a, b, 1e-4)


def test_subpixel_applies_where_stated():
  assert C.conv_transpose_geometry((4, 4), (5, 5), 2).subpixel_ok()
  assert C.torch_conv_transpose_geometry((8, 8), 4, 2, 1).subpixel_ok()
  assert not C.conv_transpose_geometry((4, 4), (3, 3), 2, "VALID").subpixel_ok()  # output 9, not 8
  assert not C.conv_geometry((8, 8), (5, 5), 2).subpixel_ok()
  # The sub-pixel kernel of a 5x5 stride-2 transposed convolution has 3x3 taps and 4x the outputs.
  sub, _ = C.subpixel_kernel(C.conv_transpose_geometry((4, 4), (5, 5), 2), jnp.ones((5, 5, 2, 3)))
  assert sub.shape == (3, 3, 2, 12)
  # Each of the 25 kernel taps appears exactly once per (c_in, c_out) across the 4 phases.
  assert float(jnp.sum(sub)) == 25 * 2 * 3


def test_cpu_plan_moves_the_slow_directions_only():
  """The directions XLA:CPU runs on its slow path (benchmarks/conv_layers.py) leave native."""
  small_t = C.cpu_plan(C.conv_transpose_geometry((4, 4), (5, 5), 2))
  assert (small_t.forward, small_t.weight_grad) == ("subpixel", "subpixel_patches")
  big_t = C.cpu_plan(C.conv_transpose_geometry((16, 16), (5, 5), 2))
  assert big_t.weight_grad == "native"
  assert C.cpu_plan(C.conv_geometry((8, 8), (5, 5), 2)).input_grad == "patches"
  assert C.cpu_plan(C.conv_geometry((16, 16), (5, 5), 2)) == C.Plan("native", "native", "patches")
  assert C.cpu_plan(C.conv_geometry((32, 32), (5, 5), 2)) == C.NATIVE
  assert C.resolve_plan("native", C.conv_geometry((8, 8), (5, 5), 2)) == C.NATIVE
  if jax.default_backend() == "cpu":
    g = C.conv_geometry((8, 8), (5, 5), 2)
    assert C.resolve_plan("auto", g) == C.cpu_plan(g)


def test_jit_equals_eager():
  g, cin, cout = GEOMETRIES["mergan G 4->8"]
  x, w = _inputs(g, cin, cout)
  plan = C.cpu_plan(g)
  f = lambda x, w: jax.grad(lambda x, w: jnp.sum(jnp.square(jax.grad(
      lambda x: jnp.sum(jnp.tanh(C.conv(x, w, g, plan))))(x))), 1)(x, w)
  # A fused program and op-by-op execution sum in other orders: ~K * eps_f32 of the largest term
  # per derivative (K = 5 * 5 * cin here), so the bound is on the output's scale (_close), as for
  # the implementations above; element by element, cancelling sums would make it CPU-dependent.
  _close(jax.jit(f)(x, w), f(x, w), 1e-4)


def test_bad_input_is_named():
  g, cin, cout = GEOMETRIES["mergan D 8->4"]
  x, w = _inputs(g, cin, cout)
  with pytest.raises(ValueError, match="do not match the geometry"):
    C.conv(x[:, :6], w, g)
  with pytest.raises(ValueError, match="must be"):
    C.conv(x[0], w, g)
  with pytest.raises(ValueError, match="valid"):
    C.Plan(forward="fft")
  with pytest.raises(ValueError, match="valid"):
    C.resolve_plan("fastest", g)
  with pytest.raises(ValueError, match="strides"):
    Conv(3, (3, 3), strides=(1, 2)).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))


@pytest.mark.parametrize("ours,theirs,kwargs", [
    (Conv, nn.Conv, {"strides": 2}),
    (ConvTranspose, nn.ConvTranspose, {"strides": 2}),
    (Conv, nn.Conv, {"strides": 1, "use_bias": False}),
])
def test_layers_are_flax_parameter_for_parameter(ours, theirs, kwargs):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 4)), jnp.float32)
  key = jax.random.PRNGKey(3)
  flax_kwargs = dict(kwargs, strides=(kwargs["strides"],) * 2)
  v_theirs = theirs(5, (5, 5), **flax_kwargs).init(key, x)
  for plan in ("native", "cpu"):
    layer = ours(5, (5, 5), plan=plan, **kwargs)
    v = layer.init(key, x)
    assert jax.tree.structure(v) == jax.tree.structure(v_theirs)
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v_theirs)):
      np.testing.assert_array_equal(a, b)
    y, y_ref = layer.apply(v, x), theirs(5, (5, 5), **flax_kwargs).apply(v, x)
    if plan == "native":
      np.testing.assert_array_equal(y, y_ref)
    else:
      _close(y, y_ref)


@pytest.mark.slow
def test_dcgan_gradient_penalty_is_plan_independent():
  """MeRGAN's critic objective with its penalty, and the generator's: the same gradients whatever the plan."""
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 1)), jnp.float32)
  z = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16)), jnp.float32)
  labels = jnp.array([0, 1, 1, 0])
  crit = {p: DCGANCritic(num_classes=2, base_features=4, conv_plan=p) for p in ("native", "cpu")}
  gen = {p: DCGANGenerator(num_classes=2, base_features=4, conditioning="batchnorm", conv_plan=p)
         for p in ("native", "cpu")}
  cv = crit["native"].init(jax.random.PRNGKey(0), x)
  gv = gen["native"].init(jax.random.PRNGKey(1), z, labels)

  def critic_objective(params, plan):
    f = lambda im: crit[plan].apply({"params": params}, im)[0]
    g = jax.grad(lambda im: jnp.sum(f(im)))(x)
    return jnp.sum(f(x)) + jnp.sum(jnp.square(jnp.sqrt(jnp.sum(g ** 2, (1, 2, 3))) - 1))

  def generator_objective(params, plan):
    im = gen[plan].apply({"params": params}, z, labels, mutable=["batch_stats"])[0]
    return -jnp.sum(crit[plan].apply(cv, im)[0])

  for objective, params in ((critic_objective, cv["params"]), (generator_objective, gv["params"])):
    ref = jax.grad(objective)(params, "native")
    got = jax.grad(objective)(params, "cpu")
    # One scale for the whole gradient: a bias before batch norm has a true gradient of 0, which
    # both plans give only to rounding.
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(ref))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
      assert float(jnp.max(jnp.abs(a - b))) < 1e-5 * scale


def test_flop_count_counts_real_taps_only():
  # 1-D view: 4 inputs, 5 taps, stride-1 "SAME" -> per output 3,4,4,3 taps meet input.
  g = C.conv_geometry((4, 1), (5, 1), 1)
  assert C.flops(g, 1, 1, 1) == 2 * (3 + 4 + 4 + 3)
  # A transposed convolution does the same work as the convolution it transposes.
  t = C.conv_transpose_geometry((4, 4), (5, 5), 2)
  s = C.conv_geometry((8, 8), (5, 5), 2)
  assert C.flops(t, 2, 3, 5) == C.flops(s, 2, 5, 3)
