"""scripts/reproduce.py as a user drives it: picking cells, a closed pipe, and Ctrl-C / SIGTERM during a
local launch, with real processes and real signals. A stand-in train.py (a script given as --python)
records every signal it gets, takes a second to "save" and exits as train.py does (128 + the signal)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from scripts import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'reproduce.py')


def _reproduce(*args, **kw):
  return subprocess.Popen([sys.executable, SCRIPT, *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw)


def test_cells_pick_runs_by_name_with_wildcards(capsys):
  picked = reproduce.select('1', ['resnet50-s*', '1/wrn28_10-rsam'])
  assert [reproduce.cell_name(r) for r in picked] == ['1/resnet50-sgd', '1/resnet50-sgd_momentum',
                                                      '1/resnet50-sam', '1/wrn28_10-rsam']
  # Without --table: every run; a bare name matches it in every table.
  assert [reproduce.cell_name(r) for r in reproduce.select(None, ['resnet18-rsam'])] == [
      '1/resnet18-rsam', '2/resnet18-rsam']
  assert reproduce.main(['--cells', '2/wrn28_10-s*,1/resnet18-rsam', '--workdir_root', 'runs']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == '# cells 2/wrn28_10-s*,1/resnet18-rsam: 4 runs (4 cells x 1 seeds), 0 done, 4 listed'
  assert [l.split('--config.wandb.cell=')[1] for l in lines[1:]] == [
      '1/resnet18-rsam', '2/wrn28_10-sgd', '2/wrn28_10-sgd_momentum', '2/wrn28_10-sam']


def test_list_prints_one_cell_per_line(capsys):
  assert reproduce.main(['--list', '--table', '4']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 6 and lines[2].split() == ['3/vit_b16-none-rsam', 'configs/vit_b16_rsam.py',
                                                  '(tables:', '3,', '4,', 'fig3a,', 'fig3b,', 'fig3c)']


@pytest.mark.parametrize('args, message', [
    (['--cells', 'nope', '--workdir_root', 'r'], "error: --cells 'nope' matches no cell of configs/tables.py; "
                                                 "`.venv/bin/python scripts/reproduce.py --list` lists them"),
    (['--table', '1', '--cells', '3/*', '--workdir_root', 'r'], "error: --cells '3/*' matches no cell of "
                                                                "table 1"),
    (['--workdir_root', 'r'], 'error: name the runs: --table T and/or --cells PATTERN'),
    (['--table', '1'], 'error: --workdir_root is required'),
    (['--table', '9', '--workdir_root', 'r'], "error: argument --table: invalid choice: '9'"),
    (['--table', '1', '--seeds', '0', '--workdir_root', 'r'], 'error: --seeds=0 must be >= 1'),
])
def test_bad_arguments_are_one_error_line(capsys, args, message):
  assert reproduce.main(args) == 2
  captured = capsys.readouterr()
  assert captured.out == '' and len(captured.err.splitlines()) == 1, captured.err
  assert captured.err.startswith(message), captured.err


def _closed_pipe():
  read, write = os.pipe()
  os.close(read)  # the reader is gone before the first line: every write meets a broken pipe
  return write


@pytest.mark.parametrize('launch', [False, True])
def test_a_closed_pipe_is_no_error(tmp_path, launch):
  """`reproduce.py ... | head` (here: a reader that is already gone): no traceback. Listing stops; a local
  launch goes on with its runs ('true' stands in for the interpreter)."""
  write = _closed_pipe()
  args = ['--table', '1', '--seeds', '30', '--workdir_root', str(tmp_path)]
  if launch:
    args = ['--cells', '1/resnet18-s*', '--workdir_root', str(tmp_path), '--launch', 'local', '--python', 'true']
  proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, stdout=write, stderr=subprocess.PIPE,
                        text=True, timeout=120)
  os.close(write)
  assert (proc.returncode, proc.stderr) == (0, '')
  if launch:  # each run went on and wrote its log
    assert len(os.listdir(tmp_path / 'logs' / '1')) == 3


FAKE_TRAIN = '''\
#!{python}
"""A stand-in for train.py: records each signal, "saves" for a second, exits 128 + the signal."""
import os, signal, sys, time
out = os.environ['FAKE_TRAIN_DIR']
def stop(signum, frame):
  open(os.path.join(out, f'signal-{{signum}}-{{time.time()}}'), 'w').close()
  time.sleep(1.0)
  open(os.path.join(out, 'saved'), 'w').close()
  sys.exit(128 + signum)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
  signal.signal(s, stop)
with open(os.path.join(out, f'started-{{os.getpid()}}'), 'w') as f:
  f.write(' '.join(sys.argv))
time.sleep(60)
'''


def _fake_train(tmp_path):
  path = tmp_path / 'fake_train'
  path.write_text(FAKE_TRAIN.format(python=sys.executable))
  path.chmod(0o755)
  (tmp_path / 'out').mkdir()
  return str(path), tmp_path / 'out'


def _wait_for(predicate, timeout=60.0):
  end = time.time() + timeout
  while time.time() < end:
    if predicate():
      return
    time.sleep(0.05)
  raise AssertionError('timed out')


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_reaches_the_training_run_once_and_reproduce_waits_for_its_save(tmp_path, sig):
  """Ctrl-C (SIGINT) or SIGTERM to reproduce.py during a run: the run gets the signal once, saves, exits
  128 + signal; reproduce.py waits, starts no other run, and ends with that status and one line."""
  fake, out = _fake_train(tmp_path)
  proc = _reproduce('--cells', '1/resnet18-rsam,1/resnet50-rsam', '--workdir_root', str(tmp_path / 'runs'),
                    '--launch', 'local', '--python', fake,
                    env=dict(os.environ, FAKE_TRAIN_DIR=str(out)))
  _wait_for(lambda: any(n.startswith('started-') for n in os.listdir(out)))
  (started,) = [n for n in os.listdir(out) if n.startswith('started-')]
  child = int(started.split('-')[1])
  os.kill(proc.pid, sig)
  stdout, stderr = proc.communicate(timeout=60)
  name = signal.Signals(sig).name
  assert proc.returncode == 128 + sig, (stdout, stderr)
  assert stderr == ''  # no traceback
  signals = sorted(n for n in os.listdir(out) if n.startswith('signal-'))
  assert [s.split('-')[1] for s in signals] == [str(int(sig))]  # once
  assert (out / 'saved').exists()  # it finished its save before anything stopped it
  with pytest.raises(ProcessLookupError):  # not left running (orphaned)
    os.kill(child, 0)
  assert len([n for n in os.listdir(out) if n.startswith('started-')]) == 1  # the second run never started
  lines = stdout.splitlines()[1:]  # after the listing's header
  assert len(lines) == 2, lines
  assert lines[0].startswith(f'[1/2] 1/resnet18-rsam seed0: stopped by {name} after ')
  assert f'(exit {128 + sig}: its step was saved; log: ' in lines[0]
  assert lines[1] == (f'reproduce: interrupted ({name}) during 1/resnet18-rsam seed0; 1 runs not started; '
                      f'rerun this command to resume it and go on')
  log = tmp_path / 'runs' / 'logs' / '1' / 'resnet18-rsam' / 'seed0.log'
  assert log.read_text().startswith(f'# {fake} train.py --config=configs/cifar.py:dataset=cifar10,model=resnet18')


def test_a_local_launch_prints_one_line_per_run_and_stops_at_a_failure(tmp_path):
  fail = tmp_path / 'fail'
  fail.write_text('#!/bin/sh\necho "error: config.data.name=\'x\' is unknown" >&2\nexit 2\n')
  fail.chmod(0o755)
  args = ['--cells', '1/resnet18-s*', '--workdir_root', str(tmp_path / 'runs'), '--launch', 'local']
  done = subprocess.run([sys.executable, SCRIPT, *args, '--python', 'true'], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  lines = done.stdout.splitlines()
  assert done.returncode == 0 and done.stderr == ''
  assert lines[0] == '# cells 1/resnet18-s*: 3 runs (3 cells x 1 seeds), 0 done, 3 listed'
  assert [l.split(':')[0] for l in lines[1:4]] == ['[1/3] 1/resnet18-sgd seed0', '[2/3] 1/resnet18-sgd_momentum '
                                                   'seed0', '[3/3] 1/resnet18-sam seed0']
  assert all(': done in ' in l for l in lines[1:4]) and lines[4] == 'reproduce: 3 runs done' and len(lines) == 5
  failed = subprocess.run([sys.executable, SCRIPT, *args, '--python', str(fail)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  lines = failed.stdout.splitlines()
  assert failed.returncode == 2 and failed.stderr == '' and len(lines) == 3
  assert lines[1].startswith('[1/3] 1/resnet18-sgd seed0: failed with exit 2 after ')
  assert ": error: config.data.name='x' is unknown (log: " in lines[1]
  assert lines[2].startswith('reproduce: stopped at the first failure (1/resnet18-sgd seed0)')
