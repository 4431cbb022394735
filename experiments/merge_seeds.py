"""Joins finished runs of one config, each of other seeds, into one multi-seed run.

  python -m experiments.main --config experiments/configs/dgm.py:dataset=mnist,variant=dgmw,cpu \
      --config.seed=1 --config.eval.oracle_seed=0 --workdir runs/dgmw_seed1
  ...
  python -m experiments.merge_seeds --runs runs/dgmw_seed0,runs/dgmw_seed1,runs/dgmw_seed2 \
      --out runs/dgmw_3seeds

Seeds can so train on several machines, or in several sessions, and still give the results.json
one run of all of them writes (``seeds``, ``per_seed``, mean ± sd at the top): exactly so for the
methods whose seeds run one after another anyway (DGM's growth), up to float rounding for those
that stack their seeds in one program (:func:`gmcl.loop.merge_seed_results`). The runs' configs
may differ only in ``seed`` and ``num_seeds`` (and checkpoint settings); the seeds must be
consecutive; runs scored by an oracle must share its seed (``--config.eval.oracle_seed``, the
first seed's). ``timings.json`` sums the wall times and names each machine; the first seed's
sample grids are copied. Nothing in ``--out`` is replaced without ``--overwrite``.
"""

from __future__ import annotations

import filecmp
import glob
import json
import os
import shutil
import sys
import tempfile

from absl import app, flags

FLAGS = flags.FLAGS


def _read(workdir: str, name: str) -> dict:
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    if name == "timings.json":
      return {}
    raise SystemExit(f"--runs: {workdir} holds no {name} (is it a run's workdir?).")
  with open(path) as f:
    return json.load(f)


def merge(workdirs: list[str], out: str, overwrite: bool = False) -> dict:
  """Writes ``out/results.json`` and ``out/timings.json`` of the runs in ``workdirs``; returns
  the results."""
  from gmcl import loop  # pylint: disable=import-outside-toplevel
  if len(workdirs) < 2:
    raise SystemExit(f"--runs: {len(workdirs)} run(s) given; give two or more workdirs, comma-separated.")
  if any(os.path.abspath(w) == os.path.abspath(out) for w in workdirs):
    raise SystemExit(f"--out {out} is one of --runs: write the merged run to a folder of its own.")
  runs = [_read(w, "results.json") for w in workdirs]
  try:
    results = loop.merge_seed_results(runs)
  except ValueError as e:
    raise SystemExit(f"--runs {','.join(workdirs)}: {e}") from None
  timings = loop.merge_timings([_read(w, "timings.json") for w in workdirs])
  os.makedirs(out, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out) as tmp:
    loop.write_json(os.path.join(tmp, "results.json"), results)
    target = os.path.join(out, "results.json")
    if os.path.exists(target) and not overwrite and not filecmp.cmp(target, os.path.join(tmp, "results.json"),
                                                                    shallow=False):
      raise SystemExit(f"{target} holds other results; pass --overwrite to replace it.")
    holder = next(w for w, r in zip(workdirs, runs) if r["seeds"][0] == results["seeds"][0])
    for grid in sorted(glob.glob(os.path.join(holder, "samples_task*.png"))):  # the first seed's
      dest = os.path.join(out, os.path.basename(grid))
      if not os.path.exists(dest) or overwrite:
        shutil.copyfile(grid, dest)
    loop.write_json(os.path.join(out, "timings.json"), timings)
    os.replace(os.path.join(tmp, "results.json"), target)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}: give the workdirs as --runs W0,W1,...")
  from gmcl import evaluation  # pylint: disable=import-outside-toplevel
  results = merge(FLAGS.runs, FLAGS.out, FLAGS.overwrite)
  title = (f"{results['method']} on {results['dataset']} ({results['protocol']}), seeds {results['seeds']} "
           "merged: mean ± sd, %")
  sys.stdout.write(evaluation.format_table(results["A"], title, stds=results["A_std"]) + "\n")
  for name, values in sorted(results["scores"].items()):
    if name.startswith("A_") and not name.endswith("_std") and values and all(isinstance(v, float) for v in values):
      sys.stdout.write(evaluation.format_table(values, f"scores.{name}, %",
                                               stds=results["scores"].get(f"{name}_std")) + "\n")
  sys.stdout.write(f"written: {os.path.join(FLAGS.out, 'results.json')}\n")


if __name__ == "__main__":
  flags.DEFINE_list("runs", None, "The finished runs' workdirs, comma-separated.", required=True)
  flags.DEFINE_string("out", None, "The merged run's folder.", required=True)
  flags.DEFINE_bool("overwrite", False, "Replace a merged run already in --out.")
  app.run(main)
