"""Online generative memory (``ogm``): keep the model's earlier predictions while it learns online.

The seed author's proposal. The model is the library's classifier, logits ``f_theta(x) = h(f(x))``;
the main loss is the class-incremental cross-entropy on the current task's batch,

    L(theta) = mean_{(x, y)} -log softmax_seen(f_theta(x))_y,

over the classes seen so far (as :class:`gmcl.methods.classifier.ClassifierMethod`). Preservation
comes from a *memory batch* ``X`` (``ogm.memory_batch`` images) saved in the state together with
``Y = f_theta(X)``, the model's logits on it when it was saved; it is drawn anew every
``ogm.refresh_every`` solver steps (a counter in the state decides, inside the compiled step, and is
reset by ``begin_task``, so every task starts with a fresh batch). ``ogm.memory`` says where ``X``
comes from:

* ``"current"``: the current task's inputs (LwF-style, Li & Hoiem 2016): a batch drawn apart from
  the training batch. No generator: the only phase is the solver's.
* ``"generator"``: samples of the frozen previous generator G_{t-1} (DGR's replay, Shin et al. 2017);
  in the first task, with no G_{t-1} yet, the current inputs. The generator is DGR's generative
  memory (:class:`gmcl.methods.memory.GenerativeMemory`, trained in a "generator" phase by WGAN-GP
  on ``r * D_t + (1 - r) * G_{t-1}``), and ``end_task`` takes its snapshot G_{t-1}. DGR's replay
  *loss* is not used: the variant alone preserves the predictions.

Three ways to preserve them, ``ogm.variant``:

(a) ``"lookahead"`` (MAML-like, Finn et al. 2017): first ``k = ogm.lookahead_steps`` plain gradient
    steps (step size ``ogm.lookahead_lr``) on

        D(theta) = mean_{x in X} || f_theta(x) - f_{theta - eta grad L(theta)}(x) ||^2_seen,

    the change of the memory predictions a virtual SGD step of size ``eta = ogm.inner_lr`` on L
    would cause (differentiated through ``grad L``: second order), then the main Adam step on
    ``grad L`` at the moved parameters. See :func:`lookahead_objective`. D is ~ eta^2 times the
    squared Jacobian-gradient product, so with small ``eta`` and ``lookahead_lr`` the lookahead
    barely moves theta, and with large ones plain SGD on D (a quartic-like objective) can
    diverge; D does not anchor theta either (nothing keeps the lookahead steps themselves from
    moving f(X)). The metrics ``ogm_lookahead_objective`` and ``ogm_lookahead_shift`` show both.
    Two options address this, each off in the proposal's form: ``ogm.lookahead_clip = c > 0``
    clips each lookahead gradient to global norm c (so a step moves theta by at most
    ``lookahead_lr * c``; the demo schedule diverged in task 3 without it: D's gradient grows with
    the square of the cross-entropy's, which is largest when a new class arrives), and
    ``ogm.lookahead_target = "saved"`` replaces f_theta(x) in D by the saved logits Y, i.e.
    D_Y(theta) = mean || Y - f_{theta - eta grad L(theta)}(x) ||^2, which anchors the memory
    predictions to where they were saved instead of to where the lookahead steps moved them.
(b) ``"distill"`` (saved-batch teacher distillation, Hinton et al. 2015): the main Adam step
    ``theta_0 -> theta_1`` on L, then a distillation step from ``theta_1`` on

        T^2 * mean_{x in X} H(softmax(f_{theta_0}(x) / T), softmax(f_theta(x) / T)),

    whose teacher is the model *before* this step's update, ``theta_0`` (``T = ogm.temperature``,
    both softmaxes over the seen classes), its Adam update scaled by ``lambda = ogm.distill_weight``
    (see :class:`OGM`: a weight on the loss would not change an Adam step). With
    ``refresh_every = 1`` the teacher's logits are the saved Y; with a longer refresh interval the
    teacher is still the pre-step model (as the proposal says), so X is reused and Y is not.
(c) ``"project"`` (projected gradient, GPM/OWM-like: Saha et al. 2021, Zeng et al. 2019): the Adam
    update ``u`` is split per dense layer into the part that changes the layer's pre-activations on
    ``X`` and the part that does not (:func:`project_update`); the latter is always taken, the former
    with the largest ``alpha in {1, 1/2, ..., 2^-ogm.backtracking}`` for which the actual new
    predictions satisfy ``||f(X) - Y|| <= ogm.epsilon`` (``ogm.norm``: Frobenius or spectral norm of
    the (B, K) difference over the seen classes), and ``alpha = 0`` if none does.

Every step is ``solver_step(state, data, key) -> (state, metrics)``, pure, so it runs under
``jax.jit`` and :func:`gmcl.methods.base.run_chunk` (a K-step chunk equals K single steps).
``parallel.mode = "jit"`` (a device mesh; XLA partitions the global-batch computation) and
``"none"`` are supported; ``"pmap"`` is not (its per-device steps would need the memory batch
gathered and the lookahead's inner gradient averaged across devices).

One class for both memories: with ``memory="generator"`` it contains a generative memory
(``OGM.generative``; its live state ``state.generative``, its snapshot ``state.frozen``), whose
training step, replay draw and snapshot are the component's; with ``memory="current"`` there is
none (``generative = frozen = None``) and :meth:`OGM.phases` returns the solver phase alone. The
solver's initial parameters are the same in both cases (the same key split as DGR's ``init``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from gmcl.checks import require
from gmcl.config import check_image_generator
from gmcl.data.sampling import TaskArrays
from gmcl.losses.classification import mask_logits, softmax_cross_entropy
from gmcl.losses.replay import replay_loss
from gmcl.methods import dgr as dgr_method
from gmcl.methods.base import ModelState, Phase, apply_gradients
from gmcl.methods.classifier import ClassifierMethod
from gmcl.methods.memory import GenerativeMemory, MemorySnapshot, MemoryState
from gmcl.optim import adam
from gmcl.parallel import Parallel
from gmcl.registry import MethodSpec

VARIANTS = ("lookahead", "distill", "project")
MEMORIES = ("current", "generator")
NORMS = ("frobenius", "spectral")
LOOKAHEAD_TARGETS = ("current", "saved")

_HIGHEST = jax.lax.Precision.HIGHEST


# -- configuration ---------------------------------------------------------------------------------


def config_section() -> ml_collections.ConfigDict:
  """The ``ogm`` section with its defaults (the ``dgr`` section configures ``ogm.memory='generator'``)."""
  s = ml_collections.ConfigDict()  # online generative memory: keep earlier predictions while learning
  s.variant = "distill"  # lookahead (a) | distill (b) | project (c)
  s.memory = "current"  # current (LwF-style: current inputs) | generator (G_{t-1}'s samples)
  s.memory_batch = 64
  s.refresh_every = 1  # steps between new saved memory batches
  s.lookahead_steps = 1  # (a) k
  s.lookahead_lr = 0.1  # (a) step size of the k lookahead steps (1e-3 moved theta by ~1e-6)
  s.inner_lr = 0.1  # (a) eta of the virtual step theta - eta grad L(theta)
  s.lookahead_clip = 1.0  # (a) clip each lookahead gradient to this global norm; 0: the proposal's plain step
  s.lookahead_target = "current"  # (a) current: f_theta(X) (the proposal's) | saved: the saved Y
  s.distill_weight = 1.0  # (b) the distillation step's Adam update, relative to the main step's
  s.temperature = 2.0  # (b)
  s.epsilon = 0.1  # (c) the bound on ||f(X) - Y|| (1.0 never bound with batch 16)
  s.norm = "frobenius"  # (c) frobenius | spectral
  s.backtracking = 8  # (c) halvings of the in-span part before it is dropped
  return s


def check_config(config) -> None:
  """Validates the ``ogm`` section and the settings ogm cannot combine with (``model.classifier``
  other than "mlp" for the "project" variant, ``parallel.mode = "pmap"``); raises ValueError
  naming the key and the valid values."""
  o = config.ogm
  require(o.variant in VARIANTS, "ogm.variant", o.variant, "'lookahead', 'distill' or 'project'")
  require(o.memory in MEMORIES, "ogm.memory", o.memory, "'current' or 'generator'")
  require(o.norm in NORMS, "ogm.norm", o.norm, "'frobenius' or 'spectral'")
  require(o.memory_batch >= 1, "ogm.memory_batch", o.memory_batch, ">= 1")
  require(o.refresh_every >= 1, "ogm.refresh_every", o.refresh_every,
           ">= 1 (1: a new memory batch every step)")
  require(o.lookahead_steps >= 0, "ogm.lookahead_steps", o.lookahead_steps,
           ">= 0 (0: no lookahead, i.e. sequential fine-tuning)")
  require(o.lookahead_lr >= 0, "ogm.lookahead_lr", o.lookahead_lr, ">= 0")
  require(o.lookahead_clip >= 0, "ogm.lookahead_clip", o.lookahead_clip,
          ">= 0 (0: no clipping, the proposal's plain step)")
  require(o.lookahead_target in LOOKAHEAD_TARGETS, "ogm.lookahead_target", o.lookahead_target,
          "'current' (f_theta(X), the proposal's) or 'saved' (the saved logits Y)")
  require(o.inner_lr >= 0, "ogm.inner_lr", o.inner_lr, ">= 0")
  require(o.distill_weight >= 0, "ogm.distill_weight", o.distill_weight, ">= 0")
  require(o.temperature > 0, "ogm.temperature", o.temperature, "> 0")
  require(o.epsilon >= 0, "ogm.epsilon", o.epsilon, ">= 0")
  require(o.backtracking >= 0, "ogm.backtracking", o.backtracking,
           ">= 0 (halvings of the in-span part before it is dropped)")
  classifier = config.model.classifier
  if o.variant == "project" and classifier != "mlp":
    raise ValueError(f"config.model.classifier={classifier!r} with config.ogm.variant='project': the "
                     "projected step supports only model.classifier='mlp' (dense layers); use "
                     "ogm.variant='lookahead' or 'distill' with other classifiers.")
  check_parallel_mode(config.parallel.mode)
  dgr_method.check_section(config)
  require(config.dgr.replay_source == "generator", "dgr.replay_source", config.dgr.replay_source,
          f"'generator' ({config.method} replays DGR's generative memory; the other sources are DGR's solver's)")
  if o.memory == "generator":
    check_image_generator(config)


def check_parallel_mode(parallel_mode: str) -> None:
  if parallel_mode == "pmap":  # jit over a mesh needs nothing of the steps: XLA partitions them
    raise ValueError("ogm: parallel.mode='pmap' is not implemented; use parallel.mode='jit' "
                     "(data-parallel over a device mesh) or 'none'.")


# -- pure functions ------------------------------------------------------------------------------


def prediction_drift(*, logits: jax.Array, saved_logits: jax.Array, where: Optional[jax.Array] = None,
                     norm: str = "frobenius") -> jax.Array:
  """``||f(X) - Y||``: how far the predictions on the memory batch moved from the saved ones.

  Args:
    logits: (B, K) current logits f(X).
    saved_logits: (B, K) logits Y saved with X.
    where: boolean (K,) mask of the seen classes; the other columns are left out (set to 0,
      which changes neither norm).
    norm: "frobenius" (sqrt of the sum of squares) or "spectral" (the largest singular value).

  Returns:
    () the norm of the (B, K) difference: a matrix norm, not per-example values.
  """
  if norm not in NORMS:
    raise ValueError(f"norm={norm!r}; valid choices: {NORMS}.")
  diff = logits - saved_logits
  if where is not None:
    diff = jnp.where(where, diff, 0.0)
  if norm == "frobenius":
    return jnp.sqrt(jnp.sum(diff ** 2))
  return jnp.linalg.norm(diff, ord=2)


def lookahead_objective(params, *, apply_fn: Callable[[Any, jax.Array], jax.Array],
                        loss_fn: Callable[[Any], jax.Array], x_memory: jax.Array, inner_lr: float,
                        where: Optional[jax.Array] = None,
                        target: Optional[jax.Array] = None) -> jax.Array:
  """The lookahead variant's objective: how much a virtual step on L would move the memory logits.

      D(theta) = (1 / B) sum_{i <= B} || f_theta(x_i) - f_{theta - eta grad L(theta)}(x_i) ||^2,

  the squared norm running over the seen classes' logits. ``grad L`` is taken inside, so
  ``jax.grad(lookahead_objective)`` differentiates through it (Hessian-vector products: the
  second-order MAML gradient, Finn et al. 2017, Eq. 1). Minimising D moves theta where the next
  step on L leaves the memory predictions where they are. With ``target`` (the saved logits Y,
  treated as constants) the first term is Y instead of f_theta(x): the anchored form
  ``ogm.lookahead_target = "saved"``.

  Args:
    params: theta, the classifier's parameters.
    apply_fn: ``(params, x) -> (B, K) logits``.
    loss_fn: ``params -> ()``: the main loss L on the current batch.
    x_memory: (B, ...) the memory inputs X.
    inner_lr: eta, the virtual SGD step's size.
    where: optional boolean (K,) mask of the seen classes.
    target: optional (B, K) logits to keep the virtual step's predictions at (no gradient flows
      into them); None: f_theta(x_memory).

  Returns:
    () D(theta).
  """
  grads = jax.grad(loss_fn)(params)
  virtual = jax.tree.map(lambda p, g: p - inner_lr * g, params, grads)
  anchor = apply_fn(params, x_memory) if target is None else jax.lax.stop_gradient(target)
  diff = anchor - apply_fn(virtual, x_memory)
  if where is not None:
    diff = jnp.where(where, diff, 0.0)
  return jnp.mean(jnp.sum(diff ** 2, axis=-1))


def mlp_dense_inputs(params, x: jax.Array) -> dict:
  """The input activations of each dense layer of the MLP classifier on ``x``.

  The MLP classifier (:class:`gmcl.models.classifiers.MLPEncoder` and the head) is
  Flatten -> [Dense_i -> ReLU] -> Dense head, so layer l's input is ``A_0 = flatten(x)`` and
  ``A_{l+1} = relu(A_l W_l + b_l)``.

  Args:
    params: the classifier's parameters ``{"encoder": {"Dense_i": ...}, "head": ...}``.
    x: (B, H, W, C) inputs.

  Returns:
    ``{("encoder", "Dense_i"): (B, in_i), ..., ("head",): (B, in_head)}``, in the layers' order.
  """
  names = sorted(params["encoder"], key=lambda n: int(n.rsplit("_", 1)[-1]))
  if set(params) != {"encoder", "head"} or names != [f"Dense_{i}" for i in range(len(names))]:
    raise ValueError("mlp_dense_inputs: params must be the MLP classifier's "
                     "{'encoder': {'Dense_0', ...}, 'head'}; got "
                     f"{jax.tree.map(jnp.shape, params)}.")
  a = x.reshape(x.shape[0], -1)
  out = {}
  for name in names:
    layer = params["encoder"][name]
    out[("encoder", name)] = a
    a = jax.nn.relu(jnp.matmul(a, layer["kernel"], precision=_HIGHEST) + layer["bias"])
  out[("head",)] = a
  return out


def span_split(inputs: jax.Array, update: jax.Array, *, rcond: Optional[float] = None):
  """Splits a layer update into the part in the row span of its inputs and the orthogonal part.

  With ``A`` (B, n) the layer's inputs and ``U`` (n, m) the update of its weights, the change of
  the layer's outputs on these inputs is ``A U``. With the thin SVD ``A = P S V^T``,
  ``U_span = V_r V_r^T U`` (V_r: right singular vectors of singular values above
  ``rcond * s_max``) and ``U_perp = U - U_span``; ``A U_perp = 0`` up to rounding, so ``U_perp``
  leaves the outputs on ``A`` unchanged. This is ``pinv(A) A U`` computed without dividing by
  singular values, so it stays accurate when ``A`` is (numerically) rank-deficient.

  Args:
    inputs: (B, n) the layer's inputs A (augmented with a column of ones for a bias).
    update: (n, m) the update U.
    rcond: singular values at or below ``rcond * s_max`` count as zero. The default, the dtype's
      machine epsilon, keeps every direction the SVD can tell from rounding noise: keeping too
      many is harmless (a noise direction's part of U is dropped too, a tiny loss of plasticity),
      while dropping a real direction would let its update change the outputs on A.

  Returns:
    ``(U_span, U_perp)``, both (n, m).
  """
  if rcond is None:
    rcond = float(jnp.finfo(inputs.dtype).eps)
  _, s, vt = jnp.linalg.svd(inputs, full_matrices=False)
  keep = (s > rcond * s[0]).astype(inputs.dtype)
  coeffs = keep[:, None] * jnp.matmul(vt, update, precision=_HIGHEST)
  span = jnp.matmul(vt.T, coeffs, precision=_HIGHEST)
  return span, update - span


def project_update(params, updates, x_memory: jax.Array, *, rcond: Optional[float] = None):
  """Splits an update of the MLP classifier per dense layer (see :func:`span_split`).

  For each dense layer l with inputs ``A_l(X)`` on the memory batch (:func:`mlp_dense_inputs`),
  the update of ``[kernel; bias]`` is split against ``[A_l(X), 1]``. If every layer takes only its
  orthogonal part, layer 0's pre-activations on X are unchanged (its inputs are X), hence layer 1's
  inputs, hence its pre-activations, and so on: ``f(X)`` is unchanged exactly (up to rounding).

  Args:
    params: the classifier's parameters theta (the split is against theta's activations).
    updates: a parameter-shaped update u (e.g. Adam's).
    x_memory: (B, ...) the memory batch X.
    rcond: see :func:`span_split`.

  Returns:
    ``(span, orthogonal)``: two parameter-shaped trees with ``span + orthogonal = updates``.
  """
  span, perp = {"encoder": {}}, {"encoder": {}}
  for path, a in mlp_dense_inputs(params, x_memory).items():
    u = updates[path[0]] if len(path) == 1 else updates[path[0]][path[1]]
    a1 = jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)
    full = jnp.concatenate([u["kernel"], u["bias"][None]], axis=0)
    s, p = span_split(a1, full, rcond=rcond)
    s = {"kernel": s[:-1], "bias": s[-1]}
    p = {"kernel": p[:-1], "bias": p[-1]}
    if len(path) == 1:
      span[path[0]], perp[path[0]] = s, p
    else:
      span[path[0]][path[1]], perp[path[0]][path[1]] = s, p
  return span, perp


# -- the method ----------------------------------------------------------------------------------


@struct.dataclass
class OGMMemory:
  """The saved memory batch: inputs X and the logits Y = f_theta(X) when they were saved."""
  x: jax.Array  # (memory_batch, H, W, C)
  logits: jax.Array  # (memory_batch, K)


@struct.dataclass
class OGMState:
  solver: ModelState
  active: jax.Array  # (K,) bool: classes seen so far
  memory: OGMMemory
  memory_step: jax.Array  # () int32: solver steps taken in this task; refresh when % refresh_every == 0
  distill_opt_state: Any = None  # variant "distill": the distillation step's own Adam state
  generative: Optional[MemoryState] = None  # memory "generator" only: G_t, its critic, r
  frozen: Optional[MemorySnapshot] = None  # memory "generator": G_{t-1} after the first task


class OGM(ClassifierMethod):
  """Online generative memory; see the module docstring.

  Optimiser states: the main step uses the solver's Adam state (``state.solver.opt_state``, reset
  by ``begin_task`` when ``train.reset_optimizers``). The "distill" variant's distillation step has
  its own Adam state (``state.distill_opt_state``, same hyperparameters): Adam's moments estimate
  the mean and scale of *one* objective's gradients, and the cross-entropy's and the distillation
  loss's gradients differ in direction and scale (the distillation gradient is ~0 right after
  the main step and grows with the drift), so mixing them in one state would let each step be
  normalised by the other's magnitudes. Adam's step does not depend on the scale of its
  gradients, so a weight on the distillation loss would barely change the step (a smoke run gave
  nearly the same training with weights 1 and 0.01); ``ogm.distill_weight`` therefore scales the
  distillation step's Adam update instead: it is that step's learning rate relative to the main
  step's. The "project" variant feeds the unprojected
  gradient to Adam (its moments follow L) and projects Adam's output, since Adam's per-coordinate
  scaling would undo a projection of the gradient. The lookahead steps are plain SGD and keep no
  state.
  """

  state_format = 2  # the generator's state in ``generative`` (gmcl.methods.memory)

  def __init__(self, config, image_shape, num_classes, parallel: Parallel = Parallel()):
    check_parallel_mode(parallel.mode)
    super().__init__(config, image_shape, num_classes, name="ogm", parallel=parallel)
    o = config.ogm
    self.variant = o.variant
    self.memory_source = o.memory
    self.generative = (GenerativeMemory(config, self.image_shape, num_classes, parallel)
                       if o.memory == "generator" else None)
    self.has_generator = self.generative is not None
    self.conditional = self.has_generator and self.generative.conditional
    self.memory_batch = o.memory_batch
    self.refresh_every = o.refresh_every
    self.lookahead_steps = o.lookahead_steps
    self.lookahead_lr = o.lookahead_lr
    self.lookahead_clip = o.lookahead_clip
    self.lookahead_target = o.lookahead_target
    self.inner_lr = o.inner_lr
    self.distill_weight = o.distill_weight
    tr = config.train  # the distillation step: the solver's Adam without weight decay (the main step has it)
    self.distill_tx = adam(tr.solver_lr, tr.solver_b1, tr.solver_b2)
    self.distill_temperature = o.temperature
    self.epsilon = o.epsilon
    self.norm = o.norm
    self.backtracking = o.backtracking
    self.rcond = None  # span_split's default: the dtype's machine epsilon

  # -- state ---------------------------------------------------------------------------------

  def init(self, key) -> OGMState:
    k_s, k_g, k_c = jax.random.split(key, 3)  # DGR's split: the same solver with either memory
    generative = self.generative.init(k_g, k_c) if self.has_generator else None
    solver = self._init_solver(k_s)
    memory = OGMMemory(x=jnp.zeros((self.memory_batch,) + self.image_shape, jnp.float32),
                       logits=jnp.zeros((self.memory_batch, self.num_classes), jnp.float32))
    distill = self.distill_tx.init(solver.params) if self.variant == "distill" else None
    return OGMState(solver=solver, active=jnp.zeros((self.num_classes,), bool), memory=memory,
                    memory_step=jnp.zeros((), jnp.int32), distill_opt_state=distill,
                    generative=generative)

  def begin_task(self, state, task_index, active_classes):
    state = super().begin_task(state, task_index, active_classes)  # active classes, solver reset
    if self.has_generator:  # r = 1/t, the GAN's optimiser resets
      state = state.replace(generative=self.generative.begin_task(state.generative, task_index))
    if self.variant == "distill" and self.config.train.reset_optimizers:
      state = state.replace(distill_opt_state=self.distill_tx.init(state.solver.params))
    return state.replace(memory_step=jnp.zeros((), jnp.int32))  # the first step saves a new batch

  def end_task(self, state):
    """With a generator: its snapshot G_t, the next task's G_{t-1}."""
    if not self.has_generator:
      return state
    return state.replace(frozen=self.generative.snapshot(state.generative, state.active))

  def phases(self):
    solver = Phase("solver", self.config.train.solver_steps, self.solver_step)
    if self.has_generator:
      return (Phase("generator", self.config.train.generator_steps, self.generator_step), solver)
    return (solver,)

  def generator_step(self, state: OGMState, data: TaskArrays, key):
    """One WGAN-GP iteration of the generative memory (memory "generator")."""
    generative, metrics = self.generative.train_step(state.generative, state.frozen, data, key)
    return state.replace(generative=generative), metrics

  def sample(self, state, key, labels):
    return self.generative.sample(state.generative, key, labels) if self.has_generator else None

  # -- memory --------------------------------------------------------------------------------

  def _draw_memory(self, state, data: TaskArrays, key) -> jax.Array:
    if self.has_generator and state.frozen is not None:  # static: compiled per case
      return self.generative.replay_batch(state.frozen, key, self.memory_batch)[0]
    return self.sample_batch(data, key, self.memory_batch)[0]

  def refreshed_memory(self, state, data: TaskArrays, key) -> tuple[OGMMemory, jax.Array]:
    """The memory batch this step uses: a new one (X drawn by ``key``, Y = f_theta(X) with the
    parameters before the step) when ``memory_step % refresh_every == 0``, else the saved one."""
    refresh = state.memory_step % self.refresh_every == 0

    def new(_):
      x = jax.lax.stop_gradient(self._draw_memory(state, data, key))
      logits = self.classifier.apply({"params": state.solver.params}, x)
      return OGMMemory(x=x.astype(state.memory.x.dtype),
                       logits=jax.lax.stop_gradient(logits).astype(state.memory.logits.dtype))

    return jax.lax.cond(refresh, new, lambda _: state.memory, None), refresh

  # -- steps ---------------------------------------------------------------------------------

  def _logits(self, params, x):
    return self.classifier.apply({"params": params}, x)

  def main_loss(self, params, x, y, active) -> tuple[jax.Array, dict]:
    """L(theta): the mean cross-entropy over the seen classes, and the solver's usual metrics."""
    logits = self._logits(params, x)
    loss = jnp.mean(softmax_cross_entropy(logits=logits, labels=y, where=active))
    acc = jnp.mean(jnp.argmax(mask_logits(logits, active), -1) == y)
    return loss, {"solver_loss": loss, "solver_real_loss": loss, "train_acc": acc}

  def distill_loss(self, params, x_memory, teacher_logits, active) -> jax.Array:
    """``T^2 * mean H(softmax(teacher / T), softmax(student / T))`` over the seen classes (its step
    is scaled by ``ogm.distill_weight``, see the class docstring)."""
    student = self._logits(params, x_memory)
    per_example = replay_loss(logits=student, teacher_logits=teacher_logits, mode="soft",
                              temperature=self.distill_temperature, where=active,
                              teacher_where=active)
    return jnp.mean(per_example)

  def solver_step(self, state: OGMState, data: TaskArrays, key):
    """One online step of the variant (see the module docstring).

    ``key`` splits into the training batch's key (the same as
    :meth:`ClassifierMethod.solver_step`'s, so both draw the same batch) and the memory's.
    """
    k_batch, k_memory = jax.random.split(key)
    x, y = self.sample_batch(data, k_batch, self.batch_size)
    memory, refreshed = self.refreshed_memory(state, data, k_memory)
    update = {"lookahead": self._lookahead_update, "distill": self._distill_update,
              "project": self._project_update}[self.variant]
    state, metrics = update(state, memory, x, y)
    drift = prediction_drift(logits=self._logits(state.solver.params, memory.x),
                             saved_logits=memory.logits, where=state.active, norm=self.norm)
    metrics = dict(metrics, ogm_memory_drift=drift, ogm_refreshed=refreshed.astype(jnp.float32))
    return state.replace(memory=memory, memory_step=state.memory_step + 1), metrics

  def _lookahead_update(self, state, memory, x, y):
    """(a): k plain SGD steps on D (second order), then the main Adam step at the moved point."""
    active = state.active
    params = start = state.solver.params
    first = jnp.zeros(())
    target = memory.logits if self.lookahead_target == "saved" else None
    for i in range(self.lookahead_steps):  # k is small: unrolled (scan is slow on XLA:CPU)
      value, grads = jax.value_and_grad(lookahead_objective)(
          params, apply_fn=self._logits, loss_fn=lambda p: self.main_loss(p, x, y, active)[0],
          x_memory=memory.x, inner_lr=self.inner_lr, where=active, target=target)
      if self.lookahead_clip > 0:  # to global norm <= c; a no-op below it
        grads, _ = optax.clip_by_global_norm(self.lookahead_clip).update(grads, None)
      params = jax.tree.map(lambda p, g: p - self.lookahead_lr * g, params, grads)
      first = value if i == 0 else first
    grads, metrics = jax.grad(self.main_loss, has_aux=True)(params, x, y, active)
    solver = apply_gradients(state.solver.replace(params=params), grads, self.solver_tx)
    shift = optax.tree.norm(jax.tree.map(jnp.subtract, params, start))
    return state.replace(solver=solver), dict(metrics, ogm_lookahead_objective=first,
                                              ogm_lookahead_shift=shift)

  def _distill_update(self, state, memory, x, y):
    """(b): the main Adam step, then a distillation step whose teacher is theta before the step."""
    active, teacher_params = state.active, state.solver.params
    grads, metrics = jax.grad(self.main_loss, has_aux=True)(teacher_params, x, y, active)
    solver = apply_gradients(state.solver, grads, self.solver_tx)
    teacher = jax.lax.stop_gradient(self._logits(teacher_params, memory.x))
    d_loss, d_grads = jax.value_and_grad(self.distill_loss)(solver.params, memory.x, teacher, active)
    d_updates, d_opt = self.distill_tx.update(d_grads, state.distill_opt_state, solver.params)
    d_updates = jax.tree.map(lambda u: self.distill_weight * u, d_updates)
    solver = solver.replace(params=optax.apply_updates(solver.params, d_updates))
    return (state.replace(solver=solver, distill_opt_state=d_opt),
            dict(metrics, ogm_distill_loss=d_loss))

  def _project_update(self, state, memory, x, y):
    """(c): Adam's update, its in-span part scaled by the largest alpha that keeps the constraint.

    alpha runs over 1, 1/2, ..., 2^-backtracking in a ``lax.while_loop`` that stops at the first
    alpha whose actual forward pass on X gives ``||f(X) - Y|| <= epsilon`` (usually the first
    one when the constraint is slack: one forward pass of the memory batch), else alpha = 0.

    At alpha = 0 the step leaves f(X) where it was before the step; since Y is saved with X
    (drift 0) and every later step keeps the drift <= epsilon, it is <= epsilon there too, up to
    rounding (float32 forward passes and the SVD; on GPUs also TF32 matmuls in the forward pass).
    alpha = 0 is taken without a check: it is the smallest change the step can make.
    """
    active, params = state.active, state.solver.params
    grads, metrics = jax.grad(self.main_loss, has_aux=True)(params, x, y, active)
    updates, opt_state = self.solver_tx.update(grads, state.solver.opt_state, params)
    span, _ = project_update(params, updates, memory.x, rcond=self.rcond)

    def moved(alpha):  # theta + u - (1 - alpha) u_span: exactly theta + u at alpha = 1
      return jax.tree.map(lambda p, u, s: p + u - (1.0 - alpha) * s, params, updates, span)

    def satisfied(alpha):
      drift = prediction_drift(logits=self._logits(moved(alpha), memory.x),
                               saved_logits=memory.logits, where=active, norm=self.norm)
      return drift <= self.epsilon

    def halve(carry):
      j, _ = carry
      return j + 1, satisfied(jnp.ldexp(jnp.float32(1.0), -(j + 1)))

    j, ok = jax.lax.while_loop(lambda c: jnp.logical_not(c[1]) & (c[0] < self.backtracking),
                               halve, (jnp.zeros((), jnp.int32), satisfied(jnp.float32(1.0))))
    alpha = jnp.where(ok, jnp.ldexp(jnp.float32(1.0), -j), 0.0)
    solver = state.solver.replace(params=moved(alpha), opt_state=opt_state)
    span_norm, update_norm = optax.tree.norm(span), optax.tree.norm(updates)
    return state.replace(solver=solver), dict(
        metrics, ogm_alpha=alpha,
        ogm_span_fraction=span_norm / jnp.maximum(update_norm, jnp.finfo(jnp.float32).tiny))


def make_ogm(config, image_shape, num_classes, parallel=Parallel()) -> OGM:
  """Checks the config's ``ogm`` keys (:func:`check_config`), then builds the method."""
  check_config(config)
  return OGM(config, image_shape, num_classes, parallel)


__all__ = ["MEMORIES", "NORMS", "OGM", "OGMMemory", "OGMState", "VARIANTS", "check_config",
           "lookahead_objective", "make_ogm", "mlp_dense_inputs", "prediction_drift",
           "project_update", "span_split"]


SPEC = MethodSpec(make=make_ogm, sections=lambda: {"ogm": config_section(), "dgr": dgr_method.config_section()},
                  check=check_config,
                  added_keys={"ogm.lookahead_target": "current", "ogm.lookahead_clip": 0.0},
                  infinite_ok=frozenset({"ogm.epsilon"}))  # epsilon = inf: the unconstrained Adam step
