"""Latent generative memory: feature shapes, the encoder options, HAT masks and bridges, a loop run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import lgm as lgm_config
from gmcl.data.sampling import sample_batch, task_arrays
from gmcl.methods.base import run_chunk
from gmcl.losses.alignment import alignment_loss as feature_alignment_loss, relative_drift
from gmcl.methods.lgm import make_lgm
from tolerances import assert_chunks_equal_single_steps

SHAPE = (32, 32, 1)


def _config(variant="ra-train", **lgm):
  c = lgm_config.get_config(f"smoke,variant={variant}")
  c.lgm.generator_hidden = (32,)
  c.lgm.critic_hidden = (32,)
  c.lgm.z_dim = 8
  c.lgm.prototype_steps = 3
  for k, v in lgm.items():
    c.lgm[k] = v
  return c


def _data(classes, n=48, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.choice(classes, size=n).astype(np.int32)
  x = np.clip(rng.uniform(-1, 1, (n,) + SHAPE) + y[:, None, None, None] * 0.1, -1, 1)
  return task_arrays(x.astype(np.float32), y, capacity=2 * n)


def _run_task(method, state, t, steps=2):
  state = method.begin_task(state, t, np.arange(10) <= t)
  data = _data([t], seed=t)
  for p, phase in enumerate(method.phases()):
    for i in range(min(steps, phase.num_steps)):
      state, metrics = run_chunk(phase.step, state, data, jax.random.PRNGKey(10 * t + p), i, 1)
  return method.end_task(state), data


def _leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
@pytest.mark.parametrize("classifier, width, variant", [("mlp", 64, "ra-train"), ("cnn", 256, "hat-bridge")])
def test_latent_generator_makes_features_of_the_split_point_shape(classifier, width, variant):
  c = _config(variant)
  c.model.classifier = classifier
  m = make_lgm(c, SHAPE, 10)
  assert m.feature_dim == width
  state, data = _run_task(m, m.init(jax.random.PRNGKey(0)), 0, steps=1)
  state = m.begin_task(state, 1, np.arange(10) <= 1)
  phi, labels = m.memories(state, jax.random.PRNGKey(1), 16)
  assert phi.shape == (16, width) and labels.shape == (16,)
  assert np.all(np.asarray(labels) == 0)  # only class 0 was seen before task 2
  x, _ = sample_batch(data, jax.random.PRNGKey(2), 4)
  assert m.encode(state.solver.params, x).shape == (4, width)
  assert float(jnp.min(phi)) >= 0.0  # ReLU output, like the encoder's features


def test_alignment_and_drift_hand_computed():
  new = jnp.array([[1.0, 2.0], [0.0, 1.0]])
  old = jnp.array([[1.0, 0.0], [2.0, 1.0]])
  np.testing.assert_allclose(feature_alignment_loss(mapped=new, target=old), [4.0, 4.0])
  np.testing.assert_allclose(relative_drift(new=new, old=old), 8.0 / 6.0, rtol=1e-6)
  g = jax.grad(lambda t: jnp.sum(feature_alignment_loss(mapped=new, target=t)))(old)
  assert np.all(np.asarray(g) == 0)  # the target is never differentiated


def test_frozen_encoder_does_not_move_after_task_one_but_the_head_does():
  m = make_lgm(_config("ra-frozen"), SHAPE, 10)
  state, _ = _run_task(m, m.init(jax.random.PRNGKey(0)), 0)
  before = jax.tree.map(jnp.copy, state.solver.params)
  state, _ = _run_task(m, state, 1)
  assert _leaves_equal(before["encoder"], state.solver.params["encoder"])
  assert not _leaves_equal(before["head"], state.solver.params["head"])


def test_trained_encoder_moves_and_drift_is_scored():
  m = make_lgm(_config("ra-train"), SHAPE, 10)
  state, _ = _run_task(m, m.init(jax.random.PRNGKey(0)), 0)
  before = jax.tree.map(jnp.copy, state.solver.params)
  state, _ = _run_task(m, state, 1)
  assert not _leaves_equal(before["encoder"], state.solver.params["encoder"])
  # the snapshot's prior classifier is task 1's: the drift score compares f_2 with f_1
  assert _leaves_equal(before, state.frozen.prior_solver_params)
  # the drift score, by hand, on held-out images of the old class
  rng = np.random.default_rng(3)

  class Held:
    x_test = rng.uniform(-1, 1, (20,) + SHAPE).astype(np.float32)
    y_test = np.arange(20) % 3

  class Seq:
    seen_classes = staticmethod(lambda t: list(range(t + 1)))

  scores = m.extra_scores(state, Held, Seq, 1, jax.random.PRNGKey(0))
  x_old = Held.x_test[Held.y_test == 0]
  expected = relative_drift(new=m.encode(state.solver.params, x_old), old=m.encode(before, x_old))
  np.testing.assert_allclose(scores["drift"], float(expected), rtol=1e-5)
  assert scores["memory_gap"] > 0.0
  # memory_accuracy by hand: 256 generated features per seen class, drawn with fold_in(key, c),
  # classified by the head over the active classes
  correct = 0
  for c in (0, 1):
    phi = m._memory_of(state, jax.random.fold_in(jax.random.PRNGKey(0), c), jnp.full((256,), c, jnp.int32))
    logits = np.array(m.classify(state.solver.params, phi))
    logits[:, ~np.asarray(state.active)] = -np.inf
    correct += int(np.sum(np.argmax(logits, -1) == c))
  assert scores["memory_accuracy"] == correct / 512


def test_permuted_tasks_keep_every_class_current_and_weigh_tasks_equally():
  m = make_lgm(_config("hat-train"), SHAPE, 10)
  state = m.begin_task(m.init(jax.random.PRNGKey(0)), 0, np.ones(10, bool))
  state = m.begin_task(m.end_task(state), 1, np.ones(10, bool))  # the same ten classes again
  assert bool(jnp.all(state.current)) and bool(jnp.all(state.task_classes[1]))
  np.testing.assert_allclose(state.ratio, 0.5)
  phi, labels = m.memories(state, jax.random.PRNGKey(1), 20)
  assert phi.shape == (20, m.feature_dim) and len(set(np.asarray(labels).tolist())) == 10
  # A chunk donates the state: every field must be its own buffer (a shared one failed here).
  state, metrics = run_chunk(m.joint_step, state, _data([0, 5]), jax.random.PRNGKey(2), 0, 1)
  assert np.isfinite(float(metrics["solver_loss"]))


def test_hat_memories_of_earlier_tasks_are_unchanged_by_later_training():
  m = make_lgm(_config("hat-train"), SHAPE, 10)
  state, _ = _run_task(m, m.init(jax.random.PRNGKey(0)), 0)
  state = m.begin_task(state, 1, np.arange(10) <= 1)
  labels = jnp.zeros((8,), jnp.int32)
  g = state.generator
  before, _, _ = m._hat_generate(g.params, g.batch_stats, jax.random.PRNGKey(5), labels, 0, hard=True)
  data = _data([1], seed=1)
  for i in range(3):
    state, _ = run_chunk(m.joint_step, state, data, jax.random.PRNGKey(7), i, 1)
  g = state.generator
  after, _, _ = m._hat_generate(g.params, g.batch_stats, jax.random.PRNGKey(5), labels, 0, hard=True)
  assert not _leaves_equal(state.generator.params["head"][1], m.begin_task(
      _run_task(m, m.init(jax.random.PRNGKey(0)), 0)[0], 1, np.arange(10) <= 1).generator.params["head"][1])
  np.testing.assert_array_equal(np.asarray(before), np.asarray(after))


@pytest.mark.slow
def test_bridge_starts_at_the_identity_and_carries_old_memories():
  m = make_lgm(_config("ra-bridge"), SHAPE, 10)
  state, _ = _run_task(m, m.init(jax.random.PRNGKey(0)), 0)
  state = m.begin_task(state, 1, np.arange(10) <= 1)
  u = jax.random.uniform(jax.random.PRNGKey(3), (5, m.feature_dim))
  np.testing.assert_allclose(m._bridge(state.bridge.params, u), u, atol=1e-6)
  # a known bridge: old memories reach the head through it
  scale = jax.tree.map(lambda p: p * 2.0, state.bridge.params)
  state = state.replace(bridge=state.bridge.replace(params=scale))
  phi, labels = m.memories(state, jax.random.PRNGKey(4), 6)
  k_z, _ = jax.random.split(jax.random.PRNGKey(4))
  raw = m.generator.apply({"params": state.frozen.generator_params},
                          jax.random.normal(k_z, (6, m.g.z_dim)), labels)
  np.testing.assert_allclose(phi, 2.0 * raw, rtol=1e-5, atol=1e-6)
  # the bridge learns during task 2: it maps f_1 closer to f_2 than the identity does
  data = _data([1], seed=1)
  state = state.replace(bridge=m._fresh_bridge(jax.random.PRNGKey(0)))
  state, _ = run_chunk(m.joint_step, state, data, jax.random.PRNGKey(8), 0, 10)
  x, _ = sample_batch(data, jax.random.PRNGKey(11), 32)
  old, new = m.encode(state.frozen.solver_params, x), m.encode(state.solver.params, x)
  trained = jnp.mean(feature_alignment_loss(mapped=m._bridge(state.bridge.params, old), target=new))
  assert float(trained) < 0.9 * float(jnp.mean(feature_alignment_loss(mapped=old, target=new)))


def test_prototypes_are_the_class_means_of_the_final_features():
  m = make_lgm(_config("ra-prototype"), SHAPE, 10)
  state = m.init(jax.random.PRNGKey(0))
  state = m.begin_task(state, 0, np.arange(10) <= 0)
  data = _data([0])
  state, _ = run_chunk(m.joint_step, state, data, jax.random.PRNGKey(1), 0, 1)
  params = jax.tree.map(jnp.copy, state.solver.params)  # the chunk donates the state
  state, _ = run_chunk(m.prototype_step, state, data, jax.random.PRNGKey(2), 0, 3)
  xs = [sample_batch(data, jax.random.fold_in(jax.random.PRNGKey(2), i), m.batch_size)[0] for i in range(3)]
  expected = jnp.mean(jnp.concatenate([m.encode(params, x) for x in xs]), axis=0)
  assert float(state.proto_count[0]) == 3 * m.batch_size and float(jnp.sum(state.proto_count)) == 3 * m.batch_size
  np.testing.assert_allclose(state.proto_sum[0] / state.proto_count[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["ra-prototype", "hat-bridge"])
def test_k_step_chunk_equals_single_steps(variant):
  m = make_lgm(_config(variant), SHAPE, 10)
  state, _ = _run_task(m, m.init(jax.random.PRNGKey(0)), 0, steps=1)
  state = m.begin_task(state, 1, np.arange(10) <= 1)
  data = _data([1], seed=1)
  tr = m.config.train  # one joint step: n_critic critic updates, the generator's, the solver's and the bridge's
  _, chunked = assert_chunks_equal_single_steps(
      m.joint_step, state, data, jax.random.PRNGKey(9), lr=max(tr.solver_lr, tr.gan_lr),
      updates_per_step=tr.n_critic + 3, what=f"lgm {variant}")
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(state.solver.params), jax.tree.leaves(chunked.solver.params)))


@pytest.mark.parametrize("variant", ["hat-bridge", "ra-prototype"])
@pytest.mark.parametrize("begun", [True, False], ids=["mid-task", "between-tasks"])
def test_state_template_matches_a_checkpointed_state(variant, begun):
  m = make_lgm(_config(variant), SHAPE, 10)
  state, _ = _run_task(m, m.init(jax.random.PRNGKey(0)), 0, steps=1)
  if begun:
    state = m.begin_task(state, 1, np.arange(10) <= 1)
  tmpl = m.state_template(jax.random.PRNGKey(0), {"position": {"task": 1, "begun": begun}})
  assert jax.tree.structure(tmpl) == jax.tree.structure(state)
  assert [(x.shape, x.dtype) for x in jax.tree.leaves(tmpl)] == \
      [(x.shape, x.dtype) for x in jax.tree.leaves(state)]


@pytest.mark.parametrize("key, value, message", [
    ("protection", "ewc", r"lgm.protection='ewc'.*'ra', 'hat'"),
    ("encoder", "thawed", r"lgm.encoder='thawed'.*'prototype', 'bridge'"),
    ("bridge", "conv", r"lgm.bridge='conv'.*'linear', 'mlp'"),
    ("drift_weight", -1.0, r"lgm.drift_weight=-1.0.*>= 0"),
])
def test_bad_values_are_named(key, value, message):
  from gmcl.config import validate_config
  c = _config()
  c.lgm[key] = value
  with pytest.raises(ValueError, match=message):
    validate_config(c)
  with pytest.raises(ValueError, match=r"'variant' is for .*lgm"):
    lgm_config.make_config("sft", "variant=ra")


@pytest.mark.slow
def test_a_two_task_run_through_the_loop(mnist_data, tmp_path):
  from gmcl import loop
  c = _config("ra-bridge")
  c.data.max_tasks = 2
  c.train.solver_steps = 10
  c.checkpoint.enabled = False
  res = loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lambda s: None)
  R = res["accuracy_matrix"]
  assert np.asarray(R, dtype=float).shape == (2, 2)
  assert R[0][0] == 1.0  # class 0 alone after task 1: the head masked to it can predict nothing else
  # A_2 is the accuracy over the test images of classes 0 and 1: R's row weighted by their counts
  counts = [int(np.sum(mnist_data.y_test[:c.data.test_limit] == k)) for k in (0, 1)]
  np.testing.assert_allclose(res["A"][1], np.dot(R[1], counts) / sum(counts), rtol=1e-6)
  scores = res["scores"]
  assert scores["drift"][0] is None and scores["drift"][1] > 0.0
  assert np.isfinite(scores["bridged_drift"][0]) and len(scores["memory_accuracy"]) == 2


def test_pmap_is_refused_and_the_batch_must_divide_over_devices():
  from gmcl.parallel import Parallel
  with pytest.raises(ValueError, match="lgm: parallel.mode='pmap' is not implemented.*'jit'"):
    make_lgm(_config(), SHAPE, 10, Parallel("pmap", tuple(jax.devices()[:2])))
  c = _config()
  c.train.batch_size = 7
  with pytest.raises(ValueError, match="batch_size=7 must be divisible by the 2 devices"):
    make_lgm(c, SHAPE, 10, Parallel("jit", tuple(jax.devices()[:2])))
