"""iCaRL (Rebuffi et al. 2017) on the class-incremental classifier: herding exemplars under a fixed
budget, sigmoid distillation, nearest-mean-of-exemplars classification.

  python -m experiments.main --config experiments/configs/icarl.py:dataset=mnist --workdir runs/icarl
  # the seed table's "iCaRL-S" row: 5 tasks of 2 classes, one head
  python -m experiments.main --config experiments/configs/icarl.py:dataset=mnist,protocol=split \\
      --workdir runs/icarl_s

gmcl/methods/icarl.py describes the method. The classifier, optimiser and schedule are the library's
solver (MLP 400-400, Adam 1e-3, batch 64, 1000 steps per task), as for the table's other rows;
``icarl.memory_size`` = 100 exemplars in all (10 per class once every class is seen, the budget of
the "-S" rows' episodic memory). ``demo``: 500 steps per task; ``smoke``: tiny models (tests).
"""

from experiments.configs.common import make_config


def get_config(arg=None):
  c, args = make_config("icarl", arg)
  if args.get("demo"):
    c.train.solver_steps = 500
  if args.get("smoke"):
    c.icarl.memory_size = 20
  return c
