"""Conv and ConvTranspose layers with a per-backend choice of implementation (gmcl.ops.conv).

Drop-in for ``flax.linen.Conv`` / ``flax.linen.ConvTranspose`` with square strides, no
kernel dilation, groups 1 and NHWC inputs: the same parameter names, shapes and
initialisers (so checkpoints and initial values are the same whatever the plan), and the
same function to float32 rounding. ``plan`` picks the implementation of the forward pass,
the input gradient and the weight gradient: ``"auto"`` (the default: on XLA:CPU each direction's
fastest implementation, measured on the machine for the layer's shapes, gmcl.ops.conv_tune;
native on GPU and TPU), ``"table"`` (the fixed rule gmcl.ops.conv.cpu_plan; ``"cpu"`` its older
name), ``"native"``, ``"file:PATH"`` (a pinned plan file) or a :class:`gmcl.ops.conv.Plan`.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import flax.linen as nn
import jax
from flax.linen.dtypes import promote_dtype

from gmcl.ops import conv as conv_ops

_default_kernel_init = nn.initializers.lecun_normal()


class _ConvBase(nn.Module):
  features: int
  kernel_size: Sequence[int]
  strides: Union[int, Sequence[int]] = 1
  padding: Any = "SAME"
  use_bias: bool = True
  plan: Union[str, conv_ops.Plan] = "auto"
  kernel_init: Any = _default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()

  def _stride(self) -> int:
    s = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    if len(s) != 2 or s[0] != s[1]:
      raise ValueError(f"{type(self).__name__}: strides={self.strides!r}; only equal 2-D strides are "
                       "supported (use flax.linen for others).")
    return s[0]

  def _apply(self, x, geometry_fn):
    if x.ndim != 4:
      raise ValueError(f"{type(self).__name__}: x must be (batch, H, W, C), got shape {x.shape}.")
    k = tuple(self.kernel_size)
    kernel = self.param("kernel", self.kernel_init, k + (x.shape[-1], self.features), jax.numpy.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jax.numpy.float32) if self.use_bias \
        else None
    x, kernel, bias = promote_dtype(x, kernel, bias)
    g = geometry_fn(tuple(x.shape[1:3]), k, self._stride(), self.padding)
    y = conv_ops.conv(x, kernel, g, conv_ops.resolve_plan(self.plan, g, x, kernel))
    return y + bias if bias is not None else y


class Conv(_ConvBase):
  """``flax.linen.Conv`` (2-D, NHWC) with a choice of implementation per direction."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self._apply(x, conv_ops.conv_geometry)


class ConvTranspose(_ConvBase):
  """``flax.linen.ConvTranspose`` (2-D, NHWC, ``transpose_kernel=False``) with a choice of
  implementation per direction."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self._apply(x, conv_ops.conv_transpose_geometry)
