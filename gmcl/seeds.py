"""Several seeds of one experiment: a leading seed axis on the method state, and results as
mean ± sd over seeds.

``config.num_seeds = S`` trains seeds ``seed, seed + 1, ..., seed + S - 1`` on the same data and
task sequence. Seed ``s`` has the run key ``PRNGKey(s)``, so each seed's keys are those of a
single-seed run of ``s``. Where every seed's state has the same structure and shapes (every
method but DGM with growth, whose widths depend on what it learnt, and methods that drive their
own tasks), the S states are stacked along a new leading axis and each phase's chunk of steps runs
all S under ``jax.vmap`` in one compiled program (:func:`gmcl.methods.base.run_chunk`,
``seeds="vmap"``); the once-per-task transitions (``begin_task``, ``end_task``) and scoring run
per seed on slices of the stack, exactly as in a single-seed run. Otherwise the seeds run one
after another, through the same loop and results format.

A seed of a stacked run equals the single-seed run of that seed up to float rounding: under vmap
XLA computes the same operations as batched ones (a batched matrix product sums in another order),
and GAN training amplifies rounding over many steps, so whole runs may drift apart by a few points
of accuracy, as two CPU types' runs of one seed do.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def seed_list(config) -> list[int]:
  """The seeds a config trains: ``seed, seed + 1, ..., seed + num_seeds - 1``."""
  return [int(config.seed) + i for i in range(int(config.get("num_seeds", 1)))]


def stack(trees: Sequence[Any]) -> Any:
  """One pytree whose every leaf stacks the leaves of ``trees`` (equal structures) on a new axis 0."""
  if len(trees) == 1:
    return jax.tree.map(lambda x: jnp.expand_dims(x, 0), trees[0])
  structures = {jax.tree.structure(t) for t in trees}
  if len(structures) > 1:
    raise ValueError("The seeds' states have different structures and cannot be stacked: "
                     + " / ".join(str(s) for s in structures))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _take_leaf(x: Any, index: int) -> Any:
  """``x[index]``; for an array spread over several devices (the seed axis split over a mesh), read
  from the buffer of the device that holds row ``index`` and returned on the first local device.
  Indexing the global array would run a gather compiled over the whole mesh, and XLA:CPU aborted the
  process inside it (JAX 0.10.2, 8 simulated devices: the 8-seed loop test on an AMD EPYC of family
  26; the same gather of pmap outputs aborts on Intel Xeons, see
  :func:`gmcl.methods.base.first_replica`)."""
  if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer) or len(x.sharding.device_set) == 1:
    return x[index]  # (under a trace, e.g. the unrolled seeds of one compiled chunk, plain indexing)
  for shard in x.addressable_shards:
    rows = shard.index[0] if shard.index else slice(None)
    start, stop = rows.start or 0, x.shape[0] if rows.stop is None else rows.stop
    if start <= index < stop:
      return jax.device_put(shard.data[index - start], jax.local_devices()[0])
  raise ValueError(f"Row {index} of an array of shape {x.shape} is on no device of this process.")


def take(tree: Any, index: int) -> Any:
  """Seed ``index``'s slice of a stacked pytree."""
  return jax.tree.map(lambda x: _take_leaf(x, index), tree)


def unstack(tree: Any, count: int) -> list[Any]:
  """The ``count`` slices of a stacked pytree, in order."""
  return [take(tree, i) for i in range(count)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """The mean and the sample standard deviation (ddof 1; 0.0 for one value) of ``values``."""
  v = np.asarray(values, np.float64)
  if v.size == 0:
    return math.nan, math.nan
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def mean_std_series(series: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
  """Element-wise :func:`mean_std` of equally long lists, one per seed."""
  if not series:
    return [], []
  pairs = [mean_std(column) for column in zip(*series)]
  return [m for m, _ in pairs], [s for _, s in pairs]


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def average_entry(values: Sequence[Any]) -> tuple[Any, Any]:
  """The mean and sd over seeds of one entry of a score series (one task's value per seed):
  numbers give numbers; None anywhere (nothing measured) gives None; dicts of numbers with the
  same keys (per-class scores) give dicts, key by key. Raises TypeError for anything else
  (such scores are reported per seed only)."""
  if any(v is None for v in values):
    return None, None
  if all(_number(v) for v in values):
    return mean_std(values)
  if all(isinstance(v, dict) for v in values) and len({tuple(sorted(v)) for v in values}) == 1 \
      and all(_number(x) for v in values for x in v.values()):
    pairs = {k: mean_std([v[k] for v in values]) for k in sorted(values[0])}
    return {k: m for k, (m, _) in pairs.items()}, {k: sd for k, (_, sd) in pairs.items()}
  raise TypeError("not averageable over seeds")


def average_series(series: Sequence[Sequence[Any]]) -> Optional[tuple[list, list]]:
  """Entry by entry :func:`average_entry` of equally long score series, one per seed, or None if
  some entry cannot be averaged."""
  try:
    pairs = [average_entry(list(column)) for column in zip(*series)]
  except TypeError:
    return None
  return [m for m, _ in pairs], [sd for _, sd in pairs]


def mean_matrix(matrices: Sequence[Sequence[Sequence[Any]]]) -> list[list[Any]]:
  """The element-wise mean of accuracy matrices of equal shape; None where any seed has None
  (a class not yet seen)."""
  out = []
  for rows in zip(*matrices):
    row = []
    for values in zip(*rows):
      row.append(None if any(v is None for v in values) else float(np.mean(values)))
    out.append(row)
  return out
