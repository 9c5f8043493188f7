"""The workdir lease (rsam/training/lease.py; issue #15, point 1): one run per workdir, locally and on gs://.

Real processes race for one lease: small holder scripts (they import only the lease module) start at the
same instant; exactly one wins, the other is refused. ``train.py`` against a held lease is refused with one
`error:` line (exit 75) before it writes anything. A holder killed with SIGKILL leaves a lease whose process
is gone: the next run takes it over at once. The rules (stale heartbeat, ``--force_resume``, the run that
lost its lease noticing) are checked in-process.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
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
  # --force_resume asks the live holder to hand over and waits; the holder notices at its next heartbeat,
  # stops (LeaseLost, naming who asked) and releases; only then does the new run hold the lease.
  forced = _acquire_in_thread(workdir, timeout_s=20, force=True)
  deadline = time.time() + 10
  while time.time() < deadline:
    try:
      held.check()
    except lease.LeaseLost as e:
      assert '--force_resume from' in str(e) and 'asked for --workdir' in str(e), str(e)
      break
    time.sleep(0.1)
  else:
    raise AssertionError('the holder never learnt that --force_resume asked for the workdir')
  assert forced.result is None  # still waiting: the holder has not released
  held.release()  # what the training loop does once its checkpoint in flight completed
  forced.join(timeout=10)
  assert json.load(open(path))['token'] == forced.result.record['token']
  forced.result.release()
  assert json.load(open(path))['released']
  lease.acquire(workdir, timeout_s=20).release()  # a released lease is free: taken silently
  assert 'took over' not in capsys.readouterr().out


class _acquire_in_thread(threading.Thread):
  """lease.acquire in a thread: ``result`` is the Lease once it returns."""

  def __init__(self, workdir, **kwargs):
    super().__init__(daemon=True)
    self.workdir, self.kwargs, self.result = workdir, kwargs, None
    self.start()

  def run(self):
    self.result = lease.acquire(self.workdir, **self.kwargs)


def _write(path, record):
  with open(path, 'w') as f:
    json.dump(record, f)


def test_same_owner_on_another_host_takes_over_at_once(tmp_path, monkeypatch, capsys):
  """A preempted VM recreated under another hostname: the launcher's RSAM_LEASE_OWNER names the run, so the
  run that starts again takes its own live-looking lease at once (it used to wait lease_timeout_s, and the
  launcher gave up on the exit 75). Another owner is still refused. The owner is written as the TPU
  launcher writes it (scripts/tpu/pod.py: 'tpu:<project>/<zone>/<name>:<workdir>', with ':' and '/')."""
  run = 'tpu:my-project/us-central2-b/rsam-b16:gs://BUCKET/runs/b16/seed0'
  other = 'tpu:my-project/us-central2-b/rsam-b16:gs://BUCKET/runs/b16/seed1'
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  path = os.path.join(workdir, lease.NAME)
  old = {'owner': 'ann@tpu-vm-old:4242', 'host': 'tpu-vm-old', 'pid': 4242, 'owner_id': run,
         'token': 'x', 'started': time.time() - 100, 'heartbeat': time.time() - 5}
  _write(path, old)
  monkeypatch.setenv('RSAM_LEASE_OWNER', run)
  held = lease.acquire(workdir, timeout_s=300)
  out = capsys.readouterr().out
  assert f'from ann@tpu-vm-old:4242 (RSAM_LEASE_OWNER={run}) (the same run' in out, out
  assert json.load(open(path))['owner_id'] == run
  held.release()
  _write(path, old)
  monkeypatch.setenv('RSAM_LEASE_OWNER', other)  # another run: still refused, naming the owner
  with pytest.raises(lease.LeaseHeld, match=re.escape(f'RSAM_LEASE_OWNER={run}')):
    lease.acquire(workdir, timeout_s=300)


def test_a_deleted_lease_file_is_written_again_not_taken_over(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  held = lease.acquire(workdir, timeout_s=2)  # heartbeat every 0.2 s
  path = os.path.join(workdir, lease.NAME)
  os.remove(path)
  deadline = time.time() + 10
  while not os.path.exists(path) and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(0.5)
  held.check()  # not lost
  assert json.load(open(path))['token'] == held.record['token']
  err = capsys.readouterr().err
  assert f'the lease file {path} was deleted while this run held it; written again' in err, err
  assert 'taken over' not in err
  held.release()
  assert json.load(open(path))['released']


def test_a_heartbeat_from_the_future_is_live_and_says_so(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  _write(os.path.join(workdir, lease.NAME),
         {'owner': 'ann@tpu-vm-7:4242', 'host': 'tpu-vm-7', 'pid': 4242, 'token': 'x', 'started': time.time(),
          'heartbeat': time.time() + 120})  # the other host's clock is 2 minutes ahead
  with pytest.raises(lease.LeaseHeld) as info:
    lease.acquire(workdir, timeout_s=60)
  message = str(info.value)
  assert 'heartbeat 120 s in the future' in message and 'clocks differ' in message, message
  assert ' -1' not in message and 'ago' not in message, message


# Holds a gs:// lease for a few seconds through the fault proxy, then says whether it still holds it.
LOST_REPLIES = '''
import sys, time
from rsam.training import lease
held = lease.acquire(sys.argv[1], timeout_s=2)  # a heartbeat every 0.2 s
print('held', flush=True)
time.sleep(float(sys.argv[2]))
try:
  held.check()
  print('still held', flush=True)
except lease.LeaseLost as e:
  print('lost:', e, flush=True)
held.release()
'''


def test_a_heartbeat_whose_reply_was_lost_keeps_the_lease(gcs, tmp_path):
  """The heartbeat's conditional write reaches the bucket, the reply is lost (the proxy resets the
  connection after the emulator answered), gcsfs retries, the retry fails its precondition (412): the run
  recognises its own write. It used to report "taken over" naming its own pid, and exit 75 for good."""
  from tests import fault_proxy
  bucket = gcs.create_bucket('rsam-lease-replies')
  proxy = fault_proxy.FaultProxy(gcs.url)
  try:
    proc = subprocess.Popen([sys.executable, '-c', LOST_REPLIES, f'{bucket}/run', '10'], cwd=ROOT,
                            env=_env(proxy.env(gcs.env())), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == 'held'
    proxy.add('drop_reply', match='uploadType=multipart', times=3)  # the lease's conditional writes
    out, err = proc.communicate(timeout=120)
    dropped = [e for e in proxy.events() if e['action'] == 'drop_reply']
  finally:
    proxy.stop()
  # The first was applied (200) and its reply lost; the retries that followed met a 412, their replies lost too.
  assert len(dropped) == 3 and dropped[0]['status'] == '200', dropped
  assert out.strip() == 'still held', (out, err[-2000:])
  assert 'Traceback' not in err, err[-2000:]
  assert json.loads(gcs.read('rsam-lease-replies', f'run/{lease.NAME}'))['released']


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


def _lines(proc, sink, until=None):
  """Reads ``proc``'s merged output into ``sink`` as (time, line) up to the line starting with ``until``."""
  for line in proc.stdout:
    sink.append((time.time(), line.rstrip()))
    if until and line.startswith(until):
      return
  return


@pytest.mark.slow
def test_force_resume_waits_until_the_live_run_stopped_and_handed_over(tmp_path, compile_cache):
  """Two real train.py processes on one workdir. The second, with --force_resume, used to take the lease at
  once and delete the live run's save in progress ("a save that was interrupted"), while the live run died
  with tracebacks. Now it asks, waits; the live run stops at its next heartbeat (exit 75, one line) after its
  save completes, and releases; the second resumes from that run's newest checkpoint."""
  from tests import helpers
  workdir = str(tmp_path / 'run')
  command = [sys.executable, 'train.py', '--config', 'configs/tiny.py', '--workdir', workdir,
             '--config.total_steps=400', '--config.checkpoint_every_steps=2', '--config.log_every_steps=1',
             '--config.lease_timeout_s=10']
  env = helpers.subprocess_env(compile_cache)
  live = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
  new = None
  live_lines, new_lines = [], []
  try:
    _lines(live, live_lines, until='step 2/400')
    new = subprocess.Popen(command + ['--force_resume'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    reader = threading.Thread(target=_lines, args=(live, live_lines))
    reader.start()
    _lines(new, new_lines, until='step ')  # up to its first step line
    new.send_signal(signal.SIGTERM)
    _lines(new, new_lines)
    assert new.wait(timeout=120) == 143, new_lines[-20:]
    reader.join(timeout=120)
    live_rc = live.wait(timeout=120)
    live_end = time.time() if not live_lines else live_lines[-1][0]
  finally:
    _kill([p for p in (live, new) if p is not None])
  text = '\n'.join(line for _, line in live_lines)
  assert live_rc == lease.EXIT_CODE, text[-3000:]
  errors = [line for _, line in live_lines if line.startswith('error:')]
  assert len(errors) == 1 and '--force_resume from' in errors[0] and 'asked for --workdir' in errors[0], errors
  assert 'Traceback' not in text, text[-3000:]
  new_text = '\n'.join(line for _, line in new_lines)
  assert '--force_resume: asked run ' in new_text and 'handed over --workdir' in new_text, new_text[-3000:]
  assert 'interrupted' not in new_text, new_text[-3000:]  # it deleted nothing of the live run's
  resumed = [(t, line) for t, line in new_lines if line.startswith('resumed from step ')]
  assert len(resumed) == 1 and resumed[0][0] >= live_end, (resumed, live_end)
  saved = [int(line.split()[1].split('/')[0]) for _, line in live_lines if line.startswith('step ')]
  step = int(resumed[0][1].split()[3])
  assert step % 2 == 0 and max(saved) - 2 <= step <= max(saved), (step, saved[-3:])  # its newest checkpoint
