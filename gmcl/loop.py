"""The method-agnostic task loop: begin_task -> phases of steps -> end_task -> evaluate.

``run(config, workdir)`` loads the data once, builds the task sequence and the
method, trains task after task, evaluates after each, writes ``results.json``
(atomically, after every task) and a grid of generated samples per seen class.
With checkpointing on (the default), a killed run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmcl import compile_cache, evaluation, plots, xla
from gmcl import seeds as seeds_lib
from gmcl.checkpoint import IncompatibleCheckpoint, RunCheckpointer
from gmcl.config import added_keys, oracle_seed, reverse_architectures, validate_config
from gmcl.data.build import (Data, build_sequence, data_settings, hold_out, load_data, task_sizes,
                             training_examples)
from gmcl.data.sampling import task_arrays
from gmcl.evaluation import oracle, reverse
from gmcl.methods import build_method
from gmcl.methods.base import (RunContext, clear_compiled_chunks, resolve_chunk_mode, resolve_seed_axis,
                               run_chunk, step_key)
from gmcl.parallel import Parallel, make_parallel
from gmcl.runlog import RunLog
from gmcl.workdir import WorkdirLock


def release_compiled() -> None:
  """Drops every compiled program that nothing references any more, and the chunk programs
  kept for reuse (:func:`gmcl.methods.base.clear_compiled_chunks`): call it between runs in one process.

  Each XLA:CPU executable holds its own memory mappings, and a method that rebuilds its networks
  per task (HAT masks, DGM growth) compiles new programs every task. Kept for a whole
  comparison, seven such runs at the demo schedule exhausted Linux's per-process limit
  (``vm.max_map_count``, 65530 by default): LLVM failed with "Cannot allocate memory" and the process died
  (``python -m benchmarks.run_mappings`` measures it). A new run compiles its own programs anyway.
  """
  clear_compiled_chunks()
  jax.clear_caches()
  gc.collect()


MAPPINGS_FRACTION = 0.5  # of vm.max_map_count: above it, a task's start drops the unused programs


def mappings_limit() -> Optional[int]:
  """Linux's per-process cap on memory mappings (``vm.max_map_count``), or None where unknown."""
  try:
    with open("/proc/sys/vm/max_map_count") as f:
      return int(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return None


def release_if_crowded(log=print, fraction: float = MAPPINGS_FRACTION) -> bool:
  """At a task's start: :func:`release_compiled` when this process holds more than ``fraction`` of
  its memory mappings. Methods that compile new programs every task (DGM: one per task and seed,
  and new shapes with growth) otherwise reach the cap within one run; a 3-seed DGMw run with growth
  died so at its 30th task. Only programs nothing references are dropped, and what is compiled again
  is the same program, so results do not change (tested)."""
  used, limit = memory_mappings(), mappings_limit()
  if used is None or limit is None or used < fraction * limit:
    return False
  release_compiled()
  log(f"gmcl: the process held {used} of its {limit} memory mappings (compiled programs); "
      "dropped the programs no longer in use")
  return True


def memory_mappings() -> Optional[int]:
  """The number of memory mappings this process holds (Linux), or None where unknown."""
  try:
    with open("/proc/self/maps") as f:
      return sum(1 for _ in f)
  except OSError:
    return None


def sample_grid(method, state, key, classes, columns: int, predict_fn=None,
                sample_fn=None) -> Optional[np.ndarray]:
  """A (rows = seen classes) x columns grid of generated images, or None without a generator.

  A conditional generator is asked for each class; an unconditional one draws a
  pool of samples that the current classifier sorts into rows (blank where a
  class got too few).
  """
  if not method.has_generator:
    return None
  sample_fn = sample_fn or method.sample
  classes = list(classes)
  if method.conditional:  # one call per class: a one-class batch, fixed size
    rows = np.stack([np.asarray(sample_fn(state, jax.random.fold_in(key, c),
                                          jnp.full((columns,), c, jnp.int32))) for c in classes])
  else:
    pool = 20 * columns * method.num_classes  # fixed size: one compile for every task
    images = np.asarray(sample_fn(state, key, jnp.zeros((pool,), jnp.int32)))
    labels = np.asarray(jnp.argmax(predict_fn(jnp.asarray(images)), -1))
    rows = np.full((len(classes), columns) + images.shape[1:], np.min(images), images.dtype)
    for r, c in enumerate(classes):
      chosen = images[labels == c][:columns]
      rows[r, :len(chosen)] = chosen
  n_r, n_c, h, w, ch = rows.shape
  grid = rows.transpose(0, 2, 1, 3, 4).reshape(n_r * h, n_c * w, ch)
  return grid


def save_grid(grid: np.ndarray, path: str, value_range) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  low, high = value_range
  img = np.clip((grid - low) / (high - low), 0.0, 1.0)
  tmp = path + ".tmp.png"
  if img.shape[-1] == 1:
    plt.imsave(tmp, img[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  else:
    plt.imsave(tmp, img)
  os.replace(tmp, path)


def write_json(path: str, payload: dict) -> None:
  """Writes JSON atomically: a reader never sees a half-written file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _host_metrics(metrics) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


class RunInterrupted(RuntimeError):
  """Raised by :func:`run` when ``stop_after_steps`` is reached (tests of resume use it)."""


def _seed_payload(seed: int, rec: dict) -> dict:
  """What a single-seed results.json holds of one seed's record."""
  t = len(rec["A"])
  R = np.array([[np.nan if v is None else v for v in row] for row in rec["R"]], dtype=float)
  reference = rec.get("reference_row")
  return {"seed": seed, "A": rec["A"], "accuracy_matrix": rec["R"],
          "average_forgetting": evaluation.average_forgetting(R[:t, :t]) if t else 0.0,
          "backward_transfer": evaluation.backward_transfer(R[:t, :t]) if t else 0.0,
          "forward_transfer": evaluation.forward_transfer(R[:t, :t], reference) if reference and t else None,
          "reference_row": reference, "confusion_matrix": rec.get("confusion_matrix"),
          "completed_tasks": t, "per_task": rec["per_task"], "scores": rec.get("scores", {})}


def _seed_record_of(payload: dict) -> dict:
  """The record a seed's payload was made of (:func:`_seed_payload`'s inverse)."""
  out = {"A": payload["A"], "R": payload["accuracy_matrix"], "per_task": payload["per_task"],
         "scores": payload["scores"]}
  for key in ("reference_row", "confusion_matrix"):
    if payload.get(key) is not None:
      out[key] = payload[key]
  return out


def _results_payload(config, seq, record, scenario=None) -> dict:
  """:func:`results_payload` of a run's task sequence ``seq``."""
  return results_payload(config, [list(task.classes) for task in seq], scenario or seq.scenario, record)


def results_payload(config, tasks: list, scenario: str, record: dict) -> dict:
  """results.json: ``per_seed`` (one single-seed payload per seed) and, at the top, the mean over
  seeds of A_t, the accuracy matrix, forgetting, backward transfer and every float score, with
  the sample standard deviation beside each (``A_std``, ...; 0.0 for one seed), over the tasks
  every seed has completed (``completed_tasks``). Scores that are numbers, None (nothing
  measured) or dicts of numbers (per class) are averaged entry by entry; others (structured
  records) appear at the top for one seed, and per seed only for several. The top-level
  forgetting and backward transfer are the means of each seed's (not recomputed from the mean
  accuracy matrix, whose maxima differ). ``record["seeds"]`` holds one record per seed of
  :func:`gmcl.seeds.seed_list` (``A``, ``R``, ``per_task``, ``scores``)."""
  seeds = seeds_lib.seed_list(config)
  per_seed = [_seed_payload(s, rec) for s, rec in zip(seeds, record["seeds"])]
  t = min(p["completed_tasks"] for p in per_seed)
  A, A_std = seeds_lib.mean_std_series([p["A"][:t] for p in per_seed])
  out = {
      "method": config.method, "dataset": config.data.dataset,
      "protocol": config.data.protocol, "scenario": scenario, "seed": config.seed,
      "seeds": seeds, "tasks": [list(classes) for classes in tasks],
      "A": A, "A_std": A_std,
      "accuracy_matrix": seeds_lib.mean_matrix([p["accuracy_matrix"][:t] for p in per_seed]),
      "completed_tasks": t, "config": config.to_dict(), "per_seed": per_seed,
  }
  common = [np.array([[np.nan if v is None else v for v in row] for row in p["accuracy_matrix"][:t]],
                     dtype=float) for p in per_seed]  # over the tasks every seed has completed
  for name in ("average_forgetting", "backward_transfer"):
    fn = getattr(evaluation, name)
    out[name], out[f"{name}_std"] = seeds_lib.mean_std([fn(R[:t, :t]) if t else 0.0 for R in common])
  transfer = [evaluation.forward_transfer(R[:t, :t], p["reference_row"]) if p.get("reference_row") and t else None
              for R, p in zip(common, per_seed)]
  out["forward_transfer"], out["forward_transfer_std"] = seeds_lib.average_entry(transfer)
  confusions = [p["confusion_matrix"] for p in per_seed if p["completed_tasks"] == t and p["confusion_matrix"]]
  out["confusion_matrix"] = (seeds_lib.mean_matrix(confusions) if len(confusions) > 1 else confusions[0]) \
      if t and len(confusions) == len(per_seed) else None
  if all("intransigence" in p["scores"] for p in per_seed) and t:
    out["intransigence"], out["intransigence_std"] = seeds_lib.mean_std(
        [float(np.mean(p["scores"]["intransigence"][:t])) for p in per_seed])
  scores = {}
  for name in sorted({n for p in per_seed for n in p["scores"]}):
    series = [p["scores"].get(name, []) for p in per_seed]  # (some start after task 1)
    averaged = seeds_lib.average_series([v[:min(map(len, series))] for v in series])
    if len(per_seed) == 1:  # one seed: its scores as they are (ints stay ints), structured ones too
      scores[name] = series[0]
      if averaged is not None:
        scores[f"{name}_std"] = averaged[1]
    elif averaged is not None:  # several: structured scores are reported per seed only
      scores[name], scores[f"{name}_std"] = averaged
  out["scores"] = scores
  out["per_task"] = []
  for i in range(t):
    entries = [p["per_task"][i] for p in per_seed]
    names = sorted(set.intersection(*(set(e["metrics"]) for e in entries)))
    out["per_task"].append({"task": i + 1, "classes": entries[0]["classes"], "A": A[i], "A_std": A_std[i],
                            "metrics": {n: seeds_lib.mean_std([e["metrics"][n] for e in entries])[0]
                                        for n in names}})
  return out


def _uses_oracle(config: dict) -> bool:
  return bool(config.get("eval", {}).get("oracle")) or bool(config.get("mergan", {}).get("oracle"))


def merge_seed_results(runs: Sequence[dict]) -> dict:
  """One results.json of the seeds of several finished runs of one config (each a single-seed or
  a multi-seed run's results.json): what a run of all those seeds at once writes. Seeds that run
  one after another (DGM's growth) give it exactly; stacked seeds up to float rounding, as a
  stacked seed against its single-seed run.

  Raises:
    ValueError: a run is unfinished; the configs differ in another key than ``seed`` and
      ``num_seeds`` (``checkpoint`` aside); a seed comes twice; the seeds are not consecutive;
      or the runs' oracles (when they score with one) trained with different seeds.
  """
  if not runs:
    raise ValueError("merge_seed_results: no runs given.")
  for i, res in enumerate(runs):
    if res.get("completed_tasks") != len(res.get("tasks", [])) or not res.get("tasks"):
      raise ValueError(f"run {i} is unfinished ({res.get('completed_tasks')} of {len(res.get('tasks', []))} "
                       "tasks): merge finished runs only.")
  configs = [res["config"] for res in runs]
  def neutral(c):  # the keys that must agree (the oracle's seed is compared as the seed it means)
    c = with_added_keys(c, added_keys(c.get("method", "")))  # a run from before a key: its old value
    out = {k: v for k, v in c.items() if k not in ("seed", "num_seeds", "checkpoint", "log")}
    out["eval"] = {k: v for k, v in c.get("eval", {}).items() if k != "oracle_seed"}
    return out
  for i, c in enumerate(configs[1:], 1):
    differs = _config_differences(neutral(configs[0]), neutral(c), {}, labels=("in run 0", f"in run {i}"))
    if differs:
      raise ValueError(f"run {i} has another config than run 0 (" + "; ".join(differs[:3])
                       + "): only seed and num_seeds may differ.")
  seeds = [s for res in runs for s in res["seeds"]]
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"the runs' seeds {seeds} repeat a seed.")
  order = sorted(range(len(seeds)), key=seeds.__getitem__)
  first = seeds[order[0]]
  if sorted(seeds) != list(range(first, first + len(seeds))):
    raise ValueError(f"the runs' seeds {sorted(seeds)} are not consecutive: a merged run is seeds "
                     "seed, seed+1, ..., seed+num_seeds-1.")
  config_dict = json.loads(json.dumps(next(r["config"] for r in runs if first in r["seeds"])))
  if _uses_oracle(config_dict):
    fixed = lambda c: c["seed"] if c.get("eval", {}).get("oracle_seed", -1) == -1 else c["eval"]["oracle_seed"]
    judges = sorted({fixed(c) for c in configs})
    if len(judges) > 1:
      raise ValueError(f"the runs' oracles trained with seeds {judges}: the merged scores would come from "
                       f"different oracles. Run each seed with --config.eval.oracle_seed={first}.")
    if judges[0] == first and "oracle_seed" in config_dict.get("eval", {}):
      config_dict["eval"]["oracle_seed"] = -1  # what one run from the first seed uses
  config_dict["seed"], config_dict["num_seeds"] = first, len(seeds)
  payloads = [p for res in runs for p in res["per_seed"]]
  record = {"seeds": [_seed_record_of(payloads[i]) for i in order]}
  config = ml_collections.ConfigDict(config_dict)
  return results_payload(config, runs[0]["tasks"], runs[0]["scenario"], record)


def merge_timings(timings: Sequence[dict]) -> dict:
  """timings.json of merged runs: the wall times summed, the tasks' timings of every run, and the
  machines (one, or each different one, "; "-joined)."""
  machines = sorted({t.get("machine", "machine not recorded") for t in timings})
  return {"backend": "; ".join(sorted({t.get("backend", "?") for t in timings})),
          "devices": sorted({d for t in timings for d in t.get("devices", [])}),
          "machine": "; ".join(machines),
          "wall_seconds": sum(float(t.get("wall_seconds", 0.0)) for t in timings),
          "per_task": [e for t in timings for e in t.get("per_task", [])],
          "merged_from": len(timings)}


def _seed_record() -> dict:
  return {"A": [], "R": [], "per_task": [], "scores": {}}


def _upgrade_record(record: dict) -> dict:
  """A checkpoint's record as this gmcl keeps it (one record per seed): those written before seeds
  were trained together held one seed's A, R, per_task and scores at the top."""
  if "seeds" in record:
    return record
  seed = {k: record.get(k, default) for k, default in (("A", []), ("R", []), ("per_task", []), ("scores", {}))}
  return {"seeds": [seed], "metrics": [record.get("metrics", {})], "timings": record.get("timings", []),
          "seconds": record.get("seconds", 0.0)}


def _finished_run(workdir: str) -> Optional[int]:
  """The number of tasks of a finished run in ``workdir``, or None."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  done, total = results.get("completed_tasks"), len(results.get("tasks", []))
  return done if total and done == total else None


def joint_matrix(config, seq) -> Optional[np.ndarray]:
  """The accuracy matrix of the joint run named by ``config.eval.joint_results`` (a workdir or its
  results.json; "" = none), checked to be finished and of this run's task sequence."""
  path = str(config.eval.get("joint_results", ""))
  if not path:
    return None
  file = os.path.join(path, "results.json") if os.path.isdir(path) else path
  key = f"config.eval.joint_results={path!r}"
  if not os.path.exists(file):
    raise ValueError(f"{key}: no such results.json; give a finished joint run's workdir (or its results.json), "
                     'or "" for no intransigence.')
  with open(file) as f:
    joint = json.load(f)
  tasks = [list(task.classes) for task in seq]
  if joint.get("completed_tasks") != len(joint.get("tasks", [])):
    raise ValueError(f"{key}: the run is unfinished ({joint.get('completed_tasks')} of "
                     f"{len(joint.get('tasks', []))} tasks).")
  theirs = (joint.get("dataset"), joint.get("protocol"), joint.get("tasks", [])[:len(tasks)])
  if theirs != (config.data.dataset, config.data.protocol, tasks):
    raise ValueError(f"{key}: its dataset, protocol and tasks {theirs} are not this run's "
                     f"{(config.data.dataset, config.data.protocol, tasks)}.")
  return np.array([[np.nan if v is None else v for v in row] for row in joint["accuracy_matrix"]], float)


def _memory_bytes() -> Optional[int]:
  """The memory one device offers: an accelerator's allocator limit, else the host's RAM."""
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
      return int(stats["bytes_limit"])
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def _eval_oracle(config, method, data, log):
  """``eval.oracle``'s classifier (trained once on all real training images, cached), or None."""
  e = config.eval
  if not e.oracle:
    return None
  if not (method.has_generator and method.conditional):
    raise ValueError(f"config.eval.oracle={e.oracle!r}: MeRGAN's oracle scores the samples of each class, so it "
                     f"needs a conditional generator; {config.method} has "
                     + ("an unconditional one (model.conditional=True makes it conditional)" if method.has_generator
                        else "none") + ". Valid: \"\" for this config.")
  d = config.data
  settings = oracle.OracleSettings(
      dataset=d.dataset, pad_to=int(d.pad_to), value_range=tuple(float(v) for v in d.value_range),
      architecture=e.oracle, hidden=tuple(e.oracle_hidden), steps=int(e.oracle_steps), seed=oracle_seed(config),
      data_fingerprint=oracle.fingerprint(data.x_train, data.y_train))
  return oracle.load_or_train(settings, data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes,
                              log=log)


def check_sizes_fit(config) -> None:
  """Refuses, before any data is loaded, batch sizes whose images alone (float32) exceed the
  memory of one device: the key named, instead of an out-of-memory error later."""
  from gmcl.data.sources import DATASETS  # pylint: disable=import-outside-toplevel
  h, w, c = DATASETS[config.data.dataset].image_shape
  side = config.data.pad_to or h
  image = side * (side if config.data.pad_to else w) * c * 4
  limit = _memory_bytes()
  if limit is None:
    return
  p = config.parallel
  devices = 1 if p.mode == "none" else (p.num_devices or jax.local_device_count())
  seeds = int(config.get("num_seeds", 1))
  for key, n in (("train.batch_size", config.train.batch_size), ("eval.batch_size", config.eval.batch_size)):
    # A training batch is split over devices, and stacked seeds' batches are all in one program
    # (split over the devices too when the seed axis is): S x B / devices either way.
    share = -(-n * seeds // devices) if key.startswith("train") else n
    if share * image > limit:
      raise ValueError(f"config.{key}={n} cannot fit: one device's part of a batch of its images"
                       + (f" (for {seeds} seeds)" if seeds > 1 and key.startswith("train") else "") + " is "
                       f"{share * image / 2**30:.1f} GiB (float32), more than the {limit / 2**30:.1f} GiB "
                       "of memory one device has here.")


def _config_differences(saved: dict, current: dict, added: dict, prefix="",
                        labels=("in the checkpoint", "now"), root: Optional[dict] = None) -> list[str]:
  """What differs between a checkpoint's config and the current one, key by key. ``added`` holds
  keys added to gmcl since (:func:`gmcl.config.added_keys`): absent from a checkpoint, they
  match when they have the value that reproduces the code it was written with (a callable gives
  it from the saved config, None when the key has no effect under that config)."""
  root = saved if root is None else root
  keys = sorted(set(saved) | set(current))
  out = []
  for k in keys:
    if prefix == "" and k in ("checkpoint", "log", "compile"):
      continue  # checkpoint, log and compilation-cache settings may change between a run and its resumption
    if prefix == "" and k not in current and isinstance(saved.get(k), dict):
      continue  # another method's section: checkpoints written before method sections hold all
    a, b = saved.get(k), current.get(k)
    name = f"{prefix}{k}"
    if k not in saved and name in added:
      before = added[name](root) if callable(added[name]) else added[name]
      if before is not None and json.dumps(b) != json.dumps(before):
        out.append(f"{name}: absent in the checkpoint (added to gmcl since; "
                   f"--config.{name}={before} reproduces the code it was written with), "
                   f"{b!r} now")
    elif isinstance(a, dict) and isinstance(b, dict):
      out += _config_differences(a, b, added, f"{name}.", labels, root)
    elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
      out.append(f"{name}: {a!r} {labels[0]}, {b!r} {labels[1]}")
  return out


def with_added_keys(saved: dict, added: dict) -> dict:
  """``saved`` (a recorded run's config) with each key of ``added`` it lacks set to the value that
  reproduces the code it was written with (keys without effect under that config, and sections it
  does not have, stay absent). Two records compare alike so, whichever of them predates a key."""
  out = json.loads(json.dumps(saved))
  for name, before in added.items():
    section, _, key = name.rpartition(".")
    node = out
    for part in section.split(".") if section else []:
      node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or key in node:
      continue
    value = before(saved) if callable(before) else before
    if value is not None:
      node[key] = list(value) if isinstance(value, tuple) else value
  return out


def config_differences(saved: dict, config) -> list[str]:
  """What differs between a recorded run's config (``saved``, a results.json's or a checkpoint's
  ``config``) and ``config``, one line per key; keys added to gmcl since the record count as
  equal at the value that reproduces the code it was written with. Empty: the same run."""
  return _config_differences(saved, config.to_dict(), added_keys(config.method))


def finished_run_of(config, workdir: str) -> Optional[dict]:
  """The results of a finished run of ``config`` in ``workdir``, or None when it holds none.

  Raises:
    ValueError: ``workdir`` holds a finished run of another config (the message names the keys).
  """
  if _finished_run(workdir) is None:
    return None
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  differs = config_differences(results.get("config", {}), config)
  if differs:
    raise ValueError(f"{workdir} holds a finished run of another config ("
                     + "; ".join(differs[:3]) + (f"; and {len(differs) - 3} more" if len(differs) > 3 else "")
                     + ").")
  return results


def run(config, workdir: str, *, data: Optional[Data] = None, progress: bool = True,
        log: Callable[[str], None] = print, resume: bool = True, overwrite: bool = False,
        stop_after_steps: Optional[int] = None, extend: bool = False) -> dict:
  """Trains ``config.method`` on the task sequence and writes ``workdir/results.json``.

  With ``config.checkpoint.enabled``, the run is checkpointed every
  ``checkpoint.every_steps`` training steps and at every task boundary, and a run
  whose workdir holds checkpoints continues from the newest good one: on the CPU
  its results.json is byte for byte that of an uninterrupted run.

  Args:
    config: an experiment config (see :func:`gmcl.config.method_config`).
    workdir: output folder (created if missing).
    data: preloaded :class:`Data` (tests and notebooks reuse one load).
    progress: show a progress bar per task.
    log: where per-task lines go.
    resume: continue from the workdir's checkpoints if it has any; False refuses
      a workdir that has some (unless ``overwrite``).
    overwrite: start afresh even if the workdir holds a finished run or checkpoints.
    stop_after_steps: raise :class:`RunInterrupted` once this many training steps
      have run in this call (after the checkpoint due at that step, if any).
    extend: continue the workdir's run, finished or not, to a longer task sequence: its
      checkpoints were written with a smaller ``data.max_tasks`` than ``config``'s (0 = every
      task) and nothing else differs. The first tasks' training does not depend on how many
      follow, so the extended run's results.json is byte for byte that of a run of the longer
      sequence from the start (tested); timings.json says where it was extended. Refused
      (nothing changed) where that cannot hold: a state whose shapes depend on the number of
      tasks (per-task heads or masks), seeds trained one after another (each would be taken
      up again from its own end), or a scenario that scores the tasks not yet seen (domain-incremental).

  Only one run may use a workdir at a time: a second is refused at once
  (:class:`gmcl.workdir.WorkdirBusy`, naming the holder's PID).

  Returns:
    The results dictionary written to ``results.json``.
  """
  validate_config(config)
  check_sizes_fit(config)
  os.makedirs(workdir, exist_ok=True)
  compile_cache.enable_from_config(config, log=log)
  with WorkdirLock(workdir, log=log, enabled=jax.process_index() == 0):
    return _run(config, workdir, data=data, progress=progress, log=log, resume=resume,
                overwrite=overwrite, stop_after_steps=stop_after_steps, extend=extend)


def _extended_from(saved: dict, config) -> Optional[int]:
  """The ``data.max_tasks`` of a checkpoint's config that ``config`` extends (the same run but a
  longer task sequence: a larger ``data.max_tasks``, or 0 for every task), or None."""
  old = saved.get("data", {}).get("max_tasks", 0)
  new = config.data.max_tasks
  return old if old and old != new and (not new or new > old) else None


def _run(config, workdir, *, data, progress, log, resume, overwrite, stop_after_steps, extend=False) -> dict:
  if extend and overwrite:
    raise ValueError("run: extend=True (--extend) continues the workdir's run and overwrite=True (--overwrite) "
                     "deletes it: pass one of them.")
  finished = _finished_run(workdir)
  if finished is not None and not overwrite and not extend:
    raise FileExistsError(
        f"{workdir} holds a finished run ({finished} tasks in results.json). Pass overwrite=True "
        "(--overwrite) to train again there, extend=True (--extend) with a larger data.max_tasks to "
        "continue it to more tasks, or choose another workdir.")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if overwrite and os.path.isdir(ckpt_dir):
    shutil.rmtree(ckpt_dir)
  data = data or load_data(config)
  if data.source and data.source != data_settings(config):
    raise ValueError(f"run(data=...): the data were loaded with (dataset, pad_to, value_range, "
                     f"test_limit) = {data.source}, the config asks for {data_settings(config)}.")
  seq, t_cfg, c_cfg = build_sequence(config, data.image_shape, data.num_classes), config.train, \
      config.checkpoint
  if extend and finished is not None and finished >= len(seq):
    raise FileExistsError(
        f"{workdir} holds a finished run of {finished} tasks and this config's sequence has {len(seq)}: extending "
        "needs a larger data.max_tasks (or 0, every task). --overwrite trains it again.")
  joint = joint_matrix(config, seq)
  validation = None  # held-out real training images for model selection (eval.validation_fraction)
  if config.eval.validation_fraction:
    data, validation = hold_out(data, float(config.eval.validation_fraction),
                                by_class=seq.scenario == "class_incremental")
  parallel = make_parallel(config.parallel.mode, config.parallel.num_devices)
  method = build_method(config.method, config, data.image_shape, data.num_classes, parallel)
  seeds = seeds_lib.seed_list(config)
  # Seeds whose states share shapes train stacked, in one program per chunk; others one after
  # another (groups of one seed). Under parallel.mode=jit, a seed count the devices divide is
  # split over them (the method then sees one device), else each batch is, as without seeds.
  stacked = len(seeds) > 1 and method.seeds_share_shapes
  seed_axis = ""
  if stacked:
    seed_axis = "stacked"  # vmap or unroll, per phase (train.seed_axis)
    if parallel.mode == "jit" and parallel.num_devices > 1 and len(seeds) % parallel.num_devices == 0:
      seed_axis = "shard"
      method = build_method(config.method, config, data.image_shape, data.num_classes, Parallel())
  groups = [list(range(len(seeds)))] if stacked else [[i] for i in range(len(seeds))]
  method.setup(data, log=log)
  judge = _eval_oracle(config, method, data, log)
  run_keys = [jax.random.PRNGKey(s) for s in seeds]
  init_keys, train_keys, sample_keys = zip(*(jax.random.split(k, 3) for k in run_keys))
  record = {"seeds": [_seed_record() for _ in seeds], "metrics": [{} for _ in groups[0]],
            "timings": [], "seconds": 0.0}
  no_plots = []  # set when matplotlib is missing (said once)
  runlog = RunLog(workdir, seeds, groups, int(config.log.every_steps), tensorboard=bool(config.log.tensorboard),
                  write_csv=bool(config.log.csv), log=log, writer=jax.process_index() == 0)
  fusions = t_cfg.xla_cpu_fusions
  predict = xla.jit(method.predict, fusions=fusions)
  predict_task = xla.jit(method.predict_task, fusions=fusions)
  task_incremental = method.scenario == "task_incremental"
  scenario = "task_incremental" if task_incremental else seq.scenario
  sample = xla.jit(method.sample, fusions=fusions)
  clock = [time.time()]
  several = len(seeds) > 1

  def seed_states(state, group):
    """(seed index, that seed's state) for each seed of ``group`` (slices of a stacked state)."""
    if not stacked:
      return [(group[0], state)]
    return list(zip(group, seeds_lib.unstack(state, len(group))))

  def each_seed(fn, state, group):
    """``fn`` applied to each seed's state: the once-per-task transitions run per seed."""
    if not stacked:
      return fn(state)
    return seeds_lib.stack([fn(s) for _, s in seed_states(state, group)])

  reverse_archs = reverse_architectures(config) if method.has_generator else []

  def reverse_scores(s_state, t, key) -> dict:
    """``A_reverse_ARCH`` after task t (None on the tasks it is not measured after)."""
    if not (t == len(seq) - 1 or config.eval.reverse_every_task):
      return {f"A_reverse_{a}": None for a in reverse_archs}
    e = config.eval
    label_fn = None if method.conditional else (lambda xb: predict(s_state, xb))
    return {f"A_reverse_{a}": reverse.reverse_accuracy(
        lambda k, labels: sample(s_state, k, labels), seq.seen_classes(t), data.x_test, data.y_test,
        jax.random.fold_in(key, j), data.num_classes, architecture=a, steps=int(e.reverse_steps),
        per_class=int(e.reverse_samples_per_class), label_fn=label_fn, eval_batch=int(e.batch_size))
        for j, a in enumerate(reverse_archs)}

  def accuracy(s_state, t, x, y) -> dict:
    """One seed's scores after task t on images ``x`` (the test set, or the validation set)."""
    if task_incremental:  # the task id is given at test time: each task scored with its own head
      return evaluation.evaluate_task_incremental(
          lambda xb, k: predict_task(s_state, xb, jnp.asarray(k, jnp.int32)), x, y, seq, t,
          config.eval.batch_size)
    return evaluation.evaluate_after_task(lambda xb: predict(s_state, xb), x, y, seq, t, config.eval.batch_size,
                                          average=config.eval.get("accuracy_average", "examples"))

  def select(t, group, state, step):
    """A selection point (eval.validation_fraction): each seed's validation A_t, and its test A_t
    where the validation A_t is the task's best so far (the first of equals, as the DGM code)."""
    for i, s_state in seed_states(state, group):
      val = accuracy(s_state, t, *validation)["A"]
      best = record["seeds"][i].get("selection")
      if best is None or best["task"] != t or val > best["validation"]:
        record["seeds"][i]["selection"] = {"task": t, "step": step, "validation": val,
                                           "test": accuracy(s_state, t, data.x_test, data.y_test)["A"]}

  def selected_scores(rec, s_state, t, test_A) -> dict:
    """The task's selection (or, if its last phase had no steps, the task's end) as scores."""
    best = rec.pop("selection", None)
    if best is None or best["task"] != t:
      best = {"step": None, "validation": accuracy(s_state, t, *validation)["A"], "test": test_A}
    return {"A_best_validation": best["test"], "A_validation": best["validation"],
            "best_validation_step": best["step"]}

  def record_task(t, group, state, metrics, train_time, log_step=None):
    """Scores each seed's state after task t, records it, writes results.json and timings.json
    (and the scores to the logs, at ``log_step`` or the global step)."""
    task = seq[t]
    for j, (i, s_state) in enumerate(seed_states(state, group)):
      rec = record["seeds"][i]
      scores = accuracy(s_state, t, data.x_test, data.y_test)
      row = [float(v) for v in scores["row"]]
      rec["confusion_matrix"] = scores["confusion"].tolist()
      if seq.scenario == "class_incremental" or task_incremental:
        row[t + 1:] = [None] * (len(seq) - t - 1)  # unseen classes are masked: nothing measured
      rec["R"].append(row)
      rec["A"].append(scores["A"])
      extra = {"per_class_accuracy": {str(c): v for c, v in scores["per_class"].items()}}
      if joint is not None:  # RWalk's I_t against the joint model
        extra["intransigence"] = float(joint[t, t] - row[t])
      extra.update(method.extra_scores(s_state, data, seq, t, jax.random.fold_in(sample_keys[i], 10_000 + t)))
      extra.update(reverse_scores(s_state, t, jax.random.fold_in(sample_keys[i], 20_000 + t)))
      if validation is not None:
        extra.update(selected_scores(rec, s_state, t, scores["A"]))
      if judge is not None and "A_oracle" not in extra:  # (MeRGAN scores its own)
        per_class = oracle.generated_accuracy(
            lambda k, labels, s_state=s_state: sample(s_state, k, labels), judge.predict, seq.seen_classes(t),
            jax.random.fold_in(sample_keys[i], 30_000 + t), samples_per_class=int(config.eval.oracle_samples_per_class))
        extra["A_oracle"] = float(np.mean(list(per_class.values())))
        extra["oracle_per_class"] = {str(c): v for c, v in per_class.items()}
      for name, value in extra.items():
        rec.setdefault("scores", {}).setdefault(name, []).append(value)
      rec["per_task"].append({"task": t + 1, "classes": list(task.classes), "A": scores["A"],
                              "metrics": dict(metrics[j])})
      grid = None
      if config.eval.save_samples and i == 0:  # the grids show the first seed
        grid = sample_grid(method, s_state, jax.random.fold_in(sample_keys[i], t), seq.seen_classes(t),
                           config.eval.samples_per_class, lambda xb, s_state=s_state: predict(s_state, xb),
                           sample)
        if grid is not None and jax.process_index() == 0:
          save_grid(grid, os.path.join(workdir, f"samples_task{t + 1:02d}.png"),
                    tuple(config.data.value_range))
      runlog.write_task(i, t + 1, pos["global_step"] if log_step is None else log_step,
                        {"A": scores["A"], **{k: v for k, v in extra.items() if isinstance(v, float)}},
                        grid, tuple(config.data.value_range))
      log(f"task {t + 1:2d}/{len(seq)} " + (f"seed {seeds[i]} " if several else "")
          + f"classes={list(task.classes)} A_{t + 1}={100 * scores['A']:.2f}% "
          + "".join(f"{k}={100 * v:.2f}% " for k, v in extra.items() if isinstance(v, float))
          + (f"train {train_time:.1f}s " if j == 0 else "")
          + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics[j].items())))
    record["timings"].append({"task": t + 1, "seeds": [seeds[i] for i in group], "train_seconds": train_time})
    results = _results_payload(config, seq, record, scenario)
    # Timings live apart from results.json, so that a seeded run's results are reproducible byte
    # for byte (and equal after a resume).
    if jax.process_index() == 0:  # one writer when several hosts run the same program
      write_json(os.path.join(workdir, "results.json"), results)
      if config.log.plots and not no_plots:
        try:
          plots.plot_run(results, workdir)
        except ImportError as e:  # an accelerator image without matplotlib: results first
          no_plots.append(str(e))
          log(f"gmcl: log.plots: no plots ({e}); --config.log.plots=False silences this.")
      write_json(os.path.join(workdir, "timings.json"), {
          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "machine": xla.machine_description(),
          "wall_seconds": record["seconds"] + time.time() - clock[0],
          "compilation_cache": compile_cache.stats(),
          "per_task": record["timings"],
          **({"extended": record["extended"]} if record.get("extended") else {})})

  def summary():
    what = ("mean accuracy over tasks so far, task id given" if task_incremental
            else "accuracy over seen classes")
    results = _results_payload(config, seq, record, scenario)
    over = f", mean ± sd over seeds {seeds}" if several else ""
    log(evaluation.format_table(results["A"], f"{config.method} on {config.data.dataset} "
                                f"({config.data.protocol}): {what}, %{over}",
                                stds=results["A_std"] if several else None))
    for name, values in sorted(results["scores"].items()):
      if name.startswith("A_") and not name.endswith("_std") and values \
          and all(isinstance(v, float) for v in values):
        log(evaluation.format_table(values, f"scores.{name}, %{over}",
                                    stds=results["scores"].get(f"{name}_std") if several else None))
    return results

  outcomes = method.train_tasks(RunContext(config=config, data=data, sequence=seq, run_key=run_keys[0], log=log))
  if outcomes is not None and extend:  # (a lazy generator: nothing has trained or been written yet)
    raise ValueError(f"run(extend=True): {config.method} with this config drives its own tasks without "
                     "checkpoints, so a run of it cannot be extended. Run the longer sequence afresh "
                     "in another workdir.")
  if outcomes is not None:  # the method drives its own tasks (one call per seed, no checkpoints)
    if stacked:
      raise RuntimeError(f"{config.method} drives its own tasks (train_tasks), so its seeds run one "
                         "after another: its seeds_share_shapes must say False.")
    log(f"gmcl: method={config.method} dataset={config.data.dataset} protocol={config.data.protocol} "
        f"tasks={len(seq)} backend={jax.default_backend()} (the method's own driver)"
        + (f" seeds={seeds} (one after another)" if several else ""))
    runlog.open(config.to_dict())  # (scores per task only: the method's steps are its own)
    try:
      for i in range(len(seeds)):
        if i:
          outcomes = method.train_tasks(RunContext(config=config, data=data, sequence=seq,
                                                   run_key=run_keys[i], log=log))
        for t, outcome in enumerate(outcomes):
          record_task(t, [i], outcome.state, [outcome.metrics], outcome.train_seconds, log_step=t + 1)
    finally:
      runlog.close()
    return summary()

  chunk_mode = resolve_chunk_mode(t_cfg.chunk_mode)
  cumulative = method.data_mode == "cumulative"
  sizes = task_sizes(data, seq, config.data.train_limit)
  capacity = max(np.cumsum(sizes)) if cumulative else max(sizes)

  def init_group(g):
    return each_seed_list([method.init(init_keys[i]) for i in groups[g]])

  def each_seed_list(states):
    return seeds_lib.stack(states) if stacked else states[0]

  def check_extensible(old_tasks: int) -> None:
    """Refuses an extension whose result could differ from a run of the longer sequence."""
    why = ""
    if len(groups) > 1:
      why = (f"its {len(seeds)} seeds train one after another ({config.method}'s state shapes differ between "
             "seeds), and the loop does not take up each seed again from its own end")
    elif seq.scenario not in ("class_incremental", "task_incremental") and not task_incremental:
      why = (f"the {seq.scenario} scenario scores every task after each one (forward transfer), and the "
             "first tasks' scores of the tasks added now were never measured")
    else:
      old_config = config.copy_and_resolve_references()
      with old_config.unlocked():
        old_config.data.max_tasks = old_tasks
      old_method = build_method(config.method, old_config, data.image_shape, data.num_classes, parallel)
      shapes = lambda m: jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)),  # noqa: E731
                                                jax.eval_shape(m.init, init_keys[0]))
      if shapes(old_method) != shapes(method):
        why = (f"{config.method}'s state has shapes that depend on the number of tasks (per-task parameters "
               "or masks)")
    if why:
      raise IncompatibleCheckpoint(
          f"run(extend=True): the run in {ckpt_dir} ({old_tasks} tasks) cannot be extended to {len(seq)}: "
          f"{why}. Run the longer sequence afresh in another workdir.")

  state = init_group(0)
  # Where the run stands: `begun` says whether begin_task has run for `task`; `group` is the
  # group of seeds training (one group when they are stacked).
  pos = {"group": 0, "task": 0, "phase": 0, "step": 0, "global_step": 0, "begun": False}
  ckpt = RunCheckpointer(ckpt_dir, keep=c_cfg.keep) if c_cfg.enabled else None
  resumed = False
  extension = {}  # set when the checkpoint's run is extended to this longer sequence
  if extend and (ckpt is None or not ckpt.steps()):
    if ckpt is not None:
      ckpt.close()
    raise FileNotFoundError(
        f"run(extend=True): {ckpt_dir} holds no checkpoints, so there is no run to extend"
        + ("" if c_cfg.enabled else " (checkpoint.enabled is False)") + ". Run without --extend.")
  if ckpt is not None and ckpt.steps():
    if not resume:
      raise FileExistsError(f"{ckpt_dir} holds checkpoints {ckpt.steps()}; resume, or pass "
                            "overwrite=True (--overwrite) to start afresh.")

    def template_for(meta):
      # Checked before any state is read: a checkpoint of another config (another method or
      # model: other shapes) is refused, never skipped in favour of a fresh start.
      saved = meta["config"]
      old_tasks = _extended_from(saved, config)
      if extend and old_tasks is not None:  # compared as if written with this data.max_tasks
        saved = {**saved, "data": {**saved["data"], "max_tasks": config.data.max_tasks}}
      diffs = _config_differences(saved, config.to_dict(), added_keys(config.method))
      if diffs:
        hint = ("\n(data.max_tasks grew: extend=True, --extend, continues the run to the longer sequence.)"
                if old_tasks is not None and not extend else "")
        raise IncompatibleCheckpoint(
            f"The checkpoints in {ckpt_dir} were written with another config:\n  "
            + "\n  ".join(diffs) + "\nUse the same config, or overwrite=True (--overwrite)." + hint)
      if extend and old_tasks is not None:  # (the same length: a plain resume, as of an extension stopped)
        check_extensible(old_tasks)
        extension.update(max_tasks=old_tasks)
      written = meta.get("state_format", 1)  # absent: written before formats were recorded
      if written != method.state_format:
        raise IncompatibleCheckpoint(
            f"The checkpoints in {ckpt_dir} hold {config.method}'s state in layout {written}; this "
            f"gmcl writes and reads layout {method.state_format} (the state's structure changed "
            "between the versions). Resume with the gmcl version that wrote them, or start afresh "
            "with overwrite=True (--overwrite).")
      written_groups = meta.get("seed_groups", [[0]])  # absent: one seed, before seeds existed
      if written_groups != groups:
        raise IncompatibleCheckpoint(
            f"The checkpoints in {ckpt_dir} train the seeds in groups {written_groups} (a group is stacked "
            f"in one program); this gmcl trains {config.method}'s seeds in groups {groups}. Resume with the "
            "gmcl version that wrote them, or start afresh with overwrite=True (--overwrite).")
      group = groups[meta["position"].get("group", 0)]
      return each_seed_list([method.state_template(init_keys[i], meta) for i in group])

    try:
      restored = ckpt.restore_latest(template_for, warn=log)
    except BaseException:
      ckpt.close()
      raise
    if restored is None:  # every one failed (each reported above): refuse rather than start over
      ckpt.close()
      raise RuntimeError(
          f"None of the checkpoints {ckpt.steps()} in {ckpt_dir} can be restored (the reasons are "
          "above); nothing was changed. Start afresh with overwrite=True (--overwrite), which "
          "deletes them, or restore them from a copy.")
    step, state, meta = restored
    pos, record = {"group": 0, **meta["position"]}, _upgrade_record(meta["record"])
    resumed = True
    if extension:
      old_len = len(record["seeds"][0]["R"][0]) if record["seeds"][0]["R"] else extension["max_tasks"]
      dropped = {}
      for i, rec in enumerate(record["seeds"]):  # the rows of the tasks scored so far, to the new length
        rec["R"] = [list(row) + [None] * (len(seq) - len(row)) for row in rec["R"]]
        for name in ([] if config.eval.reverse_every_task else [f"A_reverse_{a}" for a in reverse_archs]):
          series = rec.get("scores", {}).get(name, [])
          if len(series) >= old_len and series[old_len - 1] is not None:
            # measured after the last task of the shorter run only: a longer run does not measure it
            # there, so it leaves results.json (and is kept in timings.json's "extended")
            dropped.setdefault(str(seeds[i]), {})[name] = series[old_len - 1]
            series[old_len - 1] = None
      record.setdefault("extended", []).append(
          {"from_tasks": old_len, "to_tasks": len(seq), "at_task": pos["task"], "at_step": step,
           **({"scores_dropped": {"task": old_len, "per_seed": dropped}} if dropped else {})})
      log(f"Extending the run of checkpoint {step} from {old_len} to {len(seq)} tasks (data.max_tasks "
          f"{extension['max_tasks']} -> {config.data.max_tasks}), at task {pos['task'] + 1}.")
    if pos["task"] >= len(seq) and pos["group"] == len(groups) - 1:
      # finished, but results.json is missing or unreadable
      if jax.process_index() == 0:
        write_json(os.path.join(workdir, "results.json"), _results_payload(config, seq, record, scenario))
      log(f"gmcl: {workdir} holds a finished run whose results.json was missing or unreadable; "
          f"rewritten from the final checkpoint (step {step}).")
    elif pos["task"] >= len(seq):
      log(f"Resuming from checkpoint {step}: seed {seeds[groups[pos['group']][0]]} has finished; "
          f"seed {seeds[groups[pos['group'] + 1][0]]} starts.")
    else:
      log(f"Resuming from checkpoint {step}: " + (f"seed {seeds[groups[pos['group']][0]]}, " if not stacked
                                                    and several else "")
          + f"task {pos['task'] + 1}, phase {pos['phase']}, step {pos['step']}.")

  def snapshot_id(group, tasks_ended):
    """A snapshot's identity: the tasks ended when it was taken, counted over groups of seeds."""
    return group * (len(seq) + 1) + tasks_ended

  def save(state, checked=False):
    if ckpt is not None:
      if not checked:  # (a task boundary checks before it scores the task)
        check_finite_state(state)
      record["seconds"] += time.time() - clock[0]
      clock[0] = time.time()
      first = seeds_lib.take(state, 0) if stacked else state  # stacked seeds share their shapes
      record["log"] = runlog.state()
      ckpt.save(pos["global_step"], state, {"position": dict(pos), "record": record,
                                            "config": config.to_dict(),
                                            "method": method.checkpoint_meta(first),
                                            "seed_groups": groups,
                                            "state_format": method.state_format},
                snapshot_id=snapshot_id(pos["group"], pos["task"]))

  def host_metrics(metrics, group) -> list[dict]:
    """One dict of host floats per seed of ``group`` (a stacked chunk's metrics have the seed axis)."""
    values = jax.device_get(metrics)
    if not stacked:
      return [{k: float(v) for k, v in values.items()}]
    return [{k: float(v[j]) for k, v in values.items()} for j in range(len(group))]

  def check_finite(metrics, phase_name, group):
    bad = {f"{k}" + (f" (seed {seeds[group[j]]})" if several else ""): v
           for j, m in enumerate(host_metrics(metrics, group)) for k, v in m.items() if not np.isfinite(v)}
    if bad:
      last = ckpt.steps()[-1] if ckpt is not None and ckpt.steps() else None
      raise FloatingPointError(
          f"Non-finite loss in task {pos['task'] + 1}, phase {phase_name!r}, step {pos['step']} "
          f"(global step {pos['global_step']}): "
          + ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
          + (f". The last good checkpoint is step {last} in {ckpt_dir}." if last is not None
             else ". No checkpoint was written."))

  def check_finite_state(state):
    """Never checkpoint a state with a NaN or infinite float (parameters, optimiser moments,
    snapshots): "the last good checkpoint" must be good."""
    leaves = [(jax.tree_util.keystr(path), x) for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]
    finite = jax.device_get([jnp.all(jnp.isfinite(x)) for _, x in leaves])
    bad = [name for (name, _), ok in zip(leaves, finite) if not ok]
    if bad:
      last = ckpt.steps()[-1] if ckpt.steps() else None
      raise FloatingPointError(
          f"Non-finite values in the state after task {pos['task'] + 1}, step {pos['step']} "
          f"(global step {pos['global_step']}), in {len(bad)} arrays: {', '.join(bad[:5])}"
          + (" ..." if len(bad) > 5 else "") + "; it was not checkpointed"
          + (f". The last good checkpoint is step {last} in {ckpt_dir}." if last is not None
             else ". No checkpoint was written."))

  clock[0] = time.time()
  steps_this_call = 0
  how_seeds = ("one after another" if not stacked else "stacked, one program"
               + (", split over the devices (vmap)" if seed_axis == "shard" else ""))
  log(f"gmcl: method={config.method} dataset={config.data.dataset} protocol={config.data.protocol} "
      f"tasks={len(seq)} backend={jax.default_backend()} chunk={t_cfg.chunk_steps} ({chunk_mode}) "
      f"parallel={parallel.mode} x{parallel.num_devices}"
      + (f" seeds={seeds} ({how_seeds})" if several else ""))

  runlog.open(config.to_dict(), resume=record.get("log", {}) if resumed else None,
              global_step=pos["global_step"], group=pos["group"])
  try:
    for g in range(pos["group"], len(groups)):
      group = groups[g]
      if g != pos["group"]:  # the previous group of seeds has finished: the next one starts
        pos.update(group=g, task=0, phase=0, step=0, begun=False)
        runlog.start_group(g, pos["global_step"])
        state = init_group(g)
      for t in range(pos["task"], len(seq)):
        task_start = time.time()
        if not pos["begun"]:
          release_if_crowded(log)
          state = each_seed(lambda s, t=t: method.begin_task(s, t, seq.active_mask(t)), state, group)
          pos.update(task=t, phase=0, step=0, begun=True)
          record["metrics"] = [{} for _ in group]
          if t == 0 and seq.scenario != "class_incremental" and not task_incremental:
            for i, s_state in seed_states(state, group):  # forward transfer's reference: untrained
              record["seeds"][i]["reference_row"] = [
                  float(v) for v in accuracy(s_state, len(seq) - 1, data.x_test, data.y_test)["row"]]
        x, y, start = training_examples(data, seq, t, cumulative, config.data.train_limit, with_start=True)
        arrays = task_arrays(x, y, capacity, start=start if cumulative else None)
        phases = list(method.phases())
        bar = None
        if progress:
          from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
          bar = tqdm(total=sum(p.num_steps for p in phases), desc=f"task {t + 1}/{len(seq)}",
                     leave=False, dynamic_ncols=True)
          bar.update(sum(p.num_steps for p in phases[:pos["phase"]]) + pos["step"])
        for p_index in range(pos["phase"], len(phases)):  # the index keys the phase, skipped or not
          phase = phases[p_index]
          phase_key = each_seed_list([step_key(train_keys[i], t, p_index) for i in group])
          done = pos["step"]
          axis = seed_axis if seed_axis != "stacked" or done >= phase.num_steps else \
              resolve_seed_axis(t_cfg.seed_axis, phase.step, state, arrays, phase_key, parallel)
          # model selection in the task's last phase: every validation_every_steps and at its end
          selecting = validation is not None and p_index == len(phases) - 1
          every_val = int(config.eval.validation_every_steps) if selecting else 0
          while done < phase.num_steps:
            k = min(t_cfg.chunk_steps, phase.num_steps - done)
            if every_val:  # chunks end at the selection points
              k = min(k, every_val - done % every_val)
            state, metrics = run_chunk(phase.step, state, arrays, phase_key, done, k, chunk_mode,
                                       parallel, fusions, axis)
            done += k
            steps_this_call += k
            pos.update(step=done, global_step=pos["global_step"] + k)
            runlog.add(metrics, k)
            if runlog.due(done == phase.num_steps):  # before a checkpoint, which keeps an open interval
              runlog.write_interval(group, stacked, t + 1, phase.name, pos["global_step"])
            if bar is not None:
              bar.update(k)
            if selecting and (done == phase.num_steps or (every_val and done % every_val == 0)):
              select(t, group, state, done)  # before the checkpoint below, which keeps it
            every = c_cfg.every_steps
            if every and pos["global_step"] // every > (pos["global_step"] - k) // every \
                and done < phase.num_steps:
              check_finite(metrics, phase.name, group)  # never checkpoint a diverged state
              save(state)
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
              if bar is not None:
                bar.close()
              raise RunInterrupted(f"stopped after {steps_this_call} steps (task {t + 1}, "
                                   f"phase {phase.name}, step {done}).")
          if phase.num_steps:
            check_finite(metrics, phase.name, group)
            for j, values in enumerate(host_metrics(metrics, group)):
              record["metrics"][j].update({f"{phase.name}/{k}": v for k, v in values.items()})
          pos.update(phase=p_index + 1, step=0)
        if bar is not None:
          bar.close()
        state = each_seed(method.end_task, state, group)
        if ckpt is not None:  # before results.json lists the task: a state that cannot be kept is not scored
          check_finite_state(state)
          ckpt.check_space(pos["global_step"], state, snapshot_id(g, t + 1))
        record_task(t, group, state, record["metrics"], time.time() - task_start)
        pos.update(task=t + 1, phase=0, step=0, begun=False)
        if ckpt is not None and len(groups) > 1 and t + 1 == len(seq):
          # this seed's end, before the checkpoint that says it ended (the next seed's replace it)
          ckpt.save_final(g, state, {"position": dict(pos), "seed": seeds[group[0]],
                                     "method": method.checkpoint_meta(state),
                                     "state_format": method.state_format})
        save(state, checked=True)  # the task boundary: snapshots taken, scores written
  finally:
    runlog.close()
  if ckpt is not None:
    ckpt.close()
  return summary()


@dataclasses.dataclass
class FinishedRun:
  """A finished run's final states, read back from its last checkpoint (:func:`restore_final`)."""
  config: ml_collections.ConfigDict
  data: Data
  sequence: object
  method: object
  seeds: list  # the seeds whose final states are in ``states``
  states: list  # one final state per seed of ``seeds``
  results: dict  # the run's results.json
  step: int  # the checkpoint's global step


def restore_final(workdir: str, *, data: Optional[Data] = None, log: Callable[[str], None] = print) -> FinishedRun:
  """The final state of each seed of the finished run in ``workdir`` (its results.json and last
  checkpoint), with the config, data and method it was trained with, for scoring it again
  (``experiments.rescore``). Nothing in ``workdir`` is written.

  Raises:
    FileNotFoundError: no finished run, or no checkpoint of its end (``checkpoint.enabled`` False).
    ValueError: its seeds trained one after another and not every seed's final state is kept
      (``checkpoints/finals``, written since gmcl kept them).
  """
  if _finished_run(workdir) is None:
    raise FileNotFoundError(f"{workdir} holds no finished run (results.json with every task completed).")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  config = ml_collections.ConfigDict(results["config"])
  data = data or load_data(config)
  seq = build_sequence(config, data.image_shape, data.num_classes)
  if config.eval.get("validation_fraction"):  # as the run trained: on the rest of the training images
    data, _ = hold_out(data, float(config.eval.validation_fraction), by_class=seq.scenario == "class_incremental")
  method = build_method(config.method, config, data.image_shape, data.num_classes, Parallel())
  seeds = seeds_lib.seed_list(config)
  stacked = len(seeds) > 1 and method.seeds_share_shapes
  method.setup(data, log=log)
  init_keys = [jax.random.split(jax.random.PRNGKey(s), 3)[0] for s in seeds]
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"{ckpt_dir} does not exist: the run kept no checkpoints (checkpoint.enabled).")
  ckpt = RunCheckpointer(ckpt_dir)
  try:
    if len(seeds) > 1 and not stacked:  # one after another: each seed's end in finals/
      kept = ckpt.final_groups()
      if kept != list(range(len(seeds))):
        raise ValueError(f"{workdir}: {config.method}'s {len(seeds)} seeds trained one after another, and "
                         f"the final states of seeds {[seeds[g] for g in kept]} of {seeds} are kept in "
                         f"{ckpt_dir}/finals (runs before gmcl kept each seed's end keep only the last "
                         "seed's): rescore single-seed runs of it.")
      states = []
      for g in kept:
        meta = ckpt.final_meta(g)
        if meta.get("seed") != seeds[g]:
          raise IncompatibleCheckpoint(f"{ckpt_dir}/finals/{g} holds seed {meta.get('seed')}, not {seeds[g]}.")
        states.append(ckpt.restore_final(g, method.state_template(init_keys[g], meta)))
      return FinishedRun(config, data, seq, method, seeds, states, results, int(max(ckpt.steps(), default=0)))
    if not ckpt.steps():
      raise FileNotFoundError(f"{ckpt_dir} holds no checkpoints.")

    def template_for(meta):
      if meta["position"].get("task", 0) < len(seq):
        raise IncompatibleCheckpoint(f"the newest checkpoint in {ckpt_dir} is not the run's end (task "
                                     f"{meta['position'].get('task', 0)} of {len(seq)}).")
      states = [method.state_template(k, meta) for k in init_keys]
      return seeds_lib.stack(states) if stacked else states[0]

    restored = ckpt.restore_latest(template_for, warn=log)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir} can be restored (the reasons are above).")
  step, state, _ = restored
  states = seeds_lib.unstack(state, len(seeds)) if stacked else [state]
  return FinishedRun(config, data, seq, method, seeds, states, results, step)
