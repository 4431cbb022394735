"""experiments.sweep: grid parsing, one resumable run per point, the table's mean ± sd per point,
recorded copies, and a refusal to read another sweep's run as this one's."""

import json
import os
import subprocess
import sys

import pytest
from absl import app

from experiments import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_values_and_points():
  assert sweep.parse_assignment("mergan.ra_weight=1e-3,1e-2", many=True) == ("mergan.ra_weight", [1e-3, 1e-2])
  assert sweep.parse_assignment("model.classifier_hidden=(8,),(4,4)", many=True) == \
      ("model.classifier_hidden", [(8,), (4, 4)])
  assert sweep.parse_assignment("model.classifier_hidden=(4, 4)", many=False) == ("model.classifier_hidden", [(4, 4)])
  assert sweep.parse_assignment("model.gan=mlp,dcgan", many=True) == ("model.gan", ["mlp", "dcgan"])
  with pytest.raises(app.UsageError, match="KEY=VALUE"):
    sweep.parse_assignment("mergan.ra_weight", many=True)
  grid = [("a", [1, 2]), ("b", ["x", "y"])]
  assert [sweep.point_name(p) for p in sweep.points(grid)] == ["a=1,b=x", "a=1,b=y", "a=2,b=x", "a=2,b=y"]
  assert sweep.point_name({"model.classifier_hidden": (4, 4)}) == "model.classifier_hidden=4,4"


def test_assign_checks_keys_and_types():
  from experiments.configs import sft
  c = sft.get_config("smoke")
  sweep.assign(c, "train.solver_lr", 1)  # an int for a float key
  assert c.train.solver_lr == 1.0 and isinstance(c.train.solver_lr, float)
  sweep.assign(c, "model.classifier_hidden", [8])
  assert c.model.classifier_hidden == (8,)
  with pytest.raises(app.UsageError, match="valid keys there"):
    sweep.assign(c, "train.no_such_key", 1)


def test_table_cells_are_mean_and_sd_per_point():
  res = {"tasks": [[0], [1]], "completed_tasks": 2, "seeds": [0, 1, 2],
         "per_seed": [{"A": [1.0, a], "scores": {"A_oracle": [0.9, o]}} for a, o in
                      ((0.5, 0.8), (0.6, 0.9), (0.7, 1.0))]}
  text = sweep.table([({"x": 1}, "/nonexistent", res), ({"x": 2}, "/nonexistent", None)], ["A", "A_oracle"], [2], "h")
  assert "| 1 | 60.00 ± 10.00 | 90.00 ± 10.00 | 0, 1, 2 | – | – |" in text
  assert "| 2 | not run | not run |" in text


def test_sweep_runs_each_point_once_and_refuses_a_foreign_run(tmp_path):
  out, record = str(tmp_path / "out"), str(tmp_path / "record")
  cmd = [sys.executable, "-m", "experiments.sweep", "--config", "experiments/configs/sft.py:smoke",
         "--grid", "train.solver_steps=5,10", "--set", "data.max_tasks=2", "--num_seeds", "2", "--out", out,
         "--record", record]
  first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-2000:]
  assert "| 5 | " in first.stdout and "| 10 | " in first.stdout and first.stdout.count(" ± ") >= 4
  for point in ("train.solver_steps=5", "train.solver_steps=10"):
    res = json.load(open(os.path.join(record, point, "results.json")))
    assert res["seeds"] == [0, 1] and res["config"]["train"]["solver_steps"] == int(point.split("=")[1])
  table = open(os.path.join(out, "table.md")).read()
  assert first.stdout.endswith(table)
  again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and again.stdout == table  # read, not rerun: no training lines
  other = [a if a != "data.max_tasks=2" else "data.max_tasks=1" for a in cmd]
  refused = subprocess.run(other, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert refused.returncode != 0 and "holds a run of another config" in refused.stderr
