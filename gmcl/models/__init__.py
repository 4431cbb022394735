"""flax.linen modules: generators, critics and classifiers (encoder f + head h)."""

from gmcl.models.classifiers import CLASSIFIERS, CNNEncoder, Classifier, MLPEncoder, make_classifier
from gmcl.models.critics import DCGANCritic
from gmcl.models.generators import DCGANGenerator

__all__ = ["CLASSIFIERS", "CNNEncoder", "Classifier", "DCGANCritic", "DCGANGenerator",
           "MLPEncoder", "make_classifier"]
