"""From an experiment config to the data a run trains on: arrays read once, a task sequence,
and each task's training examples.

  data = load_data(config)                     # TFDS -> preprocessed in-memory arrays
  seq = build_sequence(config, data.image_shape, data.num_classes)
  x, y = training_examples(data, seq, t, cumulative=False, limit=config.data.train_limit)
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from gmcl.config import parse_class_order
from gmcl.data import sources
from gmcl.data.tasks import TaskSequence, per_class_tasks, permuted_tasks, preprocess_images, split_tasks, task_examples


@dataclasses.dataclass
class Data:
  """Preprocessed arrays of one dataset (the task sequence comes from the config)."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  image_shape: tuple[int, int, int]
  num_classes: int
  source: tuple = ()  # the data settings it was loaded with: see data_settings()


def data_settings(config) -> tuple:
  """The config values that decide the arrays of :func:`load_data`."""
  d = config.data
  settings = (d.dataset, int(d.pad_to), tuple(float(v) for v in d.value_range), int(d.test_limit))
  if d.dataset == "imagenet50":
    settings += (sources.imagenet50_classes(d.get("imagenet50_classes", "")),)
  return settings


def build_sequence(config, image_shape, num_classes: int) -> TaskSequence:
  """The task sequence a config asks for, cut to ``data.max_tasks`` tasks when that is > 0."""
  d = config.data
  order = parse_class_order(d.class_order, num_classes)
  if d.protocol == "per_class":
    seq = per_class_tasks(num_classes, order)
  elif d.protocol == "split":
    seq = split_tasks(num_classes, d.classes_per_task, order)
  else:
    seq = permuted_tasks(d.num_tasks, image_shape[0] * image_shape[1], num_classes,
                         seed=d.permutation_seed)
  if d.max_tasks:
    seq = dataclasses.replace(seq, tasks=seq.tasks[:d.max_tasks])
  return seq


def load_data(config) -> Data:
  """Reads the train and test splits once (from TFDS, or from ``data.arrays``) and preprocesses them."""
  d = config.data
  info = sources.dataset_info(d.dataset)
  if d.get("arrays"):  # an .npz of the splits (no TFDS needed)
    x_tr, y_tr, x_te, y_te = sources.load_arrays(d.arrays, d.dataset)
  else:
    manual_dir = d.manual_dir or (os.environ.get("GMCL_MNIST_DIR") if d.dataset == "mnist" else None)
    kwargs = dict(data_dir=d.data_dir or None, manual_dir=manual_dir or None)
    if d.dataset == "imagenet50":
      kwargs["classes"] = sources.imagenet50_classes(d.get("imagenet50_classes", ""))
    x_tr, y_tr = sources.load_split(d.dataset, "train", **kwargs)
    x_te, y_te = sources.load_split(d.dataset, info.test_split, **kwargs)
  if d.test_limit:
    x_te, y_te = x_te[:d.test_limit], y_te[:d.test_limit]
  prep = lambda x: preprocess_images(x, pad_to=d.pad_to or None, value_range=tuple(d.value_range))
  x_tr, x_te = prep(x_tr), prep(x_te)
  image_shape = tuple(x_tr.shape[1:])
  return Data(x_tr, y_tr, x_te, y_te, image_shape, info.num_classes, data_settings(config))


def hold_out(data: Data, fraction: float, by_class: bool = True) -> tuple[Data, tuple[np.ndarray, np.ndarray]]:
  """The data without a validation set, and that set: the last ``round(fraction * n_c)`` training
  images of each class c in the stored order (TFDS's order, already shuffled), or with
  ``by_class=False`` (permuted tasks, where every task holds every class) the last
  ``round(fraction * n)`` of all. The DGM code's protocol: 15 % of MNIST's training images."""
  y = data.y_train
  held = np.zeros(y.shape[0], bool)
  groups = [np.flatnonzero(y == c) for c in np.unique(y)] if by_class else [np.arange(y.shape[0])]
  for idx in groups:
    m = int(round(fraction * idx.size))
    if m:
      held[idx[-m:]] = True
  rest = dataclasses.replace(data, x_train=data.x_train[~held], y_train=y[~held])
  return rest, (data.x_train[held], y[held])


def task_sizes(data: Data, sequence: TaskSequence, limit: int) -> list[int]:
  """Training examples per task (each cut to ``limit`` when > 0)."""
  sizes = []
  for task in sequence:
    n = (int(np.sum(np.isin(data.y_train, task.classes)))
         if sequence.scenario == "class_incremental" else data.y_train.shape[0])
    sizes.append(min(n, limit) if limit else n)
  return sizes


def training_examples(data: Data, sequence: TaskSequence, t: int, cumulative: bool,
                      limit: int = 0, with_start: bool = False):
  """Task t's training examples (or tasks 0..t's in task order, for joint training), each task cut
  to ``limit``; with ``with_start`` also the row where task t's begin."""
  parts = [task_examples(data.x_train, data.y_train, sequence, i)
           for i in (range(t + 1) if cumulative else (t,))]
  if limit:
    parts = [(x[:limit], y[:limit]) for x, y in parts]
  x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
  if with_start:
    return x, y, x.shape[0] - parts[-1][0].shape[0]
  return x, y
