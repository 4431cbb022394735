"""Side-by-side comparison of the seed author's proposals with the published methods.

  python -m experiments.compare --out runs/compare --schedule demo
  python -m experiments.compare --out runs/compare --schedule cpu --benchmarks per_class_mnist \
      --methods lgm/ra-train,lgm/hat-bridge,ogm/project

Every (method, benchmark) pair is one ordinary run of ``gmcl.loop.run`` in
``OUT/SCHEDULE/BENCHMARK/METHOD``; a finished run is read, not rerun, and an interrupted one
continues from its checkpoints, so the command resumes where it stopped and a table can be
rebuilt from finished runs (``--table_only``; unfinished runs are marked with how far they got).
``--record results/compare`` copies each finished run's results.json and timings.json into the same
layout there (small files, to be committed; ``--table_only --out results/compare`` rebuilds the
table from them), checking that the run is of the pair's config today and never replacing a
record that differs unless ``--overwrite``. ``--readme README.md`` also writes the table (without
the commands) between the README's ``<!-- compare:begin -->`` and ``<!-- compare:end -->`` lines:

  python -m experiments.compare --table_only --out results/compare --schedule demo --num_seeds 3 \
      --readme README.md
A pair a method does not support (lsa on one class per task, where the task id gives the label
away) is marked n/a; a run that fails is marked with its error and the others
go on. The table (``OUT/table_SCHEDULE_Sseeds.md``; ``table_SCHEDULE.md`` for one seed; also
printed; beside it ``table_..._BENCHMARK.png``, every method's A_t curve with a ± sd band) gives
the final accuracy A_T (A_5/A_10 on the one-class-per-task benchmarks) as mean ± sd over
``--num_seeds`` seeds (3 by default, trained together where the method allows:
``config.num_seeds``), the scenario, each run's training wall time and the machine, with the
command that made it. One seed's figures differ between CPU
types by several points (GAN training amplifies float rounding): compare runs of one machine type.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import traceback

from absl import app, flags

BENCHMARKS = {  # name -> config arguments
    "split_mnist": "dataset=mnist,protocol=split",
    "per_class_mnist": "dataset=mnist,protocol=per_class",
    "permuted_mnist": "dataset=mnist,protocol=permuted",
    "fashion_mnist": "dataset=fashion_mnist,protocol=per_class",
}
LABELS = {"split_mnist": "split MNIST", "per_class_mnist": "per-class MNIST", "permuted_mnist": "permuted MNIST",
          "fashion_mnist": "Fashion-MNIST"}  # the tables' column heads
METHODS = {  # name -> (config module, variant or None)
    **{f"lgm/{p}-{e}": ("lgm", f"{p}-{e}") for p in ("ra", "hat")
       for e in ("train", "frozen", "prototype", "bridge")},
    "lsa/sequential": ("lsa", "sequential"),
    "lsa/parallel": ("lsa", "parallel"),
    "lsa/sequential-G": ("lsa", "sequential"),  # bridges also aligned on G_{t-1}'s samples
    "ogm/lookahead": ("ogm", "lookahead"),
    "ogm/distill": ("ogm", "distill"),
    "ogm/project": ("ogm", "project"),
    # the memory from DGR's generator instead of the current inputs
    "ogm/lookahead-G": ("ogm", "lookahead"),
    "ogm/distill-G": ("ogm", "distill"),
    "ogm/project-G": ("ogm", "project"),
    "dgr": ("dgr", None),
    "mergan/ra": ("mergan", "ra"),
    "dgm/dgmw": ("dgm", "dgmw"),
}
# --config.KEY=VALUE; "-G": a generative memory of the inputs (DGR's generator)
OVERRIDES = {**{m: {"ogm.memory": "generator"} for m in METHODS if m.startswith("ogm/") and m.endswith("-G")},
             "lsa/sequential-G": {"lsa.replay": "generator"},
             # one A_t for every row: the images pooled (DGM's configs average the classes, as its code)
             "dgm/dgmw": {"eval.accuracy_average": "examples"}}
SCHEDULES = ("smoke", "demo", "cpu")

README_BEGIN, README_END = "<!-- compare:begin -->", "<!-- compare:end -->"

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Folder of the runs and the table.")
flags.DEFINE_enum("schedule", "demo", SCHEDULES, "Config argument giving each run's schedule.")
flags.DEFINE_list("benchmarks", list(BENCHMARKS), f"Subset of {list(BENCHMARKS)}.")
flags.DEFINE_list("methods", list(METHODS), "Subset of the method names (see METHODS).")
flags.DEFINE_integer("max_tasks", 0, "> 0: keep only the first N tasks of every sequence.")
flags.DEFINE_integer("num_seeds", 3, "Seeds per run (config.num_seeds), from config.seed on.", lower_bound=1)
flags.DEFINE_bool("table_only", False, "Only rebuild the table from finished runs.")
flags.DEFINE_string("record", None, "Also copy each finished run's results.json and timings.json to "
                    "RECORD/SCHEDULE.../BENCHMARK/METHOD (e.g. results/compare).")
flags.DEFINE_bool("overwrite", False, "With --record: replace a record that differs from the run.")
flags.DEFINE_string("readme", None, "Also write the table (without its commands) between this file's "
                    f"{README_BEGIN} and {README_END} lines.")


def unsupported(method: str, benchmark: str) -> str | None:
  """Why a pair is not run, or None."""
  if method.startswith("lsa/") and benchmark in ("per_class_mnist", "fashion_mnist"):
    return "task-incremental with one class per task: the task id is the label"
  if method in ("mergan/ra", "dgm/dgmw") and benchmark == "permuted_mnist":
    return "class-conditional generator: every permuted task has the same 10 classes"
  return None


def config_arg(method: str, benchmark: str, schedule: str) -> str:
  module, variant = METHODS[method]
  args = [BENCHMARKS[benchmark], schedule] + ([f"variant={variant}"] if variant else [])
  return f"experiments/configs/{module}.py:" + ",".join(args)


def build_config(method: str, benchmark: str, schedule: str, max_tasks: int = 0, num_seeds: int = 1):
  module, _ = METHODS[method]
  arg = config_arg(method, benchmark, schedule).split(":", 1)[1]
  config = importlib.import_module(f"experiments.configs.{module}").get_config(arg)
  if max_tasks:
    config.data.max_tasks = max_tasks
  config.num_seeds = num_seeds
  for key, value in OVERRIDES.get(method, {}).items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def command(method: str, benchmark: str, schedule: str, workdir: str, max_tasks: int = 0,
            num_seeds: int = 1) -> str:
  extra = f" --config.data.max_tasks={max_tasks}" if max_tasks else ""
  extra += f" --config.num_seeds={num_seeds}" if num_seeds != 1 else ""
  extra += "".join(f" --config.{k}={v}" for k, v in OVERRIDES.get(method, {}).items())
  return (f"python -m experiments.main --config {config_arg(method, benchmark, schedule)}{extra} "
          f"--workdir {workdir}")


def run_pair(method: str, benchmark: str, schedule: str, workdir: str, data_cache: dict,
             max_tasks: int = 0, num_seeds: int = 1) -> dict:
  """Runs one pair (or reads its finished results); returns the table's cell."""
  from gmcl import loop  # pylint: disable=import-outside-toplevel
  from gmcl.data.build import data_settings, load_data  # pylint: disable=import-outside-toplevel
  if loop._finished_run(workdir) is None:  # pylint: disable=protected-access
    config = build_config(method, benchmark, schedule, max_tasks, num_seeds)
    settings = data_settings(config)
    if settings not in data_cache:
      data_cache[settings] = load_data(config)
    start = time.time()
    # An interrupted run continues from its checkpoints; a finished one is read, never rerun.
    try:
      loop.run(config, workdir, data=data_cache[settings], progress=False)
    finally:
      loop.release_compiled()  # HAT and DGM runs' programs exceed a process's mappings
    print(f"{method} on {benchmark}: {time.time() - start:.0f} s", flush=True)
  return read_cell(workdir, num_seeds)


def run_dir(out: str, schedule: str, max_tasks: int, benchmark: str, method: str, num_seeds: int = 1) -> str:
  """``OUT/SCHEDULE[_firstN][_Sseeds]/BENCHMARK/METHOD``: runs of other schedules or seed counts
  are never mistaken for these."""
  tag = schedule + (f"_first{max_tasks}" if max_tasks else "") + (f"_{num_seeds}seeds" if num_seeds != 1 else "")
  return os.path.join(out, tag, benchmark, method.replace("/", "_"))


def read_cell(workdir: str, num_seeds: int = 1) -> dict:
  """A finished run's cell; an unfinished one is marked with how far it got."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return {"error": "not run"}
  with open(path) as f:
    res = json.load(f)
  if res["completed_tasks"] != len(res["tasks"]):
    return {"error": f"incomplete ({res['completed_tasks']}/{len(res['tasks'])} tasks)"}
  seeds = res.get("seeds", [res.get("seed")])  # written before seeds were trained together: one
  if len(seeds) != num_seeds:
    return {"error": f"{len(seeds)} seeds, not {num_seeds}"}
  cell = {"A": res["A"], "A_std": res.get("A_std", [0.0] * len(res["A"])), "seeds": seeds,
          "scenario": res["scenario"], "forgetting": res["average_forgetting"]}
  timings = os.path.join(workdir, "timings.json")
  if os.path.exists(timings):
    with open(timings) as f:
      t = json.load(f)
    cell["seconds"] = t["wall_seconds"]
    if "machine" in t:
      cell["machine"] = t["machine"]
  return cell


def record_run(workdir: str, record: str, config, overwrite: bool = False) -> list[str]:
  """Copies a finished run's results.json and timings.json from ``workdir`` to ``record``;
  returns the files written (none when the record already holds these bytes).

  Raises:
    ValueError: the run is unfinished, of another config than ``config`` (names the keys), or
      ``record`` holds a different record and ``overwrite`` is False.
  """
  from gmcl import loop  # pylint: disable=import-outside-toplevel
  if loop.finished_run_of(config, workdir) is None:
    raise ValueError(f"{workdir} holds no finished run to record.")
  pending = []
  for name in ("results.json", "timings.json"):
    source, target = os.path.join(workdir, name), os.path.join(record, name)
    if not os.path.exists(source):
      continue
    with open(source, "rb") as f:
      data = f.read()
    if os.path.exists(target):
      with open(target, "rb") as f:
        if f.read() == data:
          continue
      if not overwrite:
        raise ValueError(f"{target} holds another record of this pair; pass --overwrite to replace it "
                         f"with {source}.")
    pending.append((target, data))
  os.makedirs(record, exist_ok=True)
  for target, data in pending:
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, target)
  return [t for t, _ in pending]


def format_cell(cell: dict, benchmark: str) -> str:
  if "error" in cell or "na" in cell:
    return cell.get("error") or "n/a"
  a, sd = cell["A"], cell.get("A_std")
  several = len(cell.get("seeds", [0])) > 1

  def value(i):
    return f"{100 * a[i]:.2f}" + (f" ± {100 * sd[i]:.2f}" if several and sd else "")
  if benchmark in ("per_class_mnist", "fashion_mnist") and len(a) >= 10:
    text = f"{value(4)} / {value(9)}"
  else:
    text = value(len(a) - 1)
  if cell["scenario"] == "task_incremental":
    text += " (TI)"
  if "seconds" in cell:
    text += f", {cell['seconds'] / 60:.1f} min"
  return text


def table(cells: dict, benchmarks, methods, schedule: str, out: str, max_tasks: int = 0,
          num_seeds: int = 1, commands: bool = True) -> str:
  """The table of ``cells`` ((method, benchmark) -> cell), and with ``commands`` each run's command."""
  machines = sorted({c["machine"] for c in cells.values() if "machine" in c})
  over = (f"mean ± sd over {num_seeds} seeds" if num_seeds > 1 else "one seed (its figures differ "
          "between CPU types by several points: prefer --num_seeds 3 or more)")
  lines = [f"Schedule `{schedule}`" + (f", first {max_tasks} tasks" if max_tasks else "")
           + f". Cells: final A_T in % (per-class benchmarks: A_5 / A_10), {over}, the run's wall time "
           "(every seed's). "
           "(TI): task-incremental (task id given at test time); all others class-incremental. "
           + (f"Machine: {'; '.join(machines)}." if machines else "")
           + (" One seed's figures differ between CPU types by several points: compare runs of one "
              "machine type." if num_seeds > 1 else ""), "",
           "| method | " + " | ".join(LABELS.get(b, b) for b in benchmarks) + " |",
           "|---" * (len(benchmarks) + 1) + "|"]
  for m in methods:
    lines.append(f"| {m} | " + " | ".join(format_cell(cells[(m, b)], b) for b in benchmarks) + " |")
  if not commands:
    return "\n".join(lines) + "\n"
  lines += ["", "Commands (one per run; the config's arguments are the cell's):", ""]
  for b in benchmarks:
    for m in methods:
      if "na" not in cells[(m, b)]:
        workdir = run_dir(out, schedule, max_tasks, b, m, num_seeds)
        lines.append(f"    {command(m, b, schedule, workdir, max_tasks, num_seeds)}")
  return "\n".join(lines) + "\n"


def recorded_cells(out: str, schedule: str, benchmarks, methods, max_tasks: int = 0, num_seeds: int = 1) -> dict:
  """The cells of the finished runs (or records) under ``out``, nothing run: (method, benchmark) -> cell."""
  return {(m, b): ({"na": unsupported(m, b)} if unsupported(m, b)
                   else read_cell(run_dir(out, schedule, max_tasks, b, m, num_seeds), num_seeds))
          for b in benchmarks for m in methods}


def readme_section(cells: dict, benchmarks, methods, schedule: str, max_tasks: int = 0, num_seeds: int = 1) -> str:
  """What ``--readme`` writes between the markers: the table without its commands."""
  return table(cells, benchmarks, methods, schedule, "", max_tasks, num_seeds, commands=False)


def write_readme(path: str, section: str) -> None:
  from experiments.paper_table import replace_section  # pylint: disable=import-outside-toplevel
  with open(path) as f:
    new = replace_section(f.read(), section, README_BEGIN, README_END)  # (markers checked before writing)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    f.write(new)
  os.replace(tmp, path)


def main(argv):
  del argv
  for b in FLAGS.benchmarks:
    if b not in BENCHMARKS:
      raise app.UsageError(f"Unknown benchmark {b!r}; valid: {list(BENCHMARKS)}.")
  for m in FLAGS.methods:
    if m not in METHODS:
      raise app.UsageError(f"Unknown method {m!r}; valid: {list(METHODS)}.")
  if FLAGS.readme:  # a file without the markers fails now, not after the runs
    from experiments.paper_table import replace_section  # pylint: disable=import-outside-toplevel
    with open(FLAGS.readme) as f:
      try:
        replace_section(f.read(), "", README_BEGIN, README_END)
      except ValueError as e:
        raise app.UsageError(f"--readme {FLAGS.readme}: {e}") from None
  os.makedirs(FLAGS.out, exist_ok=True)
  cells, data_cache = {}, {}
  for b in FLAGS.benchmarks:
    for m in FLAGS.methods:
      workdir = run_dir(FLAGS.out, FLAGS.schedule, FLAGS.max_tasks, b, m, FLAGS.num_seeds)
      why = unsupported(m, b)
      if why:
        cells[(m, b)] = {"na": why}
      elif FLAGS.table_only:
        cells[(m, b)] = read_cell(workdir, FLAGS.num_seeds)
      else:
        try:
          cells[(m, b)] = run_pair(m, b, FLAGS.schedule, workdir, data_cache, FLAGS.max_tasks,
                                   FLAGS.num_seeds)
        except Exception as e:  # pylint: disable=broad-except
          traceback.print_exc()
          cells[(m, b)] = {"error": f"failed: {type(e).__name__}"}
      if FLAGS.record and "A" in cells[(m, b)]:
        config = build_config(m, b, FLAGS.schedule, FLAGS.max_tasks, FLAGS.num_seeds)
        try:
          for path in record_run(workdir, run_dir(FLAGS.record, FLAGS.schedule, FLAGS.max_tasks, b, m,
                                                  FLAGS.num_seeds), config, FLAGS.overwrite):
            print(f"recorded {path}", flush=True)
        except ValueError as e:  # the run stays in OUT; the other pairs go on
          print(f"{m} on {b} not recorded: {e}", flush=True)
      write_table(cells)
  print(write_table(cells))
  if FLAGS.readme:
    full = {(m, b): cells.get((m, b), {"error": "pending"}) for m in FLAGS.methods for b in FLAGS.benchmarks}
    write_readme(FLAGS.readme, readme_section(full, FLAGS.benchmarks, FLAGS.methods, FLAGS.schedule,
                                              FLAGS.max_tasks, FLAGS.num_seeds))


def table_name(schedule: str, num_seeds: int) -> str:
  """``table_SCHEDULE[_Sseeds].md``: tables of other seed counts are never overwritten by this one."""
  return f"table_{schedule}" + (f"_{num_seeds}seeds" if num_seeds != 1 else "") + ".md"


def write_table(cells: dict) -> str:
  """Writes OUT/table_SCHEDULE.md (pairs not run yet: "pending") and returns its text."""
  full = {(m, b): cells.get((m, b), {"error": "pending"}) for m in FLAGS.methods for b in FLAGS.benchmarks}
  text = table(full, FLAGS.benchmarks, FLAGS.methods, FLAGS.schedule, FLAGS.out, FLAGS.max_tasks,
               FLAGS.num_seeds)
  path = os.path.join(FLAGS.out, table_name(FLAGS.schedule, FLAGS.num_seeds))
  # One temporary file per process: comparisons of disjoint subsets may share OUT and run at once.
  tmp = f"{path}.{os.getpid()}.tmp"
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
  write_curves(full, FLAGS.benchmarks, FLAGS.methods, path[:-len(".md")])
  return text


def write_curves(cells: dict, benchmarks, methods, stem: str) -> list[str]:
  """``STEM_BENCHMARK.png``: A_t against tasks of every finished method on the benchmark, a ± sd
  band over seeds; returns the files written."""
  from gmcl import plots  # pylint: disable=import-outside-toplevel
  written = []
  for b in benchmarks:
    curves = {m: (cells[(m, b)]["A"], cells[(m, b)].get("A_std") if len(cells[(m, b)].get("seeds", [0])) > 1
                  else None) for m in methods if "A" in cells[(m, b)]}
    if curves:
      path = f"{stem}_{b}.png"
      plots.plot_curves(curves, path, f"{b}: A_t" + (" (TI: task id given)" if any(
          cells[(m, b)]["scenario"] == "task_incremental" for m in curves) else ""))
      written.append(path)
  return written


if __name__ == "__main__":
  flags.mark_flags_as_required(["out"])
  app.run(main)
