"""Times one MeRGAN iteration: n_critic = 5 critic steps with gradient penalty and AC-GAN loss,
then one generator step (with replay alignment or joint retraining when replaying). One JSON
line per (variant, replay) case.

  python -m benchmarks.mergan_step                         # official architecture, 32x32x1, batch 64
  python -m benchmarks.mergan_step --gan mlp --features 64 # the README's CPU schedule's GAN

Each case is compiled first (first_call_s), then timed over --steps calls of one jitted
iteration (K = 1), after a snapshot G_{t-1} exists (task 2) for "replay": true.
"""

import argparse
import json

import jax
import numpy as np

from benchmarks.timing import time_step
from experiments.configs import mergan
from gmcl.data.sampling import task_arrays
from gmcl.methods import build_method


def time_case(variant: str, gan: str, features: int, steps: int, batch_size: int) -> list[dict]:
  c = mergan.get_config(f"variant={variant}")
  c.model.gan, c.train.batch_size = gan, batch_size
  c.model.generator_features = c.model.critic_features = features
  c.mergan.oracle = False
  shape = (32, 32, 1)
  method = build_method("mergan", c, shape, 10)
  rng = np.random.default_rng(0)
  state = method.init(jax.random.PRNGKey(0))
  out = []
  for t in range(2):
    data = task_arrays(rng.uniform(-1, 1, (2048,) + shape).astype(np.float32),
                       np.full(2048, t, np.int32))
    state = method.begin_task(state, t, np.arange(10) <= t)
    if t == 1 or variant == "sft":
      state, compile_s, per_step = time_step(method.gan_step, state, data, jax.random.PRNGKey(t),
                                             steps)
      out.append({"case": f"mergan/{variant}", "gan": gan, "features": features, "image_size": 32,
                  "batch_size": batch_size, "n_critic": c.train.n_critic, "replay": t > 0,
                  "ms_per_iteration": 1e3 * per_step, "iterations_per_s": 1.0 / per_step,
                  "images_per_s": batch_size / per_step, "first_call_s": compile_s,
                  "device": str(jax.devices()[0].device_kind)})
    state = method.end_task(state)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", choices=["sft", "jr", "ra"], action="append")
  p.add_argument("--gan", choices=["mlp", "dcgan"], default="dcgan")
  p.add_argument("--features", type=int, default=32, help="generator and critic base features")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--batch_size", type=int, default=64)
  a = p.parse_args()
  for variant in a.variant or ["ra", "jr"]:
    for row in time_case(variant, a.gan, a.features, a.steps, a.batch_size):
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
