"""HAT's sparsity regulariser (Serra et al., ICML 2018, Eq. 5), for HAT's classifier and DGM's generator."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp


def sparsity_regularizer(masks: Any, previous: Optional[Any] = None) -> jax.Array:
  """``sum a_t (1 - a_{<t}) / sum (1 - a_{<t})`` over all masked units (HAT, Eq. 5).

  With no earlier task (``previous`` None) it is the mean gate value. The caller
  multiplies by c (0.75 in HAT; DGM's sparsity weights).

  Args:
    masks: pytree of the current task's gates.
    previous: pytree of the same structure, the cumulative mask a_{<t}.
  """
  leaves = jax.tree.leaves(masks)
  if previous is None:
    return sum(jnp.sum(m) for m in leaves) / sum(m.size for m in leaves)
  free = [1.0 - p for p in jax.tree.leaves(previous)]
  return sum(jnp.sum(m * f) for m, f in zip(leaves, free)) / jnp.maximum(
      sum(jnp.sum(f) for f in free), 1e-12)
