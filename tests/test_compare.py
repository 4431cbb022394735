"""experiments.compare: the table reads finished runs only, and each printed command rebuilds its run's config."""

import importlib
import json
import os

import pytest
from absl.testing import flagsaver

from experiments import compare
from gmcl.config import validate_config


def _write(workdir, A, tasks, seconds=None, seeds=None, A_std=None):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    extra = {} if seeds is None else {"seeds": seeds, "A_std": A_std}  # None: written before seeds
    json.dump({"A": A, "tasks": [[i] for i in range(tasks)], "completed_tasks": len(A),
               "scenario": "class_incremental", "average_forgetting": 0.1, **extra}, f)
  if seconds is not None:
    with open(os.path.join(workdir, "timings.json"), "w") as f:
      json.dump({"wall_seconds": seconds, "machine": "CPU X, 2 cores"}, f)


def test_cells_of_finished_unfinished_and_missing_runs(tmp_path):
  done = str(tmp_path / "done")
  _write(done, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3], 10, seconds=120.0)
  cell = compare.read_cell(done)
  assert compare.format_cell(cell, "per_class_mnist") == "60.00 / 30.00, 2.0 min"
  assert compare.format_cell(cell, "split_mnist") == "30.00, 2.0 min"
  half = str(tmp_path / "half")
  _write(half, [1.0, 0.9], 10)
  assert compare.read_cell(half) == {"error": "incomplete (2/10 tasks)"}
  assert compare.read_cell(str(tmp_path / "none")) == {"error": "not run"}
  assert compare.read_cell(done, num_seeds=3) == {"error": "1 seeds, not 3"}
  three = str(tmp_path / "three")
  _write(three, [1.0, 0.5], 2, seconds=60.0, seeds=[0, 1, 2], A_std=[0.0, 0.0125])
  assert compare.format_cell(compare.read_cell(three, num_seeds=3), "split_mnist") == "50.00 ± 1.25, 1.0 min"


def test_schedules_truncations_and_seed_counts_never_share_a_run_folder():
  dirs = {compare.run_dir("out", s, m, "split_mnist", "lgm/ra-train", n)
          for s in compare.SCHEDULES for m in (0, 2) for n in (1, 3)}
  assert len(dirs) == 4 * len(compare.SCHEDULES)


def test_unsupported_pairs_say_why():
  assert "task id" in compare.unsupported("lsa/sequential", "per_class_mnist")
  assert compare.unsupported("lsa/sequential", "split_mnist") is None
  assert compare.unsupported("lgm/ra-train", "permuted_mnist") is None


@pytest.mark.parametrize("method", ["lgm/hat-bridge", "ogm/project-G", "lsa/parallel", "dgr"])
def test_the_printed_command_rebuilds_the_config(method):
  cmd = compare.command(method, "split_mnist", "demo", "runs/x", max_tasks=3, num_seeds=3)
  arg = cmd.split("--config ")[1].split(" ")[0]
  path, _, args = arg.partition(":")
  module = importlib.import_module("experiments.configs." + os.path.basename(path)[:-3])
  config = module.get_config(args)
  for flag in cmd.split(" --config.")[1:]:
    key, _, value = flag.split(" ")[0].partition("=")
    *sections, name = key.split(".")
    node = config[sections[0]] if sections else config
    node[name] = type(node[name])(value)
  expected = compare.build_config(method, "split_mnist", "demo", max_tasks=3, num_seeds=3)
  validate_config(expected)
  assert config.to_dict() == expected.to_dict()


def test_table_only_reads_finished_runs_and_leaves_another_process_table_write_alone(tmp_path):
  if not compare.FLAGS.is_parsed():
    compare.FLAGS.mark_as_parsed()
  out = str(tmp_path)
  _write(compare.run_dir(out, "demo", 0, "split_mnist", "dgr", 3), [1.0, 0.9, 0.8, 0.7, 0.6], 5, seconds=60.0,
         seeds=[0, 1, 2], A_std=[0.0, 0.01, 0.02, 0.03, 0.04])
  # Another comparison writing the same table at this moment: its temporary file must survive.
  other = os.path.join(out, f"table_demo_3seeds.md.{os.getpid() + 1}.tmp")
  with open(other, "w") as f:
    f.write("other")
  with flagsaver.flagsaver(out=out, schedule="demo", benchmarks=["split_mnist", "permuted_mnist"],
                           methods=["dgr", "lsa/sequential"], max_tasks=0, table_only=True, num_seeds=3):
    compare.main([])
  with open(os.path.join(out, "table_demo_3seeds.md")) as f:
    text = f.read()
  assert "| dgr | 60.00 ± 4.00, 1.0 min | not run |" in text
  assert "mean ± sd over 3 seeds" in text
  assert "Machine: CPU X, 2 cores. One seed's figures differ between CPU types" in text
  assert "| lsa/sequential | not run | not run |" in text
  with open(other) as f:
    assert f.read() == "other"
  # beside the table, the A_t curves of the benchmark with a finished run
  assert sorted(os.listdir(out)) == sorted(["demo_3seeds", "table_demo_3seeds.md", "table_demo_3seeds_split_mnist.png",
                                            os.path.basename(other)])
  assert compare.table_name("demo", 1) == "table_demo.md"


def _finished(workdir, config, A):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"A": A, "tasks": [[i] for i in range(len(A))], "completed_tasks": len(A),
               "scenario": "class_incremental", "average_forgetting": 0.1, "seeds": [0, 1, 2],
               "A_std": [0.0] * len(A), "config": config.to_dict()}, f)
  with open(os.path.join(workdir, "timings.json"), "w") as f:
    json.dump({"wall_seconds": 60.0, "machine": "CPU X, 2 cores"}, f)


def test_record_copies_a_finished_run_once_and_keeps_a_different_record_without_overwrite(tmp_path):
  config = compare.build_config("dgr", "split_mnist", "demo", num_seeds=3)
  run, record = str(tmp_path / "run"), str(tmp_path / "record")
  with pytest.raises(ValueError, match="no finished run"):
    compare.record_run(run, record, config)
  _finished(run, config, [1.0, 0.5])
  assert sorted(os.path.basename(p) for p in compare.record_run(run, record, config)) == [
      "results.json", "timings.json"]
  assert compare.read_cell(record, 3) == compare.read_cell(run, 3)
  assert compare.record_run(run, record, config) == []  # the same bytes: nothing written
  _finished(run, config, [1.0, 0.6])  # a rerun with other figures
  with pytest.raises(ValueError, match="another record of this pair; pass --overwrite"):
    compare.record_run(run, record, config)
  assert compare.read_cell(record, 3)["A"] == [1.0, 0.5]  # kept
  compare.record_run(run, record, config, overwrite=True)
  assert compare.read_cell(record, 3)["A"] == [1.0, 0.6]
  other = compare.build_config("dgr", "split_mnist", "cpu", num_seeds=3)
  with pytest.raises(ValueError, match="another config"):
    compare.record_run(run, str(tmp_path / "other"), other)
  assert not os.path.exists(tmp_path / "other")


def test_every_recorded_comparison_run_is_of_its_pairs_config_today():
  """results/compare/SCHEDULE_Sseeds/BENCHMARK/METHOD holds what `compare --record results/compare`
  copied: a changed config means rerunning the pair (or --overwrite after the rerun)."""
  from gmcl import loop  # pylint: disable=import-outside-toplevel
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "compare")
  names = {m.replace("/", "_"): m for m in compare.METHODS}
  for folder, _, files in os.walk(root):
    if "results.json" not in files:
      continue
    tag, benchmark, method = os.path.relpath(folder, root).split(os.sep)
    schedule, _, rest = tag.partition("_")
    seeds = int(rest[:-len("seeds")]) if rest.endswith("seeds") else 1
    assert "first" not in rest, folder  # truncated sequences are not the table's
    with open(os.path.join(folder, "results.json")) as f:
      res = json.load(f)
    config = compare.build_config(names[method], benchmark, schedule, num_seeds=seeds)
    assert loop.config_differences(res["config"], config) == [], folder
    assert len(res["seeds"]) == seeds and res["completed_tasks"] == len(res["tasks"]), folder


def test_readme_section_is_the_table_of_the_recorded_comparisons():
  """README.md's 3-seed proposals table is generated: rerun `python -m experiments.compare --table_only
  --out results/compare --schedule demo --num_seeds 3 --readme README.md` after recording pairs."""
  from experiments import paper_table  # pylint: disable=import-outside-toplevel
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, "README.md")) as f:
    text = f.read()
  cells = compare.recorded_cells(os.path.join(repo, "results", "compare"), "demo", list(compare.BENCHMARKS),
                                 list(compare.METHODS), 0, 3)
  assert paper_table.section(text, compare.README_BEGIN, compare.README_END) == compare.readme_section(
      cells, list(compare.BENCHMARKS), list(compare.METHODS), "demo", 0, 3)


def test_readme_flag_writes_the_table_between_the_markers_and_a_file_without_them_fails_first(tmp_path):
  from absl import app  # pylint: disable=import-outside-toplevel
  if not compare.FLAGS.is_parsed():
    compare.FLAGS.mark_as_parsed()
  out = str(tmp_path / "records")
  _write(compare.run_dir(out, "demo", 0, "split_mnist", "dgr", 3), [1.0, 0.9, 0.8, 0.7, 0.6], 5, seconds=60.0,
         seeds=[0, 1, 2], A_std=[0.0, 0.01, 0.02, 0.03, 0.04])
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{compare.README_BEGIN}\nold table\n{compare.README_END}\nafter\n")
  flags = dict(out=out, schedule="demo", benchmarks=["split_mnist"], methods=["dgr", "lsa/sequential"],
               max_tasks=0, table_only=True, num_seeds=3)
  with flagsaver.flagsaver(readme=str(readme), **flags):
    compare.main([])
  text = readme.read_text()
  assert text.startswith(f"intro\n{compare.README_BEGIN}\n") and text.endswith(f"{compare.README_END}\nafter\n")
  assert "| dgr | 60.00 ± 4.00, 1.0 min |" in text and "| lsa/sequential | not run |" in text
  assert "old table" not in text and "Commands" not in text and "python -m" not in text
  bare = tmp_path / "bare.md"
  bare.write_text("no markers\n")
  with flagsaver.flagsaver(readme=str(bare), **dict(flags, out=str(tmp_path / "never"))):
    with pytest.raises(app.UsageError, match="bare.md: The file needs exactly one <!-- compare:begin -->"):
      compare.main([])
  assert bare.read_text() == "no markers\n" and not os.path.exists(tmp_path / "never")  # nothing written
