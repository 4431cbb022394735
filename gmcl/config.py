"""The base experiment config and its validation.

Experiment configs (``experiments/configs/*.py``) start from :func:`base_config`
and change values; :func:`validate_config` runs before any training and names
the key and the valid range of anything wrong.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

PROTOCOLS = ("per_class", "split", "permuted")
GAN_METHODS = ("dgr", "mergan", "dgm")
CHUNK_MODES = ("auto", "unroll", "scan")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "dgr"
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "mnist"
  c.data.data_dir = ""  # TFDS data dir; "" = TFDS's default
  c.data.manual_dir = ""  # folder with the original archives; "" = none
  c.data.protocol = "per_class"  # per_class | split | permuted
  c.data.class_order = ""  # e.g. "3,1,4,..."; "" = 0..K-1
  c.data.classes_per_task = 2  # split protocol
  c.data.num_tasks = 10  # permuted protocol
  c.data.max_tasks = 0  # >0: keep only the first N tasks of the sequence
  c.data.permutation_seed = 0
  c.data.pad_to = 32  # 0 keeps 28x28
  c.data.value_range = (-1.0, 1.0)
  c.data.train_limit = 0  # >0: keep the first N training examples of each task (smoke runs)
  c.data.test_limit = 0  # >0: keep the first N test examples (smoke runs)

  c.model = ml_collections.ConfigDict()
  c.model.classifier = "mlp"  # mlp | cnn
  c.model.classifier_hidden = (400, 400)
  c.model.z_dim = 128
  c.model.conditional = False
  c.model.gan = "dcgan"  # dcgan | mlp
  c.model.generator_features = 64
  c.model.critic_features = 64
  c.model.critic_layers = 3
  c.model.kernel_size = 5
  c.model.output_activation = "tanh"
  c.model.conditioning = "concat"  # concat | batchnorm (class-conditional batch norm, MeRGAN)
  # Convolutions' implementation (gmcl.ops.conv): auto (GEMM-based forms where XLA:CPU's native
  # ones are slow; native on GPU/TPU) | native | cpu. The same function and parameters.
  c.model.conv_plan = "auto"

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64
  c.train.solver_steps = 1000
  c.train.generator_steps = 1000
  c.train.solver_lr = 1e-3
  c.train.solver_b1 = 0.9
  c.train.solver_b2 = 0.999
  c.train.gan_lr = 1e-4
  c.train.gan_b1 = 0.5
  c.train.gan_b2 = 0.9
  c.train.weight_decay = 0.0
  c.train.n_critic = 5
  c.train.gp_weight = 10.0
  c.train.reset_optimizers = False
  c.train.chunk_steps = 1  # K steps per compiled call
  c.train.chunk_mode = "auto"  # auto: unroll on CPU, scan on GPU/TPU
  # Which ops XLA:CPU hands to YNNPACK (gmcl.xla): auto ("dot" for programs with convolutions,
  # XLA's defaults otherwise) | xla | dot | none. Kernels only; GPU/TPU ignore it.
  c.train.xla_cpu_fusions = "auto"

  c.dgr = ml_collections.ConfigDict()
  # "balanced" (r = 1/t) or a number in [0, 1]; typed `object` so both kinds can be assigned.
  c.dgr.replay_ratio = config_dict.FieldReference("balanced", field_type=object)
  c.dgr.targets = "hard"  # hard | soft
  c.dgr.temperature = 2.0

  c.mergan = ml_collections.ConfigDict()
  c.mergan.variant = "ra"  # sft | jr (joint retraining with replay) | ra (replay alignment)
  c.mergan.ra_weight = 1e-3  # lambda of replay alignment (official: 1e-3 MNIST, 1e-2 SVHN)
  c.mergan.classifier = "replay"  # replay (separate classifier on real + generated) | auxiliary
  c.mergan.replay_source = "current"  # current (G_t) | previous (G_{t-1}): the replay classifier's
  c.mergan.critic_aux_on_fake = False  # official: the critic's AC-GAN loss on real data only
  c.mergan.oracle = True  # score generated samples with an oracle classifier (MeRGAN's protocol)
  c.mergan.oracle_classifier = "mlp"  # the official MNIST oracle: MLP 1024-512-256-128; "cnn" for SVHN
  c.mergan.oracle_hidden = (512, 256, 128)
  c.mergan.oracle_steps = 2000
  c.mergan.oracle_batch_size = 128
  c.mergan.oracle_samples_per_class = 6400  # the official evaluation: 100 batches of 64
  c.mergan.oracle_sample_batch = 64
  c.mergan.oracle_dir = ""  # "" = $GMCL_CACHE_DIR/oracles or ~/.cache/gmcl/oracles

  c.hat = ml_collections.ConfigDict()
  c.hat.s_max = 400.0  # HAT's classifier; DGM: 1e4 (DGMw), 1e5 (DGMa)
  c.hat.sparsity = 0.75  # c, the sparsity regulariser's weight
  c.hat.learning_rate = 0.05  # SGD, as the official HAT code
  c.hat.clip_norm = 10000.0
  c.hat.binarize = False  # round the gates to {0, 1} at the end of a task (DGM does)
  c.hat.max_tasks = 10  # task embeddings per layer

  c.dgm = ml_collections.ConfigDict()  # Dynamic Generative Memory (experiments/configs/dgm.py)
  c.dgm.variant = "dgmw"  # dgmw (weight masks) | dgma (activation masks)
  c.dgm.architecture = "conv"  # conv (official: 4x4 transposed convolutions) | dense
  c.dgm.ngf = 6  # conv widths 4ngf, 2ngf, ngf (official: 6 DGMw, 20 DGMa)
  c.dgm.hidden = (64, 128, 256)  # dense widths
  c.dgm.s_max = 1e4  # official: 1e4 DGMw, 1e5 DGMa
  c.dgm.sparsity = 0.08  # lamb_G (official: 0.08 DGMw MNIST, 0.01 DGMa, 0.001 DGMw SVHN)
  c.dgm.epochs = 101  # s-schedule epochs per task: train.generator_steps are cut into this many
  c.dgm.s_schedule = "nested"  # nested (DGMw) | epoch (DGMa): see gmcl.methods.dgm.s_schedule
  c.dgm.growth = True  # grow by the newly reserved capacity after each task (False: HAT's fixed net)
  c.dgm.mask_placement = "after_activation"  # DGMa: after_activation (paper) | before_bn (official code)
  c.dgm.replay_gates = "binary"  # binary (e >= 0) | soft (sigmoid(s_max e), official code)
  c.dgm.critic = "dcgan"  # dcgan (official, batch norm) | mlp
  c.dgm.critic_batch_norm = True
  c.dgm.reinit_critic = True
  c.dgm.clip_norm = 10000.0  # the generator's gradient-norm clip (official; effectively off)
  c.dgm.max_tasks = 10  # rows of the task embeddings

  # The seed author's proposals (gmcl.methods.lgm, lsa, ogm; experiments/configs/{lgm,lsa,ogm}.py).
  c.lgm = ml_collections.ConfigDict()  # latent generative memory: a conditional GAN in f's feature space
  c.lgm.protection = "ra"  # Q1, how G keeps old classes: ra (replay alignment) | hat (DGM-style masks)
  c.lgm.encoder = "train"  # Q2, the encoder after task 1: train | frozen | prototype | bridge
  c.lgm.ra_weight = 1.0  # lambda of replay alignment on generated features
  c.lgm.drift_weight = 1.0  # prototype: beta of the encoder's drift penalty
  c.lgm.bridge = "linear"  # bridge (old -> new feature space): linear | mlp
  c.lgm.bridge_hidden = 256
  c.lgm.z_dim = 32
  c.lgm.generator_hidden = (256, 256)
  c.lgm.critic_hidden = (256, 256)
  c.lgm.gan_iterations = 1  # WGAN-GP iterations (n_critic critic + 1 generator update) per step
  c.lgm.hat_mask = "weight"  # protection=hat: weight (DGMw) | activation (DGMa) masks
  c.lgm.s_max = 400.0  # protection=hat
  c.lgm.sparsity = 0.75  # protection=hat: c of HAT's sparsity regulariser
  c.lgm.prototype_steps = 100  # encoder=prototype: batches of a task's data averaged into its prototypes
  c.lgm.drift_eval_limit = 2000  # held-out images of old classes for the drift score

  c.lsa = ml_collections.ConfigDict()  # latent space alignment: multi-head, bridges g_{t->t-1}
  c.lsa.mode = "sequential"  # sequential | parallel (the T task models at once, vmap over tasks)
  c.lsa.bridge = "linear"  # linear | mlp
  c.lsa.bridge_hidden = 256
  c.lsa.bridge_steps = 1000
  c.lsa.bridge_lr = 1e-3
  c.lsa.compose = False  # linear bridges: precompose the chain T -> k into one map per task
  c.lsa.max_tasks = 0  # task slots of the stacked heads and bridges; 0: the config's sequence length
  c.lsa.replay = "none"  # none | generator: the bridge also sees G_{t-1}'s samples (DGR's generator)

  c.ogm = ml_collections.ConfigDict()  # online generative memory: keep earlier predictions while learning
  c.ogm.variant = "distill"  # lookahead (a) | distill (b) | project (c)
  c.ogm.memory = "current"  # current (LwF-style: current inputs) | generator (G_{t-1}'s samples)
  c.ogm.memory_batch = 64
  c.ogm.refresh_every = 1  # steps between new saved memory batches
  c.ogm.lookahead_steps = 1  # (a) k
  c.ogm.lookahead_lr = 0.1  # (a) step size of the k lookahead steps (1e-3 moved theta by ~1e-6)
  c.ogm.inner_lr = 0.1  # (a) eta of the virtual step theta - eta grad L(theta)
  c.ogm.lookahead_clip = 1.0  # (a) clip each lookahead gradient to this global norm; 0: the proposal's plain step
  c.ogm.lookahead_target = "current"  # (a) current: f_theta(X) (the proposal's) | saved: the saved Y
  c.ogm.distill_weight = 1.0  # (b) the distillation step's Adam update, relative to the main step's
  c.ogm.temperature = 2.0  # (b)
  c.ogm.epsilon = 0.1  # (c) the bound on ||f(X) - Y|| (1.0 never bound with batch 16)
  c.ogm.norm = "frobenius"  # (c) frobenius | spectral
  c.ogm.backtracking = 8  # (c) halvings of the in-span part before it is dropped

  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = "none"  # none | jit (device mesh, NamedSharding) | pmap
  c.parallel.num_devices = 0  # 0: every local device

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.enabled = True
  c.checkpoint.every_steps = 1000  # also at every task boundary; 0: only there
  c.checkpoint.keep = 2  # newest checkpoints kept (orbax LatestN preservation policy)

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 1000
  c.eval.samples_per_class = 10  # columns of the sample grid
  c.eval.save_samples = True
  return c


def _check_keys(config, reference, prefix=""):
  for key in config.keys():
    path = f"{prefix}{key}"
    if key not in reference:
      raise ValueError(f"Unknown config key {path!r}; valid keys here: {sorted(reference.keys())}.")
    if isinstance(reference[key], ml_collections.ConfigDict):
      if not isinstance(config[key], ml_collections.ConfigDict):
        raise ValueError(f"Config key {path!r} must be a section with keys "
                         f"{sorted(reference[key].keys())}.")
      _check_keys(config[key], reference[key], path + ".")


def require(ok: bool, key: str, value, valid: str):
  """Raises ``ValueError("config.KEY=VALUE is invalid; valid: VALID.")`` unless ``ok``."""
  if not ok:
    raise ValueError(f"config.{key}={value!r} is invalid; valid: {valid}.")


def parse_class_order(value: str, num_classes: int):
  if not value:
    return None
  try:
    order = [int(v) for v in str(value).split(",")]
  except ValueError:
    raise ValueError(f"config.data.class_order={value!r}; valid: comma-separated integers, "
                     f"a permutation of 0..{num_classes - 1}.") from None
  require(sorted(order) == list(range(num_classes)), "data.class_order", value,
           f"a permutation of 0..{num_classes - 1}")
  return order


def validate_config(config) -> None:
  """Raises ValueError naming the key and the valid values of anything wrong."""
  from gmcl.data.sources import DATASETS  # pylint: disable=import-outside-toplevel
  from gmcl.methods import METHODS  # pylint: disable=import-outside-toplevel
  from gmcl.methods.dgr import parse_replay_ratio  # pylint: disable=import-outside-toplevel
  from gmcl.models.classifiers import CLASSIFIERS  # pylint: disable=import-outside-toplevel
  from gmcl.ops.conv import PLANS  # pylint: disable=import-outside-toplevel
  from gmcl.xla import XLA_CPU_FUSIONS  # pylint: disable=import-outside-toplevel
  _check_keys(config, base_config())
  require(config.method in METHODS, "method", config.method, str(sorted(METHODS)))
  d, m, t = config.data, config.model, config.train
  require(d.dataset in DATASETS, "data.dataset", d.dataset, str(sorted(DATASETS)))
  require(d.protocol in PROTOCOLS, "data.protocol", d.protocol, str(list(PROTOCOLS)))
  num_classes = DATASETS[d.dataset].num_classes
  parse_class_order(d.class_order, num_classes)
  if d.protocol == "split":
    require(1 <= d.classes_per_task <= num_classes and num_classes % d.classes_per_task == 0,
             "data.classes_per_task", d.classes_per_task,
             f"a divisor of the {num_classes} classes (fewer classes than tasks is impossible)")
  if d.protocol == "permuted":
    require(d.num_tasks >= 1, "data.num_tasks", d.num_tasks, ">= 1")
  size = DATASETS[d.dataset].image_shape[0]
  require(d.pad_to == 0 or d.pad_to >= size, "data.pad_to", d.pad_to,
           f"0 (no padding) or >= {size}")
  require(len(d.value_range) == 2 and d.value_range[1] > d.value_range[0], "data.value_range",
           d.value_range, "(low, high) with high > low")
  gan_method = (config.method in GAN_METHODS
                or (config.method == "ogm" and config.ogm.memory == "generator")
                or (config.method == "lsa" and config.lsa.replay == "generator"))
  if gan_method and m.gan == "dcgan":
    require((d.pad_to or size) in (28, 32, 64), "data.pad_to", d.pad_to,
             f"an image size the DCGAN generator supports: 28, 32 or 64 (images are {size})")
  low, high = d.value_range
  reachable = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}.get(m.output_activation)
  if gan_method and reachable is not None:
    require(reachable[0] <= low and high <= reachable[1], "model.output_activation",
             m.output_activation, f"an activation whose range covers data.value_range={tuple(d.value_range)}"
             " ('tanh' for (-1, 1), 'sigmoid' for (0, 1), or 'none')")
  require(d.max_tasks >= 0, "data.max_tasks", d.max_tasks, ">= 0 (0 keeps every task)")
  require(d.train_limit >= 0, "data.train_limit", d.train_limit, ">= 0")
  require(d.test_limit >= 0, "data.test_limit", d.test_limit, ">= 0")
  require(m.classifier in CLASSIFIERS, "model.classifier", m.classifier, str(sorted(CLASSIFIERS)))
  require(m.gan in ("dcgan", "mlp"), "model.gan", m.gan, "'dcgan' or 'mlp'")
  require(m.z_dim >= 1, "model.z_dim", m.z_dim, ">= 1")
  require(m.output_activation in ("tanh", "sigmoid", "none"), "model.output_activation",
           m.output_activation, "'tanh', 'sigmoid' or 'none'")
  require(t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1")
  require(t.solver_steps >= 0, "train.solver_steps", t.solver_steps, ">= 0")
  require(t.generator_steps >= 0, "train.generator_steps", t.generator_steps, ">= 0")
  require(t.n_critic >= 1, "train.n_critic", t.n_critic, ">= 1")
  require(t.gp_weight >= 0, "train.gp_weight", t.gp_weight, ">= 0")
  for key in ("solver_lr", "gan_lr"):
    require(t[key] > 0, f"train.{key}", t[key], "> 0")
  for key in ("solver_b1", "solver_b2", "gan_b1", "gan_b2"):
    require(0 <= t[key] < 1, f"train.{key}", t[key], "[0, 1)")
  require(t.chunk_steps >= 1, "train.chunk_steps", t.chunk_steps, ">= 1")
  require(t.chunk_mode in CHUNK_MODES, "train.chunk_mode", t.chunk_mode, str(list(CHUNK_MODES)))
  require(t.xla_cpu_fusions in XLA_CPU_FUSIONS, "train.xla_cpu_fusions", t.xla_cpu_fusions,
          str(list(XLA_CPU_FUSIONS)))
  parse_replay_ratio(config.dgr.replay_ratio)
  require(config.dgr.targets in ("hard", "soft"), "dgr.targets", config.dgr.targets,
           "'hard' or 'soft'")
  require(config.dgr.temperature > 0, "dgr.temperature", config.dgr.temperature, "> 0")
  require(m.conv_plan in PLANS, "model.conv_plan", m.conv_plan, str(list(PLANS)))
  require(m.conditioning in ("concat", "batchnorm"), "model.conditioning", m.conditioning,
           "'concat' or 'batchnorm'")
  mg = config.mergan
  require(mg.variant in ("sft", "jr", "ra"), "mergan.variant", mg.variant, "'sft', 'jr' or 'ra'")
  require(mg.ra_weight >= 0, "mergan.ra_weight", mg.ra_weight, ">= 0")
  require(mg.classifier in ("replay", "auxiliary"), "mergan.classifier", mg.classifier,
           "'replay' or 'auxiliary'")
  require(mg.replay_source in ("current", "previous"), "mergan.replay_source", mg.replay_source,
           "'current' or 'previous'")
  require(mg.oracle_classifier in CLASSIFIERS, "mergan.oracle_classifier", mg.oracle_classifier,
           str(sorted(CLASSIFIERS)))
  for key in ("oracle_steps", "oracle_batch_size", "oracle_samples_per_class",
              "oracle_sample_batch"):
    require(mg[key] >= 1, f"mergan.{key}", mg[key], ">= 1")
  g = config.dgm
  require(g.variant in ("dgmw", "dgma"), "dgm.variant", g.variant, "'dgmw' or 'dgma'")
  require(g.architecture in ("conv", "dense"), "dgm.architecture", g.architecture, "'conv' or 'dense'")
  require(g.ngf >= 1, "dgm.ngf", g.ngf, ">= 1")
  require(len(g.hidden) >= 1 and min(g.hidden) >= 1, "dgm.hidden", g.hidden,
           "one or more positive widths")
  require(g.s_max >= 1, "dgm.s_max", g.s_max, ">= 1")
  require(g.epochs >= 1, "dgm.epochs", g.epochs, ">= 1")
  require(g.sparsity >= 0, "dgm.sparsity", g.sparsity, ">= 0")
  require(g.s_schedule in ("nested", "epoch"), "dgm.s_schedule", g.s_schedule, "'nested' or 'epoch'")
  require(g.mask_placement in ("after_activation", "before_bn"), "dgm.mask_placement",
           g.mask_placement, "'after_activation' or 'before_bn'")
  require(g.replay_gates in ("binary", "soft"), "dgm.replay_gates", g.replay_gates,
           "'binary' or 'soft'")
  require(g.critic in ("dcgan", "mlp"), "dgm.critic", g.critic, "'dcgan' or 'mlp'")
  require(g.clip_norm > 0, "dgm.clip_norm", g.clip_norm, "> 0")
  require(g.max_tasks >= 1, "dgm.max_tasks", g.max_tasks, ">= 1")
  if config.method == "dgm" and g.architecture == "conv":
    require((d.pad_to or size) == 32, "data.pad_to", d.pad_to,
             f"32: DGM's conv generator makes 32x32 images (images are {size}); or dgm.architecture='dense'")
  h = config.hat
  require(h.s_max >= 1, "hat.s_max", h.s_max, ">= 1")
  require(h.sparsity >= 0, "hat.sparsity", h.sparsity, ">= 0")
  require(h.learning_rate > 0, "hat.learning_rate", h.learning_rate, "> 0")
  require(h.clip_norm > 0, "hat.clip_norm", h.clip_norm, "> 0")
  require(h.max_tasks >= 1, "hat.max_tasks", h.max_tasks, ">= 1")
  from gmcl.methods import lgm, lsa, ogm  # pylint: disable=import-outside-toplevel
  for module in (lgm, lsa, ogm):
    module.check_config(config)
  require(config.parallel.mode in ("none", "jit", "pmap"), "parallel.mode", config.parallel.mode,
           "'none', 'jit' or 'pmap'")
  require(config.parallel.num_devices >= 0, "parallel.num_devices", config.parallel.num_devices,
           ">= 0 (0: every local device)")
  require(config.checkpoint.every_steps >= 0, "checkpoint.every_steps",
           config.checkpoint.every_steps, ">= 0 (0: only at task boundaries)")
  require(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, ">= 1")
  require(config.eval.batch_size >= 1, "eval.batch_size", config.eval.batch_size, ">= 1")
