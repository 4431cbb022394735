"""Continual-learning methods, each a set of pure transitions behind one interface."""

from gmcl.methods.base import Method, ModelState, Phase, run_chunk, step_key
from gmcl.methods.classifier import ClassifierMethod, make_joint, make_sft
from gmcl.methods.dgm import DGM, make_dgm
from gmcl.methods.dgr import DGR, make_dgr
from gmcl.methods.hat import HATClassifier, make_hat
from gmcl.methods.lgm import LGM, make_lgm
from gmcl.methods.lsa import LSA, make_lsa
from gmcl.methods.mergan import MeRGAN, make_mergan
from gmcl.methods.ogm import OGM, make_ogm

METHODS = {"sft": make_sft, "joint": make_joint, "dgr": make_dgr, "mergan": make_mergan,
           "hat": make_hat, "dgm": make_dgm, "lgm": make_lgm,
           "lsa": make_lsa, "ogm": make_ogm}


def build_method(name: str, config, image_shape, num_classes, parallel=None) -> Method:
  """Builds the method ``name`` from a config; lists the valid names otherwise.

  ``parallel`` (a :class:`gmcl.parallel.Parallel`) selects data-parallel steps; the
  same object must then be given to ``run_chunk``.
  """
  from gmcl.parallel import Parallel  # pylint: disable=import-outside-toplevel
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; valid choices: {sorted(METHODS)}.")
  return METHODS[name](config, image_shape, num_classes, parallel or Parallel())


__all__ = ["ClassifierMethod", "DGM", "DGR", "HATClassifier", "LGM", "LSA", "METHODS", "MeRGAN", "Method", "ModelState",
           "OGM", "Phase", "build_method", "run_chunk", "step_key"]
