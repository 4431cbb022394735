"""MeRGAN: replay alignment, joint-retraining batches, class-conditional batch norm, the oracle."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import mergan as mergan_config
from gmcl.evaluation import oracle
from gmcl.data.sampling import task_arrays
from gmcl.losses.mergan import (balanced_labels, class_mean_weights, replay_alignment_loss,
                                sum_of_class_means)
from gmcl.methods import build_method
from gmcl.methods.base import run_chunk
from gmcl.models import DCGANGenerator, MLPGenerator

SHAPE = (32, 32, 1)


def _config(variant="ra", **overrides):
  c = mergan_config.get_config(f"smoke,variant={variant}")
  c.model.gan = "mlp"
  c.mergan.oracle = False
  for k, v in overrides.items():
    section, key = k.split("__")
    c[section][key] = v
  return c


def _data(cls, n=64):
  rng = np.random.default_rng(cls)
  x = np.clip(rng.uniform(-1, 1, (n,) + SHAPE) + 0.1 * cls, -1, 1).astype(np.float32)
  return task_arrays(x, np.full(n, cls, np.int32))


def _perturb(tree, key, scale=0.05):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape)
                                      for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def after_three_tasks():
  """A MeRGAN (RA) state at the start of task 4: classes 0, 1, 2 are old."""
  method = build_method("mergan", _config("ra", mergan__ra_weight=1e-3), SHAPE, 10)
  state = method.init(jax.random.PRNGKey(0))
  for t in range(3):
    state = method.begin_task(state, t, np.arange(10) <= t)
    state, _ = run_chunk(method.gan_step, state, _data(t), jax.random.PRNGKey(t), 0, 2)
    state = method.end_task(state)
  return method, method.begin_task(state, 3, np.arange(10) <= 3)


# -- losses --------------------------------------------------------------------------------------

def test_replay_alignment_hand_computed():
  old = jnp.zeros((2, 2, 2, 1))
  new = jnp.stack([jnp.ones((2, 2, 1)), jnp.full((2, 2, 1), 3.0)])
  # 0.5 * sum over 4 pixels of 1^2 = 2; of 3^2 = 18.
  np.testing.assert_allclose(replay_alignment_loss(new_images=new, old_images=old), [2.0, 18.0])
  np.testing.assert_allclose(replay_alignment_loss(new_images=new, old_images=new), [0.0, 0.0])
  # It grows with the difference: doubling it multiplies the loss by 4.
  np.testing.assert_allclose(replay_alignment_loss(new_images=2 * new, old_images=old),
                             [8.0, 72.0])
  grad_old = jax.grad(lambda o: jnp.sum(replay_alignment_loss(new_images=new, old_images=o)))(old)
  assert not np.any(np.asarray(grad_old))


def test_replay_alignment_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="replay_alignment_loss: argument 'old_images'"):
    replay_alignment_loss(new_images=jnp.zeros((2, 4, 4, 1)), old_images=jnp.zeros((3, 4, 4, 1)))


def test_balanced_labels_split_the_batch_evenly():
  classes = jnp.zeros(10, bool).at[jnp.array([1, 4, 7])].set(True)
  labels = np.asarray(jax.jit(balanced_labels, static_argnames="num")(classes=classes, num=64))
  values, counts = np.unique(labels, return_counts=True)
  assert values.tolist() == [1, 4, 7]
  assert sorted(counts.tolist()) == [21, 21, 22]
  one = np.asarray(balanced_labels(classes=jnp.arange(10) == 5, num=8))
  assert one.tolist() == [5] * 8


def test_sum_of_class_means_hand_computed():
  values = jnp.array([1.0, 2.0, 3.0, 10.0])
  labels = jnp.array([0, 0, 0, 3])
  assert float(sum_of_class_means(values=values, labels=labels, num_classes=5)) == pytest.approx(12.0)
  np.testing.assert_allclose(class_mean_weights(labels=labels, num_classes=5), [1 / 3] * 3 + [1.0])


# -- class-conditional batch norm ----------------------------------------------------------------

@pytest.mark.parametrize("generator", [
    pytest.param(DCGANGenerator(image_shape=SHAPE, num_classes=10, base_features=8, conditioning="batchnorm"),
                 marks=pytest.mark.slow),
    MLPGenerator(image_shape=SHAPE, num_classes=10, hidden=(32, 64), conditioning="batchnorm")],
    ids=["dcgan", "mlp"])
def test_mixed_batch_is_normalised_like_one_class_batches(generator):
  z = jax.random.normal(jax.random.PRNGKey(0), (12, 16))
  y = jnp.array([0, 3, 5] * 4)
  variables = generator.init(jax.random.PRNGKey(1), z, y)
  assert "batch_stats" not in variables  # statistics are always the batch's own
  variables = _perturb(variables, jax.random.PRNGKey(2), 0.1)  # per-class scales differ
  mixed = generator.apply(variables, z, y)
  for c in (0, 3, 5):
    alone = generator.apply(variables, z[y == c], y[y == c])
    np.testing.assert_allclose(alone, mixed[y == c], atol=2e-5)
  # Classes do get different outputs from the same z.
  other = generator.apply(variables, z, (y + 1) % 10)
  assert float(jnp.max(jnp.abs(other - mixed))) > 1e-3


# -- the method ----------------------------------------------------------------------------------

def test_replay_alignment_is_zero_for_an_unchanged_generator(after_three_tasks):
  method, state = after_three_tasks
  key = jax.random.PRNGKey(7)
  same = state.replace(generator=state.generator.replace(params=state.frozen.generator_params))
  assert float(method.alignment_objective(same.generator.params, same, key)) == 0.0
  moved = _perturb(state.frozen.generator_params, jax.random.PRNGKey(3))
  value = float(method.alignment_objective(moved, same, key))
  # By hand: lambda / n_old * sum_i 0.5 ||G(z_i, c_i) - G_old(z_i, c_i)||^2 on a balanced batch.
  y = balanced_labels(classes=jnp.arange(10) < 3, num=method.batch_size)
  z = jax.random.normal(key, (method.batch_size, method.z_dim))
  new = method.generator.apply({"params": moved}, z, y)
  old = method.generator.apply({"params": state.frozen.generator_params}, z, y)
  expected = 1e-3 / 3 * 0.5 * float(jnp.sum(jnp.square(new - old)))
  assert value == pytest.approx(expected, rel=1e-5)
  assert value > 0


def test_replay_alignment_gives_no_gradient_to_the_snapshot(after_three_tasks):
  method, state = after_three_tasks
  moved = _perturb(state.generator.params, jax.random.PRNGKey(4))

  def loss(snapshot_params):
    s = state.replace(frozen=state.frozen.replace(generator_params=snapshot_params))
    return method.alignment_objective(moved, s, jax.random.PRNGKey(5))

  grads = jax.grad(loss)(state.frozen.generator_params)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))
  g_live = jax.grad(lambda p: method.alignment_objective(p, state, jax.random.PRNGKey(5)))(moved)
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(g_live))


def test_jr_replay_batch_holds_each_past_class(after_three_tasks):
  method, state = after_three_tasks
  y, w, inv_n_old = method._old_labels(state.frozen)  # pylint: disable=protected-access
  y, w = np.asarray(y), np.asarray(w)
  assert sorted(np.unique(y).tolist()) == [0, 1, 2]
  n = method.batch_size
  assert sorted(np.bincount(y).tolist()) == sorted([n // 3 + (i < n % 3) for i in range(3)])
  for c in range(3):  # each past class adds one batch mean, as the official JR objective
    assert w[y == c].sum() == pytest.approx(1.0)
  assert float(inv_n_old) == pytest.approx(1 / 3)


@pytest.mark.slow
@pytest.mark.parametrize("variant,term,conditioning", [
    ("ra", "replay_alignment_loss", "batchnorm"), ("ra", "replay_alignment_loss", "concat"),
    ("jr", "generator_jr_loss", "batchnorm"), ("sft", None, "batchnorm")])
def test_variants_add_their_terms_only_with_a_snapshot(variant, term, conditioning):
  method = build_method("mergan", _config(variant, model__conditioning=conditioning), SHAPE, 10)
  state = method.begin_task(method.init(jax.random.PRNGKey(0)), 0, np.arange(10) < 1)
  state, first = run_chunk(method.gan_step, state, _data(0), jax.random.PRNGKey(0), 0, 1)
  assert "replay_alignment_loss" not in first and "generator_jr_loss" not in first
  state = method.begin_task(method.end_task(state), 1, np.arange(10) < 2)
  before = jax.tree.map(jnp.copy, state.frozen)
  state, second = run_chunk(method.gan_step, state, _data(1), jax.random.PRNGKey(1), 0, 1)
  if term is None:
    assert "replay_alignment_loss" not in second and "generator_jr_loss" not in second
  else:
    assert np.isfinite(second[term])
    if variant == "jr":
      assert "critic_jr_loss" in second
    else:  # at a task's first step G_t is G_{t-1}: the step's own alignment term is rounding
      # 0.5 * sum over H*W*C pixels of (G_t(z) - G_{t-1}(z))^2, the same generator computed in two
      # places of one program (fused differently): each pixel of a tanh output within 1e-3 (TF32
      # matmuls on GPUs round at 1e-3; float32 at ~1e-7), so at most 0.5 * H*W*C * 1e-6; a real
      # difference is ~1e2.
      assert 0.0 <= float(second[term]) <= 0.5 * np.prod(SHAPE) * 1e-6
  # Adam's moments start afresh at each task (the official code re-initialises them).
  fresh = method.begin_task(state, 2, np.arange(10) < 3)
  for name in ("generator", "critic"):
    counts = [c for c in jax.tree.leaves(getattr(fresh, name).opt_state) if c.dtype == jnp.int32]
    assert counts and all(int(c) == 0 for c in counts)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.frozen)):  # the snapshot stays
    np.testing.assert_array_equal(a, b)


def test_auxiliary_classifier_option_predicts_with_the_critic(after_three_tasks):
  method, state = after_three_tasks
  c = _config("ra", mergan__classifier="auxiliary")
  aux_method = build_method("mergan", c, SHAPE, 10)
  assert [p.name for p in aux_method.phases()] == ["gan"]
  x = jax.random.uniform(jax.random.PRNGKey(0), (4,) + SHAPE)
  logits = aux_method.predict(state, x)
  np.testing.assert_allclose(logits, method.auxiliary_logits(state, x))
  assert np.all(np.asarray(logits)[:, 4:] < -1e30)  # unseen classes masked


def test_bad_variant_is_named():
  from gmcl.config import validate_config
  c = _config("ra")
  c.mergan.variant = "xx"
  with pytest.raises(ValueError, match=r"mergan.variant='xx'.*'sft', 'jr', 'ra' or 'ewc'"):
    validate_config(c)
  with pytest.raises(ValueError, match=r"'variant' is for mergan, dgm, lgm, lsa, ogm only; 'dgr' has none"):
    from experiments.configs import dgr
    dgr.get_config("variant=ra")


# -- the oracle ----------------------------------------------------------------------------------

def test_oracle_cache_round_trips(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 300).astype(np.int32)
  x = (rng.normal(size=(300,) + SHAPE) * 0.3 + y[:, None, None, None]).astype(np.float32)
  settings = oracle.OracleSettings(dataset="toy", pad_to=32, value_range=(-1.0, 1.0),
                                   architecture="mlp", steps=20, batch_size=32)
  first = oracle.load_or_train(settings, x, y, x, y, 3, cache_dir=str(tmp_path), log=lambda s: None)
  assert os.path.isdir(tmp_path / settings.key())
  assert first.test_accuracy > 0.5
  monkeypatch.setattr(oracle, "train_oracle", lambda *a, **k: pytest.fail("retrained"))
  second = oracle.load_or_train(settings, x, y, x, y, 3, cache_dir=str(tmp_path),
                                log=lambda s: None)
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
    np.testing.assert_array_equal(a, b)
  assert second.test_accuracy == first.test_accuracy
  other = oracle.OracleSettings(**dict(settings.__dict__, steps=21))
  assert other.key() != settings.key()


def test_generated_accuracy_scores_each_class():
  # A "generator" that draws class c as images filled with c, and an oracle that reads the
  # value back but calls every 3 a 0: class 3 scores 0, the others 1.
  sample_fn = lambda key, labels: jnp.broadcast_to(labels[:, None, None, None].astype(jnp.float32),
                                                   labels.shape + SHAPE)
  predict_fn = lambda x: jax.nn.one_hot(jnp.where(x[:, 0, 0, 0] == 3, 0, x[:, 0, 0, 0]).astype(int), 10)
  acc = oracle.generated_accuracy(sample_fn, predict_fn, [0, 1, 3], jax.random.PRNGKey(0),
                                  samples_per_class=50, batch_size=16)
  assert acc == {0: 1.0, 1: 1.0, 3: 0.0}


# -- end to end on real MNIST --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sft", "jr", "ra"])
def test_smoke_run_scores_both_protocols(mnist_data, tmp_path, variant):
  from gmcl import loop
  c = mergan_config.get_config(f"smoke,variant={variant}")
  c.model.gan = "mlp"
  c.data.max_tasks = 2
  c.mergan.oracle_dir = str(tmp_path / "oracles")
  results = loop.run(c, str(tmp_path / "run"), data=mnist_data, progress=False, log=lambda s: None)
  with open(tmp_path / "run" / "results.json") as f:
    assert json.load(f) == json.loads(json.dumps(results, sort_keys=True))
  scores = results["scores"]
  for name in ("A_oracle", "A_auxiliary_head", "A_replay_classifier", "oracle_per_class"):
    assert len(scores[name]) == 2, name
  assert sorted(scores["oracle_per_class"][1]) == ["0", "1"]
  np.testing.assert_allclose(scores["A_oracle"][1], np.mean(list(scores["oracle_per_class"][1].values())))
  assert scores["A_replay_classifier"] == results["A"]
  assert os.path.exists(tmp_path / "run" / "samples_task02.png")
  metrics = results["per_task"][1]["metrics"]
  assert ("gan/replay_alignment_loss" in metrics) == (variant == "ra")
  assert ("gan/generator_jr_loss" in metrics) == (variant == "jr")


# -- EWC on the generator (MeRGAN's EWC row) -------------------------------------------------------

def _ewc_method(**overrides):
  return build_method("mergan", _config("ewc", mergan__ewc_fisher_samples=32, **overrides), SHAPE, 10)


def test_ewc_fisher_is_the_mean_of_each_samples_squared_gradient():
  """Each sample's gradient is taken through the whole batch (its batch norm couples them): the
  Fisher is the mean of their squares, here against a loop over samples."""
  method = _ewc_method()
  assert [p.name for p in method.phases()] == ["gan", "fisher", "solver"]
  assert method.phases()[1].num_steps == 2  # 32 samples in batches of 16
  state = method.begin_task(method.init(jax.random.PRNGKey(0)), 0, np.arange(10) < 1)
  data, key = _data(0), jax.random.PRNGKey(3)
  new, _ = method.fisher_step(state, data, key)
  from gmcl.data.sampling import sample_batch  # pylint: disable=import-outside-toplevel
  from gmcl.losses.gan import auxiliary_classifier_loss, wasserstein_generator_loss  # pylint: disable=import-outside-toplevel
  k_x, k_z = jax.random.split(key)
  _, y = sample_batch(data, k_x, method.batch_size)
  z = jax.random.normal(k_z, (method.batch_size, method.z_dim))
  g = state.generator

  def loss_of(params, n):
    images, _ = method._generate(params, g.batch_stats, z, y)  # pylint: disable=protected-access
    scores, logits = method.critic.apply({"params": state.critic.params}, images)
    return (wasserstein_generator_loss(fake_scores=scores) + auxiliary_classifier_loss(logits=logits, labels=y))[n]

  want = jax.tree.map(jnp.zeros_like, g.params)
  for n in range(method.batch_size):
    grad = jax.grad(loss_of)(g.params, n)
    want = jax.tree.map(lambda a, b: a + b * b, want, grad)
  for a, b in zip(jax.tree.leaves(new.ewc["task_fisher"]), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
  assert float(new.ewc["count"]) == method.batch_size
  end = method.end_task(new)  # F = the mean; theta* = the generator; the estimate restarts
  for a, b in zip(jax.tree.leaves(end.ewc["fisher"]), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b) / method.batch_size, rtol=1e-4, atol=1e-8)
  for a, b in zip(jax.tree.leaves(end.ewc["anchor"]), jax.tree.leaves(g.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(end.ewc["count"]) == 0.0


def test_ewc_penalty_enters_the_generator_loss_after_the_first_task():
  method = _ewc_method(mergan__ewc_weight=2.0)
  state = method.begin_task(method.init(jax.random.PRNGKey(0)), 0, np.arange(10) < 1)
  _, m0 = method.gan_step(state, _data(0), jax.random.PRNGKey(1))
  assert float(m0["ewc_penalty"]) == 0.0  # F = 0 before the first task ends
  state, _ = run_chunk(method.fisher_step, state, _data(0), jax.random.PRNGKey(2), 0, 2)
  state = method.begin_task(method.end_task(state), 1, np.arange(10) < 2)
  moved = _perturb(state.generator.params, jax.random.PRNGKey(5), 0.01)
  state = state.replace(generator=state.generator.replace(params=moved))
  by_hand = sum(float(jnp.sum(f * (p - a) ** 2)) for f, p, a in zip(
      jax.tree.leaves(state.ewc["fisher"]), jax.tree.leaves(moved), jax.tree.leaves(state.ewc["anchor"])))
  np.testing.assert_allclose(float(method.ewc_penalty(moved, state.ewc)), 0.5 * 2.0 * by_hand, rtol=1e-5)
  _, m1 = method.gan_step(state, _data(1), jax.random.PRNGKey(6))
  np.testing.assert_allclose(float(m1["ewc_penalty"]), 0.5 * 2.0 * by_hand, rtol=1e-5)
  assert float(m1["generator_loss"]) == pytest.approx(float(m1["generator_adv_loss"] + m1["ewc_penalty"]), rel=1e-5)


def test_ewc_per_task_anchor_is_the_sum_of_separate_penalties():
  method = _ewc_method(mergan__ewc_accumulate="per_task")
  state = method.init(jax.random.PRNGKey(0))
  thetas, fishers, ewc = [], [], state.ewc
  for t in range(2):
    theta = _perturb(state.generator.params, jax.random.PRNGKey(10 + t), 0.1)
    f = jax.tree.map(jnp.abs, _perturb(jax.tree.map(jnp.zeros_like, theta), jax.random.PRNGKey(20 + t), 1.0))
    ewc = method._consolidate(dict(ewc, task_fisher=f, count=jnp.ones(())), theta)  # pylint: disable=protected-access
    thetas.append(theta)
    fishers.append(f)
  probe = _perturb(state.generator.params, jax.random.PRNGKey(30), 0.1)
  got = jax.grad(lambda p: method.ewc_penalty(p, ewc))(probe)
  separate = lambda p: sum(method.ewc_penalty(p, {"anchor": a, "fisher": f}) for a, f in zip(thetas, fishers))
  want = jax.grad(separate)(probe)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))
