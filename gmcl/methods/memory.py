"""The generative memory of Deep Generative Replay (Shin et al. 2017), as a component.

A :class:`GenerativeMemory` is a generator G with its WGAN-GP critic (an AC-GAN when
``model.conditional``): its live state (:class:`MemoryState`), the frozen snapshot G_{t-1}
(:class:`MemorySnapshot`) that the next task replays, and the public replay draw
:meth:`GenerativeMemory.replay_batch`. DGR, ogm (``ogm.memory = "generator"``) and lsa
(``lsa.replay = "generator"``) *contain* one: each keeps the memory's live state in its own
state and the snapshot inside its ``frozen`` snapshot, and calls the memory's pure functions.

Training (:meth:`GenerativeMemory.train_step`, one WGAN-GP iteration of
:func:`gmcl.methods.wgan_gp.wgan_gp_iteration`) learns the mixture ``r * D_t + (1 - r) * G_{t-1}``:
the critic sees real current data with weight r and G_{t-1}'s samples with weight 1 - r, as the
reference PyTorch code of DGR does; r is :attr:`MemoryState.ratio` (``dgr.replay_ratio``:
"balanced" is 1/t). The settings are DGR's: ``model.*`` (the GAN), ``train.gan_lr``, ``gan_b1``,
``gan_b2``, ``weight_decay``, ``n_critic``, ``gp_weight``, ``batch_size`` and
``train.reset_optimizers`` (the GAN's Adam states reset at each task's start).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import struct

from gmcl.data.sampling import TaskArrays
from gmcl.losses.gan import auxiliary_classifier_loss, wasserstein_generator_loss
from gmcl.methods.base import DataParallel, ModelState, reset_optimizer
from gmcl.methods.wgan_gp import (critic_update_with, generator_update_with, wgan_gp_critic_loss,
                                  wgan_gp_iteration)
from gmcl.models import make_gan
from gmcl.optim import adam
from gmcl.parallel import Parallel


@struct.dataclass
class MemoryState:
  """The live generative memory: G_t and its critic (each with its Adam state), and r."""
  generator: ModelState
  critic: ModelState
  ratio: jax.Array  # () float32: r, the weight of real data in this task's mixture


@struct.dataclass
class MemorySnapshot:
  """G_{t-1}, frozen at the end of a task: parameter pytrees only, never differentiated."""
  generator_params: Any
  generator_batch_stats: Any
  active: jax.Array  # (K,) classes seen up to task t-1: a conditional replay draws from them


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
  """``dgr.replay_ratio``: ``"balanced"`` -> None (r = 1/t); a number in [0, 1] -> that number."""
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


class GenerativeMemory(DataParallel):
  """DGR's generative memory (module docstring), built from an experiment config.

  Attributes:
    conditional: whether G is an AC-GAN generator (``model.conditional``): a replay draw then
      labels its samples with classes drawn uniformly from those the snapshot has seen.
    critic_aux_on_fake: ``dgr.critic_aux_on_fake``: whether the critic's class head also learns
      G_t's samples under their requested labels (the original AC-GAN) or, by default, only the
      real images and G_{t-1}'s replays (MeRGAN's official code).
    generator, critic: the flax modules; ``gan_tx`` their Adam.
  """

  def __init__(self, config, image_shape, num_classes: int, parallel: Parallel = Parallel()):
    m, tr = config.model, config.train
    self.config, self.parallel = config, parallel
    self.image_shape, self.num_classes = tuple(image_shape), int(num_classes)
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
    self.batch_size = tr.batch_size
    self.reset_optimizers = bool(tr.reset_optimizers)
    self.fixed_ratio = parse_replay_ratio(config.dgr.replay_ratio)
    self.critic_aux_on_fake = bool(config.dgr.critic_aux_on_fake)

  # -- state ---------------------------------------------------------------------------------

  def init(self, generator_key, critic_key) -> MemoryState:
    """G and its critic initialised from their own keys (DGR splits its key three ways: the
    solver's, then these two), r = 1."""
    z = jnp.zeros((2, self.z_dim))
    labels = jnp.zeros((2,), jnp.int32) if self.conditional else None
    g_vars = self.generator.init(generator_key, z, labels, train=False)
    c_params = self.critic.init(critic_key, jnp.zeros((2,) + self.image_shape))["params"]
    return MemoryState(
        generator=ModelState(params=g_vars["params"], opt_state=self.gan_tx.init(g_vars["params"]),
                             batch_stats=g_vars.get("batch_stats")),
        critic=ModelState(params=c_params, opt_state=self.gan_tx.init(c_params)),
        ratio=jnp.ones((), jnp.float32))

  def begin_task(self, memory: MemoryState, task_index: int) -> MemoryState:
    """r for task ``task_index`` (1/t when balanced) and, with ``train.reset_optimizers``,
    fresh Adam states for G and the critic."""
    r = 1.0 / (task_index + 1) if self.fixed_ratio is None else self.fixed_ratio
    memory = memory.replace(ratio=jnp.asarray(r, jnp.float32))
    if self.reset_optimizers:
      memory = memory.replace(generator=reset_optimizer(memory.generator, self.gan_tx),
                              critic=reset_optimizer(memory.critic, self.gan_tx))
    return memory

  def snapshot(self, memory: MemoryState, active: jax.Array) -> MemorySnapshot:
    """G_t frozen (copies), with the classes seen so far: the next task's G_{t-1}."""
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    return MemorySnapshot(generator_params=copy(memory.generator.params),
                          generator_batch_stats=copy(memory.generator.batch_stats),
                          active=jnp.copy(active))

  # -- sampling ------------------------------------------------------------------------------

  def generate(self, params, batch_stats, z, labels, train: bool):
    """``(images, batch_stats)`` of G with the given parameters (:func:`apply_generator`)."""
    return apply_generator(self.generator, params, batch_stats, z, labels, train)

  def replay_batch(self, snapshot: MemorySnapshot, key, n: int):
    """The replay draw: ``(x', y')`` with x' ~ G_{t-1} (eval mode, never differentiated) and,
    when conditional, y' drawn uniformly from the classes seen before (else None).

    ``n`` is the global batch size; under pmap each device generates its rows only.
    """
    k_z, k_y = jax.random.split(key)
    z = self.local(jax.random.normal(k_z, (n, self.z_dim)))
    labels = None
    if self.conditional:
      labels = self.local(jax.random.categorical(k_y, jnp.where(snapshot.active, 0.0, -jnp.inf),
                                                 shape=(n,)))
    images, _ = self.generate(jax.lax.stop_gradient(snapshot.generator_params),
                              snapshot.generator_batch_stats, z, labels, train=False)
    return jax.lax.stop_gradient(images), labels

  def sample(self, memory: MemoryState, key, labels):
    """Images from the live G (eval mode); ``labels`` are used when conditional."""
    z = jax.random.normal(key, (labels.shape[0], self.z_dim))
    images, _ = self.generate(memory.generator.params, memory.generator.batch_stats, z,
                              labels if self.conditional else None, train=False)
    return images

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

  # -- training ------------------------------------------------------------------------------

  def train_step(self, memory: MemoryState, snapshot: Optional[MemorySnapshot],
                 data: TaskArrays, key) -> tuple[MemoryState, dict]:
    """One WGAN-GP iteration on ``r * D_t + (1 - r) * G_{t-1}``: ``n_critic`` critic updates,
    then one generator update (:func:`gmcl.methods.wgan_gp.wgan_gp_iteration`). Without a
    snapshot (the first task) it learns D_t alone."""
    n, replaying = self.batch_size, snapshot is not None
    n_local = self.local_size(n)
    r = memory.ratio if replaying else 1.0
    keys = jax.random.split(key, self.n_critic + 1)
    g_state = memory.generator

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
        if self.critic_aux_on_fake:
          loss += jnp.mean(auxiliary_classifier_loss(logits=a_fake, labels=fake_labels))
      return loss, (m["wasserstein_estimate"], m["gradient_penalty"])

    def critic_draw(k):
      k_x, k_rep, k_z, k_gp1, k_gp2 = jax.random.split(k, 5)
      x, y = self.sample_batch(data, k_x, n)
      x_rep, y_rep = self.replay_batch(snapshot, k_rep, n) if replaying else (None, None)
      z, labels = self._fake_batch(k_z, y, y_rep)
      fakes, _ = self.generate(g_state.params, g_state.batch_stats, z, labels, train=True)
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
      y_rep = self.replay_batch(snapshot, k_rep, n)[1] if replaying else None
      return self._fake_batch(k_z, y, y_rep)

    def generator_loss(g_params, inputs, critic):
      z, labels = inputs
      images, new_stats = self.generate(g_params, g_state.batch_stats, z, labels, train=True)
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
        memory.critic, g_state, critic_keys=[keys[i] for i in range(self.n_critic)], generator_key=keys[-1],
        critic_step={"draw": critic_draw, "loss": critic_loss, "update": critic_update_with(self.gan_tx)},
        generator_step={"draw": generator_draw, "loss": generator_loss,
                        "update": generator_update_with(self.gan_tx)},
        reduce=self.cross_device_mean)
    return memory.replace(generator=generator, critic=critic), metrics


__all__ = ["GenerativeMemory", "MemorySnapshot", "MemoryState", "apply_generator", "parse_replay_ratio"]
