"""Joint training on all data seen so far: the upper bound.

  python -m experiments.main --config experiments/configs/joint.py:dataset=mnist --workdir runs/joint
"""

from experiments.configs.common import make_config


def get_config(arg=None):
  c, args = make_config("joint", arg)
  if args.get("demo"):
    c.train.solver_steps = 500
  return c
