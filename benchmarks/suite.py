"""The benchmark suite: one JSON line per case, and BENCHMARKS.md with --write.

  python -m benchmarks.suite                    # every case, PyTorch reference when torch is installed
  python -m benchmarks.suite --write            # ... and rewrite BENCHMARKS.md
  python -m benchmarks.suite --cases mergan     # cases whose name contains "mergan"

Cases (batch 64, 32x32x1, official architectures, after one task so replay and snapshots
are live):

* ``mergan/ra``, ``mergan/jr``: one MeRGAN iteration (5 WGAN-GP + AC-GAN critic steps,
  one generator step with replay alignment / joint retraining), under ``model.conv_plan``
  ``auto`` (gmcl's default, the fixed rule ``cpu_plan``), ``measured`` (plans and library fusions
  measured on this machine, gmcl.ops.conv_tune; the first call includes the measurement when this
  machine's cache lacks the shapes) and ``native`` (plain ``lax.conv``), ``auto`` compiled with XLA's
  default library fusions (``xla-fusions``: gmcl's default ``train.xla_cpu_fusions`` hands only
  matrix multiplies to YNNPACK in programs with convolutions, see gmcl/xla.py) and with none
  (``none-fusions``), and the
  PyTorch eager reference (benchmarks/torch_mergan.py) when the ``bench`` extra is installed;
* ``dgm/dgmw``: one DGM iteration at task 2 (official 4x4 transposed-conv generator with
  weight masks, batch-norm critic), auto and native;
* ``dgr/generator``, ``dgr/solver``: DGR's WGAN-GP iteration (DCGAN) and solver step with replay
  (the solver also with XLA's default library fusions and with none);
* ``eval``: the evaluation pass, DGR's solver predicting 10,000 test images;
* ``fusions``: the ``cpu`` schedule's MeRGAN step (MLP GAN, no convolution) under each
  ``train.xla_cpu_fusions``, the evidence for ``auto`` keeping XLA's defaults there.

All runners of one group are timed side by side: ``--rounds`` rounds, each running every
runner for ``--calls`` calls in turn; the figure is the median over rounds (runners
alternate, so a load change on the machine hits them alike). FLOPs are counted from the
jaxpr of the native-plan program: conv and matmul multiply-adds x 2 that meet real input
(not padding or dilation holes) -- the work every implementation must do. ``peak`` is a
2048x2048 float32 matmul's GFLOP/s on this machine, measured in the same process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gmcl import xla
from gmcl.data.sampling import task_arrays
from gmcl.methods import build_method
from gmcl.methods.base import _compiled_chunk, run_chunk
from gmcl.ops.conv import real_taps
from gmcl.parallel import Parallel

SHAPE = (32, 32, 1)


# -- FLOPs from a jaxpr ---------------------------------------------------------------------------------

def _conv_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  out = eqn.outvars[0].aval.shape
  p = eqn.params
  dn = p["dimension_numbers"]
  taps = 1
  for i in range(len(dn.lhs_spec) - 2):
    taps *= real_taps(lhs[dn.lhs_spec[2 + i]], rhs[dn.rhs_spec[2 + i]], out[dn.out_spec[2 + i]],
                      p["window_strides"][i], p["padding"][i][0], p["lhs_dilation"][i],
                      p["rhs_dilation"][i])
  return 2 * out[dn.out_spec[0]] * out[dn.out_spec[1]] * rhs[dn.rhs_spec[1]] * taps


def _dot_flops(eqn) -> int:
  a, b = (v.aval.shape for v in eqn.invars[:2])
  (ca, cb), (ba, bb) = eqn.params["dimension_numbers"]
  contract = int(np.prod([a[i] for i in ca]))
  batch = int(np.prod([a[i] for i in ba]))
  free_a = int(np.prod([a[i] for i in range(len(a)) if i not in ca and i not in ba]))
  free_b = int(np.prod([b[i] for i in range(len(b)) if i not in cb and i not in bb]))
  return 2 * batch * contract * free_a * free_b


def jaxpr_flops(jaxpr) -> int:
  """Conv and matmul FLOPs of a (closed) jaxpr, sub-jaxprs included (a scan's body counts once)."""
  total = 0
  for eqn in xla.equations(jaxpr):
    if eqn.primitive.name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif eqn.primitive.name == "dot_general":
      total += _dot_flops(eqn)
  return total


def matmul_peak_gflops(n: int = 2048, calls: int = 10) -> float:
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = 0.0
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(calls):
      out = f(a)
    out.block_until_ready()
    best = max(best, 2 * n ** 3 * calls / (time.perf_counter() - t0) / 1e9)
  return best


# -- runners ---------------------------------------------------------------------------------------------

class StepRunner:
  """One compiled chunk of ``k`` steps of a gmcl method, advanced in place; a call runs one chunk
  and counts as ``k`` iterations. ``flops`` (per step) from the program as traced."""

  def __init__(self, step, state, data, key, k: int = 1, mode: str = "unroll", fusions: str = "auto"):
    self.step, self.state, self.data, self.key, self.i = step, state, data, key, 0
    self.k, self.mode, self.fusions = k, mode, fusions
    t0 = time.perf_counter()
    self()
    self.first_call_s = time.perf_counter() - t0

  def __call__(self):
    self.state, m = run_chunk(self.step, self.state, self.data, self.key, self.i, self.k, self.mode,
                              fusions=self.fusions)
    self.i += self.k
    jax.block_until_ready(m)

  def flops(self) -> int:
    live, frozen = self.state.replace(frozen=None), self.state.frozen
    fn = lambda live, frozen, data, key: self.step(live.replace(frozen=frozen), data, key)
    return jaxpr_flops(jax.make_jaxpr(fn)(live, frozen, self.data, self.key).jaxpr)

  def memory_mb(self) -> float:
    """Arguments + outputs + temporaries of the compiled chunk (XLA's memory analysis), MB."""
    live, frozen = self.state.replace(frozen=None), self.state.frozen
    fn = _compiled_chunk(self.step, self.k, self.mode, Parallel(), self.fusions)
    m = fn.lower(live, frozen, self.data, self.key, jnp.asarray(0, jnp.int32)).compile().memory_analysis()
    if m is None:
      return float("nan")
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes) / 2 ** 20


def _task_data(t: int, n: int = 2048):
  rng = np.random.default_rng(t)
  return task_arrays(rng.uniform(-1, 1, (n,) + SHAPE).astype(np.float32), np.full(n, t, np.int32))


def _method_after_one_task(name: str, config, tasks_done: int = 1):
  """(method, state at the start of task ``tasks_done + 1`` with a snapshot of the ones before
  (begun and ended without training), that task's data)."""
  method = build_method(name, config, SHAPE, 10)
  state = method.init(jax.random.PRNGKey(0))
  for t in range(tasks_done):
    state = method.begin_task(state, t, np.arange(10) <= t)
    state = method.end_task(state)
  state = method.begin_task(state, tasks_done, np.arange(10) <= tasks_done)
  return method, state, _task_data(tasks_done)


def cpu_schedule_runner(method: str, tasks_done: int, k: int = 1, mode: str = "unroll",
                        phase: str = "generator", fusions: str = "auto") -> StepRunner:
  """The README's ``cpu`` schedule (MLP GANs) of dgr, mergan (ra) or dgm (dgmw, no growth, with the dense
  generator and MLP critic the suite's figures were recorded with: the schedule's are now the official
  convolutional ones), at task ``tasks_done + 1``."""
  from experiments.configs import dgm, dgr, mergan  # pylint: disable=import-outside-toplevel
  if method == "dgr":
    c = dgr.get_config("cpu")
  elif method == "mergan":
    c = mergan.get_config("variant=ra,cpu")
    c.mergan.oracle = False
  else:
    c = dgm.get_config("variant=dgmw,cpu")
    c.dgm.growth, c.dgm.critic, c.model.critic_features = False, "mlp", 64
    c.dgm.architecture = "dense"
  c.data.pad_to = 32
  m, state, data = _method_after_one_task(method, c, tasks_done)
  step = {p.name: p.step for p in m.phases()}[phase] if method == "dgr" else m.gan_step
  return StepRunner(step, state, data, jax.random.PRNGKey(1), k, mode, fusions)


def mergan_runner(variant: str, plan: str, fusions: str = "auto") -> StepRunner:
  from experiments.configs import mergan  # pylint: disable=import-outside-toplevel
  c = mergan.get_config(f"variant={variant}")
  c.model.conv_plan, c.mergan.oracle = plan, False
  method, state, data = _method_after_one_task("mergan", c)
  return StepRunner(method.gan_step, state, data, jax.random.PRNGKey(1), fusions=fusions)


def dgm_runner(variant: str, plan: str) -> StepRunner:
  from experiments.configs import dgm  # pylint: disable=import-outside-toplevel
  c = dgm.get_config(f"variant={variant}")
  c.model.conv_plan = plan
  method, state, data = _method_after_one_task("dgm", c)
  return StepRunner(method.gan_step, state, data, jax.random.PRNGKey(1))


def dgr_runner(plan: str, phase: str, fusions: str = "auto") -> StepRunner:
  """DGR's default (DCGAN, 32x32) generator iteration or solver step with replay, at task 2."""
  from experiments.configs import dgr  # pylint: disable=import-outside-toplevel
  c = dgr.get_config("")
  c.model.conv_plan, c.data.pad_to = plan, 32
  c.model.generator_features = c.model.critic_features = 32
  method, state, data = _method_after_one_task("dgr", c)
  step = {p.name: p.step for p in method.phases()}[phase]
  return StepRunner(step, state, data, jax.random.PRNGKey(1), fusions=fusions)


class EvalRunner:
  """The evaluation pass: DGR's solver predicting 10,000 images in batches of 1000."""

  def __init__(self):
    from experiments.configs import dgr  # pylint: disable=import-outside-toplevel
    from gmcl.evaluation import predict_labels  # pylint: disable=import-outside-toplevel
    method, state, _ = _method_after_one_task("dgr", dgr.get_config(""))
    self.x = np.random.default_rng(0).uniform(-1, 1, (10000,) + SHAPE).astype(np.float32)
    predict = xla.jit(lambda x: method.predict(state, x))  # as gmcl.loop's evaluation
    self.run = lambda: predict_labels(predict, self.x)
    self._flops = jaxpr_flops(jax.make_jaxpr(lambda x: method.predict(state, x))(self.x[:1000]).jaxpr) * 10
    t0 = time.perf_counter()
    self()
    self.first_call_s = time.perf_counter() - t0

  def __call__(self):
    self.run()

  def flops(self) -> int:
    return self._flops


class TorchRunner:
  def __init__(self, variant: str):
    from benchmarks.torch_mergan import MeRGANIteration  # pylint: disable=import-outside-toplevel
    self.it = MeRGANIteration(variant)
    t0 = time.perf_counter()
    self()
    self.first_call_s = time.perf_counter() - t0

  def __call__(self):
    self.it()


# -- the series -------------------------------------------------------------------------------------------

def time_side_by_side(runners: dict[str, Callable], rounds: int, calls: int) -> dict[str, float]:
  """Median seconds per call of each runner over ``rounds`` rounds in which they alternate."""
  times = {k: [] for k in runners}
  for r in range(rounds):
    order = list(runners) if r % 2 == 0 else list(reversed(runners))
    for k in order:
      t0 = time.perf_counter()
      for _ in range(calls):
        runners[k]()
      times[k].append((time.perf_counter() - t0) / calls)
  return {k: statistics.median(v) for k, v in times.items()}


def groups(torch_ok: bool):
  """Each group: {label: (factory, info)}; a group's runners are timed side by side."""
  g = {}
  for variant in ("ra", "jr"):
    cases = {f"mergan/{variant} gmcl auto": (lambda v=variant: mergan_runner(v, "auto"), {}),
             f"mergan/{variant} gmcl measured": (lambda v=variant: mergan_runner(v, "measured"), {}),
             f"mergan/{variant} gmcl auto xla-fusions":
             (lambda v=variant: mergan_runner(v, "auto", "xla"), {}),
             f"mergan/{variant} gmcl auto none-fusions":
             (lambda v=variant: mergan_runner(v, "auto", "none"), {}),
             f"mergan/{variant} gmcl native": (lambda v=variant: mergan_runner(v, "native"), {})}
    if torch_ok:
      cases[f"mergan/{variant} torch eager"] = (lambda v=variant: TorchRunner(v), {})
    g[f"mergan/{variant}"] = cases
  g["dgm/dgmw"] = {"dgm/dgmw gmcl auto": (lambda: dgm_runner("dgmw", "auto"), {}),
                   "dgm/dgmw gmcl measured": (lambda: dgm_runner("dgmw", "measured"), {}),
                   "dgm/dgmw gmcl native": (lambda: dgm_runner("dgmw", "native"), {})}
  # One group per phase: a 1.4 s generator iteration between solver calls slowed the 25 ms solver step
  # by a third (caches), so like is timed with like.
  for phase in ("generator", "solver"):
    g[f"dgr/{phase}"] = {f"dgr/{phase} gmcl {plan}":
                         (lambda plan=plan, phase=phase: dgr_runner(plan, phase), {})
                         for plan in ("auto", "measured", "native")}
  for f in ("xla", "none"):
    g["dgr/solver"][f"dgr/solver gmcl auto {f}-fusions"] = (lambda f=f: dgr_runner("auto", "solver", f), {})
  g["eval"] = {"eval gmcl": (EvalRunner, {})}
  # K-step chunks on the CPU: unrolled inside one jit (the CPU default) against lax.scan.
  g["chunk"] = {f"chunk dgr/generator mlp K={k} {mode}":
                (lambda k=k, mode=mode: cpu_schedule_runner("dgr", 1, k, mode), {"calls": 1})
                for k, mode in ((1, "unroll"), (8, "unroll"), (8, "scan"))}
  # XLA:CPU's library fusions for a program without convolutions (what "auto" leaves at "xla").
  g["fusions"] = {f"fusions mergan mlp t=5 {f}": (lambda f=f: cpu_schedule_runner("mergan", 4, fusions=f), {})
                  for f in ("xla", "dot", "none")}
  # Cost as tasks accumulate: the step at tasks 1, 5 and 10 (the cpu schedule's networks).
  for method in ("dgr", "mergan", "dgm"):
    g[f"tasks {method}"] = {f"tasks {method} t={t + 1}": (lambda m=method, t=t: cpu_schedule_runner(m, t), {})
                            for t in (0, 4, 9)}
  return g


def machine() -> str:
  return xla.machine_description()


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", nargs="*", default=[], help="substrings of case names to run (default all)")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--calls", type=int, default=3)
  p.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
  p.add_argument("--write", action="store_true", help="rewrite BENCHMARKS.md with this run's table")
  a = p.parse_args()
  torch_ok = False
  if not a.no_torch:
    try:
      import torch  # pylint: disable=import-outside-toplevel
      torch_ok = True
      torch_version = torch.__version__
    except ImportError:
      print(json.dumps({"note": "torch not installed: pip install -e '.[bench]' for the reference"}))
  peak = matmul_peak_gflops()
  rows = []
  for group, cases in groups(torch_ok).items():
    cases = {k: v for k, v in cases.items() if not a.cases or any(s in k for s in a.cases)}
    if not cases:
      continue
    runners = {k: factory() for k, (factory, _) in cases.items()}
    calls = min([info.get("calls", a.calls) for _, info in cases.values()])  # a K-step chunk is one call
    flops = {}
    for k, r in runners.items():
      if hasattr(r, "flops"):
        flops[k] = r.flops()
    secs = time_side_by_side(runners, a.rounds, calls)
    secs = {k: s / getattr(runners[k], "k", 1) for k, s in secs.items()}  # per iteration
    for k, s in secs.items():
      # The work every implementation must do: the native program's count (auto's forms count extra zeros).
      twin = re.sub(r"gmcl auto.*|torch eager", "gmcl native", k)
      needed = flops.get(twin, flops.get(k))
      row = {"case": k, "group": group, "iterations_per_s": round(1 / s, 3),
             "ms_per_iteration": round(1e3 * s, 2),
             "images_per_s": round(64 / s, 1) if not k.startswith("eval") else round(10000 / s, 1),
             "gflop_per_iteration": round(needed / 1e9, 3) if needed else None,
             "fraction_of_peak": round(needed / s / 1e9 / peak, 3) if needed else None,
             "peak_gflop_per_s": round(peak, 1), "first_call_s": round(runners[k].first_call_s, 2),
             "device": "cpu (torch)" if "torch" in k else str(jax.devices()[0].device_kind)}
      if group.startswith("tasks"):
        row["memory_mb"] = round(runners[k].memory_mb(), 1)
      ref = [j for j in secs if j.startswith(group) and "torch" in j]
      if ref and "torch" not in k:
        row["ratio_to_torch"] = round(secs[ref[0]] / s, 3)
      rows.append(row)
      print(json.dumps(row), flush=True)
  if a.write:
    write_markdown(rows, a, peak, torch_version if torch_ok else None)


def write_markdown(rows, args, peak, torch_version):
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
  except OSError:
    commit = "?"
  cmd = "python -m benchmarks.suite --write" + (f" --cases {' '.join(args.cases)}" if args.cases else "")
  lines = [
      "# Benchmarks",
      "",
      f"Written by `{cmd}` (rounds {args.rounds}, calls {args.calls}) on "
      f"{datetime.date.today().isoformat()}, commit {commit}.",
      "",
      f"Machine: {machine()}" + (f"; PyTorch {torch_version} eager on the CPU." if torch_version else "."),
      f"Matmul peak (2048x2048 float32, JAX): {peak:.0f} GFLOP/s.",
      "",
      "Each group's rows were timed side by side, alternating (medians over rounds). GFLOP per",
      "iteration: conv and matmul work of the native program that meets real input. `auto` is",
      "gmcl's default `model.conv_plan` (the fixed rule: GEMM-based forms where XLA:CPU was measured",
      "slow), `measured` each direction's implementation and the library fusions measured on this",
      "machine (gmcl/ops/conv_tune.py), `native` plain `lax.conv`;",
      "`xla-fusions` / `none-fusions`: compiled with XLA's default YNNPACK fusions / none instead of",
      "gmcl's `train.xla_cpu_fusions=auto` (gmcl/xla.py). See benchmarks/suite.py.",
      "",
      "| case | iterations/s | ms/iteration | images/s | GFLOP/iteration | fraction of peak | vs PyTorch "
      "| memory MB |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    ratio = f"{r['ratio_to_torch']:.2f}x" if "ratio_to_torch" in r else ("1" if "torch" in r["case"] else "")
    lines.append(f"| {r['case']} | {r['iterations_per_s']:.3f} | {r['ms_per_iteration']:.1f} | "
                 f"{r['images_per_s']:.0f} | {r['gflop_per_iteration'] or ''} | "
                 f"{r['fraction_of_peak'] or ''} | {ratio} | {r.get('memory_mb', '')} |")
  body = "\n".join(lines) + "\n"
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "BENCHMARKS.md")
  old = open(path).read() if os.path.exists(path) else ""
  marker = "<!-- suite table above; notes below are kept -->"
  notes = old.split(marker, 1)[1] if marker in old else "\n"
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(body + "\n" + marker + notes)
  os.replace(tmp, path)


if __name__ == "__main__":
  main()
