"""Per-program XLA compiler options: which operations XLA:CPU hands to its YNNPACK library.

XLA:CPU (JAX 0.10) compiles matrix multiplies, elementwise ops, reductions and convolutions
into calls of the YNNPACK library by default. On the 2-core AVX-512 CPU gmcl is measured
on, YNNPACK's convolutions ran at half the speed of XLA's own (Eigen) ones (MeRGAN's 16x16 ->
8x8 stride-2 critic convolution: 9.9 ms against 4.7 ms forward), and DGR's solver step with
replay and MeRGAN's JR iteration ran faster without them, while programs without convolutions
(the MLP GANs) ran fastest with XLA's full default set (BENCHMARKS.md, "Library fusions").
So gmcl picks per compiled program:

* ``"auto"`` (the default): on the CPU backend, ``"dot"`` for a program that contains a
  convolution, ``"xla"`` for one that does not; nothing on GPU and TPU. A program whose
  convolutions have measured plans (``model.conv_plan="measured"``, gmcl.ops.conv_tune) gets ``"dot"``
  or ``"xla"``, whichever gives its convolutions the smaller sum of their best plans' times,
  and its plans are those measured under that choice;
* ``"xla"``: XLA's own defaults (no compiler option passed);
* ``"dot"``: YNNPACK for matrix multiplies only (convolutions, elementwise ops and
  reductions compiled by XLA itself);
* ``"none"``: no YNNPACK fusion at all.

The options only choose kernels; the maths is the same (float32 rounding aside). A jaxlib
that does not know the option (it is experimental in XLA) gets none, with one warning.
Selected by ``config.train.xla_cpu_fusions``; :func:`jit` is ``jax.jit`` with the choice.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Iterator, Optional

import jax
from jax.extend import core as jax_core

from gmcl.ops import conv_tune

XLA_CPU_FUSIONS = ("auto", "xla", "dot", "none")
_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_VALUES = {"dot": "LIBRARY_FUSION_TYPE_DOT", "none": ""}


def check_fusions(fusions: str) -> str:
  """``fusions`` if it is one of :data:`XLA_CPU_FUSIONS`, else a ValueError naming the valid ones."""
  if fusions not in XLA_CPU_FUSIONS:
    raise ValueError(f"xla_cpu_fusions={fusions!r}; valid: {list(XLA_CPU_FUSIONS)}.")
  return fusions


@functools.lru_cache(maxsize=None)
def _option_supported() -> bool:
  """Whether this jaxlib's XLA:CPU accepts the YNNPACK fusion option (compiled once, cached)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={_OPTION: _VALUES["dot"]}).lower(1.0).compile()
    return True
  except Exception as e:  # pylint: disable=broad-except
    warnings.warn(f"gmcl.xla: this jaxlib's XLA:CPU does not accept the compiler option {_OPTION} "
                  f"({type(e).__name__}); programs are compiled with XLA's defaults.", stacklevel=2)
    return False


def equations(jaxpr) -> Iterator:
  """Every equation of a (closed) jaxpr, those of its sub-jaxprs included (a scan's body once)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        if isinstance(sub, (jax_core.ClosedJaxpr, jax_core.Jaxpr)):
          yield from equations(sub)


def has_convolution(jaxpr) -> bool:
  """Whether a (closed) jaxpr, sub-jaxprs included, contains a convolution."""
  return any(eqn.primitive.name == "conv_general_dilated" for eqn in equations(jaxpr))


def compiler_options(fusions: str = "auto", has_conv: bool = True) -> dict:
  """The ``compiler_options`` for ``jax.jit`` under choice ``fusions`` (see the module docstring)."""
  check_fusions(fusions)
  if jax.default_backend() != "cpu":
    return {}
  if fusions == "auto":
    fusions = "dot" if has_conv else "xla"
  if fusions == "xla" or not _option_supported():
    return {}
  return {_OPTION: _VALUES[fusions]}


def signature(args, kwargs):
  """What decides a trace of jax.jit: the arguments' pytree structure, and each leaf's shape and
  dtype (arrays) or value (anything else: static arguments, Python scalars)."""
  leaves, treedef = jax.tree.flatten((args, kwargs))
  parts = []
  for leaf in leaves:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      parts.append((tuple(leaf.shape), str(leaf.dtype), bool(getattr(leaf, "weak_type", False))))
    elif isinstance(leaf, (bool, int, float, complex)):  # traced as a weak-typed scalar: its type decides
      parts.append(type(leaf))
    else:  # static arguments: their value decides (unhashable ones are jit's error, not ours)
      try:
        parts.append((type(leaf), hash(leaf)))
      except TypeError:
        parts.append(type(leaf))
  return treedef, tuple(parts)


def decide(jitted: Callable, args, kwargs, fusions: str) -> tuple[dict, Optional[str], bool]:
  """``(compiler options, library fusions, fresh)`` for ``jitted(*args, **kwargs)`` (a jax.jit)
  under choice ``fusions``; ``auto`` traces it (as jit traces it, static arguments included; the
  trace is not compiled, and a later trace of ``jitted`` reuses it). Its convolutions with
  measured plans are listed: for them the fusions are measured too, and the program must then be
  traced again under them (``fresh``: :func:`gmcl.ops.conv_tune.program_fusions`)."""
  fusions = check_fusions(fusions)
  cpu = jax.default_backend() == "cpu"
  if fusions == "auto" and cpu:
    with conv_tune.collecting() as seen:
      has_conv = has_convolution(jitted.trace(*args, **kwargs).jaxpr)
    chosen = conv_tune.choose_fusions(seen) if seen else ("dot" if has_conv else "xla")
    return compiler_options(chosen), chosen, bool(seen)
  return compiler_options(fusions), (fusions if cpu else None), False


class _Jitted:
  """``jax.jit(fun, **kwargs)`` whose compiler options are chosen from the traced program
  (``auto``: does it convolve?), once for each argument signature (pytree structure, shapes and
  dtypes): a wrapper called with arguments of several structures (a step before and after the
  first snapshot) compiles each program with its own choice, so the choice is a function of the
  program alone, never of which call came first. Wrap bound methods (``xla.jit(obj.method)``);
  it is not a decorator for methods in a class body."""

  def __init__(self, fun: Callable, fusions: str, jit_kwargs: dict):
    self._fun, self._fusions, self._kwargs = fun, check_fusions(fusions), jit_kwargs
    self._by_signature: dict = {}  # signature -> (its options, the jax.jit of them)
    self._by_options: dict = {}  # options -> jax.jit(fun, compiler_options=options)
    self._options = {}
    functools.update_wrapper(self, fun)

  def _get(self, args, kwargs):
    """(the jitted function, the library fusions its traces run under: gmcl.ops.conv_tune)."""
    if self._fusions == "auto" and jax.default_backend() == "cpu":
      sig = signature(args, kwargs)
      chosen = self._by_signature.get(sig)
      if chosen is None:
        options, fusions, fresh = decide(jax.jit(self._fun, **self._kwargs), args, kwargs, self._fusions)
        chosen = self._by_signature[sig] = (options, fusions, self._jit(options, fresh=fresh))
      self._options, fusions, jitted = chosen
      return jitted, fusions
    self._options = compiler_options(self._fusions)
    return self._jit(self._options), (self._fusions if jax.default_backend() == "cpu" else None)

  def _jit(self, options: dict, fresh: bool = False):
    key = (tuple(sorted(options.items())), fresh)
    if key not in self._by_options:
      fun = self._fun
      if fresh:
        # A function object of its own: jax.jit shares traces of one function between jits of other
        # compiler options (the deciding trace's included), and measured plans depend on the fusions.
        fun = functools.wraps(self._fun)(lambda *a, **k: self._fun(*a, **k))
      self._by_options[key] = jax.jit(fun, compiler_options=options, **self._kwargs)
    return self._by_options[key]

  def __call__(self, *args, **kwargs):
    jitted, fusions = self._get(args, kwargs)
    with conv_tune.program_fusions(fusions):
      return jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    jitted, fusions = self._get(args, kwargs)
    with conv_tune.program_fusions(fusions):
      return jitted.lower(*args, **kwargs)

  @property
  def options(self) -> dict:
    """The compiler options of the latest call or ``lower`` (empty before the first)."""
    return dict(self._options)


def jit(fun: Callable, *, fusions: str = "auto", **jit_kwargs: Any) -> Callable:
  """``jax.jit(fun, **jit_kwargs)`` with the XLA:CPU library fusions ``fusions`` (module docstring)."""
  return _Jitted(fun, fusions, jit_kwargs)


def cpu_info() -> dict:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return {}
  out = {}
  for line in text.split("\n\n", 1)[0].splitlines():
    if ":" in line:
      k, v = line.split(":", 1)
      out[k.strip()] = v.strip()
  return out


def machine_description() -> str:
  """The machine programs run on, in words: CPU model and cores, JAX version, device kind (for
  timings.json and benchmark tables: one seed's figures, and speeds, differ between CPU types)."""
  import os  # pylint: disable=import-outside-toplevel
  import platform  # pylint: disable=import-outside-toplevel
  info = cpu_info()
  cpu = info.get("model name") or platform.processor() or platform.machine()
  if info.get("cpu family") and info.get("model"):  # virtual CPUs often name only "AMD EPYC"
    cpu += f" (family {info['cpu family']}, model {info['model']})"
  dev = jax.devices()[0]
  return f"{cpu}, {os.cpu_count()} cores; JAX {jax.__version__} on {dev.platform} ({dev.device_kind})"
