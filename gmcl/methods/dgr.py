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
from gmcl.data.sampling import TaskArrays
from gmcl.losses.gan import auxiliary_classifier_loss, wasserstein_generator_loss
from gmcl.losses.replay import dgr_solver_objective, replay_loss
from gmcl.methods.base import ModelState, Phase, reset_optimizer
from gmcl.optim import adam
from gmcl.methods.classifier import ClassifierMethod
from gmcl.models import make_gan
from gmcl.methods.wgan_gp import (critic_update_with, generator_update_with, wgan_gp_critic_loss,
                                  wgan_gp_iteration)
from gmcl.registry import MethodSpec
from gmcl.parallel import Parallel


@struct.dataclass
class DGRSnapshot:
  """The frozen scholar of task t-1: parameter pytrees only, never differentiated."""
  solver_params: Any
  generator_params: Any
  generator_batch_stats: Any
  active: jax.Array  # (K,) classes seen up to task t-1


@struct.dataclass
class DGRState:
  solver: ModelState
  generator: ModelState
  critic: ModelState
  active: jax.Array  # (K,) bool
  ratio: jax.Array  # () float32: r, the weight of real data in this task
  frozen: Optional[DGRSnapshot] = None


def apply_generator(generator, params, batch_stats, z, labels, train: bool):
  """``(images, batch_stats)`` of a generator; in training mode the running statistics
  are updated (a generator without them, e.g. with class-conditional batch norm, gives None)."""
  if batch_stats is None:
    return generator.apply({"params": params}, z, labels, train=train), None
  variables = {"params": params, "batch_stats": batch_stats}
  if train:
    images, updates = generator.apply(variables, z, labels, train=True, mutable=["batch_stats"])
    return images, updates["batch_stats"]
  return generator.apply(variables, z, labels, train=False), batch_stats


def parse_replay_ratio(value) -> Optional[float]:
  """``"balanced"`` -> None (r = 1/t); a number in [0, 1] -> that number."""
  if isinstance(value, str) and value.strip() == "balanced":
    return None
  try:
    r = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"dgr.replay_ratio={value!r}; valid: 'balanced' (r = 1/t) or a number "
                     "in [0, 1].") from None
  if not 0.0 <= r <= 1.0:
    raise ValueError(f"dgr.replay_ratio={r} is outside [0, 1].")
  return r


def config_section() -> ml_collections.ConfigDict:
  """The ``dgr`` section (also read by the methods that contain DGR's generative memory)."""
  s = ml_collections.ConfigDict()
  # "balanced" (r = 1/t) or a number in [0, 1]; typed `object` so both kinds can be assigned.
  s.replay_ratio = config_dict.FieldReference("balanced", field_type=object)
  s.targets = "hard"  # hard | soft
  s.temperature = 2.0
  return s


def check_section(config) -> None:
  """The ``dgr`` section's values."""
  d = config.dgr
  parse_replay_ratio(d.replay_ratio)
  require(d.targets in ("hard", "soft"), "dgr.targets", d.targets, "'hard' or 'soft'")
  require(d.temperature > 0, "dgr.temperature", d.temperature, "> 0")


def check_config(config) -> None:
  check_section(config)
  check_image_generator(config)


class DGR(ClassifierMethod):
  """Deep Generative Replay; see the module docstring."""
  has_generator = True

  def __init__(self, config, image_shape, num_classes, parallel: Parallel = Parallel()):
    super().__init__(config, image_shape, num_classes, name="dgr", parallel=parallel)
    m, tr, d = config.model, config.train, config.dgr
    self.conditional = bool(m.conditional)
    self.z_dim = m.z_dim
    self.generator, self.critic = make_gan(
        m.gan, self.image_shape, num_classes if self.conditional else 0,
        generator_features=m.generator_features, critic_features=m.critic_features,
        critic_layers=m.critic_layers, kernel_size=m.kernel_size,
        output_activation=m.output_activation, bn_axis_name=parallel.axis_name,
        conditioning=m.conditioning, conv_plan=m.conv_plan)
    self.gan_tx = adam(tr.gan_lr, tr.gan_b1, tr.gan_b2, tr.weight_decay)
    self.n_critic = tr.n_critic
    self.gp_weight = tr.gp_weight
    self.fixed_ratio = parse_replay_ratio(d.replay_ratio)
    self.targets = d.targets
    self.temperature = d.temperature

  # -- state ---------------------------------------------------------------------------------

  def init(self, key) -> DGRState:
    k_s, k_g, k_c = jax.random.split(key, 3)
    z = jnp.zeros((2, self.z_dim))
    labels = jnp.zeros((2,), jnp.int32) if self.conditional else None
    g_vars = self.generator.init(k_g, z, labels, train=False)
    c_params = self.critic.init(k_c, jnp.zeros((2,) + self.image_shape))["params"]
    return DGRState(
        solver=self._init_solver(k_s),
        generator=ModelState(params=g_vars["params"], opt_state=self.gan_tx.init(g_vars["params"]),
                             batch_stats=g_vars.get("batch_stats")),
        critic=ModelState(params=c_params, opt_state=self.gan_tx.init(c_params)),
        active=jnp.zeros((self.num_classes,), bool),
        ratio=jnp.ones((), jnp.float32))

  def begin_task(self, state, task_index, active_classes):
    state = super().begin_task(state, task_index, active_classes)
    r = 1.0 / (task_index + 1) if self.fixed_ratio is None else self.fixed_ratio
    state = state.replace(ratio=jnp.asarray(r, jnp.float32))
    if self.config.train.reset_optimizers:
      state = state.replace(generator=reset_optimizer(state.generator, self.gan_tx),
                            critic=reset_optimizer(state.critic, self.gan_tx))
    return state

  def end_task(self, state: DGRState) -> DGRState:
    """Snapshots G_t and C_t; they become G_{t-1} and C_{t-1} of the next task."""
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    return state.replace(frozen=DGRSnapshot(
        solver_params=copy(state.solver.params), generator_params=copy(state.generator.params),
        generator_batch_stats=copy(state.generator.batch_stats), active=jnp.copy(state.active)))

  def phases(self):
    tr = self.config.train
    return (Phase("generator", tr.generator_steps, self.generator_step),
            Phase("solver", tr.solver_steps, self.solver_step))

  # -- sampling ------------------------------------------------------------------------------

  def _generate(self, params, batch_stats, z, labels, train: bool):
    return apply_generator(self.generator, params, batch_stats, z, labels, train)

  def replay_batch(self, frozen: DGRSnapshot, key, n: int):
    """The generative memory's replay draw: ``(x', y')`` with x' ~ G_{t-1} (eval mode, never
    differentiated) and, when conditional, y' drawn uniformly from the classes seen before (else
    None). Public: methods that contain DGR's memory (lsa's ``replay = "generator"``) draw from it.

    ``n`` is the global batch size; under pmap each device generates its rows only.
    """
    k_z, k_y = jax.random.split(key)
    z = self.local(jax.random.normal(k_z, (n, self.z_dim)))
    labels = None
    if self.conditional:
      labels = self.local(jax.random.categorical(k_y, jnp.where(frozen.active, 0.0, -jnp.inf),
                                                 shape=(n,)))
    images, _ = self._generate(jax.lax.stop_gradient(frozen.generator_params),
                               frozen.generator_batch_stats, z, labels, train=False)
    return jax.lax.stop_gradient(images), labels

  def sample(self, state, key, labels):
    z = jax.random.normal(key, (labels.shape[0], self.z_dim))
    images, _ = self._generate(state.generator.params, state.generator.batch_stats, z,
                               labels if self.conditional else None, train=False)
    return images

  # -- solver --------------------------------------------------------------------------------

  def replay_objective(self, params, state: DGRState, real_losses, key):
    if state.frozen is None:  # first task: nothing to replay (static, so compiled separately)
      return jnp.mean(real_losses), {}
    x_rep, _ = self.replay_batch(state.frozen, key, self.batch_size)
    teacher = self.classifier.apply({"params": jax.lax.stop_gradient(state.frozen.solver_params)},
                                    x_rep)
    student = self.classifier.apply({"params": params}, x_rep)
    rep = replay_loss(logits=student, teacher_logits=teacher, mode=self.targets,
                      temperature=self.temperature, where=state.active,
                      teacher_where=state.frozen.active)
    loss = dgr_solver_objective(real_losses=real_losses, replay_losses=rep, ratio=state.ratio)
    return loss, {"solver_replay_loss": jnp.mean(rep)}

  # -- generator -----------------------------------------------------------------------------

  def _fake_batch(self, key, labels_real, labels_replay):
    """z (and labels) of G_t's samples for the real term and, if replaying, the replay term.

    Draws are global and sliced per device, like every per-example draw (see gmcl.parallel).
    """
    n = self.batch_size
    z = self.local(jax.random.normal(key, (n, self.z_dim)))
    if self.conditional and labels_replay is not None:
      z_rep = self.local(jax.random.normal(jax.random.fold_in(key, 1), (n, self.z_dim)))
      return jnp.concatenate([z, z_rep]), jnp.concatenate([labels_real, labels_replay])
    return z, (labels_real if self.conditional else None)

  def generator_step(self, state: DGRState, data: TaskArrays, key):
    """One WGAN-GP iteration (:func:`gmcl.methods.wgan_gp.wgan_gp_iteration`): ``n_critic``
    critic updates, then one generator update."""
    n, replaying = self.batch_size, state.frozen is not None
    n_local = self.local_size(n)
    r = state.ratio if replaying else 1.0
    keys = jax.random.split(key, self.n_critic + 1)

    def split_fakes(images, labels):
      if self.conditional and replaying:
        return (images[:n_local], labels[:n_local]), (images[n_local:], labels[n_local:])
      return (images, labels), (images, labels)  # unconditional: one fake batch serves both terms

    def critic_term(c_params, real, real_labels, fake, fake_labels, k_gp):
      critic_fn = lambda im: self.critic.apply({"params": c_params}, im)
      s_real, a_real = critic_fn(real)
      s_fake, a_fake = critic_fn(fake)
      eps = self.local(jax.random.uniform(k_gp, (n,)))
      loss, m = wgan_gp_critic_loss(critic_fn=lambda im: critic_fn(im)[0], real=real, fake=fake, epsilon=eps,
                                    gp_weight=self.gp_weight, real_scores=s_real, fake_scores=s_fake)
      if self.conditional:
        loss += jnp.mean(auxiliary_classifier_loss(logits=a_real, labels=real_labels))
        loss += jnp.mean(auxiliary_classifier_loss(logits=a_fake, labels=fake_labels))
      return loss, (m["wasserstein_estimate"], m["gradient_penalty"])

    def critic_draw(k):
      k_x, k_rep, k_z, k_gp1, k_gp2 = jax.random.split(k, 5)
      x, y = self.sample_batch(data, k_x, n)
      x_rep, y_rep = self.replay_batch(state.frozen, k_rep, n) if replaying else (None, None)
      z, labels = self._fake_batch(k_z, y, y_rep)
      fakes, _ = self._generate(state.generator.params, state.generator.batch_stats, z, labels,
                                train=True)
      fakes = jax.lax.stop_gradient(fakes)
      return (x, y, k_gp1), (x_rep, y_rep, k_gp2), split_fakes(fakes, labels)

    def critic_loss(c_params, inputs):
      (x, y, k_gp1), (x_rep, y_rep, k_gp2), ((f_real, l_real), (f_rep, l_rep)) = inputs
      loss, (w_dist, gp) = critic_term(c_params, x, y, f_real, l_real, k_gp1)
      if replaying:
        rep_loss, (rep_w, rep_gp) = critic_term(c_params, x_rep, y_rep, f_rep, l_rep, k_gp2)
        loss = r * loss + (1.0 - r) * rep_loss
        w_dist, gp = r * w_dist + (1.0 - r) * rep_w, r * gp + (1.0 - r) * rep_gp
      # Averaged over the critic iterations; replay terms weighted by 1 - r like the loss.
      return loss, (None, {"critic_loss": loss, "wasserstein_estimate": w_dist, "gradient_penalty": gp})

    def generator_draw(k):
      k_x, k_rep, k_z = jax.random.split(k, 3)
      _, y = self.sample_batch(data, k_x, n)
      y_rep = self.replay_batch(state.frozen, k_rep, n)[1] if replaying else None
      return self._fake_batch(k_z, y, y_rep)

    def generator_loss(g_params, inputs, critic):
      z, labels = inputs
      images, new_stats = self._generate(g_params, state.generator.batch_stats, z, labels, train=True)
      scores, logits = self.critic.apply({"params": critic.params}, images)
      per_example = wasserstein_generator_loss(fake_scores=scores)
      if self.conditional:
        per_example += auxiliary_classifier_loss(logits=logits, labels=labels)
      if self.conditional and replaying:
        loss = r * jnp.mean(per_example[:n_local]) + (1.0 - r) * jnp.mean(per_example[n_local:])
      else:
        loss = jnp.mean(per_example)
      return loss, (new_stats, {"generator_loss": loss})

    critic, generator, metrics = wgan_gp_iteration(
        state.critic, state.generator, critic_keys=[keys[i] for i in range(self.n_critic)], generator_key=keys[-1],
        critic_step={"draw": critic_draw, "loss": critic_loss, "update": critic_update_with(self.gan_tx)},
        generator_step={"draw": generator_draw, "loss": generator_loss,
                        "update": generator_update_with(self.gan_tx)},
        reduce=self.cross_device_mean)
    return state.replace(generator=generator, critic=critic), metrics


def make_dgr(config, image_shape, num_classes, parallel=Parallel()) -> DGR:
  """Checks the config's ``dgr`` keys (:func:`check_config`), then builds the method."""
  check_config(config)
  return DGR(config, image_shape, num_classes, parallel)


SPEC = MethodSpec(make=make_dgr, sections=lambda: {"dgr": config_section()}, check=check_config)
