"""DCGAN-style generators, unconditional or conditional on a class label."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_OUTPUT_ACTIVATIONS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "none": lambda x: x}


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
    num_classes: 0 for an unconditional generator; otherwise the one-hot label is
      concatenated to z (labels must then be given).
    base_features: ngf, the features of the last hidden layer.
    kernel_size: side of the transposed-convolution kernels.
    output_activation: "tanh" (images in [-1, 1]), "sigmoid" ([0, 1]) or "none".
  """
  image_shape: tuple[int, int, int] = (32, 32, 1)
  num_classes: int = 0
  base_features: int = 64
  kernel_size: int = 5
  output_activation: str = "tanh"
  bn_axis_name: Optional[str] = None  # "data" under pmap: batch statistics over all devices

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
    if z.ndim != 2:
      raise ValueError(f"DCGANGenerator: z must be (batch, z_dim), got shape {z.shape}.")
    if self.num_classes:
      if labels is None or labels.shape != z.shape[:1]:
        raise ValueError(f"DCGANGenerator: a conditional generator needs labels of shape "
                         f"{z.shape[:1]}, got {None if labels is None else labels.shape}.")
      z = jnp.concatenate([z, jax.nn.one_hot(labels, self.num_classes, dtype=z.dtype)], -1)
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                axis_name=self.bn_axis_name if train else None)
    features = self.base_features * 2 ** (n_up - 1)
    x = nn.Dense(start * start * features)(z)
    x = nn.relu(norm()(x)).reshape(z.shape[0], start, start, features)
    k = (self.kernel_size, self.kernel_size)
    for i in range(n_up):
      last = i == n_up - 1
      features = c if last else features // 2
      x = nn.ConvTranspose(features, k, strides=(2, 2), padding="SAME")(x)
      if not last:
        x = nn.relu(norm()(x))
    return _OUTPUT_ACTIVATIONS[self.output_activation](x)


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

  @nn.compact
  def __call__(self, z: jax.Array, labels: Optional[jax.Array] = None, *,
               train: bool = True) -> jax.Array:
    if z.ndim != 2:
      raise ValueError(f"MLPGenerator: z must be (batch, z_dim), got shape {z.shape}.")
    if self.output_activation not in _OUTPUT_ACTIVATIONS:
      raise ValueError(f"output_activation={self.output_activation!r}; valid: "
                       f"{sorted(_OUTPUT_ACTIVATIONS)}.")
    if self.num_classes:
      if labels is None or labels.shape != z.shape[:1]:
        raise ValueError(f"MLPGenerator: a conditional generator needs labels of shape "
                         f"{z.shape[:1]}, got {None if labels is None else labels.shape}.")
      z = jnp.concatenate([z, jax.nn.one_hot(labels, self.num_classes, dtype=z.dtype)], -1)
    x = z
    for width in self.hidden:
      x = nn.Dense(width)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                               axis_name=self.bn_axis_name if train else None)(x))
    x = nn.Dense(int(np.prod(self.image_shape)))(x)
    return _OUTPUT_ACTIVATIONS[self.output_activation](x).reshape((z.shape[0],) + self.image_shape)
