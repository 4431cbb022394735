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
* ``max_mb``: the machine folder and its kept programs together are held to this many MiB
  (0: no limit). Every edit of gmcl's sources, every new shape and every new jax version adds
  entries and none is ever rewritten, so without a bound the folder only grows. At :func:`enable`
  (once per process and folder) the least recently used entries are removed until it fits
  (:func:`prune`); an entry removed while another process wants it is compiled (traced) again.

``python -m gmcl.compile_cache`` lists the machine folders under the cache root, their entries,
size and last use; ``--prune_mb N`` holds each to N MiB (``--prune_mb 0`` empties them).

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
import sys
import time
from typing import Callable, Optional

import jax

from gmcl import program_cache, xla

SUBDIR = "xla"
_enabled: dict = {}  # what enable() last set: {"dir": ..., "min_compile_secs": ...}
_pruned: set = set()  # folders enable() has held to compile.max_mb in this process
DEFAULT_MAX_MB = 4096
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
           log: Callable[[str], None] = lambda s: None, programs: bool = True,
           max_mb: float = DEFAULT_MAX_MB) -> Optional[str]:
  """Points JAX's persistent compilation cache at :func:`cache_dir` (``setting``) and returns the
  folder in use, or None when the cache is off. The user's own JAX settings win (module docstring).
  Called again with another folder, it switches the process over (JAX's cache is reset).
  ``programs`` (``compile.programs``): also keep the traced chunk programs (gmcl.program_cache)
  in :func:`programs_dir`; only beside gmcl's own folder, not a JAX cache the user set.
  ``max_mb`` (``compile.max_mb``): the folder and its programs held to this size (0: no limit),
  the least recently used entries removed first (:func:`prune`), once per process and folder;
  gmcl's own folder only."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel
  folder = cache_dir(setting)
  if min_compile_secs < 0:
    raise ValueError(f"compile.min_compile_secs={min_compile_secs!r}; valid: a number >= 0.")
  if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or max_mb < 0:
    raise ValueError(f"compile.max_mb={max_mb!r}; valid: a number of MiB >= 0 (0: no limit).")
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
  if max_mb and folder not in _pruned:
    _pruned.add(folder)
    done = prune(folder, int(max_mb * 2**20))
    if done["removed"]:
      log(f"gmcl: {done['removed']} least recently used cache entries ({done['freed'] / 2**20:.0f} MiB) removed "
          f"from {folder} to hold it to compile.max_mb={max_mb:g}")
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
                programs=bool(c.get("programs", True)), max_mb=c.get("max_mb", DEFAULT_MAX_MB))


# -- the folders' size: what is there, and least-recently-used removal --------------------------

_XLA_ENTRY = "-cache"  # JAX's file names: KEY-cache, and KEY-atime where JAX records use itself
_XLA_ATIME = "-atime"
_STALE_TMP_SECS = 3600.0  # a writer's temporary file this old was left by a killed process


def _last_use(path: str, st: os.stat_result) -> float:
  """When an entry was last written or read: the newer of its modification and access times, or the
  time JAX's own ``KEY-atime`` file records (JAX writes one when its eviction is on)."""
  used = max(st.st_mtime, st.st_atime)
  if path.endswith(_XLA_ENTRY):
    try:
      with open(path[:-len(_XLA_ENTRY)] + _XLA_ATIME, "rb") as f:
        used = max(used, int.from_bytes(f.read(8), "little") / 1e9)
    except (OSError, ValueError):
      pass
  return used


def entries(folder: str) -> list:
  """The cache entries of machine folder ``folder`` and its programs folder, as
  ``(last_use, bytes, [paths])``: an XLA executable (with JAX's ``-atime`` file), an exported
  program or a kept decision (gmcl.program_cache). ``machine.json``, JAX's lock file and files
  that are not entries are not listed, so :func:`prune` never removes them."""
  out = []
  for name, path, is_programs in _files(folder):
    if not (program_cache.ENTRY_NAME.fullmatch(name) if is_programs else name.endswith(_XLA_ENTRY)):
      continue
    try:
      st = os.stat(path)
    except OSError:
      continue
    paths = [path] + ([path[:-len(_XLA_ENTRY)] + _XLA_ATIME] if not is_programs else [])
    out.append((_last_use(path, st), st.st_size, paths))
  return out


def _files(folder: str):
  """``(name, path, is_programs)`` of every file in machine folder ``folder`` and its programs folder."""
  for root, is_programs in ((folder, False), (programs_dir(folder), True)):
    try:
      names = os.listdir(root)
    except OSError:
      continue
    for name in names:
      yield name, os.path.join(root, name), is_programs


def _remove_stale_tmp(folder: str, now: float) -> None:
  for name, path, _ in _files(folder):
    try:
      if name.endswith(".tmp") and now - os.stat(path).st_mtime > _STALE_TMP_SECS:
        os.remove(path)
    except OSError:
      pass


def prune(folder: str, max_bytes: int) -> dict:
  """Removes the least recently used entries (:func:`entries`) of machine folder ``folder`` and its
  programs until they take at most ``max_bytes`` together (0 removes every entry), and writers'
  temporary files left by killed processes. Returns ``{"removed", "freed", "kept", "kept_bytes"}``.
  Safe beside a running process: an entry it then misses is compiled (traced) again."""
  if max_bytes < 0:
    raise ValueError(f"max_bytes={max_bytes!r}; valid: >= 0")
  _remove_stale_tmp(folder, time.time())
  found = sorted(entries(folder), key=lambda e: e[0])
  total = sum(e[1] for e in found)
  removed = freed = 0
  for _, size, paths in found:
    if total <= max_bytes:
      break
    for path in paths:
      try:
        os.remove(path)
      except FileNotFoundError:
        pass
      except OSError:
        break  # not ours to remove (permissions): kept, and counted as kept
    else:
      total -= size
      removed += 1
      freed += size
  return {"removed": removed, "freed": freed, "kept": len(found) - removed, "kept_bytes": total}


def machine_folders(root: Optional[str] = None) -> list:
  """The machine folders under ``root`` (default ``cache_root()/xla``): each with its
  ``machine.json``, or named as :func:`machine_key` names them."""
  root = root or os.path.join(cache_root(), SUBDIR)
  try:
    names = sorted(os.listdir(root))
  except OSError:
    return []
  return [os.path.join(root, n) for n in names
          if os.path.isdir(os.path.join(root, n)) and not n.endswith(".programs")]


def _main(argv=None) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(prog="python -m gmcl.compile_cache",
                              description="gmcl's compilation caches (compile.cache_dir): list them, or hold "
                                          "each machine's folder to a size, least recently used entries first.")
  p.add_argument("--root", default=None,
                 help="the folder that holds the machine folders (default: $GMCL_CACHE_DIR/xla or ~/.cache/gmcl/xla;"
                      " for compile.cache_dir=DIR, DIR)")
  p.add_argument("--prune_mb", type=float, default=None,
                 help="remove the least recently used entries of every machine folder until it takes at most this "
                      "many MiB (0 empties them)")
  a = p.parse_args(argv)
  if a.prune_mb is not None and a.prune_mb < 0:
    p.error(f"--prune_mb={a.prune_mb:g}; valid: a number of MiB >= 0")
  root = a.root or os.path.join(cache_root(), SUBDIR)
  if not os.path.isdir(root):
    p.error(f"--root {root}: no such folder")
  folders = machine_folders(root)
  print(f"{root}: {len(folders)} machine folder(s); this machine's is {machine_key()}")
  for folder in folders:
    if a.prune_mb is not None:
      done = prune(folder, int(a.prune_mb * 2**20))
      print(f"  {os.path.basename(folder)}: removed {done['removed']} entries ({done['freed'] / 2**20:.1f} MiB)")
    found = entries(folder)
    last = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(e[0] for e in found))) if found else "-"
    print(f"  {os.path.basename(folder)}: {len(found)} entries, {sum(e[1] for e in found) / 2**20:.1f} MiB, "
          f"last used {last}")
  return 0


if __name__ == "__main__":
  sys.exit(_main())
