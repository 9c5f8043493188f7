"""The mutation harness (tests/mutation.py): its list still applies to today's code, and a smoke run in a
temporary copy kills a real break and lets a behaviour-free change survive, leaving the checkout alone."""
import hashlib
import os

import pytest

from tests import mutation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_apply_needs_exactly_one_occurrence():
  m = mutation.Mutation('x', 'f.py', 'a + b', 'a - b')
  assert mutation.apply('y = a + b\n', m) == 'y = a - b\n'
  for text in ('y = a * b\n', 'y = a + b + (a + b)\n'):
    with pytest.raises(ValueError, match='must be once'):
      mutation.apply(text, m)


def test_every_mutation_applies_to_todays_code():
  ids = [m.id for m in mutation.MUTATIONS + mutation.SMOKE]
  assert len(ids) == len(set(ids))
  for m in mutation.MUTATIONS + mutation.SMOKE:
    with open(os.path.join(ROOT, m.file)) as f:
      text = f.read()
    assert mutation.apply(text, m) != text, m.id
    for arg in m.pytest_args():
      if arg.startswith('tests/'):
        assert os.path.exists(os.path.join(ROOT, arg.split('::')[0])), (m.id, arg)


def _digest(paths):
  return {p: hashlib.sha256(open(os.path.join(ROOT, p), 'rb').read()).hexdigest() for p in paths}


def test_smoke_kills_a_break_and_spares_a_no_op():
  files = sorted({m.file for m in mutation.SMOKE})
  before = _digest(files)
  results = mutation.run(mutation.SMOKE, ROOT, timeout=600, baseline=False)
  assert [r.status for r in results] == ['killed', 'survived'], [r.output for r in results]
  assert _digest(files) == before, 'the harness changed the checkout'
  assert 'survived' in mutation.report(results).splitlines()[2]  # survivors first
  assert results[0].killer().startswith('tests/test_wiring.py::test_schedule_from_config')


def test_command_line_lists_the_mutations(capsys):
  import importlib.util
  spec = importlib.util.spec_from_file_location('mutation_test', os.path.join(ROOT, 'scripts', 'mutation_test.py'))
  cli = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cli)
  assert cli.main(['--list', '--only', 'factory-lam', 'eval-real']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [line.split()[0] for line in lines] == ['factory-lam-constant', 'eval-real-from-original',
                                                  'eval-real-unlabelled-counted']


def test_baseline_runs_each_file_once_per_option_set():
  M = mutation.Mutation
  ms = [M('a', 'f', 'x', 'y', tests=('tests/a.py', 'tests/b.py')), M('b', 'f', 'x', 'y', tests=('tests/a.py::t',)),
        M('c', 'f', 'x', 'y', tests=('tests/c.py::u',)), M('d', 'f', 'x', 'y', tests=('tests/b.py', '-m', 'not slow'))]
  assert mutation.baseline_selections(ms) == [
      ('tests/a.py', 'tests/b.py', 'tests/c.py::u'), ('tests/b.py', '-m', 'not slow')]
