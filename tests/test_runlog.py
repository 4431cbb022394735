"""gmcl.runlog: interval means by hand, the CSV and TensorBoard events a run writes, each step once
after a kill and resume (with an uninterrupted run's values), and logging changing no result."""

import csv
import glob
import json
import os
import sys

import numpy as np
import pytest

from experiments.configs import sft
from gmcl import loop
from gmcl.config import validate_config
from gmcl.runlog import RunLog, cut_events, flatten_config


def _rows(workdir):
  with open(os.path.join(workdir, "logs", "metrics.csv"), newline="") as f:
    return list(csv.DictReader(f))


def _events(logdir):
  """(tag, step, value) of every scalar event in ``logdir``'s event files, in file order."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tensorflow.core.util import event_pb2  # pylint: disable=import-outside-toplevel
  out = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      event = event_pb2.Event.FromString(raw)
      for v in event.summary.value:
        if v.metadata.plugin_data.plugin_name == "scalars":
          out.append((v.tag, int(event.step), float(tf.make_ndarray(v.tensor))))
  return out


def _sft(**top):
  c = sft.get_config("smoke")
  c.data.protocol, c.data.max_tasks, c.train.solver_steps = "split", 2, 30
  c.log.every_steps = 7
  c.checkpoint.every_steps = 5
  for k, v in top.items():
    c[k] = v
  return c


def _run(c, workdir, data, **kw):
  return loop.run(c, str(workdir), data=data, progress=False, log=lambda s: None, **kw)


def test_flatten_config_by_hand():
  assert flatten_config({"train": {"lr": 1e-3, "sizes": (1, 2)}, "seed": 0, "name": None, "on": True}) == \
      {"name": "None", "on": True, "seed": 0, "train.lr": 1e-3, "train.sizes": "[1, 2]"}


def test_interval_means_are_weighted_by_the_chunks_steps_by_hand(tmp_path):
  rl = RunLog(str(tmp_path), [3, 4], [[0, 1]], every_steps=3, tensorboard=False)
  rl.open({"seed": 3})
  rl.add({"loss": np.array([1.0, 10.0], np.float32)}, 1)
  assert not rl.due(False)
  rl.add({"loss": np.array([4.0, 40.0], np.float32)}, 2)  # a chunk of 2 steps, mean 4
  assert rl.due(False)
  rl.write_interval([0, 1], True, task=1, phase="solver", global_step=3)
  rl.add({"loss": np.array([2.0, 20.0], np.float32)}, 1)
  assert rl.due(True) and not rl.due(False)  # a phase's end closes a short interval
  rl.write_interval([0, 1], True, task=1, phase="solver", global_step=4)
  rows = [(r["seed"], r["step"], r["name"], float(r["value"])) for r in _rows(tmp_path)]
  assert rows == [("3", "3", "train/solver/loss", 3.0), ("4", "3", "train/solver/loss", 30.0),
                  ("3", "4", "train/solver/loss", 2.0), ("4", "4", "train/solver/loss", 20.0)]
  assert json.load(open(tmp_path / "logs" / "config.json")) == {"seed": 3}
  # off: nothing is written
  off = RunLog(str(tmp_path / "off"), [0], [[0]], every_steps=0)
  off.open({})
  off.add({"loss": np.float32(1.0)}, 1)
  assert not off.due(True) and not os.path.exists(tmp_path / "off" / "logs")


def test_a_run_logs_every_interval_and_task_and_logging_changes_no_result(mnist_data, tmp_path):
  logged = _run(_sft(), tmp_path / "on", mnist_data)
  quiet = _sft()
  quiet.log.every_steps, quiet.log.plots = 0, False
  silent = _run(quiet, tmp_path / "off", mnist_data)
  assert not os.path.exists(tmp_path / "off" / "logs")
  assert not os.path.exists(tmp_path / "off" / "accuracy_matrix.png")
  assert (tmp_path / "on" / "accuracy_matrix.png").exists() and (tmp_path / "on" / "accuracy_curve.png").exists()
  for res in (logged, silent):
    res["config"].pop("log")
  assert json.dumps(logged, sort_keys=True) == json.dumps(silent, sort_keys=True)
  rows = _rows(tmp_path / "on")
  steps = sorted({int(r["step"]) for r in rows if r["phase"] == "solver"})
  assert steps == [7, 14, 21, 28, 30, 37, 44, 51, 58, 60]  # every 7 steps of each task's phase, and its end
  evals = [(int(r["task"]), int(r["step"]), float(r["value"])) for r in rows if r["name"] == "eval/A"]
  assert evals == [(1, 30, logged["A"][0]), (2, 60, logged["A"][1])]
  events = _events(tmp_path / "on" / "logs" / "seed_0")
  assert sorted(events) == sorted((r["name"], int(r["step"]), pytest.approx(float(r["value"]), rel=1e-6))
                                  for r in rows)
  assert glob.glob(str(tmp_path / "on" / "logs" / "seed_0" / "events.out.tfevents.*"))


@pytest.mark.parametrize("stop", [12, 16, 22, 30, 47])
def test_a_killed_and_resumed_run_logs_each_step_once_with_the_uninterrupted_values(mnist_data, tmp_path, stop):
  """Checkpoints every 5 steps, intervals of 7: a stop leaves rows after the checkpoint (22: the
  row at 21 after the checkpoint at 20), or an interval open in it (12, 16, 47)."""
  whole = tmp_path / "whole"
  _run(_sft(), whole, mnist_data)
  cut = tmp_path / "cut"
  with pytest.raises(loop.RunInterrupted):
    _run(_sft(), cut, mnist_data, stop_after_steps=stop)
  _run(_sft(), cut, mnist_data)
  assert (cut / "logs" / "metrics.csv").read_bytes() == (whole / "logs" / "metrics.csv").read_bytes()
  assert _events(cut / "logs" / "seed_0") == _events(whole / "logs" / "seed_0")
  assert (cut / "results.json").read_bytes() == (whole / "results.json").read_bytes()


def test_seeds_one_after_another_count_their_own_steps(mnist_data, tmp_path, monkeypatch):
  from gmcl.methods import build_method  # pylint: disable=import-outside-toplevel
  method = type(build_method("sft", _sft(), (32, 32, 1), 10))
  monkeypatch.setattr(method, "seeds_share_shapes", property(lambda self: False))
  c = _sft(num_seeds=2)
  _run(c, tmp_path / "whole", mnist_data)
  with pytest.raises(loop.RunInterrupted):
    _run(c, tmp_path / "cut", mnist_data, stop_after_steps=64)  # inside seed 1's first task
  _run(c, tmp_path / "cut", mnist_data)
  rows = _rows(tmp_path / "whole")
  for r in rows:
    assert int(r["step"]) == int(r["global_step"]) - (60 if r["seed"] == "1" else 0)
  by_seed = lambda s: [(r["name"], r["step"]) for r in rows if r["seed"] == s]
  assert by_seed("0") == by_seed("1")  # the same intervals at the same own steps
  assert (tmp_path / "cut" / "logs" / "metrics.csv").read_bytes() == \
      (tmp_path / "whole" / "logs" / "metrics.csv").read_bytes()
  for s in (0, 1):
    assert _events(tmp_path / "cut" / "logs" / f"seed_{s}") == _events(tmp_path / "whole" / "logs" / f"seed_{s}")


def test_cut_events_keeps_the_steps_asked_for(tmp_path):
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  w = metric_writers.SummaryWriter(str(tmp_path))
  for step in range(1, 6):
    w.write_scalars(step, {"x": float(step)})
  w.close()
  assert cut_events(str(tmp_path), lambda step: step <= 3) == 2
  assert _events(tmp_path) == [("x", 1, 1.0), ("x", 2, 2.0), ("x", 3, 3.0)]
  assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 1
  assert cut_events(str(tmp_path), lambda step: step <= 3) == 0  # nothing to drop: untouched


def test_without_tensorboard_the_csv_is_written_alone(mnist_data, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "clu.metric_writers", None)  # import fails
  lines = []
  c = _sft()
  c.data.max_tasks = 1
  loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lines.append)
  assert any("no TensorBoard events" in line and "CSV is written alone" in line for line in lines)
  assert _rows(tmp_path) and not os.path.exists(tmp_path / "logs" / "seed_0")


def test_log_settings_are_validated():
  c = sft.get_config("smoke")
  c.log.every_steps = -1
  with pytest.raises(ValueError, match=r"log\.every_steps"):
    validate_config(c)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(__import__("gmcl.registry", fromlist=["METHODS"]).METHODS))
def test_a_smoke_run_of_every_method_writes_its_logs_and_plots(mnist_data, tmp_path, name):
  import importlib  # pylint: disable=import-outside-toplevel
  c = importlib.import_module(f"experiments.configs.{name}").get_config("smoke")
  c.data.max_tasks = 2
  from gmcl.data.build import data_settings, load_data  # pylint: disable=import-outside-toplevel
  data = mnist_data if data_settings(c) == mnist_data.source else load_data(c)
  loop.run(c, str(tmp_path), data=data, progress=False, log=lambda s: None)
  rows = _rows(tmp_path)
  assert any(r["name"].startswith("train/") for r in rows), name  # per-interval step metrics
  assert [r["task"] for r in rows if r["name"] == "eval/A"] == ["1", "2"]
  assert glob.glob(str(tmp_path / "logs" / "seed_0" / "events.out.tfevents.*"))
  assert (tmp_path / "accuracy_matrix.png").exists() and (tmp_path / "accuracy_curve.png").exists()


def test_without_matplotlib_the_run_keeps_its_results_and_says_so_once(mnist_data, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
  lines = []
  res = loop.run(_sft(), str(tmp_path), data=mnist_data, progress=False, log=lines.append)
  assert res["completed_tasks"] == 2 and (tmp_path / "results.json").exists()
  assert sum("log.plots: no plots" in line for line in lines) == 1
  assert not (tmp_path / "accuracy_matrix.png").exists()
