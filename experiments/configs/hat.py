"""HAT (Serra et al., ICML 2018) on a classifier, task-incremental split MNIST by default.

  python -m experiments.main --config experiments/configs/hat.py:dataset=mnist --workdir runs/hat

One head per task (5 tasks of 2 classes), the task id given at test time; s_max 400,
c = 0.75, SGD lr 0.05, gradient norm clipped at 10000 (the official code's values).
MLP 1024 -> 400 -> 400 with gated hidden units; 2000 steps of batch 64 per task
(about 10 epochs of a task's ~12,000 images; the official code trains up to 200
epochs with early stopping and learning-rate decay).
"""
from experiments.configs.common import make_config


def defaults(c):
  c.data.protocol = "split"
  c.data.classes_per_task = 2
  c.data.pad_to = 0  # 28x28, as HAT's MNIST
  c.data.value_range = (0.0, 1.0)
  c.train.solver_steps = 2000
  c.hat.max_tasks = 10


def get_config(arg=None):
  c, args = make_config("hat", arg, defaults)
  if args.get("demo"):
    c.train.solver_steps = 500
  return c
