"""Per-seed throughput of S seeds stacked in one program (``config.num_seeds``, gmcl.seeds) against
one seed's program, which S separate runs would each use.

  python -m benchmarks.seeds                               # every case, S = 1, 2, 4, 8
  python -m benchmarks.seeds --cases "dgr generator" --seeds 1,4 --axes vmap --rounds 3

Cases: DGR's ``cpu``-schedule generator iteration and solver step (MLP GAN, at task 2, replaying),
MeRGAN RA's ``cpu``-schedule iteration (MLP GAN) and the official MeRGAN RA iteration (the paper's
convolutional networks, batch 64, 32x32x1). For each case, S and seed axis (``train.seed_axis``:
``vmap`` batches the seeds, ``unroll`` runs them in turn inside the program), one compiled chunk of
one step trains all S seeds; S = 1 is the single-seed program itself. Rounds alternate over every
runner in one series, so a load change on the machine hits them alike. Printed per row: median
seconds per call, per-seed iterations/s and the ratio to S = 1 ("speed-up per seed": > 1 means the
stacked program trains each seed faster than S separate runs one after another).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks.suite import _method_after_one_task, machine
from gmcl import seeds as seeds_lib
from gmcl.methods.base import run_chunk


def _case(name: str):
  """(step, state, data) of one case at the start of task 2."""
  from experiments.configs import dgr, mergan  # pylint: disable=import-outside-toplevel
  if name.startswith("dgr"):
    c = dgr.get_config("cpu")
  elif name == "mergan/ra cpu":
    c = mergan.get_config("variant=ra,cpu")
  else:  # the official architecture
    c = mergan.get_config("variant=ra")
  if name.startswith("mergan"):
    c.mergan.oracle = False
  c.data.pad_to = 32
  method, state, data = _method_after_one_task(c.method, c)
  phases = {p.name: p.step for p in method.phases()}
  if name.startswith("dgr"):
    return phases[name.split()[1]], state, data
  return method.gan_step, state, data


CASES = ("dgr generator", "dgr solver", "mergan/ra cpu", "mergan/ra official")


class SeedRunner:
  """One step of ``count`` seeds per call: the single-seed program (count 1) or the stacked one."""

  def __init__(self, step, state, data, count: int, axis: str = "vmap"):
    self.step, self.data, self.count, self.i = step, data, count, 0
    keys = [jax.random.PRNGKey(10 + s) for s in range(count)]
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    if count == 1:
      self.state, self.key, self.axis = copy(state), keys[0], ""
    else:
      self.state, self.key, self.axis = seeds_lib.stack([copy(state) for _ in range(count)]), jnp.stack(keys), axis
    t0 = time.perf_counter()
    self()
    self.first_call_s = time.perf_counter() - t0

  def __call__(self):
    self.state, m = run_chunk(self.step, self.state, self.data, self.key, self.i, 1, seeds=self.axis)
    self.i += 1
    jax.block_until_ready(m)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", nargs="*", default=list(CASES), help=f"of {list(CASES)}")
  p.add_argument("--seeds", default="1,2,4,8", help="seed counts S, comma-separated (1 is the reference)")
  p.add_argument("--axes", default="vmap,unroll", help="seed axes for S > 1, comma-separated")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--calls", type=int, default=5, help="calls per round and runner")
  a = p.parse_args()
  counts = sorted({int(s) for s in a.seeds.split(",")} | {1})
  axes = a.axes.split(",")
  for case in a.cases:
    if case not in CASES:
      raise SystemExit(f"Unknown case {case!r}; valid: {list(CASES)}.")
  runners = {}
  for case in a.cases:
    step, state, data = _case(case)
    for s in counts:
      for axis in (["-"] if s == 1 else axes):
        runners[(case, s, axis)] = SeedRunner(step, state, data, s, axis)
  times = {k: [] for k in runners}
  for _ in range(a.rounds):
    for key, runner in runners.items():  # alternating: every runner once per round
      t0 = time.perf_counter()
      for _ in range(a.calls):
        runner()
      times[key].append((time.perf_counter() - t0) / a.calls)
  print(f"Machine: {machine()}. {a.rounds} rounds x {a.calls} calls, alternating; median per call.")
  print("| case | S | seed axis | s per call | per-seed it/s | speed-up per seed vs S=1 | first call s |")
  print("|---|---|---|---|---|---|---|")
  for case, s, axis in runners:
    one, t = statistics.median(times[(case, 1, "-")]), statistics.median(times[(case, s, axis)])
    print(f"| {case} | {s} | {axis} | {t:.4f} | {s / t:.2f} | {s * one / t:.2f}x | "
          f"{runners[(case, s, axis)].first_call_s:.1f} |")


if __name__ == "__main__":
  main()
