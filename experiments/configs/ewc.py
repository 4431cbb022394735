"""Elastic weight consolidation on the class-incremental classifier: EWC++ (the RWalk/A-GEM code's
`EWC`) by default, Kirkpatrick et al.'s Fisher at each task's end with `--config.ewc.fisher=empirical`.

  python -m experiments.main --config experiments/configs/ewc.py:dataset=mnist --workdir runs/ewc
  # the seed table's "-S" row: 5 tasks of 2 classes, one head, a small episodic memory of real images
  python -m experiments.main --config experiments/configs/ewc.py:dataset=mnist,protocol=split \\
      --config.episodic.per_class=10 --workdir runs/ewc_s

gmcl/methods/regularization.py describes the rules and their sources. The classifier, its
optimiser and schedule are the library's solver (MLP 400-400, Adam 1e-3, batch 64, 1000 steps per
task), as for sft, joint and DGR's solver, so that the rows of a table differ only by the method;
the reference code trained its MNIST models with SGD (batch 10, one epoch per task).
``strength`` defaults to the reference's MNIST value for the method (EWC 10, PI 0.1, RWalk 1).
``demo``: 500 steps per task; ``smoke``: tiny models (tests).
"""

from experiments.configs.common import make_config


def get_config(arg=None):
  c, args = make_config("ewc", arg)
  if args.get("demo"):
    c.train.solver_steps = 500
  if args.get("smoke"):
    c.episodic.batch_size = 8
    c.ewc.fisher_samples = 32
  return c
