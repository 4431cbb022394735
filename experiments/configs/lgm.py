"""Latent generative memory (lgm): replay of features, not images; class-incremental MNIST by default.

  python -m experiments.main --config experiments/configs/lgm.py:dataset=mnist,cpu --workdir runs/lgm
  python -m experiments.main --config experiments/configs/lgm.py:dataset=mnist,cpu,variant=hat-bridge \
      --workdir runs/lgm_hat_bridge

``variant=PROTECTION-ENCODER`` picks the two answers to the slides' questions
(gmcl.methods.lgm): PROTECTION in ra | hat (Q1: how the latent generator keeps old
classes), ENCODER in train | frozen | prototype | bridge (Q2: what the encoder does after
task 1). Default ``ra-train``.

Schedule per task: ``train.solver_steps`` joint steps, each one classifier step (Adam 1e-3)
and ``lgm.gan_iterations`` WGAN-GP iterations of the latent generator (5 critic steps, lambda
10, Adam(1e-4, 0.5, 0.9)). No public code exists; the settings are this library's choices:
DGR's MLP solver (400, 400) on 32x32 images in [-1, 1]; G and critic with two hidden layers
of 256; z of 32 dimensions; lambda_RA = 1 (features are O(1), images' l2 sum is not: MeRGAN's
1e-3 is for pixels); HAT's s_max 400 and c 0.75 on the latent generator's masks.

* Default and ``cpu``: 2000 joint steps per task (minutes per run on a 2-core CPU).
* ``demo``: 300 joint steps per task.
"""
from experiments.configs.common import make_config


def defaults(c):
  c.train.solver_steps = 2000


def get_config(arg=None):
  c, args = make_config("lgm", arg, defaults)
  if "variant" in args:
    protection, _, encoder = str(args["variant"]).partition("-")
    c.lgm.protection = protection
    c.lgm.encoder = encoder or c.lgm.encoder
  if args.get("demo"):
    c.train.solver_steps = 300
  return c
