"""Latent generative memory (``lgm``): replay in the classifier's feature space.

The seed author's proposal (no public code). The classifier is h(f(x)); a conditional
generator G lives in the feature space Z = f(X) at the split point, so it produces
features of seen classes, not images, and the generator and the classifier train
jointly, step by step, with no separate distillation phase:

* task 1 trains normally: h(f(x)) on real data, and G (a conditional WGAN-GP in Z,
  :class:`gmcl.models.latent.LatentGenerator` and :class:`LatentCritic`) on the real
  features f(x) of the task's classes;
* task t > 1: every step draws fake memories ``phi ~ G_{t-1}(z, c)`` of earlier classes c
  and trains the head on ``r * CE(h(f(x)), y) + (1 - r) * CE(h(phi), c)``, r = (classes of
  this task) / (classes seen), as DGR's balanced ratio. The encoder learns from the real
  term only (fake features do not depend on it). Permuted MNIST (every task has every
  class): the memories cover all classes, r = 1/t, and "the task's classes" are all of them.

Two open questions of the slides, each a config option:

**Q1, how does G keep old classes without distillation?** ``lgm.protection``:

* ``"ra"``: replay alignment on the latent generator, MeRGAN's
  ``lambda * E_{z, c ~ U(old)} 0.5 ||G_t(z, c) - G_{t-1}(z, c)||^2`` (the distillation
  baseline; ``lgm.ra_weight`` = lambda);
* ``"hat"``: DGM-style HAT masks on the latent generator (:mod:`gmcl.models.dgm_generator`'s dense
  generator: a task embedding per layer, per-task batch norm and head, weights reserved
  by earlier tasks frozen by gradient compensation, HAT's sparsity regulariser
  ``lgm.sparsity``, s annealed per epoch to ``lgm.s_max``); old classes are generated with
  their task's binary gates. No snapshot of G and no distillation. The network does not
  grow (HAT's fixed capacity).

**Q2, what if the encoder moves the feature manifold, so old memories no longer match
real features?** ``lgm.encoder``:

* ``"train"``: the encoder keeps learning (no protection; the drift is measured);
* ``"frozen"``: the encoder is trained in task 1 only, then fixed (only h and G learn);
* ``"prototype"``: class prototypes (feature means, computed at the end of each class's
  task over ``lgm.prototype_steps`` batches of its data with the final encoder) join the
  fake memories as labelled examples of their classes, and the encoder pays a drift
  penalty ``beta * E_x ||f_t(x) - f_{t-1}(x)||^2`` (``lgm.drift_weight``). No image of
  an old class exists, so the penalty is measured on current inputs;
* ``"bridge"``: a bridge ``b_t: Z_{t-1} -> Z_t`` (:class:`gmcl.models.latent.Bridge`,
  identity at the start of each task) trains alongside on ``||b_t(f_{t-1}(x)) - f_t(x)||^2``
  over current inputs, and old memories reach the head (and, with ``ra``, G_t's alignment
  target) through it: ``phi = b_t(G_{t-1}(z, c))``. The direction is old -> new because the
  memories are in the old space and the head and G_t live in the new one; latent space
  alignment (``lsa``) uses new -> old bridges because there each old head stays in its own
  space. With ``hat`` masks, a memory of task tau passes the bridges tau+1 .. t.

In every case the drift is measured after each task (``extra_scores``): ``drift`` =
``E ||f_t(x) - f_{t-1}(x)||^2 / E ||f_{t-1}(x)||^2`` on held-out images of classes seen
before task t (after the bridge, ``bridged_drift``, with ``bridge``); ``memory_gap`` = the
mean over seen classes of ``||mean G(c) - mean f_t(x_c)|| / ||mean f_t(x_c)||`` on held-out
images (how far the memory the next task will replay is from the real features), and
``memory_accuracy`` = the head's accuracy on generated features of seen classes.

Settings (``experiments/configs/lgm.py``): the MLP classifier (400, 400) of DGR's solver,
G 32+K -> 256 -> 256 -> 400 (ReLU output, like the encoder's), critic 400+K -> 256 -> 256 -> 1,
WGAN-GP (lambda 10, 5 critic steps, Adam(1e-4, 0.5, 0.9)), ``lgm.gan_iterations`` GAN
iterations per classifier step.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
from flax import struct

from gmcl import optim
from gmcl.losses.hat import sparsity_regularizer
from gmcl.models import dgm_generator
from gmcl.models import hat
from gmcl.checks import require
from gmcl.data.sampling import TaskArrays
from gmcl.losses.alignment import alignment_loss, relative_drift
from gmcl.losses.classification import mask_logits, softmax_cross_entropy
from gmcl.losses.gan import wasserstein_generator_loss
from gmcl.losses.mergan import balanced_labels
from gmcl.methods.base import Method, ModelState, Phase, apply_gradients, check_batch_divides, reset_optimizer
from gmcl.optim import adam
from gmcl.models.classifiers import make_classifier
from gmcl.models.latent import BRIDGES, Bridge, LatentCritic, LatentGenerator
from gmcl.methods import hat as hat_method
from gmcl.parallel import Parallel
from gmcl.methods.wgan_gp import critic_update_with, wgan_gp_critic_loss, wgan_gp_iteration
from gmcl.registry import MethodSpec

PROTECTIONS = ("ra", "hat")
ENCODERS = ("train", "frozen", "prototype", "bridge")
HAT_MASKS = ("weight", "activation")



def config_section() -> ml_collections.ConfigDict:
  """The ``lgm`` section with its defaults."""
  s = ml_collections.ConfigDict()  # latent generative memory: a conditional GAN in f's feature space
  s.protection = "ra"  # Q1, how G keeps old classes: ra (replay alignment) | hat (DGM-style masks)
  s.encoder = "train"  # Q2, the encoder after task 1: train | frozen | prototype | bridge
  s.ra_weight = 1.0  # lambda of replay alignment on generated features
  s.drift_weight = 1.0  # prototype: beta of the encoder's drift penalty
  s.bridge = "linear"  # bridge (old -> new feature space): linear | mlp
  s.bridge_hidden = 256
  s.z_dim = 32
  s.generator_hidden = (256, 256)
  s.critic_hidden = (256, 256)
  s.gan_iterations = 1  # WGAN-GP iterations (n_critic critic + 1 generator update) per step
  s.hat_mask = "weight"  # protection=hat: weight (DGMw) | activation (DGMa) masks
  s.s_max = 400.0  # protection=hat
  s.sparsity = 0.75  # protection=hat: c of HAT's sparsity regulariser
  s.prototype_steps = 100  # encoder=prototype: batches of a task's data averaged into its prototypes
  s.drift_eval_limit = 2000  # held-out images of old classes for the drift score
  return s


def check_config(config) -> None:
  """Validates ``config.lgm``; raises ValueError naming the key and the valid values."""
  g = config.lgm
  require(g.protection in PROTECTIONS, "lgm.protection", g.protection, str(list(PROTECTIONS)))
  require(g.encoder in ENCODERS, "lgm.encoder", g.encoder, str(list(ENCODERS)))
  require(g.bridge in BRIDGES, "lgm.bridge", g.bridge, str(list(BRIDGES)))
  require(g.hat_mask in HAT_MASKS, "lgm.hat_mask", g.hat_mask, str(list(HAT_MASKS)))
  for key in ("ra_weight", "drift_weight", "sparsity"):
    require(g[key] >= 0, f"lgm.{key}", g[key], ">= 0")
  for key in ("z_dim", "bridge_hidden", "gan_iterations", "prototype_steps", "drift_eval_limit"):
    require(g[key] >= 1, f"lgm.{key}", g[key], ">= 1")
  for key in ("generator_hidden", "critic_hidden"):
    require(len(g[key]) >= 1 and min(g[key]) >= 1, f"lgm.{key}", g[key], "one or more positive widths")
  require(g.s_max >= 1, "lgm.s_max", g.s_max, ">= 1")
  hat_method.check_config(config)  # its masks' rows: hat.max_tasks


@struct.dataclass
class LGMSnapshot:
  """The frozen models of task t-1 (never differentiated, never donated)."""
  solver_params: Any  # h_{t-1}(f_{t-1})
  generator_params: Any  # G_{t-1} (protection "ra"; None with "hat": the masks keep old tasks)
  prior_solver_params: Any  # the classifier of task t-2 (task 1: its own), for the drift score
  active: jax.Array  # (K,) classes seen up to task t-1


@struct.dataclass
class LGMState:
  solver: ModelState  # {"encoder", "head"}
  generator: ModelState
  critic: ModelState
  bridge: Optional[ModelState]  # encoder "bridge": b_t, trained during task t
  bridges: Any  # encoder "bridge": finished bridges stacked (max_tasks, ...); b_tau at row tau
  reserved: Any  # protection "hat": the binary cumulative mask per layer
  proto_sum: jax.Array  # (K, D) feature sums per class (encoder "prototype")
  proto_count: jax.Array  # (K,)
  task_classes: jax.Array  # (max_tasks, K) bool
  active: jax.Array  # (K,) bool: classes seen so far
  current: jax.Array  # (K,) bool: this task's classes
  ratio: jax.Array  # () float32: r, the weight of real data in the head's loss
  task: jax.Array  # () int32
  step: jax.Array  # () int32: joint steps in this task (HAT's s schedule)
  key: jax.Array  # the run's init key: per-task heads and bridges are drawn from it
  frozen: Optional[LGMSnapshot] = None


class LGM(Method):
  """Latent generative memory; see the module docstring."""
  name = "lgm"
  has_generator = False  # it generates features, not images: no sample grid

  def __init__(self, config, image_shape, num_classes, parallel: Parallel = Parallel()):
    if parallel.mode == "pmap":  # jit over a mesh needs nothing of the steps: XLA partitions them
      raise ValueError("lgm: parallel.mode='pmap' is not implemented; use parallel.mode='jit' "
                       "(data-parallel over a device mesh) or 'none'.")
    check_batch_divides(config.train.batch_size, parallel)
    self.config, self.parallel = config, parallel
    self.image_shape, self.num_classes = tuple(image_shape), num_classes
    m, tr, g = config.model, config.train, config.lgm
    self.g = g
    kwargs = {"hidden": tuple(m.classifier_hidden)} if m.classifier == "mlp" else {"conv_plan": m.conv_plan}
    self.classifier = make_classifier(m.classifier, num_classes, **kwargs)
    self.feature_dim = self._feature_dim()
    self.batch_size, self.n_critic, self.gp_weight = tr.batch_size, tr.n_critic, tr.gp_weight
    self.solver_tx = adam(tr.solver_lr, tr.solver_b1, tr.solver_b2, tr.weight_decay)
    self.gan_tx = adam(tr.gan_lr, tr.gan_b1, tr.gan_b2)
    self.bridge_tx = adam(tr.solver_lr, tr.solver_b1, tr.solver_b2)  # no weight decay: it starts at the identity
    self.max_tasks = int(config.hat.max_tasks)
    self.critic = LatentCritic(num_classes=num_classes, hidden=tuple(g.critic_hidden))
    self.bridge_net = Bridge(self.feature_dim, g.bridge, int(g.bridge_hidden))
    if g.protection == "ra":
      self.generator = LatentGenerator(self.feature_dim, num_classes, tuple(g.generator_hidden))
    else:
      self.spec = dgm_generator.GeneratorSpec(kind="dense", z_dim=num_classes + int(g.z_dim),
                                    widths=tuple(g.generator_hidden), image_shape=(self.feature_dim,),
                                    mask=g.hat_mask, max_tasks=self.max_tasks, output="relu")

  def _feature_dim(self) -> int:
    out = jax.eval_shape(lambda: self.classifier.apply(
        self.classifier.init(jax.random.PRNGKey(0), jnp.zeros((1,) + self.image_shape)),
        jnp.zeros((1,) + self.image_shape), method=self.classifier.encode))
    return int(out.shape[-1])

  # -- optimisers ----------------------------------------------------------------------------

  def _hat_tx(self, params):
    return optax.chain(optim.hat_compensation(dgm_generator.mask_parameters(params), float(self.g.s_max)),
                       optax.adam(self.config.train.gan_lr, b1=self.config.train.gan_b1,
                                  b2=self.config.train.gan_b2))

  def _hat_opt(self, params, reserved):
    keep = jax.tree.map(jnp.ones_like, params)
    keep["kernel"] = dgm_generator.keep_multipliers(self.spec, reserved)
    return optim.with_keep(self._hat_tx(params).init(params), keep)

  # -- state ---------------------------------------------------------------------------------

  def _fresh_bridge(self, key) -> ModelState:
    params = self.bridge_net.init(key, jnp.zeros((1, self.feature_dim)))["params"]
    return ModelState(params=params, opt_state=self.bridge_tx.init(params))

  def init(self, key) -> LGMState:
    k_s, k_g, k_c, k_b = jax.random.split(key, 4)
    s_params = self.classifier.init(k_s, jnp.zeros((1,) + self.image_shape))["params"]
    labels = jnp.zeros((2,), jnp.int32)
    if self.g.protection == "ra":
      g_params = self.generator.init(k_g, jnp.zeros((2, self.g.z_dim)), labels)["params"]
      generator, reserved = ModelState(params=g_params, opt_state=self.gan_tx.init(g_params)), None
    else:
      g_params, g_stats = dgm_generator.init_params(self.spec, k_g)
      reserved = dgm_generator.empty_reserved(self.spec, g_params)
      generator = ModelState(params=g_params, opt_state=self._hat_opt(g_params, reserved),
                             batch_stats=g_stats)
    c_params = self.critic.init(k_c, jnp.zeros((2, self.feature_dim)), labels)["params"]
    bridge = bridges = None
    if self.g.encoder == "bridge":
      bridge = self._fresh_bridge(k_b)
      bridges = jax.tree.map(lambda p: jnp.stack([p] * self.max_tasks), bridge.params)
    k = self.num_classes
    return LGMState(
        solver=ModelState(params=s_params, opt_state=self.solver_tx.init(s_params)),
        generator=generator, critic=ModelState(params=c_params, opt_state=self.gan_tx.init(c_params)),
        bridge=bridge, bridges=bridges, reserved=reserved,
        proto_sum=jnp.zeros((k, self.feature_dim)), proto_count=jnp.zeros((k,)),
        task_classes=jnp.zeros((self.max_tasks, k), bool), active=jnp.zeros((k,), bool),
        current=jnp.zeros((k,), bool), ratio=jnp.ones((), jnp.float32), task=jnp.zeros((), jnp.int32),
        step=jnp.zeros((), jnp.int32), key=key)

  def begin_task(self, state: LGMState, task_index: int, active_classes: np.ndarray) -> LGMState:
    if task_index >= self.max_tasks:
      raise ValueError(f"lgm: task {task_index + 1} exceeds hat.max_tasks={self.max_tasks} (the rows "
                       "of the task tables); raise hat.max_tasks.")
    active = jnp.asarray(active_classes, bool)
    new = active & ~state.active
    if bool(jnp.any(new)):  # class-incremental: the new classes' share of the classes seen
      current, ratio = new, jnp.sum(new) / jnp.sum(active)
    else:  # permuted: every task has every class; each task weighs the same (DGR's r = 1/t)
      # (a copy: two state fields holding one buffer cannot both be donated to a chunk)
      current, ratio = jnp.copy(active), jnp.asarray(1.0 / (task_index + 1))
    state = state.replace(active=active, current=current, ratio=jnp.asarray(ratio, jnp.float32),
                          task=jnp.asarray(task_index, jnp.int32),
                          step=jnp.zeros((), jnp.int32),
                          task_classes=state.task_classes.at[task_index].set(current),
                          proto_sum=jnp.where(current[:, None], 0.0, state.proto_sum),
                          proto_count=jnp.where(current, 0.0, state.proto_count))
    if self.g.protection == "hat":
      if task_index != dgm_generator.num_tasks_begun(state.generator.params):
        raise ValueError(f"lgm: begin_task({task_index}) after "
                         f"{dgm_generator.num_tasks_begun(state.generator.params)} tasks; tasks run in order.")
      params, stats = dgm_generator.add_task(self.spec, state.generator.params, state.generator.batch_stats,
                                   jax.random.fold_in(state.key, 1000 + task_index))
      state = state.replace(generator=ModelState(params=params, batch_stats=stats,
                                                 opt_state=self._hat_opt(params, state.reserved)))
    if self.g.encoder == "bridge":
      state = state.replace(bridge=self._fresh_bridge(jax.random.fold_in(state.key, 2000 + task_index)))
    if self.config.train.reset_optimizers:
      state = state.replace(solver=reset_optimizer(state.solver, self.solver_tx),
                            critic=reset_optimizer(state.critic, self.gan_tx))
      if self.g.protection == "ra":
        state = state.replace(generator=reset_optimizer(state.generator, self.gan_tx))
    return state

  def end_task(self, state: LGMState) -> LGMState:
    """Snapshots h_t(f_t) (and G_t with ``ra``); ``hat`` reserves the task's binary mask."""
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    prior = copy(state.solver.params if state.frozen is None else state.frozen.solver_params)
    snapshot = LGMSnapshot(solver_params=copy(state.solver.params),
                           generator_params=(copy(state.generator.params) if self.g.protection == "ra"
                                             else None),
                           prior_solver_params=prior, active=jnp.copy(state.active))
    if self.g.protection == "hat":
      params = state.generator.params
      t = dgm_generator.num_tasks_begun(params) - 1
      reserved = [jnp.maximum(r, m) for r, m in zip(state.reserved, dgm_generator.task_mask(self.spec, params, t))]
      state = state.replace(reserved=reserved, generator=state.generator.replace(
          opt_state=self._hat_opt(params, reserved)))
    if self.g.encoder == "bridge":
      t = state.task
      state = state.replace(bridges=jax.tree.map(lambda s, p: s.at[t].set(p), state.bridges,
                                                 state.bridge.params))
    return state.replace(frozen=snapshot)

  def state_template(self, key, meta: dict) -> LGMState:
    """With ``hat`` the generator gains a batch norm and head per task begun: rebuilt by
    beginning as many tasks as the checkpoint's position says."""
    state = self.init(key)
    pos = meta["position"]
    begun = pos["task"] + (1 if pos.get("begun") else 0)
    dummy = np.zeros((self.num_classes,), bool)
    for t in range(begun):
      state = self.begin_task(state, t, dummy)
      if t < pos["task"]:
        state = self.end_task(state)
    return state

  def phases(self):
    out = [Phase("joint", self.config.train.solver_steps, self.joint_step)]
    if self.g.encoder == "prototype":
      out.append(Phase("prototypes", int(self.g.prototype_steps), self.prototype_step))
    return tuple(out)

  # -- networks ------------------------------------------------------------------------------

  def encode(self, params, x):
    return self.classifier.apply({"params": params}, x, method=self.classifier.encode)

  def classify(self, params, features):
    return self.classifier.apply({"params": params}, features, method=self.classifier.classify)

  def _bridge(self, params, u):
    return self.bridge_net.apply({"params": params}, u)

  def _hat_task(self, state) -> int:
    return dgm_generator.num_tasks_begun(state.generator.params) - 1  # static: read off the structure

  def _hat_generate(self, params, stats, key, labels, task: int, s=None, train=False, hard=False):
    z = dgm_generator.noise(key, labels, self.spec.z_dim, self.num_classes)
    return dgm_generator.generate(self.spec, params, stats, z, task, s, train=train, hard=hard)

  def _previous_draws(self, state: LGMState, k_z, k_c, n: int):
    """``(z, c, G_{t-1}(z, c))`` for ``c`` uniform over the classes seen before this task, the
    features mapped into the current space by the live bridge with ``bridge`` (``ra`` only)."""
    c = jax.random.categorical(k_c, jnp.where(state.frozen.active, 0.0, -jnp.inf), shape=(n,))
    z = jax.random.normal(k_z, (n, self.g.z_dim))
    phi = self.generator.apply({"params": state.frozen.generator_params}, z, c)
    if self.g.encoder == "bridge":
      phi = self._bridge(jax.lax.stop_gradient(state.bridge.params), phi)
    return z, c, phi

  def memories(self, state: LGMState, key, n: int):
    """Fake features of earlier classes in the current feature space, with their labels.

    ``ra``: ``n`` draws of ``G_{t-1}(z, c)``, c uniform over the classes seen before this
    task. ``hat``: ``ceil(n / t)`` draws from each earlier task tau, its classes in turn,
    with tau's binary gates (then through the bridges tau+1 .. t with ``bridge``). Never
    differentiated.
    """
    if self.g.protection == "ra":
      k_z, k_c = jax.random.split(key)
      _, labels, phi = self._previous_draws(state, k_z, k_c, n)
      return jax.lax.stop_gradient(phi), labels
    t = self._hat_task(state)
    m = math.ceil(n / t)
    feats, labels = [], []
    g = jax.lax.stop_gradient(state.generator.params)
    for tau in range(t):
      y = balanced_labels(classes=state.task_classes[tau], num=m)
      phi, _, _ = self._hat_generate(g, state.generator.batch_stats, jax.random.fold_in(key, tau), y,
                                     tau, hard=True)
      if self.g.encoder == "bridge":
        for k in range(tau + 1, t):  # finished bridges b_{tau+1} .. b_{t-1}, then the live b_t
          phi = self._bridge(jax.tree.map(lambda s, k=k: s[k], state.bridges), phi)
        phi = self._bridge(jax.lax.stop_gradient(state.bridge.params), phi)
      feats.append(phi)
      labels.append(y)
    return jax.lax.stop_gradient(jnp.concatenate(feats)), jnp.concatenate(labels)

  # -- the joint step ------------------------------------------------------------------------

  def joint_step(self, state: LGMState, data: TaskArrays, key):
    """One classifier step (with fake memories after task 1), the bridge's step (``bridge``),
    then ``lgm.gan_iterations`` WGAN-GP iterations of the latent generator."""
    replaying = state.frozen is not None  # static
    k_x, k_mem, k_gan = jax.random.split(key, 3)
    x, y = self.sample_batch(data, k_x, self.batch_size)
    r = state.ratio
    metrics = {}
    if replaying:
      phi, phi_labels = self.memories(state, k_mem, self.batch_size)
      if self.g.encoder == "prototype":
        counts = state.proto_count
        old = state.frozen.active & (counts > 0)
        protos = state.proto_sum / jnp.maximum(counts, 1.0)[:, None]
        weights = jnp.concatenate([jnp.ones(phi.shape[:1]), old.astype(jnp.float32)])
        phi = jnp.concatenate([phi, protos])
        phi_labels = jnp.concatenate([phi_labels, jnp.arange(self.num_classes)])
      else:
        weights = jnp.ones(phi.shape[:1])
    prior_encoder = state.frozen.solver_params if replaying else None  # f_{t-1} (with its head)

    def solver_loss(params):
      if self.g.encoder == "frozen" and replaying:
        params = dict(params, encoder=jax.lax.stop_gradient(params["encoder"]))
      feats = self.encode(params, x)
      logits = self.classify(params, feats)
      real = jnp.mean(softmax_cross_entropy(logits=logits, labels=y, where=state.active))
      out = {"real_loss": real,
             "train_acc": jnp.mean(jnp.argmax(mask_logits(logits, state.active), -1) == y)}
      loss = real
      if replaying:
        fake = softmax_cross_entropy(logits=self.classify(params, phi), labels=phi_labels,
                                     where=state.active)
        fake = jnp.sum(fake * weights) / jnp.sum(weights)
        loss = r * real + (1.0 - r) * fake
        out["memory_loss"] = fake
        if self.g.encoder == "prototype":
          old_feats = self.encode(jax.lax.stop_gradient(prior_encoder), x)
          drift = jnp.mean(alignment_loss(mapped=feats, target=old_feats))
          loss = loss + self.g.drift_weight * drift
          out["drift_penalty"] = drift
      out["solver_loss"] = loss
      return loss, out

    grads, m = jax.grad(solver_loss, has_aux=True)(state.solver.params)
    solver = apply_gradients(state.solver, grads, self.solver_tx)
    if self.g.encoder == "frozen" and replaying:  # Adam's moments from task 1 would still move it
      solver = solver.replace(params=dict(solver.params, encoder=state.solver.params["encoder"]))
    metrics.update(m)
    state = state.replace(solver=solver)

    if self.g.encoder == "bridge" and replaying:
      old_feats = self.encode(jax.lax.stop_gradient(prior_encoder), x)
      new_feats = jax.lax.stop_gradient(self.encode(solver.params, x))

      def bridge_loss(params):
        return jnp.mean(alignment_loss(mapped=self._bridge(params, old_feats), target=new_feats))

      b_loss, b_grads = jax.value_and_grad(bridge_loss)(state.bridge.params)
      state = state.replace(bridge=apply_gradients(state.bridge, b_grads, self.bridge_tx))
      metrics["bridge_loss"] = b_loss

    for i in range(int(self.g.gan_iterations)):
      state, m = self.gan_iteration(state, data, jax.random.fold_in(k_gan, i))
      metrics.update({k: v / self.g.gan_iterations + (metrics.get(k, 0.0) if i else 0.0)
                      for k, v in m.items()})
    return state.replace(step=state.step + 1), metrics

  def _s(self, state, data):
    spe = jnp.maximum((data.count + self.batch_size - 1) // self.batch_size, 1)
    return hat.annealed_s(state.step % spe, spe, float(self.g.s_max))

  def _fakes(self, g_params, state, key, labels, s, train):
    """G_t's features for ``labels`` (the current task's gates at scale s with ``hat``), and the
    gates and new batch statistics (``hat``)."""
    if self.g.protection == "ra":
      z = jax.random.normal(key, (labels.shape[0], self.g.z_dim))
      return self.generator.apply({"params": g_params}, z, labels), None, None
    return self._hat_generate(g_params, state.generator.batch_stats, key, labels, self._hat_task(state),
                              s, train=train)

  def gan_iteration(self, state: LGMState, data: TaskArrays, key):
    """``n_critic`` critic updates, then one generator update, on the current classes' real
    features (:func:`gmcl.methods.wgan_gp.wgan_gp_iteration`); the generator's loss adds ``ra``'s
    alignment or ``hat``'s sparsity term."""
    n = self.batch_size
    keys = jax.random.split(key, self.n_critic + 1)
    encoder = jax.lax.stop_gradient(state.solver.params)
    s = self._s(state, data) if self.g.protection == "hat" else None

    def critic_draw(k):
      k_x, k_z, k_gp = jax.random.split(k, 3)
      x, y = self.sample_batch(data, k_x, n)
      real = self.encode(encoder, x)
      fake = jax.lax.stop_gradient(self._fakes(state.generator.params, state, k_z, y, s, True)[0])
      return real, fake, y, k_gp

    def critic_loss(params, inputs):
      real, fake, y, k_gp = inputs
      fn = lambda f: self.critic.apply({"params": params}, f, y)
      loss, m = wgan_gp_critic_loss(critic_fn=fn, real=real, fake=fake, real_scores=fn(real), fake_scores=fn(fake),
                                    epsilon=jax.random.uniform(k_gp, (n,)), gp_weight=self.gp_weight)
      return loss, (None, m)

    replaying = state.frozen is not None

    def generator_draw(k):
      k_x, k_z, k_ra = jax.random.split(k, 3)
      _, y = self.sample_batch(data, k_x, n)
      return y, k_z, k_ra

    def generator_loss(params, inputs, critic):
      y, k_z, k_ra = inputs
      fake, gates, stats = self._fakes(params, state, k_z, y, s, True)
      loss = jnp.mean(wasserstein_generator_loss(fake_scores=self.critic.apply(
          {"params": critic.params}, fake, y)))
      out = {"generator_loss": loss}
      if self.g.protection == "ra" and replaying:
        k_c, k_zr = jax.random.split(k_ra)
        z, c, old = self._previous_draws(state, k_zr, k_c, n)
        ra = 0.5 * jnp.mean(alignment_loss(mapped=self.generator.apply({"params": params}, z, c),
                                           target=old))
        loss = loss + self.g.ra_weight * ra
        out["replay_alignment"] = ra
      if self.g.protection == "hat":
        sparsity = sparsity_regularizer(gates, state.reserved if replaying else None)
        loss = loss + self.g.sparsity * sparsity
        out["sparsity"] = sparsity
      return loss, (stats, out)

    def generator_update(generator, critic, grads, stats):
      if self.g.protection == "ra":
        return apply_gradients(generator, grads, self.gan_tx), critic
      tx = self._hat_tx(generator.params)
      updates, opt_state = tx.update(grads, generator.opt_state, generator.params, s=s)
      params = optim.clamp_embeddings(optax.apply_updates(generator.params, updates),
                                      dgm_generator.mask_parameters(generator.params))
      return generator.replace(params=params, opt_state=opt_state, batch_stats=stats), critic

    critic, generator, metrics = wgan_gp_iteration(
        state.critic, state.generator, critic_keys=[keys[i] for i in range(self.n_critic)],
        generator_key=keys[-1],
        critic_step={"draw": critic_draw, "loss": critic_loss, "update": critic_update_with(self.gan_tx)},
        generator_step={"draw": generator_draw, "loss": generator_loss, "update": generator_update})
    return state.replace(generator=generator, critic=critic), metrics

  def prototype_step(self, state: LGMState, data: TaskArrays, key):
    """Adds a batch's features to the current classes' sums (the final encoder, no training)."""
    x, y = self.sample_batch(data, key, self.batch_size)
    feats = self.encode(state.solver.params, x)
    onehot = jax.nn.one_hot(y, self.num_classes) * state.current
    return state.replace(proto_sum=state.proto_sum + onehot.T @ feats,
                         proto_count=state.proto_count + jnp.sum(onehot, 0)), {}

  # -- prediction and scores -----------------------------------------------------------------

  def predict(self, state: LGMState, x: jax.Array) -> jax.Array:
    return mask_logits(self.classifier.apply({"params": state.solver.params}, x), state.active)

  def _memory_of(self, state: LGMState, key, labels):
    """The memory the next task will replay for ``labels``: G_t (``ra``) or each class's
    task gates (``hat``), in the current feature space."""
    if self.g.protection == "ra":
      z = jax.random.normal(key, (labels.shape[0], self.g.z_dim))
      return self.generator.apply({"params": state.generator.params}, z, labels)
    out = jnp.zeros((labels.shape[0], self.feature_dim))
    class_task = jnp.argmax(state.task_classes, axis=0)  # (K,) the task that learnt each class
    for tau in range(dgm_generator.num_tasks_begun(state.generator.params)):
      phi, _, _ = self._hat_generate(state.generator.params, state.generator.batch_stats,
                                     jax.random.fold_in(key, tau), labels, tau, hard=True)
      for k in range(tau + 1, int(state.task) + 1) if self.g.encoder == "bridge" else ():
        phi = self._bridge(jax.tree.map(lambda s, k=k: s[k], state.bridges), phi)
      out = jnp.where((class_task[labels] == tau)[:, None], phi, out)
    return out

  def extra_scores(self, state: LGMState, data, sequence, task_index: int, key) -> dict:
    """``drift`` (and ``bridged_drift``) on held-out images of classes seen before this task;
    ``memory_gap`` and ``memory_accuracy`` over the classes seen so far (module docstring)."""
    scores: dict[str, Any] = {}
    seen = np.asarray(sequence.seen_classes(task_index))
    old = np.asarray(sequence.seen_classes(task_index - 1)) if task_index > 0 else np.array([], int)
    limit = int(self.g.drift_eval_limit)
    encode = jax.jit(self.encode)
    if len(old):
      idx = np.nonzero(np.isin(data.y_test, old))[0][:limit]
      x = jnp.asarray(data.x_test[idx])
      new = encode(state.solver.params, x)
      prev = encode(state.frozen.prior_solver_params, x)
      scores["drift"] = float(relative_drift(new=new, old=prev))
      if self.g.encoder == "bridge":
        scores["bridged_drift"] = float(relative_drift(new=new, old=self._bridge(state.bridge.params, prev)))
    else:
      scores["drift"] = None
    gaps, correct, total = [], 0, 0
    for c in seen:
      idx = np.nonzero(data.y_test == c)[0][:limit]
      real_mean = jnp.mean(encode(state.solver.params, jnp.asarray(data.x_test[idx])), axis=0)
      labels = jnp.full((256,), int(c), jnp.int32)
      phi = self._memory_of(state, jax.random.fold_in(key, int(c)), labels)
      gaps.append(float(jnp.linalg.norm(jnp.mean(phi, 0) - real_mean) /
                        jnp.maximum(jnp.linalg.norm(real_mean), 1e-12)))
      pred = jnp.argmax(mask_logits(self.classify(state.solver.params, phi), state.active), -1)
      correct += int(jnp.sum(pred == c))
      total += labels.shape[0]
    scores["memory_gap"] = float(np.mean(gaps))
    scores["memory_accuracy"] = correct / total
    return scores


def make_lgm(config, image_shape, num_classes, parallel=Parallel()) -> LGM:
  """Checks the config's ``lgm`` keys (:func:`check_config`), then builds the method."""
  check_config(config)
  return LGM(config, image_shape, num_classes, parallel)


SPEC = MethodSpec(make=make_lgm, sections=lambda: {"lgm": config_section(), "hat": hat_method.config_section()},
                  check=check_config)
