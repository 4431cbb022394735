"""Argument checks for public functions: the error names the function, the argument and what was expected.

chex's own assertions report shapes but not which argument of which function was
wrong; these wrap the same checks with that context. They run at trace time, so
they cost nothing inside a compiled step.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp

_KINDS = {"float": jnp.floating, "int": jnp.integer, "bool": jnp.bool_}


def check_array(fn: str, name: str, x, *, ndim: Optional[int] = None,
                shape: Optional[Sequence[Optional[int]]] = None, kind: Optional[str] = None) -> None:
  """Raises ValueError unless ``x`` has ``ndim`` dimensions, ``shape`` (None = any size) and ``kind``.

  Args:
    fn: the public function's name, for the message.
    name: the argument's name.
    x: the array.
    ndim: expected number of dimensions.
    shape: expected shape; None entries match any size.
    kind: "float", "int" or "bool".
  """
  x_shape = tuple(getattr(x, "shape", ()))
  dtype = getattr(x, "dtype", None)
  problems = []
  if ndim is not None and len(x_shape) != ndim:
    problems.append(f"{ndim} dimensions")
  if shape is not None and (len(x_shape) != len(shape) or any(
      s is not None and s != xs for s, xs in zip(shape, x_shape))):
    problems.append("shape (" + ", ".join("*" if s is None else str(s) for s in shape)
                    + (",)" if len(shape) == 1 else ")"))
  if kind is not None and (dtype is None or not jnp.issubdtype(dtype, _KINDS[kind])):
    problems.append(f"{kind} dtype")
  if problems:
    raise ValueError(f"{fn}: argument {name!r} must have {' and '.join(problems)}; "
                     f"got shape {x_shape} and dtype {dtype}.")


def require(ok: bool, key: str, value, valid: str) -> None:
  """Raises ``ValueError("config.KEY=VALUE is invalid; valid: VALID.")`` unless ``ok``.

  The one form of every config check (:func:`gmcl.config.validate_config` and each method's
  ``check_config``): the message names the key, the value and what is valid.
  """
  if not ok:
    raise ValueError(f"config.{key}={value!r} is invalid; valid: {valid}.")
