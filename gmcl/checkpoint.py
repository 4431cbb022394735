"""Checkpoints of a run with orbax: the train state, the snapshots and where the run stands.

A checkpoint holds, under one orbax step number (the global training-step count):

* ``state``: the method's live state (models, optimiser states) as a pytree
  (``StandardSave``), without its frozen snapshots;
* ``meta`` (JSON): the position in the task sequence (task, phase, step within
  the phase), the scores and metrics so far, the config it was written with, and
  the id of the snapshot it goes with.

The frozen snapshots (G_{t-1}, C_{t-1}) change only at task boundaries, so they are
written once per boundary, to ``snapshots/<id>`` (the number of tasks ended, counted on over groups
of seeds trained one after another: ``group * (tasks + 1) + tasks ended``), and every checkpoint of
the next task refers to that one copy. Seeds trained one after another also keep each seed's final
state, whole, in ``finals/<group>`` (the main checkpoints move on to the next seed).

PRNG keys are not state here: every step's key is ``fold_in`` of the run key (from
``config.seed``) and the step's position, so a resumed run draws the same keys.

Writes are synchronous and atomic (orbax writes a temporary folder and renames it),
so a run killed mid-write leaves the previous checkpoint intact; a checkpoint that
fails to restore is skipped with a warning and the one before it is used.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


def _abstract(tree):
  """The shapes, dtypes and shardings of ``tree``: what orbax restores into."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class IncompatibleCheckpoint(ValueError):
  """A checkpoint that reads back but cannot be resumed by this code (another state layout):
  :meth:`RunCheckpointer.restore_latest` raises it at once instead of trying older steps."""


class RunCheckpointer:
  """An orbax ``CheckpointManager`` around one run's ``workdir/checkpoints``."""

  def __init__(self, directory: str, *, keep: int = 2):
    if keep < 1:
      raise ValueError(f"checkpoint keep={keep} must be >= 1.")
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.LatestN(keep),
        enable_async_checkpointing=False,  # small states; a synchronous write is simplest to reason about
        create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.snapshots = ocp.CheckpointManager(os.path.join(self.directory, "snapshots"),
                                           options=options)
    self._finals_manager = None

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, snapshot_id: Optional[int] = None) -> None:
    """Writes ``state`` (live part) and ``meta`` under ``step`` (a step that exists is replaced).

    Args:
      step: the global training step.
      state: a method state; its ``frozen`` field goes to ``snapshots/<snapshot_id>``
        unless that snapshot was written already.
      meta: JSON-serialisable position, scores and config.
      snapshot_id: the snapshot's identity (the tasks ended when it was taken; see the module docstring).
    """
    self.check_space(step, state, snapshot_id)
    frozen = getattr(state, "frozen", None)
    if frozen is not None:
      if snapshot_id is None:
        raise ValueError("RunCheckpointer.save: a state with a snapshot needs a snapshot_id.")
      if snapshot_id not in self.snapshots.all_steps():
        self.snapshots.save(snapshot_id, args=ocp.args.StandardSave(frozen), force=True)
        self.snapshots.wait_until_finished()
      state = state.replace(frozen=None)
    meta = dict(meta, snapshot_id=snapshot_id if frozen is not None else None)
    if step in self.manager.all_steps():
      self.manager.delete(step)
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)
    self.manager.wait_until_finished()

  def save_final(self, group: int, state: Any, meta: dict) -> None:
    """Writes the final state of group ``group`` of seeds trained one after another, whole (its
    snapshot included), with ``meta``, to ``finals/<group>`` (one that exists is replaced). The next
    group's checkpoints replace the main ones, so this is the only copy of an earlier seed's end:
    scoring a finished run again (:func:`gmcl.loop.restore_final`) reads it. Every group is kept."""
    self.check_space(group, state)
    finals = self._finals()
    if group in finals.all_steps():
      finals.delete(group)
    finals.save(group, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    finals.wait_until_finished()

  def final_groups(self) -> list[int]:
    """The groups whose final state :meth:`save_final` wrote."""
    if self._finals_manager is None and not os.path.isdir(os.path.join(self.directory, "finals")):
      return []
    return sorted(self._finals().all_steps())

  def final_meta(self, group: int) -> dict:
    return self._finals().restore(group, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_final(self, group: int, template: Any) -> Any:
    """The state :meth:`save_final` wrote for ``group``, restored to ``template``'s structure."""
    return self._finals().restore(group, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(template))))["state"]

  def _finals(self):
    if self._finals_manager is None:  # made on first use: runs of stacked seeds never write one
      self._finals_manager = ocp.CheckpointManager(os.path.join(self.directory, "finals"),
                                                   options=ocp.CheckpointManagerOptions(
                                                       enable_async_checkpointing=False, create=True))
    return self._finals_manager

  def check_space(self, step: int, state: Any, snapshot_id: Optional[int] = None) -> None:
    """Refuses a write the disk cannot hold, in one line (orbax's own error on a full disk is
    buried under its background threads' tracebacks): a checkpoint needs about the bytes of the
    state's live part, and of its snapshot unless ``snapshot_id`` was written already."""
    frozen = getattr(state, "frozen", None)
    if frozen is not None and snapshot_id is not None and snapshot_id in self.snapshots.all_steps():
      state = state.replace(frozen=None)
    needed = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
    free = shutil.disk_usage(self.directory).free
    if free < needed + (1 << 20):  # the state and a little metadata
      raise OSError(errno.ENOSPC, f"No space left on device for checkpoint {step} in {self.directory}: "
                    f"it needs about {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free. Free some "
                    "space and run the same command again: the run resumes from the last checkpoint.")

  def restore_latest(self, template_for: Callable[[dict], Any],
                     warn: Callable[[str], None] = logging.warning
                     ) -> Optional[tuple[int, Any, dict]]:
    """Restores the newest checkpoint that reads back whole, or returns None if there is none.

    Args:
      template_for: maps a checkpoint's ``meta`` to a state of the right structure
        (its values are ignored; shapes, dtypes and pytree structure are used); it raises
        :class:`IncompatibleCheckpoint` for a checkpoint this code cannot resume.
      warn: where a skipped checkpoint is reported.

    Returns:
      ``(step, state, meta)``.
    """
    steps = self.steps()
    for step in reversed(steps):
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        template = template_for(meta)
        frozen_template = getattr(template, "frozen", None)
        if frozen_template is not None:
          template = template.replace(frozen=None)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(template))))["state"]
        if meta.get("snapshot_id") is not None:
          frozen = self.snapshots.restore(meta["snapshot_id"],
                                          args=ocp.args.StandardRestore(_abstract(frozen_template)))
          restored = restored.replace(frozen=frozen)
        return step, restored, meta
      except IncompatibleCheckpoint:
        raise
      except Exception as e:  # pylint: disable=broad-except
        warn(f"Checkpoint {step} in {self.directory} cannot be restored ({type(e).__name__}: "
             f"{str(e)[:200]}); "
             + ("trying the one before it." if step != steps[0] else "no older checkpoint is left."))
    return None

  def close(self) -> None:
    self.manager.close()
    self.snapshots.close()
    if self._finals_manager is not None:
      self._finals_manager.close()
