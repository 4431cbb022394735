"""Deep Generative Replay (Shin et al., 2017) on class-incremental MNIST by default.

  python -m experiments.main --config experiments/configs/dgr.py:dataset=mnist --workdir runs/dgr

Schedule (per task): ``train.generator_steps`` WGAN-GP iterations (each n_critic=5
critic steps and one generator step), then ``train.solver_steps`` solver steps.
The reference PyTorch code uses 3000 generator and 1000 solver iterations per
task at batch 32; the default here is shorter so that 10 tasks fit in well under
an hour on a 2-core CPU (see README, Results).
"""

from experiments.configs.common import make_config


def defaults(c):
  c.model.generator_features = 32  # MeRGAN-sized DCGAN: 4x4x128 -> 8x8x64 -> 16x16x32 -> 32x32
  c.model.critic_features = 32
  c.dgr.replay_ratio = "balanced"  # r = 1/t: each class weighs the same in the solver loss
  c.dgr.targets = "hard"  # the reference code's argmax labels


def get_config(arg=None):
  c, args = make_config("dgr", arg, defaults)
  if args.get("demo"):  # a couple of minutes on a 2-core CPU: the fully connected GAN
    c.model.gan = "mlp"
    c.train.generator_steps = 300
    c.train.solver_steps = 500
  return c
