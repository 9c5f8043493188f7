"""The one error type for bad configuration: its message is one line that names the field and the fix."""


class ConfigError(ValueError):
  pass
