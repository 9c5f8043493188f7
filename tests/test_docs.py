"""Every command in the documentation runs as written from a fresh clone.

Reads every fenced shell block of README.md, CONTRIBUTING.md and docs/*.md (a block with no language, or
bash/sh/shell/zsh/console; ``text`` and ``python`` blocks are not commands) and checks, without running
anything but the shell's parser:

- it parses as bash (``bash -n``) and as zsh when zsh is installed (``zsh -n``), and no word holds a glob
  character outside quotes (zsh stops at a glob that matches nothing: ``-e .[train]``);
- one form: the checkout's venv (``.venv/bin/python``, ``.venv/bin/pip``, ...), never a bare ``python``,
  ``pip`` or ``pytest`` (only ``python3 -m venv`` makes the venv);
- the files it names in the checkout exist (scripts, configs, tests, results, docs), the flags it passes to
  train.py, eval.py and the scripts are flags they define (absl ``DEFINE_*``, argparse ``add_argument``, read
  from their source without running them), the configs it names load, and every ``--config.a.b`` override
  is a field of that config; commands inside ``gcloud ... --command "..."`` are checked the same way;
- every relative link of the pages points at a file or folder that exists.

The checker is tried on a page made wrong on purpose (test_the_checker_finds_what_is_wrong).
"""
import ast
import functools
import glob
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL_LANGS = ('', 'bash', 'sh', 'shell', 'zsh', 'console')
VENV_TOOLS = ('python', 'pip', 'tfds', 'tensorboard', 'wandb')
REPO_PATH = re.compile(r'^(configs|scripts|tests|results|docs|examples|rsam|data|models)/|'
                       r'^(train\.py|eval\.py|README\.md|CONTRIBUTING\.md|CHANGELOG\.md|pyproject\.toml|'
                       r'requirements(-test)?\.txt)$')
# Flags whose value is where a command writes: it need not exist before.
OUTPUT_FLAGS = {'workdir', 'out', 'workdir_root', 'workroot', 'output', 'logdir', 'o'}
KEYWORDS = {'for', 'while', 'until', 'if', 'case', 'done', 'fi', 'esac', 'function', 'select'}
PREFIX_WORDS = {'do', 'then', 'else', 'elif', '!', '{', '}', 'time', 'nice', 'exec'}


def pages() -> List[str]:
  found = [os.path.join(ROOT, name) for name in ('README.md', 'CONTRIBUTING.md')]
  return [p for p in found if os.path.exists(p)] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))


def shell_blocks(text: str):
  """[(line number, block text)] of the fenced shell blocks of a markdown page."""
  out, lang, start, lines = [], None, 0, []
  for number, line in enumerate(text.splitlines(), 1):
    fence = re.match(r'^\s*(```+|~~~+)\s*([\w+-]*)', line)
    if fence and lang is None:
      lang, start, lines = fence.group(2).lower(), number, []
    elif fence and lang is not None:
      if lang in SHELL_LANGS:
        out.append((start, '\n'.join(lines) + '\n'))
      lang = None
    elif lang is not None:
      lines.append(line)
  return out


# --- what the scripts accept ---------------------------------------------------------------------------

def _module_file(name: str, near: str) -> Optional[str]:
  """The repository file of an imported module (``scripts.tpu.pod``, or ``pod`` beside ``near``)."""
  for base in (ROOT, os.path.dirname(near)):
    for candidate in (os.path.join(base, *name.split('.')) + '.py',
                      os.path.join(base, *name.split('.'), '__init__.py')):
      if os.path.isfile(candidate):
        return candidate
  return None


@functools.lru_cache(maxsize=None)
def defined_flags(script: str) -> Optional[frozenset]:
  """Every flag name ``script`` (a path in the checkout) defines, from its source and the local modules it
  imports: absl ``DEFINE_*('name', ...)`` (and ``noname`` for booleans) or argparse ``add_argument('--x')``.
  None when it defines no flags at all (then it takes none)."""
  names: Set[str] = set()
  absl_used = False
  todo, seen = [os.path.join(ROOT, script)], set()
  while todo:
    path = todo.pop()
    if path in seen:
      continue
    seen.add(path)
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        attr = node.func.attr
        strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if attr == 'add_argument':
          names.update(s.lstrip('-') for s in strings if s.startswith('-'))
        elif attr.startswith('DEFINE_') and strings:
          absl_used = True
          names.add(strings[0])
          if attr in ('DEFINE_bool', 'DEFINE_boolean'):
            names.add('no' + strings[0])
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                   else [node.module] + [f'{node.module}.{a.name}' for a in node.names] if node.module else [])
        for module in modules:
          found = _module_file(module, path)
          if found and not found.startswith(os.path.join(ROOT, 'rsam')) and found.startswith(ROOT):
            todo.append(found)
  if absl_used:
    names |= absl_builtin_flags()
  elif names:
    names |= {'h', 'help'}
  return frozenset(names) if names else None


@functools.lru_cache(maxsize=None)
def absl_builtin_flags() -> frozenset:
  """The flags absl itself defines for every program (--helpfull, -v, --logtostderr, ...)."""
  code = ('from absl import app, flags, logging; app.define_help_flags(); '
          'print(" ".join(n for m, fs in flags.FLAGS.flags_by_module_dict().items() for f in fs '
          'for n in (f.name, f.short_name, "no" + f.name) if n))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60, check=True)
  return frozenset(out.stdout.split())


@functools.lru_cache(maxsize=None)
def load_config(value: str):
  """The ConfigDict of ``configs/x.py[:arg]`` (relative to the checkout)."""
  path, _, arg = value.partition(':')
  module = importlib.import_module(path[:-len('.py')].replace('/', '.'))
  return module.get_config(arg) if arg else module.get_config()


# --- one command ---------------------------------------------------------------------------------------

def commands(block: str):
  """The simple commands of a shell block, each a list of words (quotes removed), roughly as the shell
  splits them: lines joined at trailing backslashes, split at ; && || | & ( ) and $( )."""
  out = []
  for line in block.replace('\\\n', ' ').splitlines():
    lexer = shlex.shlex(line, posix=True, punctuation_chars=';&|()<>')
    lexer.whitespace_split = True
    lexer.commenters = '#'
    words, current = list(lexer), []
    for word in words + [';']:
      if word and set(word) <= set(';&|()<>') or word == '$':
        if current:
          out.append(current)
        current = []
      else:
        current.append(word)
  cleaned = []
  for words in out:
    while words and (words[0] in PREFIX_WORDS or re.match(r'^[A-Za-z_]\w*=', words[0])):
      words = words[1:]
    if words and words[0] not in KEYWORDS:
      cleaned.append(words)
  return cleaned


def unquoted_globs(block: str) -> List[str]:
  """Words with a glob character (* ? [ ]) outside quotes: zsh refuses the command when nothing matches."""
  found, i, n = [], 0, len(block)
  while i < n:
    if block[i].isspace() or block[i] in ';&|()<>':
      i += 1
      continue
    if block[i] == '#':  # a comment, to the end of the line
      while i < n and block[i] != '\n':
        i += 1
      continue
    word, bare, quote = '', '', None
    while i < n and (quote or not (block[i].isspace() or block[i] in ';&|()<>')):
      ch = block[i]
      if ch == '\\' and quote != "'" and i + 1 < n:
        word += block[i:i + 2]
        i += 2
        continue
      if quote:
        quote = None if ch == quote else quote
      elif ch in '"\'':
        quote = ch
      else:
        bare += ch
      word += ch
      i += 1
    if word not in ('[', ']', '[[', ']]') and re.search(r'[*?\[\]]', bare):
      found.append(word)
  return found


def _path_problem(token: str) -> Optional[str]:
  if '.venv' in token or re.search(r'[*?{}$<>]', token) or not REPO_PATH.search(token):
    return None
  path = token.split('::', 1)[0]
  if path.startswith('configs/') and ':' in path:
    path = path.split(':', 1)[0]
  return None if os.path.exists(os.path.join(ROOT, path)) else f'{path} does not exist in the checkout'


def _flag_items(args: List[str]):
  """(name, value or None, index) of each flag in ``args`` (``--a=b``, ``--a b``, ``-a``)."""
  for i, arg in enumerate(args):
    if arg.startswith('-') and arg not in ('-', '--') and not re.match(r'^-\d', arg):
      name, eq, value = arg.lstrip('-').partition('=')
      if not eq:
        value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith('-') else None
      yield name, value, i


def check_script_args(script: str, args: List[str]) -> List[str]:
  """Problems with the flags, paths and configs of ``python <script> <args>``."""
  problems = []
  known = defined_flags(script)
  forwarded = []
  if '--' in args:  # launcher and reproduce.py: what follows `--` goes to train.py
    args, forwarded = args[:args.index('--')], args[args.index('--') + 1:]
  config = None
  for name, value, _ in _flag_items(args):
    if name == 'config' and value:
      config = value
  for name, value, _ in _flag_items(args):
    if '.' in name and name.split('.', 1)[0] == 'config' and known and 'config' in known:
      problems += _override_problems(name, config)
    elif known is None:
      problems.append(f'{script} takes no flags, but is given --{name}')
    elif name not in known:
      problems.append(f'{script} has no flag --{name}')
    if name == 'config' and value and value.startswith('configs/'):
      problems += _config_problems(value)
    if value is not None and name not in OUTPUT_FLAGS:
      problem = _path_problem(value)
      if problem:
        problems.append(problem)
  for arg in args:
    if not arg.startswith('-'):
      problem = _path_problem(arg)
      if problem and arg not in [v for n, v, _ in _flag_items(args) if n in OUTPUT_FLAGS]:
        problems.append(problem)
  if forwarded:
    problems += check_script_args('train.py', forwarded)
  return sorted(set(problems))


def _config_problems(value: str) -> List[str]:
  path = value.split(':', 1)[0]
  if not os.path.isfile(os.path.join(ROOT, path)):
    return [f'--config {value}: {path} does not exist']
  try:
    load_config(value)
  except Exception as e:  # pylint: disable=broad-except
    return [f'--config {value} does not load: {type(e).__name__}: {e}']
  return []


def _override_problems(name: str, config_value: Optional[str]) -> List[str]:
  if not config_value or not config_value.startswith('configs/') or _config_problems(config_value):
    return []  # the run's own config.json (eval.py), or a config already reported
  node = load_config(config_value)
  for part in name.split('.')[1:]:
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return [f'--{name}: {config_value} has no field {name[len("config."):]!r}']
  return []


def check_command(words: List[str]) -> List[str]:
  """Problems with one simple command (already split into words)."""
  if not words:
    return []
  tool, args = words[0], words[1:]
  problems = []
  if tool in VENV_TOOLS or tool in ('pytest', 'python3') or re.fullmatch(r'python3(\.\d+)?', tool):
    if not (tool.startswith('python3') and args[:2] == ['-m', 'venv']):
      problems.append(f'bare `{tool}`: write .venv/bin/{tool.rstrip("0123456789.") or tool} (the README\'s venv)')
  if tool.startswith('.venv/bin/'):
    name = tool[len('.venv/bin/'):]
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), name)):
      problems.append(f'{tool}: no {name} in the venv the README installs')
    if name == 'python':
      problems += _python_problems(args)
  if tool == 'gcloud':
    for flag, value, _ in _flag_items(args):
      if flag == 'command' and value:
        problems += [f'in --command: {p}' for p in check_block(value)[0]]
  for arg in args if tool not in ('.venv/bin/python',) else ():
    if not arg.startswith('-'):
      problem = _path_problem(arg)
      if problem and tool not in ('gcloud', 'git', 'mkdir', 'tar', 'cd'):
        problems.append(problem)
  return problems


def _python_problems(args: List[str]) -> List[str]:
  while args and args[0] in ('-u', '-B', '-O', '-X', '-W') or (args and args[0].startswith('-X')):
    args = args[2:] if args[0] in ('-X', '-W') else args[1:]
  if not args:
    return []
  if args[0] == '-c':
    try:
      compile(args[1], '<-c>', 'exec')
    except SyntaxError as e:
      return [f'python -c: {e}']
    return []
  if args[0] == '-m':
    if args[1:2] == ['pytest']:
      return [p for p in map(_path_problem, [a for a in args[2:] if not a.startswith('-')]) if p]
    return []
  script, rest = args[0], args[1:]
  if not os.path.isfile(os.path.join(ROOT, script)):
    return [f'{script} does not exist in the checkout']
  return check_script_args(script, rest)


def check_block(block: str):
  """(problems, parsers run) of one shell block."""
  problems, parsers = [], []
  for shell in ('bash', 'zsh'):
    if shutil.which(shell):
      parsers.append(shell)
      proc = subprocess.run([shell, '-n'], input=block, capture_output=True, text=True, timeout=30)
      if proc.returncode:
        problems.append(f'{shell} -n: {proc.stderr.strip()}')
  problems += [f'unquoted glob in {w!r} (zsh: no matches found)' for w in unquoted_globs(block)]
  try:
    for words in commands(block):
      problems += check_command(words)
  except ValueError as e:  # shlex: an unbalanced quote
    problems.append(f'does not split into words: {e}')
  return problems, parsers


def link_problems(page: str, text: str) -> List[str]:
  out = []
  for target in re.findall(r'\]\(([^)\s]+)\)', text):
    if re.match(r'^[a-z]+:', target) or target.startswith('#'):
      continue
    path = os.path.normpath(os.path.join(os.path.dirname(page), target.split('#', 1)[0]))
    if not os.path.exists(path):
      out.append(f'link to {target}: no such file')
  return out


def check_page(path: str) -> Dict[str, List[str]]:
  """{'file:line': [problems]} of one page (only the places with problems)."""
  with open(path) as f:
    text = f.read()
  rel = os.path.relpath(path, ROOT)
  out = {}
  for line, block in shell_blocks(text):
    problems, _ = check_block(block)
    if problems:
      out[f'{rel}:{line}'] = problems
  links = link_problems(path, text)
  if links:
    out[f'{rel} (links)'] = links
  return out


# --- the tests ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('page', [os.path.relpath(p, ROOT) for p in pages()])
def test_every_command_of_the_page_runs_as_written(page):
  problems = check_page(os.path.join(ROOT, page))
  assert not problems, '\n'.join(f'{where}: {p}' for where, ps in problems.items() for p in ps)


def test_the_pages_have_commands_and_the_readme_its_ci_blocks():
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  for marker in ('<!-- ci:install -->', '<!-- ci:main -->', '<!-- ci:test -->'):
    assert re.search(re.escape(marker) + r'\n```', readme), f'README.md lacks {marker} before a fenced block'
  assert sum(len(shell_blocks(open(p).read())) for p in pages()) >= 10


def test_the_checker_finds_what_is_wrong(tmp_path):
  """A page with one mistake of each kind: each is reported."""
  page = tmp_path / 'wrong.md'
  page.write_text('\n'.join([
      'See [the guide](missing_page.md).', '',
      '```', '.venv/bin/python train.py --config configs/quickstart.py --wrokdir runs/x', '```',
      '```', '.venv/bin/python train.py --config configs/quickstrat.py --workdir runs/x', '```',
      '```', '.venv/bin/python train.py --config configs/quickstart.py --workdir runs/x --config.optimzer.lr=1',
      '```',
      '```bash', 'python train.py --config configs/quickstart.py --workdir runs/x', '```',
      '```', '.venv/bin/python scripts/make_tables.py --root runs --tabel 1', '```',
      '```', '.venv/bin/python scripts/no_such_script.py', '```',
      '```', '.venv/bin/python -m pytest tests/test_nothing_here.py', '```',
      '```', '.venv/bin/python scripts/tpu/launch.py --name x --zone ZONE -- --config configs/tiny.py --wokdir y',
      '```',
      '```', 'gcloud compute tpus tpu-vm ssh x --zone ZONE --command "cd rsam && .venv/bin/pip install -e ".[train]""',
      '```',
      '```', 'echo "unclosed', '```',
      '```python', 'this is not shell and is not checked', '```',
      '```text', 'python not_checked.py', '```', '']))
  problems = check_page(str(page))
  flat = '\n'.join(p for ps in problems.values() for p in ps)
  for expected in ('link to missing_page.md', 'has no flag --wrokdir', 'configs/quickstrat.py does not exist',
                   "has no field 'optimzer.lr'", 'bare `python`', 'scripts/make_tables.py has no flag --tabel',
                   'scripts/no_such_script.py does not exist', 'tests/test_nothing_here.py does not exist',
                   'train.py has no flag --wokdir', "unquoted glob in", 'bash -n'):
    assert expected in flat, (expected, flat)
  assert 'not_checked' not in flat and 'not shell' not in flat
  assert len(problems) == 11, sorted(problems)
