"""Everyday use (issue 12): errors that answer fast, ignored run folders, make_tables beside a checkout.

Each test here is cheap (sub-second, or one subprocess that stops at its flag check).
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imports(stderr: str) -> set:
  """Top-level modules named in a ``-X importtime`` report."""
  names = set()
  for line in stderr.splitlines():
    if line.startswith('import time:') and '|' in line:
      names.add(line.rsplit('|', 1)[1].strip().split('.')[0])
  return names


@pytest.mark.parametrize('script', ['train.py', 'eval.py'])
def test_a_missing_workdir_answers_before_jax_or_tensorflow_is_imported(script):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['PYTHONPATH'] = ROOT
  proc = subprocess.run([sys.executable, '-X', 'importtime', script, '--config', 'configs/tiny.py'], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if not line.startswith('import time:')]
  assert len(errors) == 1 and errors[0].startswith('error: --workdir is required'), errors
  imported = _imports(proc.stderr)
  assert 'absl' in imported  # the report is read right
  assert not imported & {'jax', 'tensorflow', 'flax', 'tensorflow_datasets'}, sorted(imported)


def test_missing_flag_check_reads_every_spelling_and_leaves_help_alone():
  from rsam.training import cli
  required = {'workdir': 'x'}
  for argv in (['p', '--workdir=d'], ['p', '--workdir', 'd'], ['p', '-workdir=d'], ['p', '--help']):
    assert cli.missing_flags(argv, required) == [], argv
  assert cli.missing_flags(['p', '--config', 'c', '--workdirs=d'], required) == ['workdir']


def test_import_rsam_alone_imports_no_jax():
  code = ('import sys, rsam, rsam.errors; print("jax" in sys.modules, rsam.ConfigError is rsam.errors.ConfigError, '
          'sorted(set(rsam.__all__) - set(dir(rsam)) - set(rsam._LAZY) - set(rsam._FACTORY) - {"transforms"}))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.stdout.split() == ['False', 'True', '[]'], out.stderr[-2000:]


def test_tfds_hints_name_this_environments_tfds():
  # The hint itself is checked on a missing dataset in tests/test_train.py (test_bad_input_..., 'missing dataset').
  from data import sources
  assert os.path.samefile(sources.tfds_command(), os.path.join(os.path.dirname(sys.executable), 'tfds'))


def test_run_folders_are_ignored_by_git():
  paths = ['runs/3/x/seed0/results.json', 'runs_runlocal/3/x/seed0/results.json', 'workdirs/x/config.json',
           'wandb/run-x/files/config.yaml']
  proc = subprocess.run(['git', 'check-ignore', '--no-index', *paths], cwd=ROOT, capture_output=True, text=True)
  assert proc.stdout.split() == paths, proc.stdout + proc.stderr


def test_make_tables_skips_a_checkouts_test_fixtures(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, 'scripts'))
  import make_tables
  for folder in ('checkout/tests/fixtures/make_tables/x/seed0', 'checkout/runs/x/seed0', 'checkout/x/seed1'):
    os.makedirs(tmp_path / folder)
    (tmp_path / folder / 'results.json').write_text('{"config": {}, "eval": {}}')
  runs, problems = make_tables.find_runs(str(tmp_path))
  assert sorted(os.path.relpath(r.path, tmp_path) for r in runs) == [
      'checkout/runs/x/seed0/results.json', 'checkout/x/seed1/results.json'] and not problems
