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


def test_dcgan_critic_initialisers():
  """DGM's official weights_init against Flax's defaults. Each bound is several standard errors
  of the drawn statistic (n weights: the sample sd's relative error ~ 1/sqrt(2n))."""
  x = jnp.zeros((2, 32, 32, 1))
  def params(init):
    critic = DCGANCritic(num_classes=10, base_features=32, batch_norm=True, param_init=init)
    return critic.init(jax.random.PRNGKey(0), x)["params"]
  official, default = params("dcgan"), params("lecun")
  conv0 = official["Conv_0"]["kernel"]  # 5x5x1x32 = 800 weights: relative error 2.5 %
  assert abs(float(jnp.mean(conv0))) < 6 * 0.02 / 800 ** 0.5
  assert abs(float(jnp.std(conv0)) / 0.02 - 1) < 0.15
  conv1 = official["Conv_1"]["kernel"]  # 51,200 weights
  assert abs(float(jnp.std(conv1)) / 0.02 - 1) < 0.02
  scale = official["BatchNorm_0"]["scale"]  # 64 scales ~ N(1, 0.02)
  assert abs(float(jnp.mean(scale)) - 1) < 6 * 0.02 / 64 ** 0.5
  assert abs(float(jnp.std(scale)) / 0.02 - 1) < 0.6
  assert float(jnp.max(jnp.abs(official["BatchNorm_0"]["bias"]))) == 0
  head = official["aux_head"]["kernel"]  # torch's Linear default: U(+-1/sqrt(fan_in)), fan_in 4*4*128
  bound = 1 / head.shape[0] ** 0.5
  assert float(jnp.max(jnp.abs(head))) <= bound
  assert abs(float(jnp.std(head)) / (bound / 3 ** 0.5) - 1) < 0.03
  # Flax's defaults: LeCun normal, std 1/sqrt(fan_in) = 0.2 for the first 5x5 convolution; scales 1.
  assert abs(float(jnp.std(default["Conv_0"]["kernel"])) / 0.2 - 1) < 0.15
  assert float(jnp.max(jnp.abs(default["BatchNorm_0"]["scale"] - 1))) == 0
  assert jax.tree.structure(official) == jax.tree.structure(default)
  with pytest.raises(ValueError, match=r"param_init='xavier'; valid: \('lecun', 'dcgan'\)"):
    DCGANCritic(num_classes=10, param_init="xavier").init(jax.random.PRNGKey(0), x)


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
