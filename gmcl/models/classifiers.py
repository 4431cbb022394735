"""Classifiers written as an encoder f and a head h, so that features can be replayed.

``Classifier.apply(v, x)`` gives logits h(f(x)); ``method=Classifier.encode`` gives
f(x) and ``method=Classifier.classify`` gives h(features).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from gmcl.models.layers import Conv


class MLPEncoder(nn.Module):
  """Flatten -> [Dense -> ReLU] * len(hidden). DGR/van de Ven's MNIST solver with (400, 400)."""
  hidden: Sequence[int] = (400, 400)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return x


class CNNEncoder(nn.Module):
  """[Conv3x3 -> ReLU -> MaxPool2] per entry of ``features`` -> Dense -> ReLU."""
  features: Sequence[int] = (32, 64)
  dense: int = 256
  conv_plan: str = "auto"  # gmcl.ops.conv: "auto" | "table" | "native" | "file:PATH"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for f in self.features:
      x = nn.relu(Conv(f, (3, 3), padding="SAME", plan=self.conv_plan)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.dense)(x))


class Classifier(nn.Module):
  """h(f(x)): ``encoder`` f and a linear head h over ``num_classes``."""
  encoder: nn.Module
  num_classes: int

  def setup(self):
    self.head = nn.Dense(self.num_classes, name="head")

  def encode(self, x: jax.Array) -> jax.Array:
    return self.encoder(x)

  def classify(self, features: jax.Array) -> jax.Array:
    return self.head(features)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"Classifier: x must be (batch, H, W, C), got shape {x.shape}.")
    return self.classify(self.encode(x))


CLASSIFIERS = {"mlp": MLPEncoder, "cnn": CNNEncoder}


def make_classifier(name: str, num_classes: int, **encoder_kwargs) -> Classifier:
  """Builds a classifier by name ("mlp" or "cnn")."""
  if name not in CLASSIFIERS:
    raise ValueError(f"Unknown classifier {name!r}; valid choices: {sorted(CLASSIFIERS)}.")
  return Classifier(encoder=CLASSIFIERS[name](**encoder_kwargs), num_classes=num_classes)
