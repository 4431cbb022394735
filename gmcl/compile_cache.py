"""A persistent XLA compilation cache, one folder per kind of machine.

A GAN step of gmcl compiles in seconds to tens of seconds on a CPU (MeRGAN's official iteration:
~8 s on a 2-core Intel Xeon, ~23 s on a 2-core AMD EPYC; DGM with growth compiles new programs at
every task), and every rerun of a config, every resumed run and every test process compiled them
again. With the cache, a program compiled once is read back from disk by the next process that
builds the same program on the same kind of machine.

:func:`enable` (called by :func:`gmcl.loop.run` with ``config.compile``) points JAX's persistent
cache (``jax_compilation_cache_dir``) at

    $GMCL_CACHE_DIR/xla/MACHINE   or   ~/.cache/gmcl/xla/MACHINE

where MACHINE (:func:`machine_key`) names the backend, the CPU (vendor, family, model and a hash
of its instruction-set flags) or the accelerator kind, and the jax and jaxlib versions. XLA's own
cache key already covers the program, its compile options, the XLA flags and the devices; the CPU
is not part of it, and an XLA:CPU executable is compiled for the host's instruction set, so a
home folder shared between machine types (a cluster's NFS home, a notebook server moved to
other hardware) would otherwise hand one CPU's executables to another. ``machine.json`` in the
folder says which machine it belongs to.

Settings (``config.compile``):

* ``cache_dir``: ``"auto"`` (the folder above), a folder (MACHINE is appended under it), or
  ``""`` (off);
* ``min_compile_secs``: programs that compiled faster than this are not written (JAX's
  ``jax_persistent_cache_min_compile_time_secs``). gmcl's default is 0, not JAX's 1 s: a run
  compiles a hundred or more small programs (initialisation, task boundaries, evaluation) of
  ~0.1 s each, which together cost a second process more than its one big step
  (benchmarks/compile_cache.py); the ``cpu`` MeRGAN run's 139 programs take 1.3 MB.

A cache never changes a result: an executable read back is the one XLA compiled for that program
(the same bytes run), so runs and resumed runs stay byte-identical. The user's own JAX settings
win: if ``jax_compilation_cache_dir`` is already set (``JAX_COMPILATION_CACHE_DIR``, a
``jax.config.update``) that folder is used, and ``jax_enable_compilation_cache=False`` keeps it
off (gmcl's test suite does so; its cache tests run their own processes).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from typing import Callable, Optional

import jax

from gmcl import program_cache, xla

SUBDIR = "xla"
_enabled: dict = {}  # what enable() last set: {"dir": ..., "min_compile_secs": ...}
_counts = {"requests": 0, "hits": 0, "written": 0, "seconds_saved": 0.0}
_listening: list = []
_EVENTS = {"/jax/compilation_cache/compile_requests_use_cache": "requests",
           "/jax/compilation_cache/cache_hits": "hits",
           "/jax/compilation_cache/cache_misses": "written"}  # JAX counts a write as its miss


def _on_event(event: str, **_) -> None:
  if event in _EVENTS:
    _counts[_EVENTS[event]] += 1


def _on_duration(event: str, duration_secs: float, **_) -> None:
  if event == "/jax/compilation_cache/compile_time_saved_sec":
    _counts["seconds_saved"] += float(duration_secs)


def _listen() -> None:
  if not _listening:  # once per process
    jax.monitoring.register_event_listener(_on_event)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _listening.append(True)


def stats() -> dict:
  """This process's use of the cache since :func:`enable` first turned it on: ``requests``
  (programs compiled through the cache), ``hits`` (read back), ``compiled`` (the rest),
  ``written`` (compiled and written: those that took at least ``min_compile_secs``),
  ``seconds_saved`` (compile time saved, as JAX measures it), ``on`` and ``folder`` (the last
  part of the folder in use: the machine key unless the user named their own). timings.json
  records it."""
  folder = jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None
  return {"on": bool(folder), "folder": os.path.basename(os.path.normpath(folder)) if folder else None,
          **_counts, "compiled": _counts["requests"] - _counts["hits"],
          "programs": dict(program_cache.stats(), on=program_cache.folder() is not None)}


def cache_root() -> str:
  """``$GMCL_CACHE_DIR``, or ``~/.cache/gmcl`` (the oracles' cache lives there too)."""
  return os.environ.get("GMCL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "gmcl")


def machine_fingerprint(backend: Optional[str] = None) -> dict:
  """What a compiled program depends on beyond XLA's own cache key: the backend, the CPU's vendor,
  family, model, name and instruction-set flags (CPU backend) or the device kind, and the jax and
  jaxlib versions."""
  import jaxlib  # pylint: disable=import-outside-toplevel
  backend = backend or jax.default_backend()
  desc = {"backend": backend, "jax": jax.__version__, "jaxlib": getattr(jaxlib, "__version__", "?")}
  if backend == "cpu":
    info = xla.cpu_info()
    flags = info.get("flags") or info.get("Features") or ""  # x86 / ARM
    desc.update(vendor=info.get("vendor_id") or info.get("CPU implementer") or platform.machine(),
                family=info.get("cpu family", ""), model=info.get("model") or info.get("CPU part", ""),
                name=info.get("model name") or platform.processor() or platform.machine(),
                flags_sha256=hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest())
  else:
    desc["device_kind"] = jax.devices()[0].device_kind
  return desc


def machine_key(desc: Optional[dict] = None) -> str:
  """The folder name for one kind of machine: readable parts and a hash of the whole description,
  e.g. ``cpu-GenuineIntel-6-167-3f2a9c1b-jax0.10.2``."""
  desc = desc or machine_fingerprint()
  digest = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:8]
  if desc["backend"] == "cpu":
    parts = [desc["backend"], desc["vendor"], desc["family"], desc["model"]]
  else:
    parts = [desc["backend"], desc["device_kind"]]
  parts += [digest, f"jax{desc['jax']}"]
  return re.sub(r"[^A-Za-z0-9.+_-]+", "_", "-".join(p for p in parts if p))


def cache_dir(setting: str = "auto") -> Optional[str]:
  """The folder ``setting`` (``config.compile.cache_dir``) names: None for ``""``."""
  if not isinstance(setting, str):
    raise ValueError(f"compile.cache_dir={setting!r}; valid: 'auto', '' (off) or a folder.")
  if setting == "":
    return None
  base = os.path.join(cache_root(), SUBDIR) if setting == "auto" else os.path.expanduser(setting)
  return os.path.join(base, machine_key())


def _write_machine_json(folder: str) -> None:
  path = os.path.join(folder, "machine.json")
  if not os.path.exists(path):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(machine_fingerprint(), f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def programs_dir(folder: str) -> str:
  """Where the exported chunk programs (gmcl.program_cache) of compilation-cache ``folder`` go:
  ``MACHINE.programs`` beside its ``MACHINE``."""
  return os.path.normpath(folder) + ".programs"


def enable(setting: str = "auto", min_compile_secs: float = 0.0,
           log: Callable[[str], None] = lambda s: None, programs: bool = True) -> Optional[str]:
  """Points JAX's persistent compilation cache at :func:`cache_dir` (``setting``) and returns the
  folder in use, or None when the cache is off. The user's own JAX settings win (module docstring).
  Called again with another folder, it switches the process over (JAX's cache is reset).
  ``programs`` (``compile.programs``): also keep the traced chunk programs (gmcl.program_cache)
  in :func:`programs_dir`; only beside gmcl's own folder, not a JAX cache the user set."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel
  folder = cache_dir(setting)
  if min_compile_secs < 0:
    raise ValueError(f"compile.min_compile_secs={min_compile_secs!r}; valid: a number >= 0.")
  program_cache.enable(None)
  if not jax.config.jax_enable_compilation_cache:
    return None
  current = jax.config.jax_compilation_cache_dir
  if current and current != _enabled.get("dir"):
    _listen()
    return current  # set by the user: theirs
  if folder is None:
    if current:  # ours, from an earlier run of this process: off now
      jax.config.update("jax_compilation_cache_dir", None)
      compilation_cache.reset_cache()
      _enabled.clear()
    return None
  try:
    os.makedirs(folder, exist_ok=True)
    _write_machine_json(folder)
  except OSError as e:
    log(f"gmcl: no compilation cache ({folder}: {e}); programs are compiled in every process")
    return None
  if programs:
    program_cache.enable(programs_dir(folder))
  if current != folder:
    # JAX decides once per process whether it uses a cache (at its first compilation): reset, so
    # that programs compiled before this call (a notebook's) do not keep it off.
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", folder)
    log(f"gmcl: compiled programs are cached in {folder} (compile.cache_dir; \"\" turns it off)")
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  _listen()
  _enabled.update(dir=folder, min_compile_secs=float(min_compile_secs))
  return folder


def enable_from_config(config, log: Callable[[str], None] = lambda s: None) -> Optional[str]:
  """:func:`enable` with ``config.compile`` (its defaults where a config lacks the section)."""
  c = config.get("compile", None) or {}
  return enable(c.get("cache_dir", "auto"), c.get("min_compile_secs", 0.0), log=log,
                programs=bool(c.get("programs", True)))
