"""Shared argument parsing for experiment configs: ``path.py:key=value,flag,...``.

Arguments:
  dataset=NAME      mnist | fashion_mnist | svhn_cropped | cifar10
  protocol=NAME     per_class | split | permuted
  variant=NAME      mergan: sft | jr | ra | ewc; dgm: dgmw | dgma; lgm: PROTECTION-ENCODER (ra-train, hat-bridge, ...);
                    lsa: sequential | parallel; ogm: lookahead | distill | project
  smoke             tiny models, a few steps and a data subset (tests, notebooks)
  paper             the paper's schedule and the official code's architecture, batch and optimiser
                    (each config's default, named so that scripts say what they run; for an accelerator)
  demo              the README's demo schedule (minutes on a 2-core CPU)
  cpu               the schedule of the README's results table (under an hour on a 2-core CPU)
"""

from gmcl.config import PROTOCOLS, method_config
from gmcl.data.sources import DATASETS

ARGUMENTS = ("dataset", "protocol", "variant", "smoke", "demo", "cpu", "paper")
SCHEDULES = ("smoke", "demo", "cpu", "paper")  # at most one of them
VARIANT_METHODS = ("mergan", "dgm", "lgm", "lsa", "ogm")


def parse_args(arg: str | None) -> dict:
  """``"dataset=mnist,smoke"`` -> ``{"dataset": "mnist", "smoke": True}``."""
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in ARGUMENTS:
      raise ValueError(f"Unknown config argument {key!r}; valid arguments: {list(ARGUMENTS)}.")
    out[key] = value.strip() if value else True
  schedules = [k for k in SCHEDULES if k in out]
  if len(schedules) > 1:
    raise ValueError(f"Config arguments {schedules} are schedules; give at most one of {list(SCHEDULES)}.")
  if "dataset" in out and out["dataset"] not in DATASETS:
    raise ValueError(f"Unknown dataset {out['dataset']!r}; valid choices: {sorted(DATASETS)}.")
  if "protocol" in out and out["protocol"] not in PROTOCOLS:
    raise ValueError(f"Unknown protocol {out['protocol']!r}; valid choices: {list(PROTOCOLS)}.")
  return out


def make_config(method: str, arg: str | None, method_defaults=None):
  """The base config for ``method``: base values, then ``method_defaults(c)``, then arguments."""
  args = parse_args(arg)
  if "variant" in args and method not in VARIANT_METHODS:
    raise ValueError(f"Config argument 'variant' is for {', '.join(VARIANT_METHODS)} only; "
                     f"{method!r} has none.")
  c = method_config(method)
  if method_defaults is not None:
    method_defaults(c)
  c.data.dataset = args.get("dataset", c.data.dataset)
  c.data.protocol = args.get("protocol", c.data.protocol)
  if c.data.dataset in ("svhn_cropped", "cifar10"):
    c.model.classifier = "cnn"
  if args.get("smoke"):
    apply_smoke(c)
  return c, args


def apply_smoke(c) -> None:
  """Shrinks everything so a whole run takes seconds: for tests and notebooks."""
  c.data.train_limit = 256
  c.data.test_limit = 2000
  c.model.classifier_hidden = (64,)
  c.model.generator_features = 8
  c.model.critic_features = 8
  c.model.z_dim = 16
  c.train.batch_size = 16
  c.train.solver_steps = 20
  c.train.generator_steps = 4
  c.train.n_critic = 2
  c.eval.samples_per_class = 4
  if "mergan" in c:
    c.mergan.oracle_steps = 30
    c.mergan.oracle_batch_size = 32
    c.mergan.oracle_samples_per_class = 16
    c.mergan.oracle_sample_batch = 16
    c.mergan.ewc_fisher_samples = 32


def regularized_config(method: str, arg: str | None):
  """The config of an importance-regularised classifier (``ewc``, ``si``, ``rwalk``:
  gmcl/methods/regularization.py). The classifier, optimiser and schedule are the library's
  solver (MLP 400-400, Adam 1e-3, batch 64, 1000 steps per task), as for sft, joint and DGR's
  solver, so that the rows of a table differ only by the method (the reference code trained its
  MNIST models with SGD, batch 10, one epoch per task); each ``strength`` defaults to the
  reference's MNIST value (EWC 10, PI 0.1, RWalk 1). ``demo``: 500 steps per task; ``smoke``:
  tiny models (tests)."""
  c, args = make_config(method, arg)
  if args.get("demo"):
    c.train.solver_steps = 500
  if args.get("smoke"):
    c.episodic.batch_size = 8
    if method == "ewc":
      c.ewc.fisher_samples = 32
  return c
