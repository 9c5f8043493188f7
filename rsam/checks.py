"""The checks the library's constructors run on their arguments, at construction.

Every message is one line that names the value and the fix. The checks look at concrete values only: a
schedule, or a value traced under ``jax.jit`` (``optax.inject_hyperparams`` passes its hyperparameters
so), cannot be checked before it runs and passes through.
"""
import operator
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np


def concrete(value: Any) -> Optional[np.ndarray]:
  """``value`` as a NumPy array, or None if it is a function or a traced value."""
  if callable(value):
    return None
  try:
    return np.asarray(value)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_non_negative(name: str, value: Any, what: str) -> None:
  """ValueError unless ``value`` (a number, an array, a schedule or a traced value) is >= 0 where known."""
  array = concrete(value)
  if array is None:
    return
  if array.dtype == object or not (jnp.issubdtype(array.dtype, jnp.integer)
                                   or jnp.issubdtype(array.dtype, jnp.floating)):
    raise TypeError(f'{name}={value!r} must be a number, an array or a schedule (a function of the step)')
  if not np.all(array >= 0):
    raise ValueError(f'{name}={value!r} must be >= 0 ({what}); pass a non-negative {name}')


def static_int(name: str, value: Any, *, minimum: int, what: str) -> int:
  """``value`` as a Python int >= ``minimum``. It fixes array shapes, so it cannot be traced."""
  if isinstance(value, bool):
    raise TypeError(f'{name}={value!r} must be an integer >= {minimum} ({what})')
  array = concrete(value)
  if array is None:
    raise TypeError(f'{name} is a traced value, but it fixes array shapes ({what}) so it must be a Python '
                    f"int; with optax.inject_hyperparams, pass static_args=('{name}',)")
  if array.ndim or not jnp.issubdtype(array.dtype, jnp.integer):
    raise TypeError(f'{name}={value!r} must be an integer >= {minimum} ({what})')
  result = operator.index(array.item())
  if result < minimum:
    raise ValueError(f'{name}={result} must be an integer >= {minimum} ({what})')
  return result


def check_choice(name: str, value: Any, choices) -> None:
  if value not in choices:
    raise ValueError(f'{name}={value!r}; choose one of: {", ".join(map(repr, choices))}')
