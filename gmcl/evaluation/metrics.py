"""Continual-learning scores: accuracy matrix, A_t, forgetting, backward transfer.

Notation (Lopez-Paz & Ranzato, 2017; Chaudhry et al., 2018): ``R[i, j]`` is the
accuracy on the test data of task j after training task i (0-based here).

* ``A_t`` (MeRGAN, DGM): accuracy on the test examples of every class seen after
  task t, with one head over all seen classes. ``average="examples"`` (the default) pools
  the test examples of the classes seen; ``"tasks"`` is the mean over tasks 0..t of each
  task's accuracy (the DGM code's ``valid()``: one class per task, the mean of the classes'
  accuracies), which weighs a class by 1 / (t + 1) however many test images it has.
* average forgetting after the last task T: ``mean_{j<T} max_{j<=i<T} R[i, j] - R[T, j]``.
* backward transfer: ``mean_{j<T} R[T, j] - R[j, j]``.
* forward transfer (Lopez-Paz & Ranzato, 2017, Eq. 5): ``mean_{0<j<=T} R[j-1, j] - b_j``, with ``b_j`` a
  randomly initialised model's accuracy on task j; defined only where ``R[j-1, j]`` is measured
  (permuted tasks: every task's classes are live before it is trained).
* intransigence (Chaudhry et al., 2018, RWalk): ``I_k = a*_k - R[k, k]``, with ``a*_k`` the accuracy
  on task k of a model trained on the data of tasks 0..k together (gmcl's ``joint`` run).
* per-class accuracy after each task, and the confusion matrix (true class x predicted class,
  counts over the test images of the classes seen).
"""

from __future__ import annotations

from typing import Callable, Optional

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


AVERAGES = ("examples", "tasks")


def evaluate_after_task(predict_fn, x_test: np.ndarray, y_test: np.ndarray,
                        sequence: TaskSequence, t: int, batch_size: int = 1000,
                        average: str = "examples") -> dict:
  """Row t of the accuracy matrix and A_t.

  For class-incremental sequences, one pass predicts every test image once; row
  t holds the accuracy on each task's classes and ``A_t`` is, with ``average="examples"``,
  the accuracy over all images of classes seen so far, with ``"tasks"`` the mean of row
  t's entries 0..t. For permuted sequences each task's test set is its own permuted
  copy, and ``A_t`` is the mean over tasks 0..t either way (equal sizes).
  """
  if average not in AVERAGES:
    raise ValueError(f"evaluate_after_task: average={average!r}; valid: {list(AVERAGES)}.")
  num_tasks = len(sequence)
  if sequence.scenario == "class_incremental":
    pred = predict_labels(predict_fn, x_test, batch_size)
    index = [np.flatnonzero(np.isin(y_test, task.classes)) for task in sequence]
    row = task_accuracies(pred, y_test, index)
    seen = np.flatnonzero(np.isin(y_test, sequence.seen_classes(t)))
    if average == "examples":
      a_t = float(np.mean(pred[seen] == y_test[seen]))
    else:  # each task's accuracy weighs alike
      a_t = float(np.mean(row[:t + 1]))
    labels, preds = y_test[seen], pred[seen]
  else:
    row = np.zeros(num_tasks)
    labels, preds = [], []
    for j in range(num_tasks):
      xj, yj = task_examples(x_test, y_test, sequence, j)
      pj = predict_labels(predict_fn, xj, batch_size)
      row[j] = float(np.mean(pj == yj))
      if j <= t:  # the tasks seen, pooled
        labels.append(yj)
        preds.append(pj)
    labels, preds = np.concatenate(labels), np.concatenate(preds)
    a_t = float(np.mean(row[:t + 1]))
  return {"row": row, "A": a_t, **class_scores(labels, preds, sequence.num_classes)}


def class_scores(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
  """``per_class``: {class: accuracy} over the classes present in ``labels``; ``confusion``: the
  num_classes x num_classes counts, row = true class, column = predicted class."""
  labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, np.clip(predictions, 0, num_classes - 1)), 1)
  per_class = {int(c): float(confusion[c, c] / confusion[c].sum()) for c in np.unique(labels)}
  return {"per_class": per_class, "confusion": confusion}


def evaluate_task_incremental(predict_task_fn, x_test: np.ndarray, y_test: np.ndarray,
                              sequence: TaskSequence, t: int, batch_size: int = 1000) -> dict:
  """Row t of the accuracy matrix when the task id is given at test time (task-incremental).

  ``predict_task_fn(x, j)`` gives task j's logits (its head, its masks); entry j of
  the row is the accuracy on task j's test data, for j <= t (later entries are NaN:
  no head exists yet). ``A_t`` is the mean over tasks 0..t.
  """
  row = np.full(len(sequence), np.nan)
  labels, preds = [], []
  for j in range(t + 1):
    xj, yj = task_examples(x_test, y_test, sequence, j)
    pj = predict_labels(lambda xb: predict_task_fn(xb, j), xj, batch_size)
    row[j] = float(np.mean(pj == yj))
    labels.append(yj)
    preds.append(pj)
  return {"row": row, "A": float(np.mean(row[:t + 1])),
          **class_scores(np.concatenate(labels), np.concatenate(preds), sequence.num_classes)}


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


def forward_transfer(R: np.ndarray, reference: np.ndarray) -> Optional[float]:
  """``mean_{0<j<=T} (R[j-1, j] - reference[j])`` over the last row T of a square R (``reference``:
  a randomly initialised model's accuracy per task); None where an ``R[j-1, j]`` is unmeasured
  (NaN: classes or heads not yet live) or T = 0."""
  R, b = np.asarray(R, dtype=float), np.asarray(reference, dtype=float)
  T = R.shape[0] - 1
  if T < 1:
    return None
  gaps = [R[j - 1, j] - b[j] for j in range(1, T + 1)]
  return None if not np.all(np.isfinite(gaps)) else float(np.mean(gaps))


def intransigence(R: np.ndarray, R_joint: np.ndarray) -> list[float]:
  """``I_k = R_joint[k, k] - R[k, k]`` for each task k of R (RWalk's intransigence against the
  joint model's accuracy matrix)."""
  R, J = np.asarray(R, dtype=float), np.asarray(R_joint, dtype=float)
  if J.shape[0] < R.shape[0]:
    raise ValueError(f"the joint run has {J.shape[0]} tasks, fewer than this run's {R.shape[0]}.")
  return [float(J[k, k] - R[k, k]) for k in range(R.shape[0])]


def format_table(accuracies, title: str = "A_t", stds=None) -> str:
  """A table of A_1..A_T in percent: one row, or with ``stds`` (standard deviations over seeds)
  a second row of ± sd under it."""
  head = " ".join(f"{f'A_{i + 1}':>7}" for i in range(len(accuracies)))
  vals = " ".join(f"{100 * a:7.2f}" for a in accuracies)
  table = f"{title}\n{head}\n{vals}"
  if stds is not None:
    table += "\n" + " ".join(f"{'±' + format(100 * s, '.2f'):>7}" for s in stds)
  return table
