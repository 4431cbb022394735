"""The method interface the task loop drives, and the compiled K-step chunk.

A method is a value with pure transitions over a ``flax.struct`` state:

    state = method.init(key)
    for t, task in enumerate(sequence):
      state = method.begin_task(state, t, active_classes)
      for p, phase in enumerate(method.phases()):  # e.g. ("generator", "solver") for DGR
        for i in range(phase.num_steps):
          key_i = jax.random.fold_in(step_key(key, t, p), i)
          state, metrics = phase.step(state, data, key_i)
      state = method.end_task(state)               # takes the frozen snapshots
      logits = method.predict(state, x_test)

Every state has a ``frozen`` field: the snapshots of the previous task's models
(G_{t-1}, C_{t-1}), or None before the first task ends. Chunks never donate it and
never differentiate it.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import threading
from typing import Any, Callable, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from gmcl import program_cache, xla
from gmcl import seeds as seeds_lib
from gmcl.data.sampling import TaskArrays, sample_batch
from gmcl.parallel import Parallel
from gmcl.types import Metrics, PRNGKey

State = Any
StepFn = Callable[[State, TaskArrays, PRNGKey], tuple[State, Metrics]]


@struct.dataclass
class ModelState:
  """Parameters, optimiser state and (for batch-norm models) running statistics of one network."""
  params: Any
  opt_state: optax.OptState
  batch_stats: Any = None

  def variables(self) -> dict:
    v = {"params": self.params}
    if self.batch_stats is not None:
      v["batch_stats"] = self.batch_stats
    return v


def check_batch_divides(batch_size: int, parallel: Parallel) -> None:
  """Raises ValueError unless the global batch splits evenly over ``parallel``'s devices."""
  if batch_size % parallel.num_devices:
    raise ValueError(f"train.batch_size={batch_size} must be divisible by the "
                     f"{parallel.num_devices} devices of parallel mode {parallel.mode!r}.")


def reset_optimizer(model: ModelState, tx: optax.GradientTransformation) -> ModelState:
  """``model`` with a fresh optimiser state (its parameters kept)."""
  return model.replace(opt_state=tx.init(model.params))


def apply_gradients(model: ModelState, grads, tx: optax.GradientTransformation) -> ModelState:
  updates, opt_state = tx.update(grads, model.opt_state, model.params)
  return model.replace(params=optax.apply_updates(model.params, updates), opt_state=opt_state)


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What a method's own driver of its tasks (:meth:`Method.train_tasks`) is given by the loop."""
  config: Any  # the experiment config
  data: Any  # the run's gmcl.data.build.Data
  sequence: Any  # the gmcl.data.tasks.TaskSequence
  run_key: PRNGKey  # PRNGKey(s) of the seed s it trains (config.seed, config.seed + 1, ...)
  log: Callable[[str], None] = print


@dataclasses.dataclass(frozen=True)
class TaskOutcome:
  """One task's end, as a method's driver yields it: the state to evaluate after the task, the
  metrics to record for it (host floats by name) and its training time."""
  state: Any
  metrics: dict
  train_seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class Phase:
  """A stretch of training within a task: ``num_steps`` calls of ``step``."""
  name: str
  num_steps: int
  step: StepFn


class DataParallel:
  """The data-parallel helpers of a part of a method that draws batches and takes gradients
  (a method, or a component it contains such as :class:`gmcl.methods.memory.GenerativeMemory`):
  every per-example random draw is global, then sliced per device (see :mod:`gmcl.parallel`).
  ``parallel`` is the :class:`gmcl.parallel.Parallel` the part was built with."""
  parallel: Parallel = Parallel()

  def local(self, x: jax.Array) -> jax.Array:
    """This device's rows of a global-batch array (pmap), or the array constrained to the
    batch sharding (jit over a mesh), or the array itself (one device)."""
    if self.parallel.mode == "pmap":
      b = x.shape[0] // self.parallel.num_devices
      return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(self.parallel.axis_name) * b, b)
    if self.parallel.mode == "jit":
      return jax.lax.with_sharding_constraint(x, self.parallel.batch_sharding())
    return x

  def local_size(self, n: int) -> int:
    """Rows of a global batch of ``n`` that one step invocation sees (n / devices under pmap)."""
    return n // self.parallel.num_devices if self.parallel.mode == "pmap" else n

  def cross_device_mean(self, tree):
    """``lax.pmean`` over devices under pmap (gradients, metrics); the identity otherwise."""
    if self.parallel.mode == "pmap":
      return jax.lax.pmean(tree, self.parallel.axis_name)
    return tree

  def global_sum(self, x: jax.Array) -> jax.Array:
    """A sum over the global batch, from this device's rows: ``sum(x)`` times the number of
    devices under pmap, so that the ``lax.pmean`` of its gradients is the global sum's."""
    if self.parallel.mode == "pmap":
      return jnp.sum(x) * self.parallel.num_devices
    return jnp.sum(x)

  def sample_batch(self, data: TaskArrays, key: PRNGKey, batch_size: int):
    """A global batch drawn by ``key``, of which this device keeps its rows."""
    x, y = sample_batch(data, key, batch_size)
    return self.local(x), self.local(y)


class Method(DataParallel, abc.ABC):
  """Base class of continual-learning methods (see the module docstring).

  Attributes:
    name: registry name.
    data_mode: "current" (train on the current task's data) or "cumulative"
      (all data seen so far: the joint-training upper bound).
    has_generator: whether :meth:`sample` returns images.
    conditional: whether :meth:`sample` draws the classes it is given (an unconditional
      generator's samples are sorted into classes by the current classifier).
    scenario: None (the task sequence's own: class- or domain-incremental) or
      ``"task_incremental"`` (the task id is given at test time: the loop scores each task
      with :meth:`predict_task`).
    state_format: the version of the state's structure; a method raises it when its state's
      layout changes, so that the loop refuses a checkpoint written with another layout, with
      a message, instead of failing to restore it.
  """
  name: str = ""
  data_mode: str = "current"
  has_generator: bool = False
  conditional: bool = False
  scenario: Optional[str] = None
  state_format: int = 1

  @abc.abstractmethod
  def init(self, key: PRNGKey) -> State:
    """The state before the first task."""

  @abc.abstractmethod
  def begin_task(self, state: State, task_index: int, active_classes: np.ndarray) -> State:
    """Prepares ``state`` for task ``task_index``; ``active_classes`` is a boolean (K,) mask."""

  @abc.abstractmethod
  def phases(self) -> Sequence[Phase]:
    """The training phases of one task, in order."""

  @abc.abstractmethod
  def end_task(self, state: State) -> State:
    """Ends a task: takes the frozen snapshots used by the next one."""

  @abc.abstractmethod
  def predict(self, state: State, x: jax.Array) -> jax.Array:
    """Logits (B, K) with classes not yet seen masked out."""

  def train_tasks(self, run: RunContext) -> Optional[Iterable[TaskOutcome]]:
    """The driver of this method's tasks, overridable as jaxline's ``train_loop`` is.

    None (the default) lets the loop drive: task after task, ``begin_task``, every phase's steps
    in compiled chunks, ``end_task``, with checkpoints and resume. A method that trains its tasks
    another way (lsa's parallel mode: every task at once) returns an iterable of one
    :class:`TaskOutcome` per task, in order; the loop evaluates, records and writes each as it
    does its own (no checkpoints: the driver runs in one call).
    """
    del run
    return None

  def program_key(self):
    """A hashable value that determines every program this method's steps trace, or None.

    Compiled chunks are cached under it (:func:`step_identity`), so two methods with equal keys
    must trace equal programs from equal argument shapes. By default: the class, the config's
    :func:`config_fingerprint`, the image shape, the number of classes and ``parallel``, which
    is everything a method of this library is built from (its builders take nothing else). The
    config is fingerprinted when the method stores it (``self.config = config``, first in every
    constructor), so a config changed afterwards does not change the key. A step must therefore
    depend only on those (not on attributes set later, module functions patched later, or
    ``setup(data)``); a method that depends on more overrides this (or returns None: its
    programs are then cached per step object).
    """
    key = self.__dict__.get("_program_key")
    fingerprint = self.__dict__.get("_config_fingerprint")
    if key is None and fingerprint is not None:
      key = (type(self).__module__, type(self).__qualname__, fingerprint,
             tuple(getattr(self, "image_shape", ())), getattr(self, "num_classes", None),
             self.parallel)
      self.__dict__["_program_key"] = key
    return key

  def __setattr__(self, name, value):
    if name == "config" and value is not None:  # the config as the method was built from it
      self.__dict__["_config_fingerprint"] = config_fingerprint(value)
    super().__setattr__(name, value)

  @property
  def seeds_share_shapes(self) -> bool:
    """Whether every seed's state has the same structure and shapes at every point of a run (the
    default), so that the loop can stack seeds and train them in one program (:mod:`gmcl.seeds`);
    a method whose shapes depend on what it learnt (DGM's growth) says False, and its seeds run one
    after another. So does a method that drives its own tasks (:meth:`train_tasks`): its driver
    trains one seed per call."""
    return True

  def predict_task(self, state: State, x: jax.Array, task_index) -> jax.Array:
    """Logits (B, K) with the task id given (task-incremental methods: that task's head);
    by default :meth:`predict`."""
    del task_index
    return self.predict(state, x)

  def checkpoint_meta(self, state: State) -> dict:
    """JSON-serialisable facts a checkpoint must record to rebuild the state's structure
    (a growing network's widths); see :meth:`state_template`."""
    del state
    return {}

  def state_template(self, key: PRNGKey, meta: dict) -> State:
    """A state of the structure a checkpoint holds (values are ignored), from its ``meta``:
    ``meta["position"]`` (where the run stood) and ``meta["method"]`` (:meth:`checkpoint_meta`).
    By default: ``init`` and, after the first task, ``end_task`` (which adds the snapshot)."""
    tmpl = self.init(key)
    return self.end_task(tmpl) if meta["position"]["task"] > 0 else tmpl

  def setup(self, data, log: Callable[[str], None] = print) -> None:
    """Called once by the loop with the run's :class:`gmcl.data.build.Data`, before any task
    (and again on resume): methods that need something built from the whole dataset
    (MeRGAN's oracle classifier) build or load it here."""
    del data, log

  def extra_scores(self, state: State, data, sequence, task_index: int,
                   key: PRNGKey) -> dict[str, Any]:
    """Scores besides A_t after task ``task_index``, by name: the loop appends each to the seed's
    ``results.json["per_seed"][i]["scores"][name]`` and reports their mean over seeds at the top
    (``scores[name]``, ``scores[name + "_std"]``; a structured score of one seed as it is). Values
    are floats, None or JSON-serialisable dicts."""
    del state, data, sequence, task_index, key
    return {}

  def sample(self, state: State, key: PRNGKey, labels: jax.Array) -> Optional[jax.Array]:
    """Images from the current generator (conditional ones use ``labels``), or None."""
    del state, key, labels
    return None


def step_key(run_key: PRNGKey, task_index: int, phase_index: int) -> PRNGKey:
  """The key of a phase; step i of it uses ``fold_in(phase_key, i)``."""
  return jax.random.fold_in(jax.random.fold_in(run_key, task_index), phase_index)


def _mean_metrics(metrics_list: Sequence[Metrics]) -> Metrics:
  return jax.tree.map(lambda *m: jnp.mean(jnp.stack(m)), *metrics_list)


def config_fingerprint(config) -> str:
  """The part of an experiment config that can shape a method's compiled programs, as JSON: all
  of it but ``seed`` and ``num_seeds`` (keys are arguments of every program; the seed axis is the
  chunk's, :func:`run_chunk`) and the ``checkpoint`` and ``eval``
  sections (read by the loop and by scores, never by a step)."""
  values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  for name in ("seed", "num_seeds", "checkpoint", "eval"):
    values.pop(name, None)
  return json.dumps(values, sort_keys=True, default=repr)


def step_identity(step: StepFn):
  """The value a chunk program of ``step`` is cached under: for a method's bound step, the
  method's :meth:`Method.program_key` and the step's name (equal methods trace equal programs);
  for any other callable (or a method whose key is None), the callable itself, which the cache
  then keeps alive until it is evicted or cleared."""
  owner, func = getattr(step, "__self__", None), getattr(step, "__func__", None)
  key = owner.program_key() if isinstance(owner, Method) else None
  if key is None or func is None:
    return step
  return key, func.__module__, func.__qualname__


def _is_gmcl_identity(identity) -> bool:
  """Whether a :func:`step_identity` is a gmcl method's key and a gmcl step's name."""
  return (isinstance(identity, tuple) and len(identity) == 3 and isinstance(identity[0], tuple)
          and bool(identity[0]) and str(identity[0][0]).startswith("gmcl.")
          and str(identity[1]).startswith("gmcl."))


class _ChunkProgram:
  """One compiled K-step chunk, kept by :func:`_chunk_program` under its value: it holds no
  method. The step it runs is lent to it for the duration of each call (tracing, when jax.jit
  or jax.pmap traces, happens inside the call), so a finished run's method, state and data are
  freed when the run lets go of them, while an equal run later in the process reuses the program."""

  def __init__(self, num_steps: int, mode: str, parallel: Parallel, fusions: str, seeds: str = "",
               identity=None):
    self._lock = threading.Lock()
    self._step: Optional[StepFn] = None
    # Kept across processes (gmcl.program_cache) when the step has a method's program key and the
    # program runs on one device; per argument signature: the exported program, or False.
    # Only gmcl's own methods and steps: the program key hashes gmcl's source, not a user's.
    self._identity = identity if _is_gmcl_identity(identity) else None
    self._settings = (num_steps, mode, fusions, seeds)
    self._persistable = self._identity is not None and parallel.mode == "none" and seeds != "shard"
    self._exported: dict = {}
    self.exported_options: Optional[dict] = None  # the latest call's, when it ran an exported program

    def chunk(live, frozen, data, phase_key, start):
      step = self._step
      state = live.replace(frozen=frozen)
      keys = jax.vmap(lambda i: jax.random.fold_in(phase_key, i))(start + jnp.arange(num_steps))
      if mode == "scan":
        state, metrics = jax.lax.scan(lambda s, k: step(s, data, k), state, keys)
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
      else:  # "unroll": a Python loop inside one jit (faster than scan on XLA:CPU)
        collected = []
        for i in range(num_steps):
          state, m = step(state, data, keys[i])
          collected.append(m)
        metrics = _mean_metrics(collected)
      return state.replace(frozen=None), metrics

    if seeds == "unroll":  # a leading seed axis; each seed's chunk one after another, in one program
      one_seed = chunk

      def chunk(live, frozen, data, phase_key, start):  # pylint: disable=function-redefined
        outs = [one_seed(seeds_lib.take(live, i), seeds_lib.take(frozen, i), data, phase_key[i], start)
                for i in range(phase_key.shape[0])]
        return seeds_lib.stack(outs)
    elif seeds:  # a leading seed axis on the state, its snapshot and the phase key; data shared
      chunk = jax.vmap(chunk, in_axes=(0, 0, None, 0, None))
    if seeds == "shard":  # the seed axis split over the mesh: each device trains its seeds
      self.compiled = xla.jit(chunk, fusions=fusions, donate_argnums=(0,),
                              out_shardings=parallel.seed_sharding())
    elif parallel.mode == "pmap":
      self.compiled = jax.pmap(chunk, axis_name=parallel.axis_name, in_axes=(None, None, None, None, 0),
                               devices=list(parallel.devices))
    elif parallel.mode == "jit":
      self.compiled = xla.jit(chunk, fusions=fusions, donate_argnums=(0,),
                              out_shardings=parallel.replicated())
    else:
      self.compiled = xla.jit(chunk, fusions=fusions, donate_argnums=(0,))
    self._chunk = chunk

  def _program(self, args):
    """The exported program for ``args`` (gmcl.program_cache), or None: the jitted chunk runs.
    Remembered per argument signature and jax settings (a ``jax.default_matmul_precision``
    context traces another program, as jit's own cache knows)."""
    if not (self._persistable and program_cache.folder()):
      return None
    memo = (xla.signature(args, {}), program_cache.trace_context())
    program = self._exported.get(memo)
    if program is None:
      key_of = lambda: program_cache.program_key(self._identity, self._settings, args)
      program = self._exported[memo] = (
          program_cache.load_or_export(key_of, args, self._chunk, self._settings[2]) or False)
    return program or None

  def _with(self, step: StepFn, method: str, args):
    with self._lock:
      self._step = step
      try:
        program = self._program(args)
        if program is not None:
          if method == "lower":
            return program.lower(*args)
          first = not program.called
          try:
            out = program(*args)
          except Exception as e:  # pylint: disable=broad-except
            if not first:
              raise
            # Lowering or compiling the read-back module failed (before anything ran, so before
            # any argument was donated): traced the usual way from now on.
            program_cache.discard(e)
            self._exported = {k: (False if v is program else v) for k, v in self._exported.items()}
          else:
            self.exported_options = program.options
            return out
        self.exported_options = None
        return getattr(self.compiled, method)(*args)
      finally:
        self._step = None


class BoundChunk:
  """A cached chunk program with the step it runs: call it as the compiled function
  (``live, frozen, data, phase_key, start``), or ``lower`` it."""

  def __init__(self, program: _ChunkProgram, step: StepFn):
    self.program, self.step = program, step

  def __call__(self, *args):
    return self.program._with(self.step, "__call__", args)  # pylint: disable=protected-access

  def lower(self, *args):
    return self.program._with(self.step, "lower", args)  # pylint: disable=protected-access

  @property
  def options(self) -> dict:
    """The XLA compiler options of the program's latest call (see :mod:`gmcl.xla`; none under pmap)."""
    if self.program.exported_options is not None:
      return dict(self.program.exported_options)
    return getattr(self.program.compiled, "options", {})


PROGRAM_CACHE_SIZE = 64


@functools.lru_cache(maxsize=PROGRAM_CACHE_SIZE)
def _chunk_program(identity, num_steps: int, mode: str, parallel: Parallel, fusions: str,
                   seeds: str = "") -> _ChunkProgram:
  return _ChunkProgram(num_steps, mode, parallel, fusions, seeds, identity)


def _compiled_chunk(step: StepFn, num_steps: int, mode: str, parallel: Parallel,
                    fusions: str = "auto", seeds: str = "") -> BoundChunk:
  """jit of ``num_steps`` steps; the live state (argument 0) is donated, the snapshot is not.

  Programs are cached by value (:func:`step_identity`, the chunk's length and mode, ``parallel``,
  ``fusions``; the newest :data:`PROGRAM_CACHE_SIZE`): two runs of one method with one config
  and shapes in a process share them, and the cache holds no method, state or data.

  Under ``parallel.mode == "jit"`` the outputs are replicated over the mesh; under
  ``"pmap"`` the chunk runs once per device (no donation: inputs are broadcast; ``jax.pmap``
  takes no compiler options, so ``fusions`` is XLA's default there). ``fusions``: the XLA:CPU
  library fusions (:mod:`gmcl.xla`). ``seeds``: see :func:`run_chunk`.
  """
  return BoundChunk(_chunk_program(step_identity(step), num_steps, mode, parallel, fusions, seeds),
                    step)


def clear_compiled_chunks() -> None:
  """Forgets the compiled chunk programs kept for reuse."""
  _chunk_program.cache_clear()
  _HAS_CONVOLUTION.clear()


def compiled_chunk_count() -> int:
  """How many chunk programs the cache holds."""
  return _chunk_program.cache_info().currsize


CHUNK_MODES = ("unroll", "scan")
SEED_AXES = ("", "vmap", "unroll", "shard")


def resolve_chunk_mode(mode: str) -> str:
  """``train.chunk_mode``: "auto": unrolled steps on the CPU (lax.scan over GAN steps is far slower on XLA:CPU),
  lax.scan on accelerators."""
  if mode != "auto":
    return mode
  return "unroll" if jax.default_backend() == "cpu" else "scan"


def first_replica(x: jax.Array) -> jax.Array:
  """Replica 0 of a ``jax.pmap`` output (leading axis: devices), read from device 0's own buffer.

  Indexing the global array (``x[0]``) runs a gather compiled over the whole device mesh, and
  XLA:CPU aborted the process inside it (JAX 0.10.2, 8 simulated devices: on every run on an Intel
  Xeon, now and then on an AMD EPYC). The first addressable shard is already that row, on one
  device: only a reshape of a one-device array remains.
  """
  shard = next(s for s in x.addressable_shards if (s.index[0].start or 0) == 0).data
  return shard.reshape(shard.shape[1:])


SEED_AXIS_CHOICES = ("auto", "vmap", "unroll")
_HAS_CONVOLUTION: dict = {}


def resolve_seed_axis(choice: str, step: StepFn, state: State, data: TaskArrays, phase_key: PRNGKey,
                      parallel: Parallel = Parallel()) -> str:
  """``train.seed_axis`` for one phase's chunk of stacked seeds: "vmap" or "unroll" as given, or for
  "auto" the one measured faster for the program: on the CPU, "unroll" when the step convolves
  (vmap makes each convolution a grouped one over the seeds' kernels, which XLA:CPU ran at half the
  speed of the seeds' convolutions one after another: BENCHMARKS.md, "Seeds"), "vmap" otherwise;
  "vmap" on GPU and TPU. Decided from the step's single-seed program (traced once per step and
  argument signature; ``parallel``: the one the method was built with), never from call order."""
  if choice not in SEED_AXIS_CHOICES:
    raise ValueError(f"train.seed_axis={choice!r}; valid choices: {list(SEED_AXIS_CHOICES)}.")
  if choice != "auto":
    return choice
  if jax.default_backend() != "cpu":
    return "vmap"
  one = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)  # no copy
  args = (one(state), data, one(phase_key))
  identity = step_identity(step)
  key = (identity, xla.signature(args, {}))
  if key not in _HAS_CONVOLUTION:
    axis_env = [(parallel.axis_name, parallel.num_devices)] if parallel.mode == "pmap" else None
    traced = lambda: xla.has_convolution(jax.make_jaxpr(step, axis_env=axis_env)(*args).jaxpr)
    if _is_gmcl_identity(identity) and program_cache.folder():  # kept with the programs: no trace next time
      settings = ("has_convolution", parallel.mode, parallel.num_devices)
      key_of = lambda: program_cache.program_key(identity, settings, args)
      _HAS_CONVOLUTION[key] = bool(program_cache.remembered("has_convolution", key_of, traced))
    else:
      _HAS_CONVOLUTION[key] = traced()
  return "unroll" if _HAS_CONVOLUTION[key] else "vmap"


def run_chunk(step: StepFn, state: State, data: TaskArrays, phase_key: PRNGKey, start: int,
              num_steps: int, mode: str = "unroll", parallel: Parallel = Parallel(),
              fusions: str = "auto", seeds: str = "") -> tuple[State, Metrics]:
  """Runs steps ``start .. start+num_steps-1`` of a phase in one compiled call.

  Step i uses ``fold_in(phase_key, i)``, so any split of a phase into chunks gives
  the same result as single steps. The snapshot ``state.frozen`` is passed as a
  separate, non-donated argument. Metrics are averaged over the chunk. ``parallel``
  must be the one the method was built with (see :mod:`gmcl.parallel`); ``fusions`` the
  XLA:CPU library fusions (:mod:`gmcl.xla`, ``config.train.xla_cpu_fusions``).

  ``seeds``: "" (one seed), or the state, its snapshot and ``phase_key`` carry a leading seed axis
  (:mod:`gmcl.seeds`) and one program trains every seed: "vmap" (batched under ``jax.vmap``, with
  ``parallel`` as without seeds), "unroll" (each seed's steps in turn, the single-seed program's
  operations), or "shard" (vmap with the seed axis split over the mesh: ``parallel.mode == "jit"``,
  and the method was built for one device, ``Parallel()``). Metrics then have the seed axis.
  """
  if mode not in CHUNK_MODES:
    raise ValueError(f"chunk mode {mode!r}; valid choices: {CHUNK_MODES}.")
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps} must be >= 1.")
  if seeds not in SEED_AXES:
    raise ValueError(f"seeds={seeds!r}; valid choices: {SEED_AXES}.")
  if seeds == "shard" and parallel.mode != "jit":
    raise ValueError(f"seeds='shard' needs parallel mode 'jit', not {parallel.mode!r}.")
  fn = _compiled_chunk(step, num_steps, mode, parallel, xla.check_fusions(fusions), seeds)
  live, frozen = state.replace(frozen=None), state.frozen
  start = jnp.asarray(start, jnp.int32)
  if seeds == "shard":
    live, frozen = jax.device_put((live, frozen), parallel.seed_sharding())
    data = jax.device_put(data, parallel.replicated())
    live, metrics = fn(live, frozen, data, phase_key, start)
  elif parallel.mode == "pmap":
    live, metrics = fn(live, frozen, data, phase_key, jnp.full((parallel.num_devices,), start))
    live, metrics = jax.tree.map(first_replica, (live, metrics))  # replicas are identical
  else:
    if parallel.mode == "jit":
      live, frozen, data = jax.device_put((live, frozen, data), parallel.replicated())
    live, metrics = fn(live, frozen, data, phase_key, start)
  return live.replace(frozen=frozen), metrics

