"""Latent space alignment (``lsa``): one head per task over a shared embedder, old heads reached
through bridges between successive latent spaces (the seed author's proposal; no public code).

Task-incremental (the task id is given at test time), multi-headed: an embedder f
(the library's encoder, :class:`gmcl.models.classifiers.MLPEncoder` by default) and
one linear head h_t per task. ``lsa.mode = "sequential"``, per task t:

1. **solver** phase: f_t (initialised from f_{t-1}) and a new head h_t minimise the
   cross-entropy over task t's classes. Earlier heads are frozen by construction:
   only the live head h_t is a trained parameter; finished heads sit in a stacked
   ``(max_tasks, D, K)`` array outside the optimiser.
2. **bridge** phase (t >= 2, 1-based): a bridge g_{t->t-1}: Z_t -> Z_{t-1} minimises the
   alignment loss on task t's inputs (:func:`alignment_loss`)

       L_align(g) = E_x || g(f_t(x)) - f_{t-1}(x) ||_2^2,

   with ``lsa.bridge_steps`` steps of Adam(``lsa.bridge_lr``), f_t and the snapshot
   f_{t-1} (``state.frozen``) held fixed. At the first task the phase's steps are no-ops
   (there is no f_{t-1}; the loop's phases cannot depend on the task).
3. ``end_task`` stores h_t and g_{t->t-1} in their stacked arrays and takes the snapshot
   f_t; f_{t-1} is dropped. The state holds one embedder, whatever the number of tasks.

Prediction for task k after T tasks chains the bridges down from the newest latent space:

    y_k(x) = h_k( g_{k+1->k} o ... o g_{T->T-1} ( f_T(x) ) ),

T - k bridge applications (a ``lax.fori_loop`` with traced bounds, so one compiled
``predict_task`` serves every k). With linear bridges and ``lsa.compose = True``,
``end_task`` precomposes, for every k, the affine map Z_T -> Z_k
(``C_k = g_{k+1} o C_{k+1}``, ``C_T = id``), so a prediction costs one D x D matrix
multiply whatever T. :meth:`LSA.chain_cost` measures both; ``extra_scores["chain"]``
records the number of feature maps the oldest task goes through.

Bridges (``lsa.bridge``): ``"linear"``, g(z) = z A + b; ``"mlp"``, the same affine map plus
a residual of one hidden ReLU layer of ``lsa.bridge_hidden`` units,
g(z) = z A + b + relu(z W_1 + b_1) W_2 + b_2, so an MLP bridge contains the linear one. Both
start at the identity (A = I, b = 0, W_2 = 0, b_2 = 0): f_t starts from f_{t-1}, so no drift
is the natural first guess.

``lsa.mode = "parallel"`` (the slides' variant): :func:`train_parallel` trains the T task
models at once (``vmap`` over tasks: each (f_k, h_k) from the same initial embedder and
task k's data), then the bridges g_{k+1->k} on task k+1's inputs (``vmap`` over k), and
builds the same :class:`LSAState`, so prediction is the same chain from f_T.
``gmcl.loop.run`` drives both modes (the parallel one in one uninterrupted call, without
checkpoints; row t of R is scored on the models of tasks 0..t).

Settings and deviations: the solver's Adam is re-created at every task (its head is new;
``train.reset_optimizers`` is not consulted for it, only for the generative memory's GAN), as is
the bridge's; per-task heads and
bridges are initialised from keys folded from ``state.key`` by task index.

Replay (``lsa.replay = "generator"``, sequential mode; the proposal's option "and optionally
replayed samples from a generative memory"): the current inputs cover task t's input
distribution only, while the bridge g_{t->t-1} must be right on the inputs of tasks 1..t-1,
whose heads it serves. With replay, a generative memory of the inputs is trained as DGR's
generator (Shin et al. 2017; :class:`gmcl.methods.memory.GenerativeMemory`: WGAN-GP on the mixture
``r * D_t + (1 - r) * G_{t-1}``, r = ``dgr.replay_ratio``, 1/t when "balanced"), in a
"generator" phase before the solver's, and the bridge minimises

    r * E_{x ~ D_t} || g(f_t(x)) - f_{t-1}(x) ||^2 + (1 - r) * E_{x' ~ G_{t-1}} || g(f_t(x')) - f_{t-1}(x') ||^2.

The memory's live state is ``state.memory`` (:class:`gmcl.methods.memory.MemoryState`);
``end_task`` takes its snapshot G_t into ``state.frozen.memory``, beside f_t's encoder
(:class:`LSASnapshot`), so that chunks never donate or differentiate it and checkpoints write it
once per task, as every snapshot. Labels are never needed, so the generator is DGR's
unconditional one by default (``model.conditional``). With ``dgr.replay_ratio = 1`` the
replayed term has weight 0 (the samples are still drawn).

Devices: sequential lsa, with or without replay, runs under ``parallel.mode = "jit"`` or
``"pmap"`` (gradients and metrics averaged over devices, each device its slice of every
global batch, replayed samples included); the parallel mode runs on one device.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Optional, Sequence

import flax.linen as nn
import ml_collections
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gmcl.checks import check_array, require
from gmcl.config import check_image_generator, sequence_length
from gmcl.data.sampling import TaskArrays, task_arrays
from gmcl.losses.alignment import alignment_loss
from gmcl.losses.classification import mask_logits, softmax_cross_entropy
from gmcl.losses.replay import dgr_solver_objective
from gmcl.methods.base import (Method, ModelState, Phase, RunContext, TaskOutcome, apply_gradients, check_batch_divides,
                               resolve_chunk_mode, run_chunk, step_key)
from gmcl.optim import adam
from gmcl.models.classifiers import Classifier, make_classifier
from gmcl.models.latent import BRIDGES, Bridge
from gmcl.methods import dgr as dgr_method
from gmcl.methods.memory import GenerativeMemory, MemorySnapshot, MemoryState
from gmcl.parallel import Parallel
from gmcl.registry import MethodSpec
from gmcl.types import PRNGKey

MODES = ("sequential", "parallel")
REPLAYS = ("none", "generator")


# -- bridges ------------------------------------------------------------------------------------




def compose_affine(kernels: jax.Array, biases: jax.Array, task: jax.Array):
  """For every k, the affine map Z_task -> Z_k of the chain of linear bridges.

  ``C_k = g_{k+1} o C_{k+1}`` with ``C_task = id``; in row-vector form, with
  ``g_j(z) = z A_j + b_j``: ``W_k = W_{k+1} A_{k+1}`` and ``c_k = c_{k+1} A_{k+1} + b_{k+1}``.
  Entries k >= task are the identity.

  Args:
    kernels: (M, D, D) stacked A_j (entry j maps Z_j -> Z_{j-1}).
    biases: (M, D) stacked b_j.
    task: () index T of the newest latent space.

  Returns:
    ``{"kernel": (M, D, D), "bias": (M, D)}``: z_k = z_T @ kernel[k] + bias[k].
  """
  m, d = biases.shape
  eye, zero = jnp.eye(d, dtype=kernels.dtype), jnp.zeros((d,), biases.dtype)

  def body(carry, k):
    w, c = carry  # C_{k+1}
    j = jnp.minimum(k + 1, m - 1)
    top = k >= task
    w_k = jnp.where(top, eye, w @ kernels[j])
    c_k = jnp.where(top, zero, c @ kernels[j] + biases[j])
    return (w_k, c_k), (w_k, c_k)

  _, (ws, cs) = jax.lax.scan(body, (eye, zero), jnp.arange(m), reverse=True)
  return {"kernel": ws, "bias": cs}


# -- state ------------------------------------------------------------------------------------


@struct.dataclass
class LSAState:
  """Latent space alignment's state (M = the number of task slots).

  Attributes:
    solver: f_t and the live head h_t: ``params = {"encoder", "head"}``, and their Adam state.
    bridge: the bridge g_{t->t-1} being trained, and its Adam state.
    heads: finished heads, ``{"kernel": (M, D, K), "bias": (M, K)}``; entry k is h_k.
    bridges: finished bridges, each leaf stacked (M, ...); entry t is g_{t->t-1} (t >= 1).
    composed: with ``lsa.compose``, ``{"kernel": (M, D, D), "bias": (M, D)}``, the maps
      Z_T -> Z_k; else None.
    key: the key per-task heads and bridges are initialised from.
    task: () int32, the task being (or last) trained, T.
    task_classes: (M, K) bool, each task's classes.
    active: (K,) bool, the classes seen so far.
    frozen: the snapshot (:class:`LSASnapshot`: f_{t-1}'s encoder and, with replay, G_{t-1}),
      or None before the first task ends.
    memory: with ``lsa.replay = "generator"``, the generative memory's live state
      (:class:`gmcl.methods.memory.MemoryState`), else None.
  """
  solver: ModelState
  bridge: ModelState
  heads: Any
  bridges: Any
  composed: Any
  key: jax.Array
  task: jax.Array
  task_classes: jax.Array
  active: jax.Array
  frozen: Optional["LSASnapshot"] = None
  memory: Optional[MemoryState] = None


@struct.dataclass
class LSASnapshot:
  """What a task leaves frozen for the next one's bridge: f_{t-1}'s encoder parameters and, with
  ``lsa.replay = "generator"``, the generative memory's G_{t-1} (else None)."""
  encoder: Any
  memory: Optional[MemorySnapshot] = None


def config_section() -> ml_collections.ConfigDict:
  """The ``lsa`` section with its defaults (the ``dgr`` section configures ``lsa.replay``'s memory)."""
  s = ml_collections.ConfigDict()  # latent space alignment: multi-head, bridges g_{t->t-1}
  s.mode = "sequential"  # sequential | parallel (the T task models at once, vmap over tasks)
  s.bridge = "linear"  # linear | mlp
  s.bridge_hidden = 256
  s.bridge_steps = 1000
  s.bridge_lr = 1e-3
  s.compose = False  # linear bridges: precompose the chain T -> k into one map per task
  s.max_tasks = 0  # task slots of the stacked heads and bridges; 0: the config's sequence length
  s.replay = "none"  # none | generator: the bridge also sees G_{t-1}'s samples (DGR's generator)
  return s


def check_config(config) -> None:
  """Validates the ``lsa`` section; raises ValueError naming the key and the valid values."""
  s = config.lsa
  require(s.mode in MODES, "lsa.mode", s.mode, "'sequential' or 'parallel'")
  require(s.bridge in BRIDGES, "lsa.bridge", s.bridge, "'linear' or 'mlp'")
  require(int(s.bridge_hidden) >= 1, "lsa.bridge_hidden", s.bridge_hidden, ">= 1")
  require(int(s.bridge_steps) >= 0, "lsa.bridge_steps", s.bridge_steps, ">= 0")
  require(float(s.bridge_lr) > 0, "lsa.bridge_lr", s.bridge_lr, "> 0")
  require(isinstance(s.compose, bool), "lsa.compose", s.compose, "True or False")
  require(not (s.compose and s.bridge != "linear"), "lsa.compose", s.compose,
           "False with lsa.bridge='mlp' (only affine bridges compose into one map); "
           "True needs lsa.bridge='linear'")
  require(int(s.get("max_tasks", 0)) >= 0, "lsa.max_tasks", s.get("max_tasks", 0),
           ">= 0 (0: the config's sequence length)")
  require(s.replay in REPLAYS, "lsa.replay", s.replay,
           "'none' (the bridge sees current inputs only) or 'generator' (and G_{t-1}'s samples)")
  require(not (s.replay == "generator" and s.mode == "parallel"), "lsa.replay", s.replay,
           "'none' with lsa.mode='parallel' (the parallel mode trains every task model at once, "
           "with no earlier generator to replay); 'generator' needs lsa.mode='sequential'")
  require(not (s.replay == "generator" and int(config.train.generator_steps) < 1),
           "train.generator_steps", config.train.generator_steps,
           ">= 1 with lsa.replay='generator' (0 would replay an untrained generator's noise)")
  check_parallel_mode(s.mode, config.parallel.mode)
  dgr_method.check_section(config)
  require(config.dgr.replay_source == "generator", "dgr.replay_source", config.dgr.replay_source,
          f"'generator' ({config.method} replays DGR's generative memory; the other sources are DGR's solver's)")
  if s.replay == "generator":
    check_image_generator(config)


def check_parallel_mode(lsa_mode: str, parallel_mode: str) -> None:
  """lsa's parallel mode trains every task model at once on one device: no data parallelism."""
  if lsa_mode == "parallel" and parallel_mode != "none":
    raise ValueError(f"config.parallel.mode={parallel_mode!r} is invalid with lsa.mode='parallel' (all task "
                     "models at once, vmap over tasks), which supports parallel.mode='none' only; "
                     "data-parallel training (parallel.mode='jit' or 'pmap') needs lsa.mode='sequential'.")


class LSA(Method):
  """Latent space alignment, task-incremental; see the module docstring."""
  name = "lsa"
  scenario = "task_incremental"
  state_format = 2  # the snapshot is an LSASnapshot; the generative memory's state a MemoryState

  def __init__(self, config, image_shape, num_classes: int, parallel: Parallel = Parallel()):
    check_parallel_mode(config.lsa.mode, parallel.mode)
    check_batch_divides(config.train.batch_size, parallel)
    self.config, self.parallel = config, parallel
    self.image_shape, self.num_classes = tuple(image_shape), int(num_classes)
    s, m, t = config.lsa, config.model, config.train
    self.mode, self.bridge_kind, self.compose = s.mode, s.bridge, bool(s.compose)
    self.max_tasks = int(s.get("max_tasks", 0)) or sequence_length(config, num_classes)
    self.batch_size = int(t.batch_size)
    encoder_kwargs = ({"hidden": tuple(m.classifier_hidden)} if m.classifier == "mlp"
                      else {"conv_plan": m.conv_plan})
    self.classifier = make_classifier(m.classifier, self.num_classes, **encoder_kwargs)
    self.solver_tx = adam(t.solver_lr, t.solver_b1, t.solver_b2, t.weight_decay)
    self.bridge_tx = adam(float(s.bridge_lr), 0.9, 0.999)
    self.solver_steps, self.bridge_steps = int(t.solver_steps), int(s.bridge_steps)
    feats = jax.eval_shape(lambda: self._encode(self._init_encoder(jax.random.PRNGKey(0)),
                                                jnp.zeros((1,) + self.image_shape)))
    self.features = int(feats.shape[-1])
    self.bridge_module = Bridge(self.features, self.bridge_kind, int(s.bridge_hidden))
    self.replay = s.replay
    self.memory = None
    if self.replay == "generator":
      self.memory = GenerativeMemory(config, self.image_shape, self.num_classes, parallel)
    self.has_generator = self.memory is not None  # the loop's sample grids
    self.conditional = self.memory is not None and self.memory.conditional

  # -- models ---------------------------------------------------------------------------------

  def _init_encoder(self, key):
    return self.classifier.init(key, jnp.zeros((1,) + self.image_shape))["params"]["encoder"]

  def _encode(self, encoder_params, x: jax.Array) -> jax.Array:
    return self.classifier.apply({"params": {"encoder": encoder_params}}, x,
                                 method=Classifier.encode)

  @staticmethod
  def _head(head, z: jax.Array) -> jax.Array:
    return z @ head["kernel"] + head["bias"]

  def _init_head(self, key):
    return nn.Dense(self.num_classes).init(key, jnp.zeros((1, self.features)))["params"]

  def _init_bridge(self, key):
    return self.bridge_module.init(key, jnp.zeros((1, self.features)))["params"]

  def bridge_apply(self, params, z: jax.Array) -> jax.Array:
    """g(z) for one bridge's parameters."""
    return self.bridge_module.apply({"params": params}, z)

  def _fresh_models(self, key, encoder_params, task_index):
    """The solver (f from ``encoder_params``, task ``task_index``'s initial head) and bridge
    at a task's start, each with a fresh Adam state."""
    head = self._init_head(jax.random.fold_in(jax.random.fold_in(key, 0), task_index))
    bridge = self._init_bridge(jax.random.fold_in(jax.random.fold_in(key, 1), task_index))
    params = {"encoder": encoder_params, "head": head}
    return (ModelState(params=params, opt_state=self.solver_tx.init(params)),
            ModelState(params=bridge, opt_state=self.bridge_tx.init(bridge)))

  # -- state ----------------------------------------------------------------------------------

  def init(self, key) -> LSAState:
    return self._init_jit(key)

  @functools.cached_property
  def _init_jit(self):
    return jax.jit(self._init_state)

  @functools.cached_property
  def _fresh_models_jit(self):
    return jax.jit(self._fresh_models)

  @functools.cached_property
  def _store_jit(self):
    return jax.jit(self._store)

  def _init_state(self, key) -> LSAState:
    k_enc, k_tasks = jax.random.split(key)
    solver, bridge = self._fresh_models(k_tasks, self._init_encoder(k_enc), 0)
    stack = lambda tree: jax.tree.map(lambda a: jnp.zeros((self.max_tasks,) + a.shape, a.dtype),
                                      tree)
    composed = None
    if self.compose:
      composed = compose_affine(*self._linear_parts(stack(bridge.params)), jnp.int32(0))
    memory = None
    if self.memory is not None:  # DGR's GAN from its own key, split as DGR splits it
      memory = self.memory.init(*jax.random.split(jax.random.fold_in(key, 2), 3)[1:])
    return LSAState(solver=solver, bridge=bridge, heads=stack(solver.params["head"]),
                    bridges=stack(bridge.params), composed=composed, key=k_tasks,
                    task=jnp.zeros((), jnp.int32),
                    task_classes=jnp.zeros((self.max_tasks, self.num_classes), bool),
                    active=jnp.zeros((self.num_classes,), bool), memory=memory)

  def begin_task(self, state: LSAState, task_index: int, active_classes: np.ndarray) -> LSAState:
    """A new head for task ``task_index`` and a fresh bridge; f_t starts from f_{t-1}.

    The task's classes are the newly active ones (split, per-class protocols), or all
    active classes when none is new (permuted: every task has the same classes).
    """
    if self.mode != "sequential":
      raise ValueError(f"lsa.mode={self.mode!r}: begin_task belongs to lsa.mode='sequential'; the "
                       "parallel mode trains all tasks at once with gmcl.methods.lsa.train_parallel "
                       "(gmcl.loop.run calls it).")
    if not 0 <= task_index < self.max_tasks:
      raise ValueError(f"lsa: task {task_index + 1} exceeds the {self.max_tasks} task slots (the "
                       "config's sequence: data.protocol, data.max_tasks); set lsa.max_tasks.")
    active = jnp.asarray(active_classes, bool)
    new = active & ~state.active
    current = jnp.where(jnp.any(new), new, active)
    solver, bridge = self._fresh_models_jit(state.key, state.solver.params["encoder"],
                                            jnp.asarray(task_index, jnp.int32))
    memory = state.memory
    if self.memory is not None:  # DGR's: r, the GAN's optimiser resets
      memory = self.memory.begin_task(memory, task_index)
    return state.replace(solver=solver, bridge=bridge, task=jnp.asarray(task_index, jnp.int32),
                         task_classes=state.task_classes.at[task_index].set(current),
                         active=active, memory=memory)

  def phases(self):
    generator = ((Phase("generator", self.config.train.generator_steps, self.generator_step),)
                 if self.memory is not None else ())
    return generator + (Phase("solver", self.solver_steps, self.solver_step),
                        Phase("bridge", self.bridge_steps, self.bridge_step))

  def _linear_parts(self, bridges):
    return bridges["linear"]["kernel"], bridges["linear"]["bias"]

  def _store(self, state: LSAState, t, head, bridge) -> LSAState:
    """``state`` with h_t and g_{t->t-1} stored at entry t and the composed maps recomputed."""
    heads = jax.tree.map(lambda s, h: s.at[t].set(h), state.heads, head)
    bridges = jax.tree.map(lambda s, b: s.at[t].set(b), state.bridges, bridge)
    composed = compose_affine(*self._linear_parts(bridges), t) if self.compose else None
    return state.replace(heads=heads, bridges=bridges, composed=composed)

  def end_task(self, state: LSAState) -> LSAState:
    """Stores h_t and g_{t->t-1} (at the first task: the unused identity), recomposes the
    chain (``lsa.compose``) and takes the snapshot f_t."""
    state = self._store_jit(state, state.task, state.solver.params["head"], state.bridge.params)
    memory = self.memory.snapshot(state.memory, state.active) if self.memory is not None else None
    return state.replace(frozen=LSASnapshot(
        encoder=jax.tree.map(jnp.copy, state.solver.params["encoder"]), memory=memory))

  # -- steps ----------------------------------------------------------------------------------

  def _solver_update(self, solver: ModelState, classes: jax.Array, data: TaskArrays, key):
    """One Adam step of (f, h) on the cross-entropy over ``classes`` (one task's model)."""
    x, y = self.sample_batch(data, key, self.batch_size)

    def loss_fn(params):
      logits = self._head(params["head"], self._encode(params["encoder"], x))
      ce = jnp.mean(softmax_cross_entropy(logits=logits, labels=y, where=classes))
      acc = jnp.mean(jnp.argmax(mask_logits(logits, classes), -1) == y)
      return ce, {"solver_loss": ce, "train_acc": acc}

    grads, metrics = self.cross_device_mean(jax.grad(loss_fn, has_aux=True)(solver.params))
    return apply_gradients(solver, grads, self.solver_tx), metrics

  def _bridge_update(self, bridge: ModelState, new_encoder, old_encoder, data: TaskArrays, key,
                     replayed: Optional[jax.Array] = None, ratio=1.0):
    """One Adam step of g on L_align, with f_t (``new_encoder``) and f_{t-1} held fixed; with
    ``replayed`` inputs, ``ratio * L_align(current) + (1 - ratio) * L_align(replayed)``."""
    x, _ = self.sample_batch(data, key, self.batch_size)
    n = x.shape[0]
    if replayed is not None:
      x = jnp.concatenate([x, replayed.astype(x.dtype)])
    z_new = jax.lax.stop_gradient(self._encode(new_encoder, x))
    z_old = jax.lax.stop_gradient(self._encode(old_encoder, x))

    def loss_fn(params):
      per_example = alignment_loss(mapped=self.bridge_apply(params, z_new), target=z_old)
      energy = jnp.sum(jnp.square(z_old), -1)
      if replayed is None:
        loss, scale = jnp.mean(per_example), jnp.mean(energy)
        metrics = {}
      else:
        mix = lambda v: dgr_solver_objective(real_losses=v[:n], replay_losses=v[n:], ratio=ratio)
        loss, scale = mix(per_example), mix(energy)
        metrics = {"bridge_current_loss": jnp.mean(per_example[:n]),
                   "bridge_replay_loss": jnp.mean(per_example[n:])}
      return loss, dict(metrics, bridge_loss=loss, scale=scale)

    grads, metrics = self.cross_device_mean(jax.grad(loss_fn, has_aux=True)(bridge.params))
    scale = metrics.pop("scale")  # the ratio of the global means (after the devices' mean)
    metrics["bridge_relative_error"] = metrics["bridge_loss"] / jnp.maximum(scale, 1e-12)
    return apply_gradients(bridge, grads, self.bridge_tx), metrics

  def solver_step(self, state: LSAState, data: TaskArrays, key):
    """One step of f_t and h_t on task t's cross-entropy."""
    solver, metrics = self._solver_update(state.solver, state.task_classes[state.task], data, key)
    return state.replace(solver=solver), metrics

  def bridge_step(self, state: LSAState, data: TaskArrays, key):
    """One step of g_{t->t-1} on the alignment loss (with replay: on current and G_{t-1}'s
    inputs); a no-op without a snapshot (first task)."""
    replaying = self.memory is not None
    if state.frozen is None:
      zero = jnp.zeros(())
      extra = ("bridge_current_loss", "bridge_replay_loss") if replaying else ()
      return state, {k: zero for k in ("bridge_loss", "bridge_relative_error") + extra}
    replayed, ratio = None, 1.0
    if replaying:
      key, k_rep = jax.random.split(key)
      replayed = self.memory.replay_batch(state.frozen.memory, k_rep, self.batch_size)[0]
      ratio = state.memory.ratio
    bridge, metrics = self._bridge_update(state.bridge, state.solver.params["encoder"],
                                          state.frozen.encoder, data, key, replayed, ratio)
    return state.replace(bridge=bridge), metrics

  def generator_step(self, state: LSAState, data: TaskArrays, key):
    """One WGAN-GP iteration of the generative memory (DGR's generator step)."""
    frozen = None if state.frozen is None else state.frozen.memory
    memory, metrics = self.memory.train_step(state.memory, frozen, data, key)
    return state.replace(memory=memory), metrics

  def sample(self, state: LSAState, key, labels):
    """The generative memory's samples (``lsa.replay = "generator"``), else None."""
    if self.memory is None:
      return None
    return self.memory.sample(state.memory, key, labels)

  # -- prediction -----------------------------------------------------------------------------

  def latent(self, state: LSAState, x: jax.Array, task_index) -> jax.Array:
    """z_k = g_{k+1->k} o ... o g_{T->T-1}(f_T(x)) (or the composed map), for a traced k.

    The chain is a ``lax.fori_loop`` with traced bounds (a while loop: T - k applications,
    one compiled function for every k); it is forward-only (not reverse-differentiable).
    """
    k = jnp.asarray(task_index, jnp.int32)
    z = self._encode(state.solver.params["encoder"], x)
    if self.compose:
      return z @ state.composed["kernel"][k] + state.composed["bias"][k]

    def body(i, z):
      t = state.task - i
      return self.bridge_apply(jax.tree.map(lambda a: a[t], state.bridges), z)

    return jax.lax.fori_loop(0, jnp.maximum(state.task - k, 0), body, z)

  def predict_task(self, state: LSAState, x: jax.Array, task_index) -> jax.Array:
    """Logits of task ``task_index``'s head on its chained latent, its classes only.

    Reads the heads and bridges stored by the last ``end_task`` (the current task's head
    is the live one, so ``predict`` also works mid-task); jittable with a traced index.
    """
    k = jnp.asarray(task_index, jnp.int32)
    head = jax.tree.map(lambda live, stacked: jnp.where(k == state.task, live, stacked[k]),
                        state.solver.params["head"], state.heads)
    return mask_logits(self._head(head, self.latent(state, x, k)), state.task_classes[k])

  def predict(self, state: LSAState, x: jax.Array) -> jax.Array:
    """The current task's head (the loop scores task-incremental methods with predict_task)."""
    return self.predict_task(state, x, state.task)

  def feature_maps(self, state: LSAState, task_index: int = 0) -> int:
    """Feature maps a prediction for task ``task_index`` applies after f_T: T - k bridges
    chained, or one affine map composed."""
    return 1 if self.compose else max(int(state.task) - int(task_index), 0)

  @functools.cached_property
  def _predict_task_jit(self):
    return jax.jit(self.predict_task)

  def chain_cost(self, state: LSAState, x: jax.Array, task_index: int = 0,
                 repeats: int = 5) -> dict:
    """What a prediction for task ``task_index`` costs after T tasks.

    Returns:
      ``{"feature_maps": T - k (chained) or 1 (composed), "bridge": lsa.bridge,
      "composed": bool, "ms_per_1000": median wall time of the jitted predict_task,
      compile excluded, per 1000 inputs of ``x``}``.
    """
    fn, k = self._predict_task_jit, jnp.asarray(task_index, jnp.int32)
    fn(state, x, k).block_until_ready()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      fn(state, x, k).block_until_ready()
      times.append(time.perf_counter() - start)
    return {"feature_maps": self.feature_maps(state, task_index), "bridge": self.bridge_kind,
            "composed": self.compose,
            "ms_per_1000": 1000.0 * statistics.median(times) * 1000.0 / x.shape[0]}

  def extra_scores(self, state, data, sequence, task_index, key) -> dict:
    """``chain``: the feature maps the oldest task's prediction goes through (deterministic,
    so results.json stays reproducible; :meth:`chain_cost` measures time)."""
    del data, sequence, task_index, key
    return {"chain": {"oldest_task_feature_maps": self.feature_maps(state, 0),
                      "composed": self.compose, "bridge": self.bridge_kind}}

  # -- parallel mode ----------------------------------------------------------------------------

  @property
  def seeds_share_shapes(self) -> bool:
    return self.mode != "parallel"  # its own driver trains one seed per call

  def train_tasks(self, run: RunContext):
    """``lsa.mode = "parallel"`` drives its own tasks: every task's model at once
    (:func:`train_parallel`, one program vmapped over tasks), then the bridges. Task t's outcome
    is :meth:`state_after` t: row t of R is scored on the models of tasks 0..t, which never depend
    on later tasks. One uninterrupted call, no checkpoints. ``"sequential"``: the loop drives."""
    if self.mode != "parallel":
      return None
    return self._parallel_outcomes(run)

  def _parallel_outcomes(self, run: RunContext):
    from gmcl.data.build import task_sizes, training_examples  # pylint: disable=import-outside-toplevel
    config, data, seq = run.config, run.data, run.sequence
    limit = config.data.train_limit
    capacity = max(task_sizes(data, seq, limit))
    tasks = [task_arrays(*training_examples(data, seq, t, False, limit), capacity) for t in range(len(seq))]
    start = time.time()
    state, info = train_parallel(self, run.run_key, tasks, chunk_steps=config.train.chunk_steps,
                                 chunk_mode=resolve_chunk_mode(config.train.chunk_mode))
    jax.block_until_ready(state)
    seconds = time.time() - start
    bad = {k: v for k, v in info["metrics"].items() if not np.isfinite(v)}
    if bad:
      raise FloatingPointError(f"Non-finite loss in lsa's parallel training: {bad}")
    for t in range(len(seq)):
      last = t == len(seq) - 1
      yield TaskOutcome(self.state_after(state, info["encoders"], t), info["metrics"] if last else {},
                        seconds if t == 0 else 0.0)

  def state_after(self, state: LSAState, encoders, task_index: int) -> LSAState:
    """The state a parallel run gives for the first ``task_index + 1`` tasks only: f from
    ``encoders`` (stacked, from :func:`train_parallel`), chains from Z_{task_index}. Task k's
    model never depends on later tasks in parallel mode, so row ``task_index`` of the
    accuracy matrix is scored on this state."""
    t = int(task_index)
    enc = jax.tree.map(lambda a: a[t], encoders)
    head = jax.tree.map(lambda a: a[t], state.heads)
    keep = jnp.arange(self.max_tasks) <= t
    task_classes = state.task_classes & keep[:, None]
    composed = (compose_affine(*self._linear_parts(state.bridges), jnp.int32(t))
                if self.compose else None)
    return state.replace(solver=state.solver.replace(params={"encoder": enc, "head": head}),
                         task=jnp.asarray(t, jnp.int32), task_classes=task_classes,
                         active=jnp.any(task_classes, axis=0), composed=composed,
                         frozen=LSASnapshot(encoder=jax.tree.map(jnp.copy, enc)))

  def parallel_solver_step(self, p: "ParallelTrainState", data: TaskArrays, key):
    """Step ``p.step`` of every task model at once; task k's key is
    ``fold_in(p.phase_keys[k], p.step)`` (what the loop's solver phase gives task k)."""
    del key
    keys = jax.vmap(lambda pk: jax.random.fold_in(pk, p.step))(p.phase_keys)
    solvers, metrics = jax.vmap(self._solver_update)(p.solvers, p.classes, data, keys)
    return (p.replace(solvers=solvers, step=p.step + 1),
            jax.tree.map(jnp.mean, metrics))

  def parallel_bridge_step(self, p: "ParallelTrainState", data: TaskArrays, key):
    """Step ``p.step`` of every bridge g_{k->k-1} (k >= 1) at once, on task k's inputs."""
    del key
    keys = jax.vmap(lambda pk: jax.random.fold_in(pk, p.step))(p.phase_keys[1:])
    enc = p.solvers.params["encoder"]
    new = jax.tree.map(lambda a: a[1:], enc)
    old = jax.tree.map(lambda a: a[:-1], enc)
    data = jax.tree.map(lambda a: a[1:], data)
    bridges, metrics = jax.vmap(self._bridge_update)(p.bridges, new, old, data, keys)
    return (p.replace(bridges=bridges, step=p.step + 1),
            jax.tree.map(jnp.mean, metrics))


@struct.dataclass
class ParallelTrainState:
  """The T task models trained at once (leading axis T), and the T - 1 bridges (axis T - 1)."""
  solvers: ModelState
  bridges: ModelState
  classes: jax.Array  # (T, K) bool
  phase_keys: jax.Array  # (T, 2): task k's key of the running phase
  step: jax.Array  # () int32: steps taken in the running phase
  frozen: Any = None  # run_chunk's convention; nothing is frozen here


def _class_masks(tasks: Sequence[TaskArrays], num_classes: int) -> np.ndarray:
  masks = np.zeros((len(tasks), num_classes), bool)
  for k, task in enumerate(tasks):
    masks[k, np.unique(np.asarray(task.y)[:int(task.count)])] = True
  return masks


def train_parallel(method: LSA, key: PRNGKey, tasks: Sequence[TaskArrays],
                   class_masks: Optional[np.ndarray] = None, *, chunk_steps: Optional[int] = None,
                   chunk_mode: str = "unroll", fusions: Optional[str] = None) -> tuple[LSAState, dict]:
  """``lsa.mode = "parallel"``: trains T task models at once, then aligns their latent spaces.

  1. Every task k gets (f_k, h_k): f_k from the same initial embedder f_0, h_k from
     ``method``'s per-task head key; ``train.solver_steps`` Adam steps on task k's data,
     all tasks in one vmapped program.
  2. Every bridge g_{k->k-1} (k = 1..T-1) minimises L_align(g) = E_x ||g(f_k(x)) - f_{k-1}(x)||^2
     over task k's inputs, ``lsa.bridge_steps`` steps, vmapped over k.

  The keys are the loop's: ``key`` splits into (init, train, sample) keys as in
  ``gmcl.loop.run``, task k's solver step i uses ``fold_in(step_key(train, k, 0), i)`` and
  bridge step i ``fold_in(step_key(train, k, 1), i)``. So task 0's model equals the one a
  sequential run with the same seed trains first, and task k's model equals a sequential
  training of task k alone from the initial state.

  Args:
    method: an :class:`LSA` (its ``lsa.mode`` is not consulted here).
    key: the run key (``PRNGKey(s)`` of the seed s it trains).
    tasks: T task arrays of equal capacity (``task_arrays(x, y, capacity)``), in task order.
    class_masks: (T, K) bool, each task's classes; None: the labels each task holds.
    chunk_steps: steps per compiled call (default ``train.chunk_steps``).
    chunk_mode: "unroll" (CPU) or "scan" (accelerators), as :func:`run_chunk`.
    fusions: XLA:CPU library fusions (:mod:`gmcl.xla`; default ``train.xla_cpu_fusions``).

  Returns:
    ``(state, info)``: the :class:`LSAState` after T tasks (predict with
    ``method.predict_task``) and ``{"metrics": last chunk's metrics by phase,
    "encoders": the T embedders stacked (for :meth:`LSA.state_after`)}``.
  """
  num = len(tasks)
  if not 1 <= num <= method.max_tasks:
    raise ValueError(f"train_parallel: {num} tasks; valid: 1 to the method's {method.max_tasks} "
                     "task slots (lsa.max_tasks or the config's sequence length).")
  shapes = {tuple(t.x.shape) for t in tasks}
  if len(shapes) != 1:
    raise ValueError(f"train_parallel: tasks have different capacities {sorted(shapes)}; build "
                     "them with task_arrays(x, y, capacity) and one capacity.")
  masks = jnp.asarray(_class_masks(tasks, method.num_classes) if class_masks is None
                      else class_masks, bool)
  check_array("train_parallel", "class_masks", masks, shape=(num, method.num_classes), kind="bool")
  data = jax.tree.map(lambda *a: jnp.stack(a), *tasks)
  init_key, train_key, _ = jax.random.split(key, 3)
  state = method.init(init_key)
  encoder0 = state.solver.params["encoder"]
  solvers, bridges = jax.jit(jax.vmap(method._fresh_models, in_axes=(None, None, 0)))(
      state.key, encoder0, jnp.arange(num))
  bridges = jax.tree.map(lambda a: a[1:], bridges)
  p = ParallelTrainState(solvers=solvers, bridges=bridges, classes=masks,
                         phase_keys=jnp.zeros((num, 2), jnp.uint32), step=jnp.zeros((), jnp.int32))
  chunk = int(chunk_steps or method.config.train.chunk_steps)
  fusions = fusions or method.config.train.xla_cpu_fusions
  info = {"metrics": {}}
  phases = [("solver", method.solver_steps, method.parallel_solver_step, 0)]
  if num > 1:
    phases.append(("bridge", method.bridge_steps, method.parallel_bridge_step, 1))
  for name, steps, step_fn, phase_index in phases:
    keys = jnp.stack([step_key(train_key, k, phase_index) for k in range(num)])
    p = p.replace(phase_keys=keys, step=jnp.zeros((), jnp.int32))
    done = 0
    while done < steps:
      n = min(chunk, steps - done)
      p, metrics = run_chunk(step_fn, p, data, train_key, done, n, chunk_mode, fusions=fusions)
      done += n
    if steps:
      info["metrics"].update({f"{name}/{k}": float(v) for k, v in metrics.items()})
  # The state a sequential run would hold after task T - 1's end_task.
  last, masks = num - 1, p.classes  # the arrays given to run_chunk were donated
  heads = jax.tree.map(lambda s, h: s.at[:num].set(h), state.heads, p.solvers.params["head"])
  stacked = jax.tree.map(lambda s, b: s.at[1:num].set(b), state.bridges, p.bridges.params) \
      if num > 1 else state.bridges
  solver = jax.tree.map(lambda a: a[last], p.solvers)
  bridge = jax.tree.map(lambda a: a[last - 1], p.bridges) if num > 1 else state.bridge
  task_classes = state.task_classes.at[:num].set(masks)
  state = state.replace(solver=solver, bridge=bridge, task=jnp.asarray(last, jnp.int32),
                        task_classes=task_classes, active=jnp.any(masks, axis=0),
                        heads=heads, bridges=stacked,
                        composed=(compose_affine(*method._linear_parts(stacked), jnp.int32(last))
                                  if method.compose else None),
                        frozen=LSASnapshot(encoder=jax.tree.map(jnp.copy, solver.params["encoder"])))
  info["encoders"] = p.solvers.params["encoder"]
  return state, info


def make_lsa(config, image_shape, num_classes, parallel=Parallel()) -> LSA:
  """Checks the config's ``lsa`` keys (:func:`check_config`), then builds the method."""
  check_config(config)
  return LSA(config, image_shape, num_classes, parallel)


SPEC = MethodSpec(make=make_lsa, sections=lambda: {"lsa": config_section(), "dgr": dgr_method.config_section()},
                  check=check_config, added_keys={"lsa.replay": "none"})
