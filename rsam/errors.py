"""The one error type for bad configuration: its message is one line that names the field and the fix.

No JAX here: train.py's flag and config errors answer before JAX starts (the argument checks of the
library's constructors, which look at arrays, are in rsam/checks.py)."""


class ConfigError(ValueError):
  pass
