"""Hard Attention to the Task (Serra, Suris, Miron & Karatzoglou, ICML 2018): the mask layers.

Every masked layer l holds a task embedding e_l (one row per task); the gate of
task t at scale s is ``a_t = sigmoid(s * e_t)`` (Eq. 1). Training anneals s within
each epoch from 1/s_max to s_max (Eq. 3), so gates start soft and end nearly
binary; at test time s = s_max. What earlier tasks use is protected:

* the cumulative mask ``a_{<=t} = max(a_{<=t-1}, a_t)`` (Eq. 4, elementwise);
* gradient compensation: the gradient of a weight between units i (input) and j
  (output) is multiplied by ``1 - min(a_{<t, j}, a_{<t, i})`` (Eq. 2), so weights
  that both ends of which are reserved do not move;
* embedding-gradient compensation: the embeddings' gradients are multiplied by
  ``s_max / s * (cosh(clip(s e, +-50)) + 1) / (cosh(e) + 1)`` (Eq. 6's correction,
  the official code's ``thres_cosh = 50``), then the embeddings are clamped to +-6
  after the update (``thres_emb``);
* a sparsity regulariser ``c * sum a_t (1 - a_{<t}) / sum (1 - a_{<t})`` over all
  masked units (Eq. 5), normalised by the capacity still free.

Here: the gates, the masked layer and the masks across tasks. The compensation (an optax
transformation) is :func:`gmcl.optim.hat_compensation`; the regulariser
:func:`gmcl.losses.hat.sparsity_regularizer`.

Both forms of masking are here: activation (unit) masks, HAT's and DGMa's, where a
gate multiplies a layer's outputs; and weight masks, DGMw's, where a gate of the
kernel's shape multiplies the kernel itself. Everything is a pure function of
parameters, a task index and s; masks are pytrees keyed by layer name.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

def gate(embedding: jax.Array, s) -> jax.Array:
  """``sigmoid(s * e)`` (HAT, Eq. 1)."""
  return jax.nn.sigmoid(s * embedding)


def annealed_s(step_in_epoch, steps_per_epoch, s_max: float) -> jax.Array:
  """HAT's schedule within an epoch: ``1/s_max + (s_max - 1/s_max) * b / B`` for batch b of B (Eq. 3)."""
  b = jnp.asarray(step_in_epoch, jnp.float32)
  return 1.0 / s_max + (s_max - 1.0 / s_max) * b / jnp.asarray(steps_per_epoch, jnp.float32)


class HATDense(nn.Module):
  """A dense layer with a HAT gate per output unit (``mode="activation"``) or per weight
  (``mode="weight"``, DGMw). Returns ``(outputs, gate)``.

  With activation masks, ``y = (x W + b) * a_t``; a positive gate commutes with ReLU,
  so masking before or after it is the same. With weight masks, ``y = x (W * a_t) + b * a_t^b``
  where the bias has its own gate per unit.
  """
  features: int
  num_tasks: int
  mode: str = "activation"

  @nn.compact
  def __call__(self, x: jax.Array, task, s, hard: bool = False) -> tuple[jax.Array, Any]:
    """``hard=True`` uses binary gates ``e > 0`` (sigmoid(s e) rounded at 0.5), whatever s."""
    g_fn = (lambda e: (e > 0).astype(x.dtype)) if hard else (lambda e: gate(e, s))
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    if self.mode == "activation":
      e = self.param("embedding", nn.initializers.normal(1.0), (self.num_tasks, self.features))
      g = g_fn(e[task])
      return (x @ kernel + bias) * g, g
    if self.mode == "weight":
      e_w = self.param("embedding", nn.initializers.normal(1.0), (self.num_tasks,) + kernel.shape)
      e_b = self.param("bias_embedding", nn.initializers.normal(1.0), (self.num_tasks, self.features))
      g_w, g_b = g_fn(e_w[task]), g_fn(e_b[task])
      return x @ (kernel * g_w) + bias * g_b, {"kernel": g_w, "bias": g_b}
    raise ValueError(f"HATDense: mode={self.mode!r}; valid: 'activation' or 'weight'.")


# -- masks across tasks --------------------------------------------------------------------------

def cumulative(previous: Optional[Any], current: Any) -> Any:
  """``a_{<=t} = max(a_{<=t-1}, a_t)`` elementwise (HAT, Eq. 4); ``previous`` None at t = 0."""
  if previous is None:
    return current
  return jax.tree.map(jnp.maximum, previous, current)


def binarize(masks: Any, threshold: float = 0.5) -> Any:
  """Gates rounded to {0, 1} (DGM binarises the masks at the end of a task)."""
  return jax.tree.map(lambda m: (m > threshold).astype(m.dtype), masks)


def dense_chain_keep(gates_in_order: Sequence[jax.Array]) -> list[dict]:
  """Gradient multipliers ``1 - min(a_out, a_in)`` for a chain of activation-masked dense layers.

  Args:
    gates_in_order: the cumulative gates a_{<t} of each layer's outputs, first layer
      first. The first layer's inputs are unmasked (a_in = 1).

  Returns:
    One ``{"kernel": (in, out), "bias": (out,)}`` dict of multipliers per layer.
  """
  out = []
  for i, a_out in enumerate(gates_in_order):
    if i == 0:
      kernel = 1.0 - a_out[None, :]
    else:
      kernel = 1.0 - jnp.minimum(a_out[None, :], gates_in_order[i - 1][:, None])
    out.append({"kernel": kernel, "bias": 1.0 - a_out})
  return out
