"""The sha256 of every method's and variant's smoke results.json, each run in a fresh process.

  python -m benchmarks.smoke_results --out runs/smoke_results            # prints JSON lines
  python -m benchmarks.smoke_results --out runs/smoke_results --compare before.jsonl
  python -m benchmarks.smoke_results --out runs/smoke_results --compare benchmarks/smoke_results_amd_epyc.jsonl

A refactoring that must not change behaviour is checked with it: run it before and after, on the
same machine, and compare (that is the reliable way). ``benchmarks/smoke_results_amd_epyc.jsonl``
holds the first 22 runs' list of the code at 67eeeb6 on a 2-core AMD EPYC (CPU family 26, as lscpu
reports it) with the pinned versions. It is out of date in two ways: on CPU family 25 ``ogm/project``
differs (its SVD takes another LAPACK path; the other 21 matched), and since XLA:CPU's options are
chosen per program (gmcl.xla, not by the first program a wrapper compiled) the runs whose task-2
programs convolve where task 1's did not (dgr, the MeRGAN runs) changed by float rounding. Make a
list before a change instead. Each line gives the sha256 of the whole file and of the file without
its ``config`` entry (the results alone: a config that gains or loses sections changes the first
only). Smoke runs take real MNIST (``make data``); one process per run, as a user's fresh command
runs; each run has its own cache folder (MeRGAN's oracle is trained in every run, never read from
an earlier one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

RUNS = (
    ("sft", None), ("joint", None), ("dgr", None), ("hat", None),
    ("mergan", "sft"), ("mergan", "jr"), ("mergan", "ra"),
    ("dgm", "dgmw"), ("dgm", "dgma"),
    *(("lgm", f"{q1}-{q2}") for q1 in ("ra", "hat") for q2 in ("train", "frozen", "prototype", "bridge")),
    ("lsa", "sequential"), ("lsa", "parallel"),
    ("ogm", "lookahead"), ("ogm", "distill"), ("ogm", "project"),
)
# Runs with an override, named method/variant-suffix: the generative memory inside ogm and lsa,
# and DGR's conditional replay.
OVERRIDES = (
    ("dgr", None, "conditional", "--config.model.conditional=True"),
    ("ogm", "distill", "G", "--config.ogm.memory=generator"),
    ("lsa", "sequential", "G", "--config.lsa.replay=generator"),
)


def digests(path: str) -> dict:
  with open(path, "rb") as f:
    raw = f.read()
  results = json.loads(raw)
  results.pop("config", None)
  bare = json.dumps(results, indent=2, sort_keys=True).encode()
  return {"sha256": hashlib.sha256(raw).hexdigest(), "sha256_without_config": hashlib.sha256(bare).hexdigest()}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="folder of the runs' workdirs (one per run)")
  parser.add_argument("--only", nargs="*", default=None, help="run names (method or method/variant)")
  parser.add_argument("--compare", default=None, help="a JSON-lines file of an earlier run of this script")
  args = parser.parse_args(argv)
  earlier = {}
  if args.compare:
    with open(args.compare) as f:
      earlier = {r["run"]: r for r in map(json.loads, filter(str.strip, f))}
  differ = 0
  runs = [(m, v, (m if v is None else f"{m}/{v}"), ()) for m, v in RUNS]
  runs += [(m, v, f"{m}/{suffix}" if v is None else f"{m}/{v}-{suffix}", (flag,))
           for m, v, suffix, flag in OVERRIDES]
  for method, variant, name, flags in runs:
    if args.only and name not in args.only:
      continue
    workdir = os.path.join(args.out, name.replace("/", "-"))
    if os.path.exists(os.path.join(workdir, "results.json")):
      raise SystemExit(f"{workdir} holds a results.json already; choose another --out.")
    arg = "smoke" if variant is None else f"smoke,variant={variant}"
    cmd = [sys.executable, "-m", "experiments.main", f"--config=experiments/configs/{method}.py:{arg}",
           f"--workdir={workdir}", "--noprogress", *flags]
    start = time.time()
    env = dict(os.environ, GMCL_CACHE_DIR=os.path.join(workdir, "cache"))  # MeRGAN's oracle: trained
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
      raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    row = {"run": name, **digests(os.path.join(workdir, "results.json")),
           "seconds": round(time.time() - start, 1)}
    if name in earlier:
      row["same_bytes"] = row["sha256"] == earlier[name]["sha256"]
      row["same_results"] = row["sha256_without_config"] == earlier[name]["sha256_without_config"]
      differ += not row["same_results"]
    print(json.dumps(row), flush=True)
  return 1 if differ else 0


if __name__ == "__main__":
  sys.exit(main())
