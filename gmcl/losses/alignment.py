"""Alignment between feature spaces: latent space alignment's bridge loss, lgm's memory alignment and drift.

A bridge g maps one feature space to another (:class:`gmcl.models.latent.Bridge`); it is
trained so that ``g(f_new(x))`` lands on ``f_old(x)`` (lsa's g_{t->t-1}), or ``g(f_old(x))``
on ``f_new(x)`` (lgm's b_t). The drift of an encoder is how far its features moved.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gmcl.checks import check_array


def alignment_loss(*, mapped: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example alignment loss ``l_i = || mapped_i - target_i ||_2^2``, summed over features.

  Latent space alignment's bridge objective with ``mapped = g(f_t(x))`` and ``target =
  f_{t-1}(x)``; lgm's bridge and replay-alignment terms likewise. No gradient reaches
  ``target`` (a frozen snapshot's features, or a moving target the caller chases). The
  caller reduces over examples (a mean gives L_align).

  Args:
    mapped: (B, D) mapped features.
    target: (B, D) target features.

  Returns:
    (B,) losses.
  """
  check_array("alignment_loss", "mapped", mapped, ndim=2, kind="float")
  check_array("alignment_loss", "target", target, shape=mapped.shape, kind="float")
  return jnp.sum(jnp.square(mapped - jax.lax.stop_gradient(target)), axis=-1)


def relative_drift(*, new: jax.Array, old: jax.Array) -> jax.Array:
  """``sum_i ||new_i - old_i||^2 / sum_i ||old_i||^2`` over a batch of features (B, D)."""
  return jnp.sum(jnp.square(new - old)) / jnp.maximum(jnp.sum(jnp.square(old)), 1e-12)
