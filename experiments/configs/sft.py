"""Sequential fine-tuning: the lower bound (it forgets).

  python -m experiments.main --config experiments/configs/sft.py:dataset=mnist --workdir runs/sft
"""

from experiments.configs.common import make_config


def get_config(arg=None):
  c, args = make_config("sft", arg)
  if args.get("demo"):
    c.train.solver_steps = 500
  return c
