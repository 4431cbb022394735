"""Latent space alignment: the alignment loss, bridges, frozen heads, chained and composed
prediction, the vmapped parallel mode, chunks, config errors and a split-MNIST run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import lsa as lsa_config
from gmcl.data.sampling import task_arrays
from gmcl.methods import lsa
from gmcl.methods.base import run_chunk, step_key
from gmcl.parallel import Parallel
from tolerances import assert_chunks_equal_single_steps, assert_match_up_to_summation_order

SHAPE = (8, 8, 1)
K = 10


def _config(**lsa_values):
  c = lsa_config.get_config("smoke")
  c.model.classifier_hidden = (16,)
  c.train.batch_size = 8
  c.train.solver_steps = 3
  c.lsa.bridge_steps = 3
  for key, value in lsa_values.items():
    c.lsa[key] = value
  return c


def _data(classes, n=64, seed=0, capacity=None):
  rng = np.random.default_rng(seed)
  y = rng.choice(classes, size=n).astype(np.int32)
  x = rng.normal(size=(n,) + SHAPE).astype(np.float32) * 0.5
  x[np.arange(n), y % 8, 0, 0] += 3.0  # class c lights pixel (c mod 8, 0)
  return task_arrays(x, y, capacity)


def _mask(classes):
  return np.isin(np.arange(K), classes)


TASKS = ([0, 1], [2, 3], [4, 5])


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _run_tasks(method, num_tasks, train=True, before_end=None):
  """Sequential tasks 0..num_tasks-1 (each phase one chunk); ``before_end(state, t)`` may
  change the state before end_task. Returns the final state and the heads after each task."""
  state = method.init(jax.random.PRNGKey(0))
  heads = []
  for t in range(num_tasks):
    state = method.begin_task(state, t, _mask(sum(TASKS[:t + 1], [])))
    if train:
      for p, phase in enumerate(method.phases()):
        state, _ = run_chunk(phase.step, state, _data(TASKS[t], seed=t),
                             jax.random.PRNGKey(10 * t + p), 0, phase.num_steps)
    if before_end is not None:
      state = before_end(state, t)
    state = method.end_task(state)
    heads.append(_copy(state.heads))
  return state, heads


@pytest.fixture(scope="module")
def method():
  return lsa.make_lsa(_config(), SHAPE, K)


def test_alignment_loss_hand_computed():
  mapped = jnp.array([[1.0, 2.0, 0.0], [0.5, 0.0, -1.0]])
  target = jnp.array([[0.0, 2.0, 2.0], [0.5, 1.0, 1.0]])
  # Row 0: 1 + 0 + 4; row 1: 0 + 1 + 4.
  np.testing.assert_allclose(lsa.alignment_loss(mapped=mapped, target=target), [5.0, 5.0])
  with pytest.raises(ValueError, match="alignment_loss"):
    lsa.alignment_loss(mapped=mapped, target=target[:, :2])


def test_trained_bridge_reproduces_the_old_head():
  """f_1 = f_0 followed by a scaled permutation Q (exact: ReLU commutes with it), so the exact
  bridge is Q^-1: the trained linear bridge reaches ~0 loss and h_0(g(f_1(x))) = h_0(f_0(x))."""
  c = _config(bridge_lr=3e-2, bridge_steps=300)
  c.train.batch_size = 32
  method = lsa.make_lsa(c, SHAPE, K)
  rng = np.random.default_rng(0)
  state = method.begin_task(method.init(jax.random.PRNGKey(0)), 0, _mask([0, 1]))
  state, _ = run_chunk(method.solver_step, state, _data([0, 1]), jax.random.PRNGKey(1), 0, 3)
  state = method.end_task(state)
  x_held_out = jnp.asarray(rng.normal(size=(64,) + SHAPE).astype(np.float32))
  old_logits = np.asarray(method.predict_task(state, x_held_out, 0))[:, :2]
  old_features = method._encode(state.solver.params["encoder"], x_held_out)

  state = method.begin_task(state, 1, _mask([0, 1, 2, 3]))
  q = np.eye(16)[:, rng.permutation(16)] * rng.uniform(0.7, 1.4, 16)[None]
  enc = dict(state.solver.params["encoder"])
  last = sorted(enc)[-1]
  enc[last] = {"kernel": enc[last]["kernel"] @ q, "bias": enc[last]["bias"] @ q}
  state = state.replace(solver=state.solver.replace(
      params=dict(state.solver.params, encoder=jax.tree.map(jnp.asarray, enc))))
  new_features = method._encode(state.solver.params["encoder"], x_held_out)
  np.testing.assert_allclose(new_features, old_features @ q, rtol=1e-5, atol=1e-6)
  assert not np.allclose(new_features, old_features)  # the identity bridge is wrong

  state, _ = run_chunk(method.bridge_step, state, _data([2, 3], n=256), jax.random.PRNGKey(2), 0,
                       300, "scan")
  state = method.end_task(state)
  g = jax.tree.map(lambda a: a[1], state.bridges)
  held_out_loss = lsa.alignment_loss(mapped=method.bridge_apply(g, new_features),
                                     target=old_features)
  assert float(jnp.mean(held_out_loss)) < 1e-8 * float(jnp.mean(jnp.sum(old_features ** 2, -1)))
  np.testing.assert_allclose(g["linear"]["kernel"], np.linalg.inv(q), atol=1e-4)
  new_logits = np.asarray(method.predict_task(state, x_held_out, 0))[:, :2]
  np.testing.assert_allclose(new_logits, old_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_parallel_equals_independent_sequential_trainings(method):
  """vmap over tasks = each task trained alone from the same initial state with the same keys."""
  run_key = jax.random.PRNGKey(3)
  tasks = [_data(classes, seed=t, capacity=64) for t, classes in enumerate(TASKS)]
  c = method.config
  state, info = lsa.train_parallel(method, run_key, tasks, chunk_steps=1)
  init_key, train_key, _ = jax.random.split(run_key, 3)
  solo = []
  for k, classes in enumerate(TASKS):
    s = method.begin_task(method.init(init_key), k, _mask(classes))
    s, _ = run_chunk(method.solver_step, s, tasks[k], step_key(train_key, k, 0), 0, 3)
    solo.append(s)
    # One vmapped program against one per task: the same sums in another order (tests/tolerances.py).
    assert_match_up_to_summation_order(
        jax.tree.map(lambda a: a[k], {"encoder": info["encoders"], "head": state.heads}),
        s.solver.params, lr=c.train.solver_lr, betas=(c.train.solver_b1, c.train.solver_b2),
        updates=3, what=f"task {k}'s model")
    np.testing.assert_array_equal(state.task_classes[k], _mask(classes))
  for k in (1, 2):  # g_{k->k-1} on task k's inputs
    s = _copy(solo[k]).replace(
        frozen=lsa.LSASnapshot(encoder=_copy(solo[k - 1].solver.params["encoder"])))
    s, _ = run_chunk(method.bridge_step, s, tasks[k], step_key(train_key, k, 1), 0, 3)
    assert_match_up_to_summation_order(  # (the bridge's Adam: betas 0.9, 0.999)
        jax.tree.map(lambda a: a[k], state.bridges), s.bridge.params, lr=c.lsa.bridge_lr,
        betas=(0.9, 0.999), updates=3, what=f"bridge {k}")
    assert not np.allclose(s.bridge.params["linear"]["kernel"], np.eye(16))  # it trained
  # The assembled state predicts from f_T with the chain; task 0 after T = 0 is solo task 0.
  assert int(state.task) == 2
  x = tasks[0].x[:8]
  first = method.state_after(state, info["encoders"], 0)
  expected = np.asarray(method.predict_task(solo[0], x, 0))
  # Parameters equal up to a rounding-sized fraction of 3 Adam steps (above): logits within 1% of
  # their scale (a wrong model is off by their whole scale).
  np.testing.assert_allclose(method.predict_task(first, x, 0), expected, rtol=0,
                             atol=1e-2 * np.max(np.abs(expected[np.isfinite(expected)])))


def test_earlier_heads_do_not_move(method):
  state, heads = _run_tasks(method, 3)
  for k in range(2):
    for later in range(k + 1, 3):
      for a, b in zip(jax.tree.leaves(heads[later]), jax.tree.leaves(heads[k])):
        np.testing.assert_array_equal(np.asarray(a)[k], np.asarray(b)[k])
  # ...while the shared encoder and the later heads did train.
  first = method.init(jax.random.PRNGKey(0)).solver.params["encoder"]
  assert any(not np.allclose(a, b) for a, b in
             zip(jax.tree.leaves(first), jax.tree.leaves(state.solver.params["encoder"])))
  assert not np.allclose(heads[2]["kernel"][2], heads[1]["kernel"][2])


def _random_bridges(scale=0.3):
  def before_end(state, t):
    key = jax.random.PRNGKey(100 + t)
    leaves, tree = jax.tree.flatten(state.bridge.params)
    noisy = [a + scale * jax.random.normal(jax.random.fold_in(key, i), a.shape)
             for i, a in enumerate(leaves)]
    return state.replace(bridge=state.bridge.replace(params=jax.tree.unflatten(tree, noisy)))
  return before_end


def _manual_logits(method, state, x, k):
  z = method._encode(state.solver.params["encoder"], x)
  for t in range(int(state.task), k, -1):
    g = jax.tree.map(lambda a, t=t: a[t], state.bridges)
    if method.bridge_kind == "linear":
      z = z @ g["linear"]["kernel"] + g["linear"]["bias"]
    else:
      z = z @ g["linear"]["kernel"] + g["linear"]["bias"] + \
          jax.nn.relu(z @ g["hidden"]["kernel"] + g["hidden"]["bias"]) @ g["residual"]["kernel"] + \
          g["residual"]["bias"]
  logits = z @ state.heads["kernel"][k] + state.heads["bias"][k]
  return np.asarray(logits)[:, TASKS[k]]


@pytest.mark.parametrize("bridge", ["linear", "mlp"])
def test_chained_prediction_equals_manual_composition(method, bridge):
  if bridge == "mlp":
    method = lsa.make_lsa(_config(bridge=bridge, bridge_hidden=8), SHAPE, K)
  state, _ = _run_tasks(method, 3, train=False, before_end=_random_bridges())
  x = _data([0, 1], n=8, seed=9).x
  for k in range(3):
    got = np.asarray(method.predict_task(state, x, k))
    np.testing.assert_allclose(got[:, TASKS[k]], _manual_logits(method, state, x, k),
                               rtol=1e-4, atol=1e-4)
    assert np.all(np.delete(got, TASKS[k], axis=1) < -1e30)  # other tasks' classes masked
  assert method.feature_maps(state, 0) == 2 and method.feature_maps(state, 2) == 0
  # Predictions do depend on the chain: another g_{2->1} changes task 0's logits.
  other = state.replace(bridges=jax.tree.map(lambda a: a.at[2].multiply(0.5), state.bridges))
  assert not np.allclose(method.predict_task(other, x, 0), method.predict_task(state, x, 0))


def test_composed_prediction_equals_chain_and_jit_with_traced_index_equals_eager(method):
  chained = method
  composed = lsa.make_lsa(_config(compose=True), SHAPE, K)
  state, _ = _run_tasks(composed, 3, train=False, before_end=_random_bridges())
  x = _data([0, 1], n=8, seed=9).x
  jitted = {m: m._predict_task_jit for m in (chained, composed)}  # the one chain_cost times
  for k in range(3):
    chain = chained.predict_task(state.replace(composed=None), x, k)
    comp = composed.predict_task(state, x, k)
    np.testing.assert_allclose(comp, chain, rtol=1e-4, atol=1e-4)
    for m, s in ((chained, state.replace(composed=None)), (composed, state)):
      with jax.disable_jit():
        eager = m.predict_task(s, x, k)
      np.testing.assert_allclose(jitted[m](s, x, jnp.asarray(k, jnp.int32)), eager,
                                 rtol=1e-5, atol=1e-5)
  assert composed.feature_maps(state, 0) == 1
  cost = chained.chain_cost(state.replace(composed=None), x, 0, repeats=2)
  assert cost["feature_maps"] == 2 and cost["ms_per_1000"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("phase_index", [0, 1], ids=["solver", "bridge"])
def test_k_step_chunk_equals_single_steps(method, phase_index):
  base = method.init(jax.random.PRNGKey(0))
  base = method.begin_task(base, 0, _mask([0, 1]))
  base, _ = run_chunk(method.solver_step, base, _data([0, 1]), jax.random.PRNGKey(1), 0, 3)
  base = method.begin_task(method.end_task(base), 1, _mask([0, 1, 2, 3]))
  base, _ = run_chunk(method.solver_step, base, _data([2, 3]), jax.random.PRNGKey(2), 0, 3)
  phase = method.phases()[phase_index]
  data, key = _data([2, 3], seed=1), jax.random.PRNGKey(7)
  c = method.config
  _, chunked = assert_chunks_equal_single_steps(
      phase.step, base, data, key, lr=max(c.train.solver_lr, c.lsa.bridge_lr), updates_per_step=1,
      what=f"lsa {phase.name}")
  trained = (lambda s: s.bridge.params) if phase_index else (lambda s: s.solver.params)
  assert any(not np.allclose(a, b) for a, b in
             zip(jax.tree.leaves(trained(chunked)), jax.tree.leaves(trained(base))))
  _assert_trees_close(chunked.frozen, base.frozen, rtol=0, atol=0)  # the snapshot never moves


def test_checkpoint_template_has_the_state_structure(method):
  state, _ = _run_tasks(method, 1, train=False)
  state = method.begin_task(state, 1, _mask([0, 1, 2, 3]))
  template = method.state_template(jax.random.PRNGKey(1), {"position": {"task": 1}, "method": {}})
  assert jax.tree.structure(template) == jax.tree.structure(state)
  assert jax.tree.map(jnp.shape, template) == jax.tree.map(jnp.shape, state)


@pytest.mark.parametrize("key,value,match", [
    ("mode", "joint", "lsa.mode='joint'.*'sequential' or 'parallel'"),
    ("bridge", "conv", "lsa.bridge='conv'.*'linear' or 'mlp'"),
    ("bridge_hidden", 0, "lsa.bridge_hidden"),
    ("bridge_lr", 0.0, "lsa.bridge_lr"),
])
def test_config_errors_name_the_key(key, value, match):
  c = _config()
  c.lsa[key] = value
  with pytest.raises(ValueError, match=match):
    lsa.check_config(c)
  with pytest.raises(ValueError, match=match):
    lsa.make_lsa(c, SHAPE, K)


def test_compose_needs_linear_bridges_and_other_errors(method):
  with pytest.raises(ValueError, match="lsa.compose=True.*lsa.bridge='linear'"):
    lsa.make_lsa(_config(compose=True, bridge="mlp"), SHAPE, K)
  pmap = Parallel("pmap", tuple(jax.devices()[:2]))
  with pytest.raises(ValueError, match="lsa.mode='parallel'.*supports parallel.mode='none' only"):
    lsa.make_lsa(_config(mode="parallel"), SHAPE, K, pmap)
  odd = _config()
  odd.train.batch_size = 7
  with pytest.raises(ValueError, match="batch_size=7 must be divisible by the 2 devices"):
    lsa.make_lsa(odd, SHAPE, K, pmap)
  parallel_method = lsa.make_lsa(_config(mode="parallel"), SHAPE, K)
  with pytest.raises(ValueError, match="train_parallel"):
    parallel_method.begin_task(parallel_method.init(jax.random.PRNGKey(0)), 0, _mask([0, 1]))
  with pytest.raises(ValueError, match="task slots"):
    method.begin_task(method.init(jax.random.PRNGKey(0)), 5, _mask([0, 1]))
  with pytest.raises(ValueError, match="capacities"):
    lsa.train_parallel(method, jax.random.PRNGKey(0), [_data([0, 1]), _data([2, 3], capacity=80)])


@pytest.mark.slow
def test_split_mnist_two_tasks_through_the_loop(mnist_data, tmp_path):
  from gmcl import loop
  c = lsa_config.get_config("smoke")
  c.data.max_tasks = 2
  c.data.pad_to = 32  # the session's preloaded MNIST
  c.data.value_range = (-1.0, 1.0)
  results = loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lambda s: None)
  R = np.array(results["accuracy_matrix"], dtype=float)
  assert results["scenario"] == "task_incremental" and results["method"] == "lsa"
  assert R.shape == (2, 2) and np.isnan(R[0, 1])
  assert np.all(np.isfinite([R[0, 0], R[1, 0], R[1, 1]]))
  assert R[0, 0] > 0.9 and R[1, 1] > 0.8  # each task is a two-class problem
  for entry in results["per_task"]:
    assert all(np.isfinite(v) for v in entry["metrics"].values())
  assert results["per_task"][1]["metrics"]["bridge/bridge_loss"] > 0  # a real bridge trained
  chain = results["per_seed"][0]["scores"]["chain"]  # structured: at the top too for one seed
  assert [s["oldest_task_feature_maps"] for s in chain] == [0, 1] and results["scores"]["chain"] == chain


@pytest.mark.slow
def test_parallel_mode_through_the_loop(mnist_data, tmp_path):
  """``lsa.mode="parallel"`` runs through gmcl.loop.run: one call trains every task, R is scored
  row by row on the models of tasks 0..t, and task 1's row equals a sequential run's."""
  from experiments.configs import lsa as lsa_config
  from gmcl import loop
  runs = {}
  for mode in ("parallel", "sequential"):
    c = lsa_config.get_config(f"smoke,variant={mode}")
    c.data.max_tasks = 2
    c.data.pad_to = 32  # the fixture's data
    c.data.value_range = (-1.0, 1.0)
    runs[mode] = loop.run(c, str(tmp_path / mode), data=mnist_data, progress=False, log=lambda s: None)
  R = np.asarray(runs["parallel"]["accuracy_matrix"], dtype=float)
  assert R.shape == (2, 2) and np.isnan(R[0, 1]) and R[1, 1] > 0.8
  assert runs["parallel"]["scenario"] == "task_incremental"
  # task 1's model is trained the same way in both modes (same keys): the same first row
  np.testing.assert_allclose(R[0, 0], runs["sequential"]["accuracy_matrix"][0][0], atol=1e-6)


# -- replay from a generative memory (lsa.replay = "generator") --------------------------------


@pytest.fixture(scope="module")
def replay_method():
  return lsa.make_lsa(_config(replay="generator"), SHAPE, K)


@pytest.mark.slow
def test_replay_bridge_step_mixes_current_and_replayed_alignment_by_hand(replay_method):
  """With replay, the bridge's Adam step follows r * L_align(current) + (1 - r) * L_align(x' ~
  G_{t-1}), written here with optax's Adam; G_{t-1} is the memory's snapshot of task 1's
  generator, and the generator phase moved it."""
  import optax
  from gmcl.data.sampling import sample_batch
  m = replay_method
  assert [p.name for p in m.phases()] == ["generator", "solver", "bridge"]
  state0 = m.begin_task(m.init(jax.random.PRNGKey(0)), 0, _mask([0, 1]))
  g_before = _copy(state0.memory.generator.params)
  state, _ = _run_tasks(m, 1)
  assert _max_diff(state.frozen.memory.generator_params, g_before) > 1e-6  # the memory trained
  state = m.begin_task(state, 1, _mask([0, 1, 2, 3]))
  state, _ = run_chunk(m.generator_step, state, _data([2, 3], seed=1), jax.random.PRNGKey(2), 0, 3)
  state, _ = run_chunk(m.solver_step, state, _data([2, 3], seed=1), jax.random.PRNGKey(3), 0, 3)
  # The live generator has moved on from the snapshot, so replaying from the wrong one shows.
  assert _max_diff(state.memory.generator.params, state.frozen.memory.generator_params) > 1e-6
  r = float(state.memory.ratio)
  assert r == pytest.approx(0.5)  # balanced: 1/t at the second task
  data, key = _data([2, 3], seed=2), jax.random.PRNGKey(5)
  new, metrics = run_chunk(m.bridge_step, _copy(state), data, key, 0, 1)

  k_batch, k_rep = jax.random.split(jax.random.fold_in(key, 0))  # run_chunk's key of step 0
  x, _ = sample_batch(data, k_batch, m.batch_size)
  z = jax.random.normal(jax.random.split(k_rep)[0], (m.batch_size, m.memory.z_dim))
  x_rep = m.memory.generator.apply(
      {"params": state.frozen.memory.generator_params,
       "batch_stats": state.frozen.memory.generator_batch_stats}, z, None, train=False)
  enc = lambda p, xb: m.classifier.apply({"params": {"encoder": p}}, xb, method="encode")

  def loss(params):
    def align(xb):
      new_z = enc(state.solver.params["encoder"], xb)
      diff = m.bridge_apply(params, new_z) - enc(state.frozen.encoder, xb)
      return jnp.mean(jnp.sum(diff ** 2, -1))
    return r * align(x) + (1 - r) * align(x_rep), (align(x), align(x_rep))

  (value, (cur, rep)), grads = jax.value_and_grad(loss, has_aux=True)(state.bridge.params)
  np.testing.assert_allclose(float(metrics["bridge_loss"]), float(value), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["bridge_current_loss"]), float(cur), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["bridge_replay_loss"]), float(rep), rtol=1e-5)
  assert abs(float(cur) - float(rep)) > 1e-3 * float(value)  # both terms are there, and differ
  live = m.memory.generator.apply(
      {"params": state.memory.generator.params, "batch_stats": state.memory.generator.batch_stats},
      z, None, train=False)
  assert float(jnp.max(jnp.abs(live - x_rep))) > 1e-4
  u, _ = optax.adam(m.config.lsa.bridge_lr).update(grads, state.bridge.opt_state, state.bridge.params)
  _assert_trees_close(new.bridge.params, optax.apply_updates(state.bridge.params, u))
  _assert_trees_close(new.memory, state.memory, rtol=0, atol=0)  # the bridge step leaves G alone


@pytest.mark.parametrize("reset", [False, True], ids=["keep-optimizers", "reset-optimizers"])
def test_replay_template_and_errors(reset):
  c = _config(replay="generator")
  c.train.reset_optimizers = reset
  m = lsa.make_lsa(c, SHAPE, K)
  first = m.begin_task(m.init(jax.random.PRNGKey(0)), 0, _mask([0, 1]))
  template = m.state_template(jax.random.PRNGKey(1), {"position": {"task": 0}, "method": {}})
  assert jax.tree.structure(template) == jax.tree.structure(first)
  state = m.begin_task(m.end_task(first), 1, _mask([0, 1, 2, 3]))
  template = m.state_template(jax.random.PRNGKey(1), {"position": {"task": 1}, "method": {}})
  assert jax.tree.structure(template) == jax.tree.structure(state)
  assert jax.tree.map(jnp.shape, template) == jax.tree.map(jnp.shape, state)
  assert state.frozen.memory is not None and state.frozen.encoder is not None
  assert lsa.make_lsa(_config(), SHAPE, K).init(jax.random.PRNGKey(0)).memory is None
  for values, match in (({"replay": "buffer"}, "lsa.replay='buffer'.*'none'.*'generator'"),
                        ({"replay": "generator", "mode": "parallel"},
                         "lsa.replay='generator'.*lsa.mode='sequential'")):
    with pytest.raises(ValueError, match=match):
      lsa.check_config(_config(**values))
  no_steps = _config(replay="generator")
  no_steps.train.generator_steps = 0
  with pytest.raises(ValueError, match="train.generator_steps=0.*lsa.replay='generator'"):
    lsa.check_config(no_steps)
  data_parallel = _config(mode="parallel")
  data_parallel.parallel.mode = "pmap"
  with pytest.raises(ValueError, match="parallel.mode='pmap'.*lsa.mode='parallel'"):
    lsa.check_config(data_parallel)


@pytest.mark.slow
def test_replay_through_the_loop(mnist_data, tmp_path):
  from gmcl import loop
  c = lsa_config.get_config("smoke")
  c.lsa.replay = "generator"
  c.data.max_tasks = 2
  c.data.pad_to = 32  # the session's preloaded MNIST
  c.data.value_range = (-1.0, 1.0)
  c.model.output_activation = "tanh"
  c.eval.save_samples = True
  results = loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lambda s: None)
  R = np.array(results["accuracy_matrix"], dtype=float)
  assert R[0, 0] > 0.9 and R[1, 1] > 0.8
  second = results["per_task"][1]["metrics"]
  assert second["bridge/bridge_replay_loss"] > 0 and second["bridge/bridge_current_loss"] > 0
  assert np.isfinite(second["generator/generator_loss"])
  assert (tmp_path / "samples_task02.png").exists()
