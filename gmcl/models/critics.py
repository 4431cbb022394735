"""WGAN critic with an auxiliary classification head (AC-GAN)."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from gmcl.models.layers import Conv


class DCGANCritic(nn.Module):
  """Image -> (Wasserstein score, auxiliary class logits).

  Strided 5x5 convolutions (``base_features * 2**i`` features), LeakyReLU(0.2) and
  no normalisation (WGAN-GP forbids batch norm in the critic, Gulrajani et al.
  2017, Sec. 4), then a linear Wasserstein head and, when ``num_classes > 0``, a
  linear auxiliary classifier over all classes (Odena et al., 2017). With
  base_features=32 and 3 layers this is MeRGAN's official critic.

  ``batch_norm=True`` is DGM's official critic instead: batch norm after every
  convolution but the first, no convolution biases (then ``train`` selects batch or
  running statistics, and the caller makes ``batch_stats`` mutable in training).

  ``param_init``: ``"lecun"`` keeps Flax's default initialisers (LeCun normal convolution and
  head kernels, batch-norm scales 1); ``"dcgan"`` is the DCGAN initialisation DGM's official
  code applies to its critic (``weights_init``): convolution kernels N(0, 0.02), batch-norm
  scales N(1, 0.02), offsets 0, and the heads torch's ``nn.Linear`` default U(+-1/sqrt(fan_in))
  kernels (biases stay 0, where torch draws them from the same range).

  ``conv_plan`` picks the convolutions' implementation (gmcl.ops.conv; "auto": on XLA:CPU each
  direction's fastest form, measured on the machine (gmcl.ops.conv_tune), the gradient penalty's
  second derivative included; native on GPU/TPU), with the same parameters.

  Because no layer mixes examples, the critic's input gradient can be taken of
  the summed scores, which the gradient penalty relies on.
  """
  num_classes: int = 0
  base_features: int = 64
  num_layers: int = 3
  kernel_size: int = 5
  batch_norm: bool = False
  conv_plan: str = "auto"
  param_init: str = "lecun"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> tuple[jax.Array, Optional[jax.Array]]:
    if x.ndim != 4:
      raise ValueError(f"DCGANCritic: x must be (batch, H, W, C), got shape {x.shape}.")
    if self.param_init not in INITS:
      raise ValueError(f"DCGANCritic: param_init={self.param_init!r}; valid: {INITS}.")
    conv_init, bn_scale_init, head_init = _initializers(self.param_init)
    k = (self.kernel_size, self.kernel_size)
    for i in range(self.num_layers):
      x = Conv(self.base_features * 2 ** i, k, strides=2, padding="SAME",
               use_bias=not self.batch_norm, plan=self.conv_plan, kernel_init=conv_init)(x)
      if self.batch_norm and i > 0:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         scale_init=bn_scale_init)(x)
      x = nn.leaky_relu(x, 0.2)
    x = x.reshape(x.shape[0], -1)
    score = nn.Dense(1, name="wgan_head", kernel_init=head_init)(x)[:, 0]
    logits = (nn.Dense(self.num_classes, name="aux_head", kernel_init=head_init)(x)
              if self.num_classes else None)
    return score, logits


INITS = ("lecun", "dcgan")


def _initializers(init: str):
  """(convolution kernels, batch-norm scales, head kernels) of :class:`DCGANCritic`'s ``param_init``."""
  if init == "lecun":
    return nn.initializers.lecun_normal(), nn.initializers.ones, nn.initializers.lecun_normal()

  def bn_scale(key, shape, dtype=jax.numpy.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)

  return (nn.initializers.normal(0.02), bn_scale,
          nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"))


class MLPCritic(nn.Module):
  """Image -> [Dense -> LeakyReLU(0.2)] * len(hidden) -> (score, auxiliary logits); no normalisation."""
  num_classes: int = 0
  hidden: tuple[int, ...] = (512, 256)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> tuple[jax.Array, Optional[jax.Array]]:
    if x.ndim != 4:
      raise ValueError(f"MLPCritic: x must be (batch, H, W, C), got shape {x.shape}.")
    del train  # no batch norm: the same function in training and evaluation
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.leaky_relu(nn.Dense(width)(x), 0.2)
    score = nn.Dense(1, name="wgan_head")(x)[:, 0]
    logits = nn.Dense(self.num_classes, name="aux_head")(x) if self.num_classes else None
    return score, logits
