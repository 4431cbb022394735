"""Tolerances from the arithmetic, for tests that compare two computations of the same training
(1 device against several, jit against no-jit, one program against several): float32 rounding
times the number of updates, and Adam's largest step. Never one CPU's figures: the same tests run
on AMD and Intel CPUs, GPUs and TPUs."""

import jax
import numpy as np


def ravel(tree):
  """Every leaf of ``tree``, flattened into one float64 vector."""
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


# Float32 rounding of one gradient summed over the global batch in another order (8 devices, or
# another fusion of the same ops) is ~n * eps_f32 relative for a sum of n terms: with reductions
# of up to ~1e3 terms here (eps_f32 = 1.2e-7), ~1e-4. Where a gradient is a difference of nearly equal terms (the WGAN
# critic's, mean D(fake) - mean D(real), with its gradient penalty) cancellation multiplies that
# relative error, and Adam's update lr * m/sqrt(v) carries it over whole. A wrong data-parallel
# step (a missing pmean, a wrong slice of the batch) changes the update itself: about one step.
# 1e-2 of a step per update lies two orders of magnitude from both.
ROUNDING_PER_UPDATE = 1e-2
# A parameter whose gradient is itself rounding-sized (a bias before batch norm, a weight of a
# dead unit) has a noise sign that the summation order decides: Adam can step it the other way.
# Such parameters are a small fraction of a network (biases before normalisation are ~0.3% of
# these ones); a wrong data-parallel step moves nearly every parameter by about a step.
MAX_ROUNDING_SIZED = 0.01


def adam_step_bound(b1: float, b2: float, updates: int) -> float:
  """The largest |update| / lr that Adam (bias-corrected, eps = 0) can take in its first
  ``updates`` steps, for any gradients: by Cauchy-Schwarz on m_t = (1-b1) sum_j b1^j g_{t-j}
  against v_t = (1-b2) sum_j b2^j g_{t-j}^2,
  |m_t| / sqrt(v_t) <= (1-b1) / sqrt(1-b2) * sqrt(sum_{j<t} (b1^2/b2)^j),
  times the bias corrections sqrt(1-b2^t) / (1-b1^t). Step 1 gives exactly 1."""
  def bound(t):
    r = b1 * b1 / b2
    return ((1 - b1) / np.sqrt(1 - b2) * np.sqrt(sum(r ** j for j in range(t)))
            * np.sqrt(1 - b2 ** t) / (1 - b1 ** t))
  return max(bound(t) for t in range(1, updates + 1))


def assert_match_up_to_summation_order(one, eight, *, lr, betas, updates, what):
  """``one`` and ``eight`` (parameter pytrees after at most ``updates`` Adam updates of
  learning rate ``lr`` and ``betas`` from the same start) differ only as the order of float32
  sums can make them: no parameter by more than two of Adam's largest steps per update (the
  two runs stepping opposite ways), and all but a fraction MAX_ROUNDING_SIZED by less than
  ROUNDING_PER_UPDATE of a step per update. Bounds from the arithmetic, not from one CPU."""
  diff = np.abs(ravel(one) - ravel(eight))
  worst = 2 * updates * lr * adam_step_bound(*betas, updates)
  close = ROUNDING_PER_UPDATE * updates * lr
  worse = float(np.mean(diff > close))
  print(f"{what}: max |diff| {diff.max():.3g} (bound {worst:.3g}), fraction beyond "
        f"{close:.3g}: {worse:.2g} (bound {MAX_ROUNDING_SIZED})")
  assert diff.max() < worst, (what, float(diff.max()), worst)
  assert worse < MAX_ROUNDING_SIZED, (what, worse)
  return diff


# An SGD step (ogm's lookahead, HAT's) of size lr moves a parameter by lr times its gradient, which
# has no bound of its own; the steps that take one clip it, ogm's lookahead to norm <= 1 by default
# and the tests' unclipped settings to gradients far below this.
SGD_STEP_BOUND = 100.0


def _params_arrays(state):
  return [x for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
          if any(getattr(k, "name", getattr(k, "key", None)) == "params" for k in path)]


def params_leaves(state):
  """The leaves of every ``params`` field in a method state (models' parameters, not optimiser
  moments or statistics), flattened."""
  leaves = _params_arrays(state)
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in leaves]) if leaves else np.zeros(0)


def assert_mostly_within_rounding(one, other, *, lr, updates, what):
  """All but a fraction MAX_ROUNDING_SIZED of the parameters of two method states agree within
  ROUNDING_PER_UPDATE of a step of size ``lr`` per update (``lr``: the largest learning rate that
  moves any of them; SGD's steps, HAT's, have no bound of their own, so there is no maximum here)."""
  diff = np.abs(params_leaves(one) - params_leaves(other))
  close = ROUNDING_PER_UPDATE * updates * lr
  worse = float(np.mean(diff > close)) if diff.size else 0.0
  assert worse < MAX_ROUNDING_SIZED, (what, worse, float(diff.max()) if diff.size else 0.0, close)


def assert_chunks_equal_single_steps(step, state, data, key, *, lr, updates_per_step, what,
                                     num_steps=3, modes=("unroll",)):
  """``num_steps`` steps of ``step`` run one per compiled call, in one call (each chunk mode of
  ``modes``) and split 1 + (num_steps - 1): the same steps in the same order, equal up to the
  rounding of what XLA fuses differently. Parameters: all but a fraction MAX_ROUNDING_SIZED within
  ROUNDING_PER_UPDATE of a step per update (:func:`assert_mostly_within_rounding`; ``lr`` the
  largest learning rate, ``updates_per_step`` the optimiser updates one step takes), and none
  beyond two of Adam's largest steps per update (either set of betas gmcl uses) or, for SGD steps,
  beyond two steps of ``lr`` times the step's clipped gradient (:data:`SGD_STEP_BOUND`). Every
  other float leaf (optimiser moments, batch statistics, saved batches): all but a fraction
  MAX_ROUNDING_SIZED of its entries within 1e-2 of the leaf's largest magnitude. Integer and
  boolean leaves (counters, masks) exactly. Returns the single-step and the one-call states."""
  from gmcl.methods.base import run_chunk  # pylint: disable=import-outside-toplevel
  copy = lambda s: jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, s)
  single = copy(state)
  for i in range(num_steps):
    single, _ = run_chunk(step, single, data, key, i, 1)
  chunked = None
  for mode in modes:
    whole, _ = run_chunk(step, copy(state), data, key, 0, num_steps, mode)
    split, _ = run_chunk(step, copy(state), data, key, 0, 1, mode)
    split, _ = run_chunk(step, split, data, key, 1, num_steps - 1, mode)
    for other, how in ((whole, "one call"), (split, "split")):
      assert jax.tree.structure(other) == jax.tree.structure(single), (what, mode, how)
      label, updates = f"{what} ({mode}, {how})", num_steps * updates_per_step
      assert_mostly_within_rounding(single, other, lr=lr, updates=updates, what=label)
      worst = 2 * updates * lr * max(adam_step_bound(0.9, 0.999, updates), adam_step_bound(0.5, 0.9, updates),
                                     SGD_STEP_BOUND)
      diff = np.abs(params_leaves(single) - params_leaves(other))
      assert diff.size == 0 or diff.max() < worst, (label, float(diff.max()), worst)
      param_ids = {id(x) for x in _params_arrays(single)}
      off = total = 0
      for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(other)):
        a_np, b_np = np.asarray(a), np.asarray(b)
        if a_np.dtype.kind in "iub":
          np.testing.assert_array_equal(a_np, b_np, err_msg=label)
        elif a_np.dtype.kind == "f" and id(a) not in param_ids and a_np.size:
          # Pooled over every such entry, as parameters are: a leaf whose entries are all
          # rounding-sized (the moments of a bias before batch norm) is a small part of them.
          scale = float(np.max(np.abs(a_np)))
          off += int(np.sum(np.abs(a_np.astype(np.float64) - b_np) > 1e-2 * scale))
          total += a_np.size
      assert off <= MAX_ROUNDING_SIZED * total, (label, "non-parameter entries off", off, total)
    chunked = whole if chunked is None else chunked
  return single, chunked
