"""Kill-and-resume sweep: stops smoke runs at many points, each in its own process, resumes each in
a new process, and checks every resumed results.json against an uninterrupted run's, byte for byte.
The settings are each config's defaults (``smoke``), with a checkpoint every 5 steps.

  python -m benchmarks.kill_resume                                  # dgr, mergan/ra, mergan/jr, dgm
  python -m benchmarks.kill_resume --runs dgr,dgm --points 10 --sigkill 3
  python -m benchmarks.kill_resume --runs dgr@3,dgm@2      # 3 seeds stacked; DGM's 2 one after another

One JSON line per run: ``stop_points`` (``--stop_after_steps=k`` in a fresh process, for k spread
evenly over the whole run, so across tasks), ``identical`` (resumed runs byte-identical to the
uninterrupted one), and with ``--sigkill N`` N more runs killed by SIGKILL at a random moment
(once its checkpoints reach a random step, after a random delay of up to a second: mid-run, and
now and then during a checkpoint write). Every run uses its own process, as a user's rerun does:
compiled programs and compiler choices cannot carry over from the interrupted process.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

STOPPED = 3  # experiments.main's exit status for --stop_after_steps


def parse_run(run: str) -> tuple[str, str, int]:
  """``method[/variant][@seeds]`` -> (method, variant, number of seeds)."""
  run, _, count = run.partition("@")
  method, _, variant = run.partition("/")
  return method, variant, int(count or 1)


def command(run: str, workdir: str, extra=()) -> list:
  method, variant, num_seeds = parse_run(run)
  arg = "smoke" + (f",variant={variant}" if variant else "")
  return [sys.executable, "-m", "experiments.main", f"--config=experiments/configs/{method}.py:{arg}",
          "--noprogress", "--config.checkpoint.every_steps=5", f"--workdir={workdir}",
          *([f"--config.num_seeds={num_seeds}"] if num_seeds > 1 else []), *extra]


def total_steps(run: str) -> int:
  """Training steps of the whole run (every task's phases; every seed's when they run in turn)."""
  import importlib  # pylint: disable=import-outside-toplevel
  from gmcl.config import sequence_length  # pylint: disable=import-outside-toplevel
  from gmcl.data.sources import DATASETS  # pylint: disable=import-outside-toplevel
  from gmcl.methods import build_method  # pylint: disable=import-outside-toplevel
  method, variant, num_seeds = parse_run(run)
  c = importlib.import_module(f"experiments.configs.{method}").get_config(
      "smoke" + (f",variant={variant}" if variant else ""))
  info = DATASETS[c.data.dataset]
  size = c.data.pad_to or info.image_shape[0]
  m = build_method(c.method, c, (size, size, info.image_shape[2]), info.num_classes)
  in_turn = 1 if m.seeds_share_shapes else num_seeds
  return in_turn * sequence_length(c) * sum(p.num_steps for p in m.phases())


def _newest_checkpoint(workdir: str) -> int:
  folder = os.path.join(workdir, "checkpoints")
  try:
    return max((int(n) for n in os.listdir(folder) if n.isdigit()), default=-1)
  except FileNotFoundError:
    return -1


def read(path):
  with open(path, "rb") as f:
    return f.read()


def sweep(run: str, points: int, kills: int, root: str, seed: int = 0) -> dict:
  name = run.replace("/", "-").replace("@", "_seeds")
  whole = os.path.join(root, f"{name}_whole")
  t0 = time.time()
  subprocess.run(command(run, whole), check=True, capture_output=True)
  duration = time.time() - t0
  reference = read(os.path.join(whole, "results.json"))
  total = total_steps(run)
  stops = sorted({max(1, round((i + 0.5) * total / points)) for i in range(points)})
  same, differ = 0, []
  for k in stops:
    workdir = os.path.join(root, f"{name}_stop{k}")
    first = subprocess.run(command(run, workdir, [f"--stop_after_steps={k}"]), capture_output=True)
    if first.returncode not in (0, STOPPED):
      raise SystemExit(f"{run} stopped at {k} failed ({first.returncode}):\n{first.stderr.decode()[-2000:]}")
    subprocess.run(command(run, workdir), check=True, capture_output=True)
    ok = read(os.path.join(workdir, "results.json")) == reference
    same += ok
    if not ok:
      differ.append(k)
  rng, killed, same_killed = random.Random(seed), 0, 0
  for i in range(kills):
    workdir = os.path.join(root, f"{name}_kill{i}")
    # Killed once its checkpoints reach a random step (so mid-run, in any task), after a random
    # delay of up to a second (so now and then during the next checkpoint's write).
    target, delay = rng.randrange(5, max(6, total - 5)), rng.uniform(0.0, 1.0)
    proc = subprocess.Popen(command(run, workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and _newest_checkpoint(workdir) < target:
      time.sleep(0.1)
    time.sleep(delay)
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      killed += 1
    proc.wait()
    done = os.path.exists(os.path.join(workdir, "results.json")) and \
        json.loads(read(os.path.join(workdir, "results.json")))["completed_tasks"] == \
        len(json.loads(reference)["tasks"])
    if not done:
      subprocess.run(command(run, workdir), check=True, capture_output=True)
    same_killed += read(os.path.join(workdir, "results.json")) == reference
  out = {"run": run, "steps_per_run": total, "stop_points": len(stops), "identical": same,
         "differ_at": differ, "seconds_per_run": round(duration, 1)}
  if kills:
    out.update(sigkill_runs=kills, killed_mid_run=killed, sigkill_identical=same_killed)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--runs", default="dgr,mergan/ra,mergan/jr,dgm", help="method or method/variant, comma-separated")
  p.add_argument("--points", type=int, default=10, help="stop points per run, spread over its steps")
  p.add_argument("--sigkill", type=int, default=0, help="runs killed with SIGKILL at random moments")
  a = p.parse_args(argv)
  bad = 0
  with tempfile.TemporaryDirectory() as root:
    for run in a.runs.split(","):
      row = sweep(run, a.points, a.sigkill, root)
      bad += row["identical"] < row["stop_points"] or row.get("sigkill_identical", 0) < a.sigkill
      print(json.dumps(row), flush=True)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
