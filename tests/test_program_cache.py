"""Traced chunk programs kept across processes (gmcl.program_cache): the program read back
computes what the jitted chunk computes, bit for bit; its key changes with everything a trace
depends on; an entry that cannot be read is traced again; nothing is kept while it is off.

In-process: the chunk programs a process keeps are cleared (``clear_compiled_chunks``), so the
next call finds only the folder, as a new process would (the cross-process run, with the
compilation cache, is tests/test_compile_cache.py's slow test).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import dgr as dgr_config
from gmcl import compile_cache, program_cache
from gmcl.data.sampling import task_arrays
from gmcl.methods import build_method
from gmcl.methods.base import _compiled_chunk, clear_compiled_chunks, run_chunk

SHAPE = (32, 32, 1)


def _method(**train):
  c = dgr_config.get_config("smoke")
  c.model.gan = "mlp"
  for k, v in train.items():
    c.train[k] = v
  return build_method("dgr", c, SHAPE, 10)


def _data(n=32):
  rng = np.random.default_rng(0)
  y = rng.choice([0, 1], size=n).astype(np.int32)
  return task_arrays(rng.uniform(-1, 1, (n,) + SHAPE).astype(np.float32), y)


def _state(method):
  state = method.init(jax.random.PRNGKey(0))
  return method.begin_task(state, 0, np.arange(10) < 2)


def _run(method, state, data, num_steps=2):
  step = {p.name: p.step for p in method.phases()}["generator"]
  copy = jax.tree.map(jnp.copy, state)  # the live state is donated
  return run_chunk(step, copy, data, jax.random.PRNGKey(3), 0, num_steps)


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


def test_a_program_read_back_computes_what_the_jitted_chunk_computes(cache, monkeypatch):
  folder, counts = cache
  method, data = _method(), _data()
  state = _state(method)
  program_cache.enable(None)
  plain = _run(method, state, data)  # the jitted chunk
  step = {p.name: p.step for p in method.phases()}["generator"]
  plain_options = _compiled_chunk(step, 2, "unroll", method.parallel, "auto").options
  clear_compiled_chunks()
  program_cache.enable(folder)
  written = _run(method, state, data)  # exported, written, run through the exported module
  assert counts()["written"] == counts()["traced"] == 1 and len(os.listdir(folder)) == 1
  clear_compiled_chunks()
  # Read back without tracing: an export now would fail the test.
  monkeypatch.setattr(jax.export, "export", lambda *a, **k: pytest.fail("traced again"))
  read = _run(method, state, data)
  assert counts()["read"] == 1 and counts()["failed"] == 0
  step = {p.name: p.step for p in method.phases()}["generator"]
  chunk = _compiled_chunk(step, 2, "unroll", method.parallel, "auto")
  assert chunk.program.exported_options is not None  # the latest call ran the program read back
  assert chunk.options == plain_options  # with the compiler options the jitted chunk chose
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
  key = program_cache.program_key(identity, settings, args)
  assert key == program_cache.program_key(identity, settings, args)  # a function of its inputs
  other_config = _method(gan_lr=3e-4)
  assert program_cache.program_key((other_config.program_key(),) + identity[1:], settings, args) != key
  assert program_cache.program_key(identity, (4, "unroll", "auto", ""), args) != key
  longer = args[:2] + (_data(64),) + args[3:]  # another shape
  assert program_cache.program_key(identity, settings, longer) != key
  monkeypatch.setitem(program_cache._state, "source", "edited")  # pylint: disable=protected-access
  assert program_cache.program_key(identity, settings, args) != key  # gmcl's source changed
  monkeypatch.undo()
  monkeypatch.setattr(compile_cache, "machine_key", lambda desc=None: "another-machine")
  assert program_cache.program_key(identity, settings, args) != key
  monkeypatch.undo()
  with jax.default_matmul_precision("highest"):  # a jax setting a trace reads
    assert program_cache.program_key(identity, settings, args) != key
  assert program_cache.program_key(identity, settings, args) == key


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
  clear_compiled_chunks()
  _run(method, state, data)
  assert counts()["read"] == 1  # the rewritten entry reads back


def test_nothing_is_kept_while_off(tmp_path):
  program_cache.enable(None)
  clear_compiled_chunks()
  method, data = _method(), _data()
  before = program_cache.stats()
  _run(method, _state(method), data)
  assert program_cache.stats() == before
  # The suite runs with JAX's compilation cache off: gmcl then keeps no programs either.
  assert compile_cache.enable(str(tmp_path / "xla")) is None and program_cache.folder() is None
  assert compile_cache.programs_dir("/a/cpu-X") == "/a/cpu-X.programs"
