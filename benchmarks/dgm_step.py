"""Times one DGM iteration at task t: t + 1 classification steps of the critic on real and replayed
data (t past tasks replayed by the masked generator), one WGAN-GP critic step and one generator
step. One JSON line per (variant, task) case.

  python -m benchmarks.dgm_step                    # official: conv generator, batch-norm critic
  python -m benchmarks.dgm_step --cpu              # the README's CPU schedule (DGMw: conv generator and critic;
                                                   # DGMa: dense generator, conv critic)
  python -m benchmarks.dgm_step --tasks 0 4 9      # at tasks 1, 5 and 10
  python -m benchmarks.dgm_step --cpu --critic mlp     # the CPU schedule with its earlier MLP critic

Earlier tasks are begun and ended without training. By default the network does not grow
(the initial widths: a lower bound on the cost at task t); with --growth their untrained masks
(zero embeddings: everything reserved) grow it by its whole width per task, an upper bound on
what a trained run reaches. Each case is compiled first (first_call_s), then timed over
--steps calls of one jitted iteration.
"""

import argparse
import json

import jax
import numpy as np

from benchmarks.timing import time_step
from experiments.configs import dgm as dgm_config
from gmcl.models import dgm_generator
from gmcl.data.sampling import task_arrays
from gmcl.methods import build_method


def time_cases(variant: str, cpu: bool, tasks: list[int], steps: int, growth: bool,
               critic: str = "") -> list[dict]:
  c = dgm_config.get_config(f"variant={variant}" + (",cpu" if cpu else ""))
  c.dgm.growth = growth
  if critic == "dcgan" and c.dgm.critic != "dcgan":  # the official critic: 32, 64, 128 features
    c.dgm.critic, c.model.critic_features = "dcgan", dgm_config.get_config(f"variant={variant}").model.critic_features
  elif critic == "mlp" and c.dgm.critic != "mlp":  # the demo schedule's MLP critic: 512 -> 256
    demo = dgm_config.get_config(f"variant={variant},demo")
    c.dgm.critic, c.model.critic_features = "mlp", demo.model.critic_features
  shape = (32, 32, 1)
  method = build_method("dgm", c, shape, 10)
  rng = np.random.default_rng(0)
  state = method.init(jax.random.PRNGKey(0))
  out = []
  for t in range(max(tasks) + 1):
    state = method.begin_task(state, t, np.arange(10) <= t)
    if t in tasks:
      data = task_arrays(rng.uniform(-1, 1, (6000,) + shape).astype(np.float32),
                         np.full(6000, t, np.int32))
      state, compile_s, per_step = time_step(method.gan_step, state, data, jax.random.PRNGKey(t), steps)
      out.append({"case": f"dgm/{variant}", "architecture": c.dgm.architecture, "critic": c.dgm.critic,
                  "task": t + 1, "growth": growth, "widths": list(dgm_generator.current_widths(state.generator.params)),
                  "batch_size": c.train.batch_size, "ms_per_iteration": 1e3 * per_step,
                  "iterations_per_s": 1.0 / per_step, "first_call_s": compile_s,
                  "device": str(jax.devices()[0].device_kind)})
    state = method.end_task(state)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", choices=["dgmw", "dgma"], action="append")
  p.add_argument("--cpu", action="store_true", help="the `cpu` schedule's networks")
  p.add_argument("--tasks", type=int, nargs="+", default=[0, 4, 9], help="0-based task indices")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--growth", action="store_true")
  p.add_argument("--critic", choices=["dcgan", "mlp"], default="",
                 help="override the schedule's critic (dcgan: the official conv critic, 32/64/128 features)")
  a = p.parse_args()
  for variant in a.variant or ["dgmw", "dgma"]:
    for row in time_cases(variant, a.cpu, a.tasks, a.steps, a.growth, a.critic):
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
