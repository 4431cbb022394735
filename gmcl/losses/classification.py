"""Cross-entropy over a subset of active classes."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from gmcl.checks import check_array


def mask_logits(logits: jax.Array, where: Optional[jax.Array]) -> jax.Array:
  """Sets logits of inactive classes to a large negative value (so softmax gives them ~0).

  Args:
    logits: (..., K).
    where: boolean (K,) or broadcastable mask of the classes that may be predicted;
      None keeps every class.
  """
  if where is None:
    return logits
  return jnp.where(where, logits, jnp.finfo(logits.dtype).min / 2)


def softmax_cross_entropy(*, logits: jax.Array, labels: jax.Array,
                          where: Optional[jax.Array] = None) -> jax.Array:
  """Per-example cross-entropy with integer labels, restricted to active classes.

  ``l_i = -log softmax(z_i)[y_i]``, where the softmax runs over the classes with
  ``where`` true (class-incremental training's "active classes").

  Args:
    logits: (B, K).
    labels: (B,) integers in [0, K).
    where: optional boolean (K,) mask of active classes.

  Returns:
    (B,) losses.
  """
  check_array("softmax_cross_entropy", "logits", logits, ndim=2, kind="float")
  check_array("softmax_cross_entropy", "labels", labels, shape=logits.shape[:1], kind="int")
  if where is not None:
    check_array("softmax_cross_entropy", "where", where, shape=logits.shape[-1:], kind="bool")
  log_p = jax.nn.log_softmax(mask_logits(logits, where), axis=-1)
  return -jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def soft_cross_entropy(*, logits: jax.Array, targets: jax.Array,
                       where: Optional[jax.Array] = None) -> jax.Array:
  """Per-example cross-entropy ``-sum_k p_k log softmax(z)_k`` against probabilities ``targets``."""
  check_array("soft_cross_entropy", "logits", logits, ndim=2, kind="float")
  check_array("soft_cross_entropy", "targets", targets, shape=logits.shape, kind="float")
  log_p = jax.nn.log_softmax(mask_logits(logits, where), axis=-1)
  return -jnp.sum(jnp.where(targets > 0, targets * log_p, 0.0), axis=-1)
