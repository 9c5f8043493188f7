"""Layers point one way: the library (rsam/*.py) <- the trainer (rsam/training/, models/, data/) <- the
application (train.py, eval.py, scripts/, configs/). Read from the source: every import statement of every
file (at any depth: inside functions too) and every ``importlib.import_module`` / ``__import__`` of a
literal name, resolved to the top-level module it loads."""
import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPLICATION = ('configs', 'scripts', 'train', 'eval', 'examples', 'tests')
# layer (folders or files, relative to the root) -> modules it must never import
RULES = {
    'library': (('rsam',), ('rsam.training', 'models', 'data') + APPLICATION),
    'trainer': (('rsam/training', 'models', 'data'), APPLICATION),
}


def _files(where):
  """The .py files of a layer: rsam/ alone is the library, its own files only (not rsam/training/)."""
  for place in where:
    folder = os.path.join(ROOT, place)
    if place == 'rsam':
      yield from (os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith('.py'))
      continue
    for base, dirs, files in os.walk(folder):
      dirs[:] = sorted(d for d in dirs if d != '__pycache__')
      yield from (os.path.join(base, f) for f in sorted(files) if f.endswith('.py'))


def _package(path):
  return os.path.relpath(path, ROOT).split(os.sep)[:-1]


def imports(path):
  """Every module ``path`` imports: (line, dotted name)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: from the file's own package
        base = _package(path)[:len(_package(path)) - (node.level - 1)]
        module = '.'.join(base + ([node.module] if node.module else []))
      else:
        module = node.module
      found.append((node.lineno, module))
      found += [(node.lineno, f'{module}.{alias.name}'.lstrip('.')) for alias in node.names]
    elif isinstance(node, ast.Call):
      func = node.func
      name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', None)
      if name in ('import_module', '__import__') and node.args and isinstance(node.args[0], ast.Constant) \
          and isinstance(node.args[0].value, str):
        found.append((node.lineno, node.args[0].value))
  return found


def violations(where, forbidden):
  out = []
  for path in _files(where):
    for line, module in imports(path):
      if any(module == f or module.startswith(f + '.') for f in forbidden):
        out.append(f'{os.path.relpath(path, ROOT)}:{line} imports {module}')
  return sorted(set(out))


@pytest.mark.parametrize('layer', RULES)
def test_layers_point_one_way(layer):
  where, forbidden = RULES[layer]
  assert list(_files(where)), where
  assert violations(where, forbidden) == []


def test_the_check_sees_every_kind_of_import(tmp_path, monkeypatch):
  """The reader finds a late import inside a function, a from-import, a relative import and an
  import_module call (the kinds the trainer used or could use)."""
  pkg = tmp_path / 'rsam' / 'training'
  pkg.mkdir(parents=True)
  (pkg / 'a.py').write_text('def f():\n  from configs import tables\n')
  (pkg / 'b.py').write_text('import importlib\nm = importlib.import_module("configs.tables")\n')
  (pkg / 'c.py').write_text('from ... import configs\n')
  (pkg / 'd.py').write_text('import configs.tables as t\n')
  (pkg / 'e.py').write_text('import configsomething\nfrom rsam.training import paths\n')
  monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
  assert violations(('rsam/training',), ('configs',)) == [
      'rsam/training/a.py:2 imports configs', 'rsam/training/a.py:2 imports configs.tables',
      'rsam/training/b.py:2 imports configs.tables', 'rsam/training/c.py:1 imports configs',
      'rsam/training/d.py:1 imports configs.tables']
