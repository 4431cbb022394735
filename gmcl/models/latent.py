"""Networks that live in a classifier's feature space: a conditional feature generator, its
critic, and bridges between feature spaces.

A classifier here is h(f(x)) (:mod:`gmcl.models.classifiers`); Z = f(X) is its feature
space at the split point (after the encoder's last ReLU, so features are >= 0).

* :class:`LatentGenerator` ``(z, c) -> features``: latent generative memory (``lgm``)
  replays features of past classes instead of images.
* :class:`LatentCritic` ``(features, c) -> score``: a conditional WGAN critic, the class
  given as a one-hot concatenated to the features (Mirza & Osindero's cGAN input).
* :class:`Bridge` ``Z_a -> Z_b``: latent space alignment's g_{t->t-1}, or lgm's map of old
  memories into the new feature space. Both kinds start at the identity when the two
  spaces have the same width, so an untrained bridge changes nothing.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

BRIDGES = ("linear", "mlp")
FEATURE_OUTPUTS = {"relu": jax.nn.relu, "none": lambda x: x}


def _with_label(x: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  return jnp.concatenate([x, jax.nn.one_hot(labels, num_classes, dtype=x.dtype)], axis=-1)


class LatentGenerator(nn.Module):
  """``[z, one_hot(c)] -> [Dense -> ReLU] * len(hidden) -> Dense(features) -> output``.

  ``output="relu"`` matches an encoder that ends in a ReLU (the library's MLP and CNN
  encoders): generated features can be exactly 0, as real ones often are.
  """
  features: int
  num_classes: int
  hidden: Sequence[int] = (256, 256)
  output: str = "relu"

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array) -> jax.Array:
    if self.output not in FEATURE_OUTPUTS:
      raise ValueError(f"LatentGenerator.output={self.output!r}; valid: {sorted(FEATURE_OUTPUTS)}.")
    x = _with_label(z, labels, self.num_classes)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return FEATURE_OUTPUTS[self.output](nn.Dense(self.features)(x))


class LatentCritic(nn.Module):
  """``[features, one_hot(c)] -> [Dense -> LeakyReLU(0.2)] * len(hidden) -> Dense(1)``: (B,) scores.

  No normalisation (WGAN-GP), and no layer mixes examples, so the gradient penalty may
  take the input gradient of the summed scores.
  """
  num_classes: int
  hidden: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, features: jax.Array, labels: jax.Array) -> jax.Array:
    x = _with_label(features, labels, self.num_classes)
    for width in self.hidden:
      x = nn.leaky_relu(nn.Dense(width)(x), 0.2)
    return nn.Dense(1)(x)[:, 0]


def _identity_or_lecun(key, shape, dtype=jnp.float32):
  if shape[0] == shape[1]:
    return jnp.eye(shape[0], dtype=dtype)
  return nn.initializers.lecun_normal()(key, shape, dtype)


class Bridge(nn.Module):
  """A map between feature spaces, ``g: Z_in -> Z_out``.

  * ``kind="linear"``: ``g(u) = u W + b``, W initialised to the identity (when the widths
    agree), b to 0.
  * ``kind="mlp"``: ``g(u) = u W + b + relu(u A + a) B`` (a linear map plus a one-hidden-layer
    residual of ``hidden`` units), B initialised to 0, so it too starts as the linear map.
  """
  features: int
  kind: str = "linear"
  hidden: int = 256

  @nn.compact
  def __call__(self, u: jax.Array) -> jax.Array:
    if self.kind not in BRIDGES:
      raise ValueError(f"Bridge.kind={self.kind!r}; valid: {list(BRIDGES)}.")
    out = nn.Dense(self.features, kernel_init=_identity_or_lecun, name="linear")(u)
    if self.kind == "mlp":
      h = nn.relu(nn.Dense(self.hidden, name="hidden")(u))
      out = out + nn.Dense(self.features, kernel_init=nn.initializers.zeros, name="residual")(h)
    return out


__all__ = ["BRIDGES", "Bridge", "LatentCritic", "LatentGenerator"]
