"""Checkpoint and exact resume: an interrupted run continues to the same results.json, byte for byte."""

import glob
import os

import pytest

from experiments.configs import dgm, dgr, lgm, lsa, mergan, ogm, sft
from gmcl import loop


def _config(module, **train):
  c = module.get_config("smoke")
  c.model.gan = "mlp"
  c.data.max_tasks = 3 if module is sft else 2
  c.checkpoint.every_steps = 7
  for k, v in train.items():
    c.train[k] = v
  return c


def _read(path):
  with open(path, "rb") as f:
    return f.read()


def _quiet(_):
  pass


# The fast tier resumes one snapshot method (DGR) and DGM across growth; make test-all every method.
_slow = pytest.mark.slow


@pytest.mark.parametrize("module, stops", [
    pytest.param(sft, [25, 20], id="sft", marks=_slow), pytest.param(dgr, [27], id="dgr"),
    pytest.param(mergan, [37], id="mergan-jr", marks=_slow), pytest.param(dgm, [15], id="dgm-growth"),
    pytest.param(lgm, [27], id="lgm-hat-bridge", marks=_slow),
    pytest.param(lsa, [25, 30], id="lsa-replay", marks=_slow),
    pytest.param(ogm, [30], id="ogm-generator", marks=_slow),
])
def test_interrupted_run_resumes_to_identical_results(mnist_data, tmp_path, module, stops):
  c = _config(module)
  if module is lgm:  # HAT masks (a batch norm and head per task begun) and a bridge
    c.lgm.protection, c.lgm.encoder = "hat", "bridge"
  if module is lsa:  # with the generative memory (a DGR state inside lsa's, its snapshot G_{t-1});
    # 4 generator + 20 solver + 20 bridge steps per task: stops at step 25 (task 1's bridge phase,
    # a no-op there), then at step 55 (task 2's solver phase, with the snapshots restored)
    c.data.pad_to, c.data.value_range = 32, (-1.0, 1.0)  # the fixture's data
    c.lsa.replay, c.model.output_activation = "generator", "tanh"
  if module is ogm:  # DGR's generator as the memory, the distillation step's own Adam state
    c.ogm.memory, c.ogm.variant = "generator", "distill"
  if module is dgm:  # the network grows after task 1: the checkpoint at step 14 (mid task 2)
    c.train.generator_steps = 10  # is restored into a template built from the recorded widths
  if module is mergan:  # joint retraining; the oracle's scores must come out the same too
    c.mergan.variant = "jr"
    c.mergan.oracle_dir = str(tmp_path / "oracles")
  whole = loop.run(c, str(tmp_path / "whole"), data=mnist_data, progress=False, log=_quiet)
  parts = str(tmp_path / "parts")
  lines = []
  for stop in stops:  # interrupted mid-phase, possibly several times
    with pytest.raises(loop.RunInterrupted):
      loop.run(c, parts, data=mnist_data, progress=False, log=lines.append, stop_after_steps=stop)
  resumed = loop.run(c, parts, data=mnist_data, progress=False, log=lines.append)
  assert any(line.startswith("Resuming from checkpoint") for line in lines)
  assert resumed == whole
  assert _read(os.path.join(parts, "results.json")) == _read(str(tmp_path / "whole" / "results.json"))
  snapshots = sorted(int(os.path.basename(p)) for p in
                     glob.glob(os.path.join(parts, "checkpoints", "snapshots", "*"))
                     if os.path.basename(p).isdigit())
  # One snapshot per task boundary (the newest two kept); sft and DGM (masks, no copies) have none.
  assert snapshots == ([] if module in (sft, dgm) else [1, 2])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(mnist_data, tmp_path):
  c = _config(sft)
  whole = loop.run(c, str(tmp_path / "whole"), data=mnist_data, progress=False, log=_quiet)
  workdir = str(tmp_path / "run")
  with pytest.raises(loop.RunInterrupted):
    loop.run(c, workdir, data=mnist_data, progress=False, log=_quiet, stop_after_steps=30)
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, "checkpoints", "*"))
                 if os.path.basename(p).isdigit())
  assert len(steps) == 2
  latest = os.path.join(workdir, "checkpoints", str(steps[-1]), "state")
  for path in glob.glob(os.path.join(latest, "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"half-written")
  lines = []
  resumed = loop.run(c, workdir, data=mnist_data, progress=False, log=lines.append)
  assert any(f"Checkpoint {steps[-1]}" in line and "cannot be restored" in line for line in lines)
  assert any(f"Resuming from checkpoint {steps[0]}" in line for line in lines)
  assert resumed == whole


def test_all_checkpoints_unreadable_is_refused_and_nothing_changes(mnist_data, tmp_path):
  c = _config(sft)
  with pytest.raises(loop.RunInterrupted):
    loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet, stop_after_steps=30)
  for path in glob.glob(str(tmp_path / "checkpoints" / "[0-9]*" / "state" / "**" / "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"half-written")
  before = {p: _read(p) for p in glob.glob(str(tmp_path / "**"), recursive=True) if os.path.isfile(p)}
  lines = []
  with pytest.raises(RuntimeError, match=r"None of the checkpoints .* can be restored.*--overwrite"):
    loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lines.append)
  assert "no older checkpoint is left" in [line for line in lines if "cannot be restored" in line][-1]
  after = {p: _read(p) for p in glob.glob(str(tmp_path / "**"), recursive=True) if os.path.isfile(p)}
  assert after == before


def test_finished_run_without_its_results_gets_them_back_from_the_final_checkpoint(mnist_data, tmp_path):
  c = _config(sft, solver_steps=5)
  loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet)
  path = str(tmp_path / "results.json")
  before = _read(path)
  for damage in (b"", None):  # truncated, then deleted
    if damage is None:
      os.remove(path)
    else:
      with open(path, "wb") as f:
        f.write(damage)
    lines = []
    loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lines.append)
    assert _read(path) == before
    assert any("rewritten from the final checkpoint" in line for line in lines)


def test_a_non_finite_state_is_never_checkpointed(mnist_data, tmp_path, monkeypatch):
  """The guard looks at the state it saves (parameters, optimiser state), not only the losses."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from gmcl.methods.classifier import ClassifierMethod  # pylint: disable=import-outside-toplevel
  c = _config(sft, solver_steps=5)
  ends = []

  def poisoned_end_task(self, state):  # the last task ends with NaN weights (its losses were finite)
    ends.append(1)
    if len(ends) == 3:
      state = state.replace(solver=state.solver.replace(
          params=jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state.solver.params)))
    return state

  monkeypatch.setattr(ClassifierMethod, "end_task", poisoned_end_task)
  with pytest.raises(FloatingPointError, match=r"Non-finite values in the state.*params.*not checkpointed"
                                               r".*last good checkpoint is step"):
    loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet)
  from gmcl.checkpoint import RunCheckpointer  # pylint: disable=import-outside-toplevel
  ckpt = RunCheckpointer(str(tmp_path / "checkpoints"))
  step, state, meta = ckpt.restore_latest(lambda meta: ClassifierMethod(c, (32, 32, 1), 10).init(
      jax.random.PRNGKey(0)))
  ckpt.close()
  assert meta["position"]["task"] == 2  # the last checkpoint is task 2's end, and it is finite
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.solver.params))
  import json  # pylint: disable=import-outside-toplevel
  with open(tmp_path / "results.json") as f:  # the NaN state was not scored either
    assert json.load(f)["completed_tasks"] == 2


def test_one_run_per_workdir(mnist_data, tmp_path):
  from gmcl.workdir import WorkdirBusy, WorkdirLock  # pylint: disable=import-outside-toplevel
  c = _config(sft, solver_steps=5)
  with WorkdirLock(str(tmp_path)):  # another run holds the workdir
    with pytest.raises(WorkdirBusy, match=rf"in use by another run: PID {os.getpid()}"):
      loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet)
    assert sorted(os.listdir(tmp_path)) == [".gmcl.lock"]  # nothing was written
  assert os.listdir(tmp_path) == []  # released and removed
  with open(tmp_path / ".gmcl.lock", "w") as f:  # left by a holder that died (no flock held)
    f.write('{"pid": 999999, "host": "h", "started": "then"}')
  lines = []
  loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lines.append)
  assert any("PID 999999 on h" in line and "taken over" in line for line in lines)
  assert not os.path.exists(tmp_path / ".gmcl.lock")


def test_finished_run_is_not_overwritten(mnist_data, tmp_path):
  c = _config(sft, solver_steps=5)
  loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet)
  before = _read(str(tmp_path / "results.json"))
  with pytest.raises(FileExistsError, match="holds a finished run.*overwrite"):
    loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet)
  assert _read(str(tmp_path / "results.json")) == before
  again = loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet, overwrite=True)
  assert again["completed_tasks"] == 3


def test_resume_with_another_config_is_refused(mnist_data, tmp_path):
  c = _config(sft)
  with pytest.raises(loop.RunInterrupted):
    loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet, stop_after_steps=10)
  c.train.solver_lr = 0.5
  with pytest.raises(ValueError, match=r"train.solver_lr: 0.001 in the checkpoint, 0.5 now"):
    loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet)
  with pytest.raises(FileExistsError, match="holds checkpoints"):
    loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet, resume=False)


def test_checkpoint_of_another_state_layout_is_refused_and_kept(mnist_data, tmp_path, monkeypatch):
  """A checkpoint written with another state layout (``Method.state_format``) is refused with a
  message naming both layouts, before anything is restored, retrained or overwritten."""
  from gmcl.methods.classifier import ClassifierMethod  # pylint: disable=import-outside-toplevel
  c = _config(sft)
  with pytest.raises(loop.RunInterrupted):
    loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet, stop_after_steps=10)
  before = sorted(glob.glob(str(tmp_path / "checkpoints" / "**"), recursive=True))
  monkeypatch.setattr(ClassifierMethod, "state_format", ClassifierMethod.state_format + 1)
  warnings = []
  with pytest.raises(ValueError, match=r"state in layout 1; this gmcl writes and reads layout 2.*--overwrite"):
    loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=warnings.append)
  assert not any("cannot be restored" in w for w in warnings)  # refused, not skipped
  assert sorted(glob.glob(str(tmp_path / "checkpoints" / "**"), recursive=True)) == before
  assert not os.path.exists(tmp_path / "results.json")


def test_resume_with_other_shapes_or_another_method_is_refused_before_restoring(mnist_data, tmp_path):
  """Another model (other shapes) or another method on a killed workdir: refused with the keys
  that differ, before any restore is tried, and nothing in the workdir changes."""
  c = _config(sft)
  with pytest.raises(loop.RunInterrupted):
    loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=_quiet, stop_after_steps=10)
  before = sorted(glob.glob(str(tmp_path / "**"), recursive=True))
  wider = _config(sft)
  wider.model.classifier_hidden = (32,)
  other = _config(dgr)
  for changed, match in ((wider, r"model.classifier_hidden"), (other, r"method: 'sft' in the checkpoint")):
    warnings = []
    with pytest.raises(ValueError, match=match):
      loop.run(changed, str(tmp_path), data=mnist_data, progress=False, log=warnings.append)
    assert not any("cannot be restored" in w for w in warnings)
    assert sorted(glob.glob(str(tmp_path / "**"), recursive=True)) == before


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(mnist_data, tmp_path):
  import dataclasses
  import numpy as np
  x = mnist_data.x_train.copy()
  x[mnist_data.y_train == 1] = np.nan  # task 2's images poison the loss
  data = dataclasses.replace(mnist_data, x_train=x)
  c = _config(sft)
  with pytest.raises(FloatingPointError,
                     match=r"Non-finite loss in task 2, phase 'solver', step 1 \(global step 21\): "
                           r"solver_loss=nan.*last good checkpoint is step 20"):
    loop.run(c, str(tmp_path), data=data, progress=False, log=_quiet)
  from gmcl.checkpoint import RunCheckpointer
  ckpt = RunCheckpointer(str(tmp_path / "checkpoints"))
  assert ckpt.steps()[-1] == 20
  with open(tmp_path / "results.json") as f:
    assert '"completed_tasks": 1' in f.read()


@pytest.mark.slow
def test_same_seed_gives_the_same_results_bytes(mnist_data, tmp_path):
  c = _config(dgr)
  for name in ("a", "b"):
    loop.run(c, str(tmp_path / name), data=mnist_data, progress=False, log=_quiet)
  assert _read(str(tmp_path / "a" / "results.json")) == _read(str(tmp_path / "b" / "results.json"))
  c.seed = 1
  loop.run(c, str(tmp_path / "c"), data=mnist_data, progress=False, log=_quiet)
  assert _read(str(tmp_path / "a" / "results.json")) != _read(str(tmp_path / "c" / "results.json"))


def test_config_comparison_of_a_resume_knows_added_keys_and_other_methods_sections():
  """A checkpoint written before a key existed resumes when the key has the value that reproduces
  the old code; another method's section (checkpoints written before configs held only the chosen
  method's sections have every method's) never blocks a resume."""
  from gmcl.config import added_keys, method_config
  from gmcl.loop import _config_differences
  saved = dgr.get_config("smoke").to_dict()
  for name in ("lsa", "ogm", "mergan"):  # as written when every method's section was in every config
    saved[name] = method_config(name)[name].to_dict()
  assert _config_differences(saved, dgr.get_config("smoke").to_dict(), added_keys("dgr")) == []
  old_ogm = ogm.get_config("smoke,variant=lookahead").to_dict()
  for key in ("lookahead_clip", "lookahead_target"):
    old_ogm["ogm"].pop(key)
  now = ogm.get_config("smoke,variant=lookahead")
  diffs = _config_differences(old_ogm, now.to_dict(), added_keys("ogm"))
  assert len(diffs) == 1 and diffs[0].startswith("ogm.lookahead_clip: absent in the checkpoint")
  assert "--config.ogm.lookahead_clip=0.0 reproduces" in diffs[0]
  now.ogm.lookahead_clip = 0.0
  assert _config_differences(old_ogm, now.to_dict(), added_keys("ogm")) == []
  changed = now.to_dict()
  changed["ogm"]["epsilon"] = 0.5  # the method's own section is still compared
  assert [d.split(":")[0] for d in _config_differences(old_ogm, changed, added_keys("ogm"))] == ["ogm.epsilon"]
  # ogm's added keys are ogm's: another method does not accept them
  assert "ogm.lookahead_clip" not in added_keys("dgr")


def test_an_added_key_that_matters_only_under_some_configs():
  """dgr.critic_aux_on_fake: a record from before the key reproduces the new default when its
  generator is unconditional (no class term: the key has no effect), but only True when it is
  conditional (the critic's class term was on G_t's samples too)."""
  from gmcl.config import added_keys
  from gmcl.loop import _config_differences
  for conditional in (False, True):
    now = dgr.get_config("smoke")
    now.model.conditional = conditional
    saved = now.to_dict()
    del saved["dgr"]["critic_aux_on_fake"]
    diffs = _config_differences(saved, now.to_dict(), added_keys("dgr"))
    if not conditional:
      assert diffs == []
    else:
      assert len(diffs) == 1 and "--config.dgr.critic_aux_on_fake=True reproduces" in diffs[0]
      now.dgr.critic_aux_on_fake = True
      assert _config_differences(saved, now.to_dict(), added_keys("dgr")) == []


def test_a_full_disk_is_one_clear_error_and_the_run_resumes_after(mnist_data, tmp_path, monkeypatch):
  import collections  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  c = _config(sft)
  whole = loop.run(c, str(tmp_path / "whole"), data=mnist_data, progress=False, log=_quiet)
  real = shutil.disk_usage
  usage = collections.namedtuple("usage", "total used free")
  calls = []

  def full_after_two(path):  # the disk fills up after the first two checkpoints
    calls.append(path)
    return usage(1 << 40, 1 << 40, 0) if len(calls) > 2 else real(path)

  monkeypatch.setattr(shutil, "disk_usage", full_after_two)
  with pytest.raises(OSError, match=r"No space left on device for checkpoint \d+ in .*needs about .* MiB, 0.0 MiB"):
    loop.run(c, str(tmp_path / "run"), data=mnist_data, progress=False, log=_quiet)
  monkeypatch.setattr(shutil, "disk_usage", real)
  assert loop.run(c, str(tmp_path / "run"), data=mnist_data, progress=False, log=_quiet) == whole
