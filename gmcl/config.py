"""The experiment config's shared sections, their composition with a method's, and validation.

An experiment config (``experiments/configs/*.py``) starts from :func:`method_config`: the shared
sections of :func:`base_config` (data, model, train, parallel, checkpoint, eval) and the sections
the chosen method reads, which its module declares (``gmcl.registry.MethodSpec``). No
other method's keys exist. :func:`validate_config` runs before any training and names the key and
the valid range of anything wrong; each key is checked in one place.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import ml_collections

from gmcl.checks import require
from gmcl.registry import method_spec

PROTOCOLS = ("per_class", "split", "permuted")
CHUNK_MODES = ("auto", "unroll", "scan")


def base_config() -> ml_collections.ConfigDict:
  """The shared sections, for every method (``method`` names the one that runs)."""
  c = ml_collections.ConfigDict()
  c.method = ""  # the method that runs: method_config(name) sets it and adds its sections
  c.seed = 0
  # Seeds seed, seed+1, ..., seed+num_seeds-1 on the same data and tasks (gmcl.seeds): stacked in one
  # program where their states share shapes; results.json reports each and their mean ± sd.
  c.num_seeds = 1

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "mnist"
  c.data.data_dir = ""  # TFDS data dir; "" = TFDS's default
  c.data.manual_dir = ""  # folder with the original archives; "" = none
  # an .npz of the splits (python -m gmcl.data.prepare NAME --export_npz FILE), read instead of
  # TFDS: for machines without TensorFlow; "" = TFDS
  c.data.arrays = ""
  # ImageNet-50 (data.dataset=imagenet50): its fifty imagenet_resized labels in task order,
  # comma-separated; "" = gmcl.data.sources.IMAGENET50_CLASSES.
  c.data.imagenet50_classes = ""
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
  # Convolutions' implementation (gmcl.ops.conv): auto (table on a CPU, native on GPU/TPU) | table
  # (the fixed rule cpu_plan; "cpu" is its older name) | measured (on a CPU each direction's fastest
  # form, measured once per machine and shape, gmcl.ops.conv_tune) | native | file:PATH (a pinned
  # measured plan file, for runs that must be bit-reproducible across machines of one kind). The
  # same function and parameters.
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
  # How one program trains stacked seeds (num_seeds > 1, gmcl.seeds): auto (on the CPU, each seed in
  # turn for steps with convolutions, vmap otherwise; vmap on GPU/TPU) | vmap | unroll. A seed axis
  # split over a jit mesh (num_seeds a multiple of the devices) is always vmap.
  c.train.seed_axis = "auto"

  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = "none"  # none | jit (device mesh, NamedSharding) | pmap
  c.parallel.num_devices = 0  # 0: every local device

  # The persistent XLA compilation cache (gmcl.compile_cache): programs compiled once are read back
  # by later processes on the same kind of machine. cache_dir: "auto" ($GMCL_CACHE_DIR/xla/MACHINE
  # or ~/.cache/gmcl/xla/MACHINE), a folder (MACHINE appended), or "" (off). Programs that compiled
  # in less than min_compile_secs are not written (0: every program; they are small). Changes no
  # result.
  c.compile = ml_collections.ConfigDict()
  c.compile.cache_dir = "auto"
  c.compile.min_compile_secs = 0.0
  # Also keep the traced chunk programs beside it (gmcl.program_cache: a second process skips
  # tracing and lowering too); with the compilation cache only.
  c.compile.programs = True
  # The machine folder and its programs held to this many MiB, the least recently used entries
  # removed at a run's start (0: no limit; `python -m gmcl.compile_cache` lists and prunes them).
  c.compile.max_mb = 4096

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.enabled = True
  c.checkpoint.every_steps = 1000  # also at every task boundary; 0: only there
  c.checkpoint.keep = 2  # newest checkpoints kept (orbax LatestN preservation policy)

  # Training curves (gmcl.runlog): every phase's step metrics averaged over each interval of
  # every_steps steps, A_t and the scores after each task, the sample grids and the config, as
  # TensorBoard events (tensorboard) and a CSV (csv) in WORKDIR/logs. 0 = off. None of it changes
  # a result, and all of it may change when a run resumes.
  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 100
  c.log.tensorboard = True
  c.log.csv = True
  c.log.plots = True  # accuracy_matrix.png and accuracy_curve.png in the workdir after every task
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 1000
  c.eval.samples_per_class = 10  # columns of the sample grid
  c.eval.save_samples = True
  # Reverse accuracy (gmcl.evaluation.reverse): fresh classifiers ("mlp", "cnn" or "mlp,cnn")
  # trained only on the generator's samples of the classes seen, tested on real test images;
  # scores.A_reverse_ARCH, after the last task (every task with reverse_every_task). "" = off.
  c.eval.reverse = ""
  c.eval.reverse_every_task = False
  c.eval.reverse_steps = 2000
  c.eval.reverse_samples_per_class = 6000
  # Model selection on held-out real images (the DGM code's protocol): > 0 holds out this share of
  # each class's training images (gmcl.data.build.hold_out); in each task's last phase the
  # validation and test A_t are measured every validation_every_steps steps (0: at its end only)
  # and scores.A_best_validation is the test A_t where the validation A_t was highest (weights are
  # not restored; A stays the task's last). 0.0 = off: every training image trains.
  c.eval.validation_fraction = 0.0
  c.eval.validation_every_steps = 0
  # How A_t averages over the classes seen (class-incremental; gmcl.evaluation.metrics): "examples"
  # pools their test images; "tasks" is the mean of the tasks' accuracies, every task weighing alike
  # (the DGM code's; its configs set it). Both the test and the validation A_t.
  c.eval.accuracy_average = "examples"
  # MeRGAN's oracle protocol for any method with a conditional generator (DGR with
  # model.conditional, DGM, ...): "mlp" or "cnn" trains (once, cached) a classifier on all real
  # training images, and scores.A_oracle is its accuracy on the generator's samples of each seen
  # class (gmcl.evaluation.oracle). "" = off. MeRGAN has its own keys (mergan.oracle*).
  c.eval.oracle = ""
  c.eval.oracle_hidden = (512, 256, 128)
  c.eval.oracle_steps = 2000  # Adam steps of 128 images; the "cnn" oracle passes 99 % on MNIST at 6000 (98.8 here)
  c.eval.oracle_samples_per_class = 6400
  # The seed of the oracle classifiers' training (eval.oracle's and MeRGAN's). -1: config.seed, the
  # first seed. A fixed value lets seeds run as separate single-seed runs (one per machine or
  # session) be scored by one oracle, so that experiments.merge_seeds joins them into exactly what
  # one multi-seed run from that seed writes.
  c.eval.oracle_seed = -1
  # RWalk's intransigence, I_k = a*_k - R[k][k] (scores.intransigence): a finished run of `joint`
  # on the same task sequence (its workdir or results.json) gives a*_k. "" = not measured.
  c.eval.joint_results = ""
  return c


def unknown_key(config, dotted: str) -> str:
  """"" if ``dotted`` ("train.solver_lr") names a key of ``config``; else a message naming its first
  missing part and the valid keys there (a command-line override of a key the config lacks)."""
  node, walked = config, []
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      where = ".".join(walked) or "the config"
      valid = sorted(node.keys()) if hasattr(node, "keys") else "none (it is a value, not a section)"
      return f"{'.'.join(walked + [part])}: {where} has no key {part!r}; valid keys there: {valid}."
    node, walked = node[part], walked + [part]
  return ""


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


def _non_finite_floats(config, prefix="") -> list[tuple[str, object]]:
  """Every value of a config (nested sections, tuples) holding a NaN or infinite float, by key."""
  out = []
  for key in config.keys():
    value, path = config[key], f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out += _non_finite_floats(value, path + ".")
      continue
    values = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
      out.append((path, value))
  return out


def sequence_length(config, num_classes: Optional[int] = None, *, limited: bool = True) -> int:
  """The number of tasks the config's sequence has (``gmcl.data.build.build_sequence``'s length;
  with ``limited``, ``data.max_tasks`` applied); ``num_classes`` defaults to the dataset's."""
  from gmcl.data.sources import DATASETS  # pylint: disable=import-outside-toplevel
  d = config.data
  k = DATASETS[d.dataset].num_classes if num_classes is None else int(num_classes)
  n = {"per_class": k, "split": k // max(int(d.classes_per_task), 1), "permuted": int(d.num_tasks)}[d.protocol]
  return min(n, int(d.max_tasks)) if d.max_tasks and limited else n


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


def method_config(name: str) -> ml_collections.ConfigDict:
  """The shared sections of :func:`base_config` and the sections method ``name`` reads, with
  their defaults (``gmcl.registry``): an experiment config has no other method's keys."""
  c = base_config()
  c.method = name
  for section, values in method_spec(name).sections().items():
    c[section] = values
  return c


# Config keys added to gmcl after runs had been checkpointed, with the value that reproduces the
# code from before the key existed (a checkpoint without the key resumes when it has that value);
# each method adds its own (MethodSpec.added_keys).
ADDED_KEYS = {"model.conv_plan": "native", "train.xla_cpu_fusions": "xla", "num_seeds": 1,
              "train.seed_axis": "auto", "data.arrays": "", "eval.reverse": "",
              "eval.reverse_every_task": False, "eval.reverse_steps": 2000,
              "eval.reverse_samples_per_class": 6000, "eval.validation_fraction": 0.0,
              "eval.validation_every_steps": 0, "eval.accuracy_average": "examples",
              "eval.oracle": "", "eval.oracle_hidden": (512, 256, 128),
              "eval.oracle_steps": 2000, "eval.oracle_samples_per_class": 6400,
              "eval.oracle_seed": -1, "eval.joint_results": "", "data.imagenet50_classes": "",
              "dgr.replay_source": "generator",  # in the dgr section of dgr, ogm and lsa
              "dgr.critic_aux_on_fake": lambda saved: _critic_aux_on_fake_before(saved)}


def _critic_aux_on_fake_before(saved: dict):
  """``dgr.critic_aux_on_fake`` of code from before the key: True with a conditional generator (the
  critic's class term was on G_t's samples too); without one there is no class term, and the key
  has no effect (None)."""
  return True if saved.get("model", {}).get("conditional") else None


def oracle_seed(config) -> int:
  """The seed the oracle classifiers train with: ``eval.oracle_seed``, or ``config.seed`` at -1."""
  fixed = int(config.eval.get("oracle_seed", -1))
  return int(config.seed) if fixed == -1 else fixed


def reverse_architectures(config) -> list[str]:
  """``eval.reverse`` as a list: ``"mlp,cnn"`` -> ``["mlp", "cnn"]``."""
  return [a.strip() for a in str(config.eval.get("reverse", "")).split(",") if a.strip()]


def added_keys(name: str) -> dict:
  """The shared :data:`ADDED_KEYS` and those of method ``name``."""
  return {**ADDED_KEYS, **method_spec(name).added_keys}


def check_image_generator(config) -> None:
  """The shared keys a method with an image generator constrains: the DCGAN's image sizes, and an
  output activation whose range covers the data's. Called by those methods' checks."""
  from gmcl.data.sources import DATASETS  # pylint: disable=import-outside-toplevel
  d, m = config.data, config.model
  size = DATASETS[d.dataset].image_shape[0]
  if m.gan == "dcgan":
    require((d.pad_to or size) in (28, 32, 64), "data.pad_to", d.pad_to,
             f"an image size the DCGAN generator supports: 28, 32 or 64 (images are {size})")
  low, high = d.value_range
  reachable = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}.get(m.output_activation)
  if reachable is not None:
    require(reachable[0] <= low and high <= reachable[1], "model.output_activation",
             m.output_activation, f"an activation whose range covers data.value_range={tuple(d.value_range)}"
             " ('tanh' for (-1, 1), 'sigmoid' for (0, 1), or 'none')")


def validate_config(config) -> None:
  """Raises ValueError naming the key and the valid values of anything wrong: unknown keys, the
  shared sections, then the method's own checks (its ``MethodSpec.check``)."""
  from gmcl.data.sources import DATASETS  # pylint: disable=import-outside-toplevel
  from gmcl.models.classifiers import CLASSIFIERS  # pylint: disable=import-outside-toplevel
  from gmcl.ops.conv import check_plan_name  # pylint: disable=import-outside-toplevel
  from gmcl.xla import XLA_CPU_FUSIONS  # pylint: disable=import-outside-toplevel
  spec = method_spec(config.method)
  reference = method_config(config.method)
  _check_keys(config, reference)
  bad = [(k, v) for k, v in _non_finite_floats(config)
         if not (k in spec.infinite_ok and isinstance(v, float) and math.isinf(v) and v > 0)]
  if bad:
    allowed = f" (+inf is valid for {', '.join(sorted(spec.infinite_ok))})" if spec.infinite_ok else ""
    raise ValueError("config: " + ", ".join(f"{k}={v!r}" for k, v in bad)
                     + f" is NaN or infinite; valid: finite numbers{allowed}.")
  missing = sorted(set(reference.keys()) - set(config.keys()))
  if missing:
    raise ValueError(f"The config lacks the sections {missing} that method {config.method!r} reads; "
                     f"build it with gmcl.config.method_config({config.method!r}) or an experiment config.")
  d, m, t = config.data, config.model, config.train
  require(isinstance(config.seed, int) and not isinstance(config.seed, bool), "seed", config.seed,
          "an integer")
  require(isinstance(config.num_seeds, int) and config.num_seeds >= 1, "num_seeds", config.num_seeds,
          "an integer >= 1")
  require(d.dataset in DATASETS, "data.dataset", d.dataset, str(sorted(DATASETS)))
  if d.get("imagenet50_classes", ""):
    from gmcl.data.sources import imagenet50_classes  # pylint: disable=import-outside-toplevel
    imagenet50_classes(d.imagenet50_classes)  # raises, naming the key, unless 50 distinct labels
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
  require(d.max_tasks >= 0, "data.max_tasks", d.max_tasks, ">= 0 (0 keeps every task)")
  require(isinstance(d.arrays, str) and (d.arrays == "" or (d.arrays.endswith(".npz") and os.path.isfile(d.arrays))),
          "data.arrays", d.arrays, "\"\" (TFDS) or an existing .npz file written by "
          f"`python -m gmcl.data.prepare {d.dataset} --export_npz FILE`")
  full = sequence_length(config, limited=False)
  require(d.max_tasks <= full, "data.max_tasks", d.max_tasks,
          f"0 or at most the {full} tasks of the {d.protocol} sequence of {d.dataset}")
  require(d.train_limit >= 0, "data.train_limit", d.train_limit, ">= 0")
  e = config.eval
  require(isinstance(e.reverse, str) and all(a in ("mlp", "cnn") for a in reverse_architectures(config)),
          "eval.reverse", e.reverse, '"" (off), "mlp", "cnn" or "mlp,cnn"')
  for key in ("reverse_steps", "reverse_samples_per_class"):
    require(isinstance(e[key], int) and e[key] >= 1, f"eval.{key}", e[key], "an integer >= 1")
  require(e.oracle in ("", "mlp", "cnn"), "eval.oracle", e.oracle, '"" (off), "mlp" or "cnn"')
  for key in ("oracle_steps", "oracle_samples_per_class"):
    require(isinstance(e[key], int) and e[key] >= 1, f"eval.{key}", e[key], "an integer >= 1")
  seed = e.get("oracle_seed", -1)
  require(isinstance(seed, int) and not isinstance(seed, bool) and seed >= -1, "eval.oracle_seed", seed,
          "-1 (config.seed) or a seed >= 0")
  require(isinstance(e.validation_fraction, (int, float)) and 0.0 <= e.validation_fraction < 1.0,
          "eval.validation_fraction", e.validation_fraction, "0.0 (off) or a share in (0, 1)")
  require(isinstance(e.validation_every_steps, int) and e.validation_every_steps >= 0,
          "eval.validation_every_steps", e.validation_every_steps, "an integer >= 0 (0: each task's end)")
  require(e.validation_every_steps == 0 or e.validation_fraction > 0, "eval.validation_every_steps",
          e.validation_every_steps, "0 unless eval.validation_fraction > 0 (nothing is held out to select on)")
  require(e.get("accuracy_average", "examples") in ("examples", "tasks"), "eval.accuracy_average",
          e.get("accuracy_average"), '"examples" (the test images of the classes seen, pooled) or "tasks" '
          "(the mean of the tasks' accuracies)")
  require(d.test_limit >= 0, "data.test_limit", d.test_limit, ">= 0")
  cc = config.compile
  require(isinstance(cc.cache_dir, str), "compile.cache_dir", cc.cache_dir, '"auto", "" (off) or a folder')
  require(isinstance(cc.min_compile_secs, (int, float)) and not isinstance(cc.min_compile_secs, bool)
          and cc.min_compile_secs >= 0, "compile.min_compile_secs", cc.min_compile_secs, "a number >= 0")
  require(isinstance(cc.get("programs", True), bool), "compile.programs", cc.get("programs"), "True or False")
  max_mb = cc.get("max_mb", 0)
  require(isinstance(max_mb, (int, float)) and not isinstance(max_mb, bool) and max_mb >= 0, "compile.max_mb",
          max_mb, "a number of MiB >= 0 (0: no limit)")
  require(m.classifier in CLASSIFIERS, "model.classifier", m.classifier, str(sorted(CLASSIFIERS)))
  require(m.gan in ("dcgan", "mlp"), "model.gan", m.gan, "'dcgan' or 'mlp'")
  require(m.z_dim >= 1, "model.z_dim", m.z_dim, ">= 1")
  require(m.output_activation in ("tanh", "sigmoid", "none"), "model.output_activation",
           m.output_activation, "'tanh', 'sigmoid' or 'none'")
  try:
    check_plan_name(m.conv_plan)
  except ValueError as e:
    raise ValueError(f"model.conv_plan: {e}") from None
  require(m.conditioning in ("concat", "batchnorm"), "model.conditioning", m.conditioning,
           "'concat' or 'batchnorm'")
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
  require(t.seed_axis in ("auto", "vmap", "unroll"), "train.seed_axis", t.seed_axis, "'auto', 'vmap' or 'unroll'")
  require(t.xla_cpu_fusions in XLA_CPU_FUSIONS, "train.xla_cpu_fusions", t.xla_cpu_fusions,
          str(list(XLA_CPU_FUSIONS)))
  require(config.parallel.mode in ("none", "jit", "pmap"), "parallel.mode", config.parallel.mode,
           "'none', 'jit' or 'pmap'")
  require(config.parallel.num_devices >= 0, "parallel.num_devices", config.parallel.num_devices,
           ">= 0 (0: every local device)")
  lg = config.get("log")
  if lg is not None:
    require(isinstance(lg.every_steps, int) and not isinstance(lg.every_steps, bool) and lg.every_steps >= 0,
            "log.every_steps", lg.every_steps, "0 (off) or an integer >= 1")
    for key in ("tensorboard", "csv", "plots"):
      require(isinstance(lg[key], bool), f"log.{key}", lg[key], "True or False")
  require(config.checkpoint.every_steps >= 0, "checkpoint.every_steps",
           config.checkpoint.every_steps, ">= 0 (0: only at task boundaries)")
  require(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, ">= 1")
  require(config.eval.batch_size >= 1, "eval.batch_size", config.eval.batch_size, ">= 1")
  spec.check(config)
