"""Where one MeRGAN iteration's time goes on XLA:CPU: milliseconds per compiled operation.

  python -m benchmarks.profile_ops                          # RA, conv_plan auto, xla_cpu_fusions auto
  python -m benchmarks.profile_ops --plan native --fusions xla --top 20

Runs the iteration (official architecture, batch 64, at task 2 with a snapshot) under
``jax.profiler`` with XLA:CPU's per-operation trace events switched on, and prints one
line per operation signature (the HLO instruction's shape and its convolution or dot, if
any), summed over the traced iterations and divided by their number. Operation times are
thread time: independent operations may overlap, so they add up to more than the wall
time. This is how the slow second-order weight gradient behind ``cpu_plan``'s
16x16 -> 8x8 rule was found (BENCHMARKS.md).
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

# pylint: disable=wrong-import-position
import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp

from benchmarks.suite import mergan_runner
from gmcl.methods.base import _compiled_chunk
from gmcl.parallel import Parallel


def hlo_signatures(hlo_text: str) -> dict[str, str]:
  """Instruction name -> "opcode shape [the convolution or dot it fuses]" of a compiled module."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?(\S+) .*\{$", line)
    if head and not line.startswith(" "):
      current = head.group(1).lstrip("%")
      bodies[current] = []
    elif current is not None:
      bodies[current].append(line)
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) (\w+)\((.*?)\)(.*)", line)
    if not m:
      continue
    name, shape, opcode, _, rest = m.groups()
    core = ""
    strip = lambda l: re.sub(r"%\S+", "", re.sub(r", metadata.*|, backend_config.*", "", l))
    called = re.search(r"calls=%([\w.\-]+)", rest)
    if called and called.group(1) in bodies:
      core = " | ".join(strip(l.split("=", 1)[1]) for l in bodies[called.group(1)]
                        if re.search(r" (convolution|dot)\(", l))
    elif opcode in ("convolution", "dot"):
      core = re.sub(r", metadata.*|, backend_config.*", "", rest)
    out[name] = f"{opcode} {shape} {core.strip()}".strip()
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", choices=["ra", "jr"], default="ra")
  p.add_argument("--plan", choices=["auto", "native", "cpu"], default="auto")
  p.add_argument("--fusions", choices=["auto", "xla", "dot", "none"], default="auto")
  p.add_argument("--iterations", type=int, default=2)
  p.add_argument("--top", type=int, default=25)
  a = p.parse_args()
  runner = mergan_runner(a.variant, a.plan, a.fusions)  # compiles and runs one iteration
  fn = _compiled_chunk(runner.step, 1, "unroll", Parallel(), a.fusions)
  live, frozen = runner.state.replace(frozen=None), runner.state.frozen
  text = fn.lower(live, frozen, runner.data, runner.key, jnp.asarray(0, jnp.int32)).compile().as_text()
  signatures = hlo_signatures(text)
  t0 = time.perf_counter()
  for _ in range(a.iterations):
    runner()
  wall = (time.perf_counter() - t0) / a.iterations
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(a.iterations):
        runner()
    events = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in signatures:
      total[signatures[e["name"]]] += e["dur"] / 1e3 / a.iterations
      count[signatures[e["name"]]] += 1
  print(json.dumps({"variant": a.variant, "plan": a.plan, "fusions": a.fusions,
                    "wall_ms": round(1e3 * wall, 1), "op_ms": round(sum(total.values()), 1),
                    "options": getattr(fn, "options", {})}))
  for sig, ms in total.most_common(a.top):
    print(f"{ms:8.1f} ms  x{count[sig] // a.iterations:<4d} {sig[:220]}")


if __name__ == "__main__":
  main()
