"""Extending a run to more tasks (``loop.run(extend=True)``, ``--extend``): a run of the first N tasks,
finished or stopped, continued to a longer sequence gives the results.json of a run of the longer
sequence from the start, byte for byte; where that cannot hold, it is refused before anything changes."""

import glob
import json
import os

import pytest

from experiments.configs import dgm, dgr, mergan, sft
from gmcl import loop


def _quiet(_):
  pass


def _config(module, max_tasks, **kw):
  c = module.get_config("smoke")
  c.model.gan = "mlp"
  c.data.max_tasks = max_tasks
  c.checkpoint.every_steps = 7
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _read(path):
  with open(path, "rb") as f:
    return f.read()


def _tree(path):
  return {p: _read(p) for p in sorted(glob.glob(os.path.join(path, "**"), recursive=True)) if os.path.isfile(p)}


@pytest.mark.parametrize("module, seeds, stop", [
    pytest.param(dgr, 2, None, id="dgr-2seeds-finished"),
    pytest.param(sft, 1, 25, id="sft-stopped-mid-task"),
    pytest.param(dgm, 1, None, id="dgm-growth"),  # its masks have dgm.max_tasks rows, whatever the sequence
    pytest.param(mergan, 2, None, id="mergan-ra-oracle", marks=pytest.mark.slow),
])
def test_an_extended_run_equals_the_longer_run_from_the_start(mnist_data, tmp_path, module, seeds, stop):
  long = _config(module, 3, num_seeds=seeds)
  if module is dgm:
    long.train.generator_steps = 4
  if module is dgr:  # reverse accuracy is measured after the last task only: not after task 2 of 3
    long.eval.reverse, long.eval.reverse_steps, long.eval.reverse_samples_per_class = "mlp", 3, 8
  if module is mergan:  # the oracle's scores of the added tasks come out the same too
    long.mergan.variant, long.mergan.oracle_dir = "ra", str(tmp_path / "oracles")
  whole = loop.run(long, str(tmp_path / "whole"), data=mnist_data, progress=False, log=_quiet)
  short = long.copy_and_resolve_references()
  short.data.max_tasks = 2
  parts = str(tmp_path / "parts")
  if stop is None:
    first = loop.run(short, parts, data=mnist_data, progress=False, log=_quiet)
    assert first["completed_tasks"] == 2 and len(first["tasks"]) == 2
  else:  # stopped inside task 2 of the short run, then extended from there
    with pytest.raises(loop.RunInterrupted):
      loop.run(short, parts, data=mnist_data, progress=False, log=_quiet, stop_after_steps=stop)
  lines = []
  extended = loop.run(long, parts, data=mnist_data, progress=False, log=lines.append, extend=True)
  assert any(line.startswith("Extending the run of checkpoint") for line in lines)
  assert extended == whole
  assert _read(os.path.join(parts, "results.json")) == _read(str(tmp_path / "whole" / "results.json"))
  with open(os.path.join(parts, "timings.json")) as f:
    said = json.load(f)["extended"]
  assert len(said) == 1 and said[0]["from_tasks"] == 2 and said[0]["to_tasks"] == 3
  assert said[0]["at_task"] == (2 if stop is None else 1)
  if module is dgr:  # the shorter run's value after its last task is kept beside results.json
    assert first["scores"]["A_reverse_mlp"][1] is not None
    assert set(said[0]["scores_dropped"]["per_seed"]) == {"0", "1"}
    assert whole["scores"]["A_reverse_mlp"][1] is None and whole["scores"]["A_reverse_mlp"][2] is not None
  with open(os.path.join(str(tmp_path / "whole"), "timings.json")) as f:
    assert "extended" not in json.load(f)
  # extended once, the run is an ordinary finished run of 3 tasks: a second run is refused as one
  with pytest.raises(FileExistsError, match=r"holds a finished run \(3 tasks"):
    loop.run(long, parts, data=mnist_data, progress=False, log=_quiet)


def test_what_extend_refuses_changes_nothing(mnist_data, tmp_path):
  short = _config(sft, 2)
  work = str(tmp_path / "run")
  loop.run(short, work, data=mnist_data, progress=False, log=_quiet)
  before = _tree(work)
  long = _config(sft, 3)
  # without --extend: a finished run is not trained again, and the message says how to extend it
  with pytest.raises(FileExistsError, match=r"extend=True \(--extend\) with a larger data.max_tasks"):
    loop.run(long, work, data=mnist_data, progress=False, log=_quiet)
  # the same length, or a shorter one, is no extension
  with pytest.raises(FileExistsError, match=r"extending needs a larger data.max_tasks"):
    loop.run(short, work, data=mnist_data, progress=False, log=_quiet, extend=True)
  with pytest.raises(FileExistsError, match=r"finished run of 2 tasks and this config's sequence has 1"):
    loop.run(_config(sft, 1), work, data=mnist_data, progress=False, log=_quiet, extend=True)
  # another change beside the number of tasks is refused as in any resume
  other = _config(sft, 3)
  other.train.solver_lr = 0.5
  with pytest.raises(ValueError, match=r"train.solver_lr: 0.001 in the checkpoint, 0.5 now"):
    loop.run(other, work, data=mnist_data, progress=False, log=_quiet, extend=True)
  with pytest.raises(ValueError, match=r"pass one of them"):
    loop.run(long, work, data=mnist_data, progress=False, log=_quiet, extend=True, overwrite=True)
  assert _tree(work) == before
  with pytest.raises(FileNotFoundError, match=r"holds no checkpoints, so there is no run to extend"):
    loop.run(long, str(tmp_path / "empty"), data=mnist_data, progress=False, log=_quiet, extend=True)


def test_a_stopped_short_run_resumed_with_a_longer_sequence_names_extend(mnist_data, tmp_path):
  work = str(tmp_path / "run")
  with pytest.raises(loop.RunInterrupted):
    loop.run(_config(sft, 2), work, data=mnist_data, progress=False, log=_quiet, stop_after_steps=10)
  with pytest.raises(ValueError, match=r"data.max_tasks: 2 in the checkpoint, 3 now(.|\n)*--extend"):
    loop.run(_config(sft, 3), work, data=mnist_data, progress=False, log=_quiet)


def test_state_shaped_by_the_number_of_tasks_is_refused_before_restoring(mnist_data, tmp_path, monkeypatch):
  """A method whose state has a shape set by the sequence's length (none of gmcl's: DGM's and HAT's
  masks have ``max_tasks`` rows of their own) cannot be extended: refused before anything is
  restored or written."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  short = _config(sft, 2)
  work = str(tmp_path / "run")
  loop.run(short, work, data=mnist_data, progress=False, log=_quiet)
  before = _tree(work)
  real = loop.build_method

  def per_task_state(name, config, *args):  # a state with one row per task of the sequence
    method = real(name, config, *args)
    init = method.init
    method.init = lambda key: (init(key), jnp.zeros((config.data.max_tasks,)))
    return method

  monkeypatch.setattr(loop, "build_method", per_task_state)
  with pytest.raises(ValueError, match=r"cannot be extended to 3: sft's state has shapes that depend on the number"):
    loop.run(_config(sft, 3), work, data=mnist_data, progress=False, log=_quiet, extend=True)
  assert _tree(work) == before


def test_seeds_trained_one_after_another_are_refused(mnist_data, tmp_path):
  short = _config(dgm, 2, num_seeds=2)  # DGM's growth: each seed its own shapes
  short.train.generator_steps = 4
  work = str(tmp_path / "run")
  loop.run(short, work, data=mnist_data, progress=False, log=_quiet)
  long = short.copy_and_resolve_references()
  long.data.max_tasks = 3
  with pytest.raises(ValueError, match=r"seeds train one after another .*from its own end"):
    loop.run(long, work, data=mnist_data, progress=False, log=_quiet, extend=True)


def test_a_method_that_drives_its_own_tasks_is_refused(mnist_data, tmp_path):
  from experiments.configs import lsa  # pylint: disable=import-outside-toplevel
  short = _config(lsa, 2)
  short.lsa.mode = "parallel"
  short.data.pad_to, short.data.value_range = 32, (-1.0, 1.0)  # the fixture's data
  work = str(tmp_path / "run")
  loop.run(short, work, data=mnist_data, progress=False, log=_quiet)
  before = _tree(work)
  long = short.copy_and_resolve_references()
  long.data.max_tasks = 3
  with pytest.raises(ValueError, match=r"drives its own tasks without checkpoints, so a run of it cannot be extended"):
    loop.run(long, work, data=mnist_data, progress=False, log=_quiet, extend=True)
  assert _tree(work) == before


def test_a_scenario_that_scores_unseen_tasks_is_refused(mnist_data, tmp_path):
  short = _config(sft, 2)
  short.data.protocol, short.data.num_tasks = "permuted", 3
  short.train.solver_steps = 5
  work = str(tmp_path / "run")
  loop.run(short, work, data=mnist_data, progress=False, log=_quiet)
  long = short.copy_and_resolve_references()
  long.data.max_tasks = 0
  with pytest.raises(ValueError, match=r"scenario scores every task after each one"):
    loop.run(long, work, data=mnist_data, progress=False, log=_quiet, extend=True)


def test_an_extension_stopped_on_the_way_resumes_with_the_same_command(mnist_data, tmp_path):
  long = _config(sft, 3)
  whole = loop.run(long, str(tmp_path / "whole"), data=mnist_data, progress=False, log=_quiet)
  parts = str(tmp_path / "parts")
  loop.run(_config(sft, 2), parts, data=mnist_data, progress=False, log=_quiet)
  with pytest.raises(loop.RunInterrupted):
    loop.run(long, parts, data=mnist_data, progress=False, log=_quiet, extend=True, stop_after_steps=10)
  lines = []
  again = loop.run(long, parts, data=mnist_data, progress=False, log=lines.append, extend=True)
  assert not any(line.startswith("Extending") for line in lines)  # a plain resume of the extended run
  assert again == whole
  assert _read(os.path.join(parts, "results.json")) == _read(str(tmp_path / "whole" / "results.json"))
