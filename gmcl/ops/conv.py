"""2-D convolutions whose every derivative order runs on an implementation chosen per direction.

A convolution layer is a bilinear map ``F(x, w)``. Reverse-mode autodiff needs two more
bilinear maps, its transposes: ``Gx(dy, w)`` (the input gradient) and ``Gw(x, dy)`` (the
weight gradient). These three are closed under differentiation:

* ``F``:  d/dx -> ``Gx(dy, w)``,   d/dw -> ``Gw(x, dy)``;
* ``Gx``: d/d(dy) -> ``F(c, w)``,  d/dw -> ``Gw(c, dy)``;
* ``Gw``: d/dx -> ``Gx(dy, c)``,   d/d(dy) -> ``F(x, c)``

(``c`` the incoming cotangent). Written as three ``jax.custom_vjp`` functions that call each
other, every derivative order -- the gradient penalty's second derivative included -- runs
on the implementation chosen for its direction, instead of on whatever form XLA's autodiff
of the native convolution lands on. On XLA:CPU that form is a slow generic path for
convolutions whose spatial input is smaller than the kernel (about 6.5 GFLOP/s, against
65-200 GFLOP/s otherwise; see BENCHMARKS.md).

Implementations of ``F`` (each direction takes the transpose of one of them):

* ``native``: ``lax.conv_general_dilated`` (and its autodiff transposes);
* ``patches``: ``k*k`` shifted, strided slices of the padded (dilated) input concatenated
  on channels, then one matrix multiply: every FLOP runs in GEMM;
* ``subpixel`` (transposed convolutions, i.e. input dilation ``d > 1``, whose output is
  ``d`` times the input): the ``d*d`` output phases as one stride-1 convolution with a
  ``(T, T, C_in, d*d*C_out)`` kernel gathered from ``w`` (``T = ceil(k/d)`` taps), then
  depth-to-space. 1.44x the multiplications for k=5, d=2, but a dense op;
* ``subpixel_patches``: the same, its inner convolution as ``patches``;
* ``space_to_depth`` (strided convolutions): the s x s blocks of the padded input as channels, then a
  stride-1 convolution with ceil(k/s) taps -- the mirror of ``subpixel``. Measured slower than native
  or patches in every direction of MeRGAN's critic on XLA:CPU (BENCHMARKS.md), so no plan picks it.

All are the same linear maps, so they agree to float32 rounding (tests/test_conv.py).
``plan="native"`` reproduces ``flax.linen.Conv``/``ConvTranspose`` exactly; forward-mode
autodiff (``jax.jvp``) is not defined through the custom VJPs, so use ``native`` for
forward-over-reverse code.
"""

from __future__ import annotations

import dataclasses
import math
import os
from functools import partial
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

IMPLEMENTATIONS = ("native", "patches", "subpixel", "subpixel_patches", "space_to_depth")
DIRECTIONS = ("forward", "input_grad", "weight_grad")
_DN = ("NHWC", "HWIO", "NHWC")

Padding = tuple[tuple[int, int], tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
  """One convolution's static shape: ``y = conv(pad(dilate(x, d)), w, stride)``, NHWC / HWIO.

  ``in_hw`` is the input's spatial size (needed to transpose a strided convolution);
  ``padding`` is applied to the dilated input and may be negative, as in ``lax.pad``.
  """
  in_hw: tuple[int, int]
  kernel_hw: tuple[int, int]
  stride: int = 1
  dilation: int = 1
  padding: Padding = ((0, 0), (0, 0))

  @property
  def out_hw(self) -> tuple[int, int]:
    return tuple(((n - 1) * self.dilation + 1 + lo + hi - k) // self.stride + 1
                 for n, k, (lo, hi) in zip(self.in_hw, self.kernel_hw, self.padding))

  @property
  def transposed(self) -> bool:
    return self.dilation > 1

  def space_to_depth_ok(self) -> bool:
    """Whether the space-to-depth form applies: a strided convolution (stride > 1, no input dilation)."""
    return self.stride > 1 and self.dilation == 1

  def subpixel_ok(self) -> bool:
    """Whether the sub-pixel form applies: input dilation d > 1, stride 1, output d x input."""
    return (self.dilation > 1 and self.stride == 1
            and self.out_hw == tuple(self.dilation * n for n in self.in_hw))


@dataclasses.dataclass(frozen=True)
class Plan:
  """The implementation of each direction: forward ``F``, input gradient ``Gx``, weight gradient ``Gw``."""
  forward: str = "native"
  input_grad: str = "native"
  weight_grad: str = "native"

  def __post_init__(self):
    for d in DIRECTIONS:
      if getattr(self, d) not in IMPLEMENTATIONS:
        raise ValueError(f"conv Plan: {d}={getattr(self, d)!r}; valid: {list(IMPLEMENTATIONS)}.")


NATIVE = Plan()


# -- flax-compatible geometries ----------------------------------------------------------------------

def _same_conv_padding(n: int, k: int, s: int) -> tuple[int, int]:
  out = -(-n // s)
  total = max((out - 1) * s + k - n, 0)
  return total // 2, total - total // 2


def _same_transpose_padding(k: int, s: int) -> tuple[int, int]:
  """lax.conv_transpose's "SAME" padding of the dilated input (what flax.linen.ConvTranspose uses)."""
  pad_len = k + s - 2
  lo = k - 1 if s > k - 1 else int(math.ceil(pad_len / 2))
  return lo, pad_len - lo


def conv_geometry(in_hw, kernel_hw, stride: int = 1, padding: Union[str, Padding] = "SAME") -> ConvGeometry:
  """The geometry of ``flax.linen.Conv(strides=stride, padding=padding)`` ("SAME", "VALID" or explicit)."""
  if isinstance(padding, str):
    if padding == "SAME":
      padding = tuple(_same_conv_padding(n, k, stride) for n, k in zip(in_hw, kernel_hw))
    elif padding == "VALID":
      padding = ((0, 0), (0, 0))
    else:
      raise ValueError(f"conv_geometry: padding={padding!r}; valid: 'SAME', 'VALID' or ((lo, hi), (lo, hi)).")
  return ConvGeometry(tuple(in_hw), tuple(kernel_hw), stride, 1, tuple(map(tuple, padding)))


def conv_transpose_geometry(in_hw, kernel_hw, stride: int,
                            padding: Union[str, Padding] = "SAME") -> ConvGeometry:
  """The geometry of ``flax.linen.ConvTranspose(strides=stride, padding=padding)`` (no kernel flip)."""
  if isinstance(padding, str):
    if padding == "SAME":
      padding = tuple(_same_transpose_padding(k, stride) for k in kernel_hw)
    elif padding == "VALID":
      padding = tuple((k - 1, k - 1 + max(stride - k, 0)) for k in kernel_hw)
    else:
      raise ValueError(f"conv_transpose_geometry: padding={padding!r}; valid: 'SAME', 'VALID' or "
                       "((lo, hi), (lo, hi)).")
  return ConvGeometry(tuple(in_hw), tuple(kernel_hw), 1, stride, tuple(map(tuple, padding)))


def torch_conv_transpose_geometry(in_hw, kernel: int, stride: int, padding: int) -> ConvGeometry:
  """``torch.nn.ConvTranspose2d(kernel, stride, padding)`` with the kernel stored HWIO, unflipped
  as torch stores it flipped (the convention of gmcl.models.dgm_generator)."""
  p = kernel - 1 - padding
  return ConvGeometry(tuple(in_hw), (kernel, kernel), 1, stride, ((p, p), (p, p)))


# -- the implementations of F ---------------------------------------------------------------------------

def _native(g: ConvGeometry, x, w):
  return lax.conv_general_dilated(x, w, (g.stride, g.stride), g.padding,
                                  lhs_dilation=(g.dilation, g.dilation), dimension_numbers=_DN)


def _patches(g: ConvGeometry, x, w):
  kh, kw, cin, cout = w.shape
  d, s = g.dilation, g.stride
  xp = lax.pad(x, jnp.zeros((), x.dtype),
               [(0, 0, 0), (*g.padding[0], d - 1), (*g.padding[1], d - 1), (0, 0, 0)])
  oh, ow = g.out_hw
  b = x.shape[0]
  cols = [lax.slice(xp, (0, i, j, 0), (b, i + s * (oh - 1) + 1, j + s * (ow - 1) + 1, cin),
                    (1, s, s, 1))
          for i in range(kh) for j in range(kw)]
  p = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
  y = p.reshape(b * oh * ow, kh * kw * cin) @ w.reshape(kh * kw * cin, cout)
  return y.reshape(b, oh, ow, cout)


def _subpixel_taps(n_k: int, d: int, lo: int):
  """For one axis: (first tap offset, index array (T, d) into the kernel, -1 where no tap)."""
  # Output 2-D index o = d*m + r reads x[m + delta] through kernel tap k = d*delta - r + lo.
  pairs = [((r + k - lo) // d, r, k) for r in range(d) for k in range(n_k) if (r + k - lo) % d == 0]
  deltas = [p[0] for p in pairs]
  first, taps = min(deltas), max(deltas) - min(deltas) + 1
  idx = np.full((taps, d), -1, np.int32)
  for delta, r, k in pairs:
    idx[delta - first, r] = k
  return first, idx


def subpixel_kernel(g: ConvGeometry, w):
  """The stride-1 kernel ``(T_h, T_w, C_in, d*d*C_out)`` whose outputs are the d*d phases of ``w``."""
  kh, kw, cin, cout = w.shape
  d = g.dilation
  (fh, ih), (fw, iw) = (_subpixel_taps(kh, d, g.padding[0][0]), _subpixel_taps(kw, d, g.padding[1][0]))
  wz = jnp.pad(w, ((0, 1), (0, 1), (0, 0), (0, 0)))  # index -1 -> the zero row/column
  sub = wz[ih[:, None, :, None], iw[None, :, None, :]]  # (T_h, T_w, d, d, C_in, C_out)
  sub = jnp.transpose(sub, (0, 1, 4, 2, 3, 5))
  return sub.reshape(ih.shape[0], iw.shape[0], cin, d * d * cout), (fh, fw)


def _subpixel(g: ConvGeometry, x, w, inner=None):
  if not g.subpixel_ok():
    raise ValueError(f"conv: the sub-pixel form needs input dilation > 1, stride 1 and an output "
                     f"dilation x the input; got {g}.")
  b, h, wd, _ = x.shape
  d, cout = g.dilation, w.shape[-1]
  sub, (fh, fw) = subpixel_kernel(g, w)
  th, tw = sub.shape[:2]
  inner_g = ConvGeometry((h, wd), (th, tw), 1, 1, ((-fh, fh + th - 1), (-fw, fw + tw - 1)))
  y = (inner or _native)(inner_g, x, sub)  # (B, H, W, d*d*C_out)
  y = y.reshape(b, h, wd, d, d, cout).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(b, h * d, wd * d, cout)


def _space_to_depth(g: ConvGeometry, x, w):
  """A stride-s convolution as a stride-1 one with ceil(k/s) taps over the s x s blocks of the padded input."""
  if not g.space_to_depth_ok():
    raise ValueError(f"conv: the space-to-depth form needs stride > 1 and no input dilation; got {g}.")
  s = g.stride
  kh, kw, cin, cout = w.shape
  th, tw = -(-kh // s), -(-kw // s)
  oh, ow = g.out_hw
  b = x.shape[0]
  # Pad (or crop) the input to exactly s * (out + taps - 1) rows and columns.
  hi = [s * (o + t - 1) - (n + lo) for o, t, n, (lo, _) in zip((oh, ow), (th, tw), g.in_hw, g.padding)]
  xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (g.padding[0][0], hi[0], 0),
                                          (g.padding[1][0], hi[1], 0), (0, 0, 0)])
  hb, wb = oh + th - 1, ow + tw - 1
  xs = xp.reshape(b, hb, s, wb, s, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, hb, wb, s * s * cin)
  wz = jnp.pad(w, ((0, th * s - kh), (0, tw * s - kw), (0, 0), (0, 0)))
  ws = wz.reshape(th, s, tw, s, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(th, tw, s * s * cin, cout)
  inner = ConvGeometry((hb, wb), (th, tw), 1, 1, ((0, 0), (0, 0)))
  return _native(inner, xs, ws)


_IMPLS = {"native": _native, "patches": _patches, "subpixel": _subpixel,
          "subpixel_patches": partial(_subpixel, inner=_patches), "space_to_depth": _space_to_depth}


def _impl(name: str, g: ConvGeometry):
  if (name.startswith("subpixel") and not g.subpixel_ok()) or \
      (name == "space_to_depth" and not g.space_to_depth_ok()):
    name = "native"  # not applicable to this geometry: the native form is the same map
  return partial(_IMPLS[name], g)


# -- the three closed directions ------------------------------------------------------------------------

def _x_struct(g: ConvGeometry, batch: int, w, dtype):
  return jax.ShapeDtypeStruct((batch, *g.in_hw, w.shape[2]), dtype)


def _gx_raw(g, plan, dy, w):
  f = _impl(plan.input_grad, g)
  return jax.linear_transpose(lambda x: f(x, w), _x_struct(g, dy.shape[0], w, dy.dtype))(dy)[0]


def _gw_raw(g, plan, x, dy, w_shape):
  f = _impl(plan.weight_grad, g)
  return jax.linear_transpose(lambda w: f(x, w), jax.ShapeDtypeStruct(w_shape, x.dtype))(dy)[0]


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _conv_f(g, plan, x, w):
  return _impl(plan.forward, g)(x, w)


def _conv_f_fwd(g, plan, x, w):
  return _conv_f(g, plan, x, w), (x, w)


def _conv_f_bwd(g, plan, res, dy):
  x, w = res
  return _conv_gx(g, plan, dy, w), _conv_gw(g, plan, x, dy, w.shape)


_conv_f.defvjp(_conv_f_fwd, _conv_f_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _conv_gx(g, plan, dy, w):
  return _gx_raw(g, plan, dy, w)


def _conv_gx_fwd(g, plan, dy, w):
  return _conv_gx(g, plan, dy, w), (dy, w)


def _conv_gx_bwd(g, plan, res, c):
  dy, w = res
  return _conv_f(g, plan, c, w), _conv_gw(g, plan, c, dy, w.shape)


_conv_gx.defvjp(_conv_gx_fwd, _conv_gx_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 4))
def _conv_gw(g, plan, x, dy, w_shape):
  return _gw_raw(g, plan, x, dy, w_shape)


def _conv_gw_fwd(g, plan, x, dy, w_shape):
  return _conv_gw(g, plan, x, dy, w_shape), (x, dy)


def _conv_gw_bwd(g, plan, w_shape, res, c):
  x, dy = res
  return _conv_gx(g, plan, dy, c), _conv_f(g, plan, x, c)


_conv_gw.defvjp(_conv_gw_fwd, _conv_gw_bwd)


def conv(x: jax.Array, w: jax.Array, geometry: ConvGeometry, plan: Optional[Plan] = None) -> jax.Array:
  """``F(x, w)`` for ``x`` (B, H, W, C_in) and ``w`` (k_h, k_w, C_in, C_out) under ``plan``.

  ``plan=None`` or the all-native plan is the plain ``lax.conv_general_dilated`` with JAX's
  own autodiff (forward mode included); any other plan goes through the three custom VJPs.
  """
  if x.ndim != 4 or w.ndim != 4:
    raise ValueError(f"conv: x must be (B, H, W, C) and w (kh, kw, C_in, C_out); got shapes "
                     f"{x.shape} and {w.shape}.")
  if tuple(x.shape[1:3]) != geometry.in_hw or x.shape[3] != w.shape[2] \
      or tuple(w.shape[:2]) != geometry.kernel_hw:
    raise ValueError(f"conv: x {x.shape} and w {w.shape} do not match the geometry {geometry}.")
  if plan is None or plan == NATIVE:
    return _native(geometry, x, w)
  return _conv_f(geometry, plan, x, w)


# -- the per-backend choice ------------------------------------------------------------------------------

def cpu_plan(g: ConvGeometry) -> Plan:
  """The implementation per direction that is fastest on XLA:CPU for this geometry.

  Measured by ``python -m benchmarks.conv_layers`` (BENCHMARKS.md): XLA:CPU's native
  convolution is fast unless the convolution it emits has a spatial input smaller than
  its kernel -- the transposed convolutions' forward and weight gradient on small inputs,
  and a strided convolution's input gradient on small outputs -- where it falls to a
  generic loop ~10-20x slower. Those directions go to GEMM-based forms. One more rule
  comes from profiling whole iterations (``python -m benchmarks.profile_ops``), not from
  single layers: a strided convolution's weight gradient with a k..2k-1 output (below).
  """
  k = max(g.kernel_hw)
  small_in = min(g.in_hw) < 2 * k
  small_out = min(g.out_hw) < k
  if g.transposed:
    if not g.subpixel_ok():
      return NATIVE  # the patches of a dilated input are mostly zeros: slower than native
    return Plan(forward="subpixel", input_grad="native",
                weight_grad="subpixel_patches" if small_in else "native")
  # A strided convolution's weight gradient with a k..2k-1 output (MeRGAN's critic 16x16 -> 8x8):
  # inside the gradient penalty's second derivative XLA emits it as a convolution over a
  # dilated 8x8 window that runs at ~5 GFLOP/s (90 ms per critic step, BENCHMARKS.md); as
  # patches it is one matrix multiply.
  mid_out = g.stride > 1 and k <= min(g.out_hw) < 2 * k
  return Plan(forward="native", input_grad="patches" if small_out else "native",
              weight_grad="patches" if mid_out else "native")


PLANS = ("auto", "table", "measured", "native", "cpu")  # and "file:PATH" (gmcl.ops.conv_tune)


def check_plan_name(name) -> str:
  """``name`` if it names a plan (:data:`PLANS` or ``file:PATH`` of an existing file), else a
  ValueError naming the valid ones."""
  if isinstance(name, str) and name.startswith("file:"):
    if not os.path.isfile(name[len("file:"):]):
      raise ValueError(f"conv plan {name!r}: no such file; 'file:PATH' pins a conv plan file written "
                       "by model.conv_plan='measured' (python -m benchmarks.conv_layers --show_plan).")
    return name
  if name not in PLANS:
    raise ValueError(f"conv plan {name!r}; valid: {list(PLANS)}, 'file:PATH' or a gmcl.ops.conv.Plan.")
  return name


def resolve_plan(name: Union[str, Plan], g: ConvGeometry, x=None, w=None) -> Plan:
  """A Plan from a name: ``native``; ``table`` (or ``cpu``, its older name: :func:`cpu_plan`'s
  fixed rule); ``auto``: ``table`` on the CPU backend, ``native`` on GPU and TPU, where XLA's own
  convolutions are the fast ones; ``measured``: on the CPU backend each direction's fastest form
  measured on this machine for the shapes of ``x`` and ``w`` (:mod:`gmcl.ops.conv_tune`; the fixed
  rule without them), ``native`` elsewhere; ``file:PATH``: the plans of a pinned file."""
  if isinstance(name, Plan):
    return name
  check_plan_name(name)
  if name == "native":
    return NATIVE
  if name in ("auto", "measured") and jax.default_backend() != "cpu":
    return NATIVE
  if name in ("table", "cpu", "auto"):
    return cpu_plan(g)
  if x is None or w is None:
    if name != "measured":
      raise ValueError(f"conv plan {name!r} needs the convolution's arrays (resolve_plan(name, g, x, w)).")
    return cpu_plan(g)
  from gmcl.ops import conv_tune  # pylint: disable=import-outside-toplevel
  return conv_tune.plan_for(name, g, x, w)


def real_taps(n: int, k: int, out: int, stride: int, pad_lo: int, lhs_dilation: int = 1,
              rhs_dilation: int = 1) -> int:
  """Along one axis: the (output position, kernel tap) pairs that land on real input -- not on
  padding or on the holes of a dilated input."""
  pos = np.arange(out)[:, None] * stride + np.arange(k)[None, :] * rhs_dilation - pad_lo
  return int(((pos >= 0) & (pos <= (n - 1) * lhs_dilation) & (pos % lhs_dilation == 0)).sum())


def flops(g: ConvGeometry, batch: int, c_in: int, c_out: int) -> int:
  """Multiply-adds x 2 of the convolution's true work (taps that meet input, not dilation zeros)."""
  total = 1
  for n, k, (lo, _), o in zip(g.in_hw, g.kernel_hw, g.padding, g.out_hw):
    total *= real_taps(n, k, o, g.stride, lo, g.dilation)
  return 2 * batch * c_in * c_out * total
