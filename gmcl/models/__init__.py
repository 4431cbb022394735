"""flax.linen modules: generators, critics and classifiers (encoder f + head h)."""

from gmcl.models.classifiers import CLASSIFIERS, CNNEncoder, Classifier, MLPEncoder, make_classifier
from gmcl.models.critics import DCGANCritic, MLPCritic
from gmcl.models.generators import (CONDITIONINGS, ClassConditionalBatchNorm, DCGANGenerator,
                                    MLPGenerator)

__all__ = ["CLASSIFIERS", "CONDITIONINGS", "CNNEncoder", "ClassConditionalBatchNorm", "Classifier",
           "DCGANCritic", "DCGANGenerator",
           "MLPCritic", "MLPEncoder", "MLPGenerator", "make_classifier"]

GAN_ARCHITECTURES = ("dcgan", "mlp")


def make_gan(architecture: str, image_shape, num_classes: int, *, generator_features: int = 64,
             critic_features: int = 64, critic_layers: int = 3, kernel_size: int = 5,
             output_activation: str = "tanh", bn_axis_name=None, conditioning: str = "concat",
             conv_plan: str = "auto"):
  """(generator, critic) by architecture name; ``num_classes`` > 0 makes them conditional (AC-GAN).

  ``conditioning`` ("concat" or "batchnorm") is how a conditional generator sees the
  class (see :class:`DCGANGenerator`); ``conv_plan`` the DCGAN convolutions' implementation
  (gmcl.ops.conv: "auto", "native" or "cpu"; the MLP GAN has none).
  """
  if architecture == "dcgan":
    return (DCGANGenerator(image_shape=tuple(image_shape), num_classes=num_classes,
                           base_features=generator_features, kernel_size=kernel_size,
                           output_activation=output_activation, bn_axis_name=bn_axis_name,
                           conditioning=conditioning, conv_plan=conv_plan),
            DCGANCritic(num_classes=num_classes, base_features=critic_features,
                        num_layers=critic_layers, kernel_size=kernel_size, conv_plan=conv_plan))
  if architecture == "mlp":
    return (MLPGenerator(image_shape=tuple(image_shape), num_classes=num_classes,
                         hidden=(4 * generator_features, 8 * generator_features),
                         output_activation=output_activation, bn_axis_name=bn_axis_name,
                         conditioning=conditioning),
            MLPCritic(num_classes=num_classes, hidden=(8 * critic_features, 4 * critic_features)))
  raise ValueError(f"Unknown GAN architecture {architecture!r}; valid choices: {list(GAN_ARCHITECTURES)}.")
