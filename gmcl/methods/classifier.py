"""Classifier-only baselines: sequential fine-tuning (``sft``) and joint training (``joint``).

``sft`` trains one classifier on each task in turn (the lower bound: it forgets).
``joint`` trains it on all real data seen so far at every task (the upper bound).
Both train one head over all classes seen so far (class-incremental "active
classes"): the softmax runs over seen classes only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gmcl.data.sampling import TaskArrays
from gmcl.losses.classification import mask_logits, softmax_cross_entropy
from gmcl.methods.base import Method, ModelState, Phase, apply_gradients, check_batch_divides, reset_optimizer
from gmcl.optim import adam
from gmcl.models.classifiers import make_classifier
from gmcl.parallel import Parallel
from gmcl.registry import MethodSpec


@struct.dataclass
class ClassifierState:
  solver: ModelState
  active: jax.Array  # (K,) bool: classes seen so far
  frozen: Any = None  # no snapshot for these baselines


class ClassifierMethod(Method):
  """A classifier trained on the current task (``sft``) or all data so far (``joint``)."""

  def __init__(self, config, image_shape: tuple[int, int, int], num_classes: int,
               name: str = "sft", parallel: Parallel = Parallel()):
    self.config = config
    self.parallel = parallel
    check_batch_divides(config.train.batch_size, parallel)
    self.name = name
    self.data_mode = "cumulative" if name == "joint" else "current"
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes
    model_cfg, train_cfg = config.model, config.train
    encoder_kwargs = {"hidden": tuple(model_cfg.classifier_hidden)} \
        if model_cfg.classifier == "mlp" else {"conv_plan": model_cfg.conv_plan}
    self.classifier = make_classifier(model_cfg.classifier, num_classes, **encoder_kwargs)
    self.solver_tx = adam(train_cfg.solver_lr, train_cfg.solver_b1, train_cfg.solver_b2,
                          train_cfg.weight_decay)
    self.batch_size = train_cfg.batch_size

  # -- state ---------------------------------------------------------------------------------

  def _init_solver(self, key) -> ModelState:
    params = self.classifier.init(key, jnp.zeros((1,) + self.image_shape))["params"]
    return ModelState(params=params, opt_state=self.solver_tx.init(params))

  def init(self, key) -> ClassifierState:
    return ClassifierState(solver=self._init_solver(key),
                           active=jnp.zeros((self.num_classes,), bool))

  def begin_task(self, state, task_index: int, active_classes: np.ndarray):
    state = state.replace(active=jnp.asarray(active_classes, bool))
    if self.config.train.reset_optimizers:
      state = state.replace(solver=reset_optimizer(state.solver, self.solver_tx))
    return state

  def end_task(self, state):
    return state

  def phases(self):
    return (Phase("solver", self.config.train.solver_steps, self.solver_step),)

  # -- steps ---------------------------------------------------------------------------------

  def replay_objective(self, params, state, real_losses: jax.Array, key,
                       data: TaskArrays) -> tuple[jax.Array, dict]:
    """The solver objective given per-example losses on real data; DGR adds replay here (``data``:
    the step's task arrays, for replay of earlier tasks' real rows)."""
    del params, state, key, data
    return jnp.mean(real_losses), {}

  def real_batch(self, data: TaskArrays, key) -> tuple[jax.Array, jax.Array]:
    """The batch of real data a solver step trains on: uniform over the step's real rows."""
    return self.sample_batch(data, key, self.batch_size)

  def solver_step(self, state, data: TaskArrays, key):
    """One optimiser step of the classifier on a sampled batch (plus replay, in subclasses)."""
    k_batch, k_replay = jax.random.split(key)
    x, y = self.real_batch(data, k_batch)

    def loss_fn(params):
      logits = self.classifier.apply({"params": params}, x)
      real = softmax_cross_entropy(logits=logits, labels=y, where=state.active)
      loss, extra = self.replay_objective(params, state, real, k_replay, data)
      acc = jnp.mean(jnp.argmax(mask_logits(logits, state.active), -1) == y)
      return loss, dict(extra, solver_loss=loss, solver_real_loss=jnp.mean(real), train_acc=acc)

    grads, metrics = self.cross_device_mean(jax.grad(loss_fn, has_aux=True)(state.solver.params))
    return state.replace(solver=apply_gradients(state.solver, grads, self.solver_tx)), metrics

  def predict(self, state, x: jax.Array) -> jax.Array:
    return mask_logits(self.classifier.apply({"params": state.solver.params}, x), state.active)


def make_sft(config, image_shape, num_classes, parallel=Parallel()) -> ClassifierMethod:
  return ClassifierMethod(config, image_shape, num_classes, name="sft", parallel=parallel)


def make_joint(config, image_shape, num_classes, parallel=Parallel()) -> ClassifierMethod:
  return ClassifierMethod(config, image_shape, num_classes, name="joint", parallel=parallel)


SFT = MethodSpec(make=make_sft)
JOINT = MethodSpec(make=make_joint)
