"""gmcl.methods.wgan_gp: the critic's n updates traced once (a fully unrolled scan) are the same
updates, in the same order, as n traced copies."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmcl.methods import wgan_gp
from gmcl.methods.base import ModelState


def _problem(calls):
  tx = optax.adam(1e-2)
  params = {"w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4), "b": jnp.zeros((4,), jnp.float32)}
  critic = ModelState(params=params, opt_state=tx.init(params))

  def draw(key):
    calls.append(1)
    return jax.random.normal(key, (8, 3))

  def loss(p, x):
    h = jnp.tanh(x @ p["w"] + p["b"])
    value = jnp.mean(jnp.square(h - 0.5))
    return value, (None, {"critic_loss": value, "mean_out": jnp.mean(h)})

  return critic, draw, loss, wgan_gp.critic_update_with(tx)


@pytest.mark.parametrize("n", [1, 5])
def test_critic_updates_traced_once_equal_the_copies_and_trace_the_step_once(monkeypatch, n):
  keys = list(jax.random.split(jax.random.PRNGKey(0), n))
  results = {}
  for once in (False, True):
    monkeypatch.setattr(wgan_gp, "TRACE_CRITIC_ONCE", once)
    calls = []
    critic, draw, loss, update = _problem(calls)
    fn = jax.jit(lambda c, ks: wgan_gp.critic_updates(c, ks, draw=draw, loss=loss, update=update))
    results[once] = jax.device_get(fn(critic, keys))
    assert len(calls) == (1 if once or n == 1 else n)  # Python traces of the step
    # the same updates without jit, one by one, by hand
    c, sums = critic, {}
    for k in keys:
      x = draw(k)
      grads, (_, m) = jax.grad(loss, has_aux=True)(c.params, x)
      c = update(c, grads, None)
      sums = {name: sums.get(name, 0.0) + v / n for name, v in m.items()}
    by_hand = jax.device_get((c, sums))
    # n Adam steps of size <= lr: rounding differences between compiled and eager programs of
    # a few ulps per step, amplified at most by Adam's 1/sqrt(v) normalisation
    for a, b in zip(jax.tree.leaves(results[once]), jax.tree.leaves(by_hand)):
      np.testing.assert_allclose(a, b, rtol=0, atol=n * 1e-5)
  for a, b in zip(jax.tree.leaves(results[False]), jax.tree.leaves(results[True])):
    np.testing.assert_allclose(a, b, rtol=0, atol=n * 1e-5)
