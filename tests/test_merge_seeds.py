"""experiments.merge_seeds: separately run seeds joined into one multi-seed run (hand-built
results; the exact equality with a real run of both seeds is in test_seeds.py)."""

import json
import math
import os
import subprocess
import sys

import pytest

from experiments import merge_seeds
from experiments.configs import dgr, sft
from gmcl import loop
from gmcl.config import oracle_seed, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _result(config, a2, machine="cpu A"):
  """A finished single-seed results.json of two tasks (A_2 = a2; R[1][0] = 0.5) and its timings."""
  config.data.max_tasks = 2
  seed = config.seed
  record = {"seeds": [{"A": [1.0, a2], "R": [[1.0, None], [0.5, 2 * a2 - 0.5]],
                       "per_task": [{"task": 1, "classes": [0], "A": 1.0, "metrics": {"loss": 1.0 + seed}},
                                    {"task": 2, "classes": [1], "A": a2, "metrics": {"loss": 2.0 + seed}}],
                       "scores": {"A_oracle": [0.9, a2 - 0.1]}}]}
  results = loop.results_payload(config, [[0], [1]], "class_incremental", record)
  timings = {"backend": "cpu", "devices": ["TFRT_CPU_0"], "machine": machine, "wall_seconds": 60.0 * (seed + 1),
             "per_task": [{"task": t, "seeds": [seed], "train_seconds": 10.0} for t in (1, 2)]}
  return json.loads(json.dumps(results)), timings


def _config(seed, **eval_keys):
  c = sft.get_config("smoke")
  c.seed = seed
  for k, v in eval_keys.items():
    c.eval[k] = v
  return c


def test_merged_seeds_are_averaged_by_hand_and_the_config_is_the_first_seed_s():
  (r1, _), (r0, _) = _result(_config(1), 0.8), _result(_config(0), 0.6)
  merged = loop.merge_seed_results([r1, r0])
  assert merged["seeds"] == [0, 1] and [p["seed"] for p in merged["per_seed"]] == [0, 1]
  assert merged["config"]["seed"] == 0 and merged["config"]["num_seeds"] == 2
  assert merged["A"] == pytest.approx([1.0, 0.7]) and merged["A_std"] == pytest.approx([0.0, math.sqrt(0.02)])
  assert merged["scores"]["A_oracle"] == pytest.approx([0.9, 0.6])
  assert merged["per_task"][1]["metrics"]["loss"] == pytest.approx(2.5)
  assert merged["average_forgetting"] == pytest.approx(0.5) and merged["average_forgetting_std"] == 0.0
  # the same as a multi-seed run's payload of the two seeds' records
  both = _config(0)
  both.num_seeds = 2
  both.data.max_tasks = 2
  record = {"seeds": [{"A": p["A"], "R": p["accuracy_matrix"], "per_task": p["per_task"], "scores": p["scores"]}
                      for p in (r0["per_seed"][0], r1["per_seed"][0])]}
  expected = json.loads(json.dumps(loop.results_payload(both, [[0], [1]], "class_incremental", record)))
  assert json.dumps(merged, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_merging_refuses_what_one_run_of_all_seeds_would_not_be():
  r0, r1, r2 = (_result(_config(s), 0.6)[0] for s in (0, 1, 2))
  with pytest.raises(ValueError, match="repeat a seed"):
    loop.merge_seed_results([r0, r0])
  with pytest.raises(ValueError, match="not consecutive"):
    loop.merge_seed_results([r0, r2])
  other = _config(1)
  other.train.solver_steps += 1
  with pytest.raises(ValueError, match=r"another config than run 0 \(train\.solver_steps: 20 in run 0, 21 in run 1"):
    loop.merge_seed_results([r0, _result(other, 0.6)[0]])
  unfinished = json.loads(json.dumps(r1))
  unfinished["completed_tasks"] = 1
  with pytest.raises(ValueError, match="run 1 is unfinished"):
    loop.merge_seed_results([r0, unfinished])
  # checkpoint settings may differ, as between a run and its resumption
  ckpt = _config(1)
  ckpt.checkpoint.every_steps = 7
  assert loop.merge_seed_results([r0, _result(ckpt, 0.6)[0]])["seeds"] == [0, 1]


def test_a_run_from_before_a_key_merges_with_runs_at_the_key_s_old_value_only():
  """eval.accuracy_average did not exist when some seeds ran: such a run is a run at "examples"
  (what the code did then), in either order, and not one at "tasks"."""
  old = _result(_config(0), 0.6)[0]
  del old["config"]["eval"]["accuracy_average"]
  same = _result(_config(1, accuracy_average="examples"), 0.8)[0]
  for runs in ([old, same], [same, old]):
    assert loop.merge_seed_results(runs)["seeds"] == [0, 1]
  other = _result(_config(1, accuracy_average="tasks"), 0.8)[0]
  with pytest.raises(ValueError, match=r"eval\.accuracy_average: 'examples' in run 0, 'tasks' in run 1"):
    loop.merge_seed_results([old, other])
  assert "accuracy_average" not in loop.merge_seed_results([old, same])["config"]["eval"]  # run 0's config
  assert loop.with_added_keys(old["config"], {"eval.accuracy_average": "examples", "nosection.key": 1,
                                              "eval.batch_size": 7}) == same["config"] | {"seed": 0}


def test_runs_scored_by_an_oracle_merge_only_with_one_oracle_seed():
  judged = lambda s, **k: _result(_config(s, oracle="mlp", **k), 0.6)[0]
  with pytest.raises(ValueError, match=r"oracles trained with seeds \[0, 1\].*--config.eval.oracle_seed=0"):
    loop.merge_seed_results([judged(0), judged(1)])
  merged = loop.merge_seed_results([judged(0), judged(1, oracle_seed=0)])
  assert merged["config"]["eval"]["oracle_seed"] == -1  # what one run from seed 0 uses
  assert merged == loop.merge_seed_results([judged(0, oracle_seed=0), judged(1, oracle_seed=0)])
  elsewhere = loop.merge_seed_results([judged(0, oracle_seed=5), judged(1, oracle_seed=5)])
  assert elsewhere["config"]["eval"]["oracle_seed"] == 5
  # Without an oracle the seeds' own oracle seeds do not matter.
  assert loop.merge_seed_results([_result(_config(0), 0.6)[0], _result(_config(1), 0.6)[0]])["seeds"] == [0, 1]


def test_oracle_seed_is_the_run_s_seed_unless_fixed_and_is_validated():
  c = dgr.get_config("smoke")
  c.seed = 4
  assert oracle_seed(c) == 4
  c.eval.oracle_seed = 0
  assert oracle_seed(c) == 0
  c.eval.oracle_seed = -2
  with pytest.raises(ValueError, match=r"eval\.oracle_seed"):
    validate_config(c)


def test_merge_writes_the_folder_and_replaces_nothing_without_overwrite(tmp_path):
  dirs = []
  for s, machine in ((0, "cpu A"), (1, "cpu B")):
    results, timings = _result(_config(s), 0.6 + 0.2 * s, machine)
    d = tmp_path / f"seed{s}"
    d.mkdir()
    loop.write_json(str(d / "results.json"), results)
    loop.write_json(str(d / "timings.json"), timings)
    (d / "samples_task01.png").write_bytes(f"grid of seed {s}".encode())
    dirs.append(str(d))
  out = tmp_path / "merged"
  merged = merge_seeds.merge(dirs[::-1], str(out))
  assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(merged))
  timings = json.loads((out / "timings.json").read_text())
  assert timings["wall_seconds"] == 180.0 and timings["machine"] == "cpu A; cpu B" and len(timings["per_task"]) == 4
  assert (out / "samples_task01.png").read_bytes() == b"grid of seed 0"  # the first seed's grids
  assert merge_seeds.merge(dirs, str(out))["A"] == merged["A"]  # the same again: nothing to refuse
  other, _ = _result(_config(1), 0.9)
  loop.write_json(os.path.join(dirs[1], "results.json"), other)
  with pytest.raises(SystemExit, match="holds other results; pass --overwrite"):
    merge_seeds.merge(dirs, str(out))
  assert json.loads((out / "results.json").read_text())["A"] == merged["A"]  # untouched
  assert merge_seeds.merge(dirs, str(out), overwrite=True)["A"][1] == pytest.approx(0.75)
  with pytest.raises(SystemExit, match="holds no results.json"):
    merge_seeds.merge([dirs[0], str(tmp_path)], str(tmp_path / "x"))
  with pytest.raises(SystemExit, match="is one of --runs"):
    merge_seeds.merge(dirs, dirs[0])
  # the command line
  done = subprocess.run([sys.executable, "-m", "experiments.merge_seeds", "--runs", ",".join(dirs),
                         "--out", str(tmp_path / "cli")], cwd=ROOT, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  assert "seeds [0, 1] merged" in done.stdout and (tmp_path / "cli" / "results.json").exists()
