"""DCGAN-style generators, unconditional or conditional on a class label."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmcl.models.layers import ConvTranspose

_OUTPUT_ACTIVATIONS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "none": lambda x: x}
CONDITIONINGS = ("concat", "batchnorm")


class ClassConditionalBatchNorm(nn.Module):
  """Batch norm with a scale and offset per class (Dumoulin et al., 2017), as MeRGAN's generator.

  ``y = gamma[c] * (x - mu) / sqrt(var + eps) + beta[c]``, gamma initialised to 1 and
  beta to 0. The statistics ``mu, var`` are the batch's own, over batch and space,
  computed separately for each class present in the batch (``per_class=True``): a
  mixed-class batch is then normalised exactly as MeRGAN's official code normalises
  its one-class-per-call batches. Running averages are never kept or used, in
  training or sampling, as in that code.
  """
  num_classes: int
  epsilon: float = 1e-5
  per_class: bool = True
  axis_name: Optional[str] = None  # under pmap: statistics over the global batch

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array) -> jax.Array:
    c = x.shape[-1]
    gamma = self.param("scale", nn.initializers.ones, (self.num_classes, c))
    beta = self.param("offset", nn.initializers.zeros, (self.num_classes, c))
    flat = x.reshape(x.shape[0], -1, c)  # (B, spatial, C)
    m1, m2 = jnp.mean(flat, axis=1), jnp.mean(jnp.square(flat), axis=1)  # per example (B, C)
    groups = (jax.nn.one_hot(labels, self.num_classes, dtype=x.dtype) if self.per_class
              else jnp.ones((x.shape[0], 1), x.dtype))  # (B, G): which group each example is in
    sums = (groups.T @ m1, groups.T @ m2, jnp.sum(groups, axis=0)[:, None])
    if self.axis_name is not None:
      sums = jax.lax.psum(sums, self.axis_name)
    s1, s2, counts = sums
    counts = jnp.maximum(counts, 1.0)
    mean, sq = groups @ (s1 / counts), groups @ (s2 / counts)  # each example: its group's statistics
    var = jnp.maximum(sq - jnp.square(mean), 0.0)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (c,)
    normed = (x - mean.reshape(shape)) * jax.lax.rsqrt(var.reshape(shape) + self.epsilon)
    return gamma[labels].reshape(shape) * normed + beta[labels].reshape(shape)


def _upsampling_plan(size: int) -> tuple[int, int]:
  """(start size, number of stride-2 upsamplings) for a square output of ``size``."""
  plans = {28: (7, 2), 32: (4, 3), 64: (4, 4)}
  if size not in plans:
    raise ValueError(f"DCGANGenerator: image size {size} is not supported; valid: {sorted(plans)}.")
  return plans[size]


class DCGANGenerator(nn.Module):
  """z (and optionally a class) -> image, as in DCGAN (Radford et al., 2016).

  Dense to ``start x start x (ngf * 2**(n-1))``, then ``n`` transposed convolutions
  of stride 2 halving the features (batch norm and ReLU between), the last one to
  the image's channels, then the output activation. For 32x32 with ngf=32 this is
  MeRGAN's official generator: 4x4x128 -> 8x8x64 -> 16x16x32 -> 32x32xC, 5x5 kernels.

  Attributes:
    image_shape: (H, W, C) with H = W in {28, 32, 64}.
    num_classes: 0 for an unconditional generator; otherwise labels must be given.
    conditioning: how a conditional generator sees the class: "concat" (one-hot
      concatenated to z, plain batch norm with running averages) or "batchnorm"
      (z alone enters; every batch norm is a :class:`ClassConditionalBatchNorm`,
      MeRGAN's official generator; no running averages).
    base_features: ngf, the features of the last hidden layer.
    kernel_size: side of the transposed-convolution kernels.
    output_activation: "tanh" (images in [-1, 1]), "sigmoid" ([0, 1]) or "none".
    conv_plan: the transposed convolutions' implementation (gmcl.ops.conv): "auto"
      (on XLA:CPU the fastest forms measured on the machine; native elsewhere), "table"
      (the fixed rule), "native" (exactly flax.linen.ConvTranspose) or "file:PATH". Same
      parameters either way.
  """
  image_shape: tuple[int, int, int] = (32, 32, 1)
  num_classes: int = 0
  base_features: int = 64
  kernel_size: int = 5
  output_activation: str = "tanh"
  bn_axis_name: Optional[str] = None  # "data" under pmap: batch statistics over all devices
  conditioning: str = "concat"
  conv_plan: str = "auto"

  @nn.compact
  def __call__(self, z: jax.Array, labels: Optional[jax.Array] = None, *,
               train: bool = True) -> jax.Array:
    h, w, c = self.image_shape
    if h != w:
      raise ValueError(f"DCGANGenerator: image_shape {self.image_shape} must be square.")
    if self.output_activation not in _OUTPUT_ACTIVATIONS:
      raise ValueError(f"output_activation={self.output_activation!r}; valid: "
                       f"{sorted(_OUTPUT_ACTIVATIONS)}.")
    start, n_up = _upsampling_plan(h)
    z, norm = _conditioning("DCGANGenerator", self, z, labels, train)
    features = self.base_features * 2 ** (n_up - 1)
    x = nn.Dense(start * start * features)(z).reshape(z.shape[0], start, start, features)
    x = nn.relu(norm()(x))
    k = (self.kernel_size, self.kernel_size)
    for i in range(n_up):
      last = i == n_up - 1
      features = c if last else features // 2
      x = ConvTranspose(features, k, strides=2, padding="SAME", plan=self.conv_plan)(x)
      if not last:
        x = nn.relu(norm()(x))
    return _OUTPUT_ACTIVATIONS[self.output_activation](x)


def _conditioning(owner: str, module: nn.Module, z, labels, train: bool):
  """Checks z and labels; returns the first layer's input and a factory of the norm layer."""
  if z.ndim != 2:
    raise ValueError(f"{owner}: z must be (batch, z_dim), got shape {z.shape}.")
  if module.conditioning not in CONDITIONINGS:
    raise ValueError(f"{owner}: conditioning={module.conditioning!r}; valid: {list(CONDITIONINGS)}.")
  plain = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                               axis_name=module.bn_axis_name if train else None)
  if not module.num_classes:
    return z, plain
  if labels is None or labels.shape != z.shape[:1]:
    raise ValueError(f"{owner}: a conditional generator needs labels of shape "
                     f"{z.shape[:1]}, got {None if labels is None else labels.shape}.")
  if module.conditioning == "batchnorm":
    axis = module.bn_axis_name if train else None
    cbn = lambda: (lambda x: ClassConditionalBatchNorm(module.num_classes, axis_name=axis)(x, labels))
    return z, cbn
  return jnp.concatenate([z, jax.nn.one_hot(labels, module.num_classes, dtype=z.dtype)], -1), plain


class MLPGenerator(nn.Module):
  """z (and optionally a one-hot class) -> [Dense -> BN -> ReLU] * len(hidden) -> Dense -> image.

  A fully connected generator: on a CPU it trains an order of magnitude faster
  than the DCGAN one at 28x28 (all work is matrix multiplication), which makes
  10-task MNIST studies affordable there.
  """
  image_shape: tuple[int, int, int] = (28, 28, 1)
  num_classes: int = 0
  hidden: tuple[int, ...] = (256, 512)
  output_activation: str = "tanh"
  bn_axis_name: Optional[str] = None  # "data" under pmap: batch statistics over all devices
  conditioning: str = "concat"  # or "batchnorm": see DCGANGenerator

  @nn.compact
  def __call__(self, z: jax.Array, labels: Optional[jax.Array] = None, *,
               train: bool = True) -> jax.Array:
    if self.output_activation not in _OUTPUT_ACTIVATIONS:
      raise ValueError(f"output_activation={self.output_activation!r}; valid: "
                       f"{sorted(_OUTPUT_ACTIVATIONS)}.")
    x, norm = _conditioning("MLPGenerator", self, z, labels, train)
    for width in self.hidden:
      x = nn.relu(norm()(nn.Dense(width)(x)))
    x = nn.Dense(int(np.prod(self.image_shape)))(x)
    return _OUTPUT_ACTIVATIONS[self.output_activation](x).reshape((z.shape[0],) + self.image_shape)
