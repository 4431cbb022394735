"""Importance-regularised classifiers: EWC (EWC++ or Kirkpatrick's), SI (PI) and RWalk, with an
optional episodic memory of real exemplars (the seed table's "-S" rows).

One classifier (the library's solver) learns the tasks in turn with the class-incremental loss
(one head over the classes seen), plus ``strength * sum_i F_i (theta_i - theta*_i)^2`` where
``theta*`` are the parameters at the end of the previous task and ``F`` the importance the method
estimates (:mod:`gmcl.losses.regularization` holds the pure update rules). The reference is
Chaudhry et al.'s code of RWalk and A-GEM (``facebookresearch/agem``, ``model/model.py`` and
``fc_permute_mnist.py``), step for step:

``ewc`` (``ewc.fisher="ema"``, EWC++, the reference's ``EWC``)
  Each step adds the unregularised loss's squared gradient to a window; at the start of every
  ``ewc.fisher_every``-th step of a task the running Fisher becomes ``(1 - a) F + a * window / dt``
  (``a = ewc.fisher_decay``) and the window restarts. At a task's end the importance is the running
  Fisher, min-max normalised over all parameters (``ewc.normalize``); the running Fisher carries on
  into the next task, the window restarts.
``ewc`` (``ewc.fisher="empirical"``, Kirkpatrick et al. 2017)
  After the solver's steps a ``fisher`` phase averages the squared per-example gradients of
  ``-log p(y|x)`` over ``ewc.fisher_samples`` examples of the task (``ewc.fisher_labels``: the
  data's labels, the empirical Fisher, or labels drawn from the model, the Fisher proper).
  ``ewc.accumulate="per_task"`` keeps one penalty per task: ``sum_t F_t (theta - theta*_t)^2`` is
  the one quadratic with ``F = sum_t F_t`` and ``theta* = sum_t F_t theta*_t / F`` (exactly, up
  to a constant), which this state holds; ``"online"`` is Schwarz et al.'s
  ``F <- gamma F + F_t`` with ``theta*`` the latest parameters.
``si`` (Zenke et al. 2017, the reference's ``PI``)
  ``omega -= g * delta_theta`` every step (g: the unregularised gradient before the step); at a
  task's end ``Omega += relu(omega / (xi + (theta - theta_start)^2))``, omega restarts, the
  importance is Omega (not normalised, as the reference). theta_start before task 1 is the
  initialisation.
``rwalk`` (Chaudhry et al. 2018)
  EWC++'s running Fisher, and at the start of every ``rwalk.fisher_every``-th step
  ``s += relu(omega / (xi + F * (theta - theta_window)^2))`` (the path since the window began),
  then omega restarts. At a task's end the task's scores (doubled after the first task) are
  averaged with the old ones (``rwalk.score_update``), and the importance is
  ``minmax(F) + minmax(s)``.

Two places where the reference code differs from the paper's equations are config values, the
paper's by default: ``rwalk.fisher_window`` ("reset": EWC++'s window restarts at each running
update, Eq. 10; "accumulate": RWalk's branch of the reference code never clears it within a task)
and ``rwalk.score_update`` ("average": ``s = (s + s_task) / 2``; "accumulate": the code's
``s += (s + s_task) / 2``).

``episodic.per_class`` > 0: after each task, that many random training images of each of its
classes are kept (a fixed buffer of K x m); every solver step then also trains on
``episodic.batch_size`` of them (one cross-entropy over the current and memory batch together,
as the reference's ER). The squared gradients, path and Fisher are those of that loss.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from gmcl.checks import require
from gmcl.data.sampling import TaskArrays
from gmcl.losses import regularization as reg
from gmcl.losses.classification import mask_logits, softmax_cross_entropy
from gmcl.methods.base import Phase, apply_gradients
from gmcl.methods.classifier import ClassifierMethod
from gmcl.parallel import Parallel
from gmcl.registry import MethodSpec

__all__ = ["EpisodicMemory", "Regularized", "RegularizedState", "config_sections", "make"]

KINDS = ("ewc", "si", "rwalk")


@struct.dataclass
class EpisodicMemory:
  """K x m real exemplars: rows ``[c*m, (c+1)*m)`` hold class c's, ``filled`` says which are set."""
  x: jax.Array  # (K*m, H, W, C)
  y: jax.Array  # (K*m,) int32
  filled: jax.Array  # (K*m,) bool


@struct.dataclass
class RegularizedState:
  solver: Any  # ModelState
  active: jax.Array  # (K,) bool: classes seen so far
  anchor: Any  # theta*: the parameters the penalty pulls towards
  importance: Any  # F: the penalty's per-parameter weights (zeros before the first task ends)
  stats: dict  # the method's running statistics (pytrees like the parameters) and counters
  memory: Optional[EpisodicMemory] = None
  frozen: Any = None  # no snapshot: theta* and F are the method's memory of old tasks


def _ewc_section() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.strength = 10.0  # lambda: the reference's MNIST value for EWC
  s.fisher = "ema"  # ema (EWC++, the reference) | empirical (Kirkpatrick et al., at each task's end)
  s.fisher_every = 10  # ema: steps per window (the reference's fisher_update_after)
  s.fisher_decay = 0.9  # ema: alpha, the weight of the newest window (fisher_ema_decay)
  s.fisher_samples = 1024  # empirical: examples of each task the Fisher averages over
  s.fisher_labels = "true"  # empirical: true (the data's: empirical Fisher) | sampled (from the model)
  s.accumulate = "per_task"  # empirical: per_task (one penalty per task) | online (gamma F + F_t)
  s.online_gamma = 1.0
  s.normalize = "auto"  # auto (minmax for ema, none for empirical) | minmax | none
  return s


def _si_section() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.strength = 0.1  # the reference's MNIST value for PI
  s.xi = 1e-3  # the reference's PARAM_XI_STEP
  return s


def _rwalk_section() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.strength = 1.0  # the reference's MNIST value for RWALK
  s.xi = 1e-3
  s.fisher_every = 10
  s.fisher_decay = 0.9
  s.fisher_window = "reset"  # reset (EWC++'s Eq. 10) | accumulate (the reference code's RWALK branch)
  s.score_update = "average"  # average (the paper) | accumulate (the reference code's assign_add)
  return s


def _episodic_section() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.per_class = 0  # real exemplars kept per class after its task; 0: no memory
  s.batch_size = 64  # memory examples in every solver step (when the memory holds any)
  return s


_SECTIONS = {"ewc": _ewc_section, "si": _si_section, "rwalk": _rwalk_section}


def config_sections(kind: str) -> dict:
  return {kind: _SECTIONS[kind](), "episodic": _episodic_section()}


def check_config(config, kind: str) -> None:
  s, e = config[kind], config.episodic
  require(isinstance(s.strength, (int, float)) and s.strength >= 0, f"{kind}.strength", s.strength,
          "a number >= 0")
  if kind in ("ewc", "rwalk"):
    require(isinstance(s.fisher_every, int) and s.fisher_every >= 1, f"{kind}.fisher_every",
            s.fisher_every, "an integer >= 1")
    require(0 < s.fisher_decay <= 1, f"{kind}.fisher_decay", s.fisher_decay, "in (0, 1]")
  if kind in ("si", "rwalk"):
    require(s.xi > 0, f"{kind}.xi", s.xi, "> 0")
  if kind == "ewc":
    require(s.fisher in ("ema", "empirical"), "ewc.fisher", s.fisher, "'ema' or 'empirical'")
    require(isinstance(s.fisher_samples, int) and s.fisher_samples >= 1, "ewc.fisher_samples",
            s.fisher_samples, "an integer >= 1")
    require(s.fisher_labels in ("true", "sampled"), "ewc.fisher_labels", s.fisher_labels,
            "'true' or 'sampled'")
    require(s.accumulate in ("per_task", "online"), "ewc.accumulate", s.accumulate,
            "'per_task' or 'online'")
    require(s.online_gamma >= 0, "ewc.online_gamma", s.online_gamma, ">= 0")
    require(s.normalize in ("auto", "minmax", "none"), "ewc.normalize", s.normalize,
            "'auto', 'minmax' or 'none'")
  if kind == "rwalk":
    require(s.fisher_window in ("reset", "accumulate"), "rwalk.fisher_window", s.fisher_window,
            "'reset' or 'accumulate'")
    require(s.score_update in ("average", "accumulate"), "rwalk.score_update", s.score_update,
            "'average' or 'accumulate'")
  require(isinstance(e.per_class, int) and e.per_class >= 0, "episodic.per_class", e.per_class,
          "an integer >= 0 (0: no memory)")
  require(isinstance(e.batch_size, int) and e.batch_size >= 1, "episodic.batch_size", e.batch_size,
          "an integer >= 1")
  require(config.data.protocol != "permuted" or e.per_class == 0, "episodic.per_class", e.per_class,
          "0 with data.protocol='permuted' (every task holds every class: the buffer is per class)")


class Regularized(ClassifierMethod):
  """EWC, SI or RWalk on the class-incremental classifier; see the module docstring."""

  def __init__(self, config, image_shape, num_classes, kind: str, parallel: Parallel = Parallel()):
    if kind not in KINDS:
      raise ValueError(f"Regularized: kind={kind!r}; valid: {list(KINDS)}.")
    super().__init__(config, image_shape, num_classes, name=kind, parallel=parallel)
    self.kind = kind
    self.section = config[kind]
    self.strength = float(self.section.strength)
    self.per_class = int(config.episodic.per_class)
    self.memory_batch = int(config.episodic.batch_size)
    self.empirical = kind == "ewc" and self.section.fisher == "empirical"
    if kind == "ewc":
      norm = self.section.normalize
      self.normalize = (norm == "minmax") or (norm == "auto" and not self.empirical)
    else:
      self.normalize = kind == "rwalk"

  # -- state ---------------------------------------------------------------------------------

  def init(self, key) -> RegularizedState:
    solver = self._init_solver(key)
    params = solver.params
    zeros = lambda: reg.zeros_like(params)
    copy = lambda: jax.tree.map(jnp.copy, params)
    stats: dict = {"step": jnp.zeros((), jnp.int32), "tasks": jnp.zeros((), jnp.int32)}
    if self.kind == "ewc" and not self.empirical:
      stats.update(window=zeros(), running=zeros())
    if self.empirical:
      stats.update(task_fisher=zeros(), count=jnp.zeros((), jnp.float32), fisher=zeros(),
                   weighted_anchor=zeros())
    if self.kind == "si":
      stats.update(path=zeros(), omega=zeros())
    if self.kind == "rwalk":
      stats.update(window=zeros(), running=zeros(), path=zeros(), window_start=copy(),
                   task_scores=zeros(), scores=zeros())
    memory = None
    if self.per_class:
      n = self.num_classes * self.per_class
      memory = EpisodicMemory(x=jnp.zeros((n,) + self.image_shape, jnp.float32),
                              y=jnp.repeat(jnp.arange(self.num_classes, dtype=jnp.int32), self.per_class),
                              filled=jnp.zeros((n,), bool))
    return RegularizedState(solver=solver, active=jnp.zeros((self.num_classes,), bool),
                            anchor=copy(), importance=zeros(), stats=stats, memory=memory)

  def begin_task(self, state, task_index: int, active_classes: np.ndarray):
    state = super().begin_task(state, task_index, active_classes)
    return state.replace(stats=dict(state.stats, step=jnp.zeros((), jnp.int32)))

  def phases(self):
    out = [Phase("solver", self.config.train.solver_steps, self.solver_step)]
    if self.empirical:
      out.append(Phase("fisher", math.ceil(self.section.fisher_samples / self.batch_size),
                       self.fisher_step))
    if self.per_class:
      out.append(Phase("memory", 1, self.memory_step))
    return tuple(out)

  def end_task(self, state):
    """theta* and the importance for the next task (the module docstring's rules)."""
    s, params = dict(state.stats), state.solver.params
    copy = jax.tree.map(jnp.copy, params)
    if self.kind == "ewc" and not self.empirical:
      importance = s["running"]
      s["window"] = reg.zeros_like(params)
    elif self.empirical:
      task = jax.tree.map(lambda f: f / jnp.maximum(s["count"], 1.0), s["task_fisher"])
      if self.section.accumulate == "online":
        s["fisher"] = jax.tree.map(lambda f, ft: self.section.online_gamma * f + ft, s["fisher"], task)
      else:
        s["fisher"] = jax.tree.map(jnp.add, s["fisher"], task)
        s["weighted_anchor"] = jax.tree.map(lambda w, ft, p: w + ft * p, s["weighted_anchor"], task, params)
        copy = jax.tree.map(lambda w, f, p: jnp.where(f > 0, w / jnp.where(f > 0, f, 1.0), p),
                            s["weighted_anchor"], s["fisher"], params)
      importance = s["fisher"]
      s.update(task_fisher=reg.zeros_like(params), count=jnp.zeros((), jnp.float32))
    elif self.kind == "si":
      s["omega"] = reg.si_importance(s["omega"], s["path"], params, state.anchor, float(self.section.xi))
      s["path"] = reg.zeros_like(params)
      importance = s["omega"]
    else:  # rwalk
      first = s["tasks"] == 0
      task_scores = jax.tree.map(lambda x: jnp.where(first, 2.0 * x, x), s["task_scores"])
      if self.section.score_update == "average":
        s["scores"] = jax.tree.map(lambda old, new: (old + new) / 2.0, s["scores"], task_scores)
      else:
        s["scores"] = jax.tree.map(lambda old, new: old + (old + new) / 2.0, s["scores"], task_scores)
      importance = jax.tree.map(jnp.add, reg.minmax_normalize(s["running"]),
                                reg.minmax_normalize(s["scores"]))
      s.update(window_start=jax.tree.map(jnp.copy, params), path=reg.zeros_like(params),
               task_scores=reg.zeros_like(params), window=reg.zeros_like(params))
    if self.normalize and self.kind == "ewc":
      importance = reg.minmax_normalize(importance)
    s["tasks"] = s["tasks"] + 1
    return state.replace(anchor=copy, importance=jax.tree.map(jnp.copy, importance), stats=s)

  # -- steps ---------------------------------------------------------------------------------

  def _memory_batch(self, state, key):
    """``episodic.batch_size`` exemplars drawn uniformly from the filled rows (weights 0 while
    the memory is empty)."""
    mem = state.memory
    logits = jnp.where(mem.filled, 0.0, -jnp.inf)
    idx = jax.random.categorical(key, logits, shape=(self.memory_batch,))
    idx = jnp.where(jnp.any(mem.filled), idx, 0)
    return self.local(mem.x[idx]), self.local(mem.y[idx]), self.local(mem.filled[idx].astype(jnp.float32))

  def solver_step(self, state, data: TaskArrays, key):
    """One step of the regularised loss; the statistics updated around it."""
    k_batch, k_mem = jax.random.split(key)
    x, y = self.sample_batch(data, k_batch, self.batch_size)
    w = jnp.ones(x.shape[:1], jnp.float32)
    if self.per_class:
      xm, ym, wm = self._memory_batch(state, k_mem)
      x, y, w = jnp.concatenate([x, xm]), jnp.concatenate([y, ym]), jnp.concatenate([w, wm])

    def data_loss(params):
      logits = self.classifier.apply({"params": params}, x)
      ce = softmax_cross_entropy(logits=logits, labels=y, where=state.active)
      loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
      acc = jnp.sum((jnp.argmax(mask_logits(logits, state.active), -1) == y) * w) / jnp.maximum(jnp.sum(w), 1.0)
      return loss, acc

    before = state.solver.params
    (loss, acc), grads = jax.value_and_grad(data_loss, has_aux=True)(before)
    grads, loss, acc = self.cross_device_mean((grads, loss, acc))
    penalty = reg.quadratic_penalty(before, state.anchor, state.importance, self.strength)
    total = jax.tree.map(jnp.add, grads,
                         reg.penalty_gradient(before, state.anchor, state.importance, self.strength))
    s = self._window_boundary(dict(state.stats), before)
    solver = apply_gradients(state.solver, total, self.solver_tx)
    after = solver.params
    if "window" in s:
      s["window"] = reg.add_squares(s["window"], grads)
    if "path" in s:
      s["path"] = reg.path_increment(s["path"], grads, before, after)
    s["step"] = s["step"] + 1
    metrics = {"solver_loss": loss + penalty, "solver_real_loss": loss, "penalty": penalty,
               "train_acc": acc}
    return state.replace(solver=solver, stats=s), metrics

  def _window_boundary(self, s: dict, params) -> dict:
    """At the start of every ``fisher_every``-th step of a task (the reference code's check of
    ``(iters + 1) % fisher_update_after == 0`` before the step): RWalk's window scores, then the
    running Fisher's update, then (RWalk) a new window."""
    if "running" not in s:
      return s
    every, alpha = int(self.section.fisher_every), float(self.section.fisher_decay)
    boundary = (s["step"] + 1) % every == 0
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(boundary, a, b), new, old)
    if self.kind == "rwalk":
      scores = reg.rwalk_window_scores(s["task_scores"], s["path"], s["running"], params,
                                       s["window_start"], float(self.section.xi))
      s["task_scores"] = pick(scores, s["task_scores"])
    s["running"] = pick(reg.ema_fisher(s["running"], s["window"], alpha=alpha, every=every), s["running"])
    if self.kind == "ewc" or self.section.fisher_window == "reset":
      s["window"] = pick(reg.zeros_like(params), s["window"])
    if self.kind == "rwalk":
      s["window_start"] = pick(params, s["window_start"])
      s["path"] = pick(reg.zeros_like(params), s["path"])
    return s

  def fisher_step(self, state, data: TaskArrays, key):
    """Kirkpatrick's Fisher: squared per-example gradients of ``-log p(y|x)`` on one batch."""
    k_batch, k_label = jax.random.split(key)
    x, y = self.sample_batch(data, k_batch, self.batch_size)
    params = state.solver.params
    if self.section.fisher_labels == "sampled":
      logits = mask_logits(self.classifier.apply({"params": params}, x), state.active)
      gumbel = self.local(jax.random.gumbel(k_label, (self.batch_size, self.num_classes)))
      y = jnp.argmax(logits + gumbel, axis=-1).astype(jnp.int32)  # y ~ p(y | x), a global draw

    def nll(p, xi, yi):
      logits = self.classifier.apply({"params": p}, xi[None])
      return softmax_cross_entropy(logits=logits, labels=yi[None], where=state.active)[0]

    sq = self.cross_device_mean(reg.per_example_squared_grads(nll, params, x, y))
    n = self.batch_size  # the global batch: the mean over devices of local sums times devices
    if self.parallel.mode == "pmap":
      sq = jax.tree.map(lambda g: g * self.parallel.num_devices, sq)
    s = dict(state.stats, task_fisher=jax.tree.map(jnp.add, state.stats["task_fisher"], sq),
             count=state.stats["count"] + n)
    return state.replace(stats=s), {"fisher_mean": sum(jnp.mean(v) for v in jax.tree.leaves(sq)) / n}

  def memory_step(self, state, data: TaskArrays, key):
    """Keeps ``episodic.per_class`` random training images of each class present in the task."""
    m, mem = self.per_class, state.memory
    cap = data.x.shape[0]
    valid = jnp.arange(cap) < data.count
    u = jax.random.uniform(key, (cap,))

    def choose(c):
      score = jnp.where(valid & (data.y == c), u, -1.0)
      top, idx = jax.lax.top_k(score, m)
      return idx, top >= 0.0

    idx, ok = jax.vmap(choose)(jnp.arange(self.num_classes))  # (K, m)
    present = jnp.any(ok, axis=1)
    old_x = mem.x.reshape((self.num_classes, m) + self.image_shape)
    new_x = data.x[idx]
    keep = present.reshape((self.num_classes,) + (1,) * (new_x.ndim - 1))
    x = jnp.where(keep, new_x, old_x).reshape(mem.x.shape)
    filled = jnp.where(present[:, None], ok, mem.filled.reshape(self.num_classes, m)).reshape(-1)
    memory = mem.replace(x=x, filled=filled)
    return state.replace(memory=memory), {"memory_filled": jnp.mean(filled.astype(jnp.float32))}


def make(kind: str):
  def build(config, image_shape, num_classes, parallel=Parallel()) -> Regularized:
    check_config(config, kind)
    return Regularized(config, image_shape, num_classes, kind, parallel)
  return build


EWC = MethodSpec(make=make("ewc"), sections=lambda: config_sections("ewc"),
                 check=lambda c: check_config(c, "ewc"))
SI = MethodSpec(make=make("si"), sections=lambda: config_sections("si"),
                check=lambda c: check_config(c, "si"))
RWALK = MethodSpec(make=make("rwalk"), sections=lambda: config_sections("rwalk"),
                   check=lambda c: check_config(c, "rwalk"))
