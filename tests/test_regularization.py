"""EWC, SI and RWalk: each rule against a hand computation, then the method's statistics against a
plain re-implementation of the reference code's training loop on a tiny model."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmcl.data.sampling import sample_batch, task_arrays
from gmcl.losses import regularization as reg
from gmcl.losses.classification import softmax_cross_entropy
from gmcl.methods import build_method

SHAPE = (4, 4, 1)
K = 4


def _tree(*arrays):
  return {"a": jnp.asarray(arrays[0], jnp.float32), "b": {"c": jnp.asarray(arrays[1], jnp.float32)}}


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


# -- the pure rules --------------------------------------------------------------------------------

def test_quadratic_penalty_and_its_gradient_by_hand():
  p, a, f = _tree([1.0, 2.0], [[3.0]]), _tree([0.0, 4.0], [[1.0]]), _tree([0.5, 2.0], [[3.0]])
  # 0.5*1 + 2*4 + 3*4 = 20.5, times 0.1
  assert float(reg.quadratic_penalty(p, a, f, 0.1)) == pytest.approx(2.05, rel=1e-6)
  g = reg.penalty_gradient(p, a, f, 0.1)
  np.testing.assert_allclose(_flat(g), [0.2 * 0.5 * 1, 0.2 * 2 * -2, 0.2 * 3 * 2], rtol=1e-6)
  autodiff = jax.grad(lambda q: reg.quadratic_penalty(q, a, f, 0.1))(p)
  np.testing.assert_allclose(_flat(g), _flat(autodiff), rtol=1e-6)


def test_ema_fisher_si_and_rwalk_rules_by_hand():
  running, window = _tree([1.0, 0.0], [[2.0]]), _tree([10.0, 20.0], [[0.0]])
  np.testing.assert_allclose(_flat(reg.ema_fisher(running, window, alpha=0.9, every=10)),
                             [0.1 + 0.9, 1.8, 0.2], rtol=1e-6)
  omega, g = _tree([0.0, 1.0], [[0.0]]), _tree([2.0, -1.0], [[3.0]])
  before, after = _tree([1.0, 1.0], [[1.0]]), _tree([0.5, 1.5], [[2.0]])
  np.testing.assert_allclose(_flat(reg.path_increment(omega, g, before, after)),
                             [0.0 + 1.0, 1.0 + 0.5, 0.0 - 3.0], rtol=1e-6)
  big, path = _tree([1.0, 1.0], [[1.0]]), _tree([2.0, -2.0], [[0.5]])
  params, anchor = _tree([1.0, 0.0], [[0.0]]), _tree([0.0, 0.0], [[0.0]])
  np.testing.assert_allclose(_flat(reg.si_importance(big, path, params, anchor, 1e-3)),
                             [1 + 2 / 1.001, 1.0, 1 + 0.5 / 1e-3], rtol=1e-6)
  fisher = _tree([4.0, 1.0], [[0.0]])
  np.testing.assert_allclose(_flat(reg.rwalk_window_scores(big, path, fisher, params, anchor, 1e-3)),
                             [1 + 2 / 4.001, 1.0, 1 + 0.5 / 1e-3], rtol=1e-6)


def test_minmax_normalize_spans_every_leaf_together():
  out = reg.minmax_normalize(_tree([2.0, 4.0], [[6.0, 3.0]]))
  np.testing.assert_allclose(_flat(out), [0.0, 0.5, 1.0, 0.25], rtol=1e-6)


def test_per_example_squared_grads_equal_a_loop_over_examples():
  params = {"w": jnp.array([[0.5, -1.0], [2.0, 0.3]]), "b": jnp.array([0.1, -0.2])}
  x = jnp.array([[1.0, 2.0], [-1.0, 0.5], [0.0, 3.0]])
  y = jnp.array([0, 1, 1])

  def nll(p, xi, yi):
    return -jax.nn.log_softmax(xi @ p["w"] + p["b"])[yi]

  got = reg.per_example_squared_grads(nll, params, x, y)
  want = jax.tree.map(jnp.zeros_like, params)
  for i in range(3):
    g = jax.grad(nll)(params, x[i], y[i])
    want = jax.tree.map(lambda a, b: a + b * b, want, g)
  np.testing.assert_allclose(_flat(got), _flat(want), rtol=1e-5, atol=1e-7)


# -- the method against the reference loop ---------------------------------------------------------

def _config(kind, **overrides):
  c = importlib.import_module(f"experiments.configs.{kind}").get_config("smoke")
  c.data.protocol, c.data.classes_per_task = "split", 2
  c.model.classifier_hidden = (6,)
  c.train.batch_size = 8
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def _data(classes, n=40, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.choice(classes, size=n).astype(np.int32)
  x = rng.uniform(-1, 1, (n,) + SHAPE) + y[:, None, None, None] * 0.2
  return task_arrays(np.clip(x, -1, 1).astype(np.float32), y, capacity=n + 8)


def _active(classes):
  return np.isin(np.arange(K), classes)


def _grads(method, params, data, key, active):
  """The unregularised gradient the step takes, recomputed from its batch."""
  x, y = sample_batch(data, jax.random.split(key)[0], method.batch_size)
  loss = lambda p: jnp.mean(softmax_cross_entropy(
      logits=method.classifier.apply({"params": p}, x), labels=y, where=jnp.asarray(active)))
  return jax.grad(loss)(params)


def _run_task(method, state, t, classes, steps, trace):
  """Begins task t, takes ``steps`` solver steps one by one (recording the reference loop's
  inputs: the gradient and the parameters before and after), runs the other phases, ends it."""
  state = method.begin_task(state, t, _active(classes))
  data = _data(classes, seed=t)
  step = jax.jit(method.solver_step)
  for i in range(steps):
    key = jax.random.PRNGKey(100 * t + i)
    before = state.solver.params
    g = _grads(method, before, data, key, state.active)
    state, _ = step(state, data, key)
    trace.append((t, i, g, before, state.solver.params))
  for phase in method.phases()[1:]:
    for i in range(phase.num_steps):
      state, _ = jax.jit(phase.step)(state, data, jax.random.PRNGKey(7000 + 10 * t + i))
  return method.end_task(state), data


def _np(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _minmax(arrays):
  low = min(a.min() for a in arrays)
  high = max(a.max() for a in arrays)
  return [(a - low) / (high - low + 1e-32) for a in arrays]


def _reference(kind, trace, init_params, tasks, every=10, alpha=0.9, xi=1e-3, window_reset=True,
               score_update="average"):
  """The reference code's statistics (facebookresearch/agem, model.py + fc_permute_mnist.py),
  replayed in float64 from the recorded gradients and parameters; the importance after the last
  task."""
  zeros = lambda: [np.zeros_like(a) for a in _np(init_params)]
  running, tmp, small, riemann, score = zeros(), zeros(), zeros(), zeros(), zeros()
  big_omega, star, delta_old = zeros(), _np(init_params), _np(init_params)
  importance = None
  for t in range(tasks):
    for (_, i, g, before, after) in [e for e in trace if e[0] == t]:
      g, before, after = _np(g), _np(before), _np(after)
      if kind in ("ewc", "rwalk") and (i + 1) % every == 0:
        if kind == "rwalk":
          riemann = [r + np.maximum(s / (xi + f * (b - d) ** 2), 0)
                     for r, s, f, b, d in zip(riemann, small, running, before, delta_old)]
        running = [(1 - alpha) * f + alpha / every * w for f, w in zip(running, tmp)]
        if kind == "ewc" or window_reset:
          tmp = zeros()
        if kind == "rwalk":
          delta_old, small = before, zeros()
      if kind in ("ewc", "rwalk"):
        tmp = [w + gg ** 2 for w, gg in zip(tmp, g)]
      if kind in ("si", "rwalk"):
        small = [s - gg * (a - b) for s, gg, a, b in zip(small, g, after, before)]
    end = _np([e for e in trace if e[0] == t][-1][4])  # the task's last parameters
    if kind == "ewc":
      importance, tmp = _minmax(running), zeros()
    elif kind == "si":
      big_omega = [o + np.maximum(s / (xi + (p - a) ** 2), 0) for o, s, p, a in zip(big_omega, small, end, star)]
      importance, small = big_omega, zeros()
    else:
      if t == 0:
        riemann = [2 * r for r in riemann]
      score = [(s + r) / 2 if score_update == "average" else s + (s + r) / 2 for s, r in zip(score, riemann)]
      importance = [f + s for f, s in zip(_minmax(running), _minmax(score))]
      delta_old, small, riemann, tmp = end, zeros(), zeros(), zeros()
    star = end
  return importance, star


@pytest.mark.parametrize("kind,options", [
    ("ewc", {}), ("si", {}), ("rwalk", {}),
    ("rwalk", {"rwalk.fisher_window": "accumulate", "rwalk.score_update": "accumulate"})])
def test_importance_equals_the_reference_loop(kind, options):
  """Two tasks of 25 steps (windows end at steps 10 and 20 of each), a penalty that shapes the
  second task's trajectory: the importance and anchor after task 2 equal the reference's rules
  replayed in float64 from the same gradients. Tolerance: float32 sums of ~25 terms per
  parameter (relative 1e-5), plus an absolute floor for entries that cancel to ~0."""
  c = _config(kind, **{f"{kind}.strength": 0.5}, **options)
  method = build_method(kind, c, SHAPE, K)
  state = method.init(jax.random.PRNGKey(0))
  init_params = state.solver.params
  trace = []
  state, _ = _run_task(method, state, 0, [0, 1], 25, trace)
  assert float(jnp.sum(jnp.abs(jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(state.importance)])))) > 0
  state, _ = _run_task(method, state, 1, [2, 3], 25, trace)
  section = c[kind]
  kwargs = dict(every=section.get("fisher_every", 10), alpha=section.get("fisher_decay", 0.9),
                xi=section.get("xi", 1e-3))
  if kind == "rwalk":
    kwargs.update(window_reset=section.fisher_window == "reset", score_update=section.score_update)
  want, star = _reference(kind, trace, init_params, 2, **kwargs)
  got = _np(state.importance)
  scale = max(np.abs(w).max() for w in want)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * scale)
  for g, w in zip(_np(state.anchor), star):
    np.testing.assert_array_equal(g, w)


def test_penalty_pulls_towards_the_anchor():
  """With a huge strength the second task barely moves the parameters EWC found important; with
  strength 0 the same steps move them freely."""
  moved = {}
  for strength in (0.0, 1e4):
    c = _config("ewc", **{"ewc.strength": strength})
    method = build_method("ewc", c, SHAPE, K)
    state = method.init(jax.random.PRNGKey(0))
    state, _ = _run_task(method, state, 0, [0, 1], 20, [])
    anchor, importance = _np(state.anchor), _np(state.importance)
    state, _ = _run_task(method, state, 1, [2, 3], 20, [])
    moved[strength] = sum(float(np.sum(f * (p - a) ** 2))
                          for f, p, a in zip(importance, _np(state.solver.params), anchor))
  assert moved[1e4] < 0.05 * moved[0.0], moved


def test_empirical_fisher_is_the_mean_of_per_example_squared_gradients():
  c = _config("ewc", **{"ewc.fisher": "empirical", "ewc.fisher_samples": 16, "ewc.accumulate": "online"})
  method = build_method("ewc", c, SHAPE, K)
  assert [p.name for p in method.phases()] == ["solver", "fisher"]
  state = method.init(jax.random.PRNGKey(1))
  state = method.begin_task(state, 0, _active([0, 1]))
  data = _data([0, 1])
  fisher = method.phases()[1]
  assert fisher.num_steps == 2  # 16 examples in batches of 8
  want = jax.tree.map(jnp.zeros_like, state.solver.params)
  for i in range(2):
    key = jax.random.PRNGKey(50 + i)
    x, y = sample_batch(data, jax.random.split(key)[0], method.batch_size)
    for n in range(x.shape[0]):
      g = jax.grad(lambda p: softmax_cross_entropy(
          logits=method.classifier.apply({"params": p}, x[n:n + 1]), labels=y[n:n + 1],
          where=state.active)[0])(state.solver.params)
      want = jax.tree.map(lambda a, b: a + b * b, want, g)
    state, _ = fisher.step(state, data, key)
  end = method.end_task(state)
  np.testing.assert_allclose(_flat(end.importance), _flat(want) / 16, rtol=1e-5, atol=1e-9)
  np.testing.assert_array_equal(_flat(end.anchor), _flat(state.solver.params))


def test_per_task_accumulation_is_the_sum_of_separate_penalties():
  """``accumulate="per_task"`` holds one quadratic whose gradient equals the sum of one penalty per
  task, each with its own Fisher and anchor."""
  c = _config("ewc", **{"ewc.fisher": "empirical", "ewc.accumulate": "per_task", "ewc.strength": 2.0})
  method = build_method("ewc", c, SHAPE, K)
  state = method.init(jax.random.PRNGKey(2))
  rng = np.random.default_rng(0)
  rand = lambda: jax.tree.map(lambda p: jnp.asarray(rng.uniform(0, 1, p.shape), jnp.float32),
                              state.solver.params)
  fishers, anchors = [], []
  for _ in range(2):
    f, theta = rand(), rand()
    fishers.append(f)
    anchors.append(theta)
    state = state.replace(solver=state.solver.replace(params=theta),
                          stats=dict(state.stats, task_fisher=f, count=jnp.ones((), jnp.float32)))
    state = method.end_task(state)
  probe = rand()
  got = reg.penalty_gradient(probe, state.anchor, state.importance, 2.0)
  want = jax.tree.map(jnp.add, *[reg.penalty_gradient(probe, a, f, 2.0) for a, f in zip(anchors, fishers)])
  np.testing.assert_allclose(_flat(got), _flat(want), rtol=2e-5, atol=1e-6)


def test_episodic_memory_keeps_real_exemplars_of_each_task_and_replays_only_them():
  c = _config("rwalk", **{"episodic.per_class": 3, "episodic.batch_size": 8})
  method = build_method("rwalk", c, SHAPE, K)
  assert [p.name for p in method.phases()] == ["solver", "memory"]
  state = method.init(jax.random.PRNGKey(3))
  assert not bool(jnp.any(state.memory.filled))
  # before anything is kept the memory batch has weight 0
  _, _, w = method._memory_batch(state, jax.random.PRNGKey(0))  # pylint: disable=protected-access
  assert float(jnp.sum(w)) == 0.0
  state, data0 = _run_task(method, state, 0, [0, 1], 2, [])
  mem = state.memory
  filled = np.asarray(mem.filled)
  np.testing.assert_array_equal(filled, np.repeat([True, True, False, False], 3))
  real = {tuple(np.ravel(np.asarray(x))): int(y) for x, y in zip(data0.x[:int(data0.count)], data0.y)}
  for row in np.flatnonzero(filled):  # each kept image is a training image of its row's class
    assert real[tuple(np.ravel(np.asarray(mem.x[row])))] == int(mem.y[row])
  kept0 = np.asarray(mem.x[:6])
  assert len({tuple(np.ravel(r)) for r in kept0}) == 6  # no image kept twice
  state, _ = _run_task(method, state, 1, [2, 3], 2, [])
  assert bool(jnp.all(state.memory.filled))
  np.testing.assert_array_equal(np.asarray(state.memory.x[:6]), kept0)  # task 1's exemplars stay
  xm, ym, wm = method._memory_batch(state, jax.random.PRNGKey(4))  # pylint: disable=protected-access
  assert float(jnp.min(wm)) == 1.0 and set(np.asarray(ym).tolist()) <= {0, 1, 2, 3}
  rows = {tuple(np.ravel(np.asarray(r))) for r in state.memory.x}
  assert all(tuple(np.ravel(np.asarray(r))) in rows for r in xm)


def test_bad_values_are_refused_with_the_key_named():
  for key, value in (("rwalk.fisher_window", "never"), ("rwalk.fisher_every", 0),
                     ("episodic.per_class", -1), ("rwalk.strength", -1.0)):
    c = _config("rwalk")
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
      build_method("rwalk", c, SHAPE, K)
  c = _config("ewc")
  c.ewc.fisher = "exact"
  with pytest.raises(ValueError, match=r"ewc\.fisher"):
    build_method("ewc", c, SHAPE, K)
