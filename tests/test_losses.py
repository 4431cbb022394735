import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmcl.losses import classification, gan, replay


def test_wasserstein_losses():
  np.testing.assert_allclose(
      gan.wasserstein_critic_loss(real_scores=jnp.array([1.0, 2.0]), fake_scores=jnp.array([0.5, 3.0])),
      [-0.5, 1.0])
  np.testing.assert_allclose(gan.wasserstein_generator_loss(fake_scores=jnp.array([0.5, -2.0])),
                             [-0.5, 2.0])


def test_gradient_penalty_of_a_linear_critic():
  # D(x) = sum(w * x) has gradient w everywhere: penalty (||w|| - 1)^2 whatever eps is.
  w = jnp.full((2, 2, 1), 2.0)  # ||w|| = 4
  critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  real, fake = jnp.ones((3, 2, 2, 1)), jnp.zeros((3, 2, 2, 1))
  gp = gan.gradient_penalty(critic_fn=critic, real=real, fake=fake, key=jax.random.PRNGKey(0))
  np.testing.assert_allclose(gp, [9.0, 9.0, 9.0], rtol=1e-6)


def test_gradient_penalty_uses_per_example_interpolates():
  # D(x) = 0.5 * sum(x^2): gradient x^ = eps * real + (1 - eps) * fake, so the norm depends on eps.
  key = jax.random.PRNGKey(3)
  real = jnp.full((4, 1, 1, 2), 3.0)
  fake = jnp.zeros((4, 1, 1, 2))
  gp = gan.gradient_penalty(critic_fn=lambda x: 0.5 * jnp.sum(x ** 2, axis=(1, 2, 3)),
                            real=real, fake=fake, key=key)
  eps = np.asarray(jax.random.uniform(key, (4, 1, 1, 1)))[:, 0, 0, 0]
  expected = (np.sqrt(2) * 3 * eps - 1.0) ** 2
  np.testing.assert_allclose(gp, expected, rtol=1e-5)


def test_cross_entropy_with_and_without_active_classes():
  logits = jnp.array([[0.0, np.log(3.0), 5.0]])
  labels = jnp.array([1])
  full = classification.softmax_cross_entropy(logits=logits, labels=labels)
  np.testing.assert_allclose(full, [-np.log(3.0 / (1 + 3 + np.exp(5.0)))], rtol=1e-6)
  masked = classification.softmax_cross_entropy(logits=logits, labels=labels,
                                                where=jnp.array([True, True, False]))
  np.testing.assert_allclose(masked, [-np.log(3.0 / 4.0)], rtol=1e-6)
  np.testing.assert_allclose(gan.auxiliary_classifier_loss(logits=logits, labels=labels), full)


def test_replay_loss_hard_targets_are_teacher_argmax():
  teacher = jnp.array([[2.0, 1.0, 9.0], [0.0, 3.0, 1.0]])
  student = jnp.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
  old = jnp.array([True, True, False])  # the teacher knew classes 0 and 1 only
  now = jnp.array([True, True, True])
  got = replay.replay_loss(logits=student, teacher_logits=teacher, mode="hard", where=now,
                           teacher_where=old)
  # targets: argmax over old classes -> [0, 1] (class 2's 9.0 is masked)
  expected = [np.log(3.0), -np.log(np.exp(2.0) / np.sum(np.exp([1.0, 2.0, 3.0])))]
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_replay_loss_soft_targets_match_hand_computation():
  teacher = np.array([[1.0, 2.0, 0.0]])
  student = np.array([[0.5, -0.5, 1.0]])
  T = 2.0
  p = np.exp(teacher / T) / np.sum(np.exp(teacher / T))
  log_q = student / T - np.log(np.sum(np.exp(student / T)))
  expected = -T ** 2 * np.sum(p * log_q)
  got = replay.replay_loss(logits=jnp.array(student), teacher_logits=jnp.array(teacher),
                           mode="soft", temperature=T)
  np.testing.assert_allclose(got, [expected], rtol=1e-5)
  with pytest.raises(ValueError, match="valid choices"):
    replay.replay_loss(logits=jnp.array(student), teacher_logits=jnp.array(teacher), mode="x")


def test_replay_loss_gives_no_gradient_to_the_teacher():
  teacher = jnp.array([[1.0, 2.0, 0.0]])
  student = jnp.array([[0.5, -0.5, 1.0]])
  # Soft targets are differentiable in the teacher's logits: only stop_gradient makes this zero.
  g = jax.grad(lambda t: jnp.sum(replay.replay_loss(logits=student, teacher_logits=t,
                                                    mode="soft")))(teacher)
  np.testing.assert_array_equal(g, 0.0)
  for mode in ("hard", "soft"):  # while the student does get a gradient
    g = jax.grad(lambda s: jnp.sum(replay.replay_loss(logits=s, teacher_logits=teacher,
                                                      mode=mode)))(student)
    assert np.all(np.abs(np.asarray(g)) > 1e-3)


def test_dgr_solver_objective_weights_real_and_replay():
  got = replay.dgr_solver_objective(real_losses=jnp.array([1.0, 3.0]),
                                    replay_losses=jnp.array([4.0]), ratio=0.25)
  np.testing.assert_allclose(got, 0.25 * 2.0 + 0.75 * 4.0)


@pytest.mark.parametrize("call, message", [
    (lambda: classification.softmax_cross_entropy(logits=jnp.zeros((4, 3)), labels=jnp.zeros((4, 1), jnp.int32)),
     r"softmax_cross_entropy: argument 'labels' must have shape \(4,\); got shape \(4, 1\)"),
    (lambda: classification.softmax_cross_entropy(logits=jnp.zeros((4, 3)), labels=jnp.zeros((4,))),
     r"argument 'labels' must have int dtype; got shape \(4,\) and dtype float32"),
    (lambda: classification.softmax_cross_entropy(logits=jnp.zeros((4, 3)), labels=jnp.zeros((4,), jnp.int32),
                                                  where=jnp.ones((4,), bool)),
     r"argument 'where' must have shape \(3,\)"),
    (lambda: gan.wasserstein_critic_loss(real_scores=jnp.zeros((4,)), fake_scores=jnp.zeros((5,))),
     r"wasserstein_critic_loss: argument 'fake_scores' must have shape \(4,\)"),
    (lambda: gan.gradient_penalty(critic_fn=jnp.sum, real=jnp.zeros((2, 3)), fake=jnp.zeros((2, 3))),
     r"give exactly one of key and epsilon"),
    (lambda: replay.replay_loss(logits=jnp.zeros((2, 3)), teacher_logits=jnp.zeros((2, 4))),
     r"replay_loss: argument 'teacher_logits' must have shape \(2, 3\)"),
])
def test_wrong_arguments_name_the_argument(call, message):
  with pytest.raises(ValueError, match=message):
    call()
