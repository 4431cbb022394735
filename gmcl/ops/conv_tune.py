"""Convolution plans measured on the machine that runs them (``model.conv_plan="measured"``).

:func:`gmcl.ops.conv.cpu_plan` is a fixed rule, read from timings on one CPU; another CPU can
prefer other implementations (BENCHMARKS.md: the same MeRGAN iteration ran at 1.09-1.29x PyTorch
on an AMD EPYC and 0.97x on an Intel Xeon). With ``conv_plan="measured"`` on the CPU backend, the
first program that uses a convolution of a given shape times every implementation of each of its
three directions (forward, input gradient, weight gradient; gmcl.ops.conv) on this machine, inside
a small program that uses each direction as a WGAN-GP critic does (first and second derivatives:
:func:`measure`), under the XLA:CPU library fusions of the program being compiled (gmcl.xla), and
keeps the timings in

    $GMCL_CACHE_DIR/conv_plans/MACHINE-Ncores-critic1.json   or   ~/.cache/gmcl/conv_plans/...

(MACHINE: :func:`gmcl.compile_cache.machine_key`, which names the CPU and the jax and jaxlib
versions; N the core count). The plan of a direction is its fastest implementation. The library
fusions are the second dimension: for a program with ``train.xla_cpu_fusions="auto"`` whose
convolutions have measured plans, :mod:`gmcl.xla` compiles with YNNPACK matrix multiplies (``dot``)
or with XLA's defaults (``xla``), whichever gives those convolutions the smaller sum of their best
plans' times; both are measured for those shapes.

Not the default (``"auto"`` is the fixed rule on the CPU): on the 2-core AMD EPYC the fixed rule
was read from, the measured plans ran MeRGAN's official iteration at 0.92x the fixed rule's speed
(BENCHMARKS.md, "Measured plans"): one layer timed in a small program does not see everything XLA
does with the whole iteration. Use it on CPUs the rule was not read from, and compare with
``python -m benchmarks.suite --cases "mergan/ra gmcl"``.

Once an entry is in the file, the plan is a pure function of the program and the machine: every
later process, and a resumed run, compiles the same programs. Entries are only ever added, never
replaced: a process that measured a shape another process measured first uses the other's
timings (the file is merged under a lock), so concurrent processes agree. Measurements are
noisy, so two machines of one kind can choose differently: a run that must be bit-reproducible
across machines pins a file, ``model.conv_plan="file:PATH"`` (any copy of a cache file; a shape
it lacks is an error that names it). ``python -m benchmarks.conv_layers --show_plan`` prints the
cache of this machine, ``--tune`` fills it for the official MeRGAN or DGM layers. On GPU and TPU
``"measured"`` is ``"native"``. Eager calls (outside any jit: a model's ``init``) use the fixed
rule: one op run once gains nothing from a measurement.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import os
import statistics
import time
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

SUBDIR = "conv_plans"
FILE_PREFIX = "file:"
FUSIONS = ("dot", "xla", "none")  # resolved library fusions (gmcl.xla; "auto" is resolved before)
PROTOCOL = "critic1"  # what the timings time (measure); part of the file name: another protocol, another file
CALLS = 5  # calls per timing round
ROUNDS = 3  # rounds per implementation (median), implementations alternating within a round

# The library fusions of the program being traced (set by gmcl.xla around its traces). None: not
# traced through gmcl.xla (plain jax.jit compiles with XLA's defaults, "xla").
_program_fusions: contextvars.ContextVar = contextvars.ContextVar("gmcl_conv_fusions", default=None)
# While gmcl.xla decides a program's fusions: the shapes its "auto" convolutions have (a list).
_collecting: contextvars.ContextVar = contextvars.ContextVar("gmcl_conv_collect", default=None)
_memory: dict = {}  # path -> its entries, as read or written by this process
_log: list = []


@contextlib.contextmanager
def program_fusions(fusions: Optional[str]) -> Iterator[None]:
  """Traces inside use the plans measured under ``fusions`` (gmcl.xla sets it)."""
  token = _program_fusions.set(fusions)
  try:
    yield
  finally:
    _program_fusions.reset(token)


@contextlib.contextmanager
def collecting() -> Iterator[list]:
  """Traces inside use the fixed rule and list the shapes of their ``auto`` convolutions."""
  seen: list = []
  token = _collecting.set(seen)
  try:
    yield seen
  finally:
    _collecting.reset(token)


def shape_key(g, x_shape, w_shape, dtype) -> str:
  """The cache's key of one convolution: geometry, batch, channels, dtype."""
  (plo, phi), (qlo, qhi) = g.padding
  return (f"in={g.in_hw[0]}x{g.in_hw[1]} k={g.kernel_hw[0]}x{g.kernel_hw[1]} s={g.stride} d={g.dilation} "
          f"pad={plo},{phi},{qlo},{qhi} b={x_shape[0]} cin={w_shape[2]} cout={w_shape[3]} {jnp.dtype(dtype).name}")


def cache_path() -> str:
  from gmcl import compile_cache  # pylint: disable=import-outside-toplevel
  return os.path.join(compile_cache.cache_root(), SUBDIR,
                      f"{compile_cache.machine_key()}-{os.cpu_count()}cores-{PROTOCOL}.json")


def candidates(g) -> list:
  """The implementations that apply to geometry ``g`` (the others fall back to native)."""
  from gmcl.ops import conv as C  # pylint: disable=import-outside-toplevel
  return [i for i in C.IMPLEMENTATIONS if (not i.startswith("subpixel") or g.subpixel_ok())
          and (i != "space_to_depth" or g.space_to_depth_ok())]


def _critic_like(g, plan):
  """The program a direction is timed in: value and gradients, in ``w`` and ``x``, of
  ``s + |ds/dx|^2`` with ``s = sum(tanh(conv(x, w)) * r)``: every direction at first order and, as in
  a gradient penalty, at second order (``Gx``'s derivatives ``F(c, w)`` and ``Gw(c, dy)``). XLA
  emits some directions differently there than alone: the critic's 16x16 -> 8x8 weight gradient ran
  at ~5 GFLOP/s only inside the penalty's second derivative (BENCHMARKS.md), which timing the
  direction alone never shows."""
  from gmcl.ops import conv as C  # pylint: disable=import-outside-toplevel

  def objective(w, x, r):
    s = lambda x: jnp.sum(jnp.tanh(C.conv(x, w, g, plan)) * r)
    gx = jax.grad(s)(x)
    return s(x) + jnp.sum(gx * gx)

  return jax.grad(objective, argnums=(0, 1))


def measure(g, x_shape, w_shape, dtype, fusions: str, calls: int = CALLS, rounds: int = ROUNDS) -> dict:
  """Milliseconds per call of :func:`_critic_like`'s program, compiled under ``fusions``, for each
  implementation of each direction: ``{"forward": {"native": ms, ...}, "input_grad": {...},
  "weight_grad": {...}}``. One pass of coordinate descent from the fixed rule's plan: the
  directions in turn, each timed over its implementations with the directions before it at their
  fastest and those after it at the rule's, so the fastest per direction is the pass's plan and the
  last direction's fastest time is that plan's."""
  from gmcl import xla  # pylint: disable=import-outside-toplevel
  from gmcl.ops import conv as C  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  dtype = jnp.dtype(dtype)
  x = rng.standard_normal(x_shape).astype(dtype)
  w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[:3]))).astype(dtype)
  r = rng.standard_normal((x_shape[0], *g.out_hw, w_shape[3])).astype(dtype)
  structs = [jax.ShapeDtypeStruct(a.shape, dtype) for a in (w, x, r)]
  options = xla.compiler_options(fusions, has_conv=True)
  plan = dict(zip(C.DIRECTIONS, (getattr(C.cpu_plan(g), d) for d in C.DIRECTIONS)))
  compiled: dict = {}
  out = {}
  for direction in C.DIRECTIONS:
    fns = {}
    for impl in candidates(g):
      p = C.Plan(**dict(plan, **{direction: impl}))
      if p not in compiled:
        # Compiled ahead of time and called with host arrays: this also works inside another trace.
        compiled[p] = jax.jit(_critic_like(g, p), compiler_options=options).lower(*structs).compile()
        jax.block_until_ready(compiled[p](w, x, r))  # warm-up
      fns[impl] = compiled[p]
    times = {impl: [] for impl in fns}
    for _ in range(rounds):
      for impl, fn in fns.items():
        t0 = time.perf_counter()
        for _ in range(calls):
          res = fn(w, x, r)
        jax.block_until_ready(res)
        times[impl].append((time.perf_counter() - t0) / calls)
    out[direction] = {impl: round(1e3 * statistics.median(t), 4) for impl, t in times.items()}
    plan[direction] = min(out[direction], key=lambda i: (out[direction][i], C.IMPLEMENTATIONS.index(i)))
  return out


def best(timings: dict):
  """The plan of the fastest implementation per direction (ties: the earlier in IMPLEMENTATIONS)."""
  from gmcl.ops import conv as C  # pylint: disable=import-outside-toplevel
  pick = {d: min(timings[d], key=lambda i: (timings[d][i], C.IMPLEMENTATIONS.index(i))) for d in C.DIRECTIONS}
  return C.Plan(**pick)


def best_total(timings: dict) -> float:
  """The milliseconds of the best plan's program: the last direction's fastest (:func:`measure`)."""
  return min(timings["weight_grad"].values())


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      data = json.load(f)
  except (FileNotFoundError, NotADirectoryError):
    return {}
  except (OSError, ValueError) as e:
    raise ValueError(f"conv plans: {path} cannot be read as a gmcl conv plan file ({e}); delete it "
                     "(it is measured again) or pin another file.") from e
  entries = data.get("entries") if isinstance(data, dict) else None
  if not isinstance(entries, dict):
    raise ValueError(f"conv plans: {path} has no 'entries' object; it is not a gmcl conv plan file.")
  return entries


def _write_new(path: str, key: str, fusions: str, timings: dict) -> dict:
  """Adds ``entries[key][fusions]`` unless another process added it first; returns what the file
  holds for it (ours or theirs)."""
  from gmcl import compile_cache  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    entries = _read(path)
    entry = entries.setdefault(key, {})
    if fusions not in entry:
      entry[fusions] = timings
      data = {"machine": dict(compile_cache.machine_fingerprint(), cores=os.cpu_count()),
              "about": "gmcl.ops.conv_tune: milliseconds per call of each implementation, by shape and "
                       "library fusions; the plan is the fastest per direction",
              "entries": entries}
      tmp = f"{path}.{os.getpid()}.tmp"
      with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
      os.replace(tmp, path)
    _memory[path] = entries
    return entry[fusions]


def timings(g, x_shape, w_shape, dtype, fusions: str, pinned: Optional[str] = None) -> dict:
  """The timings of one convolution under ``fusions``: from the pinned file, else this machine's
  cache, else measured now and added to the cache."""
  if fusions not in FUSIONS:
    raise ValueError(f"conv plans: fusions={fusions!r}; valid: {list(FUSIONS)}.")
  key = shape_key(g, x_shape, w_shape, dtype)
  path = pinned or cache_path()
  entries = _memory.get(path)
  if entries is None or fusions not in entries.get(key, {}):
    entries = _memory[path] = _read(path)
  found = entries.get(key, {}).get(fusions)
  if found is not None:
    return found
  if pinned:
    raise ValueError(f"conv plans: the pinned file {pinned} has no entry for the convolution "
                     f"'{key}' under library fusions {fusions!r}. Run once with model.conv_plan='measured' on "
                     "this kind of machine and pin the cache file it writes (python -m benchmarks.conv_layers "
                     "--show_plan prints its path), or use model.conv_plan='table'.")
  if not _log:
    _log.append(True)
    print(f"gmcl: timing convolution implementations for shapes this machine has not seen (once; kept "
          f"in {path}; model.conv_plan='auto' uses the fixed rule)", flush=True)
  measured = measure(g, x_shape, w_shape, dtype, fusions)
  try:
    return _write_new(path, key, fusions, measured)
  except OSError as e:  # a read-only home: this process keeps its measurement, later ones measure again
    print(f"gmcl: conv plans cannot be kept in {path} ({e}); measured again in every process", flush=True)
    _memory.setdefault(path, {}).setdefault(key, {})[fusions] = measured
    return measured


def plan_for(name: str, g, x, w):
  """The plan of ``model.conv_plan`` ``name`` ("measured" or "file:PATH") for one convolution of
  arrays (or tracers) ``x`` and ``w``, on the CPU backend."""
  from gmcl.ops import conv as C  # pylint: disable=import-outside-toplevel
  pinned = name[len(FILE_PREFIX):] if name.startswith(FILE_PREFIX) else None
  seen = _collecting.get()
  if seen is not None:  # gmcl.xla deciding the program's fusions: list the shape, trace with the rule
    seen.append((g, tuple(x.shape), tuple(w.shape), jnp.dtype(x.dtype).name, pinned))
    return C.cpu_plan(g)
  if pinned is None and not isinstance(x, jax.core.Tracer) and not isinstance(w, jax.core.Tracer):
    return C.cpu_plan(g)  # eager: nothing to gain
  fusions = _program_fusions.get() or "xla"
  return best(timings(g, tuple(x.shape), tuple(w.shape), jnp.dtype(x.dtype).name, fusions, pinned))


def choose_fusions(seen: list) -> str:
  """``dot`` or ``xla`` for a program whose ``auto`` convolutions are ``seen`` (from
  :func:`collecting`): the one with the smaller sum of the convolutions' best plans' times."""
  totals = {}
  for fusions in ("dot", "xla"):
    totals[fusions] = sum(best_total(timings(g, xs, ws, dt, fusions, pinned)) for g, xs, ws, dt, pinned in seen)
  return min(("dot", "xla"), key=lambda f: (totals[f], f != "dot"))


def show(path: Optional[str] = None) -> str:
  """The cache (or a pinned file) as a table: shape, fusions, the plan, each direction's timings."""
  path = path or cache_path()
  entries = _read(path)
  lines = [f"{path}: {len(entries)} convolution shapes", "",
           "| convolution | fusions | best plan (ms) | forward | input_grad | weight_grad |",
           "|---|---|---|---|---|---|"]
  from gmcl.ops import conv as C  # pylint: disable=import-outside-toplevel
  for key in sorted(entries):
    for fusions, t in sorted(entries[key].items()):
      plan = best(t)
      cells = [", ".join(f"{'**' + i + '**' if i == getattr(plan, d) else i} {ms:.3f}"
                         for i, ms in sorted(t[d].items(), key=lambda kv: kv[1])) for d in C.DIRECTIONS]
      lines.append(f"| {key} | {fusions} | {best_total(t):.3f} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
