"""Memory Replay GAN (Wu, Herranz, Liu, Wang, van de Weijer & Raducanu, NeurIPS 2018).

A conditional WGAN-GP AC-GAN learns one task after another. ``variant`` chooses how
it keeps old classes (``config.mergan.variant``):

* ``sft``: sequential fine-tuning, nothing keeps them (the lower bound);
* ``jr``, joint retraining with replay: the frozen G_{t-1} draws samples of every
  past class (the batch split evenly across them) that join the critic's objective
  as real data and the generator's as targets. As in the official code, each past
  class adds one batch mean, so it weighs as much as the current class, and the
  gradient penalty is taken on real data of the current task only;
* ``ra``, replay alignment: the generator's loss gains
  ``lambda * (1 / n_old) * sum_i 0.5 ||G_t(z_i, c_i) - G_{t-1}(z_i, c_i)||^2`` over a
  batch whose classes c_i are split evenly across the n_old past classes (the
  official code's ``RA_FACTOR * sum_c l2_loss / n_old``); only the generator is
  snapshotted;
* ``ewc``, MeRGAN's "EWC" baseline (after Seff et al., 2017): no replay; the generator's loss
  gains ``(lambda / 2) * sum_i F_i (theta_i - theta*_i)^2`` (``mergan.ewc_weight``, MeRGAN's
  1e9). After each task's GAN iterations a ``fisher`` phase averages the squared per-sample
  gradients of the generator's objective (its WGAN and AC-GAN terms, on samples of the task's
  classes, each sample's gradient taken through the whole batch's batch norm) over
  ``mergan.ewc_fisher_samples`` samples; F adds up over tasks and theta* is the latest
  generator (``mergan.ewc_accumulate="online"``), or each task keeps its own penalty
  (``"per_task"``: one quadratic with F = sum_t F_t and theta* = sum_t F_t theta*_t / F).

The official settings (``experiments/configs/mergan.py``): 32x32 images in [-1, 1];
generator z (128) -> linear -> 4x4x128 -> three 5x5 transposed convolutions
(128 -> 64 -> 32 -> C) with class-conditional batch norm whose statistics are the
batch's own (per class), ReLU, tanh; critic three 5x5 stride-2 convolutions (32, 64,
128) with LeakyReLU(0.2) and no normalisation, a WGAN head and an auxiliary head over
all classes; gradient penalty 10; 5 critic steps per generator step; Adam(1e-4, 0, 0.9)
for both, its moments reset at each task; batch 64; the critic's auxiliary loss on
real data (and JR's replays) only, the generator's on its samples; a fake batch has
the labels of the real batch it is compared with.

Known differences from the official code, none of which changes the objective: layers
keep Flax's default initialisers (LeCun normal; the official code uses Glorot-style
uniform ones); each iteration runs its critic steps before its generator step (the
official loop skips the generator at its first iteration: 4000 generator updates per
task against 4001 here); a replay batch of 64 is split across n past classes with the
remainder spread (the official code draws 64 // n per class).

The classifier that A_t scores on real test data (``config.mergan.classifier``):

* ``"replay"`` (default): a separate classifier trained after the GAN on real data of
  the current task plus samples of every past class from the generator
  (``replay_source``: ``"current"`` G_t, just trained to keep them, or ``"previous"``
  G_{t-1}), weighted r = 1/t like DGR's solver;
* ``"auxiliary"``: the critic's auxiliary head (the AC-GAN classifier). With ``ra``
  and ``sft`` it sees only the current task's classes, so it forgets them.

Both are scored after every task, and MeRGAN's own protocol (an oracle classifier
on generated samples, :mod:`gmcl.evaluation.oracle`) next to them: results.json's ``scores``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import ml_collections

from gmcl import evaluation, xla
from gmcl.checks import require
from gmcl.config import check_image_generator, oracle_seed
from gmcl.evaluation import oracle
from gmcl.data.sampling import TaskArrays
from gmcl.losses.classification import mask_logits, softmax_cross_entropy
from gmcl.losses.gan import (auxiliary_classifier_loss, wasserstein_critic_loss,
                             wasserstein_generator_loss)
from gmcl.losses import regularization as reg
from gmcl.losses.mergan import balanced_labels, class_mean_weights, replay_alignment_loss
from gmcl.losses.replay import dgr_solver_objective
from gmcl.methods.base import ModelState, Phase, reset_optimizer
from gmcl.optim import adam
from gmcl.methods.classifier import ClassifierMethod
from gmcl.methods.memory import apply_generator
from gmcl.models import make_gan
from gmcl.methods.wgan_gp import (critic_update_with, generator_update_with, wgan_gp_critic_loss,
                                  wgan_gp_iteration)
from gmcl.registry import MethodSpec
from gmcl.models.classifiers import CLASSIFIERS as ORACLE_CLASSIFIERS
from gmcl.parallel import Parallel

VARIANTS = ("sft", "jr", "ra", "ewc")
CLASSIFIERS = ("replay", "auxiliary")
REPLAY_SOURCES = ("current", "previous")


@struct.dataclass
class MeRGANSnapshot:
  """The frozen generator G_{t-1}: parameter pytrees only, never differentiated."""
  generator_params: Any
  generator_batch_stats: Any  # None with class-conditional batch norm (no running statistics)
  active: jax.Array  # (K,) classes seen up to task t-1


@struct.dataclass
class MeRGANState:
  generator: ModelState
  critic: ModelState
  solver: ModelState  # the "replay" classifier (trained only when config.mergan.classifier says so)
  active: jax.Array  # (K,) bool
  ratio: jax.Array  # () r, the weight of real data in the replay classifier's loss
  frozen: Optional[MeRGANSnapshot] = None
  ewc: Optional[dict] = None  # variant ewc: the Fisher being estimated, F, theta* (None otherwise)


def config_section() -> ml_collections.ConfigDict:
  """The ``mergan`` section with its defaults (MeRGAN's official settings)."""
  s = ml_collections.ConfigDict()
  s.variant = "ra"  # sft | jr (joint retraining with replay) | ra (replay alignment)
  s.ra_weight = 1e-3  # lambda of replay alignment (official: 1e-3 MNIST, 1e-2 SVHN)
  s.ewc_weight = 1e9  # variant ewc: lambda (MeRGAN's setting for its EWC row)
  s.ewc_fisher_samples = 256  # variant ewc: generated samples the Fisher averages over, per task
  s.ewc_accumulate = "online"  # variant ewc: online (F summed, theta* latest) | per_task
  s.classifier = "replay"  # replay (separate classifier on real + generated) | auxiliary
  s.replay_source = "current"  # current (G_t) | previous (G_{t-1}): the replay classifier's
  s.critic_aux_on_fake = False  # official: the critic's AC-GAN loss on real data only
  s.oracle = True  # score generated samples with an oracle classifier (MeRGAN's protocol)
  s.oracle_classifier = "mlp"  # the official MNIST oracle: MLP 1024-512-256-128; "cnn" for SVHN
  s.oracle_hidden = (512, 256, 128)
  s.oracle_steps = 2000
  s.oracle_batch_size = 128
  s.oracle_samples_per_class = 6400  # the official evaluation: 100 batches of 64
  s.oracle_sample_batch = 64
  s.oracle_dir = ""  # "" = $GMCL_CACHE_DIR/oracles or ~/.cache/gmcl/oracles
  return s


def check_config(config) -> None:
  mg = config.mergan
  require(mg.variant in VARIANTS, "mergan.variant", mg.variant, "'sft', 'jr', 'ra' or 'ewc'")
  require(mg.ra_weight >= 0, "mergan.ra_weight", mg.ra_weight, ">= 0")
  require(mg.ewc_weight >= 0, "mergan.ewc_weight", mg.ewc_weight, ">= 0")
  require(isinstance(mg.ewc_fisher_samples, int) and mg.ewc_fisher_samples >= 1, "mergan.ewc_fisher_samples",
          mg.ewc_fisher_samples, "an integer >= 1")
  require(mg.ewc_accumulate in ("online", "per_task"), "mergan.ewc_accumulate", mg.ewc_accumulate,
          "'online' or 'per_task'")
  require(mg.classifier in CLASSIFIERS, "mergan.classifier", mg.classifier, "'replay' or 'auxiliary'")
  require(mg.replay_source in REPLAY_SOURCES, "mergan.replay_source", mg.replay_source,
          "'current' or 'previous'")
  require(mg.oracle_classifier in ORACLE_CLASSIFIERS, "mergan.oracle_classifier", mg.oracle_classifier,
          str(sorted(ORACLE_CLASSIFIERS)))
  for key in ("oracle_steps", "oracle_batch_size", "oracle_samples_per_class", "oracle_sample_batch"):
    require(mg[key] >= 1, f"mergan.{key}", mg[key], ">= 1")
  check_image_generator(config)


class MeRGAN(ClassifierMethod):
  """Memory Replay GAN; see the module docstring."""
  has_generator = True
  conditional = True

  def __init__(self, config, image_shape, num_classes, parallel: Parallel = Parallel()):
    super().__init__(config, image_shape, num_classes, name="mergan", parallel=parallel)
    m, tr, mg = config.model, config.train, config.mergan
    self.variant, self.mg = mg.variant, mg
    self.z_dim = m.z_dim
    self.generator, self.critic = make_gan(
        m.gan, self.image_shape, num_classes, generator_features=m.generator_features,
        critic_features=m.critic_features, critic_layers=m.critic_layers,
        kernel_size=m.kernel_size, output_activation=m.output_activation,
        bn_axis_name=parallel.axis_name, conditioning=m.conditioning,
        conv_plan=m.conv_plan)
    self.gan_tx = adam(tr.gan_lr, tr.gan_b1, tr.gan_b2, tr.weight_decay)
    self.n_critic, self.gp_weight = tr.n_critic, tr.gp_weight
    self.oracle: Optional[oracle.Oracle] = None
    # Compiled once here, not per evaluation: scoring runs after every task.
    self._sample = xla.jit(self.sample, fusions=tr.xla_cpu_fusions)
    self._auxiliary_logits = xla.jit(self.auxiliary_logits, fusions=tr.xla_cpu_fusions)
    self._solver_logits = xla.jit(super().predict, fusions=tr.xla_cpu_fusions)

  # -- state ---------------------------------------------------------------------------------

  def init(self, key) -> MeRGANState:
    k_s, k_g, k_c = jax.random.split(key, 3)
    g_vars = self.generator.init(k_g, jnp.zeros((2, self.z_dim)), jnp.zeros((2,), jnp.int32),
                                 train=False)
    c_params = self.critic.init(k_c, jnp.zeros((2,) + self.image_shape))["params"]
    ewc = None
    if self.variant == "ewc":
      zeros = lambda: jax.tree.map(jnp.zeros_like, g_vars["params"])
      ewc = {"task_fisher": zeros(), "count": jnp.zeros((), jnp.float32), "fisher": zeros(),
             "anchor": jax.tree.map(jnp.copy, g_vars["params"]), "weighted_anchor": zeros()}
    return MeRGANState(
        generator=ModelState(params=g_vars["params"], opt_state=self.gan_tx.init(g_vars["params"]),
                             batch_stats=g_vars.get("batch_stats")),
        critic=ModelState(params=c_params, opt_state=self.gan_tx.init(c_params)),
        solver=self._init_solver(k_s),
        active=jnp.zeros((self.num_classes,), bool),
        ratio=jnp.ones((), jnp.float32), ewc=ewc)

  def begin_task(self, state, task_index, active_classes):
    state = super().begin_task(state, task_index, active_classes)
    state = state.replace(ratio=jnp.asarray(1.0 / (task_index + 1), jnp.float32))
    if self.config.train.reset_optimizers:  # the official code re-initialises Adam at each task
      state = state.replace(generator=reset_optimizer(state.generator, self.gan_tx),
                            critic=reset_optimizer(state.critic, self.gan_tx))
    return state

  def end_task(self, state: MeRGANState) -> MeRGANState:
    """Snapshots G_t; it becomes G_{t-1} of the next task."""
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    if state.ewc is not None:
      state = state.replace(ewc=self._consolidate(state.ewc, state.generator.params))
    return state.replace(frozen=MeRGANSnapshot(
        generator_params=copy(state.generator.params),
        generator_batch_stats=copy(state.generator.batch_stats), active=jnp.copy(state.active)))

  def _consolidate(self, ewc: dict, params) -> dict:
    """EWC's F and theta* after a task (the module docstring)."""
    task = jax.tree.map(lambda f: f / jnp.maximum(ewc["count"], 1.0), ewc["task_fisher"])
    fisher = jax.tree.map(jnp.add, ewc["fisher"], task)
    weighted = ewc["weighted_anchor"]
    if self.mg.ewc_accumulate == "per_task":
      weighted = jax.tree.map(lambda w, ft, p: w + ft * p, weighted, task, params)
      anchor = jax.tree.map(lambda w, f, p: jnp.where(f > 0, w / jnp.where(f > 0, f, 1.0), p),
                            weighted, fisher, params)
    else:
      anchor = jax.tree.map(jnp.copy, params)
    return {"task_fisher": jax.tree.map(jnp.zeros_like, task), "count": jnp.zeros((), jnp.float32),
            "fisher": fisher, "anchor": anchor, "weighted_anchor": weighted}

  def phases(self):
    tr = self.config.train
    out = [Phase("gan", tr.generator_steps, self.gan_step)]
    if self.variant == "ewc":
      out.append(Phase("fisher", -(-int(self.mg.ewc_fisher_samples) // self.batch_size), self.fisher_step))
    if self.mg.classifier == "replay":
      out.append(Phase("solver", tr.solver_steps, self.solver_step))
    return tuple(out)

  # -- generators ----------------------------------------------------------------------------

  def _generate(self, params, batch_stats, z, labels, train=True):
    return apply_generator(self.generator, params, batch_stats, z, labels, train)

  def _generate_frozen(self, frozen: MeRGANSnapshot, z, labels):
    """G_{t-1}(z, c), never differentiated, with batch statistics like G_t's samples it is
    compared with (the official code never uses running averages); running averages, if
    the generator keeps any, are left as they are."""
    images, _ = self._generate(jax.lax.stop_gradient(frozen.generator_params),
                               frozen.generator_batch_stats, z, labels, train=True)
    return jax.lax.stop_gradient(images)

  def _z(self, key, n):
    return self.local(jax.random.normal(key, (n, self.z_dim)))

  def _old_labels(self, frozen: MeRGANSnapshot):
    """The replay batch's labels, split evenly across past classes, and per-example
    weights: ``class_mean_weights`` (JR: a batch mean per class) and ``1 / n_old`` (RA)."""
    y = balanced_labels(classes=frozen.active, num=self.batch_size)
    w_class = class_mean_weights(labels=y, num_classes=self.num_classes)
    n_old = jnp.maximum(jnp.sum(frozen.active.astype(jnp.float32)), 1.0)
    return self.local(y), self.local(w_class), 1.0 / n_old

  def sample(self, state, key, labels):
    z = jax.random.normal(key, (labels.shape[0], self.z_dim))
    images, _ = self._generate(state.generator.params, state.generator.batch_stats, z, labels,
                               train=False)
    return images

  # -- the GAN iteration ---------------------------------------------------------------------

  def gan_step(self, state: MeRGANState, data: TaskArrays, key):
    """One WGAN-GP AC-GAN iteration (:func:`gmcl.methods.wgan_gp.wgan_gp_iteration`): ``n_critic``
    critic updates, then one generator update."""
    n = self.batch_size
    jr = self.variant == "jr" and state.frozen is not None
    ra = self.variant == "ra" and state.frozen is not None
    if jr or ra:
      y_old, w_class, inv_n_old = self._old_labels(state.frozen)
    keys = jax.random.split(key, self.n_critic + 1)
    g = state.generator

    def critic_draw(k):
      k_x, k_z, k_gp, k_r = jax.random.split(k, 4)
      x, y = self.sample_batch(data, k_x, n)
      fake = jax.lax.stop_gradient(self._generate(g.params, g.batch_stats, self._z(k_z, n), y)[0])
      old = new = None
      if jr:
        z_r = self._z(k_r, n)
        old = self._generate_frozen(state.frozen, z_r, y_old)
        new = jax.lax.stop_gradient(self._generate(g.params, g.batch_stats, z_r, y_old)[0])
      return x, y, fake, k_gp, old, new

    def critic_loss(c_params, inputs):
      x, y, fake, k_gp, old, new = inputs
      critic_fn = lambda im: self.critic.apply({"params": c_params}, im)
      s_real, a_real = critic_fn(x)
      s_fake, a_fake = critic_fn(fake)
      loss, m = wgan_gp_critic_loss(critic_fn=lambda im: critic_fn(im)[0], real=x, fake=fake,
                                    epsilon=self.local(jax.random.uniform(k_gp, (n,))),
                                    gp_weight=self.gp_weight, real_scores=s_real, fake_scores=s_fake)
      aux = jnp.mean(auxiliary_classifier_loss(logits=a_real, labels=y))
      if self.mg.critic_aux_on_fake:
        aux += jnp.mean(auxiliary_classifier_loss(logits=a_fake, labels=y))
      loss = loss + aux
      m = dict(m, critic_loss=loss, critic_aux_loss=aux)
      if jr:
        s_new, _ = critic_fn(new)
        s_old, a_old = critic_fn(old)
        per_example = (wasserstein_critic_loss(real_scores=s_old, fake_scores=s_new)
                       + auxiliary_classifier_loss(logits=a_old, labels=y_old))
        jr_loss = self.global_sum(w_class * per_example)
        loss = loss + jr_loss
        m["critic_jr_loss"] = jr_loss
      return loss, (None, m)

    def generator_draw(k):
      k_x, k_z, k_r = jax.random.split(k, 3)
      _, y = self.sample_batch(data, k_x, n)
      z = self._z(k_z, n)
      z_r = old = None
      if jr or ra:
        z_r = self._z(k_r, n)
      if ra:
        old = self._generate_frozen(state.frozen, z_r, y_old)
      return y, z, z_r, old

    def generator_loss(g_params, inputs, critic):
      y, z, z_r, old = inputs
      images, new_stats = self._generate(g_params, g.batch_stats, z, y)
      scores, logits = self.critic.apply({"params": critic.params}, images)
      loss = jnp.mean(wasserstein_generator_loss(fake_scores=scores)
                      + auxiliary_classifier_loss(logits=logits, labels=y))
      m = {"generator_adv_loss": loss}
      if jr or ra:
        new, _ = self._generate(g_params, g.batch_stats, z_r, y_old)
      if jr:
        s_new, a_new = self.critic.apply({"params": critic.params}, new)
        jr_loss = self.global_sum(w_class * (wasserstein_generator_loss(fake_scores=s_new)
                                             + auxiliary_classifier_loss(logits=a_new,
                                                                         labels=y_old)))
        loss, m["generator_jr_loss"] = loss + jr_loss, jr_loss
      if ra:
        align = self._alignment_term(new, old, inv_n_old)
        loss, m["replay_alignment_loss"] = loss + align, align
      if state.ewc is not None:
        penalty = self.ewc_penalty(g_params, state.ewc)
        loss, m["ewc_penalty"] = loss + penalty, penalty
      return loss, (new_stats, dict(m, generator_loss=loss))

    critic, generator, metrics = wgan_gp_iteration(
        state.critic, g, critic_keys=[keys[i] for i in range(self.n_critic)], generator_key=keys[-1],
        critic_step={"draw": critic_draw, "loss": critic_loss, "update": critic_update_with(self.gan_tx)},
        generator_step={"draw": generator_draw, "loss": generator_loss,
                        "update": generator_update_with(self.gan_tx)},
        reduce=self.cross_device_mean)
    return state.replace(generator=generator, critic=critic), metrics

  def ewc_penalty(self, generator_params, ewc: dict) -> jax.Array:
    """``(lambda / 2) * sum_i F_i (theta_i - theta*_i)^2`` (zero before the first task ends: F = 0)."""
    return reg.quadratic_penalty(generator_params, ewc["anchor"], ewc["fisher"], 0.5 * self.mg.ewc_weight)

  def fisher_step(self, state: MeRGANState, data: TaskArrays, key):
    """One batch of the EWC Fisher: the squared gradient of each sample's generator objective
    (WGAN + AC-GAN terms against the current critic; the batch's batch norm as in training)."""
    k_x, k_z = jax.random.split(key)
    _, y = self.sample_batch(data, k_x, self.batch_size)
    z = self._z(k_z, self.batch_size)
    g, critic_params = state.generator, state.critic.params

    def per_sample(params):
      images, _ = self._generate(params, g.batch_stats, z, y)
      scores, logits = self.critic.apply({"params": critic_params}, images)
      return wasserstein_generator_loss(fake_scores=scores) + auxiliary_classifier_loss(logits=logits, labels=y)

    jacobian = jax.jacrev(per_sample)(g.params)  # each leaf (B, *shape): every sample's gradient
    sq = self.cross_device_mean(jax.tree.map(lambda j: jnp.sum(jnp.square(j), axis=0), jacobian))
    n = float(self.batch_size)
    if self.parallel.mode == "pmap":  # the mean over devices of local sums: times devices
      sq = jax.tree.map(lambda v: v * self.parallel.num_devices, sq)
    ewc = dict(state.ewc, task_fisher=jax.tree.map(jnp.add, state.ewc["task_fisher"], sq),
               count=state.ewc["count"] + n)
    return state.replace(ewc=ewc), {"fisher_mean": sum(jnp.mean(v) for v in jax.tree.leaves(sq)) / n}

  def alignment_objective(self, generator_params, state: MeRGANState, key) -> jax.Array:
    """RA's term of the generator loss alone (for tests and analysis): lambda/n_old *
    sum_i 0.5||G(z_i, c_i) - G_{t-1}(z_i, c_i)||^2 on a balanced batch of past classes."""
    y_old, _, inv_n_old = self._old_labels(state.frozen)
    z = self._z(key, self.batch_size)
    new, _ = self._generate(generator_params, state.generator.batch_stats, z, y_old)
    old = self._generate_frozen(state.frozen, z, y_old)
    return self._alignment_term(new, old, inv_n_old)

  def _alignment_term(self, new, old, inv_n_old):
    """lambda / n_old * sum over the global batch of 0.5 ||G_t(z, c) - G_{t-1}(z, c)||^2."""
    return self.mg.ra_weight * inv_n_old * self.global_sum(
        replay_alignment_loss(new_images=new, old_images=old))

  # -- the replay classifier -----------------------------------------------------------------

  def replay_objective(self, params, state: MeRGANState, real_losses, key, data=None):
    del data
    if state.frozen is None:  # first task: no past class to replay (static)
      return jnp.mean(real_losses), {}
    k_z, = jax.random.split(key, 1)
    y_rep = self.local(balanced_labels(classes=state.frozen.active, num=self.batch_size))
    z = self._z(k_z, self.batch_size)
    if self.mg.replay_source == "current":
      g = state.generator
      x_rep = jax.lax.stop_gradient(self._generate(g.params, g.batch_stats, z, y_rep,
                                                   train=g.batch_stats is None)[0])
    else:
      x_rep = self._generate_frozen(state.frozen, z, y_rep)
    logits = self.classifier.apply({"params": params}, x_rep)
    rep = softmax_cross_entropy(logits=logits, labels=y_rep, where=state.active)
    loss = dgr_solver_objective(real_losses=real_losses, replay_losses=rep, ratio=state.ratio)
    return loss, {"solver_replay_loss": jnp.mean(rep)}

  # -- prediction and scores -----------------------------------------------------------------

  def auxiliary_logits(self, state: MeRGANState, x: jax.Array) -> jax.Array:
    return mask_logits(self.critic.apply({"params": state.critic.params}, x)[1], state.active)

  def predict(self, state: MeRGANState, x: jax.Array) -> jax.Array:
    if self.mg.classifier == "auxiliary":
      return self.auxiliary_logits(state, x)
    return super().predict(state, x)

  def setup(self, data, log=print) -> None:
    """Loads (or trains once and caches) the oracle classifier of MeRGAN's protocol."""
    if not self.mg.oracle or self.oracle is not None:
      return
    d = self.config.data
    settings = oracle.OracleSettings(
        dataset=d.dataset, pad_to=int(d.pad_to), value_range=tuple(float(v) for v in d.value_range),
        architecture=self.mg.oracle_classifier, hidden=tuple(self.mg.oracle_hidden),
        steps=int(self.mg.oracle_steps),
        batch_size=int(self.mg.oracle_batch_size), seed=oracle_seed(self.config),
        data_fingerprint=oracle.fingerprint(data.x_train, data.y_train))
    self.oracle = oracle.load_or_train(settings, data.x_train, data.y_train, data.x_test,
                                       data.y_test, self.num_classes,
                                       cache_dir=self.mg.oracle_dir or None, log=log)

  def extra_scores(self, state, data, sequence, task_index, key):
    """Both protocols, labelled: A_t of the auxiliary head and of the replay classifier on
    real test images, and MeRGAN's oracle accuracy on generated samples of seen classes."""
    out = {}
    aux = self._auxiliary_logits
    average = self.config.eval.get("accuracy_average", "examples")
    out["A_auxiliary_head"] = evaluation.evaluate_after_task(
        lambda xb: aux(state, xb), data.x_test, data.y_test, sequence, task_index,
        self.config.eval.batch_size, average=average)["A"]
    if self.mg.classifier == "replay":
      solver = self._solver_logits
      out["A_replay_classifier"] = evaluation.evaluate_after_task(
          lambda xb: solver(state, xb), data.x_test, data.y_test, sequence, task_index,
          self.config.eval.batch_size, average=average)["A"]
    if self.oracle is not None:
      predict = self.oracle.predict
      per_class = oracle.generated_accuracy(
          lambda k, labels: self._sample(state, k, labels), predict,
          sequence.seen_classes(task_index), key,
          samples_per_class=int(self.mg.oracle_samples_per_class),
          batch_size=int(self.mg.oracle_sample_batch))
      out["A_oracle"] = float(np.mean(list(per_class.values())))
      out["oracle_per_class"] = {str(c): v for c, v in per_class.items()}
      out["oracle_test_accuracy"] = self.oracle.test_accuracy
    return out


def make_mergan(config, image_shape, num_classes, parallel=Parallel()) -> MeRGAN:
  """Checks the config's ``mergan`` keys (:func:`check_config`), then builds the method."""
  check_config(config)
  return MeRGAN(config, image_shape, num_classes, parallel)


SPEC = MethodSpec(make=make_mergan, sections=lambda: {"mergan": config_section()}, check=check_config,
                  added_keys={"mergan.ewc_weight": 1e9, "mergan.ewc_fisher_samples": 256,
                              "mergan.ewc_accumulate": "online"})  # read by variant ewc only
