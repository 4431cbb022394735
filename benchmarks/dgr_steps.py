"""Times DGR's training steps: one JSON line per (GAN architecture, image size, phase, replay).

  python -m benchmarks.dgr_steps                       # MLP and DCGAN GANs at 28 and 32 px
  python -m benchmarks.dgr_steps --gan mlp --size 32 --steps 20

A generator "step" is one WGAN-GP iteration (n_critic critic updates and one generator
update); "replay" means a snapshot G_{t-1}, C_{t-1} exists (task 2 onwards). Each case
is compiled first, then timed over --steps calls of one jitted step (K = 1).
"""

import argparse
import json

import jax
import numpy as np

from benchmarks.timing import time_step
from experiments.configs import dgr
from gmcl.data.sampling import task_arrays
from gmcl.methods import build_method


def time_case(gan: str, size: int, steps: int, batch_size: int, kernel_size: int,
              critic_layers: int, features: int) -> list[dict]:
  c = dgr.get_config("")
  c.model.gan, c.data.pad_to, c.train.batch_size = gan, size, batch_size
  c.model.generator_features = c.model.critic_features = features
  c.model.kernel_size, c.model.critic_layers = kernel_size, critic_layers
  shape = (size, size, 1)
  method = build_method("dgr", c, shape, 10)
  rng = np.random.default_rng(0)
  data = task_arrays(rng.uniform(-1, 1, (2048,) + shape).astype(np.float32),
                     np.zeros(2048, np.int32))
  state = method.init(jax.random.PRNGKey(0))
  out = []
  for t in range(2):
    state = method.begin_task(state, t, np.arange(10) <= t)
    for phase in method.phases():
      state, compile_s, per_step = time_step(phase.step, state, data, jax.random.PRNGKey(t), steps)
      out.append({"case": f"dgr/{phase.name}", "gan": gan, "image_size": size,
                  "kernel_size": kernel_size, "critic_layers": critic_layers, "features": features,
                  "batch_size": batch_size, "replay": t > 0, "ms_per_step": 1e3 * per_step,
                  "steps_per_s": 1.0 / per_step, "first_call_s": compile_s,
                  "device": str(jax.devices()[0].device_kind)})
    state = method.end_task(state)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--gan", choices=["mlp", "dcgan"], action="append")
  p.add_argument("--size", type=int, choices=[28, 32], action="append")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--kernel_size", type=int, default=5)
  p.add_argument("--critic_layers", type=int, default=3)
  p.add_argument("--features", type=int, default=32, help="generator and critic base features")
  a = p.parse_args()
  for gan in a.gan or ["mlp", "dcgan"]:
    for size in a.size or [28, 32]:
      for row in time_case(gan, size, a.steps, a.batch_size, a.kernel_size, a.critic_layers,
                           a.features):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
