"""The seed's table (Ostapenko et al. 2019, Table 1) with gmcl's figures beside the papers'.

  python -m experiments.paper_table                                # print it from results/
  python -m experiments.paper_table --run --runs dgr,joint         # run what is missing, then print
  python -m experiments.paper_table --readme README.md             # rewrite the README's section

The rows are the seed's ten (JT, EWC-M, EWC-S, PI-S, RWalk-S, iCaRL-S, DGR, MeRGAN, DGMw, DGMa) and
MeRGAN's lower bound SFT, its columns MNIST, SVHN and CIFAR-10 A_5 / A_10 and ImageNet-50 A_30 /
A_50, class-incremental with one class per task. Under each row's paper figures come gmcl's, one
line per run and protocol, each the mean ± sd over the run's seeds, and every line says its
protocol: the papers' figures do not share one (the seed's table copies MeRGAN's oracle accuracies
on generated samples beside continual-learning accuracies on real test images), so a gmcl figure is
compared only with a paper figure of the same protocol. "–": not run; "needs data": the dataset is
not prepared on this machine (or gmcl cannot load it yet) and no result is recorded.

gmcl's figures are read from ``results/SCHEDULE_Sseeds/DATASET/RUN/results.json`` (the small
results.json and timings.json of finished runs, committed; no checkpoints). ``--run`` trains the
missing runs in ``--workdirs`` (resumable: an interrupted run continues from its checkpoints; a
workdir that holds a finished run of the same config, such as a sweep's run moved there, is
recorded without training) and copies each finished run's two files there; an existing different copy is kept unless
``--overwrite``. The schedule is the config argument (``cpu``: the 2-core CPU's; ``smoke``: tests).
"""

from __future__ import annotations

import dataclasses
import filecmp
import importlib
import json
import os
import shutil
import sys
from typing import Callable, Optional

from absl import app, flags

from gmcl import seeds as seeds_lib

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
BEGIN, END = "<!-- paper_table:begin -->", "<!-- paper_table:end -->"
README_DATA = ("mnist", "fashion_mnist")  # the datasets at hand where the README's runs were made

# (dataset, label, the tasks whose A_t the column reports)
COLUMNS = (("mnist", "MNIST", (5, 10)), ("svhn_cropped", "SVHN", (5, 10)), ("cifar10", "CIFAR-10", (5, 10)),
           ("imagenet50", "ImageNet-50", (30, 50)))

PROTOCOLS = {
    "real": "continual-learning accuracy: the classifier on the real test images of every class seen",
    "oracle": "MeRGAN's oracle accuracy: a classifier trained on real data labels generated samples of "
              "every class seen",
    "aux": "DGM's: the critic's auxiliary head on the real test images of every class seen",
    "single_head_2": "RWalk's: 5 tasks of 2 classes, one head over the classes seen, real test images "
                     "(A_10: after the fifth task; A_5 falls inside a task: n/a)",
}


@dataclasses.dataclass(frozen=True)
class Run:
  """One gmcl run behind a row: ``experiments/configs/MODULE.py:dataset=D,SCHEDULE[,variant=V]``
  with ``--config.KEY=VALUE`` for each of ``overrides``; ``tag`` names a run with overrides."""
  module: str
  variant: Optional[str] = None
  tag: str = ""
  overrides: tuple = ()  # ((key, value), ...)
  protocol: str = "per_class"  # per_class, or split (5 tasks of 2 classes: RWalk's single-head protocol)

  @property
  def classes_per_task(self) -> int:
    return 2 if self.protocol == "split" else 1

  @property
  def name(self) -> str:
    return "_".join(filter(None, (self.module, self.variant, self.tag)))

  def flags(self) -> str:
    return "".join(f" --config.{k}={v}" for k, v in self.overrides)

  def config_arg(self, dataset: str, schedule: str) -> str:
    args = [f"dataset={dataset}", f"protocol={self.protocol}", schedule] + ([f"variant={self.variant}"]
                                                                     if self.variant else [])
    return f"experiments/configs/{self.module}.py:" + ",".join(args)


@dataclasses.dataclass(frozen=True)
class View:
  """One gmcl line of a row: a run's A_t series (``A``, or a score of results.json's ``scores``)
  under a protocol."""
  run: Run
  score: str  # "A" or the name of a score series
  protocol: str
  label: str = ""


@dataclasses.dataclass(frozen=True)
class Row:
  label: str
  paper: dict  # (dataset, t) -> the paper's figure (%)
  protocol: str  # the paper figures' protocol (a PROTOCOLS key)
  source: str
  views: tuple = ()
  missing: str = ""  # why gmcl has no line yet
  note: str = ""  # about the paper's figures


ORACLE = (("eval.oracle", "mlp"),)  # MeRGAN's protocol for generators other than MeRGAN's
JOINT, DGR, SFT = Run("joint"), Run("dgr"), Run("sft")
DGR_COND = Run("dgr", tag="conditional", overrides=(("model.conditional", True),) + ORACLE)
MERGAN_RA = Run("mergan", "ra")
# recorded at the cpu schedule's earlier 2000 iterations until rerun at the official 4001
MERGAN_JR = Run("mergan", "jr", overrides=(("train.generator_steps", 2000),))
# recorded at the cpu schedule's earlier 1000 iterations (EWC's generator forgets every class at either)
MERGAN_EWC = Run("mergan", "ewc", overrides=(("train.generator_steps", 1000),))
MERGAN_SFT = Run("mergan", "sft")
# DGM's records pool the test images in A_t (made before eval.accuracy_average; the DGM code's "tasks"
# mean of the classes' accuracies differs by <= 0.07 points at their A_10) until rerun
POOLED = (("eval.accuracy_average", "examples"),)
DGMW = Run("dgm", "dgmw", overrides=ORACLE + POOLED)
# recorded with the cpu schedule's earlier MLP critic (512 -> 256) until rerun with the convolutional one
DGMA = Run("dgm", "dgma", overrides=ORACLE + POOLED + (("dgm.critic", "mlp"), ("model.critic_features", 64)))
# The "-S" rows: RWalk's single-head protocol (5 tasks of 2 classes) with a small episodic memory,
# and the same methods one class per task (the table's own protocol).
EXEMPLARS = (("episodic.per_class", 10),)
EWC_S, SI_S, RWALK_S = (Run(m, tag="s", overrides=EXEMPLARS, protocol="split") for m in ("ewc", "si", "rwalk"))
EWC_S1, SI_S1, RWALK_S1 = (Run(m, tag="s_per_class", overrides=EXEMPLARS) for m in ("ewc", "si", "rwalk"))
ICARL_S, ICARL_S1 = Run("icarl", tag="s", protocol="split"), Run("icarl", tag="s_per_class")
RUNS = {r.name: r for r in (JOINT, SFT, DGR, DGR_COND, MERGAN_RA, MERGAN_JR, MERGAN_EWC, MERGAN_SFT, DGMW, DGMA,
                            EWC_S, SI_S, RWALK_S, EWC_S1, SI_S1, RWALK_S1, ICARL_S, ICARL_S1)}


def _paper(mnist=(None, None), svhn=(None, None), cifar=(None, None), imagenet=(None, None)) -> dict:
  out = {}
  for (dataset, _, ts), values in zip(COLUMNS, (mnist, svhn, cifar, imagenet)):
    out.update({(dataset, t): v for t, v in zip(ts, values) if v is not None})
  return out


MERGAN_T1 = "Wu et al. 2018, Table 1, copied by the seed's table"
MERGAN_OWN = "Wu et al. 2018, Table 1"
RWALK_T = "Chaudhry et al. 2018 (RWalk), as the seed's table quotes them"
ICARL_T = "Rebuffi et al. 2017 (iCaRL), as the seed's table quotes them"


def _single_head(run: Run, label: str) -> tuple:
  return (View(run[0], "A", "single_head_2", f"{label}, 10 real exemplars per class"),
          View(run[1], "A", "real", f"{label}, 10 real exemplars per class, one class per task"))
ROWS = (
    Row("JT", _paper((97.66, 96.92), (85.30, 84.82)), "oracle", MERGAN_T1,
        (View(JOINT, "A", "real", "joint training of the classifier"),)),
    Row("SFT", _paper((19.87, 10.06), (19.35, 10.10)), "oracle", MERGAN_OWN,
        (View(SFT, "A", "real", "sequential fine-tuning of the classifier"),
         View(MERGAN_SFT, "A_oracle", "oracle", "MeRGAN's generator fine-tuned"),
         View(MERGAN_SFT, "A", "real", "MeRGAN's generator fine-tuned, replay classifier")),
        note="the lower bound; a row of MeRGAN's table, not of the seed's"),
    Row("EWC-M", _paper((70.62, 77.03), (39.84, 33.02)), "oracle", MERGAN_T1,
        (View(MERGAN_EWC, "A_oracle", "oracle", "EWC on MeRGAN's generator"),
         View(MERGAN_EWC, "A", "real", "EWC on MeRGAN's generator, replay classifier")),
        note="EWC on the generator"),
    Row("EWC-S", _paper((None, 79.7)), "single_head_2", RWALK_T, _single_head((EWC_S, EWC_S1), "EWC++")),
    Row("PI-S", _paper((None, 78.7)), "single_head_2", RWALK_T, _single_head((SI_S, SI_S1), "SI")),
    Row("RWalk-S", _paper((None, 82.5)), "single_head_2", RWALK_T, _single_head((RWALK_S, RWALK_S1), "RWalk")),
    Row("iCaRL-S", _paper((None, 55.8), imagenet=(29.38, 28.98)), "single_head_2", ICARL_T,
        (View(ICARL_S, "A", "single_head_2", "100 herded exemplars in all, nearest mean"),
         View(ICARL_S1, "A", "real", "100 herded exemplars in all, nearest mean, one class per task")),
        note="ImageNet-50: 5 tasks of 10 classes"),
    Row("DGR", _paper((90.39, 85.40), (61.29, 47.28)), "oracle", MERGAN_T1,
        (View(DGR, "A", "real", "the solver"), View(DGR_COND, "A_oracle", "oracle", "conditional generator"),
         View(DGR_COND, "A", "real", "conditional generator, the solver"))),
    Row("MeRGAN", _paper((98.19, 97.00), (80.90, 66.78)), "oracle", MERGAN_T1,
        (View(MERGAN_RA, "A_oracle", "oracle", "RA"), View(MERGAN_JR, "A_oracle", "oracle", "JR"),
         View(MERGAN_RA, "A", "real", "RA, replay classifier"),
         View(MERGAN_JR, "A", "real", "JR, replay classifier")),
        note="A_5 RA's, A_10 JR's"),
    Row("DGMw", _paper((98.75, 96.46)), "aux", "Ostapenko et al. 2019, Table 1",
        (View(DGMW, "A_best_validation", "aux", "at the best validation, as the paper"),
         View(DGMW, "A", "aux", "last step"), View(DGMW, "A_oracle", "oracle", "last step")),
        note="at the best validation A_t"),
    Row("DGMa", _paper((99.17, 97.92)), "aux", "Ostapenko et al. 2019, Table 1",
        (View(DGMA, "A_best_validation", "aux", "at the best validation, as the paper"),
         View(DGMA, "A", "aux", "last step"), View(DGMA, "A_oracle", "oracle", "last step")),
        note="at the best validation A_t"),
)


def results_dir(schedule: str, num_seeds: int, dataset: str, run: str, root: str = RESULTS) -> str:
  return os.path.join(root, f"{schedule}_{num_seeds}seeds", dataset, run)


def read_results(folder: str) -> Optional[dict]:
  path = os.path.join(folder, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def series(res: dict, score: str) -> list[list]:
  """Each seed's A_t series for ``score`` (``A`` or a score name)."""
  per_seed = res.get("per_seed") or [res]
  return [p["A"] if score == "A" else p.get("scores", {}).get(score, []) for p in per_seed]


def cell(res: Optional[dict], score: str, t: int, available: bool) -> str:
  """``mean ± sd`` (%) of A_t over the run's seeds, or why there is none."""
  if res is None:
    return "–" if available else "needs data"
  if res["completed_tasks"] != len(res["tasks"]):
    return f"incomplete ({res['completed_tasks']}/{len(res['tasks'])})"
  values = [s[t - 1] for s in series(res, score)
            if len(s) >= t and isinstance(s[t - 1], (int, float)) and not isinstance(s[t - 1], bool)]
  if not values or len(values) != len(res.get("seeds", [0])):
    return "–"
  mean, sd = seeds_lib.mean_std([100 * v for v in values])
  return f"{mean:.2f} ± {sd:.2f}" if len(values) > 1 else f"{mean:.2f}"


def config_of(run: Run, dataset: str, schedule: str, num_seeds: int):
  """The config ``run`` has today on ``dataset`` at ``schedule`` with ``num_seeds`` seeds."""
  module, _, arg = run.config_arg(dataset, schedule).partition(":")
  config = importlib.import_module(module[:-3].replace("/", ".")).get_config(arg)
  config.num_seeds = num_seeds
  for key, value in run.overrides:
    section, name = key.rsplit(".", 1)
    config[section][name] = value
  return config


def stale(res: dict, run: Run, dataset: str, schedule: str, num_seeds: int) -> list[str]:
  """The keys in which a recorded run's config differs from the one its command gives today
  (keys added to gmcl since count as equal at the value that reproduces the older code)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from gmcl import loop  # pylint: disable=import-outside-toplevel
  from gmcl.config import oracle_seed  # pylint: disable=import-outside-toplevel
  today = config_of(run, dataset, schedule, num_seeds)
  saved = res.get("config", {})
  differs = loop.config_differences(saved, today)
  if saved.get("eval") and "seed" in saved and oracle_seed(ml_collections.ConfigDict(saved)) == oracle_seed(today):
    # eval.oracle_seed=0 and -1 (config.seed) with seed 0 train the same oracle (merge_seeds' runs pin it)
    differs = [d for d in differs if not d.startswith("eval.oracle_seed:")]
  return differs


def _default_available(dataset: str) -> bool:
  from gmcl.data.sources import DATASETS, is_prepared  # pylint: disable=import-outside-toplevel
  if dataset not in DATASETS:
    return False
  try:
    return is_prepared(dataset)
  except Exception:  # pylint: disable=broad-except
    return False


def _timings(folder: str) -> dict:
  path = os.path.join(folder, "timings.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def table(schedule: str, num_seeds: int, root: str = RESULTS,
          available: Callable[[str], bool] = _default_available) -> str:
  """The table in Markdown, its protocols, and each gmcl run's command, machine and wall time."""
  avail = {d: available(d) for d, _, _ in COLUMNS}
  heads = [f"{label} A_{t}" for _, label, ts in COLUMNS for t in ts]
  lines = ["| row | protocol | " + " | ".join(heads) + " |", "|---|---" + "|---" * len(heads) + "|"]
  found = {}
  for row in ROWS:
    paper = [f"{row.paper[(d, t)]:.2f}" if (d, t) in row.paper else "–" for d, _, ts in COLUMNS for t in ts]
    note = f" ({row.note})" if row.note else ""
    lines.append(f"| **{row.label}**, paper{note} | {row.protocol} | " + " | ".join(paper) + " |")
    for v in row.views:
      cells = []
      for d, _, ts in COLUMNS:
        folder = results_dir(schedule, num_seeds, d, v.run.name, root)
        res = read_results(folder)
        if res is not None:
          found[(d, v.run.name)] = (folder, res)
        cells += [cell(res, v.score, t // v.run.classes_per_task, avail[d])
                  if t % v.run.classes_per_task == 0 else "n/a" for t in ts]
      label = f"gmcl `{v.run.name}`" + (f" ({v.label})" if v.label else "")
      lines.append(f"| {label} | {v.protocol} | " + " | ".join(cells) + " |")
    if row.missing:
      lines.append(f"| gmcl: {row.missing} | | " + " | ".join("–" for _ in heads) + " |")
  machines = sorted({_timings(folder).get("machine", "machine not recorded") for folder, _ in found.values()})
  seeds = "one seed" if num_seeds == 1 else f"mean ± sd over {num_seeds} seeds"
  out = [f"Schedule `{schedule}`; gmcl's figures: {seeds} (sample sd), in %. "
         + (f"Machine: {'; '.join(machines)}. " if machines else "")
         + "One seed's figures differ between CPU types by several points: compare runs of one machine "
         "type, and figures of one protocol.", "", *lines, "", "Protocols:", ""]
  out += [f"- `{k}`: {text}." for k, text in PROTOCOLS.items()]
  sources = {}
  for r in ROWS:
    if r.paper:
      sources.setdefault(r.source, []).append(r.label)
  out += ["", "Paper figures: " + "; ".join(f"{', '.join(labels)}: {src}" for src, labels in sources.items())
          + "."]
  if found:
    out += ["", "gmcl's runs (`python -m experiments.main --config CONFIG --config.num_seeds=S --workdir W`):", "",
            "| run | dataset | CONFIG | seeds | wall time | machine |", "|---|---|---|---|---|---|"]
    for (d, name), (folder, res) in sorted(found.items()):  # every folder is a RUNS name
      t = _timings(folder)
      wall = f"{t['wall_seconds'] / 60:.0f} min" if "wall_seconds" in t else "–"
      differs = stale(res, RUNS[name], d, schedule, num_seeds)
      if differs:
        out.append(f"| `{name}` | {d} | **stale**: recorded with another config than today's "
                   f"(`{'`, `'.join(x.split(':')[0] for x in differs)}`) | | | |")
        continue
      out.append(f"| `{name}` | {d} | `{RUNS[name].config_arg(d, schedule)}{RUNS[name].flags()}` | "
                 f"{', '.join(map(str, res.get('seeds', [res.get('seed')])))} | {wall} | "
                 f"{t.get('machine', '–')} |")
  return "\n".join(out) + "\n"


def plot_curves(out: str, schedule: str, num_seeds: int, root: str = RESULTS) -> list[str]:
  """``OUT/DATASET_PROTOCOL.png``: every recorded view's A_t curve (mean ± sd band over seeds) of
  one dataset under one protocol, so that only like is drawn with like; returns the files."""
  from gmcl import plots  # pylint: disable=import-outside-toplevel
  groups = {}
  for row in ROWS:
    for v in row.views:
      for d, _, _ in COLUMNS:
        res = read_results(results_dir(schedule, num_seeds, d, v.run.name, root))
        if res is None or res["completed_tasks"] != len(res["tasks"]):
          continue
        runs = [s for s in series(res, v.score) if s and all(isinstance(x, (int, float)) for x in s)]
        if not runs:
          continue
        t = min(map(len, runs))
        mean, std = seeds_lib.mean_std_series([s[:t] for s in runs])
        label = f"{v.run.name}" + (f" ({v.label})" if v.label else "")
        groups.setdefault((d, v.protocol), {})[label] = (mean, std if len(runs) > 1 else None)
  os.makedirs(out, exist_ok=True)
  written = []
  for (d, protocol), curves in sorted(groups.items()):
    path = os.path.join(out, f"{d}_{protocol}.png")
    xlabel = " (A_t after task t of 2 classes)" if protocol == "single_head_2" else ""
    plots.plot_curves(curves, path, f"{d}, protocol {protocol}{xlabel}: schedule {schedule}, "
                      f"{num_seeds} seeds")
    written.append(path)
  return written


def replace_section(text: str, section: str, begin: str = BEGIN, end: str = END) -> str:
  """``text`` with what lies between the markers replaced by ``section``."""
  if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
    raise ValueError(f"The file needs exactly one {begin} and, after it, one {end} line.")
  head, rest = text.split(begin)
  _, tail = rest.split(end)
  return f"{head}{begin}\n{section}{end}{tail}"


def section(text: str, begin: str = BEGIN, end: str = END) -> str:
  """What lies between the markers of ``text``."""
  return text.split(begin, 1)[1].split(end, 1)[0].lstrip("\n")


def copy_results(workdir: str, dest: str, overwrite: bool = False) -> None:
  """Copies a finished run's results.json and timings.json into ``dest``; a different copy
  already there is refused unless ``overwrite``."""
  os.makedirs(dest, exist_ok=True)
  target = os.path.join(dest, "results.json")
  if os.path.exists(target) and not overwrite and not filecmp.cmp(
      target, os.path.join(workdir, "results.json"), shallow=False):
    raise FileExistsError(f"{target} holds other results than {workdir}'s; pass --overwrite to replace it.")
  for name in ("results.json", "timings.json"):
    src = os.path.join(workdir, name)
    if os.path.exists(src):
      tmp = os.path.join(dest, f".{name}.tmp")
      shutil.copyfile(src, tmp)
      os.replace(tmp, os.path.join(dest, name))


def run_missing(names, datasets, schedule: str, num_seeds: int, workdirs: str, root: str = RESULTS,
                overwrite: bool = False, available: Callable[[str], bool] = _default_available,
                log=print, load_data=None) -> list[str]:
  """Trains each (run, dataset) without results in ``root`` (one data load per data setting);
  returns the folders written."""
  from gmcl import loop  # pylint: disable=import-outside-toplevel
  from gmcl.data import build  # pylint: disable=import-outside-toplevel
  load_data, cache, written = load_data or build.load_data, {}, []
  for d in datasets:
    if not available(d):
      log(f"{d}: needs data (not prepared on this machine); skipped")
      continue
    for name in names:
      dest = results_dir(schedule, num_seeds, d, name, root)
      res = read_results(dest)
      if res is not None and res["completed_tasks"] == len(res["tasks"]) and not overwrite:
        continue
      run = RUNS[name]
      config = config_of(run, d, schedule, num_seeds)
      workdir = os.path.join(workdirs, f"{schedule}_{num_seeds}seeds", d, name)
      try:
        finished = loop.finished_run_of(config, workdir)
      except ValueError as e:
        raise SystemExit(f"{e} Move it away or choose other --workdirs.") from None
      if finished is None:
        settings = build.data_settings(config)
        if settings not in cache:
          cache[settings] = load_data(config)
        try:
          loop.run(config, workdir, data=cache[settings], progress=False, log=log)
        finally:
          loop.release_compiled()
      else:  # finished earlier (a copy of a sweep's run, or killed before recording): read, not rerun
        log(f"{workdir}: finished earlier; recorded without training")
      copy_results(workdir, dest, overwrite)
      written.append(dest)
  return written


FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a program: importing defines none)."""
  flags.DEFINE_string("schedule", "cpu", "The config argument of the runs (cpu, demo, smoke, ...).")
  flags.DEFINE_integer("num_seeds", 3, "Seeds per run (config.num_seeds).", lower_bound=1)
  flags.DEFINE_bool("run", False, "Train the runs missing from results/ first.")
  flags.DEFINE_list("runs", list(RUNS), f"With --run: which runs ({list(RUNS)}).")
  flags.DEFINE_list("datasets", ["mnist"], "With --run: which datasets.")
  flags.DEFINE_string("workdirs", "runs/paper_table", "With --run: where the runs' workdirs go.")
  flags.DEFINE_string("results", RESULTS, "The folder of recorded results.")
  flags.DEFINE_bool("overwrite", False, "Replace recorded results that differ.")
  flags.DEFINE_string("readme", None, "Rewrite this file's section between the paper_table markers.")
  flags.DEFINE_string("plots", None, "Draw each dataset's A_t curves per protocol into this folder.")


def main(argv):
  del argv
  bad = [n for n in FLAGS.runs if n not in RUNS]
  if bad:
    raise app.UsageError(f"Unknown run(s) {bad}; valid: {list(RUNS)}.")
  known = [d for d, _, _ in COLUMNS]
  bad = [d for d in FLAGS.datasets if d not in known]
  if bad:
    raise app.UsageError(f"Unknown dataset(s) {bad}; valid: {known}.")
  if FLAGS.run:
    run_missing(FLAGS.runs, FLAGS.datasets, FLAGS.schedule, FLAGS.num_seeds, FLAGS.workdirs,
                FLAGS.results, FLAGS.overwrite)
  text = table(FLAGS.schedule, FLAGS.num_seeds, FLAGS.results)
  if FLAGS.readme:
    with open(FLAGS.readme) as f:
      old = f.read()
    # The README's "needs data" means: not prepared where its runs were made (README_DATA), so
    # that the section does not depend on the datasets of the machine that regenerates it.
    new = replace_section(old, table(FLAGS.schedule, FLAGS.num_seeds, FLAGS.results,
                                     available=lambda d: d in README_DATA))
    tmp = FLAGS.readme + ".tmp"
    with open(tmp, "w") as f:
      f.write(new)
    os.replace(tmp, FLAGS.readme)
  if FLAGS.plots:
    for path in plot_curves(FLAGS.plots, FLAGS.schedule, FLAGS.num_seeds, FLAGS.results):
      sys.stdout.write(f"written: {path}\n")
  sys.stdout.write(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
