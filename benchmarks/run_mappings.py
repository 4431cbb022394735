"""Memory mappings one process holds after consecutive short runs, with and without
``gmcl.loop.release_compiled`` between them. One JSON line per run.

  python -m benchmarks.run_mappings                       # lgm/hat-frozen, 3 runs of 3 tasks, kept
  python -m benchmarks.run_mappings --release             # the same, released after each run
  python -m benchmarks.run_mappings --method dgm/dgmw --runs 5

Each XLA:CPU executable holds its own mappings; Linux caps them per process (vm.max_map_count,
65530 by default), and LLVM fails with "Cannot allocate memory" past it. Linux only (reads
/proc/self/maps). Runs use the ``demo`` schedule with ``--steps`` solver steps per task.
"""

import argparse
import gc
import json
import sys
import tempfile
import time

from experiments import compare
from gmcl import loop
from gmcl.data.build import load_data


def limit() -> int:
  with open("/proc/sys/vm/max_map_count") as f:
    return int(f.read())


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--method", default="lgm/hat-frozen", choices=list(compare.METHODS))
  p.add_argument("--benchmark", default="per_class_mnist", choices=list(compare.BENCHMARKS))
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--tasks", type=int, default=3)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--release", action="store_true")
  args = p.parse_args()
  if loop.memory_mappings() is None:
    sys.exit("run_mappings reads /proc/self/maps: Linux only.")
  config = compare.build_config(args.method, args.benchmark, "demo", max_tasks=args.tasks)
  config.train.solver_steps = args.steps
  config.checkpoint.enabled = False
  data = load_data(config)
  print(json.dumps({"run": 0, "mappings": loop.memory_mappings()}), flush=True)
  for i in range(1, args.runs + 1):
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
      loop.run(config, workdir, data=data, progress=False, log=lambda s: None)
    if args.release:
      loop.release_compiled()
    gc.collect()
    print(json.dumps({"run": i, "method": args.method, "release": args.release,
                      "mappings": loop.memory_mappings(), "limit": limit(),
                      "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
  main()
