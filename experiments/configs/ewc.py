"""Elastic weight consolidation on the class-incremental classifier: EWC++ (the RWalk/A-GEM code's
`EWC`) by default, Kirkpatrick et al.'s Fisher at each task's end with `--config.ewc.fisher=empirical`.

  python -m experiments.main --config experiments/configs/ewc.py:dataset=mnist --workdir runs/ewc
  # the seed table's "-S" row: 5 tasks of 2 classes, one head, a small episodic memory of real images
  python -m experiments.main --config experiments/configs/ewc.py:dataset=mnist,protocol=split \\
      --config.episodic.per_class=10 --workdir runs/ewc_s

The schedule: experiments.configs.common.regularized_config; the method: gmcl/methods/regularization.py.
"""

from experiments.configs.common import regularized_config


def get_config(arg=None):
  return regularized_config("ewc", arg)
