"""The front of train.py and eval.py: flags and the checks that answer before the heavy work starts.

Every bad flag is one ``error: <what>; <the fix>`` line on stderr and exit code 2, with no exception class
names. absl would print a multi-line ``FATAL Flags parsing error`` (exit 1) for a bad value, report a
missing required flag before an unknown one (``--wrokdir`` answered "--workdir is required"), and
ml_collections lets a traceback through for an override of a field the config does not have
(``--config.nope=1``) or a config file that is not Python, and defers a missing file to "Configuration is
not available because of an earlier failure to load". What can be checked on the raw argv is checked
first, in this order: unknown flags (with the closest known one), required flags, folder flags that name
a file, the config file's path. Only then does the config file load (which imports JAX), in about a
second; this module itself imports nothing heavy.

``wandb_login_problem`` checks a wandb login before the run writes anything to its workdir, and
``import_tensorflow_quietly`` keeps TensorFlow's C++ start-up lines (oneDNN, absl) off the terminal:
TensorFlow only feeds the input pipeline here.
"""
import difflib
import glob
import os
import re
import sys
from typing import Dict, Iterable, List, Optional

from absl import flags

# An exception's class at the start of a message, e.g. 'rsam.errors.ConfigError: ' or 'TypeError: '.
_CLASS_PREFIX = re.compile(r'\b(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit): ')
_HELP = ('help', 'helpfull', 'helpshort', 'helpxml', 'h', '?')


def parse_flags(argv, required: Optional[Dict[str, str]] = None, folders: Iterable[str] = (),
                config_flag: str = 'config'):
  """absl's flags_parser for ``app.run(main, flags_parser=functools.partial(parse_flags, ...))``.

  Args:
    argv: the command line, program name first.
    required: {flag name: what it is}: flags the script cannot run without.
    folders: flags whose value is a folder: a path that is a file (or lies inside one) is refused.
    config_flag: the ml_collections config-file flag, whose path is checked before it loads.
  Returns:
    The arguments absl leaves (program name first). Exits with code 2 and one line on a bad flag.
  """
  problem = (unknown_flag(argv) or _missing(argv, required or {}) or _not_a_folder(argv, folders)
             or config_file_problem(_value(argv, config_flag), config_flag))
  if problem:
    _fail(problem)
  try:
    rest = flags.FLAGS(argv)
    config = flags.FLAGS[config_flag].value if config_flag in flags.FLAGS else None
    if config is not None:
      getattr(config, 'keys')  # ml_collections defers a config file that fails to load to first use
    return rest
  except (AttributeError, KeyError) as e:  # ml_collections: an override names a missing field
    _fail(_missing_field(e, argv))
  except flags.Error as e:  # a bad value, or get_config raised a TypeError / ValueError
    _fail(_flag_error(str(e), argv, config_flag))
  except Exception as e:  # pylint: disable=broad-except  (the config file raised, or did not parse)
    _fail(_config_file_error(e, _value(argv, config_flag), config_flag))


def _fail(message: str):
  print(f'error: {strip_class_names(message)}', file=sys.stderr)
  sys.exit(2)


def strip_class_names(message: str) -> str:
  """``message`` without exception class prefixes (``rsam.errors.ConfigError: x`` -> ``x``)."""
  return _CLASS_PREFIX.sub('', message)


# --- the raw argv ----------------------------------------------------------------------------------------

def _args(argv) -> List[str]:
  """The arguments before absl's ``--`` terminator (after it everything is positional)."""
  args = list(argv[1:])
  return args[:args.index('--')] if '--' in args else args


def _name(arg: str) -> Optional[str]:
  """The flag name of a command-line token, or None for a value (``d``, ``-1``, ``-``)."""
  if not arg.startswith('-') or arg in ('-', '--'):
    return None
  name = arg.lstrip('-').split('=', 1)[0]
  return name if name[:1].isalpha() or name == '?' else None


def _value(argv, name: str) -> Optional[str]:
  """The value ``argv`` gives flag ``name`` (the last one, as absl does), or None."""
  args, value = _args(argv), None
  for i, arg in enumerate(args):
    if _name(arg) == name:
      if '=' in arg:
        value = arg.split('=', 1)[1]
      elif i + 1 < len(args):
        value = args[i + 1]
  return value


def unknown_flag(argv, flag_values=flags.FLAGS) -> Optional[str]:
  """'unknown flag --wrokdir; did you mean --workdir?' for the first flag absl does not define, or None.

  ``--<config>.<field>`` overrides are left to ml_collections (it knows the config's fields), and so is
  absl's ``--noNAME`` for a boolean flag NAME. A flag that takes a value may take it as the next
  argument (``--config.updater.rho -1``), which is then no flag."""
  args, skip = _args(argv), False
  known = list(flag_values)  # every defined flag, short names included
  for i, arg in enumerate(args):
    if skip:
      skip = False
      continue
    name = _name(arg)
    if name is None:
      continue
    if '.' in name and name.split('.', 1)[0] in flag_values:  # --config.optimizer.lr: the config's check
      skip = '=' not in arg and i + 1 < len(args) and not args[i + 1].startswith('--')
      continue
    if name in flag_values:
      skip = '=' not in arg and not flag_values[name].boolean
      continue
    if name.startswith('no') and name[2:] in flag_values and flag_values[name[2:]].boolean:
      continue
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f'; did you mean --{close[0]}?' if close else '; see --helpfull for the flags'
    return f'unknown flag --{name}{hint}'
  return None


def missing_flags(argv, required) -> list:
  """The names in ``required`` that ``argv`` does not set (``--name=v``, ``--name v``, one dash too);
  none when help is asked for."""
  args = _args(argv)
  if any(_name(a) in _HELP for a in args):
    return []
  given = {_name(a) for a in args}
  return [name for name in required if name not in given]


def _missing(argv, required) -> Optional[str]:
  missing = missing_flags(argv, required)
  return f'--{missing[0]} is required ({required[missing[0]]})' if missing else None


def folder_problem(path: str) -> Optional[str]:
  """Why a local ``path`` cannot be a folder (it is a file, or lies inside one), or None."""
  if not path or '://' in path:
    return None
  p = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(p):
    return f'{path} is a file, not a folder; give a folder path'
  parent = os.path.dirname(p)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ''
  if parent and not os.path.isdir(parent):
    return f'{path} lies inside {parent}, which is a file, not a folder; give a folder path'
  return None


def _not_a_folder(argv, folders) -> Optional[str]:
  for name in folders:
    problem = folder_problem(_value(argv, name))
    if problem:
      return f'--{name} {problem}'
  return None


# --- the config file -------------------------------------------------------------------------------------

def config_file_problem(value: Optional[str], flag: str = 'config') -> Optional[str]:
  """Why ``--config <path>[:<arg>]`` cannot load, said before it loads, or None."""
  if not value:
    return None
  path = value.split(':', 1)[0]
  if not os.path.exists(path):
    folder = os.path.dirname(path) or '.'
    if not os.path.isdir(folder):
      folder = 'configs'
    candidates = sorted(glob.glob(os.path.join(folder, '*.py')))
    close = difflib.get_close_matches(path, candidates, n=1, cutoff=0.5)
    hint = (f'did you mean {close[0]}?' if close
            else 'give a config file such as configs/quickstart.py (run from the checkout root)')
    return f'--{flag} {value}: no such file ({os.path.abspath(path)}); {hint}'
  if os.path.isdir(path):
    return f'--{flag} {value}: is a folder; give a config file in it, e.g. configs/quickstart.py'
  if not path.endswith('.py'):
    return f'--{flag} {value}: is not a config file (a Python file with get_config(), e.g. configs/quickstart.py)'
  return None


def _flag_error(text: str, argv, config_flag: str) -> str:
  """One line from absl's error text (a bad value, or ml_collections' 'Error whilst parsing config file')."""
  none_field = re.search(r"Type <class 'NoneType'> of field (\S+) is not supported", text)
  if none_field:
    return (f'{none_field.group(1)} is None in the config file, and ml_collections cannot override a '
            f'None field from the command line; set it in the config file (or declare it there as '
            f'ml_collections.config_dict.placeholder(type))')
  if 'Error whilst parsing config file' in text:  # get_config(arg) raised: the traceback's last line
    last = [line.strip() for line in text.splitlines() if line.strip()][-1]
    reason = strip_class_names(last)
    value = _value(argv, config_flag) or ''
    path, _, arg = value.partition(':')
    if re.search(r'get_config\(\) takes 0 positional arguments', reason):
      reason = f"{path} takes no argument; drop ':{arg}'"
    elif re.search(r'get_config\(\) missing 1 required positional argument', reason):
      reason = f"{path} needs an argument after ':' (its docstring lists them)"
    return f'--{config_flag} {value}: {reason}'
  not_bool = re.search(r"flag --(\S+?)=(.*): \('Non-boolean argument to boolean flag'", text)
  if not_bool:
    return (f'--{not_bool.group(1)}={not_bool.group(2)}: a yes/no flag takes true or false '
            f'(or --{not_bool.group(1)} / --no{not_bool.group(1)})')
  if 'earlier failure to load' in text:  # an OSError inside the config file
    return f'--{config_flag} {_value(argv, config_flag)}: {_last_line(text.split("earlier failure to load:", 1)[1])}'
  return _last_line(text) + '; see --helpfull for the flags'


def _config_file_error(e: BaseException, value: Optional[str], flag: str) -> str:
  """One line for an exception the config file itself raised while it loaded (not a flag error)."""
  path = (value or '').split(':', 1)[0]
  if isinstance(e, SyntaxError):
    return f'--{flag} {value}: {path} is not valid Python ({e.msg}, line {e.lineno})'
  if isinstance(e, OSError) and 'earlier failure to load' in str(e):
    return f'--{flag} {value}: {_last_line(str(e).split("earlier failure to load:", 1)[1])}'
  import traceback  # pylint: disable=g-import-not-at-top
  frames = [f for f in traceback.extract_tb(e.__traceback__)
            if path and os.path.abspath(f.filename) == os.path.abspath(path)]
  where = f' (line {frames[-1].lineno})' if frames else ''
  return f'--{flag} {value}: the config file failed to load: {_last_line(str(e)) or type(e).__name__}{where}'


def _last_line(message: str) -> str:
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if any(line.startswith('Traceback') for line in lines):
    return strip_class_names(lines[-1])
  return strip_class_names(' '.join(' '.join(lines).split()))


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


# --- before the run writes anything ----------------------------------------------------------------------

def wandb_needs_login(wandb_cfg, environ=os.environ) -> bool:
  """Whether a run of this ``config.wandb`` logs to the wandb server (so needs a login). The run logs to
  wandb when rsam.training.writers.wandb_wanted says so; it needs the server unless the mode is offline
  or disabled (tests/test_everyday.py checks the two agree)."""
  mode = wandb_cfg.get('mode') or environ.get('WANDB_MODE')
  wanted = bool(wandb_cfg.get('enabled')) or mode in ('online', 'offline')
  return wanted and (mode or 'online') == 'online'


def wandb_login_problem(config) -> Optional[str]:
  """The `error:` text for a run that logs to wandb without a login, or None. Looks only at this
  machine (WANDB_API_KEY, the netrc file, wandb's settings), never the network: whether the server
  answers is wandb.init's to find out (rsam/training/writers.py)."""
  if not wandb_needs_login(config.get('wandb', {})):
    return None
  try:
    from wandb.sdk import wandb_setup  # pylint: disable=g-import-not-at-top
    from wandb.sdk.lib import wbauth  # pylint: disable=g-import-not-at-top
    host = wandb_setup.singleton().settings.base_url
    auth = wbauth.authenticate_session(host=host, source='rsam', prompt=False, verify=False,
                                       update_session=False)
  except (ImportError, AttributeError, TypeError):  # another wandb version: wandb.init will tell
    return None
  except Exception as e:  # pylint: disable=broad-except  (a malformed key in the environment or netrc)
    return f'wandb has no usable login on this machine ({_last_line(str(e))}); run `wandb login` again'
  if auth is not None:
    return None
  return (f'wandb is on (mode online) but this machine has no wandb login for {host}; run `wandb login` '
          f'once (or set WANDB_API_KEY), or set WANDB_MODE=offline to log locally (`wandb sync` uploads '
          f'later), or turn wandb off (config.wandb.enabled=False, WANDB_MODE unset)')


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow with its C++ start-up lines (oneDNN notice, absl's pre-init warning) held back;
  they are shown only if the import fails. TF_CPP_MIN_LOG_LEVEL does not reach them."""
  if 'tensorflow' in sys.modules:
    return
  import tempfile  # pylint: disable=g-import-not-at-top
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    except BaseException:
      os.dup2(saved, 2)
      held.seek(0)
      sys.stderr.write(held.read().decode(errors='replace'))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)
