"""Task sequences for continual learning, and image preprocessing.

Two kinds of sequence:

* class-incremental (``per_class_tasks``, ``split_tasks``): task t holds a set of
  classes; one head over all classes seen so far is evaluated (the protocol of
  MeRGAN and DGM, whose A_5 and A_10 are accuracies over the classes seen after
  5 and 10 one-class tasks).
* domain-incremental (``permuted_tasks``): every task holds all classes under its
  own fixed pixel permutation (permuted MNIST).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
  """One task: its classes and, for permuted tasks, its pixel permutation."""
  index: int
  classes: tuple[int, ...]
  permutation: Optional[np.ndarray] = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class TaskSequence:
  """An ordered sequence of tasks over a label space of ``num_classes``."""
  tasks: tuple[Task, ...]
  num_classes: int
  scenario: str  # "class_incremental" or "domain_incremental"

  def __len__(self) -> int:
    return len(self.tasks)

  def __iter__(self):
    return iter(self.tasks)

  def __getitem__(self, i: int) -> Task:
    return self.tasks[i]

  def seen_classes(self, t: int) -> tuple[int, ...]:
    """Classes seen after training tasks 0..t (in order of first appearance)."""
    seen: list[int] = []
    for task in self.tasks[:t + 1]:
      seen.extend(c for c in task.classes if c not in seen)
    return tuple(seen)

  def active_mask(self, t: int) -> np.ndarray:
    """Boolean (num_classes,) mask of the classes a head may predict after task t."""
    mask = np.zeros(self.num_classes, dtype=bool)
    mask[list(self.seen_classes(t))] = True
    return mask


def _check_order(class_order: Optional[Sequence[int]], num_classes: int) -> tuple[int, ...]:
  order = tuple(range(num_classes)) if class_order is None else tuple(int(c) for c in class_order)
  if sorted(order) != list(range(num_classes)):
    raise ValueError(f"class_order={list(order)} must be a permutation of 0..{num_classes - 1}.")
  return order


def split_tasks(num_classes: int = 10, classes_per_task: int = 2,
                class_order: Optional[Sequence[int]] = None) -> TaskSequence:
  """Class-incremental tasks of ``classes_per_task`` consecutive classes of ``class_order``.

  ``split_tasks(10, 2)`` is split MNIST (5 tasks: {0,1}, {2,3}, ...).
  """
  order = _check_order(class_order, num_classes)
  if classes_per_task < 1 or num_classes % classes_per_task:
    raise ValueError(f"classes_per_task={classes_per_task} must be >= 1 and divide "
                     f"num_classes={num_classes}.")
  tasks = tuple(Task(i, order[i * classes_per_task:(i + 1) * classes_per_task])
                for i in range(num_classes // classes_per_task))
  return TaskSequence(tasks, num_classes, "class_incremental")


def per_class_tasks(num_classes: int = 10,
                    class_order: Optional[Sequence[int]] = None) -> TaskSequence:
  """One class per task: the MeRGAN/DGM protocol behind A_5 and A_10."""
  return split_tasks(num_classes, 1, class_order)


def permuted_tasks(num_tasks: int, num_pixels: int, num_classes: int = 10, *, seed: int = 0,
                   first_identity: bool = False) -> TaskSequence:
  """Permuted-MNIST tasks: one fixed permutation of the ``num_pixels`` pixels per task.

  Args:
    num_tasks: number of tasks.
    num_pixels: H * W of the (possibly padded) image; channels move together.
    num_classes: label space shared by every task.
    seed: the permutations depend only on this seed, so they are the same in
      every run and on every host.
    first_identity: leave task 0 unpermuted (the original images), as some papers do.
  """
  if num_tasks < 1:
    raise ValueError(f"num_tasks={num_tasks} must be >= 1.")
  rng = np.random.default_rng(seed)
  tasks = []
  for i in range(num_tasks):
    perm = np.arange(num_pixels) if (i == 0 and first_identity) else rng.permutation(num_pixels)
    tasks.append(Task(i, tuple(range(num_classes)), perm.astype(np.int32)))
  return TaskSequence(tuple(tasks), num_classes, "domain_incremental")


def preprocess_images(images: np.ndarray, *, pad_to: Optional[int] = None,
                      value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """uint8 (N, H, W, C) -> float32, zero-padded (in pixel space) and scaled.

  Args:
    images: uint8 images.
    pad_to: pad H and W symmetrically to this size (28 -> 32 for the GANs of
      MeRGAN and DGR's reference code); None keeps the size.
    value_range: (low, high) that pixel 0 and 255 map to: (-1, 1) for a tanh
      generator, (0, 1) for a sigmoid one.
  """
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}.")
  x = images
  if pad_to is not None:
    h, w = x.shape[1:3]
    if pad_to < max(h, w):
      raise ValueError(f"pad_to={pad_to} is smaller than the images ({h}x{w}).")
    top, left = (pad_to - h) // 2, (pad_to - w) // 2
    x = np.pad(x, ((0, 0), (top, pad_to - h - top), (left, pad_to - w - left), (0, 0)))
  low, high = value_range
  if not high > low:
    raise ValueError(f"value_range={value_range} must have high > low.")
  return (x.astype(np.float32) * ((high - low) / 255.0) + low).astype(np.float32)


def apply_permutation(x: np.ndarray, permutation: np.ndarray) -> np.ndarray:
  """Permutes the H*W pixel positions of (N, H, W, C) images."""
  n, h, w, c = x.shape
  if permutation.shape != (h * w,):
    raise ValueError(f"permutation of shape {permutation.shape} does not fit {h}x{w} images.")
  return x.reshape(n, h * w, c)[:, permutation].reshape(n, h, w, c)


def task_examples(x: np.ndarray, y: np.ndarray, sequence: TaskSequence, t: int, *,
                  cumulative: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """The examples of task ``t`` (or of tasks 0..t when ``cumulative``), in stored order.

  Class-incremental tasks select examples by class; permuted tasks permute every
  example. Cumulative permuted data concatenates each task's permuted copy.
  """
  if not 0 <= t < len(sequence):
    raise ValueError(f"task index {t} is outside 0..{len(sequence) - 1}.")
  indices = range(t + 1) if cumulative else (t,)
  if sequence.scenario == "class_incremental":
    classes = sorted({c for i in indices for c in sequence[i].classes})
    keep = np.isin(y, classes)
    return x[keep], y[keep]
  xs = [apply_permutation(x, sequence[i].permutation) for i in indices]
  return np.concatenate(xs), np.concatenate([y] * len(xs))
