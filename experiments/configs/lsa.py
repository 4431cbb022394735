"""Latent space alignment (gmcl.methods.lsa), task-incremental split MNIST by default.

  python -m experiments.main --config experiments/configs/lsa.py:dataset=mnist --workdir runs/lsa
  python -m experiments.main --config experiments/configs/lsa.py:dataset=mnist,demo --workdir runs/lsa_demo
  python -m experiments.main --config experiments/configs/lsa.py:dataset=mnist \
      --config.lsa.bridge=mlp --workdir runs/lsa_mlp

Protocol as experiments/configs/hat.py: 5 tasks of 2 classes, the task id given at test
time, one head per task, 28x28 images in [0, 1]. An MLP embedder 784 -> 400 -> 400 (the
DGR/van de Ven solver), Adam(1e-3, 0.9, 0.999), batch 64.

Schedule per task: ``train.solver_steps = 2000`` steps of f_t and h_t (about 10 epochs of a
task's ~12,000 images), then ``lsa.bridge_steps = 1000`` steps of the bridge
g_{t->t-1} (Adam(``lsa.bridge_lr`` = 1e-3), from the identity) on the task's inputs; the
first task's bridge steps are no-ops. The whole run takes minutes on a 2-core CPU, so
``cpu`` keeps the default schedule; ``demo`` shortens it (500 solver, 300 bridge steps);
``smoke`` (tests) trains a 64-unit embedder for 20 + 20 steps on 256 images per task.

``variant=sequential|parallel`` sets ``lsa.mode``; ``lsa.bridge`` (linear | mlp) and
``lsa.compose`` (linear bridges only) are set with ``--config.lsa.KEY=VALUE``.
``lsa.mode = "parallel"`` trains the tasks at once
(gmcl.methods.lsa.train_parallel), through the same gmcl.loop.run.

Measured with ``demo`` (seed 0, 2-core CPU, gmcl.loop.run; parallel: train_parallel, row t
scored on the models of tasks 0..t): A_5 / average forgetting, task id given:
sequential, linear bridges 98.9% / 1.0%; MLP bridges 99.2% / 0.6%; no bridge training
(identity bridges: multi-head fine-tuning) 96.4% / 4.2%; parallel, linear bridges
74.1% / 31.8%; MLP bridges 83.7% / 19.9%; identity 57.6% / 52.5%.

Replay (``--config.lsa.replay=generator``, sequential mode): a generative memory of the inputs,
trained as DGR's generator (here DGR's ``cpu`` fully connected WGAN-GP, 1500 iterations per task;
``demo`` 300), whose samples of earlier tasks join the current inputs in the bridge's alignment
loss with weights 1 - r and r (r = 1/t).

Deviations: the proposal has no reference code or schedule; the step counts are this
library's (as hat.py's).
"""
from experiments.configs.common import make_config


def defaults(c):
  c.data.protocol = "split"
  c.data.classes_per_task = 2
  c.data.pad_to = 0  # 28x28, as HAT's MNIST
  c.data.value_range = (0.0, 1.0)
  c.model.classifier = "mlp"
  c.model.classifier_hidden = (400, 400)
  c.train.solver_steps = 2000
  c.lsa.mode = "sequential"
  c.lsa.bridge = "linear"
  c.lsa.bridge_steps = 1000
  c.lsa.bridge_lr = 1e-3
  # The generative memory of --config.lsa.replay=generator (inert without it): DGR's cpu
  # schedule's fully connected WGAN-GP, sigmoid output for images in [0, 1], r = 1/t.
  c.model.gan = "mlp"
  c.model.generator_features = 64  # generator 128 -> 256 -> 512 -> 28x28, critic 512 -> 256
  c.model.critic_features = 64
  c.model.output_activation = "sigmoid"
  c.dgr.replay_ratio = "balanced"
  c.train.generator_steps = 1500


def get_config(arg=None):
  c, args = make_config("lsa", arg, defaults)
  c.lsa.mode = args.get("variant", c.lsa.mode)
  if args.get("demo"):
    c.train.solver_steps = 500
    c.lsa.bridge_steps = 300
    c.train.generator_steps = 300
  if args.get("smoke"):
    c.train.generator_steps = 4
    c.lsa.bridge_steps = 20
    c.lsa.bridge_hidden = 32
  return c
