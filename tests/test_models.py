import jax
import jax.numpy as jnp
import pytest

from gmcl.models import (DCGANCritic, DCGANGenerator, MLPCritic, MLPGenerator, make_classifier,
                         make_gan)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 1), (32, 32, 3)])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_dcgan_generator_shapes_and_range(shape, num_classes):
  g = DCGANGenerator(image_shape=shape, num_classes=num_classes, base_features=4)
  z = jax.random.normal(jax.random.PRNGKey(0), (3, 128))
  labels = jnp.array([0, 5, 9]) if num_classes else None
  v = g.init(jax.random.PRNGKey(1), z, labels, train=False)
  out, updates = g.apply(v, z, labels, train=True, mutable=["batch_stats"])
  assert out.shape == (3,) + shape
  assert float(jnp.max(jnp.abs(out))) <= 1.0  # tanh
  assert "batch_stats" in updates


def test_conditional_generator_depends_on_the_label_and_needs_it():
  g = MLPGenerator(image_shape=(28, 28, 1), num_classes=10, hidden=(16,))
  z = jnp.ones((2, 8))
  v = g.init(jax.random.PRNGKey(0), z, jnp.array([0, 1]), train=False)
  a = g.apply(v, z, jnp.array([0, 0]), train=False)
  b = g.apply(v, z, jnp.array([0, 1]), train=False)
  assert jnp.allclose(a[0], b[0]) and not jnp.allclose(a[1], b[1])
  with pytest.raises(ValueError, match="needs labels"):
    g.apply(v, z, None, train=False)


@pytest.mark.parametrize("critic", [DCGANCritic(num_classes=10, base_features=4),
                                    MLPCritic(num_classes=10, hidden=(16,)),
                                    DCGANCritic(num_classes=0, base_features=4)])
def test_critic_heads(critic):
  x = jnp.zeros((5, 32, 32, 1))
  v = critic.init(jax.random.PRNGKey(0), x)
  score, logits = critic.apply(v, x)
  assert score.shape == (5,)
  assert (logits is None) == (critic.num_classes == 0)
  if logits is not None:
    assert logits.shape == (5, 10)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_classifier_is_head_of_encoder(name):
  clf = make_classifier(name, 10)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 1))
  v = clf.init(jax.random.PRNGKey(1), x)
  logits = clf.apply(v, x)
  feats = clf.apply(v, x, method=clf.encode)
  assert logits.shape == (4, 10) and feats.ndim == 2
  assert jnp.allclose(clf.apply(v, feats, method=clf.classify), logits)
  with pytest.raises(ValueError, match="valid choices"):
    make_classifier("resnet", 10)


def test_make_gan_rejects_unknown_architecture():
  with pytest.raises(ValueError, match=r"valid choices: \['dcgan', 'mlp'\]"):
    make_gan("vae", (28, 28, 1), 0)
  with pytest.raises(ValueError, match="image size 30"):
    DCGANGenerator(image_shape=(30, 30, 1)).init(jax.random.PRNGKey(0), jnp.zeros((1, 4)),
                                                 train=False)
