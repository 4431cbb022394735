"""Synaptic intelligence (Zenke et al. 2017; the RWalk/A-GEM code's `PI`) on the class-incremental classifier.

  python -m experiments.main --config experiments/configs/si.py:dataset=mnist --workdir runs/si
  # the seed table's "-S" row: 5 tasks of 2 classes, one head, a small episodic memory of real images
  python -m experiments.main --config experiments/configs/si.py:dataset=mnist,protocol=split \\
      --config.episodic.per_class=10 --workdir runs/si_s

The schedule: experiments.configs.common.regularized_config; the method: gmcl/methods/regularization.py.
"""

from experiments.configs.common import regularized_config


def get_config(arg=None):
  return regularized_config("si", arg)
