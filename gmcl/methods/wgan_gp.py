"""One WGAN-GP (and AC-GAN) iteration, written once for DGR, MeRGAN, lgm and DGM.

Gulrajani et al. (2017), Algorithm 1: ``n_critic`` critic updates on

    L_D = E[D(G(z))] - E[D(x)] + lambda * E[(||grad_x_hat D(x_hat)||_2 - 1)^2]

then one generator update on ``-E[D(G(z))]``; AC-GAN (Odena et al., 2017) adds a classification
loss on the critic's auxiliary head to either. What the papers add is each method's own: the inputs
a step draws (real data, replay from a frozen snapshot, a generator's samples), the extra terms of
its losses (MeRGAN's joint retraining and replay alignment, DGM's sparsity, lgm's alignment), its
update (Adam, HAT's compensated Adam with per-step arguments, batch statistics) and its key
schedule. They come in as functions; the order of the updates (``critic_first``, Algorithm 1's and
the four methods'; ``generator_first`` for code that trains G before D) is an argument.

Under ``jax.pmap`` the caller's ``reduce`` averages gradients and metrics over devices
(:meth:`gmcl.methods.base.Method.cross_device_mean`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from gmcl.losses.gan import gradient_penalty, wasserstein_critic_loss
from gmcl.methods.base import ModelState, apply_gradients

ORDERS = ("critic_first", "generator_first")


TRACE_CRITIC_ONCE = True  # critic_updates traces one update and unrolls it (False: n traced copies)


def _identity(tree):
  return tree


def wgan_gp_critic_loss(*, critic_fn: Callable, real: jax.Array, fake: jax.Array,
                        epsilon: Optional[jax.Array] = None, key=None, gp_weight: float,
                        real_scores: Optional[jax.Array] = None, fake_scores: Optional[jax.Array] = None,
                        has_aux: bool = False):
  """The WGAN-GP critic objective ``mean(D(fake)) - mean(D(real)) + gp_weight * mean(GP)``.

  Args:
    critic_fn: x -> the critic's scores (B,); with ``has_aux``, x -> (scores, aux) (a batch-norm
      critic's new statistics), used for the penalty's points only.
    real, fake: the two batches.
    epsilon: (B,) interpolation weights of the penalty's points (or ``key`` to draw them).
    gp_weight: lambda.
    real_scores, fake_scores: ``critic_fn`` of the batches, when the caller has them already
      (with an auxiliary head, one critic call gives scores and logits).

  Returns:
    ``(loss, metrics)``, or ``(loss, metrics, aux)`` with ``has_aux``: metrics ``critic_loss``,
    ``wasserstein_estimate`` (the critic's estimate of the distance, ``-(mean D(fake) - mean
    D(real))``) and ``gradient_penalty``.
  """
  s_real = critic_fn(real) if real_scores is None else real_scores
  s_fake = critic_fn(fake) if fake_scores is None else fake_scores
  out = gradient_penalty(critic_fn=critic_fn, real=real, fake=fake, epsilon=epsilon, key=key, has_aux=has_aux)
  gp, aux = out if has_aux else (out, None)
  w = jnp.mean(wasserstein_critic_loss(real_scores=s_real, fake_scores=s_fake))
  loss = w + gp_weight * jnp.mean(gp)
  metrics = {"critic_loss": loss, "wasserstein_estimate": -w, "gradient_penalty": jnp.mean(gp)}
  return (loss, metrics, aux) if has_aux else (loss, metrics)


def critic_update_with(tx):
  """The ``update`` of a critic step that applies the optax transformation ``tx``."""
  return lambda critic, grads, aux: apply_gradients(critic, grads, tx)


def generator_update_with(tx):
  """The ``update`` of a generator step that applies ``tx`` and keeps the loss's aux as the
  generator's new batch statistics (None for a generator without them)."""
  return lambda generator, critic, grads, stats: (apply_gradients(generator, grads, tx).replace(batch_stats=stats),
                                                  critic)


def critic_updates(critic: ModelState, keys: Sequence[Any], *, draw: Callable[[Any], Any],
                   loss: Callable[[Any, Any], tuple],
                   update: Callable[[ModelState, Any, Any], ModelState],
                   reduce: Callable = _identity) -> tuple[ModelState, dict]:
  """One critic update per key, in order.

  ``inputs = draw(key)`` (outside the differentiated function: generated samples enter as
  constants); ``loss(c_params, inputs) -> (loss, (aux, metrics))``;
  ``grads, (aux, metrics) = reduce(grad(loss, has_aux=True)(critic.params, inputs))``;
  ``critic = update(critic, grads, aux)`` (``aux``: e.g. new batch statistics, or None).
  Metrics are averaged over the updates.
  """
  n = len(keys)

  def step(c, key):
    inputs = draw(key)
    grads, (aux, m) = reduce(jax.grad(loss, has_aux=True)(c.params, inputs))
    return update(c, grads, aux), m

  if n <= 1 or not TRACE_CRITIC_ONCE:
    per_step = []
    for key in keys:
      critic, m = step(critic, key)
      per_step.append(m)
  else:
    # Traced once, unrolled in full when lowered: the same program as n traced copies, at a fifth
    # of the tracing time (which a warm compilation cache does not save).
    critic, stacked = jax.lax.scan(step, critic, jnp.stack(list(keys)), unroll=True)
    per_step = [{k: v[i] for k, v in stacked.items()} for i in range(n)]
  metrics: dict = {}
  for m in per_step:
    metrics = {k: metrics.get(k, 0.0) + v / n for k, v in m.items()}
  return critic, metrics


def generator_update(generator: ModelState, critic: ModelState, key, *, draw: Callable[[Any], Any],
                     loss: Callable[[Any, Any, ModelState], tuple],
                     update: Callable[[ModelState, ModelState, Any, Any], tuple],
                     reduce: Callable = _identity) -> tuple[ModelState, ModelState, dict]:
  """One generator update against ``critic`` as it stands.

  ``inputs = draw(key)``; ``loss(g_params, inputs, critic) -> (loss, (aux, metrics))``;
  ``grads, (aux, metrics) = reduce(grad(loss, has_aux=True)(generator.params, inputs, critic))``;
  ``generator, critic = update(generator, critic, grads, aux)``: the critic comes back too, for a
  batch-norm critic run in training mode by the generator's loss (DGM's official code), whose
  statistics that pass updates.
  """
  inputs = draw(key)
  grads, (aux, m) = reduce(jax.grad(loss, has_aux=True)(generator.params, inputs, critic))
  generator, critic = update(generator, critic, grads, aux)
  return generator, critic, m


def wgan_gp_iteration(critic: ModelState, generator: ModelState, *, critic_keys: Sequence[Any], generator_key,
                      critic_step: dict, generator_step: dict, reduce: Callable = _identity,
                      order: str = "critic_first") -> tuple[ModelState, ModelState, dict]:
  """``len(critic_keys)`` critic updates and one generator update, in ``order``.

  Args:
    critic, generator: the two models.
    critic_keys: one key per critic update; generator_key: the generator update's.
    critic_step: ``{"draw", "loss", "update"}`` of :func:`critic_updates`.
    generator_step: ``{"draw", "loss", "update"}`` of :func:`generator_update`; its loss sees the
      critic as it is when it runs.
    reduce: the cross-device mean of gradients and metrics (the identity on one device).
    order: ``"critic_first"`` (WGAN-GP's Algorithm 1, and the four methods' code) or
      ``"generator_first"``.

  Returns:
    ``(critic, generator, metrics)``, the critic's metrics averaged over its updates.
  """
  if order not in ORDERS:
    raise ValueError(f"wgan_gp_iteration: order={order!r}; valid: {list(ORDERS)}.")
  if order == "generator_first":
    generator, critic, g_metrics = generator_update(generator, critic, generator_key, reduce=reduce,
                                                    **generator_step)
    critic, c_metrics = critic_updates(critic, critic_keys, reduce=reduce, **critic_step)
  else:
    critic, c_metrics = critic_updates(critic, critic_keys, reduce=reduce, **critic_step)
    generator, critic, g_metrics = generator_update(generator, critic, generator_key, reduce=reduce,
                                                    **generator_step)
  return critic, generator, dict(c_metrics, **g_metrics)
