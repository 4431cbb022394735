"""GAN losses: Wasserstein with gradient penalty (WGAN-GP) and AC-GAN's auxiliary term."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from gmcl.checks import check_array
from gmcl.losses.classification import softmax_cross_entropy


def wasserstein_critic_loss(*, real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  """Per-example critic loss ``D(x~) - D(x)`` (Gulrajani et al., 2017, Alg. 1, line 7, without GP).

  Its mean is the negative of the critic's estimate of the Wasserstein-1 distance.
  """
  check_array("wasserstein_critic_loss", "real_scores", real_scores, ndim=1, kind="float")
  check_array("wasserstein_critic_loss", "fake_scores", fake_scores, shape=real_scores.shape,
              kind="float")
  return fake_scores - real_scores


def wasserstein_generator_loss(*, fake_scores: jax.Array) -> jax.Array:
  """Per-example generator loss ``-D(G(z))`` (Gulrajani et al., 2017, Alg. 1, line 11)."""
  return -fake_scores


def gradient_penalty(*, critic_fn: Callable[[jax.Array], jax.Array], real: jax.Array,
                     fake: jax.Array, key: Optional[jax.Array] = None,
                     epsilon: Optional[jax.Array] = None, target_norm: float = 1.0,
                     has_aux: bool = False):
  """Per-example gradient penalty ``(||grad_x^ D(x^)||_2 - 1)^2`` (Gulrajani et al., 2017, Eq. 3).

  ``x^ = eps * x + (1 - eps) * x~`` with ``eps ~ U[0, 1]`` drawn per example.
  The caller multiplies by lambda (10 in the paper) and reduces.

  Args:
    critic_fn: maps a batch of images to per-example scores (B,), or with
      ``has_aux`` to ``(scores, aux)`` (a batch-norm critic's updated statistics).
      The input gradient is taken of the summed scores, as in the reference
      implementations (``grad_outputs=ones``): per example only when the critic does
      not mix examples (no batch norm).
    real: (B, ...) real images.
    fake: (B, ...) generated images (the penalty's gradient flows into them too,
      as in the reference implementations).
    key: PRNG key for eps (give ``key`` or ``epsilon``).
    epsilon: (B,) interpolation weights in [0, 1], instead of drawing them.
    target_norm: the norm the penalty pulls towards (1 in the paper).

  Returns:
    (B,) penalties, or ``(penalties, aux)`` with ``has_aux``.
  """
  check_array("gradient_penalty", "real", real, kind="float")
  check_array("gradient_penalty", "fake", fake, shape=real.shape, kind="float")
  if (key is None) == (epsilon is None):
    raise ValueError("gradient_penalty: give exactly one of key and epsilon.")
  if epsilon is None:
    epsilon = jax.random.uniform(key, (real.shape[0],), dtype=real.dtype)
  check_array("gradient_penalty", "epsilon", epsilon, shape=real.shape[:1], kind="float")
  eps = epsilon.reshape((real.shape[0],) + (1,) * (real.ndim - 1)).astype(real.dtype)
  interpolates = eps * real + (1.0 - eps) * fake
  if has_aux:
    def summed(x):
      scores, aux = critic_fn(x)
      return jnp.sum(scores), aux
    grads, aux = jax.grad(summed, has_aux=True)(interpolates)
  else:
    grads, aux = jax.grad(lambda x: jnp.sum(critic_fn(x)))(interpolates), None
  norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1) + 1e-12)
  penalties = jnp.square(norms - target_norm)
  return (penalties, aux) if has_aux else penalties


def auxiliary_classifier_loss(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """AC-GAN's per-example class log-likelihood term, as a cross-entropy (Odena et al., 2017, Eq. 2).

  Both the critic (on real and generated images) and the generator (on generated
  images) minimise it.
  """
  return softmax_cross_entropy(logits=logits, labels=labels)
