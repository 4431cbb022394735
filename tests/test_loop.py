"""End-to-end smoke runs of the task loop on real MNIST."""

import json
import os

import numpy as np
import pytest

from experiments.configs import dgr, joint, sft
from gmcl import loop


def _smoke(module, **data):
  c = module.get_config("smoke")
  c.model.gan = "mlp"
  for k, v in data.items():
    c.data[k] = v
  return c


@pytest.fixture(scope="module")
def baseline_runs(mnist_data, tmp_path_factory):
  out = {}
  for name, module in (("sft", sft), ("joint", joint)):
    c = _smoke(module, max_tasks=3)
    c.train.solver_steps = 60
    workdir = str(tmp_path_factory.mktemp(name))
    out[name] = (loop.run(c, workdir, data=mnist_data, progress=False, log=lambda s: None),
                 workdir)
  return out


@pytest.mark.slow
def test_results_json_holds_the_accuracy_table(baseline_runs):
  results, workdir = baseline_runs["sft"]
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  assert on_disk["A"] == pytest.approx(results["A"])
  assert len(on_disk["A"]) == 3 and on_disk["completed_tasks"] == 3
  assert on_disk["tasks"] == [[0], [1], [2]]
  R = np.array(on_disk["accuracy_matrix"], dtype=float)
  assert R.shape == (3, 3)
  assert np.isnan(R[0, 1]) and np.isnan(R[1, 2])  # classes not yet seen: nothing measured
  assert not np.any(np.isnan(np.tril(R)))
  assert on_disk["A"][0] == 1.0  # one seen class: the head can only say "0"
  assert on_disk["config"]["method"] == "sft"
  assert os.path.exists(os.path.join(workdir, "timings.json"))
  assert "wall_seconds" not in on_disk  # timings stay out of the reproducible results


@pytest.mark.slow
def test_joint_beats_sequential_fine_tuning(baseline_runs):
  sft_a = baseline_runs["sft"][0]["A"][-1]
  joint_a = baseline_runs["joint"][0]["A"][-1]
  # sft predicts its last class almost everywhere (~1/3 of the seen test images).
  assert sft_a < 0.5
  assert joint_a > sft_a + 0.2
  R = np.array(baseline_runs["sft"][0]["accuracy_matrix"], dtype=float)
  assert R[2, 0] < R[0, 0]  # sft forgot class 0
  assert baseline_runs["sft"][0]["average_forgetting"] > 0.3


def test_dgr_smoke_run_writes_samples(mnist_data, tmp_path):
  c = _smoke(dgr, max_tasks=3)
  results = loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lambda s: None)
  assert len(results["A"]) == 3
  assert "solver/solver_replay_loss" in results["per_task"][1]["metrics"]
  for t in (1, 2, 3):
    assert os.path.getsize(tmp_path / f"samples_task{t:02d}.png") > 0


def test_chunked_loop_gives_the_same_results(mnist_data, tmp_path):
  runs = []
  for k in (1, 5):
    c = _smoke(sft, max_tasks=2)
    c.train.chunk_steps = k
    runs.append(loop.run(c, str(tmp_path / f"k{k}"), data=mnist_data, progress=False,
                         log=lambda s: None))
  # The same steps with the same keys: the same accuracies, up to a float tie at argmax: one
  # program or five sum in other orders, so an image whose top two logits are within rounding
  # may flip; one such image moves an entry by 1 / (the task's test images).
  y = mnist_data.y_test
  one_image = 1.0 / min(int(np.sum(y == k)) for k in (0, 1))
  np.testing.assert_allclose(np.array(runs[0]["accuracy_matrix"], float),
                             np.array(runs[1]["accuracy_matrix"], float), atol=1.01 * one_image)


@pytest.mark.slow
def test_permuted_mnist_is_domain_incremental(mnist_data, tmp_path):
  c = _smoke(sft, protocol="permuted", max_tasks=2)
  results = loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lambda s: None)
  assert results["scenario"] == "domain_incremental"
  assert results["tasks"] == [list(range(10))] * 2
  R = np.array(results["accuracy_matrix"], dtype=float)
  assert results["A"][1] == pytest.approx(np.mean(R[1, :2]))
  assert R[0, 0] > 0.3  # learnt something on its own permutation


def test_bad_config_fails_before_any_training(tmp_path):
  c = sft.get_config("smoke")
  c.train.n_critic = 0
  with pytest.raises(ValueError, match="train.n_critic=0"):
    loop.run(c, str(tmp_path), progress=False)
  assert not os.path.exists(tmp_path / "results.json")


def test_resume_config_check_names_differences_and_accepts_neutral_added_keys():
  from gmcl.config import ADDED_KEYS  # pylint: disable=import-outside-toplevel
  from gmcl.loop import _config_differences  # pylint: disable=import-outside-toplevel
  diff = lambda saved, current: _config_differences(saved, current, ADDED_KEYS)
  saved = {"model": {"z_dim": 128}, "train": {"batch_size": 64}, "checkpoint": {"every": 5}}
  same = {"model": {"z_dim": 128}, "train": {"batch_size": 64}, "checkpoint": {"every": 9}}
  assert diff(saved, same) == []
  changed = {"model": {"z_dim": 64}, "train": {"batch_size": 64}}
  assert diff(saved, changed) == ["model.z_dim: 128 in the checkpoint, 64 now"]
  # A key added to gmcl after the checkpoint: accepted at the value that reproduces the old code only.
  assert ADDED_KEYS["model.conv_plan"] == "native"
  neutral = {"model": {"z_dim": 128, "conv_plan": "native"}, "train": {"batch_size": 64}}
  assert diff(saved, neutral) == []
  new = {"model": {"z_dim": 128, "conv_plan": "auto"}, "train": {"batch_size": 64}}
  (message,) = diff(saved, new)
  assert "model.conv_plan" in message and "--config.model.conv_plan=native" in message
  # Any other new key is a difference.
  other = {"model": {"z_dim": 128, "width": 3}, "train": {"batch_size": 64}}
  assert diff(saved, other) == ["model.width: None in the checkpoint, 3 now"]


def test_finished_run_of_reads_only_a_finished_run_of_the_same_config(tmp_path):
  """The check the paper table and the sweep make before recording a workdir without training."""
  c = sft.get_config("smoke")
  path = tmp_path / "results.json"
  assert loop.finished_run_of(c, str(tmp_path)) is None  # no results at all
  record = {"config": c.to_dict(), "tasks": [[0], [1]], "completed_tasks": 1, "A": [0.9]}
  path.write_text(json.dumps(record))
  assert loop.finished_run_of(c, str(tmp_path)) is None  # killed after one task of two
  record["completed_tasks"] = 2
  path.write_text(json.dumps(record))
  assert loop.finished_run_of(c, str(tmp_path))["A"] == [0.9]
  other = sft.get_config("smoke")
  other.train.batch_size += 1
  with pytest.raises(ValueError, match=r"another config \(train\.batch_size: "):
    loop.finished_run_of(other, str(tmp_path))


def test_reverse_accuracy_after_the_last_task_of_each_seed(mnist_data, tmp_path):
  """eval.reverse: A_reverse_mlp is measured after the last task only (None before), per seed,
  and averaged at the top like any score; the unconditional DGR labels its samples with its solver."""
  c = _smoke(dgr, max_tasks=2)
  c.num_seeds = 2
  c.eval.reverse = "mlp"
  c.eval.reverse_steps = 20
  c.eval.reverse_samples_per_class = 50
  res = loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lambda s: None)
  per_seed = [p["scores"]["A_reverse_mlp"] for p in res["per_seed"]]
  for series in per_seed:
    assert series[0] is None and 0.0 <= series[1] <= 1.0
  assert res["scores"]["A_reverse_mlp"][1] == pytest.approx(np.mean([s[1] for s in per_seed]))
  c.eval.reverse = "mlp,gan"
  with pytest.raises(ValueError, match="eval.reverse"):
    loop.run(c, str(tmp_path / "bad"), data=mnist_data, progress=False, log=lambda s: None)


def test_hold_out_takes_the_last_share_of_each_class(mnist_data):
  from gmcl.data.build import hold_out
  rest, (x_val, y_val) = hold_out(mnist_data, 0.15)
  for c in range(10):
    idx = np.flatnonzero(mnist_data.y_train == c)
    m = int(round(0.15 * idx.size))
    assert np.sum(y_val == c) == m and np.sum(rest.y_train == c) == idx.size - m
    np.testing.assert_array_equal(x_val[y_val == c], mnist_data.x_train[idx[-m:]])
    np.testing.assert_array_equal(rest.x_train[rest.y_train == c], mnist_data.x_train[idx[:-m]])
  rest, (x_val, _) = hold_out(mnist_data, 0.1, by_class=False)
  n = mnist_data.y_train.size
  np.testing.assert_array_equal(x_val, mnist_data.x_train[n - int(round(0.1 * n)):])


def _selection_config(steps, every):
  c = _smoke(sft, protocol="split", max_tasks=1)
  c.train.solver_steps = steps
  c.eval.validation_fraction = 0.15
  c.eval.validation_every_steps = every
  return c


def test_best_validation_is_the_test_score_where_validation_peaked(mnist_data, tmp_path):
  """Selection every 5 steps over 20 equals, point by point, runs of 5, 10, 15 and 20 steps (each
  step's key does not depend on the run's length): the chosen point is the first with the highest
  validation A_1, and its test A_1 is that run's."""
  points = {}
  for steps in (5, 10, 15, 20):
    r = loop.run(_selection_config(steps, 0), str(tmp_path / f"s{steps}"), data=mnist_data, progress=False,
                 log=lambda s: None)
    assert r["scores"]["A_best_validation"] == r["A"]  # one point: the phase's end
    points[steps] = (r["scores"]["A_validation"][0], r["A"][0])
  r = loop.run(_selection_config(20, 5), str(tmp_path / "every5"), data=mnist_data, progress=False,
               log=lambda s: None)
  best = max(v for v, _ in points.values())
  first = min(k for k, (v, _) in points.items() if v == best)
  assert r["scores"]["best_validation_step"] == [first]
  assert r["scores"]["A_validation"][0] == pytest.approx(best, abs=1e-6)
  assert r["scores"]["A_best_validation"][0] == pytest.approx(points[first][1], abs=1e-6)
  assert r["A"][0] == pytest.approx(points[20][1], abs=1e-6)  # A stays the task's last


def test_tasks_average_is_the_mean_of_the_accuracy_matrix_row(mnist_data, tmp_path):
  """eval.accuracy_average="tasks" (the DGM code's A_t) scores the same training: the same accuracy
  matrix, A_t the mean of row t's entries 0..t where "examples" pools the images; the validation A_t
  averages alike (its points are the same steps)."""
  runs = {}
  for average in ("examples", "tasks"):
    c = _selection_config(6, 3)
    c.data.max_tasks = 2
    c.eval.accuracy_average = average
    runs[average] = loop.run(c, str(tmp_path / average), data=mnist_data, progress=False, log=lambda s: None)
  pooled, tasks = runs["examples"], runs["tasks"]
  assert tasks["accuracy_matrix"] == pooled["accuracy_matrix"]
  R = np.array([[np.nan if v is None else v for v in row] for row in tasks["accuracy_matrix"]])
  np.testing.assert_allclose(tasks["A"], [R[0, 0], np.mean(R[1, :2])], rtol=1e-12)
  # pooled over the test images of classes 0-3: the tasks' accuracies weighted by their test sizes
  sizes = [np.sum(np.isin(mnist_data.y_test, [0, 1])), np.sum(np.isin(mnist_data.y_test, [2, 3]))]
  np.testing.assert_allclose(pooled["A"][1], np.dot(R[1, :2], sizes) / np.sum(sizes), rtol=1e-9)
  assert tasks["A"][1] != pooled["A"][1] and tasks["scores"]["A_validation"] != pooled["scores"]["A_validation"]


def test_selection_survives_a_stop_and_resume(mnist_data, tmp_path):
  c = _selection_config(20, 5)
  c.data.max_tasks = 2
  c.checkpoint.every_steps = 5
  whole = loop.run(c, str(tmp_path / "whole"), data=mnist_data, progress=False, log=lambda s: None)
  with pytest.raises(loop.RunInterrupted):  # after the selection point at 10 and its checkpoint
    loop.run(c, str(tmp_path / "cut"), data=mnist_data, progress=False, log=lambda s: None, stop_after_steps=32)
  resumed = loop.run(c, str(tmp_path / "cut"), data=mnist_data, progress=False, log=lambda s: None)
  assert resumed["scores"] == whole["scores"] and resumed["A"] == whole["A"]


def test_eval_oracle_scores_a_conditional_dgr_and_refuses_an_unconditional_one(mnist_data, tmp_path, monkeypatch):
  monkeypatch.setenv("GMCL_CACHE_DIR", str(tmp_path / "cache"))
  c = _smoke(dgr, max_tasks=2)
  c.model.conditional = True
  c.eval.oracle = "mlp"
  c.eval.oracle_steps = 30
  c.eval.oracle_samples_per_class = 16
  res = loop.run(c, str(tmp_path / "cond"), data=mnist_data, progress=False, log=lambda s: None)
  per_class = res["scores"]["oracle_per_class"]
  assert [sorted(p) for p in per_class] == [["0"], ["0", "1"]]
  for a, p in zip(res["scores"]["A_oracle"], per_class):
    assert a == pytest.approx(np.mean(list(p.values())))
    assert all(v * 64 == int(v * 64) for v in p.values())  # 16 samples rounded up to one batch of 64
  c.model.conditional = False
  with pytest.raises(ValueError, match="needs a conditional generator.*model.conditional=True"):
    loop.run(c, str(tmp_path / "uncond"), data=mnist_data, progress=False, log=lambda s: None)


def test_forward_transfer_intransigence_per_class_accuracy_and_confusion_of_a_run(mnist_data, tmp_path):
  """On permuted tasks: forward transfer from the untrained model's row, intransigence against a
  joint run of the same sequence; one class per task: per-class accuracy is R's row."""
  def permuted(module):
    c = module.get_config("smoke")
    c.data.protocol, c.data.max_tasks, c.train.solver_steps = "permuted", 3, 20
    return c
  jr = loop.run(permuted(joint), str(tmp_path / "joint"), data=mnist_data, progress=False, log=lambda s: None)
  c = permuted(sft)
  c.eval.joint_results = str(tmp_path / "joint")
  res = loop.run(c, str(tmp_path / "sft"), data=mnist_data, progress=False, log=lambda s: None)
  R, b = np.array(res["accuracy_matrix"]), res["per_seed"][0]["reference_row"]
  assert len(b) == 3 and all(0.0 <= v <= 0.3 for v in b)  # an untrained model: about chance
  assert res["forward_transfer"] == pytest.approx(np.mean([R[0, 1] - b[1], R[1, 2] - b[2]]))
  J = np.array(jr["accuracy_matrix"])
  assert res["scores"]["intransigence"] == pytest.approx([J[k, k] - R[k, k] for k in range(3)])
  assert res["intransigence"] == pytest.approx(np.mean([J[k, k] - R[k, k] for k in range(3)]))
  n_test = len(mnist_data.y_test)
  assert np.sum(res["confusion_matrix"]) == 3 * n_test  # three permuted copies of the test set
  assert jr["forward_transfer"] is not None and "intransigence" not in jr["scores"]
  # class-incremental, one class per task: no forward transfer; per-class accuracy = R's row
  ci = sft.get_config("smoke")
  ci.data.max_tasks, ci.train.solver_steps = 2, 10
  res = loop.run(ci, str(tmp_path / "ci"), data=mnist_data, progress=False, log=lambda s: None)
  assert res["forward_transfer"] is None and res["per_seed"][0]["reference_row"] is None
  assert res["scores"]["per_class_accuracy"][1] == pytest.approx({"0": res["accuracy_matrix"][1][0],
                                                                  "1": res["accuracy_matrix"][1][1]})
  assert np.sum(res["confusion_matrix"]) == int(np.sum(np.isin(mnist_data.y_test, [0, 1])))
  # a joint run of another sequence is refused before training, naming the key
  bad = permuted(sft)
  bad.data.max_tasks = 2
  bad.eval.joint_results = str(tmp_path / "ci")
  with pytest.raises(ValueError, match=r"config.eval.joint_results=.*not this run's"):
    loop.run(bad, str(tmp_path / "bad"), data=mnist_data, progress=False, log=lambda s: None)
  assert not os.path.exists(tmp_path / "bad" / "results.json")
