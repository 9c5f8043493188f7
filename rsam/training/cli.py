"""Command-line flag parsing shared by train.py and eval.py: every bad flag is one `error:` line.

absl prints a multi-line ``FATAL Flags parsing error`` (exit 1) for a bad value and ml_collections lets a
traceback through for an override of a field the config does not have (``--config.nope=1``). Both
become ``error: <what> ; <the fix>`` on stderr and exit code 2, like the config errors raised later.
Imports nothing heavy: it runs before JAX starts. Flags a script cannot run without (train.py's
``--workdir``) are checked on the raw argv before anything else, even before the config file loads (which
imports JAX), so their error answers in well under a second.
"""
import re
import sys

from absl import flags


def parse_flags(argv, required=None):
  """absl's flags_parser for app.run(main, flags_parser=parse_flags).

  ``required``: {flag name: what it is}, checked on the raw argv first (``functools.partial``)."""
  missing = missing_flags(argv, required or {})
  if missing:
    print(f'error: --{missing[0]} is required ({required[missing[0]]})', file=sys.stderr)
    sys.exit(2)
  try:
    rest = flags.FLAGS(argv)
    config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
    if config is not None:
      getattr(config, 'keys')  # ml_collections defers a config file that fails to load to first use
    return rest
  except (AttributeError, KeyError) as e:  # ml_collections: an override names a missing field
    print(f'error: {_missing_field(e, argv)}', file=sys.stderr)
  except (flags.Error, ValueError, TypeError, OSError) as e:  # bad value or file, missing --config
    print(f'error: {_one_line(str(e))}', file=sys.stderr)
  sys.exit(2)


def missing_flags(argv, required) -> list:
  """The names in ``required`` that ``argv`` does not set (``--name=v``, ``--name v``, one dash too);
  none when help is asked for."""
  args = argv[1:]
  if any(a.lstrip('-') in ('help', 'helpfull', 'helpshort', 'h', '?') for a in args if a.startswith('-')):
    return []
  given = {a.lstrip('-').split('=', 1)[0] for a in args if a.startswith('-')}
  return [name for name in required if name not in given]


def _one_line(message: str) -> str:
  none_field = re.search(r"Type <class 'NoneType'> of field (\S+) is not supported", message)
  if none_field:
    return (f'{none_field.group(1)} is None in the config file, and ml_collections cannot override a '
            f'None field from the command line; set it in the config file (or declare it there as '
            f'ml_collections.config_dict.placeholder(type))')
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if any(line.startswith('Traceback') for line in lines):  # an exception inside the config file
    return f'{lines[0]} {lines[-1]}'
  return ' '.join(' '.join(lines).split()) + '; see --helpfull for the flags'


def _missing_field(e: BaseException, argv) -> str:
  text = str(e).replace('\\', '')
  names = re.findall(r"'([^']+)'", text)
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  key = names[0] if names else '?'
  overrides = [a.split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')]
  culprit = next((a for a in overrides if key in a[len('--config.'):].split('.')), None)
  where = f'{culprit}: ' if culprit else ''
  hint = f'did you mean {suggestion.group(1)!r}? ' if suggestion else ''
  return (f'{where}the config has no field {key!r}; {hint}check the spelling against the config file '
          f'(every field is defined in configs/common.py)')
