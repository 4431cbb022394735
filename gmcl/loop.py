"""The method-agnostic task loop: begin_task -> phases of steps -> end_task -> evaluate.

``run(config, workdir)`` loads the data once, builds the task sequence and the
method, trains task after task, evaluates after each, writes ``results.json``
(atomically, after every task) and a grid of generated samples per seen class.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gmcl import evaluation
from gmcl.config import parse_class_order, validate_config
from gmcl.data import sources
from gmcl.data.sampling import task_arrays
from gmcl.data.tasks import (TaskSequence, per_class_tasks, permuted_tasks, preprocess_images,
                             split_tasks, task_examples)
from gmcl.methods import build_method
from gmcl.methods.base import run_chunk, step_key


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
  return (d.dataset, int(d.pad_to), tuple(float(v) for v in d.value_range), int(d.test_limit))


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
  """Reads the train and test splits once and preprocesses them."""
  d = config.data
  info = sources.dataset_info(d.dataset)
  manual_dir = d.manual_dir or (os.environ.get("GMCL_MNIST_DIR") if d.dataset == "mnist" else None)
  kwargs = dict(data_dir=d.data_dir or None, manual_dir=manual_dir or None)
  x_tr, y_tr = sources.load_split(d.dataset, "train", **kwargs)
  x_te, y_te = sources.load_split(d.dataset, info.test_split, **kwargs)
  if d.test_limit:
    x_te, y_te = x_te[:d.test_limit], y_te[:d.test_limit]
  prep = lambda x: preprocess_images(x, pad_to=d.pad_to or None, value_range=tuple(d.value_range))
  x_tr, x_te = prep(x_tr), prep(x_te)
  image_shape = tuple(x_tr.shape[1:])
  return Data(x_tr, y_tr, x_te, y_te, image_shape, info.num_classes, data_settings(config))


def _task_sizes(data: Data, sequence: TaskSequence, limit: int) -> list[int]:
  sizes = []
  for task in sequence:
    n = (int(np.sum(np.isin(data.y_train, task.classes)))
         if sequence.scenario == "class_incremental" else data.y_train.shape[0])
    sizes.append(min(n, limit) if limit else n)
  return sizes


def training_examples(data: Data, sequence: TaskSequence, t: int, cumulative: bool,
                      limit: int = 0):
  """Task t's training examples (or tasks 0..t's, for joint training), each task cut to ``limit``."""
  parts = [task_examples(data.x_train, data.y_train, sequence, i)
           for i in (range(t + 1) if cumulative else (t,))]
  if limit:
    parts = [(x[:limit], y[:limit]) for x, y in parts]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def sample_grid(method, state, key, classes, columns: int, predict_fn=None,
                sample_fn=None) -> Optional[np.ndarray]:
  """A (rows = seen classes) x columns grid of generated images, or None without a generator.

  A conditional generator is asked for each class; an unconditional one draws a
  pool of samples that the current classifier sorts into rows (blank where a
  class got too few).
  """
  if not method.has_generator:
    return None
  sample_fn = sample_fn or method.sample
  classes = list(classes)
  if getattr(method, "conditional", False):
    labels = jnp.repeat(jnp.asarray(classes, jnp.int32), columns)
    labels = jnp.pad(labels, (0, columns * method.num_classes - labels.shape[0]))  # fixed size
    images = np.asarray(sample_fn(state, key, labels))[:len(classes) * columns]
    rows = images.reshape(len(classes), columns, *images.shape[1:])
  else:
    pool = 20 * columns * method.num_classes  # fixed size: one compile for every task
    images = np.asarray(sample_fn(state, key, jnp.zeros((pool,), jnp.int32)))
    labels = np.asarray(jnp.argmax(predict_fn(jnp.asarray(images)), -1))
    rows = np.full((len(classes), columns) + images.shape[1:], np.min(images), images.dtype)
    for r, c in enumerate(classes):
      chosen = images[labels == c][:columns]
      rows[r, :len(chosen)] = chosen
  n_r, n_c, h, w, ch = rows.shape
  grid = rows.transpose(0, 2, 1, 3, 4).reshape(n_r * h, n_c * w, ch)
  return grid


def save_grid(grid: np.ndarray, path: str, value_range) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  low, high = value_range
  img = np.clip((grid - low) / (high - low), 0.0, 1.0)
  tmp = path + ".tmp.png"
  if img.shape[-1] == 1:
    plt.imsave(tmp, img[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  else:
    plt.imsave(tmp, img)
  os.replace(tmp, path)


def write_json(path: str, payload: dict) -> None:
  """Writes JSON atomically: a reader never sees a half-written file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def resolve_chunk_mode(mode: str) -> str:
  """"auto": unrolled steps on the CPU (lax.scan over GAN steps is far slower on XLA:CPU),
  lax.scan on accelerators."""
  if mode != "auto":
    return mode
  return "unroll" if jax.default_backend() == "cpu" else "scan"


def _host_metrics(metrics) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def run(config, workdir: str, *, data: Optional[Data] = None, progress: bool = True,
        log: Callable[[str], None] = print) -> dict:
  """Trains ``config.method`` on the task sequence and writes ``workdir/results.json``.

  Args:
    config: an experiment config (see :func:`gmcl.config.base_config`).
    workdir: output folder (created if missing).
    data: preloaded :class:`Data` (tests and notebooks reuse one load).
    progress: show a progress bar per task.
    log: where per-task lines go.

  Returns:
    The results dictionary written to ``results.json``.
  """
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  data = data or load_data(config)
  if data.source and data.source != data_settings(config):
    raise ValueError(f"run(data=...): the data were loaded with (dataset, pad_to, value_range, "
                     f"test_limit) = {data.source}, the config asks for {data_settings(config)}.")
  seq, t_cfg = build_sequence(config, data.image_shape, data.num_classes), config.train
  method = build_method(config.method, config, data.image_shape, data.num_classes)
  chunk_mode = resolve_chunk_mode(t_cfg.chunk_mode)
  cumulative = method.data_mode == "cumulative"
  sizes = _task_sizes(data, seq, config.data.train_limit)
  capacity = max(np.cumsum(sizes)) if cumulative else max(sizes)

  run_key = jax.random.PRNGKey(config.seed)
  init_key, train_key, sample_key = jax.random.split(run_key, 3)
  state = method.init(init_key)
  predict = jax.jit(method.predict)
  sample = jax.jit(method.sample)
  R = np.full((len(seq), len(seq)), np.nan)
  accuracies, task_log, timings = [], [], []
  results = {}
  start_time = time.time()
  log(f"gmcl: method={config.method} dataset={config.data.dataset} protocol={config.data.protocol} "
      f"tasks={len(seq)} backend={jax.default_backend()} chunk={t_cfg.chunk_steps} ({chunk_mode})")

  for t, task in enumerate(seq):
    task_start = time.time()
    state = method.begin_task(state, t, seq.active_mask(t))
    x, y = training_examples(data, seq, t, cumulative, config.data.train_limit)
    arrays = task_arrays(x, y, capacity)
    phases = list(method.phases())
    total = sum(p.num_steps for p in phases)
    bar = None
    if progress:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
      bar = tqdm(total=total, desc=f"task {t + 1}/{len(seq)} {list(task.classes)[:5]}",
                 leave=False, dynamic_ncols=True)
    last_metrics = {}
    for p_index, phase in enumerate(phases):  # index before skipping: keys never depend on it
      if phase.num_steps == 0:
        continue
      phase_key = step_key(train_key, t, p_index)
      done = 0
      while done < phase.num_steps:
        k = min(t_cfg.chunk_steps, phase.num_steps - done)
        state, metrics = run_chunk(phase.step, state, arrays, phase_key, done, k, chunk_mode)
        done += k
        if bar is not None:
          bar.update(k)
      last_metrics.update({f"{phase.name}/{k}": v for k, v in _host_metrics(metrics).items()})
      bad = [k for k, v in last_metrics.items() if not np.isfinite(v)]
      if bad:
        raise FloatingPointError(f"Non-finite metrics after task {t + 1}, phase {phase.name}: "
                                 f"{ {k: last_metrics[k] for k in bad} }.")
    if bar is not None:
      bar.close()
    state = method.end_task(state)
    train_time = time.time() - task_start

    scores = evaluation.evaluate_after_task(lambda xb: predict(state, xb), data.x_test,
                                            data.y_test, seq, t, config.eval.batch_size)
    R[t] = scores["row"]
    if seq.scenario == "class_incremental":
      R[t, t + 1:] = np.nan  # unseen classes are masked: nothing was measured there
    accuracies.append(scores["A"])
    if config.eval.save_samples:
      grid = sample_grid(method, state, jax.random.fold_in(sample_key, t), seq.seen_classes(t),
                         config.eval.samples_per_class, lambda xb: predict(state, xb), sample)
      if grid is not None:
        save_grid(grid, os.path.join(workdir, f"samples_task{t + 1:02d}.png"),
                  tuple(config.data.value_range))
    task_log.append({"task": t + 1, "classes": list(task.classes), "A": scores["A"],
                     "metrics": last_metrics})
    timings.append({"task": t + 1, "train_seconds": train_time,
                    "seconds_since_start": time.time() - start_time})
    log(f"task {t + 1:2d}/{len(seq)} classes={list(task.classes)} A_{t + 1}={100 * scores['A']:.2f}% "
        f"train {train_time:.1f}s " + " ".join(f"{k}={v:.4g}" for k, v in sorted(last_metrics.items())))
    results = {
        "method": config.method, "dataset": config.data.dataset,
        "protocol": config.data.protocol, "scenario": seq.scenario, "seed": config.seed,
        "tasks": [list(task.classes) for task in seq],
        "A": accuracies, "accuracy_matrix": [[None if np.isnan(v) else float(v) for v in row]
                                             for row in R[:t + 1]],
        "average_forgetting": evaluation.average_forgetting(R[:t + 1, :t + 1]),
        "backward_transfer": evaluation.backward_transfer(R[:t + 1, :t + 1]),
        "completed_tasks": t + 1, "per_task": task_log, "config": config.to_dict(),
    }
    # Timings live apart from results.json, so that a seeded run's results are reproducible byte
    # for byte.
    write_json(os.path.join(workdir, "results.json"), results)
    write_json(os.path.join(workdir, "timings.json"), {
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "wall_seconds": time.time() - start_time, "per_task": timings})
  log(evaluation.format_table(accuracies, f"{config.method} on {config.data.dataset} "
                              f"({config.data.protocol}): accuracy over seen classes, %"))
  return results
