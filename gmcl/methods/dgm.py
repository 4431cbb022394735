"""Dynamic Generative Memory (Ostapenko, Puscas, Klein, Jähnichen & Nabi, CVPR 2019): DGMw and DGMa.

A conditional WGAN-GP whose generator carries HAT masks (:mod:`gmcl.models.dgm_generator`): the
weights a task used are reserved by its binarised mask and frozen by gradient
compensation, and the network grows after each task by what was reserved, so
earlier tasks' generators survive exactly and no snapshot is kept. The critic has
an auxiliary classification head; trained on real data of the current task plus
samples of every past class from the masked generator, it is the classifier A_t
scores on real test data. ``config.dgm.variant``:

* ``dgmw``: weight-level masks (one gate per kernel weight), ngf 6, s_max 1e4,
  sparsity weight 0.08 (MNIST), s annealed within epochs whose maximum rises over
  the task (the official nested schedule);
* ``dgma``: activation-level masks (one gate per unit), ngf 20, s_max 1e5, sparsity
  weight 0.01, s constant within an epoch and rising over the task.

One iteration at task t, as the official code (its DGMw.py ``train``):

1. the real batch of the current task and, for each past task, replayed samples
   (``G(z, c; task tau)`` with that task's binary gates, batch norms and head, in
   evaluation mode) at the same indices, shuffled together and cut into t + 1
   batches: one Adam step of the critic's classification loss on each;
2. one WGAN-GP critic step on the real batch against G_t's samples (lambda_GP 1);
3. one generator step: ``-mean D(G(z)) + lambda_t * sparsity``, where
   ``lambda_t = lamb_G * (sum of widths now) / (sum of initial widths)``, gradients
   compensated (reserved weights frozen; embeddings' cosh correction).

The generator sees its class as a one-hot in z's first K entries; per-task batch
norms and heads (unmasked). The critic (batch norm after its second and third
convolutions, no biases) is re-initialised at every task; Adam(2e-3, 0.5, 0.999)
for both, re-created at every task. At a task's end its gates are binarised
(``e >= 0``), added to the cumulative mask, and the network grows
(``config.dgm.growth``).

Replay: the official code generates, at a task's start, as many samples of every
past class as the current task has real examples, and pairs sample i of each with
real example i. Here sample i of past task tau is drawn on the fly from a noise
vector fixed by (task, tau, i): the same finite pool, paired the same way, without
storing it.

Differences from the official code, each a config value or stated:

* ``dgm.mask_placement``: DGMa's gates act after the ReLU (the paper's and HAT's
  ``a * relu(.)``), which keeps earlier tasks exactly; ``"before_bn"`` is the official
  code's placement (it leaks: see :mod:`gmcl.models.dgm_generator`).
* ``dgm.replay_gates``: replay and sampling use the binary gates ``e >= 0`` (what the
  task reserved); ``"soft"`` uses ``sigmoid(s_max e)`` as the official code.
* The critic's auxiliary head has a row per class from the start, its logits
  restricted to the classes seen: the same function and gradients as the official
  head rebuilt with t + 1 rows at every task (which is re-initialised anyway).
* Real batches are drawn uniformly with replacement (the official loop walks each
  task's data in a fixed order). As in the official code, the configs hold out 15 % of
  each class (``eval.validation_fraction``) and report, beside the A_t after the last step,
  the test A_t at the evaluation of best validation A_t (``scores.A_best_validation``,
  evaluated every 2 or 5 epochs: ``eval.validation_every_steps``; weights not restored).
* Every task runs ``train.generator_steps`` steps in ``dgm.epochs`` epochs of equal length
  (official: 101 full passes over the 85 % training part, 7,300 to 9,100 steps by class;
  default here 9494 = 101 x 94), so that every task ends an epoch at s close to its
  maximum whatever its size.
* MNIST is padded from 28 to 32 pixels (the official code resizes it).
* Replay from the current parameters is the official fixed pool only while earlier tasks
  are exactly preserved (the defaults); with ``mask_placement="before_bn"`` or
  ``replay_gates="soft"`` it can drift within a task, where the official pool is fixed.
* The generator's batch norms start at scale 1 (the official first one draws N(1, 0.02)).
  ``dgm.critic_init``: the critic's initialisation, ``"dcgan"`` the official code's
  (convolutions N(0, 0.02), batch-norm scales N(1, 0.02), the heads torch's default kernels
  with zero biases) or ``"lecun"``, Flax's defaults (the ``cpu`` and ``demo`` schedules', whose
  results were measured with it; it draws the first convolution ten times larger).
* Tasks with several classes (split protocols): each past task replays one batch,
  its classes in turn, through one head per task (the official code appends a head
  per class but indexes them by task, which only works with one class per task).
* The critic pads its 5x5 stride-2 convolutions as Flax's "SAME" (1, 2), torch (2, 2);
  the transposed convolutions use the kernel unflipped (a reparametrisation).
* The re-initialised critic starts each task with fresh batch-norm statistics (the
  official ``weights_init`` redraws the weights but keeps the running statistics, which
  its momentum of 0.1 replaces within a few dozen steps).
* A_t is the DGM code's (``valid()``): the mean over tasks 0..t of each task's accuracy
  (``eval.accuracy_average="tasks"``, the configs' value), so each class weighs alike;
  records made before the key pooled the images (``"examples"``). On per-class MNIST the
  two differ by at most 0.07 points at A_10 in results/' DGM records (last step).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
from flax import struct

from gmcl import optim
from gmcl.checks import require
from gmcl.config import check_image_generator, sequence_length
from gmcl.losses.hat import sparsity_regularizer
from gmcl.models import dgm_generator
from gmcl.data.sampling import TaskArrays
from gmcl.losses.classification import mask_logits, softmax_cross_entropy
from gmcl.losses.gan import wasserstein_generator_loss
from gmcl.losses.mergan import balanced_labels
from gmcl.methods.base import Method, ModelState, Phase
from gmcl.optim import adam
from gmcl.models import DCGANCritic, MLPCritic
from gmcl.models.critics import INITS as CRITIC_INITS
from gmcl.parallel import Parallel
from gmcl.methods.wgan_gp import wgan_gp_critic_loss, wgan_gp_iteration
from gmcl.registry import MethodSpec

VARIANTS = ("dgmw", "dgma")


@struct.dataclass
class DGMState:
  generator: ModelState  # params / batch_stats: see gmcl.models.dgm_generator
  critic: ModelState
  reserved: Any  # list per masked layer: a_{<t}, the binary cumulative mask
  task: jax.Array  # () int32
  step: jax.Array  # () int32: steps taken in this task (the s schedule)
  task_classes: jax.Array  # (max_tasks, K) bool
  active: jax.Array  # (K,) bool: classes seen so far
  key: jax.Array  # the run's init key: critic re-initialisation, growth, replay noise
  frozen: Any = None  # DGM keeps no snapshot: the masks protect earlier tasks


def s_schedule(step, num_steps: int, epochs: int, s_max: float, nested: bool):
  """``(s, s_max_epoch)`` at ``step`` of a task of ``num_steps`` steps cut into ``epochs`` epochs of
  ``ceil(num_steps / epochs)`` steps (the official code's schedules, with its epochs).

  ``s_max_epoch = (s_max - 1/s_max) * epoch / n_epochs + 1/s_max`` rises over the task's
  epochs. ``nested`` (DGMw): within an epoch s runs from 1/s_max_epoch to s_max_epoch
  (at the first epoch that is from s_max down to about 1/s_max, as the official
  formula gives); otherwise (DGMa) s = s_max_epoch for the whole epoch.
  """
  spe = max(math.ceil(num_steps / max(epochs, 1)), 1)
  n_epochs = max(math.ceil(num_steps / spe), 1)
  step = jnp.asarray(step, jnp.float32)
  epoch = jnp.floor(step / spe)
  s_ep = (s_max - 1.0 / s_max) * epoch / n_epochs + 1.0 / s_max
  if not nested:
    return s_ep, s_ep
  frac = (step - epoch * spe) / spe  # the sample offset i / N of the official loop
  return (s_ep - 1.0 / s_ep) * frac + 1.0 / s_ep, s_ep


def config_section() -> ml_collections.ConfigDict:
  """The ``dgm`` section with its defaults (``experiments/configs/dgm.py`` sets each variant's)."""
  s = ml_collections.ConfigDict()  # Dynamic Generative Memory (experiments/configs/dgm.py)
  s.variant = "dgmw"  # dgmw (weight masks) | dgma (activation masks)
  s.architecture = "conv"  # conv (official: 4x4 transposed convolutions) | dense
  s.ngf = 6  # conv widths 4ngf, 2ngf, ngf (official: 6 DGMw, 20 DGMa)
  s.hidden = (64, 128, 256)  # dense widths
  s.s_max = 1e4  # official: 1e4 DGMw, 1e5 DGMa
  s.sparsity = 0.08  # lamb_G (official: 0.08 DGMw MNIST, 0.01 DGMa, 0.001 DGMw SVHN)
  s.epochs = 101  # s-schedule epochs per task: train.generator_steps are cut into this many
  s.s_schedule = "nested"  # nested (DGMw) | epoch (DGMa): see gmcl.methods.dgm.s_schedule
  s.growth = True  # grow by the newly reserved capacity after each task (False: HAT's fixed net)
  s.mask_placement = "after_activation"  # DGMa: after_activation (paper) | before_bn (official code)
  s.replay_gates = "binary"  # binary (e >= 0) | soft (sigmoid(s_max e), official code)
  s.critic = "dcgan"  # dcgan (official, batch norm) | mlp
  s.critic_batch_norm = True
  s.critic_init = "dcgan"  # dcgan (official weights_init) | lecun (Flax's defaults); dcgan critic only
  s.reinit_critic = True
  s.clip_norm = 10000.0  # the generator's gradient-norm clip (official; effectively off)
  s.max_tasks = 10  # rows of the task embeddings
  return s


def check_config(config) -> None:
  from gmcl.data.sources import DATASETS  # pylint: disable=import-outside-toplevel
  g = config.dgm
  require(g.variant in VARIANTS, "dgm.variant", g.variant, "'dgmw' or 'dgma'")
  require(g.architecture in ("conv", "dense"), "dgm.architecture", g.architecture, "'conv' or 'dense'")
  require(g.ngf >= 1, "dgm.ngf", g.ngf, ">= 1")
  require(len(g.hidden) >= 1 and min(g.hidden) >= 1, "dgm.hidden", g.hidden, "one or more positive widths")
  require(g.s_max >= 1, "dgm.s_max", g.s_max, ">= 1")
  require(g.epochs >= 1, "dgm.epochs", g.epochs, ">= 1")
  require(g.sparsity >= 0, "dgm.sparsity", g.sparsity, ">= 0")
  require(g.s_schedule in ("nested", "epoch"), "dgm.s_schedule", g.s_schedule, "'nested' or 'epoch'")
  require(g.mask_placement in ("after_activation", "before_bn"), "dgm.mask_placement",
          g.mask_placement, "'after_activation' or 'before_bn'")
  require(g.replay_gates in ("binary", "soft"), "dgm.replay_gates", g.replay_gates, "'binary' or 'soft'")
  require(g.critic in ("dcgan", "mlp"), "dgm.critic", g.critic, "'dcgan' or 'mlp'")
  require(g.critic_init in CRITIC_INITS, "dgm.critic_init", g.critic_init,
          " or ".join(repr(i) for i in CRITIC_INITS) + " (the dcgan critic's initialisation)")
  require(g.clip_norm > 0, "dgm.clip_norm", g.clip_norm, "> 0")
  n = sequence_length(config)
  require(g.max_tasks >= n, "dgm.max_tasks", g.max_tasks,
          f">= the {n} tasks of the config's sequence (one row of the task embeddings per task)")
  d = config.data
  size = DATASETS[d.dataset].image_shape[0]
  if g.architecture == "conv":
    require((d.pad_to or size) == 32, "data.pad_to", d.pad_to,
            f"32: DGM's conv generator makes 32x32 images (images are {size}); or dgm.architecture='dense'")
  check_image_generator(config)


class DGM(Method):
  """DGMw / DGMa; see the module docstring."""
  name = "dgm"
  has_generator = True
  conditional = True

  def __init__(self, config, image_shape, num_classes, parallel: Parallel = Parallel()):
    if parallel.mode != "none":
      raise ValueError("dgm: parallel.mode must be 'none' (data-parallel DGM is not implemented yet).")
    d, tr, m = config.dgm, config.train, config.model
    self.config, self.parallel, self.d = config, parallel, d
    self.image_shape, self.num_classes = tuple(image_shape), num_classes
    self.batch_size, self.num_steps = tr.batch_size, tr.generator_steps
    if m.z_dim < num_classes:
      raise ValueError(f"dgm: model.z_dim={m.z_dim} must be >= the {num_classes} classes "
                       "(the one-hot label overwrites z's first entries).")
    weight = d.variant == "dgmw"
    widths = tuple(d.hidden) if d.architecture == "dense" else (4 * d.ngf, 2 * d.ngf, d.ngf)
    self.spec = dgm_generator.GeneratorSpec(
        kind="conv" if d.architecture == "conv" else "dense", z_dim=m.z_dim, widths=widths,
        image_shape=self.image_shape, mask="weight" if weight else "activation",
        placement=d.mask_placement, max_tasks=d.max_tasks,
        kernel_init="xavier" if weight else "normal", conv_plan=m.conv_plan)
    self.nested = d.s_schedule == "nested"
    if d.critic == "dcgan":
      self.critic = DCGANCritic(num_classes=num_classes, base_features=m.critic_features,
                                num_layers=m.critic_layers, kernel_size=m.kernel_size,
                                batch_norm=bool(d.critic_batch_norm), conv_plan=m.conv_plan,
                                param_init=d.critic_init)
    else:
      self.critic = MLPCritic(num_classes=num_classes,
                              hidden=(8 * m.critic_features, 4 * m.critic_features))
    self.critic_tx = adam(tr.gan_lr, tr.gan_b1, tr.gan_b2)
    self.gp_weight = tr.gp_weight

  # -- optimisers ----------------------------------------------------------------------------

  def generator_tx(self, params) -> optax.GradientTransformationExtraArgs:
    """Compensation (reserved weights frozen, embeddings' cosh correction), the official
    gradient-norm clip (10000), Adam. Built for a params structure (it grows)."""
    tr = self.config.train
    return optax.chain(optim.hat_compensation(dgm_generator.mask_parameters(params), self.d.s_max),
                       optax.clip_by_global_norm(float(self.d.clip_norm)),
                       optax.adam(tr.gan_lr, b1=tr.gan_b1, b2=tr.gan_b2))

  def _fresh_generator_opt(self, params, reserved):
    keep = jax.tree.map(jnp.ones_like, params)
    keep["kernel"] = dgm_generator.keep_multipliers(self.spec, reserved)
    return optim.with_keep(self.generator_tx(params).init(params), keep)

  def _init_critic(self, key) -> ModelState:
    variables = self.critic.init(key, jnp.zeros((2,) + self.image_shape), train=False)
    params = variables["params"]
    return ModelState(params=params, opt_state=self.critic_tx.init(params),
                      batch_stats=variables.get("batch_stats"))

  # -- state ---------------------------------------------------------------------------------

  def init(self, key) -> DGMState:
    g_params, g_stats = dgm_generator.init_params(self.spec, jax.random.fold_in(key, 0))
    reserved = dgm_generator.empty_reserved(self.spec, g_params)
    return DGMState(
        generator=ModelState(params=g_params, opt_state=self._fresh_generator_opt(g_params, reserved),
                             batch_stats=g_stats),
        critic=self._init_critic(jax.random.fold_in(key, 1)),
        reserved=reserved, task=jnp.zeros((), jnp.int32), step=jnp.zeros((), jnp.int32),
        task_classes=jnp.zeros((self.d.max_tasks, self.num_classes), bool),
        active=jnp.zeros((self.num_classes,), bool), key=key)

  def begin_task(self, state: DGMState, task_index: int, active_classes: np.ndarray) -> DGMState:
    if task_index >= self.d.max_tasks:
      raise ValueError(f"dgm: task {task_index + 1} exceeds dgm.max_tasks={self.d.max_tasks} "
                       "(the rows of the task embeddings); raise dgm.max_tasks.")
    if task_index != dgm_generator.num_tasks_begun(state.generator.params):
      raise ValueError(f"dgm: begin_task({task_index}) after "
                       f"{dgm_generator.num_tasks_begun(state.generator.params)} tasks; tasks run in order.")
    params, stats = dgm_generator.add_task(self.spec, state.generator.params, state.generator.batch_stats,
                                 jax.random.fold_in(state.key, 1000 + task_index))
    generator = ModelState(params=params, opt_state=self._fresh_generator_opt(params, state.reserved),
                           batch_stats=stats)
    critic = self._init_critic(jax.random.fold_in(state.key, 2000 + task_index))
    if task_index > 0 and not self.d.reinit_critic:  # the official code still resets both heads
      heads = ("wgan_head", "aux_head")
      params = {k: (v if k in heads else state.critic.params[k]) for k, v in critic.params.items()}
      critic = ModelState(params=params, opt_state=self.critic_tx.init(params),
                          batch_stats=state.critic.batch_stats)
    active = jnp.asarray(active_classes, bool)
    return state.replace(generator=generator, critic=critic, task=jnp.asarray(task_index, jnp.int32),
                         step=jnp.zeros((), jnp.int32),
                         task_classes=state.task_classes.at[task_index].set(active & ~state.active),
                         active=active)

  def end_task(self, state: DGMState) -> DGMState:
    """Binarises the task's gates into the cumulative mask, then grows the network."""
    params = state.generator.params
    t = dgm_generator.num_tasks_begun(params) - 1
    mask = dgm_generator.task_mask(self.spec, params, t)
    reserved = [jnp.maximum(r, m) for r, m in zip(state.reserved, mask)]
    if self.d.growth:
      params, reserved, _ = dgm_generator.grow(self.spec, params, state.reserved, reserved, t + 1,
                                     jax.random.fold_in(state.key, 3000 + t))
    generator = state.generator.replace(params=params,
                                        opt_state=self._fresh_generator_opt(params, reserved))
    return state.replace(generator=generator, reserved=reserved)

  def phases(self):
    return (Phase("gan", self.num_steps, self.gan_step),)

  @property
  def seeds_share_shapes(self) -> bool:
    return not self.d.growth  # growth's widths depend on the gates each seed learnt

  # -- checkpoints: growth changes shapes, so the template comes from the recorded widths ----

  def checkpoint_meta(self, state: DGMState) -> dict:
    params = state.generator.params
    tasks = dgm_generator.num_tasks_begun(params)
    return {"task_widths": [list(dgm_generator.task_widths(params, t)) for t in range(tasks)],
            "widths": list(dgm_generator.current_widths(params))}

  def state_template(self, key, meta: dict) -> DGMState:
    info = meta.get("method") or {}
    state = self.init(key)
    dummy = np.zeros((self.num_classes,), bool)
    for t, widths in enumerate(info.get("task_widths", [])):
      state = self._resized(state, widths, t)
      state = self.begin_task(state, t, dummy)
    if "widths" in info:
      state = self._resized(state, info["widths"], len(info.get("task_widths", [])))
    return state

  def _resized(self, state: DGMState, widths, finished: int) -> DGMState:
    if tuple(widths) == dgm_generator.current_widths(state.generator.params):
      return state
    params, reserved = dgm_generator.resize(self.spec, state.generator.params, state.reserved, widths,
                                  finished, state.key)
    return state.replace(reserved=reserved, generator=state.generator.replace(
        params=params, opt_state=self._fresh_generator_opt(params, reserved)))

  # -- networks ------------------------------------------------------------------------------

  def _critic(self, params, batch_stats, x, train: bool):
    """(scores, logits, batch_stats): batch statistics in training (and their averages updated)."""
    variables = {"params": params}
    if batch_stats is not None:
      variables["batch_stats"] = batch_stats
      if train:
        (score, logits), upd = self.critic.apply(variables, x, train=True, mutable=["batch_stats"])
        return score, logits, upd["batch_stats"]
    score, logits = self.critic.apply(variables, x, train=False)
    return score, logits, batch_stats

  def _noise(self, key, labels):
    return dgm_generator.noise(key, labels, self.spec.z_dim, self.num_classes)

  def _replay_gates_hard(self) -> bool:
    return self.d.replay_gates == "binary"

  def generate_task(self, params, batch_stats, z, task: int):
    """Images of a finished task: its gates (binary, or sigmoid(s_max e)), eval-mode batch norm."""
    images, _, _ = dgm_generator.generate(self.spec, params, batch_stats, z, task, self.d.s_max,
                                train=False, hard=self._replay_gates_hard())
    return images

  def replay(self, state: DGMState, tau: int, indices: jax.Array):
    """Replayed sample ``indices`` of past task ``tau`` in the current task's pool: noise fixed
    by (current task, tau, index), labels the task's classes in turn. Never differentiated."""
    k = jax.random.fold_in(jax.random.fold_in(state.key, 4000 + state.task), tau)
    z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k, i), (self.spec.z_dim,)))(indices)
    labels = balanced_labels(classes=state.task_classes[tau], num=self.batch_size)
    labels = labels[indices % self.batch_size]
    z = z.at[:, :self.num_classes].set(jax.nn.one_hot(labels, self.num_classes))
    g = state.generator
    images = self.generate_task(jax.lax.stop_gradient(g.params), g.batch_stats, z, tau)
    return jax.lax.stop_gradient(images), labels

  # -- the training iteration ----------------------------------------------------------------

  def schedule(self, state: DGMState):
    return s_schedule(state.step, self.num_steps, int(self.d.epochs), float(self.d.s_max), self.nested)

  def gan_step(self, state: DGMState, data: TaskArrays, key):
    t = dgm_generator.num_tasks_begun(state.generator.params) - 1  # static: read off the structure
    n = self.batch_size
    k_idx, k_perm, k_zd, k_gp, k_zg = jax.random.split(key, 5)
    idx = jax.random.randint(k_idx, (n,), 0, data.count)
    x, y = data.x[idx], data.y[idx]
    s, s_ep = self.schedule(state)

    # 1. the classifier (the critic's auxiliary head and trunk) on real + replayed, t + 1 steps
    xs, ys = [x], [y]
    for tau in range(t):
      x_r, y_r = self.replay(state, tau, idx)
      xs.append(x_r)
      ys.append(y_r)
    perm = jax.random.permutation(k_perm, (t + 1) * n)
    x_all, y_all = jnp.concatenate(xs)[perm], jnp.concatenate(ys)[perm]
    critic = state.critic
    cls_losses = []
    for c in range(t + 1):
      xb, yb = x_all[c * n:(c + 1) * n], y_all[c * n:(c + 1) * n]

      def cls_loss(params, batch_stats=critic.batch_stats, xb=xb, yb=yb):
        _, logits, stats = self._critic(params, batch_stats, xb, train=True)
        return jnp.mean(softmax_cross_entropy(logits=logits, labels=yb, where=state.active)), stats

      (loss, stats), grads = jax.value_and_grad(cls_loss, has_aux=True)(critic.params)
      updates, opt_state = self.critic_tx.update(grads, critic.opt_state, critic.params)
      critic = critic.replace(params=optax.apply_updates(critic.params, updates),
                              opt_state=opt_state, batch_stats=stats)
      cls_losses.append(loss)

    # 2. one WGAN-GP critic step: real data of the current task against G_t's samples; then
    # 3. one generator step: adversarial loss + lambda_t * sparsity, gradients compensated
    # (gmcl.methods.wgan_gp.wgan_gp_iteration, critic first as the official code)
    g = state.generator
    z = self._noise(k_zd, y)
    fake, _, g_stats = dgm_generator.generate(self.spec, g.params, g.batch_stats, z, t, s, train=True)
    fake = jax.lax.stop_gradient(fake)
    lam = dgm_generator.sparsity_weight(float(self.d.sparsity), self.spec, g.params)  # a Python float

    def critic_loss(params, batch_stats):
      real_s, _, st = self._critic(params, batch_stats, x, train=True)
      fake_s, _, st = self._critic(params, st, fake, train=True)
      loss, m, st = wgan_gp_critic_loss(critic_fn=lambda im: self._critic(params, st, im, train=True)[::2],
                                        real=x, fake=fake, key=k_gp, gp_weight=self.gp_weight,
                                        real_scores=real_s, fake_scores=fake_s, has_aux=True)
      return loss, (st, m)

    def critic_update(critic, grads, stats):
      updates, opt_state = self.critic_tx.update(grads, critic.opt_state, critic.params)
      return critic.replace(params=optax.apply_updates(critic.params, updates), opt_state=opt_state,
                            batch_stats=stats)

    def generator_loss(params, z, critic):
      images, gates, stats = dgm_generator.generate(self.spec, params, g_stats, z, t, s, train=True)
      scores, _, c_stats = self._critic(critic.params, critic.batch_stats, images, train=True)
      adv = jnp.mean(wasserstein_generator_loss(fake_scores=scores))
      reg = sparsity_regularizer(gates, state.reserved)  # at t = 0: the mean gate
      return adv + lam * reg, ((stats, c_stats), {"generator_loss": adv + lam * reg,
                                                  "generator_adv_loss": adv, "sparsity": reg})

    def generator_update(generator, critic, grads, stats):
      new_g_stats, c_stats = stats
      tx = self.generator_tx(generator.params)
      updates, opt_state = tx.update(grads, generator.opt_state, generator.params, s=s, s_max=s_ep)
      generator = generator.replace(params=optax.apply_updates(generator.params, updates),
                                    opt_state=opt_state, batch_stats=new_g_stats)
      return generator, critic.replace(batch_stats=c_stats)  # torch's critic, in training mode, updates them too

    critic, generator, metrics = wgan_gp_iteration(
        critic, g, critic_keys=[k_gp], generator_key=k_zg,
        critic_step={"draw": lambda _: critic.batch_stats, "loss": critic_loss, "update": critic_update},
        generator_step={"draw": lambda k: self._noise(k, y), "loss": generator_loss, "update": generator_update})
    metrics = dict(metrics, classifier_loss=jnp.mean(jnp.stack(cls_losses)), s=s)
    return state.replace(generator=generator, critic=critic, step=state.step + 1), metrics

  # -- evaluation and sampling ---------------------------------------------------------------

  def predict(self, state: DGMState, x: jax.Array) -> jax.Array:
    _, logits, _ = self._critic(state.critic.params, state.critic.batch_stats, x, train=False)
    return mask_logits(logits, state.active)

  def sample(self, state: DGMState, key, labels: jax.Array) -> jax.Array:
    """Images of each label's class from the task that learnt it (binary gates, eval mode)."""
    g = state.generator
    z = self._noise(key, labels)
    task_of = jnp.argmax(state.task_classes[:, labels], axis=0)  # (B,)
    out = jnp.zeros((labels.shape[0],) + self.image_shape)
    for tau in range(dgm_generator.num_tasks_begun(g.params)):
      images = self.generate_task(g.params, g.batch_stats, z, tau)
      out = jnp.where((task_of == tau)[:, None, None, None], images, out)
    return out

  def extra_scores(self, state: DGMState, data, sequence, task_index: int, key) -> dict:
    """The generator's size after the task (with growth it has grown for the next one)."""
    del data, sequence, key
    params = state.generator.params
    counts = dgm_generator.parameter_count(params)
    reserved = [float(jnp.mean(r)) for r in state.reserved]
    return {"generator_size": dict(counts, widths=list(dgm_generator.current_widths(params)),
                                   reserved_fraction=reserved)}


def make_dgm(config, image_shape, num_classes, parallel=Parallel()) -> DGM:
  """Checks the config's ``dgm`` keys (:func:`check_config`), then builds the method."""
  check_config(config)
  return DGM(config, image_shape, num_classes, parallel)


SPEC = MethodSpec(make=make_dgm, sections=lambda: {"dgm": config_section()}, check=check_config,
                  added_keys={"dgm.critic_init": "lecun"})
