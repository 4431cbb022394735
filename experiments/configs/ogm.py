"""Online generative memory (the seed author's proposal; gmcl/methods/ogm.py) on class-incremental MNIST.

  python -m experiments.main --config experiments/configs/ogm.py:dataset=mnist,variant=distill \
      --workdir runs/ogm_distill
  python -m experiments.main --config experiments/configs/ogm.py:dataset=mnist,variant=project,cpu \
      --workdir runs/ogm_project_cpu
  python -m experiments.main --config experiments/configs/ogm.py:dataset=mnist,variant=lookahead \
      --config.ogm.memory=generator --workdir runs/ogm_lookahead_generator

Arguments: ``variant=`` lookahead | distill | project (default distill; sets ``ogm.variant``);
``dataset=``, ``protocol=``, ``cpu``, ``demo``, ``smoke`` (see experiments/configs/common.py). The
memory's source is ``--config.ogm.memory=current`` (default: the current task's inputs, LwF-style)
or ``generator`` (samples of G_{t-1}, trained as DGR's generator).

Schedule per task: with ``ogm.memory = "generator"``, ``train.generator_steps`` WGAN-GP iterations
(DGR's generator phase: n_critic = 5 critic steps and one generator step each), then
``train.solver_steps`` online solver steps; with ``"current"`` the solver steps alone.

* Default and ``cpu`` (the same schedule: it is CPU-sized): the MLP classifier 400-400 (DGR's and
  van de Ven's MNIST solver), 1000 solver steps per task, batch 64, a memory batch of 64 refreshed
  every step; for memory "generator", the DGR ``cpu`` schedule's fully connected WGAN-GP
  (generator 128 -> 256 -> 512 -> 32x32, critic 512 -> 256), 1500 iterations per task, r = 1/t.
* ``demo``: 500 solver steps (and 300 generator iterations) per task, for a few minutes on a CPU.
* ``smoke``: tiny models, a few steps, a data subset (tests, notebooks); memory batch 16.

Deviations and open choices, each a config value: the proposal fixes no optimiser, so the main step
uses the solver's Adam(1e-3, 0.9, 0.999) as DGR's solver does; the lookahead steps are SGD
(``ogm.lookahead_lr``) on gradients clipped to global norm ``ogm.lookahead_clip = 1`` (0: the plain
step, which diverged in task 3 of the per-class demo: D's gradient grows with the square of the
cross-entropy's, largest when a new class arrives); ``ogm.lookahead_target = "saved"`` anchors D
at the saved logits Y instead of f_theta(X); the distillation step uses Adam with the solver's hyperparameters and its
own state; the ``project`` variant supports only the MLP classifier (``model.classifier = "mlp"``).
"""
from experiments.configs.common import make_config


def defaults(c):
  c.model.classifier = "mlp"
  c.model.classifier_hidden = (400, 400)
  # The GAN of memory "generator" (inert with memory "current"): DGR's cpu schedule.
  c.model.gan = "mlp"
  c.model.generator_features = 64  # generator 128 -> 256 -> 512 -> 32x32, critic 512 -> 256
  c.model.critic_features = 64
  c.dgr.replay_ratio = "balanced"  # r = 1/t in the generator's WGAN-GP mixture
  c.train.generator_steps = 1500
  c.train.solver_steps = 1000
  c.train.batch_size = 64
  c.ogm.variant = "distill"
  c.ogm.memory = "current"
  c.ogm.memory_batch = 64
  c.ogm.refresh_every = 1


def get_config(arg=None):
  c, args = make_config("ogm", arg, defaults)
  c.ogm.variant = args.get("variant", c.ogm.variant)
  if args.get("demo"):
    c.train.generator_steps = 300
    c.train.solver_steps = 500
  if args.get("smoke"):
    c.ogm.memory_batch = 16
    c.train.generator_steps = 4
    c.train.solver_steps = 20
  return c
