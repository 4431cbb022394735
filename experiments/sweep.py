"""A grid of config values, each point a run with several seeds, and one table of mean ± sd.

  python -m experiments.sweep --config experiments/configs/mergan.py:dataset=mnist,variant=ra,cpu \
      --grid mergan.ra_weight=1e-3,1e-2,1e-1 --num_seeds 3 --set data.max_tasks=5 --out runs/sweep_ra
  python -m experiments.sweep ... --record results/evidence/ra_weight     # keep the small results

Every point of the grid (the product of the ``--grid KEY=V1,V2,...`` flags; ``--set KEY=V`` for
every point) is one ordinary run of ``gmcl.loop.run`` in ``OUT/KEY=V,...``: a finished run is read,
not rerun, and an interrupted one continues from its checkpoints, so the command resumes where it
stopped. The table (``OUT/table.md``, also printed) gives, for each point, A_t at the tasks of
``--tasks`` (default: the middle one and the last) and every float score series named in
``--scores`` (default ``A``), as mean ± sd over the seeds, and each run's wall time and machine.
``--record DIR`` copies each finished run's results.json and timings.json to ``DIR/POINT/`` (for
committing: no checkpoints), refusing to replace different ones without ``--overwrite``.
Values are Python literals (``1e-3``, ``True``, ``(400, 400)``) or else strings.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import os
import sys

from absl import app, flags

from experiments import paper_table


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_assignment(item: str, many: bool) -> tuple[str, list]:
  """``"a.b=1,2"`` -> ``("a.b", [1, 2])`` (one value unless ``many``; a tuple value keeps its commas
  when ``many`` is False)."""
  key, sep, values = item.partition("=")
  if not sep or not key or not values:
    raise app.UsageError(f"{item!r}: expected KEY=VALUE{',VALUE...' if many else ''}.")
  if not many:
    return key.strip(), [parse_value(values)]
  return key.strip(), [parse_value(v) for v in _split_top_level(values)]


def _split_top_level(text: str) -> list[str]:
  """Splits at commas outside brackets: ``"(1,2),(3,4)"`` -> ``["(1,2)", "(3,4)"]``."""
  out, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    depth += ch in "([{"
    depth -= ch in ")]}"
    if ch == "," and depth == 0:
      out.append(text[start:i])
      start = i + 1
  out.append(text[start:])
  return [v.strip() for v in out if v.strip()]


def load_config(spec: str):
  """``path.py[:args]`` -> the config its ``get_config(args)`` returns."""
  path, _, args = spec.partition(":")
  if not os.path.isfile(path):
    raise app.UsageError(f"--config {spec!r}: no file {path!r}.")
  module_spec = importlib.util.spec_from_file_location("_gmcl_sweep_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(args) if args else module.get_config()


def assign(config, key: str, value) -> None:
  from gmcl.config import unknown_key  # pylint: disable=import-outside-toplevel
  message = unknown_key(config, key)
  if message:
    raise app.UsageError(f"--grid/--set: {message}")
  *sections, name = key.split(".")
  node = config
  for s in sections:
    node = node[s]
  old = node[name]
  if isinstance(old, tuple) and isinstance(value, (list, tuple)):
    value = tuple(value)
  elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  node[name] = value


def points(grid: list[tuple[str, list]]) -> list[dict]:
  """The product of the grid's values, in the order given."""
  keys = [k for k, _ in grid]
  return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in grid))]


def point_name(point: dict) -> str:
  """A folder name: ``mergan.ra_weight=0.01,train.generator_steps=500`` (unsafe characters dropped)."""
  text = ",".join(f"{k}={v}" for k, v in point.items()) or "default"
  return "".join(ch for ch in text if ch.isalnum() or ch in "._=,-+") or "point"


def table(rows: list[tuple[dict, str, dict | None]], scores, tasks, header: str) -> str:
  """Markdown: one row per point (its values, then each score at each task, wall time, machine)."""
  keys = list(rows[0][0]) if rows else []
  heads = [f"{s} t={t}" for s in scores for t in tasks]
  lines = [header, "", "| " + " | ".join(keys + heads + ["seeds", "wall time", "machine"]) + " |",
           "|" + "---|" * (len(keys) + len(heads) + 3)]
  for point, folder, res in rows:
    vals = [str(point[k]) for k in keys]
    if res is None:
      cells = ["not run"] * len(heads) + ["", "", ""]
    elif res["completed_tasks"] != len(res["tasks"]):
      cells = [f"incomplete ({res['completed_tasks']}/{len(res['tasks'])})"] * len(heads) + ["", "", ""]
    else:
      t = paper_table._timings(folder)  # pylint: disable=protected-access
      cells = [paper_table.cell(res, s, k, True) for s in scores for k in tasks]
      cells += [", ".join(map(str, res.get("seeds", []))),
                f"{t['wall_seconds'] / 60:.1f} min" if "wall_seconds" in t else "–", t.get("machine", "–")]
    lines.append("| " + " | ".join(vals + cells) + " |")
  return "\n".join(lines) + "\n"


FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a program: importing defines none)."""
  flags.DEFINE_string("config", None, "Experiment config, path.py[:args].")
  flags.DEFINE_multi_string("grid", [], "KEY=V1,V2,...: a dimension of the grid (repeatable).")
  flags.DEFINE_multi_string("set", [], "KEY=VALUE for every point (repeatable).")
  flags.DEFINE_integer("num_seeds", 3, "Seeds per point (config.num_seeds).", lower_bound=1)
  flags.DEFINE_string("out", None, "Folder of the runs and table.md.")
  flags.DEFINE_list("scores", ["A"], "Series to tabulate: A, or names of results.json scores (A_oracle, ...).")
  flags.DEFINE_list("tasks", [], "Tasks t whose A_t to show (default: the middle one and the last).")
  flags.DEFINE_string("record", None, "Copy each finished run's results.json and timings.json here.")
  flags.DEFINE_bool("overwrite", False, "With --record: replace recorded results that differ.")
  flags.DEFINE_bool("table_only", False, "Only rebuild the table from finished runs.")


def main(argv):
  del argv
  from gmcl import loop  # pylint: disable=import-outside-toplevel
  from gmcl.config import sequence_length  # pylint: disable=import-outside-toplevel
  from gmcl.data.build import data_settings, load_data  # pylint: disable=import-outside-toplevel
  grid = [parse_assignment(g, many=True) for g in FLAGS.grid]
  fixed = [parse_assignment(s, many=False) for s in FLAGS.set]
  base = load_config(FLAGS.config)
  for key, (value,) in fixed:
    assign(base, key, value)
  base.num_seeds = FLAGS.num_seeds
  configs = []
  for point in points(grid):
    config = base.copy_and_resolve_references()
    for key, value in point.items():
      assign(config, key, value)
    configs.append((point, config))
  num_tasks = sequence_length(base)
  tasks = [int(t) for t in FLAGS.tasks] or sorted({max(1, num_tasks // 2), num_tasks})
  bad = [t for t in tasks if not 1 <= t <= num_tasks]
  if bad:
    raise app.UsageError(f"--tasks {bad}: the sequence has tasks 1..{num_tasks}.")
  os.makedirs(FLAGS.out, exist_ok=True)
  cache, rows = {}, []
  header = (f"`{FLAGS.config}`" + "".join(f" --set {s}" for s in FLAGS.set) + f", {FLAGS.num_seeds} seeds: "
            "mean ± sd (sample sd) in %.")
  for point, config in configs:
    folder = os.path.join(FLAGS.out, point_name(point))
    if not FLAGS.table_only and loop._finished_run(folder) is None:  # pylint: disable=protected-access
      settings = data_settings(config)
      if settings not in cache:
        cache[settings] = load_data(config)
      try:
        loop.run(config, folder, data=cache[settings], progress=False)
      finally:
        loop.release_compiled()
    res = paper_table.read_results(folder)
    if res is not None:  # a run in this folder must be this point's, not another sweep's
      differs = loop.config_differences(res.get("config", {}), config)
      if differs:
        raise SystemExit(f"{folder} holds a run of another config ({'; '.join(differs[:3])}); "
                         "use another --out for this sweep.")
    if FLAGS.record and res is not None and res["completed_tasks"] == len(res["tasks"]):
      paper_table.copy_results(folder, os.path.join(FLAGS.record, point_name(point)), FLAGS.overwrite)
    rows.append((point, folder, res))
    text = table(rows, FLAGS.scores, tasks, header)
    with open(os.path.join(FLAGS.out, "table.md"), "w") as f:
      f.write(text)
  sys.stdout.write(table(rows, FLAGS.scores, tasks, header))
  with open(os.path.join(FLAGS.out, "sweep.json"), "w") as f:
    json.dump({"config": FLAGS.config, "grid": FLAGS.grid, "set": FLAGS.set, "num_seeds": FLAGS.num_seeds}, f)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "out"])
  app.run(main)
