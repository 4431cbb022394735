"""HAT on a classifier (Serra et al., ICML 2018): task-incremental, one head per task.

An MLP whose hidden units are gated per task (:mod:`gmcl.models.hat`), with one head per
task (one output layer whose logits are restricted to the task's classes: a class
belongs to one task, so its row of the output layer is that task's head). The
scenario is task-incremental: the task id is given at test time, and R[i, j] is the
accuracy on task j's test data with task j's gates and head after training task i.
This method checks the mask machinery against HAT's known behaviour (almost no
forgetting on split MNIST) before DGM builds on it.

Official settings (``experiments/configs/hat.py``): s_max = 400, c = 0.75, SGD with
lr 0.05, gradient norm clipped at 10000, embeddings clamped to +-6, s annealed over
each epoch of the task's data. Differences: the official code lowers the learning
rate on a validation plateau and stops early (up to 200 epochs per task); here a
fixed number of steps per task (``train.solver_steps``) at the initial rate, and no
dropout.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
from flax import struct

from gmcl import optim
from gmcl.checks import require
from gmcl.config import sequence_length
from gmcl.losses.hat import sparsity_regularizer
from gmcl.models import hat
from gmcl.data.sampling import TaskArrays
from gmcl.losses.classification import mask_logits, softmax_cross_entropy
from gmcl.methods.base import Method, ModelState, Phase
from gmcl.parallel import Parallel
from gmcl.registry import MethodSpec


class HATMLP(nn.Module):
  """Flatten -> [HATDense -> ReLU] per hidden layer -> Dense head. Returns (logits, gates)."""
  hidden: Sequence[int]
  num_tasks: int
  num_classes: int

  @nn.compact
  def __call__(self, x, task, s, hard: bool = False):
    x = x.reshape(x.shape[0], -1)
    gates = {}
    for i, width in enumerate(self.hidden):
      h, gates[f"layer{i}"] = hat.HATDense(width, self.num_tasks, name=f"layer{i}")(x, task, s, hard)
      x = nn.relu(h)
    return nn.Dense(self.num_classes, name="head")(x), gates


@struct.dataclass
class HATState:
  solver: ModelState
  cumulative: Any  # {layer: (units,)} a_{<t}: zeros before the first task
  task: jax.Array  # () int32: the task being trained
  step: jax.Array  # () int32: steps taken in this task (for the s schedule)
  task_classes: jax.Array  # (max_tasks, K) bool: each task's classes
  active: jax.Array  # (K,) bool: classes seen so far
  frozen: Any = None  # HAT keeps no snapshot: the masks protect earlier tasks


def config_section() -> ml_collections.ConfigDict:
  """The ``hat`` section with its defaults (HAT's classifier; lgm's masks read ``max_tasks``)."""
  s = ml_collections.ConfigDict()
  s.s_max = 400.0  # HAT's classifier; DGM: 1e4 (DGMw), 1e5 (DGMa)
  s.sparsity = 0.75  # c, the sparsity regulariser's weight
  s.learning_rate = 0.05  # SGD, as the official HAT code
  s.clip_norm = 10000.0
  s.binarize = False  # round the gates to {0, 1} at the end of a task (DGM does)
  s.max_tasks = 10  # task embeddings per layer
  return s


def check_config(config) -> None:
  h = config.hat
  require(h.s_max >= 1, "hat.s_max", h.s_max, ">= 1")
  require(h.sparsity >= 0, "hat.sparsity", h.sparsity, ">= 0")
  require(h.learning_rate > 0, "hat.learning_rate", h.learning_rate, "> 0")
  require(h.clip_norm > 0, "hat.clip_norm", h.clip_norm, "> 0")
  n = sequence_length(config)
  require(h.max_tasks >= n, "hat.max_tasks", h.max_tasks,
          f">= the {n} tasks of the config's sequence (one task embedding per task)")


class HATClassifier(Method):
  """Task-incremental HAT; see the module docstring."""
  name = "hat"
  scenario = "task_incremental"

  def __init__(self, config, image_shape, num_classes, parallel: Parallel = Parallel()):
    if parallel.mode != "none":
      raise ValueError("hat: parallel.mode must be 'none' (data-parallel HAT is not implemented yet).")
    self.config, self.parallel = config, parallel
    self.image_shape, self.num_classes = tuple(image_shape), num_classes
    h = config.hat
    self.max_tasks, self.s_max, self.c = int(h.max_tasks), float(h.s_max), float(h.sparsity)
    self.binarize = bool(h.binarize)
    self.batch_size = config.train.batch_size
    self.net = HATMLP(tuple(config.model.classifier_hidden), self.max_tasks, num_classes)
    self.layers = [f"layer{i}" for i in range(len(config.model.classifier_hidden))]
    params = jax.eval_shape(self._init_params, jax.random.PRNGKey(0))  # structure only
    self.embedding_mask = jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "embedding", params)
    self.tx = optax.chain(optim.hat_compensation(self.embedding_mask, self.s_max),
                          optax.clip_by_global_norm(float(h.clip_norm)),
                          optax.sgd(float(h.learning_rate)))

  def _init_params(self, key):
    return self.net.init(key, jnp.zeros((1,) + self.image_shape), 0, 1.0)["params"]

  def init(self, key) -> HATState:
    params = self._init_params(key)
    return HATState(
        solver=ModelState(params=params, opt_state=self.tx.init(params)),
        cumulative={name: jnp.zeros((w,)) for name, w in
                    zip(self.layers, self.config.model.classifier_hidden)},
        task=jnp.zeros((), jnp.int32), step=jnp.zeros((), jnp.int32),
        task_classes=jnp.zeros((self.max_tasks, self.num_classes), bool),
        active=jnp.zeros((self.num_classes,), bool))

  def begin_task(self, state: HATState, task_index: int, active_classes: np.ndarray) -> HATState:
    if task_index >= self.max_tasks:
      raise ValueError(f"hat: task {task_index + 1} exceeds hat.max_tasks={self.max_tasks} "
                       "(the number of task embeddings); raise hat.max_tasks.")
    active = jnp.asarray(active_classes, bool)
    current = active & ~state.active
    return state.replace(task=jnp.asarray(task_index, jnp.int32), step=jnp.zeros((), jnp.int32),
                         task_classes=state.task_classes.at[task_index].set(current),
                         active=active)

  def phases(self):
    return (Phase("solver", self.config.train.solver_steps, self.solver_step),)

  def gates(self, params, task, s) -> dict:
    """Each layer's gate for ``task`` at scale ``s``, without a forward pass."""
    return {name: hat.gate(params[name]["embedding"][task], s) for name in self.layers}

  def solver_step(self, state: HATState, data: TaskArrays, key):
    x, y = self.sample_batch(data, key, self.batch_size)
    steps_per_epoch = jnp.maximum((data.count + self.batch_size - 1) // self.batch_size, 1)
    s = hat.annealed_s(state.step % steps_per_epoch, steps_per_epoch, self.s_max)
    where = state.task_classes[state.task]

    def loss_fn(params):
      logits, gates = self.net.apply({"params": params}, x, state.task, s)
      ce = jnp.mean(softmax_cross_entropy(logits=logits, labels=y, where=where))
      reg = sparsity_regularizer(gates, state.cumulative)
      acc = jnp.mean(jnp.argmax(mask_logits(logits, where), -1) == y)
      return ce + self.c * reg, {"solver_loss": ce + self.c * reg, "cross_entropy": ce,
                                 "sparsity": reg, "train_acc": acc, "s": s}

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.solver.params)
    updates, opt_state = self.tx.update(grads, state.solver.opt_state, state.solver.params, s=s)
    params = optim.clamp_embeddings(optax.apply_updates(state.solver.params, updates),
                                  self.embedding_mask)
    solver = state.solver.replace(params=params, opt_state=opt_state)
    return state.replace(solver=solver, step=state.step + 1), metrics

  def task_mask(self, state: HATState, task_index: int):
    """The gates of a finished task at s_max, binarised when ``hat.binarize``."""
    g = self.gates(state.solver.params, task_index, self.s_max)
    return hat.binarize(g) if self.binarize else g

  def end_task(self, state: HATState) -> HATState:
    """Adds the task's gates to the cumulative mask and reserves what they use."""
    cum = hat.cumulative(state.cumulative, self.task_mask(state, state.task))
    keep_layers = hat.dense_chain_keep([cum[name] for name in self.layers])
    keep = jax.tree.map(jnp.ones_like, state.solver.params)
    for name, k in zip(self.layers, keep_layers):
      keep[name] = dict(keep[name], **k)
    opt_state = optim.with_keep(state.solver.opt_state, keep)
    return state.replace(cumulative=cum, solver=state.solver.replace(opt_state=opt_state))

  def predict_task(self, state: HATState, x: jax.Array, task_index) -> jax.Array:
    """Logits of task ``task_index``'s head with its gates at s_max (HAT's test time), or its
    binarised gates with ``hat.binarize`` (then a finished task's outputs never change)."""
    logits, _ = self.net.apply({"params": state.solver.params}, x, task_index, self.s_max,
                               self.binarize)
    return mask_logits(logits, state.task_classes[task_index])

  def predict(self, state: HATState, x: jax.Array) -> jax.Array:
    """The current task's head (the loop scores task-incremental methods with predict_task)."""
    return self.predict_task(state, x, state.task)


def make_hat(config, image_shape, num_classes, parallel=Parallel()) -> HATClassifier:
  """Checks the config's ``hat`` keys (:func:`check_config`), then builds the method."""
  check_config(config)
  return HATClassifier(config, image_shape, num_classes, parallel)


SPEC = MethodSpec(make=make_hat, sections=lambda: {"hat": config_section()}, check=check_config)
