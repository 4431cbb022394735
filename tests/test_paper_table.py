"""experiments.paper_table: cells are the mean ± sd over a run's seeds of the protocol's series,
missing or unprepared cells say so, the README's section is the table of the recorded results,
and --run records a finished run without ever replacing a different record."""

import json
import os

import pytest

from experiments import paper_table as pt


def _write(folder, per_seed, tasks=10, completed=None, machine="CPU X, 2 cores", seconds=600.0, config=None):
  """A results.json as the loop writes it (per_seed A and scores), and a timings.json."""
  os.makedirs(folder, exist_ok=True)
  res = {"tasks": [[i] for i in range(tasks)], "seeds": list(range(len(per_seed))), "config": config or {},
         "completed_tasks": tasks if completed is None else completed,
         "per_seed": [{"A": a, "scores": s} for a, s in per_seed]}
  with open(os.path.join(folder, "results.json"), "w") as f:
    json.dump(res, f)
  with open(os.path.join(folder, "timings.json"), "w") as f:
    json.dump({"wall_seconds": seconds, "machine": machine}, f)


def _available(dataset):
  return dataset == "mnist"


def test_cells_are_mean_and_sample_sd_over_seeds_of_the_views_series(tmp_path):
  folder = pt.results_dir("cpu", 3, "mnist", "mergan_ra", str(tmp_path))
  a = [[1.0] * 4 + [0.80, 0, 0, 0, 0, 0.50], [1.0] * 4 + [0.90, 0, 0, 0, 0, 0.60],
       [1.0] * 4 + [0.70, 0, 0, 0, 0, 0.40]]
  oracle = [[0.9] * 9 + [0.95], [0.9] * 9 + [0.97], [0.9] * 9 + [0.99]]
  _write(folder, [(x, {"A_oracle": o}) for x, o in zip(a, oracle)])
  res = pt.read_results(folder)
  # A_5 = 80, 90, 70: mean 80, sample sd 10; A_10 = 50, 60, 40 -> 50 ± 10; oracle 97 ± 2
  assert pt.cell(res, "A", 5, True) == "80.00 ± 10.00"
  assert pt.cell(res, "A", 10, True) == "50.00 ± 10.00"
  assert pt.cell(res, "A_oracle", 10, True) == "97.00 ± 2.00"
  assert pt.cell(res, "A_auxiliary_head", 10, True) == "–"  # not recorded
  assert pt.cell(res, "A", 30, True) == "–"  # beyond the sequence
  assert pt.cell(None, "A", 5, True) == "–"
  assert pt.cell(None, "A", 5, False) == "needs data"


def test_an_unfinished_run_is_marked_not_averaged(tmp_path):
  folder = str(tmp_path / "half")
  _write(folder, [([1.0, 0.9], {})], completed=2)
  assert pt.cell(pt.read_results(folder), "A", 5, True) == "incomplete (2/10)"


def test_table_puts_each_gmcl_line_under_its_paper_row_with_its_protocol(tmp_path):
  root = str(tmp_path)
  _write(pt.results_dir("cpu", 3, "mnist", "dgr", root),
         [([1.0] * 4 + [0.9] + [0.8] * 5, {})] * 3, machine="AMD EPYC, 2 cores", seconds=1800.0,
         config=pt.config_of(pt.DGR, "mnist", "cpu", 3).to_dict())
  text = pt.table("cpu", 3, root, available=_available)
  lines = text.splitlines()
  paper = next(i for i, line in enumerate(lines) if line.startswith("| **DGR**, paper"))
  assert "| oracle | 90.39 | 85.40 | 61.29 | 47.28 |" in lines[paper]
  assert lines[paper + 1].startswith("| gmcl `dgr` (the solver) | real | 90.00 ± 0.00 | 80.00 ± 0.00 | "
                                     "needs data | needs data | needs data | needs data | needs data |")
  assert "Machine: AMD EPYC, 2 cores." in text and "mean ± sd over 3 seeds" in text
  assert "| `dgr` | mnist | `experiments/configs/dgr.py:dataset=mnist,protocol=per_class,cpu` | 0, 1, 2 | " \
         "30 min | AMD EPYC, 2 cores |" in text
  for row in pt.ROWS:  # every row of the seed's table, in its order, with a gmcl line or why not
    assert f"| **{row.label}**, paper{f' ({row.note})' if row.note else ''} | {row.protocol} |" in text
  assert "not built yet" not in text  # every row has its gmcl runs
  for key in pt.PROTOCOLS:
    assert f"- `{key}`:" in text
  # the views of one run: MeRGAN's oracle and its replay classifier are separate lines
  assert all(v.protocol in pt.PROTOCOLS for row in pt.ROWS for v in row.views)


def test_a_split_run_fills_the_columns_of_classes_seen(tmp_path):
  """RWalk's protocol has 5 tasks of 2 classes: the A_10 column (10 classes seen) is its fifth task's
  A_t, and A_5 falls inside a task."""
  root = str(tmp_path)
  _write(pt.results_dir("cpu", 3, "mnist", "rwalk_s", root),
         [([1.0, 0.9, 0.8, 0.7, 0.6 + 0.1 * i], {}) for i in range(3)], tasks=5,
         config=pt.config_of(pt.RWALK_S, "mnist", "cpu", 3).to_dict())
  lines = pt.table("cpu", 3, root, available=_available).splitlines()
  line = next(x for x in lines if x.startswith("| gmcl `rwalk_s` ("))
  assert "| single_head_2 | n/a | 70.00 ± 10.00 | n/a | needs data |" in line
  assert "`experiments/configs/rwalk.py:dataset=mnist,protocol=split,cpu --config.episodic.per_class=10`" \
      in "\n".join(lines)


def test_a_run_recorded_with_another_config_is_marked_stale_naming_the_keys(tmp_path):
  root = str(tmp_path)
  config = pt.config_of(pt.DGR, "mnist", "cpu", 3)
  config.train.solver_steps = 7
  _write(pt.results_dir("cpu", 3, "mnist", "dgr", root), [([0.5] * 10, {})] * 3, config=config.to_dict())
  assert pt.stale(pt.read_results(pt.results_dir("cpu", 3, "mnist", "dgr", root)), pt.DGR, "mnist", "cpu", 3) \
      == ["train.solver_steps: 7 in the checkpoint, 1000 now"]
  assert "| `dgr` | mnist | **stale**: recorded with another config than today's (`train.solver_steps`)" \
      in pt.table("cpu", 3, root, available=_available)


def test_an_oracle_seed_pinned_to_the_first_seed_is_not_a_difference(tmp_path):
  """eval.oracle_seed=0 with seed 0 trains the oracle that -1 (config.seed) does; another seed is stale."""
  folder = pt.results_dir("cpu", 3, "mnist", "dgm_dgmw", str(tmp_path))
  for pinned, expected in ((0, []), (5, ["eval.oracle_seed: 5 in the checkpoint, -1 now"])):
    config = pt.config_of(pt.DGMW, "mnist", "cpu", 3)
    config.eval.oracle_seed = pinned
    _write(folder, [([0.5] * 10, {})] * 3, config=config.to_dict())
    assert pt.stale(pt.read_results(folder), pt.DGMW, "mnist", "cpu", 3) == expected


def test_every_recorded_result_matches_todays_config():
  """A schedule changed since its results were recorded: rerun them (paper_table --run --overwrite)
  or record the new schedule under its own name."""
  for folder, _, files in os.walk(pt.RESULTS):
    parts = os.path.relpath(folder, pt.RESULTS).split(os.sep)
    if parts[0] in ("evidence", "compare"):
      continue  # the sweeps' and experiments.compare's records (--record results/evidence/..., results/compare)
    if parts[0] == "seeds" and "results.json" in files:
      # one seed run alone before experiments.merge_seeds (results/seeds/<schedule>/<dataset>/<run>/seed<S>):
      # the table's command with --config.seed=S --config.eval.oracle_seed=0, nothing else changed
      _, schedule, dataset, name, seed = parts
      differences = pt.stale(pt.read_results(folder), pt.RUNS[name], dataset, schedule, 1)
      assert {d.split(":")[0] for d in differences} <= {"seed", "eval.oracle_seed"}, (folder, differences)
      assert int(seed[len("seed"):]) == pt.read_results(folder)["seeds"][0], folder
      continue
    if "results.json" in files:
      schedule_seeds, dataset, name = os.path.relpath(folder, pt.RESULTS).split(os.sep)
      schedule, seeds = schedule_seeds.rsplit("_", 1)
      res = pt.read_results(folder)
      assert pt.stale(res, pt.RUNS[name], dataset, schedule, int(seeds[:-len("seeds")])) == [], folder


def test_every_paper_figure_sits_in_a_column_of_the_table():
  columns = {(d, t) for d, _, ts in pt.COLUMNS for t in ts}
  for row in pt.ROWS:
    assert set(row.paper) <= columns, row.label
    assert all(0 < v <= 100 for v in row.paper.values())


def test_readme_section_is_the_table_of_the_recorded_results():
  """README.md's results section is generated: rerun `python -m experiments.paper_table --readme
  README.md` after recording results."""
  readme = os.path.join(os.path.dirname(pt.RESULTS), "README.md")
  with open(readme) as f:
    text = f.read()
  assert pt.section(text) == pt.table("cpu", 3, pt.RESULTS, available=lambda d: d in pt.README_DATA)


def test_replace_section_needs_one_pair_of_markers():
  text = f"a\n{pt.BEGIN}\nold\n{pt.END}\nb\n"
  assert pt.replace_section(text, "new\n") == f"a\n{pt.BEGIN}\nnew\n{pt.END}\nb\n"
  assert pt.section(pt.replace_section(text, "new\n")) == "new\n"
  with pytest.raises(ValueError, match="exactly one"):
    pt.replace_section("no markers", "x")


def test_copy_results_refuses_to_replace_different_results(tmp_path):
  run, dest = tmp_path / "run", tmp_path / "dest"
  run.mkdir()
  (run / "results.json").write_text('{"A": [1.0]}')
  (run / "timings.json").write_text('{"wall_seconds": 1}')
  pt.copy_results(str(run), str(dest))
  assert (dest / "results.json").read_text() == '{"A": [1.0]}'
  pt.copy_results(str(run), str(dest))  # the same results: nothing to refuse
  (run / "results.json").write_text('{"A": [0.5]}')
  with pytest.raises(FileExistsError, match="--overwrite"):
    pt.copy_results(str(run), str(dest))
  assert (dest / "results.json").read_text() == '{"A": [1.0]}'
  pt.copy_results(str(run), str(dest), overwrite=True)
  assert (dest / "results.json").read_text() == '{"A": [0.5]}'


def _no_data(config):
  raise AssertionError("a finished workdir's data were loaded")


def test_run_missing_trains_records_and_then_reads(tmp_path, monkeypatch, mnist_data):
  """A smoke joint run with 2 seeds: recorded under results/, then read (not rerun), its cells
  the mean over its per-seed A."""
  from gmcl import loop

  calls = []
  real_run = loop.run
  monkeypatch.setattr(loop, "run", lambda *a, **k: calls.append(a[1]) or real_run(*a, **k))
  root, workdirs = str(tmp_path / "results"), str(tmp_path / "runs")
  written = pt.run_missing(["joint"], ["mnist", "cifar10"], "smoke", 2, workdirs, root,
                           available=_available, log=lambda *_: None, load_data=lambda c: mnist_data)
  assert written == [pt.results_dir("smoke", 2, "mnist", "joint", root)]
  res = pt.read_results(written[0])
  assert res["seeds"] == [0, 1] and len(res["per_seed"]) == 2
  a5 = [100 * p["A"][4] for p in res["per_seed"]]
  assert pt.cell(res, "A", 5, True).startswith(f"{sum(a5) / 2:.2f} ± ")
  assert pt.run_missing(["joint"], ["mnist"], "smoke", 2, workdirs, root, available=_available,
                        log=lambda *_: None, load_data=lambda c: mnist_data) == []
  assert len(calls) == 1
  # the record lost, the finished workdir is recorded again without training (nor loading data)
  recorded = open(os.path.join(written[0], "results.json")).read()
  os.remove(os.path.join(written[0], "results.json"))
  assert pt.run_missing(["joint"], ["mnist"], "smoke", 2, workdirs, root, available=_available,
                        log=lambda *_: None, load_data=_no_data) == written
  assert len(calls) == 1 and open(os.path.join(written[0], "results.json")).read() == recorded
  # a finished run of another config in the workdir is refused, not recorded under this run's name
  workdir = os.path.join(workdirs, "smoke_2seeds", "mnist", "joint")
  res = json.load(open(os.path.join(workdir, "results.json")))
  res["config"]["train"]["solver_steps"] += 1
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(res, f)
  os.remove(os.path.join(written[0], "results.json"))
  with pytest.raises(SystemExit, match="another config"):
    pt.run_missing(["joint"], ["mnist"], "smoke", 2, workdirs, root, available=_available,
                   log=lambda *_: None, load_data=_no_data)
  assert not os.path.exists(os.path.join(written[0], "results.json")) and len(calls) == 1


def test_runs_with_overrides_have_their_own_folder_config_and_command():
  c = pt.config_of(pt.DGR_COND, "mnist", "cpu", 3)
  assert c.model.conditional is True and c.eval.oracle == "mlp" and c.num_seeds == 3
  assert pt.DGR_COND.name == "dgr_conditional" and pt.DGMW.name == "dgm_dgmw"
  assert pt.DGR_COND.flags() == " --config.model.conditional=True --config.eval.oracle=mlp"
  from gmcl.config import validate_config
  for run in pt.RUNS.values():  # every run's config is valid at the cpu schedule
    validate_config(pt.config_of(run, "mnist", "cpu", 3))
