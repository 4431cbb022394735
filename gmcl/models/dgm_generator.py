"""Dynamic Generative Memory's generator (Ostapenko et al., CVPR 2019): HAT masks on a network that grows.

A chain of masked layers (transposed convolutions, as the official generator, or
dense layers) followed by a per-task head:

    z (one-hot class in its first K dims) -> [layer_l -> BN_t,l -> ReLU] x L -> head_t -> tanh

* Every masked layer has a task embedding table ``e_l`` (one row per task, zeros at
  first, as in the official code). With **weight masks** (DGMw) a row has the
  kernel's shape and ``sigmoid(s e)`` multiplies the kernel; with **activation
  masks** (DGMa) a row has one entry per output unit and the gate multiplies the
  layer's outputs.
* Batch norm and the last layer (``head``) are per task and never masked; a task's
  batch norm and head have the widths the network had when the task began.
* Task t runs on the slice ``kernel[..., :in_t, :out_t]`` of every kernel: the widths
  of its time. After a task, its binarised mask joins the cumulative mask
  ``reserved`` (a_{<=t}); :func:`grow` adds as many units as were newly reserved, so
  the free capacity stays what it was (``growth`` can be off: HAT's fixed network).

A finished task's hard gates are ``e_t >= 0`` (``sigmoid(s_max e) >= 0.5``, the
official binarisation), and every weight its output depends on is either reserved
(frozen by gradient compensation) or gated to exactly 0. So the outputs of earlier
tasks are bitwise unchanged by later training and by growth, provided the gates sit
where they act on a task's own path: with activation masks after the activation
(the paper's a ⊙ φ(Wx), HAT's placement, the default). The official DGMa code masks
before batch norm (``placement="before_bn"``), where a masked channel comes out of
the batch norm as its offset beta and then meets free weights of the next layer: earlier
tasks' outputs then drift a little.

Parameters are a plain pytree, so that growth can change shapes between tasks::

    {"kernel": [W_l], "embedding": [E_l], "bn": [[{"scale", "bias"}] * L per task],
     "head": [W_head per task]}
    batch_stats = {"bn": [[{"mean", "var"}] * L per task]}

Kernels are ``(in, out)`` (dense) or ``(k, k, in, out)`` (transposed convolution, HWIO).
Every function here is pure; widths are read off array shapes, so they are static
under ``jit``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from gmcl.ops import conv as conv_ops

KINDS = ("conv", "dense")
MASKS = ("weight", "activation")
PLACEMENTS = ("after_activation", "before_bn")
OUTPUTS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "none": lambda x: x}
OLD_TASK_FILL = -90.0  # the official code's embedding value for new units in earlier tasks' rows


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
  """The static description of a masked, growing generator.

  Attributes:
    kind: "conv" (the official generator: 4x4 transposed convolutions, 1 -> 4 -> 8
      -> ... -> image size) or "dense".
    z_dim: noise dimensions (the first ``num_classes`` carry the one-hot label).
    widths: initial output widths of the masked layers (official: 4 ngf, 2 ngf, ngf).
    image_shape: (H, W, C) of the output; for "conv", H = W = 4 * 2**len(widths); a "dense"
      generator makes any shape (lgm: (D,) features).
    mask: "weight" (DGMw) or "activation" (DGMa).
    placement: where activation masks act: "after_activation" (paper, HAT) or
      "before_bn" (official DGMa code).
    max_tasks: rows of each embedding table.
    kernel_init: "xavier" (DGMw's xavier_uniform, gain sqrt 2) or "normal" (DGMa's
      N(0, 0.02)); grown weights use the other one, as the official code does.
    conv_plan: the transposed convolutions' implementation (gmcl.ops.conv): "auto"
      (on XLA:CPU the fastest forms measured on the machine), "table", "native", "file:PATH".
  """
  kind: str = "conv"
  z_dim: int = 128
  widths: tuple[int, ...] = (24, 12, 6)
  image_shape: tuple[int, ...] = (32, 32, 1)
  mask: str = "weight"
  placement: str = "after_activation"
  max_tasks: int = 10
  kernel_size: int = 4
  kernel_init: str = "xavier"
  bn_momentum: float = 0.9  # PyTorch's 0.1
  bn_epsilon: float = 1e-5
  conv_plan: str = "auto"
  output: str = "tanh"  # the head's activation: tanh (images in [-1, 1]) | relu (features) | none

  def __post_init__(self):
    for name, value, valid in (("kind", self.kind, KINDS), ("mask", self.mask, MASKS),
                               ("placement", self.placement, PLACEMENTS),
                               ("kernel_init", self.kernel_init, ("xavier", "normal")),
                               ("output", self.output, tuple(OUTPUTS))):
      if value not in valid:
        raise ValueError(f"GeneratorSpec.{name}={value!r}; valid: {list(valid)}.")
    conv_ops.check_plan_name(self.conv_plan)
    if not self.widths or min(self.widths) < 1:
      raise ValueError(f"GeneratorSpec.widths={self.widths}: one or more positive widths.")
    if self.kind == "conv" and len(self.image_shape) != 3:
      raise ValueError(f"GeneratorSpec: a conv generator makes (H, W, C) images, not {self.image_shape}.")
    h, w = self.image_shape[:2] if self.kind == "conv" else (0, 0)
    if self.kind == "conv" and not (h == w == 4 * 2 ** len(self.widths)):
      raise ValueError(f"GeneratorSpec: a conv generator with {len(self.widths)} masked layers makes "
                       f"{4 * 2 ** len(self.widths)}x{4 * 2 ** len(self.widths)} images, not "
                       f"{h}x{w}; change widths or image_shape.")

  @property
  def num_layers(self) -> int:
    return len(self.widths)

  @property
  def spatial(self) -> int:
    """Kernel positions per (in, out) pair: k*k for conv, 1 for dense."""
    return self.kernel_size ** 2 if self.kind == "conv" else 1

  def kernel_shape(self, fan_in: int, fan_out: int) -> tuple[int, ...]:
    k = self.kernel_size
    return (k, k, fan_in, fan_out) if self.kind == "conv" else (fan_in, fan_out)


# -- initialisation --------------------------------------------------------------------------------

def _initializer(name: str):
  if name == "xavier":  # torch xavier_uniform_(gain=sqrt(2)): variance 2 / fan_avg
    return nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")
  return nn.initializers.normal(0.02)


def init_params(spec: GeneratorSpec, key) -> tuple[dict, dict]:
  """(params, batch_stats) before the first task: kernels and zero embeddings, no task yet."""
  kernels, embeddings = [], []
  fan_in = spec.z_dim
  keys = jax.random.split(key, spec.num_layers)
  for k, width in zip(keys, spec.widths):
    shape = spec.kernel_shape(fan_in, width)
    kernels.append(_initializer(spec.kernel_init)(k, shape, jnp.float32))
    emb_shape = shape if spec.mask == "weight" else (width,)
    embeddings.append(jnp.zeros((spec.max_tasks,) + emb_shape, jnp.float32))
    fan_in = width
  return {"kernel": kernels, "embedding": embeddings, "bn": [], "head": []}, {"bn": []}


def current_widths(params: dict) -> tuple[int, ...]:
  """Output widths of the masked layers as they are now (after any growth)."""
  return tuple(int(k.shape[-1]) for k in params["kernel"])


def task_widths(params: dict, task: int) -> tuple[int, ...]:
  """The widths task ``task`` was trained at (its batch norms' sizes)."""
  return tuple(int(bn["scale"].shape[0]) for bn in params["bn"][task])


def num_tasks_begun(params: dict) -> int:
  return len(params["bn"])


def add_task(spec: GeneratorSpec, params: dict, batch_stats: dict, key) -> tuple[dict, dict]:
  """Appends a batch norm per layer and a head at the current widths for a new task."""
  widths = current_widths(params)
  bn = [{"scale": jnp.ones((w,), jnp.float32), "bias": jnp.zeros((w,), jnp.float32)} for w in widths]
  stats = [{"mean": jnp.zeros((w,), jnp.float32), "var": jnp.ones((w,), jnp.float32)} for w in widths]
  if spec.kind == "conv":  # torch's default ConvTranspose2d init: U(+-1/sqrt(C k k))
    head = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")(
        key, spec.kernel_shape(widths[-1], spec.image_shape[-1]), jnp.float32)
  else:
    head = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")(
        key, (widths[-1], math.prod(spec.image_shape)), jnp.float32)
  params = dict(params, bn=params["bn"] + [bn], head=params["head"] + [head])
  return params, {"bn": batch_stats["bn"] + [stats]}


# -- gates -----------------------------------------------------------------------------------------

def _layer_slices(spec: GeneratorSpec, params: dict, task: int) -> list[tuple[int, int]]:
  out = task_widths(params, task)
  return [((spec.z_dim if l == 0 else out[l - 1]), out[l]) for l in range(spec.num_layers)]


def hard_gate(e: jax.Array) -> jax.Array:
  """The binary gate of a finished task: ``sigmoid(s_max e) >= 0.5``, i.e. ``e >= 0``."""
  return (e >= 0).astype(jnp.float32)


def gates(spec: GeneratorSpec, params: dict, task: int, s=None, hard: bool = False) -> list:
  """Each masked layer's gate for ``task`` at its widths: ``sigmoid(s e)``, or binary with ``hard``."""
  out = []
  for l, (fan_in, fan_out) in enumerate(_layer_slices(spec, params, task)):
    e = params["embedding"][l][task]
    e = e[..., :fan_in, :fan_out] if spec.mask == "weight" else e[:fan_out]
    out.append(hard_gate(e) if hard else jax.nn.sigmoid(s * e))
  return out


def task_params(spec: GeneratorSpec, params: dict, batch_stats: dict, task: int):
  """The parameters task ``task`` uses, sliced to its widths (exact copies)."""
  sl = _layer_slices(spec, params, task)
  kernel = [k[..., :i, :o] for k, (i, o) in zip(params["kernel"], sl)]
  emb = [e[:, ..., :i, :o] if spec.mask == "weight" else e[:, :o]
         for e, (i, o) in zip(params["embedding"], sl)]
  return ({"kernel": kernel, "embedding": emb, "bn": [params["bn"][task]],
           "head": [params["head"][task]]}, {"bn": [batch_stats["bn"][task]]})


# -- the forward pass ------------------------------------------------------------------------------

def _conv_transpose(x, w, stride: int, padding: int, plan: str = "native"):
  """torch.nn.ConvTranspose2d(k, stride, padding) as a convolution of the dilated input (NHWC, HWIO)."""
  g = conv_ops.torch_conv_transpose_geometry(tuple(x.shape[1:3]), w.shape[0], stride, padding)
  return conv_ops.conv(x, w, g, conv_ops.resolve_plan(plan, g, x, w))


def _batch_norm(spec: GeneratorSpec, x, bn, stats, train: bool):
  axes = tuple(range(x.ndim - 1))
  if train:
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    n = x.size // x.shape[-1]
    m = spec.bn_momentum  # running variance unbiased, as torch's
    stats = {"mean": m * stats["mean"] + (1 - m) * mean,
             "var": m * stats["var"] + (1 - m) * var * n / max(n - 1, 1)}
  else:
    mean, var = stats["mean"], stats["var"]
  y = (x - mean) * jax.lax.rsqrt(var + spec.bn_epsilon) * bn["scale"] + bn["bias"]
  return y, stats


def generate(spec: GeneratorSpec, params: dict, batch_stats: dict, z: jax.Array, task: int,
             s=None, *, train: bool = False, hard: bool = False):
  """Images of task ``task`` (a Python int) from ``z`` (B, z_dim).

  Args:
    s: the gate scale (ignored with ``hard``).
    train: batch statistics in the task's batch norms (and their running averages
      updated), else the running averages.
    hard: binary gates ``e >= 0`` (finished tasks: replay, sampling, evaluation).

  Returns:
    ``(images (B, H, W, C), gates (list per layer), batch_stats)``; the task's running
    statistics are updated in the returned ``batch_stats`` when ``train``.
  """
  if z.ndim != 2 or z.shape[1] != spec.z_dim:
    raise ValueError(f"dgm.generate: z must be (batch, {spec.z_dim}), got shape {z.shape}.")
  if not 0 <= task < num_tasks_begun(params):
    raise ValueError(f"dgm.generate: task {task} has not begun; tasks 0..{num_tasks_begun(params) - 1} have.")
  g = gates(spec, params, task, s, hard)
  sl = _layer_slices(spec, params, task)
  x = z.reshape(z.shape[0], 1, 1, spec.z_dim) if spec.kind == "conv" else z
  new_stats = []
  for l, (fan_in, fan_out) in enumerate(sl):
    w = params["kernel"][l][..., :fan_in, :fan_out]
    if spec.mask == "weight":
      w = w * g[l]
    if spec.kind == "conv":
      h = _conv_transpose(x, w, 1 if l == 0 else 2, 0 if l == 0 else 1, spec.conv_plan)
    else:
      h = x @ w
    if spec.mask == "activation" and spec.placement == "before_bn":
      h = h * g[l]
    h, st = _batch_norm(spec, h, params["bn"][task][l], batch_stats["bn"][task][l], train)
    new_stats.append(st)
    h = jax.nn.relu(h)
    if spec.mask == "activation" and spec.placement == "after_activation":
      h = h * g[l]
    x = h
  head = params["head"][task]
  if spec.kind == "conv":
    out = _conv_transpose(x, head, 2, 1, spec.conv_plan)
  else:
    out = (x @ head).reshape((x.shape[0],) + tuple(spec.image_shape))
  stats = batch_stats
  if train:
    bn = list(batch_stats["bn"])
    bn[task] = new_stats
    stats = {"bn": bn}
  return OUTPUTS[spec.output](out), g, stats


def noise(key, labels: jax.Array, z_dim: int, num_classes: int) -> jax.Array:
  """z ~ N(0, I) with its first ``num_classes`` entries replaced by the one-hot label (DGM's conditioning)."""
  z = jax.random.normal(key, (labels.shape[0], z_dim), jnp.float32)
  return z.at[:, :num_classes].set(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32))


# -- reservation, compensation, sparsity -----------------------------------------------------------

def task_mask(spec: GeneratorSpec, params: dict, task: int) -> list:
  """A finished task's binarised mask at the current widths (zero beyond its own)."""
  del spec
  return [hard_gate(e[task]) for e in params["embedding"]]


def empty_reserved(spec: GeneratorSpec, params: dict) -> list:
  """a_{<t} before the first task: zeros shaped like the masks."""
  return [jnp.zeros(e.shape[1:], jnp.float32) for e in params["embedding"]]


def keep_multipliers(spec: GeneratorSpec, reserved: Sequence[jax.Array]) -> list:
  """Per-kernel gradient multipliers from the cumulative mask, thresholded at 0.5 as the official code.

  Weight masks: ``1 - a_{<t}`` per weight. Activation masks: ``1 - min(a_out, a_in)``
  (HAT's Eq. 2), the first layer's input (z) counting as unmasked.
  """
  out = []
  for l, r in enumerate(reserved):
    if spec.mask == "weight":
      k = 1.0 - r
    else:
      a_in = (jnp.ones((spec.z_dim,)) if l == 0 else reserved[l - 1])[:, None]
      k = 1.0 - jnp.minimum(r[None, :], a_in)
      if spec.kind == "conv":
        k = jnp.broadcast_to(k, (spec.kernel_size, spec.kernel_size) + k.shape)
    out.append((k >= 0.5).astype(jnp.float32))
  return out


def sparsity_weight(base: float, spec: GeneratorSpec, params: dict) -> float:
  """``lamb_G * (sum of current widths) / (sum of initial widths)``: the official code scales the
  sparsity weight with the network's size."""
  return base * sum(current_widths(params)) / sum(spec.widths)


# -- growth ----------------------------------------------------------------------------------------

def newly_reserved(before: Sequence[jax.Array], after: Sequence[jax.Array]) -> list[int]:
  """Per layer, how many weights (weight masks) or units (activation masks) a task newly reserved."""
  return [int(round(float(jnp.sum(a) - jnp.sum(b)))) for b, a in zip(before, after)]


def growth_plan(spec: GeneratorSpec, params: dict, new: Sequence[int]) -> list[int]:
  """Units to add to each masked layer so that the free capacity stays what it was.

  Activation masks: the newly reserved units. Weight masks (the official DGMw rule,
  with K kernel positions): layer l gains ``max(ceil((n_l - a_{l-1} out_l K) / (in_l' K)), 0)``
  outputs, where n_l weights were newly reserved, ``a_{l-1}`` inputs were added by the
  layer before, and ``in_l' = in_l + a_{l-1}``.
  """
  if spec.mask == "activation":
    return [max(int(n), 0) for n in new]
  adds, prev_add = [], 0
  K = spec.spatial
  for l, kernel in enumerate(params["kernel"]):
    fan_in, fan_out = int(kernel.shape[-2]), int(kernel.shape[-1])
    new_in = fan_in + prev_add
    add = max(math.ceil((new[l] - prev_add * fan_out * K) / (new_in * K)), 0)
    adds.append(add)
    prev_add = add
  return adds


def resize(spec: GeneratorSpec, params: dict, reserved: Sequence[jax.Array], widths: Sequence[int],
           finished: int, key) -> tuple[dict, list]:
  """Grows every masked layer to ``widths`` outputs (inputs follow the layer before).

  New weights are drawn fresh (with the initialiser the official code uses for grown
  weights: the other one of the two) and the old block copied in; embedding rows of
  the ``finished`` earlier tasks get -90 on new entries (their gates stay shut), later
  rows 0; the cumulative mask is zero-padded. Batch norms and heads of begun tasks
  keep their sizes (their tasks ran at the old widths).
  """
  old = current_widths(params)
  if len(widths) != len(old) or any(w < o for w, o in zip(widths, old)):
    raise ValueError(f"dgm.resize: widths {tuple(widths)} must be >= the current {old}, layer by layer.")
  grown_init = _initializer("normal" if spec.kernel_init == "xavier" else "xavier")
  kernels, embeddings, new_reserved = [], [], []
  keys = jax.random.split(key, spec.num_layers)
  fan_in = spec.z_dim
  for l, width in enumerate(widths):
    k_old = params["kernel"][l]
    shape = spec.kernel_shape(fan_in, width)
    region = tuple(slice(0, d) for d in k_old.shape)
    if shape == k_old.shape:
      kernels.append(k_old)
    else:
      kernels.append(grown_init(keys[l], shape, jnp.float32).at[region].set(k_old))
    e_old = params["embedding"][l]
    mask_shape = shape if spec.mask == "weight" else (width,)
    e_new = jnp.zeros((spec.max_tasks,) + mask_shape, jnp.float32)
    e_new = e_new.at[:finished].set(OLD_TASK_FILL)
    e_new = e_new.at[(slice(None),) + tuple(slice(0, d) for d in e_old.shape[1:])].set(e_old)
    embeddings.append(e_new)
    r_old = reserved[l]
    new_reserved.append(jnp.zeros(mask_shape, jnp.float32)
                        .at[tuple(slice(0, d) for d in r_old.shape)].set(r_old))
    fan_in = width
  return dict(params, kernel=kernels, embedding=embeddings), new_reserved


def grow(spec: GeneratorSpec, params: dict, before: Sequence[jax.Array], after: Sequence[jax.Array],
         finished: int, key) -> tuple[dict, list, list[int]]:
  """DGM's growth after a task: ``(params, reserved, units added per layer)``.

  Args:
    before: the cumulative mask before the task (a_{<t}).
    after: after it (a_{<=t}), at the same widths.
    finished: the number of finished tasks (t + 1).
  """
  adds = growth_plan(spec, params, newly_reserved(before, after))
  widths = [w + a for w, a in zip(current_widths(params), adds)]
  params, reserved = resize(spec, params, after, widths, finished, key)
  return params, reserved, adds


def parameter_count(params: dict) -> dict[str, int]:
  """Generator parameter counts: shared kernels, per-task batch norms and heads, task embeddings."""
  size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  out = {"kernels": size(params["kernel"]), "batch_norms": size(params["bn"]),
         "heads": size(params["head"]), "embeddings": size(params["embedding"])}
  out["total_without_embeddings"] = out["kernels"] + out["batch_norms"] + out["heads"]
  return out


def mask_parameters(tree: Any) -> Any:
  """A pytree of bools like a generator's params: True on embedding leaves."""
  return {k: jax.tree.map(lambda _: k == "embedding", v) for k, v in tree.items()}
