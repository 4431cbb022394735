"""Type aliases shared across gmcl (optax style)."""

from typing import Any, Mapping

import jax

PRNGKey = jax.Array
Array = jax.Array
PyTree = Any
Params = Any  # a (possibly frozen) dict of parameters, as flax.linen returns
Variables = Mapping[str, Any]  # {'params': ..., 'batch_stats': ...}
Metrics = Mapping[str, jax.Array]
