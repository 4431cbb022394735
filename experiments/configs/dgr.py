"""Deep Generative Replay (Shin et al., 2017) on class-incremental MNIST by default.

  python -m experiments.main --config experiments/configs/dgr.py:dataset=mnist --workdir runs/dgr
  python -m experiments.main --config experiments/configs/dgr.py:dataset=mnist,cpu --workdir runs/dgr_cpu

Schedule per task: ``train.generator_steps`` WGAN-GP iterations (each n_critic = 5
critic steps and one generator step), then ``train.solver_steps`` solver steps.

* Default: the reference PyTorch code's schedule, 3000 generator and 1000 solver
  iterations per task, with a DCGAN generator and critic at 32x32. Meant for an
  accelerator: on a 2-core CPU one iteration takes seconds (benchmarks/dgr_steps.py).
* ``cpu``: the README's results: a fully connected WGAN-GP (``model.gan = "mlp"``),
  1500 generator iterations per task; under an hour for 10 tasks on a 2-core CPU.
* ``demo``: a few minutes, for ``make demo``.

Deviations from the reference code, each a config value: batch 64 (reference 32),
z of 128 dimensions (100), 5x5 kernels and a 3-layer critic (4x4, 4 layers), images
in [-1, 1] with tanh (reference: [0, 1] with sigmoid), r = 1/t (reference 0.3 on
permuted MNIST; one class per task needs r to shrink as classes accumulate).
"""
from experiments.configs.common import make_config


def defaults(c):
  c.model.generator_features = 32  # MeRGAN-sized DCGAN: 4x4x128 -> 8x8x64 -> 16x16x32 -> 32x32
  c.model.critic_features = 32
  c.dgr.replay_ratio = "balanced"  # r = 1/t: each class weighs the same in the solver loss
  c.dgr.targets = "hard"  # the reference code's argmax labels
  c.train.generator_steps = 3000  # the reference code's schedule
  c.train.solver_steps = 1000


def get_config(arg=None):
  c, args = make_config("dgr", arg, defaults)
  if args.get("cpu"):  # the README's results: fully connected WGAN-GP, 1500 iterations per task
    c.model.gan = "mlp"
    c.model.generator_features = 64  # generator 128 -> 256 -> 512 -> 32x32, critic 512 -> 256
    c.model.critic_features = 64
    c.train.generator_steps = 1500
    c.train.solver_steps = 1000
  if args.get("demo"):  # a couple of minutes on a 2-core CPU: the fully connected GAN
    c.model.gan = "mlp"
    c.train.generator_steps = 300
    c.train.solver_steps = 500
  return c
