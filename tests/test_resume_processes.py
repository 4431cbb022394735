"""Resume in a new process (the user's rerun), with each config's defaults: a run stopped in task 1
or later, or killed by SIGKILL at a random moment, then resumed by a fresh process, writes the
uninterrupted run's results.json byte for byte. Slow tier (subprocesses); the full sweep is
``python -m benchmarks.kill_resume``."""

import pytest

from benchmarks import kill_resume


@pytest.mark.slow
def test_dgr_resumed_in_new_processes_is_byte_identical(tmp_path):
  row = kill_resume.sweep("dgr", points=2, kills=1, root=str(tmp_path))
  print(row)
  assert row["stop_points"] == 2 and row["identical"] == 2, row  # one stop in task 1's half, one later
  assert row["sigkill_identical"] == 1, row


@pytest.mark.slow
def test_three_stacked_dgr_seeds_resumed_in_new_processes_are_byte_identical(tmp_path):
  row = kill_resume.sweep("dgr@3", points=2, kills=0, root=str(tmp_path))
  print(row)
  assert row["stop_points"] == 2 and row["identical"] == 2, row


def test_runs_name_their_seeds():
  assert kill_resume.parse_run("mergan/jr@3") == ("mergan", "jr", 3)
  assert kill_resume.parse_run("dgr") == ("dgr", "", 1)
  assert "--config.num_seeds=3" in kill_resume.command("dgr@3", "w")
  assert kill_resume.total_steps("dgm@2") == 2 * kill_resume.total_steps("dgm")  # growth: in turn
  assert kill_resume.total_steps("dgr@2") == kill_resume.total_steps("dgr")  # stacked
