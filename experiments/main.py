"""Runs a continual-learning experiment.

  python -m experiments.main --config experiments/configs/dgr.py:dataset=mnist --workdir runs/dgr
  python -m experiments.main --config experiments/configs/sft.py:smoke --workdir /tmp/sft \
      --config.train.solver_steps=200
  # a finished run of the first 5 tasks, continued to all 10 (as if run to 10 from the start):
  python -m experiments.main --config CONFIG --config.data.max_tasks=0 --workdir W --extend
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:args]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where results.json, timings.json and sample grids go.")
flags.DEFINE_bool("progress", True, "Show a progress bar per task.")
flags.DEFINE_bool("resume", True, "Continue from the workdir's checkpoints, if it has any.")
flags.DEFINE_bool("overwrite", False, "Start afresh even if the workdir holds a finished run.")
flags.DEFINE_bool("extend", False, "Continue the workdir's run (finished or not) to more tasks: its "
                  "checkpoints have a smaller data.max_tasks than --config's (0 = every task).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (TPU VM slices, "
                  "multi-node GPU); run the same command on every host.")
flags.DEFINE_integer("stop_after_steps", None, "Stop after this many training steps of this call "
                     "(after the checkpoint due then), with exit status 3: for resume checks.")
flags.mark_flags_as_required(["config", "workdir"])

STOPPED = 3  # the exit status of a run stopped by --stop_after_steps


def _unknown_override(argv) -> str:
  """For a ``--config.a.b=v`` naming a key the config lacks: which part, and the valid keys there."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec_arg is None and "--config" in argv:
    spec_arg = argv[argv.index("--config") + 1]
  if not spec_arg:
    return ""
  path, _, args = spec_arg.partition(":")
  module_spec = importlib.util.spec_from_file_location("_gmcl_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(args) if args else module.get_config()
  from gmcl.config import unknown_key  # pylint: disable=import-outside-toplevel
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      message = unknown_key(config, a[len("--config."):].split("=", 1)[0])
      if message:
        return f"--config.{message}"
  return ""


def _parse_flags(argv):
  """absl's flag parsing; an override of a key the config lacks names the key and the valid ones."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    raise SystemExit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.") from None
  except (KeyError, AttributeError):  # an override of a key the config lacks, or a bug elsewhere
    try:
      message = _unknown_override(argv)
    except Exception:  # pylint: disable=broad-except
      message = ""
    if not message:
      raise
    raise SystemExit(f"FATAL Flags parsing error: {message}") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:  # keep the console to progress and per-task lines
    logging.set_verbosity(logging.WARNING)
  if FLAGS.multihost:
    from gmcl.parallel import initialize_multihost  # pylint: disable=import-outside-toplevel
    initialize_multihost()
  from gmcl import loop  # pylint: disable=import-outside-toplevel
  try:
    loop.run(FLAGS.config, FLAGS.workdir, progress=FLAGS.progress, resume=FLAGS.resume,
             overwrite=FLAGS.overwrite, stop_after_steps=FLAGS.stop_after_steps, extend=FLAGS.extend)
  except loop.RunInterrupted as e:
    print(f"gmcl: {e}")
    raise SystemExit(STOPPED) from None


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
