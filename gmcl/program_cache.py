"""Traced chunk programs kept across processes (``jax.export``), beside the compilation cache.

The persistent compilation cache (:mod:`gmcl.compile_cache`) removes XLA's compilation from a
second process's first call, but not what comes before it: Python tracing of the step and its
lowering to StableHLO, seconds for a GAN iteration whose critic updates each differentiate the
gradient penalty (benchmarks/compile_cache.py). This module keeps the lowered program too. The
first process that runs a chunk program (:func:`gmcl.methods.base.run_chunk`) exports it
(``jax.export``: the StableHLO module and its argument and result types) and writes it to

    MACHINE.programs/KEY   (beside the compilation cache's MACHINE folder)

and runs it through the exported module; a later process with the same KEY reads it back and
calls it without tracing. Both processes compile the same module, so the second one finds XLA's
executable in the compilation cache: its first call is reading two files and loading the
executable.

KEY is a hash of everything the trace depends on:

* the step's :meth:`gmcl.methods.base.Method.program_key` (the method's class, its config's
  fingerprint, image shape, number of classes, ``parallel``) and the step's name; a step whose
  method has no key (``None``) is never written;
* the chunk's length, mode, library fusions setting and seed axis;
* the arguments' pytree structure and each leaf's shape, dtype and weak type;
* the source of every module of the gmcl package (a changed line is another program), the jax
  and jaxlib versions, the machine (:func:`gmcl.compile_cache.machine_key`), every jax setting
  but those of caches, logs and error reports (x64, matmul precision, the PRNG, dtype promotion,
  ...), and the contents of the measured convolution plans (gmcl.ops.conv_tune) a trace reads.

Only single-device programs are kept (``parallel.mode == "none"``; ``pmap``, mesh ``jit`` and the
sharded seed axis trace as before). A program that cannot be exported, or an entry that cannot
be read, is traced the usual way (and the entry rewritten), so the cache can change speed, never
a result: the exported module is the one the trace lowers to, and a run with the cache on calls it
in its first process as in every later one (bitwise equal states: tests/test_program_cache.py).

Decisions taken from a trace are kept the same way (:func:`remembered`): whether a stacked-seed
step convolves (``train.seed_axis = "auto"``, :func:`gmcl.methods.base.resolve_seed_axis`), so a
warm multi-seed process does not trace its steps to decide.

An entry is a pickle (the result's pytree structure is stored as a template of it); like the
compilation cache, the folder is the user's own and is trusted. On by default with the
compilation cache (``compile.programs``; off: ``False``, or ``compile.cache_dir = ""``). A read
marks the entry used (its modification time): :func:`gmcl.compile_cache.prune` holds the folder
and the compilation cache's to ``compile.max_mb`` together, least recently used first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import threading
from typing import Any, Callable, Optional

import jax

FORMAT = 1
# What gmcl.compile_cache.prune may remove: an exported program (KEY) or a kept decision (KEY.NAME.json).
ENTRY_NAME = re.compile(r"[0-9a-f]{64}(\.[A-Za-z0-9_]+\.json)?")
_state: dict = {"dir": None}
_counts = {"read": 0, "written": 0, "traced": 0, "failed": 0}
_lock = threading.Lock()
_warned: set = set()


def enable(folder: Optional[str]) -> Optional[str]:
  """Keeps exported programs in ``folder`` (created), or turns the cache off (None)."""
  if folder is not None:
    try:
      os.makedirs(folder, exist_ok=True)
    except OSError as e:
      logging.warning("gmcl: exported programs are not kept (%s: %s)", folder, e)
      folder = None
  _state["dir"] = folder
  return folder


def folder() -> Optional[str]:
  """The folder in use, or None when off."""
  return _state["dir"]


def stats() -> dict:
  """This process's use: programs ``read`` back, ``written``, ``traced`` (exported here) and
  ``failed`` (could not be exported or read: traced the usual way)."""
  return dict(_counts)


class Unkeyable(Exception):
  """The running code or settings cannot be named by a key: the program is traced as usual."""


def _source_files() -> list:
  root = os.path.dirname(os.path.abspath(__file__))
  out = []
  for base, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(base, name)
      if name.endswith(".py") and not name.startswith(".") and os.path.isfile(path):
        out.append(path)
  return out


def _package_source_sha256() -> str:
  """A hash of every gmcl module's source, checked against this process's import at every key: a
  file edited since then may not be the code that runs (or will run, for a module imported
  later), and a program keyed by it is not kept."""
  import gmcl  # pylint: disable=import-outside-toplevel
  files = _source_files()
  if max((os.path.getmtime(p) for p in files), default=0.0) > gmcl.IMPORTED_AT:
    raise Unkeyable("a gmcl source file changed after this process imported gmcl")
  digest = _state.get("source")
  if digest is None:
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for path in files:
      h.update(os.path.relpath(path, root).encode())
      with open(path, "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
    digest = _state["source"] = h.hexdigest()
  return digest


# The libraries whose code a gmcl step traces, besides jax and jaxlib.
TRACED_LIBRARIES = ("flax", "optax", "chex", "numpy", "ml_dtypes", "opt_einsum", "ml_collections", "scipy")


def _library_versions() -> str:
  """The installed versions of :data:`TRACED_LIBRARIES`: their code is traced too."""
  versions = _state.get("libraries")
  if versions is None:
    import importlib.metadata as md  # pylint: disable=import-outside-toplevel
    found = []
    for d in TRACED_LIBRARIES:
      try:
        found.append(f"{d}=={md.version(d)}")
      except md.PackageNotFoundError:
        found.append(f"{d} absent")
    versions = _state["libraries"] = ";".join(found)
  return versions


def _conv_plans_sha256(identity_text: str) -> str:
  """The measured convolution plans a trace may read: this machine's plan cache and any file a
  config pins (``model.conv_plan = "file:PATH"``, named in the config's fingerprint)."""
  from gmcl.ops import conv_tune  # pylint: disable=import-outside-toplevel
  pinned = re.findall(r'conv_plan\\?": \\?"file:([^"\\]+)', identity_text)
  if identity_text.count("file:") != len(pinned):
    raise Unkeyable("a pinned conv plan file whose path this key cannot read")
  paths = [conv_tune.cache_path()] + pinned
  h = hashlib.sha256()
  for path in paths:
    h.update(path.encode())
    if os.path.exists(os.path.expanduser(path)):
      with open(os.path.expanduser(path), "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
  return h.hexdigest()


def _leaf_type(leaf) -> str:
  if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
    return f"{tuple(leaf.shape)}:{leaf.dtype}:{bool(getattr(leaf, 'weak_type', False))}"
  return f"{type(leaf).__name__}"


# jax settings that cannot change a trace: where caches and logs go, how errors are reported.
_NOT_TRACE_SETTINGS = re.compile(r"cache|log|traceback|monitor|profil|explain|persistent")


def jax_settings() -> str:
  """Every other jax setting (x64, default matmul precision, PRNG implementation, dtype
  promotion, ...): one of them changed is another program."""
  values = jax.config.values
  return repr(sorted((k, repr(values[k])) for k in values if not _NOT_TRACE_SETTINGS.search(k)))


def trace_context():
  """A cheap value that changes when a jax setting that changes a trace does (jax.jit's own cache
  key, read on every call; ``jax_settings`` where this jax has none): an in-process memo's key."""
  try:
    from jax._src import config as jax_config  # pylint: disable=import-outside-toplevel
    return jax_config.trace_context()
  except (ImportError, AttributeError):
    return jax_settings()


def program_key(identity, settings: tuple, args: tuple) -> str:
  """The hash a program is kept under (module docstring); :class:`Unkeyable` where the running
  code may not be what the key names."""
  from gmcl import compile_cache  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  leaves, treedef = jax.tree.flatten(args)
  identity_text = repr(identity)
  parts = [f"format {FORMAT}", identity_text, repr(settings), str(treedef),
           ";".join(_leaf_type(x) for x in leaves), _package_source_sha256(), jax.__version__,
           getattr(jaxlib, "__version__", "?"), _library_versions(), compile_cache.machine_key(),
           jax_settings(),
           _conv_plans_sha256(identity_text)]
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class Program:
  """A chunk program called through its exported module: ``fn(*args)`` as the jitted chunk
  (``lower(*args)`` lowers it)."""

  def __init__(self, exported, out_template, options: dict, donate: tuple):
    self.exported, self.options = exported, dict(options or {})
    self.out_treedef = jax.tree.structure(out_template)
    if self.out_treedef.num_leaves != len(exported.out_avals):
      raise ValueError("the stored result structure does not match the exported program")
    self._fn = jax.jit(exported.call, compiler_options=options or None, donate_argnums=donate)
    self.called = False

  def __call__(self, *args):
    out = self._fn(*jax.tree.leaves(args))
    self.called = True
    return jax.tree.unflatten(self.out_treedef, out)

  def lower(self, *args):
    return self._fn.lower(*jax.tree.leaves(args))


def _donated(args: tuple, donate_argnums: tuple) -> tuple:
  """The flat leaf positions of the donated arguments."""
  out, i = [], 0
  for k, a in enumerate(args):
    n = len(jax.tree.leaves(a))
    if k in donate_argnums:
      out.extend(range(i, i + n))
    i += n
  return tuple(out)


def remembered(name: str, key_of: Callable[[], str], compute: Callable[[], Any]):
  """``compute()``'s JSON value for a program, kept beside the programs as ``KEY.NAME.json`` (a
  decision taken from a trace, such as whether a step convolves): later processes read it back
  instead of tracing. Computed afresh when the cache is off or the key cannot be taken."""
  root = folder()
  if root is None:
    return compute()
  try:
    path = os.path.join(root, f"{key_of()}.{name}.json")
  except Exception as e:  # pylint: disable=broad-except
    _warn_once("a decision taken from a trace is not kept", e)
    return compute()
  try:
    with open(path) as f:
      value = json.load(f)["value"]
    _touch(path)
    return value
  except (OSError, ValueError, KeyError):
    pass
  value = compute()
  tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
  try:
    with open(tmp, "w") as f:
      json.dump({"value": value}, f)
    os.replace(tmp, path)
  except OSError as e:
    _warn_once(f"a decision could not be written to {root}", e)
  return value


def _touch(path: str) -> None:
  """Marks an entry used (its modification time), for the least-recently-used pruning of
  gmcl.compile_cache.prune, whatever the file system does with access times."""
  try:
    os.utime(path)
  except OSError:
    pass


def discard(error: Exception) -> None:
  """Counts a program that was read or exported but could not be compiled (the caller traces)."""
  _warn_once("an exported program could not be compiled", error)
  with _lock:
    _counts["failed"] += 1


def _warn_once(what: str, error: Exception) -> None:
  if what not in _warned:
    _warned.add(what)
    logging.warning("gmcl: %s (%s: %s); traced the usual way", what, type(error).__name__, error)


def load_or_export(key_of: Callable[[], str], args: tuple, chunk: Callable, fusions: str,
                   donate_argnums: tuple = (0,)) -> Optional[Program]:
  """The program kept under ``key_of()``, or ``chunk`` exported for ``args`` and written under
  the key as it is after the trace (measured convolution plans may be added by the trace itself).

  ``fusions``: the chunk's ``train.xla_cpu_fusions`` setting, decided here as :mod:`gmcl.xla`
  decides it for the jitted chunk (one trace serves the decision and the export). None when the
  cache is off or the program cannot be exported (the caller then runs its jitted chunk).
  """
  from gmcl import xla  # pylint: disable=import-outside-toplevel
  from gmcl.ops import conv_tune  # pylint: disable=import-outside-toplevel
  root = folder()
  if root is None:
    return None
  try:
    path = os.path.join(root, key_of())
  except Exception as e:  # pylint: disable=broad-except
    _warn_once("a chunk program is not kept", e)
    return None
  donate = _donated(args, donate_argnums)
  if os.path.exists(path):
    try:
      with open(path, "rb") as f:
        entry = pickle.load(f)
      if entry.get("format") != FORMAT:
        raise ValueError(f"entry format {entry.get('format')!r}, not {FORMAT}")
      program = Program(jax.export.deserialize(entry["exported"]), entry["out_template"],
                        entry["options"], donate)
      with _lock:
        _counts["read"] += 1
      _touch(path)
      return program
    except Exception as e:  # pylint: disable=broad-except
      _warn_once(f"an exported program could not be read back from {root}", e)
      with _lock:
        _counts["failed"] += 1
  try:
    leaves, in_treedef = jax.tree.flatten(args)
    out_treedefs = []

    def flat_chunk(*flat):
      out = chunk(*jax.tree.unflatten(in_treedef, flat))
      out_leaves, out_treedef = jax.tree.flatten(out)
      out_treedefs.append(out_treedef)
      return out_leaves

    jitted = jax.jit(flat_chunk)
    options, chosen, fresh = xla.decide(jitted, leaves, {}, fusions)
    if fresh:  # measured plans: traced again under the chosen fusions
      jitted = jax.jit(lambda *flat: flat_chunk(*flat))
    with conv_tune.program_fusions(chosen):
      exported = jax.export.export(jitted)(*leaves)
    blob = exported.serialize()
    template = jax.tree.unflatten(out_treedefs[-1], list(range(out_treedefs[-1].num_leaves)))
    payload = pickle.dumps({"format": FORMAT, "exported": blob, "out_template": template,
                            "options": dict(options)}, protocol=4)
    # The program the first process runs is the one read back, so every process compiles the
    # same module (and the second finds its executable in the compilation cache).
    program = Program(jax.export.deserialize(blob), pickle.loads(payload)["out_template"], options, donate)
    path = os.path.join(root, key_of())
  except Exception as e:  # pylint: disable=broad-except
    _warn_once("a chunk program could not be exported", e)
    with _lock:
      _counts["failed"] += 1
    return None
  tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
  try:
    with open(tmp, "wb") as f:
      f.write(payload)
    os.replace(tmp, path)
    with _lock:
      _counts["written"] += 1
  except OSError as e:
    _warn_once(f"an exported program could not be written to {root}", e)
    try:
      os.remove(tmp)
    except OSError:
      pass
  with _lock:
    _counts["traced"] += 1
  return program


__all__ = ["Program", "Unkeyable", "discard", "enable", "folder", "jax_settings", "load_or_export", "program_key",
           "remembered", "stats", "trace_context"]
