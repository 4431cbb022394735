"""Deep Generative Replay (Shin, Lee, Kim & Kim, NeurIPS 2017).

A scholar is a generator G and a solver C. For task t > 1, with the frozen
snapshots G_{t-1}, C_{t-1} of the previous scholar:

* the generator learns the mixture ``r * D_t + (1 - r) * G_{t-1}``: a WGAN-GP
  critic sees real current data with weight r and G_{t-1}'s samples with weight
  1 - r (as the reference PyTorch code does);
* the solver minimises ``r * L(C_t(x), y) + (1 - r) * L(C_t(x'), C_{t-1}(x'))``
  on real ``(x, y)`` and replayed ``x' ~ G_{t-1}`` (Sec. 3.2), with hard (argmax)
  or soft targets (``config.dgr.targets``).

Defaults follow the common implementations: WGAN-GP with lambda = 10 and 5 critic
steps per generator step, Adam(1e-4, 0.5, 0.9) for the GAN (the reference DGR code's
betas; WGAN-GP's Algorithm 1 uses beta1 = 0: set ``train.gan_b1 = 0.0``); the paper uses an
unconditional generator, and ``config.model.conditional`` makes it an AC-GAN
whose replay draws classes uniformly from those seen before.

``config.dgr.replay_source`` chooses what the solver replays, through the same loss and the same
C_{t-1} targets (the DGR paper's baselines, Fig. 3): ``"generator"`` (DGR: G_{t-1}'s samples),
``"exact"`` (ER: real training images of earlier tasks, the ceiling of replay; the loop hands the
method every task's data so far, and the real term samples the current task's rows only),
``"noise"`` (uniform noise over the data's value range: distillation without a generator) or
``"none"`` (no replay term: fine-tuning). Only ``"generator"`` trains the generator.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct
from ml_collections import config_dict

from gmcl.checks import require
from gmcl.config import check_image_generator
from gmcl.data.sampling import TaskArrays, sample_current, sample_past
from gmcl.losses.replay import dgr_solver_objective, replay_loss
from gmcl.methods.base import ModelState, Phase
from gmcl.methods.classifier import ClassifierMethod
from gmcl.methods.memory import (GenerativeMemory, MemorySnapshot, MemoryState, apply_generator,
                                 parse_replay_ratio)
from gmcl.parallel import Parallel
from gmcl.registry import MethodSpec

__all__ = ["DGR", "DGRSnapshot", "DGRState", "apply_generator", "check_config", "check_section",
           "config_section", "make_dgr", "parse_replay_ratio"]


@struct.dataclass
class DGRSnapshot:
  """The frozen scholar of task t-1: parameter pytrees only, never differentiated."""
  solver_params: Any  # C_{t-1}
  memory: MemorySnapshot  # G_{t-1}, with the classes seen up to task t-1


@struct.dataclass
class DGRState:
  solver: ModelState
  memory: MemoryState  # G_t, its critic and r, the weight of real data in this task
  active: jax.Array  # (K,) bool
  frozen: Optional[DGRSnapshot] = None


def config_section() -> ml_collections.ConfigDict:
  """The ``dgr`` section (also read by the methods that contain DGR's generative memory)."""
  s = ml_collections.ConfigDict()
  # "balanced" (r = 1/t) or a number in [0, 1]; typed `object` so both kinds can be assigned.
  s.replay_ratio = config_dict.FieldReference("balanced", field_type=object)
  s.targets = "hard"  # hard | soft
  s.temperature = 2.0
  s.replay_source = "generator"  # generator (DGR) | exact (real past data) | noise | none
  # A conditional (AC-GAN) memory's critic learns its class head on real data (and G_{t-1}'s
  # replays) only, as MeRGAN's official code, whose DGR baseline this is; True adds the original
  # AC-GAN's class term on G_t's samples (Odena et al. 2017), which lets the head learn to give
  # no class to generated images: the generator then ignores its label (measured in the notes).
  s.critic_aux_on_fake = False
  return s


REPLAY_SOURCES = ("generator", "exact", "noise", "none")


def check_section(config) -> None:
  """The ``dgr`` section's values."""
  d = config.dgr
  parse_replay_ratio(d.replay_ratio)
  require(d.targets in ("hard", "soft"), "dgr.targets", d.targets, "'hard' or 'soft'")
  require(d.temperature > 0, "dgr.temperature", d.temperature, "> 0")
  require(d.replay_source in REPLAY_SOURCES, "dgr.replay_source", d.replay_source, str(list(REPLAY_SOURCES)))
  require(isinstance(d.critic_aux_on_fake, bool), "dgr.critic_aux_on_fake", d.critic_aux_on_fake,
          "True or False")


def check_config(config) -> None:
  check_section(config)
  check_image_generator(config)


class DGR(ClassifierMethod):
  """Deep Generative Replay; see the module docstring. The generator is a
  :class:`gmcl.methods.memory.GenerativeMemory` (``self.memory``), the solver this class's."""
  has_generator = True
  state_format = 2  # the generator's state in ``memory`` (gmcl.methods.memory)

  def __init__(self, config, image_shape, num_classes, parallel: Parallel = Parallel()):
    super().__init__(config, image_shape, num_classes, name="dgr", parallel=parallel)
    self.memory = GenerativeMemory(config, self.image_shape, num_classes, parallel)
    self.conditional = self.memory.conditional
    self.targets = config.dgr.targets
    self.temperature = config.dgr.temperature
    self.source = config.dgr.replay_source
    if self.source == "exact":  # every task's data so far; the real term samples the current task's
      self.data_mode = "cumulative"
    self.has_generator = self.source == "generator"

  # -- state ---------------------------------------------------------------------------------

  def init(self, key) -> DGRState:
    k_s, k_g, k_c = jax.random.split(key, 3)
    return DGRState(solver=self._init_solver(k_s), memory=self.memory.init(k_g, k_c),
                    active=jnp.zeros((self.num_classes,), bool))

  def begin_task(self, state, task_index, active_classes):
    state = super().begin_task(state, task_index, active_classes)
    return state.replace(memory=self.memory.begin_task(state.memory, task_index))

  def end_task(self, state: DGRState) -> DGRState:
    """Snapshots G_t and C_t; they become G_{t-1} and C_{t-1} of the next task."""
    return state.replace(frozen=DGRSnapshot(
        solver_params=jax.tree.map(jnp.copy, state.solver.params),
        memory=self.memory.snapshot(state.memory, state.active)))

  def phases(self):
    tr = self.config.train
    solver = Phase("solver", tr.solver_steps, self.solver_step)
    if self.source != "generator":
      return (solver,)
    return (Phase("generator", tr.generator_steps, self.generator_step), solver)

  def sample(self, state, key, labels):
    return self.memory.sample(state.memory, key, labels)

  # -- solver --------------------------------------------------------------------------------

  def real_batch(self, data: TaskArrays, key):
    """The current task's rows (with exact replay the data holds earlier tasks' too)."""
    x, y = sample_current(data, key, self.batch_size)
    return self.local(x), self.local(y)

  def replay_inputs(self, state: DGRState, key, data: TaskArrays):
    """The inputs x' the solver replays (``dgr.replay_source``), a global batch sliced per device."""
    n = self.batch_size
    if self.source == "generator":
      return self.memory.replay_batch(state.frozen.memory, key, n)[0]
    if self.source == "exact":
      return self.local(sample_past(data, key, n)[0])
    low, high = self.config.data.value_range  # noise
    return self.local(jax.random.uniform(key, (n,) + self.image_shape, jnp.float32, low, high))

  def replay_objective(self, params, state: DGRState, real_losses, key, data: TaskArrays):
    if state.frozen is None or self.source == "none":  # nothing to replay (static)
      return jnp.mean(real_losses), {}
    x_rep = self.replay_inputs(state, key, data)
    teacher = self.classifier.apply({"params": jax.lax.stop_gradient(state.frozen.solver_params)},
                                    x_rep)
    student = self.classifier.apply({"params": params}, x_rep)
    rep = replay_loss(logits=student, teacher_logits=teacher, mode=self.targets,
                      temperature=self.temperature, where=state.active,
                      teacher_where=state.frozen.memory.active)
    loss = dgr_solver_objective(real_losses=real_losses, replay_losses=rep, ratio=state.memory.ratio)
    return loss, {"solver_replay_loss": jnp.mean(rep)}

  # -- generator -----------------------------------------------------------------------------

  def generator_step(self, state: DGRState, data: TaskArrays, key):
    """One WGAN-GP iteration of the generative memory on ``r * D_t + (1 - r) * G_{t-1}``
    (:meth:`gmcl.methods.memory.GenerativeMemory.train_step`)."""
    frozen = None if state.frozen is None else state.frozen.memory
    memory, metrics = self.memory.train_step(state.memory, frozen, data, key)
    return state.replace(memory=memory), metrics


def make_dgr(config, image_shape, num_classes, parallel=Parallel()) -> DGR:
  """Checks the config's ``dgr`` keys (:func:`check_config`), then builds the method."""
  check_config(config)
  return DGR(config, image_shape, num_classes, parallel)


SPEC = MethodSpec(make=make_dgr, sections=lambda: {"dgr": config_section()}, check=check_config)
