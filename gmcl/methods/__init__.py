"""Continual-learning methods, each a set of pure transitions behind one interface.

The names a config may ask for are :data:`gmcl.registry.METHODS`.
"""

from gmcl.methods.base import Method, ModelState, Phase, run_chunk, step_key
from gmcl.methods.classifier import ClassifierMethod
from gmcl.methods.dgm import DGM
from gmcl.methods.dgr import DGR
from gmcl.methods.hat import HATClassifier
from gmcl.methods.lgm import LGM
from gmcl.methods.lsa import LSA
from gmcl.methods.mergan import MeRGAN
from gmcl.methods.ogm import OGM
from gmcl.registry import METHODS, method_spec


def build_method(name: str, config, image_shape, num_classes, parallel=None) -> Method:
  """Builds the registered method ``name`` (``gmcl.registry``) from a config (its builder checks
  the method's keys first); lists the valid names otherwise.

  ``parallel`` (a :class:`gmcl.parallel.Parallel`) selects data-parallel steps; the
  same object must then be given to ``run_chunk``.
  """
  from gmcl.parallel import Parallel  # pylint: disable=import-outside-toplevel
  return method_spec(name).make(config, image_shape, num_classes, parallel or Parallel())


__all__ = ["ClassifierMethod", "DGM", "DGR", "HATClassifier", "LGM", "LSA", "METHODS", "MeRGAN", "Method", "ModelState",
           "OGM", "Phase", "build_method", "run_chunk", "step_key"]
