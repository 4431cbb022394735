"""First call of a process with and without the persistent compilation cache (gmcl.compile_cache).

  python -m benchmarks.compile_cache                       # every case, 3 rounds
  python -m benchmarks.compile_cache --cases mergan/ra --rounds 5

Each round, for each case, starts three fresh processes in turn on an empty cache folder:

* ``cold``: the cache on, the folder empty (what a first run pays: compile, then write);
* ``warm``: the same folder, now filled (a second run, a resumed run, the next test process);
* ``cold_xla``, ``warm_xla``: the same two on a second empty folder with ``compile.programs=False``:
  XLA's executables read back, the chunk traced and lowered again (what the cache left before
  gmcl.program_cache; a folder of its own, as the exported program is another module to XLA);
* ``off``: ``compile.cache_dir=""`` (what every process paid before the cache).

Before the rounds, one discarded process per case fills this machine's convolution plan cache
(gmcl.ops.conv_tune) where a case measures its plans, so that no timed process includes that measurement.

A process builds the case's state, then times its first call: tracing, lowering, compiling or
reading back, and running the program once (``first_call_s``); ``process_s`` is the whole process
from its imports of gmcl to the end of that call (building the state compiles small programs too).
Cases (the benchmark suite's runners): ``mergan/ra`` (one MeRGAN RA iteration, official
architecture, batch 64, after one task),
``dgm/dgmw`` (one DGM iteration at task 2), ``cpu/mergan`` (the ``cpu`` schedule's MLP MeRGAN
step). One JSON line per process and one summary line per case: medians over rounds and
``warm / cold`` and ``warm / off``, the fraction the cache leaves of a first call (the goal: at
most 0.25).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CASES = ("mergan/ra", "dgm/dgmw", "cpu/mergan")


def _runner(case: str):
  from benchmarks import suite  # pylint: disable=import-outside-toplevel
  if case == "mergan/ra":
    return lambda: suite.mergan_runner("ra", "auto")
  if case == "dgm/dgmw":
    return lambda: suite.dgm_runner("dgmw", "auto")
  if case == "cpu/mergan":
    return lambda: suite.cpu_schedule_runner("mergan", 1)
  raise ValueError(f"case {case!r}; valid: {', '.join(CASES)}")


def child(case: str, setting: str, min_compile_secs: float, programs: bool = True) -> dict:
  """In a fresh process: enable the cache (``setting``), build the case, time its first call."""
  t0 = time.perf_counter()
  from gmcl import compile_cache, xla  # pylint: disable=import-outside-toplevel
  compile_cache.enable(setting, min_compile_secs, programs=programs)
  runner = _runner(case)()  # StepRunner times its own first call
  return {"case": case, "first_call_s": round(runner.first_call_s, 3),
          "process_s": round(time.perf_counter() - t0, 3), "cache": compile_cache.stats(),
          "machine": xla.machine_description()}


def _spawn(case: str, setting: str, min_compile_secs: float, programs: bool = True) -> dict:
  proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_cache", "--child", case, "--cache", setting,
                         "--min_compile_secs", str(min_compile_secs)] + ([] if programs else ["--no_programs"]),
                        capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"{case} ({setting or 'off'}) failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", nargs="*", default=list(CASES), help=f"of {', '.join(CASES)}")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--min_compile_secs", type=float, default=0.0,
                 help="compile.min_compile_secs (gmcl's default 0: every program is written)")
  p.add_argument("--child", help=argparse.SUPPRESS)
  p.add_argument("--cache", default="", help=argparse.SUPPRESS)
  p.add_argument("--no_programs", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.child:
    print(json.dumps(child(a.child, a.cache, a.min_compile_secs, not a.no_programs)), flush=True)
    return
  for case in a.cases:
    _runner(case)  # a bad name fails before any process starts
  if a.rounds < 1:
    raise SystemExit(f"--rounds={a.rounds}; valid: >= 1")
  kinds = ("cold", "warm", "cold_xla", "warm_xla", "off")
  times = {c: {f"{m}_{k}": [] for m in ("first_call_s", "process_s") for k in kinds}
           for c in a.cases}
  machine = None
  # model.conv_plan="measured" times the convolutions of shapes this machine has not seen (once, kept in
  # its conv plan cache, gmcl.ops.conv_tune): one discarded process per case first, so that no
  # timed process includes that measurement.
  for case in a.cases:
    print(json.dumps({"warmup": case, **_spawn(case, "", a.min_compile_secs)}), flush=True)
  for r in range(a.rounds):
    for case in a.cases:
      folder = tempfile.mkdtemp(prefix="gmcl-bench-cache-")
      xla_only = tempfile.mkdtemp(prefix="gmcl-bench-cache-")
      try:
        for kind, setting in (("cold", folder), ("warm", folder), ("cold_xla", xla_only),
                              ("warm_xla", xla_only), ("off", "")):
          row = _spawn(case, setting, a.min_compile_secs, programs=not kind.endswith("_xla"))
          machine = row.pop("machine")
          for m in ("first_call_s", "process_s"):
            times[case][f"{m}_{kind}"].append(row[m])
          print(json.dumps({"round": r + 1, "kind": kind, **row}), flush=True)
      finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(xla_only, ignore_errors=True)
  for case, t in times.items():
    med = {k: statistics.median(v) for k, v in t.items()}
    print(json.dumps({"case": case, "rounds": a.rounds, "min_compile_secs": a.min_compile_secs, "machine": machine,
                      **{k: round(v, 3) for k, v in med.items()},
                      "first_call_warm_over_cold": round(med["first_call_s_warm"] / med["first_call_s_cold"], 3),
                      "first_call_warm_over_off": round(med["first_call_s_warm"] / med["first_call_s_off"], 3),
                      "first_call_warm_xla_over_cold_xla": round(med["first_call_s_warm_xla"]
                                                                 / med["first_call_s_cold_xla"], 3),
                      "process_warm_over_off": round(med["process_s_warm"] / med["process_s_off"], 3)}), flush=True)


if __name__ == "__main__":
  main()
