"""The package as its users get it: what a plain `import rsam` loads, the wheel's contents and metadata, a
fresh virtual environment with only the wheel installed running the example, the editable install of the
training repo, and the version and dependency pins.

The fresh environments never download anything: they see this environment's packages through a .pth
file (not the repo: a .pth line adds a folder but runs none of the .pth files inside it, so the repo's
own editable install stays invisible there) and install the wheel with --no-deps --no-index.
"""
import email.parser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib import metadata

import pytest
from packaging.requirements import Requirement

import rsam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not part of a checkout's sources (build outputs, caches, local runs).
_NOT_SOURCES = shutil.ignore_patterns('.git', '.venv', '__pycache__', '*.pyc', 'build', 'dist', '*.egg-info',
                                      '.pytest_cache', 'workdirs', 'wandb')


def run(cmd, cwd, check=True):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
  if check and proc.returncode:
    raise AssertionError(f'{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  return proc


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A copy of the checkout: builds write build/ and *.egg-info into the source folder."""
  dest = tmp_path_factory.mktemp('checkout') / 'rsam'
  shutil.copytree(ROOT, dest, ignore=_NOT_SOURCES, symlinks=True)
  return dest


@pytest.fixture(scope='module')
def wheel(source, tmp_path_factory):
  out = tmp_path_factory.mktemp('wheel')
  run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-w', str(out),
       str(source)], cwd=out)
  (path,) = out.glob('rsam-*.whl')
  return path


def fresh_venv(path):
  """A virtual environment whose own site-packages is empty, with this one's packages behind it."""
  run([sys.executable, '-m', 'venv', '--without-pip', str(path)], cwd=path.parent)
  python = path / 'bin' / 'python'
  site = run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], cwd=path).stdout
  ours = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
  with open(os.path.join(site.strip(), '_rsam_test_dependencies.pth'), 'w') as f:
    f.write('\n'.join(sorted(ours)) + '\n')
  return python, site.strip()


@pytest.mark.slow
def test_import_rsam_needs_only_jax_and_optax():
  """The library (updaters, transforms) loads none of the training repo's dependencies."""
  code = ('import sys, rsam, rsam.transforms; '
          'print(sorted({m.split(".")[0] for m in sys.modules} & {"flax", "tensorflow", "tensorflow_datasets", '
          '"ml_collections", "orbax", "clu", "wandb", "sklearn", "models", "data"}))')
  assert run([sys.executable, '-c', code], cwd=ROOT).stdout.strip() == '[]'


@pytest.mark.slow
def test_wheel_ships_the_library_only(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  dist_info = f'rsam-{rsam.__version__}.dist-info'
  assert {n.split('/')[0] for n in names} == {'rsam', dist_info}
  library = sorted(f'rsam/{f}' for f in os.listdir(os.path.join(ROOT, 'rsam')) if f.endswith('.py'))
  # No rsam/training/ (the factory, which reads ml_collections configs, lives there), nothing else.
  assert sorted(n for n in names if n.startswith('rsam/')) == sorted(library + ['rsam/py.typed'])
  assert 'rsam/factory.py' not in names
  assert not [n for n in names if re.search(r'tests?/|results/|fixtures|configs/|examples/', n)]

  meta = email.parser.Parser().parsestr(zipfile.ZipFile(wheel).read(f'{dist_info}/METADATA').decode())
  assert meta['Version'] == rsam.__version__
  # The licence: SPDX expression, the file in the wheel, the same text as the repository's.
  assert meta['License-Expression'] == 'Apache-2.0' and meta.get_all('License-File') == ['LICENSE']
  with open(os.path.join(ROOT, 'LICENSE'), 'rb') as f:
    assert zipfile.ZipFile(wheel).read(f'{dist_info}/licenses/LICENSE') == f.read()
  # The long description is the library's page, not the training repository's README.
  with open(os.path.join(ROOT, 'docs', 'library.md')) as f:
    assert meta.get_payload().strip() == f.read().strip()
  assert meta['Description-Content-Type'] == 'text/markdown'
  requires = [Requirement(r) for r in meta.get_all('Requires-Dist')]
  assert sorted(r.name for r in requires if r.marker is None) == ['jax', 'optax']
  extras = {r.name for r in requires if r.marker is not None and r.marker.evaluate({'extra': 'train'})}
  assert {'tensorflow-cpu', 'tensorflow-datasets', 'ml-collections', 'orbax-checkpoint', 'flax'} <= extras


@pytest.mark.slow
def test_example_runs_in_a_fresh_venv_from_the_wheel(wheel, tmp_path):
  """`pip install` of the wheel alone, then the example (both of its optimizers), run from outside the
  checkout: rsam is imported from the venv's site-packages."""
  python, site = fresh_venv(tmp_path / 'venv')
  run([str(python), '-m', 'pip', 'install', '--no-deps', '--no-index', '--ignore-installed', str(wheel)],
      cwd=tmp_path)
  example = os.path.join(ROOT, 'examples', 'digits_flax.py')
  code = ('import runpy, sys, rsam; '
          f'assert rsam.__file__.startswith({site!r}), rsam.__file__; '
          f'assert not any(p.rstrip("/") == {ROOT!r} for p in sys.path), sys.path\n'
          'for name in ("optax_sam", "rsam"):\n'
          f'  sys.argv = [{example!r}, "--steps", "40", "--optimizer", name]\n'
          f'  runpy.run_path({example!r}, run_name="__main__")')
  out = run([str(python), '-c', code], cwd=tmp_path).stdout
  lines = re.findall(r'optimizer=(\w+) steps=40 train_loss ([\d.]+) -> ([\d.]+) test_accuracy=([\d.]+)', out)
  assert [line[0] for line in lines] == ['optax_sam', 'rsam'], out
  for _, first, last, accuracy in lines:
    assert float(last) < float(first) and float(accuracy) > 0.5, out  # it learns (chance is 0.1)


@pytest.mark.slow
def test_editable_install_puts_the_checkout_on_the_path(source, tmp_path):
  """The README's install: `pip install -e .` makes the training repo's models/, data/ and configs/
  importable from any folder (without installing them into site-packages)."""
  python, site = fresh_venv(tmp_path / 'venv')
  run([str(python), '-m', 'pip', 'install', '--no-deps', '--no-build-isolation', '--no-index',
       '--ignore-installed', '-e', str(source)], cwd=tmp_path)
  code = 'import configs, data, models, rsam; print(rsam.__file__, models.__file__, configs.__file__)'
  files = run([str(python), '-c', code], cwd=tmp_path).stdout.split()
  assert all(f.startswith(str(source)) for f in files), files
  assert sorted(os.listdir(site)) == sorted(['_rsam_test_dependencies.pth', f'__editable__.rsam-{rsam.__version__}.pth',
                                             f'rsam-{rsam.__version__}.dist-info'])


@pytest.mark.slow
def test_pip_install_from_a_git_url_with_the_train_extra(source, tmp_path):
  """`pip install "rsam[train] @ git+URL"`, as the README tells users outside a checkout: here the URL is a
  git repository made from the checkout's files (file://localhost/..., nothing leaves the machine). The extra resolves
  against the packages already present (--no-index), and the installed rsam is the library only."""
  repo = tmp_path / 'repo'
  shutil.copytree(source, repo, ignore=_NOT_SOURCES, symlinks=True)
  git = ['git', '-c', 'user.name=test', '-c', 'user.email=test@localhost', '-c', 'init.defaultBranch=main']
  for cmd in (['init', '-q'], ['add', '-A'], ['commit', '-q', '-m', 'snapshot']):
    run(git + cmd, cwd=repo)
  python, site = fresh_venv(tmp_path / 'venv')
  run([str(python), '-m', 'pip', 'install', '--no-build-isolation', '--no-index',
       f'rsam[train] @ git+file://localhost{repo}'], cwd=tmp_path)
  code = 'import rsam, rsam.transforms; print(rsam.__version__, rsam.__file__)'
  version, location = run([str(python), '-c', code], cwd=tmp_path).stdout.split()
  assert version == rsam.__version__ and location.startswith(site), location
  assert not os.path.exists(os.path.join(site, 'models')) and not os.path.exists(os.path.join(site, 'data'))


def _pyproject():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']


def _requirements_txt():
  reqs = {}
  for line in open(os.path.join(ROOT, 'requirements.txt')):
    line = line.split('#')[0].strip()
    if line:
      r = Requirement(line)
      reqs[r.name.lower().replace('_', '-')] = r.specifier
  return reqs


def test_requirements_txt_pins_a_tested_set_that_the_package_accepts():
  """requirements.txt (what CI installs and tests) names every dependency of the package; the train
  extra carries its ranges; and the installed versions satisfy every range of pyproject.toml."""
  project, pinned = _pyproject(), _requirements_txt()
  groups = {'': project['dependencies'], **project['optional-dependencies']}
  for group, reqs in groups.items():
    for r in map(Requirement, reqs):
      name = r.name.lower().replace('_', '-')
      assert name in pinned, f'{r} ({group or "core"}) is not in requirements.txt'
      if group == 'train':
        assert r.specifier == pinned[name], f'train extra {r} differs from requirements.txt {pinned[name]}'
      assert r.specifier.contains(metadata.version(r.name)), f'{r.name} {metadata.version(r.name)} not in {r}'


def test_changelog_names_the_version():
  changelog = open(os.path.join(ROOT, 'CHANGELOG.md')).read()
  assert re.findall(r'^## \[?(\d+\.\d+\.\d+)', changelog, re.M)[0] == rsam.__version__
