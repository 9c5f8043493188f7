"""The workdir lease (rsam/training/lease.py; issue #15, point 1): one run per workdir, locally and on gs://.

Real processes race for one lease: small holder scripts (they import only the lease module) start at the
same instant; exactly one wins, the other is refused. ``train.py`` against a held lease is refused with one
`error:` line (exit 75) before it writes anything. A holder killed with SIGKILL leaves a lease whose process
is gone: the next run takes it over at once. The rules (stale heartbeat, ``--force_resume``, the run that
lost its lease noticing) are checked in-process.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rsam.training import lease

pytestmark = pytest.mark.faults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Waits until a common start time, then takes the lease and holds it (or says it was refused).
HOLDER = '''
import sys, time
from rsam.training import lease
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
try:
  held = lease.acquire(sys.argv[1], timeout_s=float(sys.argv[2]))
except lease.LeaseHeld as e:
  print('refused:', e, flush=True)
  sys.exit(75)
print('held', flush=True)
time.sleep(600)
'''


def _env(extra=None):
  env = dict(os.environ if extra is None else extra)
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  env.setdefault('JAX_PLATFORMS', 'cpu')
  return env


def _race(workdir, env, n=2, timeout_s=300):
  """Starts ``n`` holders that take the lease at the same instant: (processes, their first lines)."""
  start_at = time.time() + 4  # after every interpreter has started
  procs = [subprocess.Popen([sys.executable, '-c', HOLDER, workdir, str(timeout_s), str(start_at)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True) for _ in range(n)]
  return procs, [_first_lines(p) for p in procs]


def _first_lines(proc):
  """Its stdout up to the line that says 'held' or 'refused'."""
  lines = []
  for line in proc.stdout:
    lines.append(line.strip())
    if line.startswith(('held', 'refused')):
      break
  return ' / '.join(lines)


def _kill(procs):
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _check_race_then_takeover(workdir, env, read_lease):
  procs, lines = _race(workdir, env)
  try:
    assert sorted(line.split(':')[0] for line in lines) == ['held', 'refused'], lines  # exactly one wins
    winner = procs[[line == 'held' for line in lines].index(True)]
    loser = procs[1 - procs.index(winner)]
    assert loser.wait(timeout=60) == lease.EXIT_CODE
    record = json.loads(read_lease())
    assert record['pid'] == winner.pid and not record.get('released')
    refusal = lines[1 - procs.index(winner)]
    assert f':{winner.pid}' in refusal and '--force_resume' in refusal, refusal
    _kill([winner])  # SIGKILL: no release; its process is gone
    again, [line] = _race(workdir, env, n=1)
    try:
      assert line == (f'took over the lease of --workdir {workdir} from {record["owner"]} (process '
                      f'{winner.pid} on this host is gone) / held'), line
      assert json.loads(read_lease())['pid'] == again[0].pid
    finally:
      _kill(again)
  finally:
    _kill(procs)
  return winner.pid


def test_two_processes_race_for_a_local_workdir(tmp_path):
  workdir = str(tmp_path / 'run')
  _check_race_then_takeover(workdir, _env(), lambda: open(os.path.join(workdir, lease.NAME)).read())


def test_lease_rules_in_process(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  path = os.path.join(workdir, lease.NAME)
  # A live lease of another host: refused, naming it; stale after the timeout: taken over.
  other = {'owner': 'ann@tpu-vm-7:4242', 'host': 'tpu-vm-7', 'pid': 4242, 'token': 'x', 'started': time.time(),
           'heartbeat': time.time() - 30}
  with open(path, 'w') as f:
    json.dump(other, f)
  with pytest.raises(lease.LeaseHeld) as info:
    lease.acquire(workdir, timeout_s=60)
  message = str(info.value)
  assert '\n' not in message and 'ann@tpu-vm-7:4242' in message and '--force_resume' in message, message
  held = lease.acquire(workdir, timeout_s=20)
  assert 'from ann@tpu-vm-7:4242 (its heartbeat is 30 s old, over the 20 s timeout)' in capsys.readouterr().out
  # Heartbeats renew it (every timeout/10 s).
  first = held.record['heartbeat']
  time.sleep(2.5)
  assert json.load(open(path))['heartbeat'] > first
  # --force_resume takes a live lease; the run that held it notices at its next heartbeat.
  forced = lease.acquire(workdir, timeout_s=20, force=True)
  assert '(--force_resume)' in capsys.readouterr().out
  deadline = time.time() + 10
  while not held.lost and time.time() < deadline:
    time.sleep(0.1)
  with pytest.raises(lease.LeaseLost, match='taken over by'):
    held.check()
  held.release()  # gives back nothing it no longer holds
  assert json.load(open(path))['token'] == forced.record['token']
  forced.release()
  assert json.load(open(path))['released']
  lease.acquire(workdir, timeout_s=20).release()  # a released lease is free: taken silently
  assert 'took over' not in capsys.readouterr().out


@pytest.mark.slow
def test_two_processes_race_on_gcs_and_train_py_is_refused(gcs):
  bucket = gcs.create_bucket('rsam-lease')
  workdir = f'{bucket}/run'
  env = _env(gcs.env())
  _check_race_then_takeover(workdir, env, lambda: gcs.read('rsam-lease', f'run/{lease.NAME}').decode())
  procs, [line] = _race(workdir, env, n=1)
  try:
    assert line.endswith('held'), line  # (it took over the lease of the holder killed above)
    proc = subprocess.run([sys.executable, 'train.py', '--config', 'configs/tiny.py', '--workdir', workdir],
                          cwd=ROOT, env=dict(env, WANDB_MODE='disabled'), capture_output=True, text=True,
                          timeout=300)
  finally:
    _kill(procs)
  errors = [x for x in proc.stderr.splitlines() if x.startswith('error:')]
  assert proc.returncode == lease.EXIT_CODE, proc.stderr[-3000:]
  assert len(errors) == 1 and f':{procs[0].pid}' in errors[0] and '--force_resume' in errors[0], errors
  assert 'Traceback' not in proc.stderr
  assert gcs.objects('rsam-lease', 'run/') == [f'run/{lease.NAME}']  # nothing else was written
