"""Scores a finished run's final generator again, with judges it was not trained with.

  python -m experiments.rescore --workdir W --oracle cnn --reverse mlp,cnn

reads W's results.json and last checkpoint (nothing in W is changed except the output file) and
writes ``W/rescored.json`` (``--out``; an existing one is kept unless ``--overwrite``): after the
last task, for each seed,

- ``A_oracle_ARCH`` and ``oracle_ARCH_per_class``: MeRGAN's protocol with an oracle of
  architecture ARCH (``mlp`` as the official MNIST oracle, ``cnn`` a small CNN), trained once on
  all real training images and cached as the runs' oracles are; its own test accuracy is
  ``oracle_ARCH_test_accuracy``. A conditional generator only. Adam steps of 128 images
  (``--oracle_steps``; 0, the default, is ``ORACLE_STEPS``: the MLP 2000, the CNN 6000, where it
  first passes 99 % on MNIST's real test images: 99.09 % on DGM's 32x32 preprocessing, 98.78 %
  at 2000).
- ``A_reverse_ARCH``: reverse accuracy, a fresh ARCH classifier trained only on the generator's
  samples of the classes seen, tested on their real test images (an unconditional generator's
  samples are labelled by the run's own classifier, as DGR replays them).

and at the top the mean and sample sd over seeds of each figure (``*_std``), the run's own
``A`` and ``scores.A_oracle`` after its last task for comparison, the machine, and ``workdir``: the run
folder's name (not its path, which names the machine it ran on). The samples are
drawn with keys of their own (not the run's), so two rescorings of one run agree and differ
from the run's own scores only by the judge and the draw.
"""

import os

from absl import app, flags

FLAGS = flags.FLAGS

ARCHITECTURES = ("mlp", "cnn")
ORACLE_STEPS = {"mlp": 2000, "cnn": 6000}  # per architecture, for --oracle_steps=0 (module docstring)
RESCORE_KEY = 50_000  # fold_in offset of the rescoring's keys (the run's own scores use 10_000-30_000 + t)


def run_name(workdir: str) -> str:
  """The run folder's own name, recorded instead of its path (``.`` and ``runs/x/`` name their folder)."""
  return os.path.basename(os.path.abspath(workdir))


def check_architectures(flag: str, names) -> list:
  bad = [n for n in names if n not in ARCHITECTURES]
  if bad:
    raise app.UsageError(f"--{flag}={','.join(names)}: {bad} unknown; valid: {', '.join(ARCHITECTURES)}.")
  return list(names)


def oracle_steps_for(arch: str, steps: int = 0) -> int:
  """The oracle's Adam steps: ``steps``, or the architecture's default (``ORACLE_STEPS``) at 0."""
  if steps < 0:
    raise ValueError(f"rescore: oracle_steps={steps}; valid: 0 (each architecture's default, "
                     f"{ORACLE_STEPS}) or a number of steps >= 1.")
  return int(steps) or ORACLE_STEPS[arch]


def rescore(workdir: str, oracles=(), reverses=(), *, oracle_steps=0, samples_per_class=6400,
            reverse_steps=2000, reverse_samples_per_class=6000, data=None, cache_dir=None, log=print) -> dict:
  """The figures described in the module docstring, as a dict (nothing is written)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from gmcl import loop, xla  # pylint: disable=import-outside-toplevel
  from gmcl import seeds as seeds_lib  # pylint: disable=import-outside-toplevel
  from gmcl.config import oracle_seed  # pylint: disable=import-outside-toplevel
  from gmcl.evaluation import oracle, reverse  # pylint: disable=import-outside-toplevel

  if not oracles and not reverses:
    raise ValueError("rescore: nothing to score; name --oracle and/or --reverse architectures.")
  steps = {arch: oracle_steps_for(arch, oracle_steps) for arch in oracles}  # (a bad count fails before loading)
  run = loop.restore_final(workdir, data=data, log=log)
  config, data, method, seq = run.config, run.data, run.method, run.sequence
  if oracles and not (method.has_generator and method.conditional):
    raise ValueError(f"rescore --oracle: the oracle scores each class's samples, so it needs a conditional "
                     f"generator; {config.method} in {workdir} has "
                     + ("an unconditional one" if method.has_generator else "none") + ". --reverse works with it.")
  if reverses and not method.has_generator:
    raise ValueError(f"rescore --reverse: {config.method} in {workdir} has no generator to draw training data from.")
  classes = seq.seen_classes(len(seq) - 1)
  sample = jax.jit(method.sample)
  predict = jax.jit(method.predict)
  judges = {}
  for arch in oracles:
    d = config.data
    settings = oracle.OracleSettings(
        dataset=d.dataset, pad_to=int(d.pad_to), value_range=tuple(float(v) for v in d.value_range),
        architecture=arch, hidden=tuple(config.eval.get("oracle_hidden", (512, 256, 128))),
        steps=steps[arch], seed=oracle_seed(config),
        data_fingerprint=oracle.fingerprint(data.x_train, data.y_train))
    judges[arch] = oracle.load_or_train(settings, data.x_train, data.y_train, data.x_test, data.y_test,
                                        data.num_classes, cache_dir=cache_dir, log=log)
  per_seed = []
  for seed, state in zip(run.seeds, run.states):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), RESCORE_KEY)
    out = {"seed": seed}
    for j, (arch, judge) in enumerate(judges.items()):
      per_class = oracle.generated_accuracy(lambda k, labels, state=state: sample(state, k, labels), judge.predict,
                                            classes, jax.random.fold_in(key, j), samples_per_class=samples_per_class)
      out[f"A_oracle_{arch}"] = float(np.mean(list(per_class.values())))
      out[f"oracle_{arch}_per_class"] = {str(c): v for c, v in per_class.items()}
    for j, arch in enumerate(reverses):
      label_fn = None if method.conditional else (lambda xb, state=state: predict(state, xb))
      out[f"A_reverse_{arch}"] = reverse.reverse_accuracy(
          lambda k, labels, state=state: sample(state, k, labels), classes, data.x_test, data.y_test,
          jax.random.fold_in(key, 100 + j), data.num_classes, architecture=arch, steps=int(reverse_steps),
          per_class=int(reverse_samples_per_class), label_fn=label_fn)
    log("rescore: seed " + str(seed) + " " + " ".join(f"{k}={100 * v:.2f}%" for k, v in out.items()
                                                      if isinstance(v, float)))
    per_seed.append(out)
  results = run.results
  top = {"workdir": run_name(workdir),
         "method": config.method, "dataset": config.data.dataset,
         "protocol": config.data.protocol, "seeds": run.seeds, "after_task": len(seq), "checkpoint_step": run.step,
         "run_A": results["A"][-1], "run_A_std": results["A_std"][-1]}
  if results.get("scores", {}).get("A_oracle"):
    top["run_A_oracle"] = results["scores"]["A_oracle"][-1]
    top["run_A_oracle_std"] = results["scores"].get("A_oracle_std", [None])[-1]
  for arch, judge in judges.items():
    top[f"oracle_{arch}_test_accuracy"] = judge.test_accuracy
    top[f"oracle_{arch}_key"] = judge.settings.key()
  names = [k for k in per_seed[0] if k.startswith("A_")]
  for name in names:
    top[name], top[f"{name}_std"] = seeds_lib.mean_std([p[name] for p in per_seed])
  for arch in judges:  # per class, the mean over seeds
    top[f"oracle_{arch}_per_class"] = {str(c): float(np.mean([p[f"oracle_{arch}_per_class"][str(c)] for p in per_seed]))
                                       for c in classes}
  top["settings"] = {"oracle_steps": {arch: judge.settings.steps for arch, judge in judges.items()},
                     "samples_per_class": samples_per_class,
                     "reverse_steps": reverse_steps, "reverse_samples_per_class": reverse_samples_per_class}
  top["machine"] = xla.machine_description()
  top["per_seed"] = per_seed
  return top


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  oracles = check_architectures("oracle", FLAGS.oracle)
  reverses = check_architectures("reverse", FLAGS.reverse)
  out = FLAGS.out or os.path.join(FLAGS.workdir, "rescored.json")
  if os.path.exists(out) and not FLAGS.overwrite:
    raise SystemExit(f"rescore: {out} exists; pass --overwrite to replace it, or --out another file.")
  results = rescore(FLAGS.workdir, oracles, reverses, oracle_steps=FLAGS.oracle_steps,
                    samples_per_class=FLAGS.samples_per_class, reverse_steps=FLAGS.reverse_steps,
                    reverse_samples_per_class=FLAGS.reverse_samples_per_class)
  from gmcl.loop import write_json  # pylint: disable=import-outside-toplevel
  write_json(out, results)
  print(f"rescore: wrote {out}")
  for name in sorted(k for k in results if k.startswith("A_") and not k.endswith("_std")):
    print(f"  {name}: {100 * results[name]:.2f} ± {100 * results[name + '_std']:.2f} (seeds {results['seeds']})")


def define_flags():
  """The command line's flags (defined only when run as a program: importing defines none)."""
  flags.DEFINE_string("workdir", None, "A finished run's workdir (results.json and checkpoints/).")
  flags.DEFINE_list("oracle", [], "Oracle architectures: mlp, cnn.")
  flags.DEFINE_list("reverse", [], "Reverse-accuracy architectures: mlp, cnn.")
  flags.DEFINE_string("out", "", "Output file (default WORKDIR/rescored.json).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")
  flags.DEFINE_integer("oracle_steps", 0,
                       f"The oracle's Adam steps of 128 images; 0: per architecture, {ORACLE_STEPS}.")
  flags.DEFINE_integer("samples_per_class", 6400, "Generated samples per class for the oracle (MeRGAN: 6400).")
  flags.DEFINE_integer("reverse_steps", 2000, "The reverse classifier's Adam steps.")
  flags.DEFINE_integer("reverse_samples_per_class", 6000, "Generated training samples per class for it.")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
