"""Measured convolution plans (gmcl.ops.conv_tune): the fastest implementation per direction, kept
per machine and shape, first writer wins, a pinned file, and the library fusions chosen from the
same timings (gmcl.xla)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmcl import xla
from gmcl.models.layers import Conv, ConvTranspose
from gmcl.ops import conv as C
from gmcl.ops import conv_tune as T

G = C.conv_geometry((8, 8), (5, 5), 2)  # a critic-like strided convolution
X_SHAPE, W_SHAPE = (4, 8, 8, 3), (5, 5, 3, 6)


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """A cache of its own."""
  monkeypatch.setenv("GMCL_CACHE_DIR", str(tmp_path))
  T._memory.clear()
  yield tmp_path
  T._memory.clear()


def _timings(fast: dict, slow=1.0, impls=("native", "patches", "space_to_depth")) -> dict:
  """Hand timings: ``fast[direction]`` takes 0.1 ms, every other implementation ``slow``."""
  return {d: {i: (0.1 if fast.get(d) == i else slow) for i in impls} for d in C.DIRECTIONS}


def _write(path, entries):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"entries": entries}))


def test_best_is_the_fastest_per_direction_and_ties_go_to_the_earlier_implementation():
  t = {"forward": {"native": 2.0, "patches": 1.0}, "input_grad": {"native": 1.0, "patches": 1.0},
       "weight_grad": {"patches": 0.5, "native": 3.0}}
  assert T.best(t) == C.Plan("patches", "native", "patches")
  assert T.best_total(t) == pytest.approx(0.5)  # the last direction's fastest: the best plan's time
  assert T.candidates(G) == ["native", "patches", "space_to_depth"]
  gt = C.conv_transpose_geometry((4, 4), (5, 5), 2)
  assert T.candidates(gt) == ["native", "patches", "subpixel", "subpixel_patches"]


def test_measure_times_every_implementation_of_every_direction():
  t = T.measure(G, X_SHAPE, W_SHAPE, "float32", "dot", calls=1, rounds=1)
  assert set(t) == set(C.DIRECTIONS)
  for d in C.DIRECTIONS:
    assert set(t[d]) == set(T.candidates(G)) and all(ms > 0 for ms in t[d].values())


def test_a_traced_convolution_is_measured_once_and_the_file_keeps_it(cache, monkeypatch):
  x, w = jnp.ones(X_SHAPE), jnp.ones(W_SHAPE)
  plans = []
  jax.jit(lambda x, w: plans.append(C.resolve_plan("measured", G, x, w)) or x)(x, w)
  path = T.cache_path()
  assert path.startswith(str(cache)) and path.endswith(f"-{__import__('os').cpu_count()}cores-{T.PROTOCOL}.json")
  with open(path) as f:
    data = json.load(f)
  key = T.shape_key(G, X_SHAPE, W_SHAPE, "float32")
  assert list(data["entries"]) == [key] and list(data["entries"][key]) == ["xla"]  # plain jit: XLA's fusions
  assert data["machine"]["cores"] == __import__("os").cpu_count()
  assert plans == [T.best(data["entries"][key]["xla"])]
  # Known now: neither this process nor a new one (memory cleared) measures again.
  monkeypatch.setattr(T, "measure", lambda *a, **k: pytest.fail("measured twice"))
  T._memory.clear()
  jax.jit(lambda x, w: plans.append(C.resolve_plan("measured", G, x, w)) or x)(x, w)
  assert plans[1] == plans[0]
  # Eager calls, "auto" and "table" (the fixed rule) measure nothing.
  assert C.resolve_plan("measured", G, x, w) == C.cpu_plan(G)
  for name in ("auto", "table", "cpu"):
    jax.jit(lambda x, w: plans.append(C.resolve_plan(name, G, x, w)) or x)(x, w)
    assert plans[-1] == C.cpu_plan(G)


def test_the_first_writer_wins(cache):
  key = T.shape_key(G, X_SHAPE, W_SHAPE, "float32")
  path = T.cache_path()
  first, second = _timings({"forward": "patches"}), _timings({"forward": "native"})
  assert T._write_new(path, key, "dot", first) == first
  T._memory.clear()
  assert T._write_new(path, key, "dot", second) == first  # another process measured it first
  assert T._write_new(path, key, "xla", second) == second  # another fusion is another entry
  with open(path) as f:
    assert json.load(f)["entries"][key] == {"dot": first, "xla": second}


def test_a_pinned_file_decides_and_names_what_it_lacks(tmp_path):
  T._memory.clear()
  key = T.shape_key(G, X_SHAPE, W_SHAPE, "float32")
  pinned = tmp_path / "plans.json"
  _write(pinned, {key: {"xla": _timings({"forward": "patches", "input_grad": "space_to_depth",
                                         "weight_grad": "patches"})}})
  x, w = np.ones(X_SHAPE, np.float32), np.ones(W_SHAPE, np.float32)
  assert C.resolve_plan(f"file:{pinned}", G, x, w) == C.Plan("patches", "space_to_depth", "patches")
  with pytest.raises(ValueError, match=r"has no entry for the convolution 'in=8x8 .* b=2 "):
    C.resolve_plan(f"file:{pinned}", G, x[:2], w)
  with pytest.raises(ValueError, match="no such file"):
    C.check_plan_name(f"file:{tmp_path / 'missing.json'}")
  with pytest.raises(ValueError, match="valid"):
    C.check_plan_name("fastest")
  (tmp_path / "bad.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="not a gmcl conv plan file"):
    C.resolve_plan(f"file:{tmp_path / 'bad.json'}", G, x, w)
  T._memory.clear()


@pytest.mark.parametrize("winner", ["dot", "xla"])
def test_xla_jit_chooses_the_fusions_and_the_plans_from_the_timings(cache, winner):
  """A critic layer's program: the cache says patches everywhere (no convolution left in the
  program) under one fusion choice and native everywhere under the other; the cheaper wins."""
  layer = Conv(6, (5, 5), strides=2, plan="measured")
  x = jnp.ones(X_SHAPE)
  params = layer.init(jax.random.PRNGKey(0), x)  # eager: the fixed rule, nothing measured
  key = T.shape_key(G, X_SHAPE, W_SHAPE, "float32")
  patches = _timings({d: "patches" for d in C.DIRECTIONS}, slow=1.0)
  native = _timings({d: "native" for d in C.DIRECTIONS}, slow=1.0)
  native = {d: {i: ms * (0.5 if winner == "xla" else 2.0) for i, ms in t.items()} for d, t in native.items()}
  _write(cache / T.SUBDIR / T.cache_path().rsplit("/", 1)[1], {key: {"dot": patches, "xla": native}})
  T._memory.clear()
  loss = lambda p, x: jnp.sum(jax.grad(lambda x: jnp.sum(layer.apply(p, x) ** 2))(x) ** 2)
  jitted = xla.jit(jax.grad(loss))
  hlo = jitted.lower(params, x).as_text()
  assert jitted.options == ({} if winner == "xla" else xla.compiler_options("dot", has_conv=True))
  assert ("convolution" in hlo) == (winner == "xla"), "the plans are not those of the chosen fusions"
  # Whatever the plan, the same function as flax's native convolution (float32 rounding).
  want = jax.grad(loss)(params, x)
  got = jitted(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(b))))


def test_transposed_convolutions_are_measured_too(cache):
  layer = ConvTranspose(3, (5, 5), strides=2, plan="measured")
  x = jnp.ones((2, 4, 4, 6))
  params = layer.init(jax.random.PRNGKey(0), x)
  out = xla.jit(lambda p, x: layer.apply(p, x))(params, x)
  assert out.shape == (2, 8, 8, 3)
  with open(T.cache_path()) as f:
    (entry,) = json.load(f)["entries"].values()
  assert set(entry) == {"dot", "xla"}  # both fusions measured for the choice
  assert set(entry["dot"]["forward"]) == {"native", "patches", "subpixel", "subpixel_patches"}


def test_a_cache_that_cannot_be_written_is_said_and_the_measurement_kept(tmp_path, monkeypatch, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  monkeypatch.setenv("GMCL_CACHE_DIR", str(blocker))
  T._memory.clear()
  calls = []
  real = T.measure
  monkeypatch.setattr(T, "measure", lambda *a, **k: calls.append(1) or real(*a, calls=1, rounds=1))
  first = T.timings(G, X_SHAPE, W_SHAPE, "float32", "xla")
  assert "cannot be kept" in capsys.readouterr().out
  assert T.timings(G, X_SHAPE, W_SHAPE, "float32", "xla") == first and len(calls) == 1  # kept in memory
  T._memory.clear()
