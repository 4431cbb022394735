"""Reverse accuracy: what a generator's samples alone teach a classifier that never saw real data.

A fresh classifier (an MLP or a small CNN) trains only on the generator's samples of every class
seen, labelled by the generator's condition (or, for an unconditional generator, by the method's
own classifier, as its replay labels them), and is tested on the real test images of those
classes, with one head over them. Beside the continual-learning accuracy (the method's classifier
on real images) and MeRGAN's oracle accuracy (a real-data classifier on generated images), it
tells a weak generator from a weak classifier: samples an oracle recognises can still be too
narrow to teach a classifier (low reverse accuracy), and a classifier can forget what its
generator still draws well (high reverse accuracy, low A_t).

The classifier trains as the oracle does (:func:`gmcl.evaluation.oracle.train_oracle`: Adam, a
fixed number of batches sampled by key), so the score is a pure function of the samples, the
architecture and the schedule.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gmcl.evaluation import metrics as evaluation
from gmcl.evaluation import oracle as oracle_lib

ARCHITECTURES = ("mlp", "cnn")


def _seen_mask(classes: Sequence[int], num_classes: int) -> jax.Array:
  """0 for the logits of ``classes``, -inf for the others: one head over the classes seen."""
  allowed = np.zeros((num_classes,), bool)
  allowed[list(classes)] = True
  return jnp.asarray(np.where(allowed, 0.0, -np.inf), jnp.float32)


def generated_dataset(sample_fn: Callable[[jax.Array, jax.Array], jax.Array], classes: Sequence[int],
                      key: jax.Array, per_class: int, batch_size: int,
                      label_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
                      num_classes: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """``per_class`` samples (rounded up to whole batches) per class of ``classes``.

  Conditional generators are asked for each class (batch ``batch_size``, class c keyed by
  ``fold_in(key, c)``) and their samples keep that label. With ``label_fn`` (the logits of the
  method's classifier), the generator is unconditional: it draws ``len(classes) * per_class``
  samples and ``label_fn`` labels them, its logits of classes outside ``classes`` masked.
  """
  n_batches = max(1, -(-per_class // batch_size))
  xs, ys = [], []
  if label_fn is None:
    for c in classes:
      k = jax.random.fold_in(key, int(c))
      labels = jnp.full((batch_size,), int(c), jnp.int32)
      for b in range(n_batches):
        xs.append(np.asarray(sample_fn(jax.random.fold_in(k, b), labels)))
        ys.append(np.full((batch_size,), int(c), np.int32))
  else:
    mask = _seen_mask(classes, num_classes)
    zeros = jnp.zeros((batch_size,), jnp.int32)
    for b in range(n_batches * len(classes)):
      images = sample_fn(jax.random.fold_in(key, b), zeros)
      xs.append(np.asarray(images))
      ys.append(np.asarray(jnp.argmax(label_fn(images) + mask, -1), np.int32))
  return np.concatenate(xs), np.concatenate(ys)


def reverse_accuracy(sample_fn: Callable[[jax.Array, jax.Array], jax.Array], classes: Sequence[int],
                     x_test: np.ndarray, y_test: np.ndarray, key: jax.Array, num_classes: int, *,
                     architecture: str = "mlp", hidden: Sequence[int] = (400, 400), steps: int = 2000,
                     batch_size: int = 128, learning_rate: float = 1e-3, per_class: int = 6000,
                     sample_batch: int = 100, label_fn=None, eval_batch: int = 1000) -> float:
  """The accuracy on the real test images of ``classes`` of a fresh ``architecture`` classifier
  trained only on generated samples (:func:`generated_dataset`), one head over ``classes``."""
  if architecture not in ARCHITECTURES:
    raise ValueError(f"architecture={architecture!r}; valid: {ARCHITECTURES}.")
  k_data, k_init = jax.random.split(key)
  x, y = generated_dataset(sample_fn, classes, k_data, per_class, sample_batch, label_fn, num_classes)
  settings = oracle_lib.OracleSettings(
      dataset="generated", pad_to=0, value_range=(0.0, 1.0), architecture=architecture,
      hidden=tuple(hidden), steps=steps, batch_size=batch_size, learning_rate=learning_rate,
      seed=int(jax.random.randint(k_init, (), 0, 2**30)))
  model, params = oracle_lib.train_oracle(settings, x, y, num_classes)
  mask = _seen_mask(classes, num_classes)
  logits = jax.jit(lambda p, xb: model.apply({"params": p}, xb) + mask)
  seen = np.isin(y_test, list(classes))
  pred = evaluation.predict_labels(lambda xb: logits(params, xb), x_test[seen], eval_batch)
  return float(np.mean(pred == y_test[seen]))
