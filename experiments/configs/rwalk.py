"""Riemannian Walk (Chaudhry et al. 2018) on the class-incremental classifier: EWC++'s Fisher plus path scores.

  python -m experiments.main --config experiments/configs/rwalk.py:dataset=mnist --workdir runs/rwalk
  # the seed table's "-S" row: 5 tasks of 2 classes, one head, a small episodic memory of real images
  python -m experiments.main --config experiments/configs/rwalk.py:dataset=mnist,protocol=split \\
      --config.episodic.per_class=10 --workdir runs/rwalk_s

The schedule: experiments.configs.common.regularized_config; the method: gmcl/methods/regularization.py.
"""

from experiments.configs.common import regularized_config


def get_config(arg=None):
  return regularized_config("rwalk", arg)
