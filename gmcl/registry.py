"""The method registry: each name maps to the module attribute that describes the method.

A method module exports a :class:`MethodSpec`: how to build the method, the config sections it
reads (with their defaults: only the chosen method's sections exist in an experiment config, as
in big_vision's configs), the checks of those sections, and the keys added since runs were
checkpointed. Adding a method is its module, its experiment config (``experiments/configs``),
its tests and one line here. Modules are imported when a name is first looked up, so
``gmcl.config`` can ask for a method's sections without importing every method.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from typing import Any, Callable, Mapping

# name -> "module:attribute" of its MethodSpec
METHODS = {
    "sft": "gmcl.methods.classifier:SFT",
    "joint": "gmcl.methods.classifier:JOINT",
    "dgr": "gmcl.methods.dgr:SPEC",
    "mergan": "gmcl.methods.mergan:SPEC",
    "hat": "gmcl.methods.hat:SPEC",
    "dgm": "gmcl.methods.dgm:SPEC",
    "lgm": "gmcl.methods.lgm:SPEC",
    "lsa": "gmcl.methods.lsa:SPEC",
    "ogm": "gmcl.methods.ogm:SPEC",
    "ewc": "gmcl.methods.regularization:EWC",
    "si": "gmcl.methods.regularization:SI",
    "rwalk": "gmcl.methods.regularization:RWALK",
    "icarl": "gmcl.methods.icarl:SPEC",
}


def _no_checks(config) -> None:
  del config


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """What the loop and the config need to know of a method, besides the method itself.

  Attributes:
    make: ``make(config, image_shape, num_classes, parallel) -> Method``, the method's public
      builder, which runs ``check`` first.
    sections: ``sections() -> {name: ml_collections.ConfigDict}``, the config sections the
      method reads, with their default values (a method may read another's section: ogm and
      lsa build DGR's generative memory from ``dgr``).
    check: ``check(config)`` raises ValueError naming the key, the value and what is valid, for
      the method's sections and the shared keys it constrains. Run by
      :func:`gmcl.config.validate_config` and by ``make``.
    added_keys: config keys (``"section.key"``) added since runs of the method were
      checkpointed, with the value that reproduces the code from before: a checkpoint without
      the key resumes when the key has that value.
    infinite_ok: config keys (``"section.key"``) for which +inf is a meaningful value (ogm's
      unbounded epsilon); every other NaN or infinite float is refused by validation.
  """
  make: Callable[..., Any]
  sections: Callable[[], dict] = dict
  check: Callable[[Any], None] = _no_checks
  added_keys: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
  infinite_ok: frozenset = frozenset()


def method_spec(name: str) -> MethodSpec:
  """The :class:`MethodSpec` of a registered method; names the valid choices otherwise."""
  if name not in METHODS:
    raise ValueError(f"config.method={name!r} is invalid; valid: {sorted(METHODS)}.")
  module, _, attribute = METHODS[name].partition(":")
  return getattr(importlib.import_module(module), attribute)
