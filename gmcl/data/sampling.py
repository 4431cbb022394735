"""On-device batch sampling.

A task's examples are copied to the device once, padded to a fixed ``capacity``
so that every task of a sequence has the same array shapes and a step compiles
once. A step samples indices uniformly from the first ``count`` rows by PRNG key,
so no batch crosses from host to device during training.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gmcl.checks import check_array


@struct.dataclass
class TaskArrays:
  """Examples of one task on the device: rows ``[0, count)`` are real, the rest padding.

  For a method that trains on all data seen so far (``data_mode == "cumulative"``) the tasks'
  rows are in task order and ``start`` is where the current task's begin (rows ``[0, start)``
  are earlier tasks'); None otherwise (every real row is the current task's).
  """
  x: jax.Array  # (capacity, H, W, C) float32
  y: jax.Array  # (capacity,) int32
  count: jax.Array  # () int32
  start: Optional[jax.Array] = None  # () int32


def task_arrays(x: np.ndarray, y: np.ndarray, capacity: Optional[int] = None,
                device=None, start: Optional[int] = None) -> TaskArrays:
  """Pads ``(x, y)`` to ``capacity`` rows and puts them on ``device``; ``start``: the first row
  of the current task (cumulative data), or None."""
  n = x.shape[0]
  if start is not None and not 0 <= start < n:
    raise ValueError(f"task_arrays: start={start} must be in [0, {n}) (the current task's first row).")
  if n == 0:
    raise ValueError("task_arrays: a task needs at least one example, got 0.")
  if y.shape != (n,):
    raise ValueError(f"task_arrays: y of shape {y.shape} does not match x of shape {x.shape}.")
  capacity = n if capacity is None else capacity
  if capacity < n:
    raise ValueError(f"task_arrays: capacity={capacity} is smaller than the {n} examples.")
  xp = np.zeros((capacity,) + x.shape[1:], np.float32)
  xp[:n] = x
  yp = np.zeros((capacity,), np.int32)
  yp[:n] = y
  put = (lambda a: jax.device_put(a, device)) if device is not None else jnp.asarray
  return TaskArrays(x=put(xp), y=put(yp), count=put(np.int32(n)),
                    start=None if start is None else put(np.int32(start)))


def sample_batch(data: TaskArrays, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Samples ``batch_size`` examples uniformly, with replacement, from the real rows."""
  check_array("sample_batch", "data.x", data.x, ndim=4, kind="float")
  check_array("sample_batch", "data.y", data.y, shape=data.x.shape[:1], kind="int")
  idx = jax.random.randint(key, (batch_size,), 0, data.count)
  return data.x[idx], data.y[idx]


def sample_rows(data: TaskArrays, key: jax.Array, batch_size: int, low, high) -> tuple[jax.Array, jax.Array]:
  """Samples ``batch_size`` examples uniformly, with replacement, from rows ``[low, high)``."""
  idx = jax.random.randint(key, (batch_size,), low, high)
  return data.x[idx], data.y[idx]


def sample_current(data: TaskArrays, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """A batch of the current task's rows (``[start, count)``; every real row without ``start``)."""
  return sample_rows(data, key, batch_size, 0 if data.start is None else data.start, data.count)


def sample_past(data: TaskArrays, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """A batch of earlier tasks' rows (``[0, start)``): cumulative data after its first task."""
  if data.start is None:
    raise ValueError("sample_past: the data has no `start` (only cumulative data holds earlier tasks' rows).")
  return sample_rows(data, key, batch_size, 0, jnp.maximum(data.start, 1))
