"""The compiled K-step chunks: cached by value, holding no method, state or data."""

import gc
import weakref

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from gmcl import loop
from gmcl.data.sampling import task_arrays
from gmcl.methods import base
from gmcl.methods.base import Method, Phase, run_chunk


@struct.dataclass
class _State:
  w: jax.Array
  frozen: object = None


class _Counting(Method):
  """A method whose step counts its traces (a trace runs the Python body; a cached program does not)."""
  traces = 0

  def __init__(self, lr: float):
    self.config = ml_collections.ConfigDict({"train": {"lr": lr}, "seed": 0})
    self.image_shape, self.num_classes = (2,), 2
    self.lr = lr

  def init(self, key):
    return _State(w=jnp.ones((3,)))

  def begin_task(self, state, task_index, active_classes):
    return state

  def phases(self):
    return (Phase("solver", 1, self.step),)

  def end_task(self, state):
    return state

  def predict(self, state, x):
    return x

  def step(self, state, data, key):
    type(self).traces += 1
    return state.replace(w=state.w - self.lr * jax.random.uniform(key, (3,))), {"w": jnp.sum(state.w)}


def _data():
  return task_arrays(np.zeros((4, 2), np.float32), np.zeros(4, np.int32))


def _run(method):
  state, _ = run_chunk(method.step, method.init(None), _data(), jax.random.PRNGKey(0), 0, 2)
  return np.asarray(state.w)


def test_equal_methods_share_their_programs_and_the_cache_holds_none_of_them():
  base.clear_compiled_chunks()
  _Counting.traces = 0
  first = _Counting(0.1)
  w_first = _run(first)
  traced = _Counting.traces  # the body's runs while the chunk was traced (and inspected) once
  assert traced >= 2
  alive = weakref.ref(first)
  del first
  gc.collect()
  assert alive() is None  # the cached program does not keep the finished run's method
  again = _Counting(0.1)  # an equal method (same config, shapes, parallel): no new trace
  np.testing.assert_array_equal(_run(again), w_first)
  assert _Counting.traces == traced and base.compiled_chunk_count() == 1
  other = _Counting(0.5)  # another config: its own program, its own values
  w_other = _run(other)
  assert _Counting.traces == 2 * traced and base.compiled_chunk_count() == 2
  assert not np.allclose(w_other, w_first)
  seeded = _Counting(0.1)
  seeded.config.seed = 7  # the seed never enters a program (keys are arguments)
  _run(seeded)
  assert _Counting.traces == 2 * traced
  changed = _Counting(0.1)
  changed.config.train.lr = 0.9  # changed after the method was built from it: still the built value
  assert changed.program_key() == again.program_key()
  loop.release_compiled()
  assert base.compiled_chunk_count() == 0


def test_a_plain_function_step_is_cached_by_identity():
  base.clear_compiled_chunks()
  calls = []

  def step(state, data, key):
    calls.append(1)
    return state.replace(w=state.w + 1.0), {}

  state, _ = run_chunk(step, _State(w=jnp.zeros((3,))), _data(), jax.random.PRNGKey(0), 0, 1)
  traced = len(calls)
  state, _ = run_chunk(step, _State(w=jnp.zeros((3,))), _data(), jax.random.PRNGKey(0), 0, 1)
  assert len(calls) == traced and base.compiled_chunk_count() == 1
  np.testing.assert_array_equal(np.asarray(state.w), 1.0)
