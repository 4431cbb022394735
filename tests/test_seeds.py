"""Several seeds in one run (gmcl.seeds): the stacking helpers, results as mean ± sd, each seed
against its single-seed run, resume of a multi-seed run, and the seed axis over two devices."""

import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import dgr, sft
from gmcl import evaluation, loop, seeds
from gmcl.methods.base import Method


def test_seed_list_and_stacking_round_trip():
  c = sft.get_config("smoke")
  c.seed, c.num_seeds = 7, 3
  assert seeds.seed_list(c) == [7, 8, 9]
  trees = [{"w": jnp.full((2, 3), float(i)), "n": jnp.asarray(i, jnp.int32), "none": None} for i in range(3)]
  stacked = seeds.stack(trees)
  assert stacked["w"].shape == (3, 2, 3) and stacked["n"].shape == (3,) and stacked["none"] is None
  for i, tree in enumerate(seeds.unstack(stacked, 3)):
    np.testing.assert_array_equal(tree["w"], trees[i]["w"])
    assert int(tree["n"]) == i
  with pytest.raises(ValueError, match="different structures"):
    seeds.stack([{"a": 1}, {"b": 1}])


def test_mean_std_and_matrix_by_hand():
  assert seeds.mean_std([0.5]) == (0.5, 0.0)
  m, s = seeds.mean_std([0.2, 0.4, 0.9])
  assert m == pytest.approx(0.5)
  assert s == pytest.approx(math.sqrt(((0.3) ** 2 + 0.1 ** 2 + 0.4 ** 2) / 2))  # ddof 1
  means, stds = seeds.mean_std_series([[1.0, 0.5], [1.0, 0.7]])
  assert means == pytest.approx([1.0, 0.6]) and stds == pytest.approx([0.0, math.sqrt(0.02)])
  assert seeds.mean_matrix([[[1.0, None], [0.2, 0.6]], [[0.8, None], [0.4, 0.6]]]) == \
      [[pytest.approx(0.9), None], [pytest.approx(0.3), pytest.approx(0.6)]]
  assert seeds.average_entry([None, 0.5]) == (None, None)  # a seed measured nothing there
  mean, sd = seeds.average_entry([{"0": 0.5, "1": 1.0}, {"0": 0.7, "1": 1.0}])
  assert mean == pytest.approx({"0": 0.6, "1": 1.0}) and sd == pytest.approx({"0": math.sqrt(0.02), "1": 0.0})
  assert seeds.average_series([[{"maps": [1]}], [{"maps": [2]}]]) is None  # structured: per seed only
  table = evaluation.format_table([1.0, 0.5], "t", stds=[0.0, 0.0125])
  assert table.splitlines()[2:] == [" 100.00   50.00", "  ±0.00   ±1.25"]


def test_results_payload_averages_seeds_by_hand():
  c = sft.get_config("smoke")
  c.data.max_tasks, c.num_seeds = 2, 2
  from gmcl.data.build import build_sequence  # pylint: disable=import-outside-toplevel
  seq = build_sequence(c, (32, 32, 1), 10)
  rec = lambda a2, r10, loss: {"A": [1.0, a2], "R": [[1.0, None], [r10, 2 * a2 - r10]],
                               "per_task": [{"task": 1, "classes": [0], "A": 1.0, "metrics": {"l": loss}},
                                            {"task": 2, "classes": [1], "A": a2, "metrics": {"l": loss}}],
                               "scores": {"A_x": [0.5, a2], "info": [{"maps": [0]}, {"maps": [0, 1]}]}}
  record = {"seeds": [rec(0.6, 0.4, 1.0), rec(0.8, 0.7, 3.0)], "metrics": [{}, {}], "timings": [], "seconds": 0}
  out = loop._results_payload(c, seq, record)  # pylint: disable=protected-access
  assert out["seeds"] == [0, 1] and out["completed_tasks"] == 2
  assert out["A"] == pytest.approx([1.0, 0.7]) and out["A_std"] == pytest.approx([0.0, math.sqrt(0.02)])
  # forgetting of task 1: R[0,0] - R[1,0] = 0.6 and 0.3 -> mean 0.45, sd sqrt(0.045)
  assert out["average_forgetting"] == pytest.approx(0.45)
  assert out["average_forgetting_std"] == pytest.approx(math.sqrt(0.045))
  assert out["scores"]["A_x"] == pytest.approx([0.5, 0.7]) and "info" not in out["scores"]
  assert out["per_task"][1]["metrics"]["l"] == pytest.approx(2.0)
  assert out["per_seed"][1]["seed"] == 1 and out["per_seed"][1]["scores"]["info"] == [{"maps": [0]}, {"maps": [0, 1]}]
  assert out["per_seed"][0]["average_forgetting"] == pytest.approx(0.6)
  # seeds one after another, the second not yet finished: the top covers the common tasks
  record["seeds"][1] = {**rec(0.8, 0.7, 3.0), "A": [1.0], "R": [[1.0, None]],
                        "per_task": rec(0.8, 0.7, 3.0)["per_task"][:1]}
  part = loop._results_payload(c, seq, record)  # pylint: disable=protected-access
  assert part["completed_tasks"] == 1 and part["A"] == [1.0] and part["per_seed"][0]["completed_tasks"] == 2


def test_a_checkpoint_record_of_one_seed_before_seeds_existed_is_upgraded():
  old = {"A": [1.0], "R": [[1.0, None]], "per_task": [{"task": 1}], "timings": [{"task": 1}],
         "metrics": {"solver/loss": 1.0}, "seconds": 3.0, "scores": {"A_x": [0.5]}}
  new = loop._upgrade_record(old)  # pylint: disable=protected-access
  assert new["seeds"] == [{"A": [1.0], "R": [[1.0, None]], "per_task": [{"task": 1}], "scores": {"A_x": [0.5]}}]
  assert new["metrics"] == [{"solver/loss": 1.0}] and new["seconds"] == 3.0
  assert loop._upgrade_record(new) is new  # pylint: disable=protected-access


def test_seed_axis_auto_unrolls_convolutions_on_the_cpu_and_batches_the_rest():
  import jax  # pylint: disable=import-outside-toplevel
  from gmcl.methods.base import resolve_seed_axis  # pylint: disable=import-outside-toplevel

  def dense(state, data, key):
    return {"w": state["w"] @ state["w"] + data["x"].sum() + jax.random.normal(key, ())}, {}

  def conv(state, data, key):
    y = jax.lax.conv(data["x"], state["k"], (1, 1), "SAME")
    return {"k": state["k"] + y.mean() + jax.random.normal(key, ())}, {}
  keys = jnp.stack([jax.random.PRNGKey(0)] * 2)
  dense_state, conv_state = {"w": jnp.ones((2, 3, 3))}, {"k": jnp.ones((2, 1, 1, 3, 3))}
  data = {"x": jnp.ones((4, 1, 8, 8))}
  expected = ("unroll" if jax.default_backend() == "cpu" else "vmap")
  assert resolve_seed_axis("auto", conv, conv_state, data, keys) == expected
  assert resolve_seed_axis("auto", dense, dense_state, data, keys) == "vmap"
  assert resolve_seed_axis("unroll", dense, dense_state, data, keys) == "unroll"
  with pytest.raises(ValueError, match="seed_axis='batch'.*'vmap'"):
    resolve_seed_axis("batch", dense, dense_state, data, keys)


def _sft(max_tasks=2, steps=30, **top):
  c = sft.get_config("smoke")
  c.data.protocol = "split"  # two classes per task: losses that are not zero
  c.data.max_tasks, c.train.solver_steps = max_tasks, steps
  for k, v in top.items():
    c[k] = v
  return c


def _run(c, workdir, data, **kw):
  return loop.run(c, str(workdir), data=data, progress=False, log=lambda s: None, **kw)


def _one_image(data, classes):
  return 1.0 / min(int(np.sum(data.y_test == k)) for k in classes)


@pytest.fixture(scope="module")
def single_seed_runs(mnist_data, tmp_path_factory):
  """sft's single-seed runs of seeds 0 and 1 (two tasks)."""
  return [_run(_sft(seed=s), tmp_path_factory.mktemp(f"seed{s}"), mnist_data) for s in (0, 1)]


def test_stacked_seeds_equal_their_single_seed_runs(mnist_data, tmp_path, single_seed_runs):
  both = _run(_sft(num_seeds=2), tmp_path, mnist_data)
  assert both["seeds"] == [0, 1] and len(both["per_seed"]) == 2
  for s, alone in enumerate(single_seed_runs):
    # The same steps with the same keys, batched under vmap: the same accuracies up to a float
    # tie at argmax (one image moves an entry by 1 / that class's test images; see test_loop.py).
    np.testing.assert_allclose(np.array(both["per_seed"][s]["accuracy_matrix"], float),
                               np.array(alone["accuracy_matrix"], float),
                               atol=1.01 * _one_image(mnist_data, (0, 1, 2, 3)))
    assert both["per_seed"][s]["per_task"][1]["metrics"].keys() == alone["per_task"][1]["metrics"].keys()
    for name, value in alone["per_task"][1]["metrics"].items():
      # the last chunk's losses: the same values up to rounding carried over 2 tasks of steps
      assert both["per_seed"][s]["per_task"][1]["metrics"][name] == pytest.approx(value, rel=1e-2, abs=1e-3)
  a0, a1 = (np.array(p["per_task"][1]["metrics"]["solver/solver_loss"]) for p in both["per_seed"])
  assert a0 != a1  # the seeds trained differently
  assert both["A"] == pytest.approx([np.mean(v) for v in zip(*(p["A"] for p in both["per_seed"]))])
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["A_std"] == pytest.approx(both["A_std"])


def test_seeds_one_after_another_equal_their_single_seed_runs_exactly(mnist_data, tmp_path,
                                                                      single_seed_runs, monkeypatch):
  """A method whose seeds cannot be stacked (DGM's growth) runs them in turn: the same programs as
  single-seed runs, so the same results to the bit; a resume across the seeds' boundary too."""
  monkeypatch.setattr(type(_sft_method()), "seeds_share_shapes", property(lambda self: False))
  c = _sft(num_seeds=2)
  c.checkpoint.every_steps = 10
  whole = _run(c, tmp_path / "whole", mnist_data)
  for s, alone in enumerate(single_seed_runs):
    assert whole["per_seed"][s]["seed"] == s
    assert json.dumps(whole["per_seed"][s], sort_keys=True) == json.dumps(alone["per_seed"][0], sort_keys=True)
  # Seeds run apart and merged (experiments.merge_seeds) are the run of both, to the bit.
  merged = loop.merge_seed_results(single_seed_runs[::-1])
  assert merged["config"]["checkpoint"] != whole["config"]["checkpoint"]  # (ignored when merging)
  merged["config"]["checkpoint"] = whole["config"]["checkpoint"]
  assert json.dumps(merged, sort_keys=True) == json.dumps(whole, sort_keys=True)
  steps = 2 * 30  # per seed
  for stop in (25, steps, steps + 35):  # inside seed 0, at its end, inside seed 1's second task
    workdir = tmp_path / f"stop{stop}"
    with pytest.raises(loop.RunInterrupted):
      _run(c, workdir, mnist_data, stop_after_steps=stop)
    _run(c, workdir, mnist_data)
    assert (workdir / "results.json").read_bytes() == (tmp_path / "whole" / "results.json").read_bytes(), stop
  # Checkpoints at task boundaries only: a stop early in seed 1 resumes from seed 0's last boundary.
  c.checkpoint.every_steps = 0
  boundary = _run(c, tmp_path / "boundary_whole", mnist_data)
  with pytest.raises(loop.RunInterrupted):
    _run(c, tmp_path / "boundary", mnist_data, stop_after_steps=steps + 3)
  lines = []
  resumed = loop.run(c, str(tmp_path / "boundary"), data=mnist_data, progress=False, log=lines.append)
  assert any("seed 0 has finished; seed 1 starts" in line for line in lines)
  assert resumed == boundary
  assert (tmp_path / "boundary" / "results.json").read_bytes() == \
      (tmp_path / "boundary_whole" / "results.json").read_bytes()


def test_a_process_near_its_mapping_cap_drops_unused_programs_and_results_stay(mnist_data, tmp_path,
                                                                             single_seed_runs, monkeypatch):
  """Near vm.max_map_count every task's start releases the compiled programs; the programs compiled
  again are the same, so the run is its uncrowded twin to the bit."""
  monkeypatch.setattr(loop, "mappings_limit", lambda: 100)
  monkeypatch.setattr(loop, "memory_mappings", lambda: 60)
  released = []
  monkeypatch.setattr(loop, "release_compiled", lambda: released.append(1))
  assert loop.release_if_crowded(log=lambda s: None) and released == [1]
  monkeypatch.setattr(loop, "memory_mappings", lambda: 40)
  assert not loop.release_if_crowded(log=lambda s: None) and released == [1]
  monkeypatch.undo()
  monkeypatch.setattr(loop, "mappings_limit", lambda: 100)
  monkeypatch.setattr(loop, "memory_mappings", lambda: 99)  # crowded: the real release, every task
  lines = []
  crowded = loop.run(_sft(seed=0), str(tmp_path), data=mnist_data, progress=False, log=lines.append)
  assert sum("memory mappings" in line for line in lines) == 2  # at each of the two tasks' starts
  assert json.dumps(crowded, sort_keys=True) == json.dumps(single_seed_runs[0], sort_keys=True)


def test_a_checkpoint_of_other_seed_groups_is_refused(mnist_data, tmp_path, monkeypatch):
  c = _sft(num_seeds=2)
  c.checkpoint.every_steps = 10
  with pytest.raises(loop.RunInterrupted):
    _run(c, tmp_path, mnist_data, stop_after_steps=15)  # stacked: one group [0, 1]
  monkeypatch.setattr(type(_sft_method()), "seeds_share_shapes", property(lambda self: False))
  with pytest.raises(ValueError, match=r"groups \[\[0, 1\]\].*groups \[\[0\], \[1\]\]"):
    _run(c, tmp_path, mnist_data)


def _sft_method() -> Method:
  from gmcl.methods import build_method  # pylint: disable=import-outside-toplevel
  c = _sft()
  return build_method("sft", c, (32, 32, 1), 10)


def test_killed_stacked_run_resumes_to_identical_results(mnist_data, tmp_path):
  c = _sft(num_seeds=2)
  c.checkpoint.every_steps = 10
  whole = tmp_path / "whole"
  _run(c, whole, mnist_data)
  for stop in (15, 40):  # task 1, task 2
    workdir = tmp_path / f"stop{stop}"
    with pytest.raises(loop.RunInterrupted):
      _run(c, workdir, mnist_data, stop_after_steps=stop)
    _run(c, workdir, mnist_data)
    assert (workdir / "results.json").read_bytes() == (whole / "results.json").read_bytes(), stop


def test_resume_refuses_another_number_of_seeds(mnist_data, tmp_path):
  c = _sft(num_seeds=2)
  c.checkpoint.every_steps = 10
  with pytest.raises(loop.RunInterrupted):
    _run(c, tmp_path, mnist_data, stop_after_steps=15)
  c.num_seeds = 3
  with pytest.raises(ValueError, match="num_seeds: 2 in the checkpoint, 3 now"):
    _run(c, tmp_path, mnist_data)


@pytest.mark.parametrize("num_seeds,axis,mode", [(2, "shard", "jit"), (3, "vmap", "jit"), (2, "vmap", "pmap")])
def test_seeds_over_two_devices_match_one_device(mnist_data, tmp_path, num_seeds, axis, mode):
  """parallel.mode=jit: 2 seeds on 2 devices, one each (the seed axis split); 3 seeds, which 2
  devices do not divide, share every batch as without seeds; pmap: every seed's batch split over
  the devices. Each equals one device's run."""
  logs = []
  base = _sft(num_seeds=num_seeds)
  one = _run(base, tmp_path / "one", mnist_data)
  c = _sft(num_seeds=num_seeds)
  c.parallel.mode, c.parallel.num_devices = mode, 2
  two = loop.run(c, str(tmp_path / "two"), data=mnist_data, progress=False, log=logs.append)
  assert any(("split over the devices" in line) == (axis == "shard") and "seeds=" in line for line in logs)
  for s in range(num_seeds):
    np.testing.assert_allclose(np.array(two["per_seed"][s]["accuracy_matrix"], float),
                               np.array(one["per_seed"][s]["accuracy_matrix"], float),
                               atol=1.01 * _one_image(mnist_data, (0, 1, 2, 3)))


@pytest.mark.slow
def test_dgr_three_seeds_in_one_program(mnist_data, tmp_path):
  """The issue's command at two tasks: DGR's generator and solver, three seeds stacked."""
  c = dgr.get_config("smoke")
  c.model.gan, c.data.max_tasks, c.num_seeds = "mlp", 2, 3
  out = _run(c, tmp_path, mnist_data)
  assert out["seeds"] == [0, 1, 2] and len(out["A_std"]) == 2
  losses = [p["per_task"][1]["metrics"]["generator/critic_loss"] for p in out["per_seed"]]
  assert len(set(losses)) == 3  # three different trainings
  for p in out["per_seed"]:
    assert p["A"][0] == 1.0 and 0.0 <= p["A"][1] <= 1.0


def test_num_seeds_is_validated():
  c = _sft(num_seeds=0)
  with pytest.raises(ValueError, match="num_seeds=0"):
    loop.run(c, "/nonexistent/never-written", progress=False)
  assert not os.path.exists("/nonexistent/never-written")


@pytest.mark.slow
def test_dgm_with_growth_runs_its_seeds_one_after_another(mnist_data, tmp_path):
  """DGM's growth gives each seed its own widths: the seeds run in turn, each exactly its
  single-seed run; without growth they are stacked."""
  from experiments.configs import dgm  # pylint: disable=import-outside-toplevel

  def config(**top):
    c = dgm.get_config("smoke")
    c.model.gan, c.data.max_tasks, c.train.generator_steps = "mlp", 2, 10
    for k, v in top.items():
      c[k] = v
    return c
  lines = []
  both = loop.run(config(num_seeds=2), str(tmp_path / "both"), data=mnist_data, progress=False, log=lines.append)
  assert any("seeds=[0, 1] (one after another)" in line for line in lines)
  finals = loop.restore_final(str(tmp_path / "both"), data=mnist_data, log=lines.append)  # each seed's end kept
  assert finals.seeds == [0, 1] and len(finals.states) == 2
  for s in (0, 1):
    alone = _run(config(seed=s), tmp_path / f"alone{s}", mnist_data)
    assert json.dumps(both["per_seed"][s], sort_keys=True) == json.dumps(alone["per_seed"][0], sort_keys=True)
    (state,) = loop.restore_final(str(tmp_path / f"alone{s}"), data=mnist_data, log=lines.append).states
    chex.assert_trees_all_equal(finals.states[s], state)  # exactly: the same training, the same bits
  c = config(num_seeds=2)
  c.dgm.growth = False
  lines = []
  loop.run(c, str(tmp_path / "stacked"), data=mnist_data, progress=False, log=lines.append)
  assert any("seeds=[0, 1] (stacked, one program)" in line for line in lines)


@pytest.mark.slow
def test_eight_seeds_on_eight_devices_one_each(mnist_data, tmp_path):
  c = _sft(num_seeds=8)
  one = _run(c, tmp_path / "one", mnist_data)
  c.parallel.mode, c.parallel.num_devices = "jit", 8
  lines = []
  eight = loop.run(c, str(tmp_path / "eight"), data=mnist_data, progress=False, log=lines.append)
  assert any("split over the devices" in line for line in lines)
  for s in range(8):
    np.testing.assert_allclose(np.array(eight["per_seed"][s]["accuracy_matrix"], float),
                               np.array(one["per_seed"][s]["accuracy_matrix"], float),
                               atol=1.01 * _one_image(mnist_data, (0, 1, 2, 3)))


def test_shard_puts_one_block_of_seeds_on_each_device():
  import jax  # pylint: disable=import-outside-toplevel
  from gmcl.data.sampling import task_arrays  # pylint: disable=import-outside-toplevel
  from gmcl.methods.base import run_chunk  # pylint: disable=import-outside-toplevel
  from gmcl.parallel import make_parallel  # pylint: disable=import-outside-toplevel
  from flax import struct  # pylint: disable=import-outside-toplevel

  @struct.dataclass
  class S:
    w: jnp.ndarray
    frozen: object = None

  def step(state, data, key):
    return state.replace(w=state.w * 0.5 + data.x.mean() + jax.random.uniform(key)), {"w": state.w.sum()}
  data = task_arrays(np.ones((4, 2, 2, 1), np.float32), np.zeros(4, np.int32), capacity=4)
  keys = jnp.stack([jax.random.PRNGKey(i) for i in range(4)])
  stacked = S(w=jnp.arange(12.0).reshape(4, 3))
  out, metrics = run_chunk(step, stacked, data, keys, 0, 2, parallel=make_parallel("jit", 2), seeds="shard")
  assert [s.data.shape for s in out.w.addressable_shards] == [(2, 3), (2, 3)]  # two seeds per device
  assert metrics["w"].shape == (4,)
  expected, _ = run_chunk(step, S(w=jnp.arange(12.0).reshape(4, 3)), data, keys, 0, 2, seeds="vmap")
  np.testing.assert_allclose(np.asarray(out.w), np.asarray(expected.w), rtol=1e-6)


def test_take_reads_a_row_of_a_seed_axis_split_over_devices_from_its_own_device():
  """No gather over the mesh (XLA:CPU aborts inside one with 8 devices): each row comes from the
  buffer of the device that holds it, equal to the host's row, on one device."""
  from gmcl.parallel import make_parallel
  parallel = make_parallel("jit", 8)
  host = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  x = jax.device_put(jnp.asarray(host), parallel.seed_sharding())
  assert len(x.sharding.device_set) == 8
  rows = seeds.unstack({"w": x}, 8)
  for i, row in enumerate(rows):
    np.testing.assert_array_equal(np.asarray(row["w"]), host[i])
    assert len(row["w"].sharding.device_set) == 1
  restacked = seeds.stack(rows)["w"]  # the slices share a device: they stack
  np.testing.assert_array_equal(np.asarray(restacked), host)
