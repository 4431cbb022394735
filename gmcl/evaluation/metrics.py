"""Continual-learning scores: accuracy matrix, A_t, forgetting, backward transfer.

Notation (Lopez-Paz & Ranzato, 2017; Chaudhry et al., 2018): ``R[i, j]`` is the
accuracy on the test data of task j after training task i (0-based here).

* ``A_t`` (MeRGAN, DGM): accuracy on the test examples of every class seen after
  task t, with one head over all seen classes. It weights examples, not tasks.
* average forgetting after the last task T: ``mean_{j<T} max_{j<=i<T} R[i, j] - R[T, j]``.
* backward transfer: ``mean_{j<T} R[T, j] - R[j, j]``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gmcl.data.tasks import TaskSequence, task_examples


def predict_labels(predict_fn: Callable[[jax.Array], jax.Array], x: np.ndarray,
                   batch_size: int = 1000) -> np.ndarray:
  """Argmax predictions of ``predict_fn`` over ``x`` in fixed-size batches (one compile)."""
  n = x.shape[0]
  if n == 0:
    return np.zeros((0,), np.int32)
  out = []
  pad = (-n) % batch_size if n > batch_size else 0
  bs = min(batch_size, n)
  xp = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
  for i in range(0, xp.shape[0], bs):
    out.append(jnp.argmax(predict_fn(jnp.asarray(xp[i:i + bs])), -1))
  return np.asarray(jnp.concatenate(out))[:n].astype(np.int32)


def task_accuracies(predictions: np.ndarray, labels: np.ndarray, x_index: list[np.ndarray]
                    ) -> np.ndarray:
  """Accuracy per task, given index arrays of each task's test examples."""
  return np.array([float(np.mean(predictions[idx] == labels[idx])) if len(idx) else np.nan
                   for idx in x_index])


def evaluate_after_task(predict_fn, x_test: np.ndarray, y_test: np.ndarray,
                        sequence: TaskSequence, t: int, batch_size: int = 1000) -> dict:
  """Row t of the accuracy matrix and A_t.

  For class-incremental sequences, one pass predicts every test image once; row
  t holds the accuracy on each task's classes and ``A_t`` the accuracy over all
  images of classes seen so far. For permuted sequences each task's test set is
  its own permuted copy, and ``A_t`` is the mean over tasks 0..t (equal sizes).
  """
  num_tasks = len(sequence)
  if sequence.scenario == "class_incremental":
    pred = predict_labels(predict_fn, x_test, batch_size)
    index = [np.flatnonzero(np.isin(y_test, task.classes)) for task in sequence]
    row = task_accuracies(pred, y_test, index)
    seen = np.flatnonzero(np.isin(y_test, sequence.seen_classes(t)))
    a_t = float(np.mean(pred[seen] == y_test[seen]))
  else:
    row = np.zeros(num_tasks)
    for j in range(num_tasks):
      xj, yj = task_examples(x_test, y_test, sequence, j)
      row[j] = float(np.mean(predict_labels(predict_fn, xj, batch_size) == yj))
    a_t = float(np.mean(row[:t + 1]))
  return {"row": row, "A": a_t}


def evaluate_task_incremental(predict_task_fn, x_test: np.ndarray, y_test: np.ndarray,
                              sequence: TaskSequence, t: int, batch_size: int = 1000) -> dict:
  """Row t of the accuracy matrix when the task id is given at test time (task-incremental).

  ``predict_task_fn(x, j)`` gives task j's logits (its head, its masks); entry j of
  the row is the accuracy on task j's test data, for j <= t (later entries are NaN:
  no head exists yet). ``A_t`` is the mean over tasks 0..t.
  """
  row = np.full(len(sequence), np.nan)
  for j in range(t + 1):
    xj, yj = task_examples(x_test, y_test, sequence, j)
    row[j] = float(np.mean(predict_labels(lambda xb: predict_task_fn(xb, j), xj, batch_size) == yj))
  return {"row": row, "A": float(np.mean(row[:t + 1]))}


def average_forgetting(R: np.ndarray) -> float:
  """``mean_{j<T} (max_{j<=i<T} R[i, j] - R[T, j])`` for the last row T of a square R; 0 if T = 0."""
  R = np.asarray(R, dtype=float)
  T = R.shape[0] - 1
  if T < 1:
    return 0.0
  return float(np.mean([np.max(R[j:T, j]) - R[T, j] for j in range(T)]))


def backward_transfer(R: np.ndarray) -> float:
  """``mean_{j<T} (R[T, j] - R[j, j])`` (Lopez-Paz & Ranzato, 2017, Eq. 4); 0 if T = 0."""
  R = np.asarray(R, dtype=float)
  T = R.shape[0] - 1
  if T < 1:
    return 0.0
  return float(np.mean([R[T, j] - R[j, j] for j in range(T)]))


def format_table(accuracies, title: str = "A_t", stds=None) -> str:
  """A table of A_1..A_T in percent: one row, or with ``stds`` (standard deviations over seeds)
  a second row of ± sd under it."""
  head = " ".join(f"{f'A_{i + 1}':>7}" for i in range(len(accuracies)))
  vals = " ".join(f"{100 * a:7.2f}" for a in accuracies)
  table = f"{title}\n{head}\n{vals}"
  if stds is not None:
    table += "\n" + " ".join(f"{'±' + format(100 * s, '.2f'):>7}" for s in stds)
  return table
