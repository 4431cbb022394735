"""gmcl.xla: the per-program choice of XLA:CPU library fusions, and that it changes no value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from gmcl import xla
from gmcl.config import method_config, validate_config
from gmcl.data.sampling import task_arrays
from gmcl.methods.base import _compiled_chunk, run_chunk
from gmcl.models.critics import DCGANCritic
from gmcl.parallel import Parallel

CPU = jax.default_backend() == "cpu"
OPTION = "xla_cpu_experimental_ynn_fusion_type"


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _inputs():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  return (jax.random.normal(k1, (4, 16, 16, 3)), jax.random.normal(k2, (5, 5, 3, 8)),
          jax.random.normal(k3, (32, 24)))


def test_has_convolution_looks_into_sub_programs():
  x, w, a = _inputs()
  assert xla.has_convolution(jax.make_jaxpr(_conv)(x, w))
  assert not xla.has_convolution(jax.make_jaxpr(lambda a: jnp.tanh(a @ a.T))(a))
  # A convolution inside a scan inside a jit inside a gradient.
  def nested(w):
    body = lambda c, _: (c + jnp.sum(jax.jit(_conv)(x, w)), None)
    return jax.lax.scan(body, 0.0, None, length=2)[0]
  assert xla.has_convolution(jax.make_jaxpr(jax.grad(nested))(w))


@pytest.mark.skipif(not CPU, reason="the options apply to the CPU backend only")
def test_compiler_options_per_choice():
  dot = {OPTION: "LIBRARY_FUSION_TYPE_DOT"}
  if not xla._option_supported():  # pylint: disable=protected-access
    pytest.skip("this jaxlib does not know the option")
  assert xla.compiler_options("auto", has_conv=True) == dot
  assert xla.compiler_options("auto", has_conv=False) == {}
  assert xla.compiler_options("dot", has_conv=False) == dot
  assert xla.compiler_options("xla", has_conv=True) == {}
  assert xla.compiler_options("none", has_conv=False) == {OPTION: ""}


def test_bad_choice_is_named():
  with pytest.raises(ValueError, match=r"xla_cpu_fusions='ynn'; valid: \['auto', 'xla', 'dot', 'none'\]"):
    xla.jit(lambda x: x, fusions="ynn")
  c = method_config("dgr")
  c.train.xla_cpu_fusions = "fast"
  with pytest.raises(ValueError, match="train.xla_cpu_fusions"):
    validate_config(c)


@pytest.mark.skipif(not CPU, reason="the options apply to the CPU backend only")
def test_jit_picks_per_program_and_keeps_values():
  x, w, a = _inputs()
  conv_fn = xla.jit(lambda x, w: jnp.tanh(_conv(x, w)))
  dot_fn = xla.jit(lambda a: jnp.tanh(a @ a.T))
  assert conv_fn.options == {}  # nothing chosen before the first call
  np.testing.assert_allclose(conv_fn(x, w), jax.jit(lambda x, w: jnp.tanh(_conv(x, w)))(x, w),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dot_fn(a), jnp.tanh(a @ a.T), rtol=1e-5, atol=1e-5)
  if xla._option_supported():  # pylint: disable=protected-access
    assert conv_fn.options == {OPTION: "LIBRARY_FUSION_TYPE_DOT"}
    assert dot_fn.options == {}
    # A convolution big enough for XLA's defaults to give it to the library (MeRGAN's critic is
    # bigger) is compiled by XLA itself under "auto".
    xb, wb = jnp.ones((2, 16, 16, 16)), jnp.ones((5, 5, 16, 32))
    texts = {f: xla.jit(lambda x, w: jnp.tanh(_conv(x, w)), fusions=f).lower(xb, wb).compile().as_text()
             for f in ("xla", "auto")}
    assert "ynn_fusion" in texts["xla"] and "ynn_fusion" not in texts["auto"]


@pytest.mark.skipif(not CPU, reason="the options apply to the CPU backend only")
def test_one_wrapper_chooses_per_argument_structure_whatever_the_order():
  """A wrapper called with arguments of two structures (a step before and after its first
  snapshot: only the second convolves) chooses for each program from that program, in either
  order of first calls: a run resumed in task 2 compiles task 2's program as a fresh run does."""
  if not xla._option_supported():  # pylint: disable=protected-access
    pytest.skip("this jaxlib does not know the option")
  x, w, _ = _inputs()

  def f(x, w=None):
    return jnp.tanh(x) if w is None else jnp.tanh(_conv(x, w))

  dot = {OPTION: "LIBRARY_FUSION_TYPE_DOT"}
  for order in ((("x",), ("x", "w")), (("x", "w"), ("x",))):
    fn = xla.jit(f)
    for names in order + order:  # and again: the choice is kept, not redone differently
      out = fn(x) if names == ("x",) else fn(x, w)
      assert fn.options == ({} if names == ("x",) else dot)
      np.testing.assert_allclose(out, f(x) if names == ("x",) else f(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not CPU, reason="the options apply to the CPU backend only")
@pytest.mark.parametrize("fusions", ["dot", "none"])
def test_critic_penalty_gradient_is_the_same_under_every_choice(fusions):
  """The gradient penalty's second derivative through MeRGAN's critic: the same values whatever
  library runs the kernels (float32 rounding)."""
  critic = DCGANCritic(base_features=4, num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 1))
  params = critic.init(jax.random.PRNGKey(0), x)["params"]

  def loss(p):
    g = jax.grad(lambda im: jnp.sum(critic.apply({"params": p}, im)[0]))(x)
    return jnp.sum(jnp.square(jnp.sqrt(jnp.sum(jnp.square(g), axis=(1, 2, 3))) - 1.0))

  ref = xla.jit(jax.grad(loss), fusions="xla")(params)
  got = xla.jit(jax.grad(loss), fusions=fusions)(params)
  # Another library's kernels sum in another order: per layer ~K * eps_f32 of the largest term
  # (K <= 2 * 16 * 16 = 512 for a weight gradient here, eps_f32 = 1.2e-7), twice for the second
  # derivative, over 4 layers: ~5e-4 of each leaf's largest entry. Elements where terms cancel
  # carry that absolute error, so the bound is on the leaf's scale, not each element's.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * np.max(np.abs(b))), got, ref)


@struct.dataclass
class _State:
  w: jax.Array
  frozen: object = None


@pytest.mark.skipif(not CPU, reason="the options apply to the CPU backend only")
def test_run_chunk_passes_the_choice_to_the_compiled_chunk():
  """``fusions`` reaches the compiled chunk (what ``config.train.xla_cpu_fusions`` sets through
  gmcl.loop), and a chunk under each choice takes the same step."""
  if not xla._option_supported():  # pylint: disable=protected-access
    pytest.skip("this jaxlib does not know the option")
  x, w, _ = _inputs()
  data = task_arrays(np.asarray(x), np.zeros(4, np.int32))

  def step(state, data, key):
    loss = lambda w: jnp.mean(_conv(data.x, w) ** 2) * jax.random.uniform(key)
    return state.replace(w=state.w - 1e-3 * jax.grad(loss)(state.w)), {"loss": loss(state.w)}

  out = {}
  for fusions in ("xla", "none", "auto"):
    state, m = run_chunk(step, _State(w=jnp.array(w)), data, jax.random.PRNGKey(0), 0, 1, fusions=fusions)
    out[fusions] = (np.asarray(state.w), float(m["loss"]))
    assert _compiled_chunk(step, 1, "unroll", Parallel(), fusions).options == \
        xla.compiler_options(fusions, has_conv=True)
  for fusions in ("none", "auto"):
    np.testing.assert_allclose(out[fusions][0], out["xla"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[fusions][1], out["xla"][1], rtol=1e-4, atol=1e-6)


def test_machine_description_names_the_cpu_family_and_model(monkeypatch):
  """Two AMD EPYC models that both call themselves "AMD EPYC" differ 1.5x in speed: timings name both."""
  monkeypatch.setattr(xla, "cpu_info", lambda: {"model name": "AMD EPYC", "cpu family": "26", "model": "2"})
  assert xla.machine_description().startswith("AMD EPYC (family 26, model 2), ")
  monkeypatch.setattr(xla, "cpu_info", lambda: {})  # no /proc/cpuinfo (macOS): platform's words, no family
  assert "family" not in xla.machine_description()
