"""Data-parallel training: the same pure steps under ``jax.jit`` over a mesh or under ``jax.pmap``.

Two modes, selected by ``config.parallel.mode``:

* ``"jit"`` (the current JAX idiom): a 1-D device mesh with axis ``"data"``; the
  train state and the task's arrays are replicated (``NamedSharding(mesh, P())``),
  every sampled batch is constrained to ``P("data")``, and XLA's partitioner
  inserts the gradient all-reduce.
* ``"pmap"``: the step runs once per device under ``jax.pmap(axis_name="data")``;
  each device takes its slice of the global batch, gradients, metrics and
  batch-norm statistics are averaged with ``lax.pmean``.

In both, the global batch size is the config's, and every random draw of a step
(batch indices, z, the gradient penalty's epsilon, replay classes) is made for the
whole global batch from the step's key, then sliced by device index: so 1 and N
devices train on the same examples and reach the same parameters up to float
reduction order (tested on 8 simulated CPU devices).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PARALLEL_MODES = ("none", "jit", "pmap")
AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Parallel:
  """How steps are compiled: ``mode`` over ``devices`` (a tuple of jax devices)."""
  mode: str = "none"
  devices: tuple = ()

  def __post_init__(self):
    if self.mode not in PARALLEL_MODES:
      raise ValueError(f"parallel mode {self.mode!r}; valid choices: {list(PARALLEL_MODES)}.")

  @property
  def num_devices(self) -> int:
    return len(self.devices) if self.mode != "none" else 1

  @property
  def axis_name(self) -> Optional[str]:
    return AXIS if self.mode == "pmap" else None

  def mesh(self) -> Mesh:
    return Mesh(np.asarray(self.devices), (AXIS,))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh(), P())

  def batch_sharding(self) -> Optional[NamedSharding]:
    return NamedSharding(self.mesh(), P(AXIS)) if self.mode == "jit" else None

  def seed_sharding(self) -> NamedSharding:
    """Arrays with a leading seed axis split over the mesh (:mod:`gmcl.seeds`): the same
    partition as a batch's, one block of seeds per device."""
    return NamedSharding(self.mesh(), P(AXIS))


def make_parallel(mode: str = "none", num_devices: int = 0,
                  devices: Optional[Sequence[Any]] = None) -> Parallel:
  """A :class:`Parallel` over the first ``num_devices`` devices (0: all of them).

  With several processes (after :func:`initialize_multihost`) the devices are those of
  every host; with one, the local ones.
  """
  if mode == "none":
    return Parallel("none", ())
  if devices is not None:
    available = list(devices)
  else:
    available = jax.devices() if jax.process_count() > 1 else jax.local_devices()
  if mode == "pmap" and jax.process_count() > 1:
    raise ValueError("parallel.mode='pmap' is not supported across hosts here; use 'jit'.")
  n = num_devices or len(available)
  if n > len(available):
    raise ValueError(f"parallel.num_devices={n}, but only {len(available)} devices are available "
                     f"({available[0].platform}).")
  return Parallel(mode, tuple(available[:n]))


def initialize_multihost(coordinator_address: Optional[str] = None,
                         num_processes: Optional[int] = None,
                         process_id: Optional[int] = None) -> None:
  """Starts JAX's multi-host runtime (TPU VM slices, multi-node GPU).

  On Cloud TPU VMs all arguments can be left out: ``jax.distributed.initialize``
  discovers them. Call it once per host before any other JAX call; then every
  host runs the same program and ``jax.devices()`` lists the devices of all hosts.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
