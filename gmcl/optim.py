"""Optimisers as optax transformations: Adam as the papers' code sets it, and HAT's gradient
compensation (Serra et al., ICML 2018, Eqs. 2 and 6) with the embeddings' clamp.

Each is a small pure factory. (EWC's, SI's and RWalk's penalties and importance rules: gmcl.losses.regularization.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

THRES_COSH = 50.0  # the official HAT code's thres_cosh
THRES_EMB = 6.0  # the official HAT code's thres_emb


def adam(lr: float, b1: float, b2: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam with optional L2 weight decay added to the gradient (torch.optim.Adam's weight_decay)."""
  if weight_decay:
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr, b1=b1, b2=b2))
  return optax.adam(lr, b1=b1, b2=b2)


class HATCompensationState(NamedTuple):
  keep: Any  # pytree like params: gradient multipliers in [0, 1] (1 - reserved); 1 where unmasked


def hat_compensation(embedding_mask: Any, s_max: float) -> optax.GradientTransformationExtraArgs:
  """HAT's gradient compensation as an optax transformation (chain it before the optimiser).

  ``update(grads, state, params, s=s)`` (optionally ``s_max=``, DGMw's per-epoch
  maximum, instead of the fixed one) multiplies every gradient by ``state.keep``
  (Eq. 2: weights reserved by earlier tasks get no update) and the embeddings'
  gradients (where ``embedding_mask`` is True) by
  ``s_max / s * (cosh(clip(s e, +-50)) + 1) / (cosh(e) + 1)``. The state's ``keep``
  starts at ones; :func:`with_keep` replaces it at the end of a task.

  Args:
    embedding_mask: a pytree of bools like the params: which leaves are task embeddings.
    s_max: HAT's s_max.
  """

  def init(params):
    return HATCompensationState(keep=jax.tree.map(jnp.ones_like, params))

  def update(updates, state, params=None, *, s=None, **extra):
    scale_max = extra.pop("s_max", s_max)
    if params is None or s is None:
      raise ValueError("hat_compensation: update needs params and s= (the current gate scale).")
    updates = jax.tree.map(lambda g, k: g * k, updates, state.keep)

    def embedding_fix(g, e, is_emb):
      if not is_emb:
        return g
      num = jnp.cosh(jnp.clip(s * e, -THRES_COSH, THRES_COSH)) + 1.0
      den = jnp.cosh(e) + 1.0
      return g * (scale_max / s) * num / den

    updates = jax.tree.map(embedding_fix, updates, params, embedding_mask)
    return updates, state

  return optax.GradientTransformationExtraArgs(init, update)


def with_keep(opt_state, keep: Any):
  """Replaces the :class:`HATCompensationState` inside an optax chain's state by ``keep``."""
  if isinstance(opt_state, HATCompensationState):
    return HATCompensationState(keep=keep)
  if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields"):
    return tuple(with_keep(s, keep) for s in opt_state)
  return opt_state


def clamp_embeddings(params: Any, embedding_mask: Any, limit: float = THRES_EMB) -> Any:
  """Embeddings clamped to [-limit, limit] after an update (the official code's thres_emb = 6)."""
  return jax.tree.map(lambda p, m: jnp.clip(p, -limit, limit) if m else p, params, embedding_mask)
