"""Parameter-importance regularisers of the classifier: EWC, EWC++, SI (path integral) and RWalk.

Pure functions over parameter pytrees, as the reference implementation computes them (Chaudhry et
al.'s code of RWalk and A-GEM, ``facebookresearch/agem``, ``model/model.py``; Kirkpatrick et al.
2017; Zenke et al. 2017; Chaudhry et al. 2018). Every function takes and returns pytrees shaped
like the parameters; none reduces over a batch of examples except :func:`per_example_squared_grads`.

* The penalty of all three: ``strength * sum_i importance_i * (theta_i - anchor_i)^2``
  (:func:`quadratic_penalty`; Kirkpatrick et al. write ``lambda/2``: their lambda is twice this
  ``strength``).
* EWC++'s Fisher (RWalk, Eq. 10): the squared gradients of the loss summed over a window of
  ``every`` steps, then ``F <- (1 - alpha) F + alpha * window / every`` (:func:`ema_fisher`).
* EWC's empirical Fisher (Kirkpatrick et al.): the mean over examples of the squared per-example
  gradient of ``-log p(y | x)`` (:func:`per_example_squared_grads`).
* SI (Zenke et al.): ``omega += -g * delta_theta`` each step, g the unregularised gradient
  (:func:`path_increment`); at a task's end ``Omega += relu(omega / (xi + (theta - anchor)^2))``
  (:func:`si_importance`).
* RWalk: every ``every`` steps ``s += relu(omega / (xi + F * (theta - theta_window)^2))``
  (:func:`rwalk_window_scores`), the scores of a task averaged with the old ones at its end.
* :func:`minmax_normalize`: ``(x - min) / (max - min + 1e-32)`` with min and max over every
  parameter at once, as the reference code normalises the Fisher and RWalk's scores.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Params = Any

EPSILON = 1e-32  # the reference code's EPSILON in the min-max normalisation


def zeros_like(tree: Params) -> Params:
  return jax.tree.map(jnp.zeros_like, tree)


def quadratic_penalty(params: Params, anchor: Params, importance: Params, strength) -> jax.Array:
  """``strength * sum_i importance_i * (params_i - anchor_i)^2`` (a scalar)."""
  terms = jax.tree.map(lambda p, a, f: jnp.sum(f * jnp.square(p - a)), params, anchor, importance)
  return strength * sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


def penalty_gradient(params: Params, anchor: Params, importance: Params, strength) -> Params:
  """The gradient of :func:`quadratic_penalty` with respect to ``params``: ``2 strength F (theta - anchor)``."""
  return jax.tree.map(lambda p, a, f: 2.0 * strength * f * (p - a), params, anchor, importance)


def ema_fisher(running: Params, window: Params, *, alpha: float, every: int) -> Params:
  """EWC++'s running Fisher after a window of ``every`` steps whose squared gradients sum to
  ``window``: ``(1 - alpha) * running + alpha * window / every`` (the reference code's
  ``set_running_fisher``, ``alpha`` = its ``fisher_ema_decay``)."""
  return jax.tree.map(lambda f, w: (1.0 - alpha) * f + (alpha / every) * w, running, window)


def add_squares(acc: Params, grads: Params) -> Params:
  """``acc + grads^2``, leaf by leaf (the reference code's ``set_tmp_fisher``)."""
  return jax.tree.map(lambda a, g: a + jnp.square(g), acc, grads)


def path_increment(omega: Params, grads: Params, before: Params, after: Params) -> Params:
  """SI's and RWalk's path integral after one step: ``omega - grads * (after - before)``, with
  ``grads`` the unregularised loss's gradient at ``before``."""
  return jax.tree.map(lambda o, g, b, a: o - g * (a - b), omega, grads, before, after)


def si_importance(big_omega: Params, omega: Params, params: Params, anchor: Params,
                  xi: float) -> Params:
  """SI's importance after a task: ``Omega + relu(omega / (xi + (params - anchor)^2))``, with
  ``anchor`` the parameters at the task's start."""
  return jax.tree.map(lambda big, o, p, a: big + jax.nn.relu(o / (xi + jnp.square(p - a))),
                      big_omega, omega, params, anchor)


def rwalk_window_scores(scores: Params, omega: Params, fisher: Params, params: Params,
                        window_start: Params, xi: float) -> Params:
  """RWalk's scores after a window: ``scores + relu(omega / (xi + F * (params - window_start)^2))``
  (the reference code's ``update_big_omega_riemann``)."""
  return jax.tree.map(lambda s, o, f, p, w: s + jax.nn.relu(o / (xi + f * jnp.square(p - w))),
                      scores, omega, fisher, params, window_start)


def minmax_normalize(tree: Params) -> Params:
  """``(x - min) / (max - min + 1e-32)``, with the min and max over every leaf together."""
  leaves = jax.tree.leaves(tree)
  low = jnp.min(jnp.stack([jnp.min(x) for x in leaves]))
  high = jnp.max(jnp.stack([jnp.max(x) for x in leaves]))
  return jax.tree.map(lambda x: (x - low) / (high - low + EPSILON), tree)


def per_example_squared_grads(loss_fn: Callable[[Params, jax.Array, jax.Array], jax.Array],
                              params: Params, x: jax.Array, y: jax.Array,
                              weights: jax.Array | None = None) -> Params:
  """``sum_n w_n * (d loss_fn(params, x_n, y_n) / d params)^2`` over the examples of ``x, y``:
  ``loss_fn`` takes one example (no batch axis) and returns a scalar. Divide by the number of
  examples for the empirical Fisher's mean."""
  grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0))(params, x, y)
  w = jnp.ones(x.shape[:1], jnp.float32) if weights is None else weights
  return jax.tree.map(lambda g: jnp.tensordot(w, jnp.square(g), axes=1), grads)
