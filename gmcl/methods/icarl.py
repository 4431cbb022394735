"""iCaRL (Rebuffi, Kolesnikov, Sperl & Lampert, CVPR 2017) on the class-incremental classifier.

* **Exemplars**: a fixed budget of ``icarl.memory_size`` real training images over all classes
  seen; after a task each class keeps ``m = memory_size // classes_seen`` of them. A new class's are
  chosen by *herding* (Algorithm 4): with phi the L2-normalised features and mu the class mean,
  the k-th exemplar is ``argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||`` over the class's
  images not yet chosen; an old class keeps its first m (Algorithm 5: herding's order is its
  priority). The buffer is one array of ``memory_size`` rows: the i-th class seen holds rows
  ``[i*m, (i+1)*m)``.
* **Training** (Algorithm 3): the current task's images together with the exemplars, one sigmoid
  (binary) cross-entropy per seen class: targets are the one-hot labels for the task's classes and,
  with ``icarl.distill`` (default), the previous network's sigmoid outputs for the classes seen
  before (distillation; the frozen C_{t-1} is the snapshot).
* **Classification** (Algorithm 1): nearest mean of exemplars in the normalised feature space,
  the means recomputed from the exemplars with the current network after every task
  (``icarl.classify="nme"``); ``"network"`` uses the trained outputs instead.

The features are those of the library's classifier (the encoder of ``gmcl.models.classifiers``);
the optimiser and schedule are the solver's, as for the other rows of the seed's table (the paper's
ResNets, SGD with step decay and 70 epochs are for CIFAR-100 and ImageNet).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from gmcl.checks import require
from gmcl.data.sampling import TaskArrays
from gmcl.losses.classification import mask_logits
from gmcl.methods.base import Phase, apply_gradients
from gmcl.methods.classifier import ClassifierMethod
from gmcl.models.classifiers import Classifier
from gmcl.parallel import Parallel
from gmcl.registry import MethodSpec

__all__ = ["ICaRL", "ICaRLState", "config_section", "herding", "make_icarl", "sigmoid_distillation_loss"]


def config_section() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.memory_size = 100  # exemplars over all classes seen (iCaRL's K)
  s.distill = True  # old classes' targets: the previous network's sigmoid outputs
  s.classify = "nme"  # nme (nearest mean of exemplars) | network (the trained outputs)
  return s


def check_config(config) -> None:
  s = config.icarl
  require(isinstance(s.memory_size, int) and s.memory_size >= 1, "icarl.memory_size", s.memory_size,
          "an integer >= the number of classes (at least one exemplar per class)")
  require(isinstance(s.distill, bool), "icarl.distill", s.distill, "True or False")
  require(s.classify in ("nme", "network"), "icarl.classify", s.classify, "'nme' or 'network'")
  require(config.data.protocol != "permuted", "data.protocol", config.data.protocol,
          "'per_class' or 'split' (iCaRL's exemplars and means are per class)")


def _normalize(features: jax.Array) -> jax.Array:
  return features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def herding(features: jax.Array, valid: jax.Array, num: int, max_num: int) -> jax.Array:
  """iCaRL's Algorithm 4: the indices (``(max_num,)``, the first ``num`` meaningful) of the rows
  of ``features`` (``(N, D)``, L2-normalised; rows where ``valid`` is False never chosen) whose
  running mean best approaches the mean of the valid rows, chosen greedily without replacement."""
  w = valid.astype(features.dtype)[:, None]
  mu = jnp.sum(features * w, axis=0) / jnp.maximum(jnp.sum(w), 1.0)

  def pick(k, carry):
    chosen, total, out = carry
    candidate = (total[None, :] + features) / (k + 1.0)
    dist = jnp.sum(jnp.square(mu[None, :] - candidate), axis=-1)
    dist = jnp.where(valid & ~chosen & (k < num), dist, jnp.inf)
    i = jnp.argmin(dist)
    ok = jnp.isfinite(dist[i])
    return (chosen.at[i].set(chosen[i] | ok), total + jnp.where(ok, features[i], 0.0),
            out.at[k].set(jnp.where(ok, i, -1)))

  init = (jnp.zeros(features.shape[:1], bool), jnp.zeros(features.shape[1:], features.dtype),
          jnp.full((max_num,), -1, jnp.int32))
  return jax.lax.fori_loop(0, max_num, pick, init)[2]


def sigmoid_distillation_loss(*, logits: jax.Array, labels: jax.Array, teacher_logits: Optional[jax.Array],
                              new: jax.Array, active: jax.Array) -> jax.Array:
  """iCaRL's per-example loss: ``sum_k BCE(sigmoid(z_k), target_k)`` over the active classes,
  ``target_k = [y = k]`` for the task's classes (``new``) and ``sigmoid(teacher_k)`` for the others
  (all one-hot when ``teacher_logits`` is None)."""
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  target = onehot if teacher_logits is None else jnp.where(new, onehot, jax.nn.sigmoid(teacher_logits))
  bce = sigmoid_binary_cross_entropy(logits, target)
  return jnp.sum(jnp.where(active, bce, 0.0), axis=-1)


def sigmoid_binary_cross_entropy(logits, target):
  """``-t log sigmoid(z) - (1 - t) log (1 - sigmoid(z))``, computed stably."""
  return jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))


@struct.dataclass
class ICaRLState:
  solver: Any  # ModelState
  active: jax.Array  # (K,) bool: classes seen so far
  old: jax.Array  # (K,) bool: classes seen before the current task
  rank: jax.Array  # (K,) int32: the order in which classes were seen (-1: not yet)
  exemplars_x: jax.Array  # (memory_size, H, W, C)
  exemplars_y: jax.Array  # (memory_size,) int32
  filled: jax.Array  # (memory_size,) bool
  means: jax.Array  # (K, D): normalised class means of the exemplars' features
  frozen: Any = None  # C_{t-1}'s parameters (distillation)


class ICaRL(ClassifierMethod):
  """iCaRL; see the module docstring."""

  def __init__(self, config, image_shape, num_classes, parallel: Parallel = Parallel()):
    super().__init__(config, image_shape, num_classes, name="icarl", parallel=parallel)
    s = config.icarl
    self.memory_size, self.distill, self.nme = int(s.memory_size), bool(s.distill), s.classify == "nme"

  def _features(self, params, x):
    return _normalize(self.classifier.apply({"params": params}, x, method=Classifier.encode))

  def init(self, key) -> ICaRLState:
    solver = self._init_solver(key)
    dim = self._features(solver.params, jnp.zeros((1,) + self.image_shape)).shape[-1]
    n, k = self.memory_size, self.num_classes
    return ICaRLState(solver=solver, active=jnp.zeros((k,), bool), old=jnp.zeros((k,), bool),
                      rank=jnp.full((k,), -1, jnp.int32),
                      exemplars_x=jnp.zeros((n,) + self.image_shape, jnp.float32),
                      exemplars_y=jnp.zeros((n,), jnp.int32), filled=jnp.zeros((n,), bool),
                      means=jnp.zeros((k, dim), jnp.float32))

  def begin_task(self, state, task_index: int, active_classes: np.ndarray):
    old = state.active
    state = super().begin_task(state, task_index, active_classes)
    new = state.active & ~old
    seen_before = jnp.sum(old.astype(jnp.int32))
    rank = jnp.where(new, seen_before + jnp.cumsum(new.astype(jnp.int32)) - 1, state.rank)
    return state.replace(old=old, rank=rank.astype(jnp.int32))

  def phases(self):
    return (Phase("solver", self.config.train.solver_steps, self.solver_step),
            Phase("exemplars", 1, self.exemplar_step))

  def end_task(self, state):
    """The class means of the exemplars with the final network; the network becomes C_{t-1}."""
    feats = self._features(state.solver.params, state.exemplars_x)
    onehot = jax.nn.one_hot(state.exemplars_y, self.num_classes) * state.filled[:, None]
    means = _normalize(onehot.T @ feats / jnp.maximum(jnp.sum(onehot, axis=0)[:, None], 1.0))
    return state.replace(means=means, frozen=jax.tree.map(jnp.copy, state.solver.params))

  # -- steps ---------------------------------------------------------------------------------

  def solver_step(self, state, data: TaskArrays, key):
    """One step on a batch drawn uniformly from the task's images and the exemplars."""
    k_i, k_c, k_m = jax.random.split(key, 3)
    n_cur = data.count
    n_mem = jnp.sum(state.filled.astype(jnp.int32))
    u = jax.random.randint(k_i, (self.batch_size,), 0, n_cur + n_mem)
    rows_c = jax.random.randint(k_c, (self.batch_size,), 0, n_cur)
    mem_rows = jnp.argsort(~state.filled)  # filled rows first
    rows_m = mem_rows[jax.random.randint(k_m, (self.batch_size,), 0, jnp.maximum(n_mem, 1))]
    from_mem = u >= n_cur
    pick = from_mem.reshape((-1,) + (1,) * len(self.image_shape))
    x = self.local(jnp.where(pick, state.exemplars_x[rows_m], data.x[rows_c]))
    y = self.local(jnp.where(from_mem, state.exemplars_y[rows_m], data.y[rows_c]))
    new = state.active & ~state.old
    teacher = None
    if self.distill and state.frozen is not None:
      teacher = self.classifier.apply({"params": jax.lax.stop_gradient(state.frozen)}, x)

    def loss_fn(params):
      logits = self.classifier.apply({"params": params}, x)
      loss = jnp.mean(sigmoid_distillation_loss(logits=logits, labels=y, teacher_logits=teacher,
                                                new=new, active=state.active))
      acc = jnp.mean(jnp.argmax(mask_logits(logits, state.active), -1) == y)
      return loss, {"solver_loss": loss, "train_acc": acc,
                    "exemplar_share": jnp.mean(from_mem.astype(jnp.float32))}

    grads, metrics = self.cross_device_mean(jax.grad(loss_fn, has_aux=True)(state.solver.params))
    return state.replace(solver=apply_gradients(state.solver, grads, self.solver_tx)), metrics

  def exemplar_step(self, state, data: TaskArrays, key):
    """Algorithms 4 and 5: old classes keep their first m exemplars, new ones get m by herding."""
    del key
    seen = jnp.sum(state.active.astype(jnp.int32))
    m = self.memory_size // jnp.maximum(seen, 1)
    old_m = self.memory_size // jnp.maximum(jnp.sum(state.old.astype(jnp.int32)), 1)
    rows = jnp.arange(self.memory_size)
    slot, within = rows // jnp.maximum(m, 1), rows % jnp.maximum(m, 1)
    # the class of each new row: the class whose rank is ``slot``
    klass = jnp.argmax((state.rank[None, :] == slot[:, None]) & state.active[None, :], axis=-1)
    in_budget = (slot < seen) & jnp.any((state.rank[None, :] == slot[:, None]) & state.active[None, :], axis=-1)
    keep_old = in_budget & state.old[klass]
    src = jnp.clip(state.rank[klass] * old_m + within, 0, self.memory_size - 1)  # an old class's row
    x_old, y_old = state.exemplars_x[src], state.exemplars_y[src]
    ok_old = state.filled[src] & keep_old
    # herding for each of the task's classes, over its rows of the task data
    feats = self._features(state.solver.params, data.x)
    valid_rows = jnp.arange(data.x.shape[0]) < data.count
    max_m = self.memory_size  # a static bound of m (one class seen: the whole budget)

    def herd(c):
      return herding(feats, valid_rows & (data.y == c), m, max_m)

    picks = jax.vmap(herd)(jnp.arange(self.num_classes))  # (K, max_m)
    chosen = picks[klass, within]
    ok_new = in_budget & ~state.old[klass] & (chosen >= 0)
    safe = jnp.maximum(chosen, 0)
    shape = (-1,) + (1,) * len(self.image_shape)
    x = jnp.where(ok_new.reshape(shape), data.x[safe], jnp.where(ok_old.reshape(shape), x_old, 0.0))
    y = jnp.where(ok_new, data.y[safe], jnp.where(ok_old, y_old, 0)).astype(jnp.int32)
    filled = ok_new | ok_old
    state = state.replace(exemplars_x=x, exemplars_y=y, filled=filled)
    return state, {"exemplars": jnp.sum(filled.astype(jnp.float32)), "per_class": m.astype(jnp.float32)}

  # -- prediction ----------------------------------------------------------------------------

  def predict(self, state, x: jax.Array) -> jax.Array:
    if not self.nme:
      return super().predict(state, x)
    feats = self._features(state.solver.params, x)
    dist = jnp.sum(jnp.square(feats[:, None, :] - state.means[None, :, :]), axis=-1)
    return mask_logits(-dist, state.active)


def make_icarl(config, image_shape, num_classes, parallel=Parallel()) -> ICaRL:
  check_config(config)
  require(config.icarl.memory_size >= num_classes, "icarl.memory_size", config.icarl.memory_size,
          f"an integer >= the {num_classes} classes (at least one exemplar per class)")
  return ICaRL(config, image_shape, num_classes, parallel)


SPEC = MethodSpec(make=make_icarl, sections=lambda: {"icarl": config_section()}, check=check_config)
