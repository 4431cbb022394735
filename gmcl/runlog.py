"""Training curves a researcher can watch: TensorBoard events and a CSV, per seed.

``config.log.every_steps = N`` (0: off) makes :func:`gmcl.loop.run` write, into ``WORKDIR/logs``:

* every phase's step metrics (losses, estimates) averaged over each interval of N steps (the
  chunks' metrics are summed on the device, weighted by their steps; one host transfer per
  interval), as ``train/PHASE/NAME``;
* after each task, A_t and every scalar score as ``eval/NAME``, and the task's sample grid
  (first seed) as the image ``samples``;
* the config, flattened, as TensorBoard hparams (``config.json`` beside them).

TensorBoard: ``WORKDIR/logs/seed_S/events.out.tfevents.*`` (``clu.metric_writers``, as Flax's
examples; ``tensorboard --logdir runs/`` shows each run's seeds as runs). CSV:
``WORKDIR/logs/metrics.csv``, one row per value (``seed, global_step, step, task, phase, name,
value``; ``step`` counts the seed's own steps, ``global_step`` the run's, over seeds run one after
another), for pandas. The x-axis of both is the seed's step.

A resumed run first cuts both back to the checkpoint it resumes from, and the interval it was in
resumes from the sums kept in the checkpoint, so a killed and resumed run's logs hold each step
once, with the values of an uninterrupted run. Without TensorFlow, TensorBoard (and so
``clu.metric_writers``) installed, the CSV is written alone, and the run says so once.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import socket
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

CSV_FIELDS = ("seed", "global_step", "step", "task", "phase", "name", "value")


@jax.jit
def _accumulate(total, metrics, weight):
  return jax.tree.map(lambda a, m: a + weight * m.astype(jnp.float32), total, metrics)


def flatten_config(tree: dict, prefix: str = "") -> dict:
  """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; lists and tuples as their text."""
  out = {}
  for k, v in sorted(tree.items()):
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten_config(v, f"{name}."))
    elif isinstance(v, (bool, int, float, str)) or v is None:
      out[name] = "None" if v is None else v
    else:
      out[name] = json.dumps(v)
  return out


def _tensorboard_writer(logdir: str):
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  return metric_writers.SummaryWriter(logdir)


def _event_step(record: bytes) -> Optional[int]:
  from tensorflow.core.util import event_pb2  # pylint: disable=import-outside-toplevel
  event = event_pb2.Event.FromString(record)
  return None if event.HasField("file_version") else int(event.step)


def cut_events(logdir: str, keep: Callable[[int], bool]) -> int:
  """Rewrites the TensorBoard event files of ``logdir`` into one file holding only the events
  whose step ``keep`` accepts (and the files' version records); returns the events dropped."""
  files = sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
  if not files:
    return 0
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  kept, dropped, version = [], 0, None
  for path in files:
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      step = _event_step(raw)
      if step is None:
        version = version or raw
      elif keep(step):
        kept.append(raw)
      else:
        dropped += 1
  if not dropped:
    return 0
  target = os.path.join(logdir, f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.resumed.v2")
  tmp = os.path.join(logdir, ".resumed.tmp")
  with tf.io.TFRecordWriter(tmp) as w:
    for raw in ([version] if version else []) + kept:
      w.write(raw)
  for path in files:
    os.remove(path)
  os.replace(tmp, target)
  return dropped


class RunLog:
  """The writers of one run (``config.log``); every method is a no-op when logging is off.

  Args:
    workdir: the run's folder (the logs go to ``workdir/logs``).
    seeds: the run's seeds; ``groups``: the seed indices trained together (one group when stacked).
    every_steps: the interval (0: off). ``tensorboard``/``write_csv``: the two outputs.
    log: where the one message about a missing TensorBoard goes.
  """

  def __init__(self, workdir: str, seeds: Sequence[int], groups: Sequence[Sequence[int]], every_steps: int,
               tensorboard: bool = True, write_csv: bool = True, log: Callable[[str], None] = print,
               writer: bool = True):
    self.every = int(every_steps)
    self.on = self.every > 0 and writer and (tensorboard or write_csv)
    self.dir = os.path.join(workdir, "logs")
    self.seeds, self.groups = list(seeds), [list(g) for g in groups]
    self._tb_wanted, self._csv_wanted, self._log = tensorboard, write_csv, log
    self._writers, self.opened, self._hparams = {}, False, {}
    self.total, self.count, self.since = None, 0, 0  # the open interval (device sums)
    self.offsets = {}  # group -> the global step at which it started

  # ----- setup --------------------------------------------------------------------------------
  def open(self, config_dict: dict, resume: Optional[dict] = None, global_step: int = 0, group: int = 0) -> None:
    """Starts writing: afresh (``resume`` None: earlier logs of this workdir, from a run that left no
    checkpoint, are removed) or after a checkpoint at ``global_step`` (in seed group ``group``)
    whose record kept ``resume`` (:meth:`state`; {} for a checkpoint written before logs
    existed): what was written after it is cut away."""
    if not self.on:
      return
    self.opened = True
    os.makedirs(self.dir, exist_ok=True)
    if self._tb_wanted:
      try:
        import clu.metric_writers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      except ImportError as e:
        self._tb_wanted = False
        self._log(f"gmcl: log.tensorboard: no TensorBoard events ({e}); "
                  + ("the CSV is written alone" if self._csv_wanted else "nothing is logged")
                  + " (pip install clu tensorboard tensorflow, or --config.log.tensorboard=False).")
    if resume is None:
      self.offsets = {0: 0}
      for path in glob.glob(os.path.join(self.dir, "seed_*", "events.out.tfevents.*")):
        os.remove(path)
      if os.path.exists(self._csv_path):
        os.remove(self._csv_path)
    else:
      self.offsets = {int(g): int(s) for g, s in resume.get("offsets", {"0": 0}).items()}
      self._cut(global_step, group)
      if resume.get("total") is not None:
        self.total = {k: jnp.asarray(np.asarray(v, np.float32)) for k, v in resume["total"].items()}
        self.count, self.since = int(resume["count"]), int(resume["since"])
    if self._csv_wanted and not os.path.exists(self._csv_path):
      with open(self._csv_path, "w", newline="") as f:
        csv.writer(f).writerow(CSV_FIELDS)
    self._hparams = flatten_config(config_dict)
    if resume is None:
      with open(os.path.join(self.dir, "config.json"), "w") as f:
        json.dump(config_dict, f, indent=2, sort_keys=True)
      self._write_hparams(0)

  def _write_hparams(self, group: int) -> None:
    """The config as TensorBoard hparams of each seed of ``group``, when it starts."""
    if self._tb_wanted:
      for i in self.groups[group]:
        self._writer(i).write_hparams(self._hparams)
        self._writer(i).flush()

  @property
  def _csv_path(self) -> str:
    return os.path.join(self.dir, "metrics.csv")

  def _writer(self, index: int):
    if index not in self._writers:
      self._writers[index] = _tensorboard_writer(os.path.join(self.dir, f"seed_{self.seeds[index]}"))
    return self._writers[index]

  def _group_of(self, index: int) -> int:
    return next(g for g, members in enumerate(self.groups) if index in members)

  def _cut(self, global_step: int, current: int) -> None:
    """Drops what was written after ``global_step`` (the checkpoint resumed from, in group ``current``)."""
    if os.path.exists(self._csv_path):
      with open(self._csv_path, newline="") as f:
        rows = list(csv.reader(f))
      kept = [rows[0]] + [r for r in rows[1:] if int(r[1]) <= global_step]
      if len(kept) != len(rows):
        tmp = self._csv_path + ".tmp"
        with open(tmp, "w", newline="") as f:
          csv.writer(f).writerows(kept)
        os.replace(tmp, self._csv_path)
    for index, seed in enumerate(self.seeds):
      logdir = os.path.join(self.dir, f"seed_{seed}")
      g = self._group_of(index)
      if g < current or not os.path.isdir(logdir) or not self._tb_wanted:
        continue  # a finished seed's logs stay as they are (and without TensorFlow, all of them)
      limit = global_step - self.offsets.get(g, 0) if g == current else -1
      cut_events(logdir, lambda step, limit=limit: step <= limit)

  def state(self) -> dict:
    """What a checkpoint keeps of the logs: the open interval's sums (host floats) and the groups'
    first steps."""
    out = {"offsets": {str(g): s for g, s in self.offsets.items()}, "total": None, "count": 0, "since": 0}
    if self.opened and self.total is not None:
      out.update(total={k: np.asarray(jax.device_get(v), np.float32).tolist() for k, v in self.total.items()},
                 count=self.count, since=self.since)
    return out

  def start_group(self, group: int, global_step: int) -> None:
    self.offsets[group] = global_step
    if self.opened:
      self._write_hparams(group)

  # ----- writing ------------------------------------------------------------------------------
  def add(self, metrics, steps: int) -> None:
    """A chunk's metrics (means over its ``steps`` steps; a leading seed axis when stacked)."""
    if not self.opened:
      return
    if self.total is None:
      self.total = jax.tree.map(lambda m: jnp.zeros(jnp.shape(m), jnp.float32), dict(metrics))
    self.total = _accumulate(self.total, dict(metrics), jnp.float32(steps))
    self.count += steps
    self.since += steps

  def due(self, phase_done: bool) -> bool:
    return self.opened and self.total is not None and (self.since >= self.every or phase_done)

  def write_interval(self, group: Sequence[int], stacked: bool, task: int, phase: str,
                     global_step: int) -> None:
    """Writes the open interval's means for each seed of ``group`` and closes it."""
    if not self.opened or self.total is None:
      return
    values = jax.device_get(self.total)
    step = global_step - self.offsets.get(self._group_of(group[0]), 0)
    for j, i in enumerate(group):
      means = {f"train/{phase}/{k}": float(np.asarray(v)[j] if stacked else v) / self.count
               for k, v in sorted(values.items())}
      self._scalars(i, task, phase, step, global_step, means)
    self.total, self.count, self.since = None, 0, 0

  def write_task(self, index: int, task: int, global_step: int, scalars: dict,
                 grid: Optional[np.ndarray] = None, value_range=(-1.0, 1.0)) -> None:
    """After task ``task`` (1-based): seed ``index``'s A_t and scores, and its sample grid (an
    (H, W, C) image with values in ``value_range``)."""
    if not self.opened:
      return
    step = global_step - self.offsets.get(self._group_of(index), 0)
    self._scalars(index, task, "eval", step, global_step, {f"eval/{k}": v for k, v in sorted(scalars.items())})
    if grid is not None and self._tb_wanted:
      lo, hi = value_range
      image = np.clip((np.asarray(grid, np.float32) - lo) / (hi - lo), 0.0, 1.0)
      self._writer(index).write_images(step, {"samples": image[None]})
      self._writer(index).flush()

  def _scalars(self, index, task, phase, step, global_step, values: dict) -> None:
    if self._csv_wanted:
      with open(self._csv_path, "a", newline="") as f:
        csv.writer(f).writerows([self.seeds[index], global_step, step, task, phase, name, repr(float(v))]
                                for name, v in values.items())
    if self._tb_wanted:
      self._writer(index).write_scalars(step, values)
      self._writer(index).flush()

  def close(self) -> None:
    for w in self._writers.values():
      w.close()
    self._writers, self.opened = {}, False
