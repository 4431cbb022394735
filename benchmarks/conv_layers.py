"""Times each direction of each convolution of the MeRGAN and DGM GANs under every implementation.

  python -m benchmarks.conv_layers                 # MeRGAN's layers, batch 64
  python -m benchmarks.conv_layers --net dgm       # DGM's official generator (ngf 6 and 20)
  python -m benchmarks.conv_layers --fusions xla   # compiled with XLA's default library fusions
  python -m benchmarks.conv_layers --show_plan     # this machine's measured plans (model.conv_plan=measured)
  python -m benchmarks.conv_layers --tune --net dgm  # measure the net's layers into that cache, then show it

One JSON line per (layer, direction, implementation): milliseconds per call (median of
--repeats rounds, each --calls calls, implementations alternating within a round), GFLOP/s
of the layer's true work, and what gmcl.ops.conv.cpu_plan picks. This is what cpu_plan's
rule was read from.
"""

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from gmcl import xla
from gmcl.ops import conv as C
from gmcl.ops import conv_tune

MERGAN = [  # (name, geometry, c_in, c_out)
    ("G convT 4->8", C.conv_transpose_geometry((4, 4), (5, 5), 2), 128, 64),
    ("G convT 8->16", C.conv_transpose_geometry((8, 8), (5, 5), 2), 64, 32),
    ("G convT 16->32", C.conv_transpose_geometry((16, 16), (5, 5), 2), 32, 1),
    ("D conv 32->16", C.conv_geometry((32, 32), (5, 5), 2), 1, 32),
    ("D conv 16->8", C.conv_geometry((16, 16), (5, 5), 2), 32, 64),
    ("D conv 8->4", C.conv_geometry((8, 8), (5, 5), 2), 64, 128),
]


def dgm_layers(ngf: int):
  return [
      (f"DGM ngf{ngf} convT 4->8", C.torch_conv_transpose_geometry((4, 4), 4, 2, 1), 4 * ngf, 2 * ngf),
      (f"DGM ngf{ngf} convT 8->16", C.torch_conv_transpose_geometry((8, 8), 4, 2, 1), 2 * ngf, ngf),
      (f"DGM ngf{ngf} convT 16->32", C.torch_conv_transpose_geometry((16, 16), 4, 2, 1), ngf, 1),
  ]


def direction_fns(g, impl: str, w_shape, fusions: str = "dot"):
  plan = C.Plan(impl, impl, impl)
  f = C._impl(impl, g)
  jit = functools.partial(jax.jit, compiler_options=xla.compiler_options(fusions, has_conv=True))
  return {"forward": jit(lambda x, w, dy: f(x, w)),
          "input_grad": jit(lambda x, w, dy: C._gx_raw(g, plan, dy, w)),
          "weight_grad": jit(lambda x, w, dy: C._gw_raw(g, plan, x, dy, w_shape))}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--net", choices=["mergan", "dgm"], default="mergan")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--calls", type=int, default=20)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--layers", nargs="*", default=[], help="substrings of layer names (default all)")
  p.add_argument("--fusions", choices=xla.XLA_CPU_FUSIONS, default="auto",
                 help="XLA:CPU library fusions (gmcl.xla; auto = dot, as for any program that convolves)")
  p.add_argument("--show_plan", nargs="?", const="", default=None, metavar="FILE",
                 help="print the measured plans of this machine (or of a pinned FILE) and stop")
  p.add_argument("--tune", action="store_true",
                 help="measure the net's layers at --batch under the dot and xla fusions into this "
                      "machine's cache (gmcl.ops.conv_tune; what model.conv_plan=measured reads), then show it")
  a = p.parse_args()
  layers = MERGAN if a.net == "mergan" else dgm_layers(6) + dgm_layers(20)
  if a.tune:
    for name, g, cin, cout in layers:
      if not a.layers or any(s in name for s in a.layers):
        for fusions in ("dot", "xla"):
          conv_tune.timings(g, (a.batch, *g.in_hw, cin), (*g.kernel_hw, cin, cout), "float32", fusions)
  if a.tune or a.show_plan is not None:
    print(conv_tune.show(a.show_plan or None))
    return
  rng = np.random.default_rng(0)
  for name, g, cin, cout in layers:
    if a.layers and not any(s in name for s in a.layers):
      continue
    x = jnp.asarray(rng.normal(size=(a.batch, *g.in_hw, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*g.kernel_hw, cin, cout)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(a.batch, *g.out_hw, cout)), jnp.float32)
    impls = conv_tune.candidates(g)
    fns = {i: direction_fns(g, i, w.shape, a.fusions) for i in impls}
    chosen = C.cpu_plan(g)
    gflop = C.flops(g, a.batch, cin, cout) / 1e9
    for direction in C.DIRECTIONS:
      times = {i: [] for i in impls}
      for i in impls:
        jax.block_until_ready(fns[i][direction](x, w, dy))
      for _ in range(a.repeats):
        for i in impls:
          t0 = time.perf_counter()
          for _ in range(a.calls):
            out = fns[i][direction](x, w, dy)
          jax.block_until_ready(out)
          times[i].append((time.perf_counter() - t0) / a.calls)
      for i in impls:
        ms = 1e3 * statistics.median(times[i])
        print(json.dumps({"layer": name, "direction": direction, "impl": i, "ms": round(ms, 3),
                          "gflop_per_s": round(gflop / ms * 1e3, 1),
                          "chosen": getattr(chosen, direction) == i, "fusions": a.fusions,
                          "device": jax.devices()[0].device_kind}), flush=True)


if __name__ == "__main__":
  main()
