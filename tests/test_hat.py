"""HAT's mask machinery: gates, schedule, compensation, sparsity, and a task-incremental classifier."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import hat as hat_config
from gmcl import optim
from gmcl.losses.hat import sparsity_regularizer
from gmcl.models import hat
from gmcl.data.sampling import task_arrays
from gmcl.methods import build_method
from gmcl.methods.base import run_chunk

SHAPE = (8, 8, 1)


def test_annealed_s_runs_from_one_over_s_max_to_s_max():
  assert float(hat.annealed_s(0, 100, 400.0)) == pytest.approx(1 / 400)
  assert float(hat.annealed_s(100, 100, 400.0)) == pytest.approx(400.0)
  assert float(hat.annealed_s(50, 100, 400.0)) == pytest.approx(1 / 400 + (400 - 1 / 400) / 2)


def test_gates_at_s_max_are_binary():
  e = jax.random.normal(jax.random.PRNGKey(0), (1000,))
  e = jnp.where(jnp.abs(e) < 0.05, 0.05 * jnp.sign(e + 1e-9), e)  # what training leaves: |e| >= 0.05
  g = np.asarray(hat.gate(e, 400.0))
  assert np.all(np.minimum(g, 1 - g) < 1e-6)
  np.testing.assert_array_equal(np.asarray(hat.binarize(g)), (np.asarray(e) > 0).astype(np.float32))


def test_sparsity_regularizer_hand_computed():
  masks = {"a": jnp.array([1.0, 0.5]), "b": jnp.array([0.2])}
  # No earlier task: the mean gate.
  assert float(sparsity_regularizer(masks)) == pytest.approx((1.0 + 0.5 + 0.2) / 3)
  # a_{<t} reserves a[0]: sum a_t (1 - a_{<t}) = 0.5 + 0.2 over the free capacity 2.
  previous = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([0.0])}
  assert float(sparsity_regularizer(masks, previous)) == pytest.approx(0.35)


def test_cumulative_mask_is_the_elementwise_max():
  a = {"l": jnp.array([0.0, 1.0, 0.3])}
  b = {"l": jnp.array([1.0, 0.0, 0.2])}
  np.testing.assert_array_equal(hat.cumulative(a, b)["l"], np.float32([1.0, 1.0, 0.3]))
  assert hat.cumulative(None, b) is b


def test_dense_chain_keep_hand_computed():
  a0, a1 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0, 1.0])
  keep = hat.dense_chain_keep([a0, a1])
  np.testing.assert_array_equal(keep[0]["kernel"], [[0.0, 1.0]])  # first layer: input unmasked
  np.testing.assert_array_equal(keep[0]["bias"], [0.0, 1.0])
  # Weight (i -> j) frozen only when input unit i and output unit j are both reserved.
  np.testing.assert_array_equal(keep[1]["kernel"], [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
  np.testing.assert_array_equal(keep[1]["bias"], [1.0, 0.0, 0.0])


def test_compensation_zeroes_reserved_weights_and_rescales_embeddings():
  params = {"kernel": jnp.ones((2, 2)), "embedding": jnp.array([[0.5, -2.0]])}
  mask = {"kernel": False, "embedding": True}
  tx = optim.hat_compensation(mask, s_max=400.0)
  state = tx.init(params)
  keep = {"kernel": jnp.array([[0.0, 1.0], [1.0, 0.0]]), "embedding": jnp.ones((1, 2))}
  state = optim.with_keep(state, keep)
  grads = {"kernel": jnp.full((2, 2), 3.0), "embedding": jnp.array([[1.0, 1.0]])}
  s = 10.0
  out, _ = tx.update(grads, state, params, s=s)
  np.testing.assert_array_equal(out["kernel"], [[0.0, 3.0], [3.0, 0.0]])
  e = np.array([0.5, -2.0])
  expected = 400.0 / s * (np.cosh(np.clip(s * e, -50, 50)) + 1) / (np.cosh(e) + 1)
  np.testing.assert_allclose(out["embedding"][0], expected, rtol=1e-5)
  # Through a whole optimiser, reserved weights do not move at all.
  full = optax.chain(tx, optax.sgd(0.1))
  st = optim.with_keep(full.init(params), keep)
  upd, _ = full.update(grads, st, params, s=s)
  new = optax.apply_updates(params, upd)
  assert float(new["kernel"][0, 0]) == 1.0 and float(new["kernel"][1, 1]) == 1.0
  assert float(new["kernel"][0, 1]) != 1.0


def test_compensation_needs_s():
  tx = optim.hat_compensation({"w": False}, 400.0)
  with pytest.raises(ValueError, match="needs params and s="):
    tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}), {"w": jnp.ones(2)})


def test_weight_masks_gate_the_kernel():
  layer = hat.HATDense(3, num_tasks=2, mode="weight")
  x = jnp.ones((1, 4))
  params = layer.init(jax.random.PRNGKey(0), x, 0, 1.0)["params"]
  y, g = layer.apply({"params": params}, x, 1, 400.0)
  expected = x @ (params["kernel"] * hat.gate(params["embedding"][1], 400.0)) + \
      params["bias"] * hat.gate(params["bias_embedding"][1], 400.0)
  np.testing.assert_allclose(y, expected, rtol=1e-6)
  assert g["kernel"].shape == (4, 3)


def _data(classes, n=128, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.choice(classes, size=n).astype(np.int32)
  x = rng.normal(size=(n,) + SHAPE).astype(np.float32) * 0.5
  x[np.arange(n), y % 8, 0, 0] += 3.0  # class c lights pixel (c mod 8, 0)
  return task_arrays(x, y)


@pytest.mark.parametrize("binarize", [True, False])
def test_earlier_tasks_keep_their_outputs(binarize):
  c = hat_config.get_config("smoke")
  c.model.classifier_hidden = (32, 32)
  c.hat.binarize = binarize
  c.train.batch_size = 32
  method = build_method("hat", c, SHAPE, 10)
  state = method.init(jax.random.PRNGKey(0))
  x_probe = _data([0, 1], seed=9).x[:16]
  outputs, cumulative = {}, []
  for t, classes in enumerate(([0, 1], [2, 3], [4, 5])):
    state = method.begin_task(state, t, np.isin(np.arange(10), sum(([0, 1], [2, 3], [4, 5])[:t + 1], [])))
    data = _data(classes, seed=t)
    for i in range(60):
      state, m = run_chunk(method.solver_step, state, data, jax.random.PRNGKey(t), i, 1)
    state = method.end_task(state)
    outputs[t] = np.asarray(method.predict_task(state, x_probe, 0))
    cumulative.append(jax.device_get(state.cumulative))
  assert float(m["train_acc"]) > 0.5  # it learns
  # Task 0's head and masks after tasks 1 and 2: bitwise unchanged with binarised masks;
  # with HAT's sigmoid(s_max e) gates, unchanged up to the gates' distance from {0, 1}.
  if binarize:
    np.testing.assert_array_equal(outputs[2], outputs[0])
  else:
    np.testing.assert_allclose(outputs[2], outputs[0], atol=1e-3)
  # The cumulative mask a_{<=t} only grows, and each task reserved some units.
  for before, after in zip(cumulative, cumulative[1:]):
    for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
      assert np.all(a >= b)
  assert all(float(np.max(v)) > 0 for v in jax.tree.leaves(cumulative[0]))


@pytest.mark.slow
def test_hat_split_mnist_does_not_forget(mnist_data, tmp_path):
  from gmcl import loop
  c = hat_config.get_config("smoke")
  c.model.classifier_hidden = (64, 64)
  c.train.solver_steps = 60
  c.data.pad_to = 32  # the session's preloaded MNIST
  c.data.value_range = (-1.0, 1.0)
  results = loop.run(c, str(tmp_path), data=mnist_data, progress=False, log=lambda s: None)
  R = np.array(results["accuracy_matrix"], dtype=float)
  assert results["scenario"] == "task_incremental" and results["method"] == "hat"
  assert np.isnan(R[0, 1])  # no head for a task not yet trained
  assert R[0, 0] > 0.9
  assert results["average_forgetting"] < 0.01
