"""Deep Generative Replay's solver loss (Shin et al., NeurIPS 2017, Sec. 3.2).

The solver of task t minimises

    L(theta_t) = r * E_{(x,y)~D_t}[ L(C_t(x), y) ]
               + (1 - r) * E_{x'~G_{t-1}}[ L(C_t(x'), C_{t-1}(x')) ],

with r the ratio of real data. The paper does not say whether C_{t-1}(x') is the
argmax label (the reference PyTorch code, ``torch.max(scores, 1)``) or the soft
prediction (distillation, as in van de Ven et al.'s "DGR+distill"), so both are
offered: ``mode="hard"`` or ``mode="soft"``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from gmcl.checks import check_array
from gmcl.losses.classification import mask_logits, soft_cross_entropy, softmax_cross_entropy

REPLAY_TARGET_MODES = ("hard", "soft")


def replay_targets(*, teacher_logits: jax.Array, mode: str = "hard", temperature: float = 1.0,
                   where: Optional[jax.Array] = None) -> jax.Array:
  """The previous solver's targets for replayed inputs.

  Args:
    teacher_logits: (B, K) logits of C_{t-1} on x' (not differentiated).
    mode: "hard": one-hot of the argmax; "soft": softmax(z / temperature).
    temperature: softening temperature for "soft" targets.
    where: boolean (K,) mask of classes C_{t-1} could predict.

  Returns:
    (B, K) target probabilities, with stop_gradient applied.
  """
  if mode not in REPLAY_TARGET_MODES:
    raise ValueError(f"mode={mode!r}; valid choices: {REPLAY_TARGET_MODES}.")
  z = mask_logits(jax.lax.stop_gradient(teacher_logits), where)
  if mode == "hard":
    return jax.nn.one_hot(jnp.argmax(z, axis=-1), z.shape[-1], dtype=z.dtype)
  return jax.nn.softmax(z / temperature, axis=-1)


def replay_loss(*, logits: jax.Array, teacher_logits: jax.Array, mode: str = "hard",
                temperature: float = 1.0, where: Optional[jax.Array] = None,
                teacher_where: Optional[jax.Array] = None) -> jax.Array:
  """Per-example replay term ``L(C_t(x'), C_{t-1}(x'))`` of DGR.

  Hard targets give the cross-entropy with the teacher's argmax; soft targets give
  ``T^2 * H(softmax(z_{t-1}/T), softmax(z_t/T))`` (Hinton et al., 2015), so that the
  gradient scale does not depend on T.

  Args:
    logits: (B, K) student logits C_t(x').
    teacher_logits: (B, K) teacher logits C_{t-1}(x'); no gradient flows into them.
    mode: "hard" or "soft".
    temperature: T for soft targets (ignored for hard ones).
    where: active classes of the student (all classes seen up to task t).
    teacher_where: active classes of the teacher (seen up to task t-1).

  Returns:
    (B,) losses.
  """
  check_array("replay_loss", "logits", logits, ndim=2, kind="float")
  check_array("replay_loss", "teacher_logits", teacher_logits, shape=logits.shape, kind="float")
  targets = replay_targets(teacher_logits=teacher_logits, mode=mode, temperature=temperature,
                           where=teacher_where)
  if mode == "hard":
    return softmax_cross_entropy(logits=logits, labels=jnp.argmax(targets, -1), where=where)
  return temperature ** 2 * soft_cross_entropy(logits=logits / temperature, targets=targets,
                                               where=where)


def dgr_solver_objective(*, real_losses: jax.Array, replay_losses: jax.Array,
                         ratio: jax.Array | float) -> jax.Array:
  """DGR's solver objective ``r * mean(real_losses) + (1 - r) * mean(replay_losses)``.

  Args:
    real_losses: (B,) per-example ``L(C_t(x), y)`` on current-task data.
    replay_losses: (B',) per-example replay terms from :func:`replay_loss`.
    ratio: r in [0, 1], the weight of real data (1/t balances classes when every
      task adds the same number of classes).
  """
  return ratio * jnp.mean(real_losses) + (1.0 - ratio) * jnp.mean(replay_losses)
