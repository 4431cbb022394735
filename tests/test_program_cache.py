"""Traced chunk programs kept across processes (gmcl.program_cache): the program read back
computes what the jitted chunk computes, bit for bit, with the compiler options it chose; its key
changes with everything a trace depends on; an entry that cannot be read is traced again; nothing
is kept while it is off, for code edited after import, or for steps that are not gmcl's.

In-process: the chunk programs a process keeps are cleared (``clear_compiled_chunks``), so the
next call finds only the folder, as a new process would (the cross-process run, with the
compilation cache, is tests/test_compile_cache.py's slow test).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmcl
from experiments.configs import dgr as dgr_config
from gmcl import compile_cache, program_cache
from gmcl.data.sampling import task_arrays
from gmcl.methods import build_method
from gmcl.methods.base import _compiled_chunk, clear_compiled_chunks, resolve_seed_axis, run_chunk
from gmcl.ops import conv_tune

SHAPE = (32, 32, 1)


def _method(gan="mlp", **train):
  c = dgr_config.get_config("smoke")
  c.model.gan = gan
  for k, v in train.items():
    c.train[k] = v
  return build_method("dgr", c, SHAPE, 10)


def _data(classes=(0, 1), n=32):
  rng = np.random.default_rng(0)
  y = rng.choice(classes, size=n).astype(np.int32)
  return task_arrays(rng.uniform(-1, 1, (n,) + SHAPE).astype(np.float32), y)


def _state(method, with_snapshot=False):
  """At task 0 (no snapshot), or at task 1 after one generator step of task 0 (G_0 frozen)."""
  state = method.begin_task(method.init(jax.random.PRNGKey(0)), 0, np.arange(10) < 1)
  if with_snapshot:
    state, _ = run_chunk(_step(method), state, _data((0,)), jax.random.PRNGKey(1), 0, 1)
    state = method.begin_task(method.end_task(state), 1, np.arange(10) < 2)
  return state


def _step(method):
  return {p.name: p.step for p in method.phases()}["generator"]


def _run(method, state, data, num_steps=2):
  copy = jax.tree.map(jnp.copy, state)  # the live state is donated
  return run_chunk(_step(method), copy, data, jax.random.PRNGKey(3), 0, num_steps)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture
def cache(tmp_path):
  clear_compiled_chunks()
  folder = program_cache.enable(str(tmp_path / "programs"))
  before = program_cache.stats()
  yield folder, lambda: {k: v - before[k] for k, v in program_cache.stats().items()}
  program_cache.enable(None)
  clear_compiled_chunks()


@pytest.mark.parametrize("gan,with_snapshot", [("mlp", False), ("dcgan", True)], ids=["mlp", "dcgan-replay"])
def test_a_program_read_back_computes_what_the_jitted_chunk_computes(cache, monkeypatch, gan, with_snapshot):
  folder, counts = cache
  method, data = _method(gan), _data()
  program_cache.enable(None)
  state = _state(method, with_snapshot)
  assert (state.frozen is not None) == with_snapshot
  plain = _run(method, state, data)  # the jitted chunk
  plain_options = _compiled_chunk(_step(method), 2, "unroll", method.parallel, "auto").options
  if gan == "dcgan" and jax.default_backend() == "cpu":
    assert plain_options  # a convolving program gets gmcl's library-fusion option: compared below
  clear_compiled_chunks()
  program_cache.enable(folder)
  written = _run(method, state, data)  # exported, written, run through the exported module
  assert counts()["written"] == counts()["traced"] == 1 and len(os.listdir(folder)) == 1
  clear_compiled_chunks()
  # Read back without tracing: an export now would fail the test.
  monkeypatch.setattr(jax.export, "export", lambda *a, **k: pytest.fail("traced again"))
  live = jax.tree.map(jnp.copy, state.replace(frozen=None))
  read = run_chunk(_step(method), live.replace(frozen=state.frozen), data, jax.random.PRNGKey(3), 0, 2)
  assert counts()["read"] == 1 and counts()["failed"] == 0
  chunk = _compiled_chunk(_step(method), 2, "unroll", method.parallel, "auto")
  assert chunk.program.exported_options is not None  # the latest call ran the program read back
  assert chunk.options == plain_options  # with the compiler options the jitted chunk chose
  # The live state was donated, the snapshot was not (it is read by every later step).
  assert all(x.is_deleted() for x in jax.tree.leaves(live))
  assert not any(x.is_deleted() for x in jax.tree.leaves(state.frozen))
  assert jax.tree.structure(plain) == jax.tree.structure(written) == jax.tree.structure(read)
  for a, b, c in zip(_leaves(plain), _leaves(written), _leaves(read)):
    assert a.dtype == b.dtype == c.dtype
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  # The state changed: the comparison is not of three untouched copies.
  assert not np.array_equal(_leaves(state.memory.generator.params)[0], _leaves(read[0].memory.generator.params)[0])


def test_the_key_changes_with_what_a_trace_depends_on(monkeypatch):
  method, data = _method(), _data()
  state = _state(method)
  identity = (method.program_key(), "gmcl.methods.dgr", "DGR.generator_step")
  args = (state.replace(frozen=None), state.frozen, data, jax.random.PRNGKey(3), jnp.asarray(0, jnp.int32))
  settings = (2, "unroll", "auto", "")
  key = lambda identity=identity, settings=settings, args=args: program_cache.program_key(identity, settings, args)
  reference = key()
  assert reference == key()  # a function of its inputs
  assert key(identity=(_method(gan_lr=3e-4).program_key(),) + identity[1:]) != reference  # the config
  assert key(settings=(4, "unroll", "auto", "")) != reference  # the chunk's length
  assert key(args=args[:2] + (_data(n=64),) + args[3:]) != reference  # a shape
  monkeypatch.setattr(conv_tune, "cache_path", lambda: "/nonexistent/plans.json")  # fixed, as the next
  reference_fixed = key()
  monkeypatch.setitem(program_cache._state, "source", "edited")  # pylint: disable=protected-access
  assert key() != reference_fixed  # gmcl's source
  monkeypatch.setitem(program_cache._state, "source", None)  # pylint: disable=protected-access
  monkeypatch.setitem(program_cache._state, "libraries", "optax==9.9")  # pylint: disable=protected-access
  assert key() != reference_fixed  # a traced library's version
  monkeypatch.setitem(program_cache._state, "libraries", None)  # pylint: disable=protected-access
  assert key() == reference_fixed
  monkeypatch.setattr(compile_cache, "machine_key", lambda desc=None: "another-machine")
  assert key() != reference_fixed  # the machine
  monkeypatch.undo()
  with jax.default_matmul_precision("highest"):  # a jax setting a trace reads
    assert key() != reference
  assert key() == reference


def test_code_edited_after_import_and_steps_not_gmcls_are_not_kept(cache, monkeypatch):
  folder, counts = cache
  method, data = _method(), _data()
  state = _state(method)
  monkeypatch.setitem(program_cache._state, "source", None)  # pylint: disable=protected-access
  monkeypatch.setattr(gmcl, "IMPORTED_AT", 0.0)  # every source file is newer than this import
  with pytest.raises(program_cache.Unkeyable, match="changed after this process imported"):
    program_cache.program_key(("x",), (), ())
  plain = _run(method, state, data)  # traced the usual way, nothing written
  assert counts()["written"] == 0 and not os.listdir(folder)
  monkeypatch.undo()
  program_cache.enable(folder)
  clear_compiled_chunks()

  def outside(state, data, key):  # a step that is not a gmcl method's: never kept
    return method.generator_step(state, data, key)
  run_chunk(outside, jax.tree.map(jnp.copy, state), data, jax.random.PRNGKey(3), 0, 2)
  assert counts()["written"] == 0 and not os.listdir(folder)
  assert plain is not None


def test_the_seed_axis_decision_is_kept_with_the_programs(cache, monkeypatch):
  folder, _ = cache
  method = _method("dcgan")
  state = jax.tree.map(lambda x: jnp.stack([x, x]), _state(method))  # two stacked seeds
  keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
  assert resolve_seed_axis("auto", _step(method), state, _data(), keys) == ("unroll" if jax.default_backend() == "cpu"
                                                                          else "vmap")
  if jax.default_backend() != "cpu":
    return
  decisions = [f for f in os.listdir(folder) if f.endswith(".has_convolution.json")]
  assert decisions and all(program_cache.ENTRY_NAME.fullmatch(f) for f in decisions)
  clear_compiled_chunks()  # forgets the process's decisions too
  monkeypatch.setattr(jax, "make_jaxpr", lambda *a, **k: pytest.fail("traced again"))
  assert resolve_seed_axis("auto", _step(method), state, _data(), keys) == "unroll"


def test_an_unreadable_entry_is_traced_again_and_rewritten(cache):
  folder, counts = cache
  method, data = _method(), _data()
  state = _state(method)
  first = _run(method, state, data)
  (name,) = os.listdir(folder)
  with open(os.path.join(folder, name), "wb") as f:
    f.write(b"not a program")
  clear_compiled_chunks()
  again = _run(method, state, data)
  assert counts()["failed"] == 1 and counts()["written"] == 2
  for a, b in zip(_leaves(first), _leaves(again)):
    np.testing.assert_array_equal(a, b)
  assert program_cache.ENTRY_NAME.fullmatch(name)  # what gmcl.compile_cache.prune may remove
  path = os.path.join(folder, name)
  os.utime(path, (1e9, 1e9))  # last used in 2001
  clear_compiled_chunks()
  _run(method, state, data)
  assert counts()["read"] == 1  # the rewritten entry reads back
  assert os.stat(path).st_mtime > 1e9 + 1  # and is marked used, for the least-recently-used pruning


def test_nothing_is_kept_while_off(tmp_path):
  program_cache.enable(None)
  clear_compiled_chunks()
  method, data = _method(), _data()
  before = program_cache.stats()
  _run(method, _state(method), data)
  assert program_cache.stats() == before
  if not jax.config.jax_enable_compilation_cache:  # the suite's default (conftest.py)
    # With JAX's compilation cache off, gmcl keeps no programs either.
    assert compile_cache.enable(str(tmp_path / "xla")) is None and program_cache.folder() is None
  assert compile_cache.programs_dir("/a/cpu-X") == "/a/cpu-X.programs"
