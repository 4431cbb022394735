"""Shared timing of one compiled step: the first call (compile + run), then the mean of the next ones."""

import time

import jax

from gmcl.methods.base import run_chunk


def time_step(step, state, data, key, steps: int):
  """``(state, first_call_s, seconds_per_step)`` for ``steps`` calls of ``step`` after a first one (K = 1)."""
  t0 = time.perf_counter()
  state, m = run_chunk(step, state, data, key, 0, 1)
  jax.block_until_ready(m)
  first_call_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(1, steps + 1):
    state, m = run_chunk(step, state, data, key, i, 1)
  jax.block_until_ready(m)
  return state, first_call_s, (time.perf_counter() - t0) / steps
