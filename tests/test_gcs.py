"""gs:// workdirs end to end (issue: Cloud TPU runs for real), against a real GCS emulator.

    python -m pytest tests/test_gcs.py -q       # about 4 minutes on 2 CPU cores

fake-gcs-server runs on 127.0.0.1 (the session fixture ``gcs``, tests/gcs_emulator.py). The runs are
``python train.py`` / ``eval.py`` / scripts in subprocesses whose only GCS setting is
``STORAGE_EMULATOR_HOST``; the tests read the bucket through the emulator's JSON API with urllib, and copy
a run's objects into a local folder to restore its checkpoints with orbax. Nothing reaches any address but
127.0.0.1.

One module-scoped chain on configs/tiny.py (24 steps, logs every 2, checkpoints every 4), as tests/test_train.py does
locally: an uninterrupted local reference in this process; ``train.py --workdir gs://...`` SIGKILLed as
soon as a checkpoint at or after step 4 is finished in the bucket; the same command SIGTERMed at its first
step line (a preemption); the same command again to the end, each process with its own cache folder (another
machine). The compilation cache
(conftest) makes the subprocesses load what the reference compiled.

Faults between the run and the bucket (issue #25) go through tests/fault_proxy.py, a TCP proxy in front of
the emulator that drops replies, resets connections, answers 503 and refuses connections for a while: one
request through an outage (within, past the deadline, a stop signal), and a second chain of three processes
on one workdir (lost replies, 503s, resets and a short outage waited out, then a SIGTERM during an outage;
an outage past config.storage_retry_s; the same command to the end, bit-identical to the reference).
"""
import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from tests import helpers

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24  # room for three processes: a kill after step 4's checkpoint, a SIGTERM, the end
LOG_EVERY = 2  # the chain's; checkpoints every 4 (configs/tiny.py)
TRAIN = [sys.executable, 'train.py', '--config', 'configs/tiny.py', f'--config.total_steps={STEPS}']
BUCKET = 'rsam-runs'
RUN = 'tiny/run1'  # the chain's workdir in BUCKET


def _tiny():
  from configs import tiny
  c = tiny.get_config()
  c.total_steps = STEPS
  return c


def _finished_steps(gcs, bucket, prefix):
  """Steps whose checkpoint is finished in the bucket (orbax marks a finished save on GCS with
  commit_success.txt in the step's folder; there are no atomic renames on object stores)."""
  pattern = re.compile(re.escape(prefix) + r'/checkpoints/(\d+)/commit_success\.txt$')
  return sorted(int(m.group(1)) for name in gcs.objects(bucket, prefix + '/') for m in [pattern.match(name)] if m)


def _download(gcs, bucket, prefix, local):
  """Copies every object under ``prefix/`` into folder ``local`` (the tests' independent view of a run)."""
  for name in gcs.objects(bucket, prefix + '/'):
    target = os.path.join(local, name[len(prefix) + 1:])
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, 'wb') as f:
      f.write(gcs.read(bucket, name))
  return local


def _state(workdir, step):
  return helpers.restored_state(_tiny(), workdir, step)


def _assert_same_state(a, b):
  for part in ('step', 'params', 'opt_state', 'model_state'):
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a[part])[0], jax.tree_util.tree_flatten_with_path(b[part])[0]
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
      np.testing.assert_array_equal(x, y, err_msg=f'{part}{jax.tree_util.keystr(path)}')


def _checkout_state():
  """What git sees in the checkout, ignored folders included (a stray `gs:` folder would show here), but for
  Python's bytecode caches, which any import may add. A copy without git (tests/mutation.py's): every file's
  path and size."""
  status = subprocess.run(['git', 'status', '--porcelain', '--ignored'], cwd=ROOT, capture_output=True,
                          text=True)
  if status.returncode == 0:
    return [line for line in status.stdout.splitlines() if '__pycache__' not in line]
  return sorted((os.path.relpath(os.path.join(folder, name), ROOT), os.path.getsize(os.path.join(folder, name)))
                for folder, _, names in os.walk(ROOT) if '__pycache__' not in folder for name in names)


def _sigterm_at_first_step_line(command, env):
  """``command`` SIGTERMed (a preemption) when it prints its first step line: (exit code, its output)."""
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)
  watchdog = threading.Timer(600, lambda: os.killpg(proc.pid, signal.SIGKILL))
  watchdog.start()
  lines = []
  for line in proc.stdout:
    if line.startswith('step ') and not any(x.startswith('step ') for x in lines):
      proc.send_signal(signal.SIGTERM)
    lines.append(line)
  rc = proc.wait()
  watchdog.cancel()
  return rc, ''.join(lines)


@pytest.fixture(scope='module')
def chain(gcs, compile_cache, tmp_path_factory):
  """The reference; then on the bucket: killed (kill -9 once a checkpoint at or after the first logged step is
  finished there), preempted (SIGTERM at its first step line), resumed to the end. Each process has its own
  cache folder, as after a preemption the run goes on on another machine: what a process staged locally
  and did not copy to the bucket is gone for the next one."""
  from rsam.training import loop
  base = tmp_path_factory.mktemp('gcs_chain')
  gcs.create_bucket(BUCKET)
  out = {'workdir': f'gs://{BUCKET}/{RUN}', 'checkout_before': _checkout_state()}
  emulator = {k: v for k, v in gcs.env().items() if k in ('STORAGE_EMULATOR_HOST', 'NO_PROXY', 'no_proxy')}
  out['caches'] = {name: str(base / 'cache' / name) for name in ('killed', 'preempted', 'resumed')}
  envs = {name: helpers.subprocess_env(compile_cache, **emulator, XDG_CACHE_HOME=cache)
          for name, cache in out['caches'].items()}
  out['env'] = envs['resumed']  # the machine the run finished on, for the tests that read it after
  out['reference_results'] = loop.train_and_evaluate(_tiny(), str(base / 'reference'))
  out['reference'] = base / 'reference'

  # Logs every 2 steps, checkpoints every 4: a SIGTERM can come with logged steps after the last checkpoint.
  command = TRAIN + ['--workdir', out['workdir'], f'--config.log_every_steps={LOG_EVERY}']
  with open(base / 'killed.log', 'w') as log:
    proc = subprocess.Popen(command, cwd=ROOT, env=envs['killed'], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    record = {}

    def kill_after_a_logged_checkpoint():
      deadline = time.time() + 600
      while proc.poll() is None and time.time() < deadline:
        steps = _finished_steps(gcs, BUCKET, RUN)
        if steps and steps[-1] >= LOG_EVERY:
          os.killpg(proc.pid, signal.SIGKILL)
          record['steps_at_kill'] = steps
          return
        time.sleep(0.05)
    killer = threading.Thread(target=kill_after_a_logged_checkpoint)
    killer.start()
    killer.join()
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    out['killed_rc'] = proc.wait(timeout=60)
  out['kill'] = record
  out['kill_log'] = (base / 'killed.log').read_text()
  out['objects_after_kill'] = gcs.objects(BUCKET, RUN + '/')
  out['preempted_rc'], out['preempted_log'] = _sigterm_at_first_step_line(command, envs['preempted'])
  # The last process also traces its last two steps (config.profile is bookkeeping: the same run).
  profile = [f'--config.profile.first_step={STEPS - 1}', f'--config.profile.last_step={STEPS}']
  out['resumed'] = subprocess.run(command + profile, cwd=ROOT, env=envs['resumed'], capture_output=True,
                                  text=True, timeout=900)
  out['mirror'] = _download(gcs, BUCKET, RUN, str(base / 'mirror'))
  out['base'] = base
  return out


def test_killed_gcs_run_resumes_from_the_bucket_and_ends_bit_identical(chain):
  assert chain['kill'].get('steps_at_kill'), chain['kill_log'][-3000:]
  assert chain['killed_rc'] == -signal.SIGKILL
  preempted = chain['preempted_log']
  assert chain['preempted_rc'] == 143 and re.search(r'^resumed from step \d+ in gs://', preempted, re.M), preempted
  assert re.search(r'SIGTERM at step \d+: checkpoint written to gs://', preempted), preempted[-3000:]
  assert f'{RUN}/results.json' not in chain['objects_after_kill']
  resumed = chain['resumed']
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  starts = re.findall(r'^resumed from step (\d+) in gs://', resumed.stdout, re.M)
  assert len(starts) == 1 and 0 < int(starts[0]) < STEPS, resumed.stdout
  _assert_same_state(_state(chain['mirror'], STEPS), _state(chain['reference'], STEPS))
  with open(os.path.join(chain['mirror'], 'results.json')) as f:
    results = json.load(f)
  assert results['eval'] == chain['reference_results']['eval']
  assert [s['ended'] for s in results['segments']] == ['running', 'SIGTERM', 'finished'], results['segments']


def test_every_file_of_the_run_is_in_the_bucket_and_nothing_local(gcs, chain):
  names = [n[len(RUN) + 1:] for n in gcs.objects(BUCKET, RUN + '/')]
  assert 'config.json' in names and 'results.json' in names
  assert f'checkpoints/{STEPS}/commit_success.txt' in names
  events = [n for n in names if n.startswith('events.out.tfevents.')]
  assert len(events) == 3, names  # one events file per process: killed, preempted, resumed to the end
  # TensorBoard in the bucket shows every logged step once: the killed and the preempted process copied their
  # events before each checkpoint and at SIGTERM (not only every minute, which these never reached), and
  # no later process wrote again a step whose events were already there.
  import tensorflow as tf
  logged = collections.Counter()
  for name in events:
    for event in tf.compat.v1.train.summary_iterator(os.path.join(chain['mirror'], name)):
      logged.update((event.step, v.tag) for v in event.summary.value if v.tag in ('train/loss', 'eval/test/accuracy'))
  expected = ([(step, 'train/loss') for step in range(LOG_EVERY, STEPS + 1, LOG_EVERY)]
              + [(STEPS, 'eval/test/accuracy')])
  assert logged == collections.Counter(expected), (logged, chain['kill'], chain['preempted_log'][-2000:])
  # The profile of the last process's last two steps, where TensorBoard's profile plugin looks.
  assert any(re.fullmatch(r'plugins/profile/[^/]+/[^/]+\.xplane\.pb', n) for n in names), names
  assert f'profile of steps {STEPS - 1}..{STEPS} written to {chain["workdir"]}/plugins/profile' in chain[
      'resumed'].stdout, chain['resumed'].stdout[-2000:]
  # Nothing in the checkout changed (no `gs:` folder named after the bucket), nothing in the current folder.
  assert _checkout_state() == chain['checkout_before']
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))
  # What libraries must stage locally went to the cache folder, not to the workdir's name.
  for cache in chain['caches'].values():
    ours = os.path.join(cache, 'rsam')
    staged = [os.path.relpath(os.path.join(d, f), ours) for d, _, files in os.walk(ours) for f in files]
    assert staged and all(p.startswith('staging' + os.sep) for p in staged), (cache, staged)


def test_eval_py_on_a_gcs_workdir(gcs, chain):
  proc = subprocess.run([sys.executable, 'eval.py', '--config', 'configs/tiny.py', f'--config.total_steps={STEPS}',
                         '--workdir', chain['workdir']], cwd=ROOT, env=chain['env'], capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = json.loads(gcs.read(BUCKET, f'{RUN}/eval_step{STEPS}.json'))
  assert written['eval']['test'] == chain['reference_results']['eval']['test']
  assert proc.stdout.splitlines()[-1] == f'written: {chain["workdir"]}/eval_step{STEPS}.json'


def test_make_tables_lists_runs_in_a_bucket_and_flags_a_malformed_one(gcs, chain):
  gcs.write(BUCKET, 'other/seed0/results.json', b'{"config": [], "eval": 3}')
  try:
    proc = subprocess.run([sys.executable, 'scripts/make_tables.py', '--root', f'gs://{BUCKET}', '--layout',
                           'rows=model,cols=optimizer'], cwd=ROOT, env=chain['env'], capture_output=True, text=True,
                          timeout=300)
  finally:
    gcs.delete(BUCKET, 'other/seed0/results.json')
  assert proc.returncode == 0, proc.stderr[-3000:]
  accuracy = 100 * chain['reference_results']['eval']['test']['accuracy']
  row = next(line for line in proc.stdout.splitlines() if line.startswith('| resnet_tiny'))
  cell = re.search(r'\| ([\d.]+)[^|]*\[1\]', row)
  assert cell and abs(float(cell.group(1)) - accuracy) < 0.01, proc.stdout
  assert f'gs://{BUCKET}/other/seed0/results.json: unreadable' in proc.stdout


def test_reproduce_skips_runs_finished_in_the_bucket(gcs, chain):
  from configs import tables
  run = tables.runs_of('1')[0]
  root = gcs.create_bucket('rsam-repro')
  done = run.workdir(root, 0)
  gcs.write('rsam-repro', done[len(root) + 1:] + '/results.json', b'{"config": {}, "eval": {}}')
  proc = subprocess.run([sys.executable, 'scripts/reproduce.py', '--table', '1', '--seeds', '1',
                         '--workdir_root', root], cwd=ROOT, env=chain['env'], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'# done: {done}/results.json' in proc.stdout
  commands = [line for line in proc.stdout.splitlines() if not line.startswith('#')]
  assert len(commands) == len(tables.runs_of('1')) - 1
  assert not any(f'--workdir={done}' in line for line in commands)


def test_a_different_config_on_the_same_gcs_workdir_is_refused(gcs, chain):
  before = {n: gcs.read(BUCKET, n) for n in gcs.objects(BUCKET, RUN + '/')}
  proc = subprocess.run(TRAIN + ['--workdir', chain['workdir'], '--config.optimizer.lr=0.01'], cwd=ROOT,
                        env=chain['env'], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'holds a run of a different config' in errors[0] and 'optimizer.lr' in errors[0]
  assert {n: gcs.read(BUCKET, n) for n in gcs.objects(BUCKET, RUN + '/')} == before


@pytest.mark.faults
def test_checkpoints_gone_from_the_bucket_under_recorded_progress_are_refused(gcs, chain):
  """A copy of the finished run whose checkpoints/ was deleted from the bucket (a lifecycle rule, a wrong
  `gsutil rm -r`): the same command used to train from step 0 again beside the old records. Now one
  `error:` line naming the step the records reached and the checkpoints' folder, exit 2, nothing written
  to the bucket (not even the lease)."""
  copy = 'tiny/no_checkpoints'
  for name in gcs.objects(BUCKET, RUN + '/'):
    if not name.startswith(f'{RUN}/checkpoints/'):
      gcs.write(BUCKET, copy + name[len(RUN):], gcs.read(BUCKET, name))
  before = {n: gcs.read(BUCKET, n) for n in gcs.objects(BUCKET, copy + '/')}
  proc = subprocess.run(TRAIN + ['--workdir', f'gs://{BUCKET}/{copy}'], cwd=ROOT, env=chain['env'],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-3000:])
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and f'reached step {STEPS}' in errors[0], proc.stderr[-3000:]
  assert f'gs://{BUCKET}/{copy}/checkpoints' in errors[0] and '--start_over' in errors[0], errors[0]
  assert 'Traceback' not in proc.stderr and not proc.stdout.count('step '), proc.stdout[-2000:]
  assert {n: gcs.read(BUCKET, n) for n in gcs.objects(BUCKET, copy + '/')} == before


def test_damaged_newest_checkpoint_in_the_bucket_falls_back_to_the_previous_one(gcs, chain):
  """A copy of the finished run whose newest checkpoint lost its array data: the same command sets it aside
  (renamed <step>.damaged in the bucket, never deleted), resumes from the one before and ends as the
  uninterrupted reference does."""
  copy = 'tiny/damaged'
  for name in gcs.objects(BUCKET, RUN + '/'):
    gcs.write(BUCKET, copy + name[len(RUN):], gcs.read(BUCKET, name))
  data = [n for n in gcs.objects(BUCKET, f'{copy}/checkpoints/{STEPS}/') if '/d/' in n]
  assert data
  for name in data:
    gcs.delete(BUCKET, name)
  gcs.delete(BUCKET, f'{copy}/results.json')
  proc = subprocess.run(TRAIN + ['--workdir', f'gs://{BUCKET}/{copy}'], cwd=ROOT, env=chain['env'],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  previous = STEPS - _tiny().checkpoint_every_steps
  assert f'resumed from step {previous} in gs://' in proc.stdout
  assert re.search(rf'checkpoint {STEPS} in gs://\S+ is damaged', proc.stdout), proc.stdout
  names = gcs.objects(BUCKET, copy + '/')
  assert f'{copy}/checkpoints/{STEPS}.damaged/_CHECKPOINT_METADATA' in names
  assert f'{copy}/checkpoints/{STEPS}/commit_success.txt' in names
  mirror = _download(gcs, BUCKET, copy, str(chain['base'] / 'damaged_mirror'))
  _assert_same_state(_state(mirror, STEPS), _state(chain['reference'], STEPS))


def test_a_missing_bucket_is_one_error_line_naming_it(chain):
  proc = subprocess.run(TRAIN + ['--workdir', 'gs://rsam-no-such-bucket/run'], cwd=ROOT, env=chain['env'],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'gs://rsam-no-such-bucket' in errors[0] and 'does not exist' in errors[0], \
      proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr


def _readme_main_command():
  """The README's main command (the block after <!-- ci:main -->), as .ci/run reads it."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    lines = f.read().splitlines()
  start = lines.index('<!-- ci:main -->')
  return next(line for line in lines[start + 2:] if line.strip())


def test_readme_main_command_with_a_gcs_workdir(gcs, chain):
  command = _readme_main_command()
  assert ' --workdir ' in command
  bucket = gcs.create_bucket('rsam-quickstart')
  command = re.sub(r'--workdir \S+', f'--workdir {bucket}/run', command).replace('.venv/bin/python',
                                                                                  sys.executable)
  before = _checkout_state()
  proc = subprocess.run(command, shell=True, cwd=ROOT, env=chain['env'], capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'results in {bucket}/run/results.json' in proc.stdout
  names = {n[len('run/'):] for n in gcs.objects('rsam-quickstart', 'run/')}
  assert {'config.json', 'results.json'} <= names
  assert any(n.startswith('events.out.tfevents.') for n in names)
  assert any(re.fullmatch(r'checkpoints/\d+/commit_success\.txt', n) for n in names)
  results = json.loads(gcs.read('rsam-quickstart', 'run/results.json'))
  assert results['eval']['test']['accuracy'] > 0.9  # the quickstart's R-SAM ResNet on digits
  assert _checkout_state() == before


def test_two_processes_write_one_run_to_a_gcs_workdir(gcs, compile_cache, tmp_path):
  """jax.distributed over two processes on 127.0.0.1 (2 fake CPU devices each), the state split over all
  four devices (fsdp=4, every leaf that divides): both processes write their shards of each checkpoint;
  process 0 alone writes config.json and results.json (counted by a fault proxy without faults: the run's
  small files are multipart uploads, which name their object in the body, not in the emulator's access log).
  (A replicated array is written once, by the process that holds its first replica: checkpointing.py.)"""
  from tests import fault_proxy, test_multihost
  bucket = gcs.create_bucket('rsam-two-processes')
  workdir = f'{bucket}/run'
  port = test_multihost._free_port()  # pylint: disable=protected-access
  proxy = fault_proxy.FaultProxy(gcs.url)
  emulator = {k: v for k, v in gcs.env().items() if k in ('STORAGE_EMULATOR_HOST', 'NO_PROXY', 'no_proxy')}
  env = dict(helpers.subprocess_env(compile_cache, **proxy.env(emulator), XDG_CACHE_HOME=str(tmp_path / 'cache')),
             XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
  procs = []
  for i in range(2):
    log = open(tmp_path / f'process{i}.log', 'w')
    procs.append((subprocess.Popen(
        [sys.executable, 'train.py', '--config', 'configs/tiny.py:sam', '--workdir', workdir,
         '--config.total_steps=4', '--config.checkpoint_every_steps=2', '--config.mesh.fsdp=4',
         '--config.shard_min_bytes=0', '--config.distributed.enabled=True',
         f'--config.distributed.coordinator_address=127.0.0.1:{port}', '--config.distributed.num_processes=2',
         f'--config.distributed.process_id={i}'],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log))
  try:
    deadline = time.time() + 900
    while time.time() < deadline and any(p.poll() is None for p, _ in procs):
      if any(p.poll() not in (None, 0) for p, _ in procs):
        break
      time.sleep(0.2)
  finally:
    for p, log in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
      log.close()
    requests = proxy.requests()
    proxy.stop()
  for i, (p, _) in enumerate(procs):
    assert p.returncode == 0, (tmp_path / f'process{i}.log').read_text()[-3000:]
  names = gcs.objects('rsam-two-processes', 'run/')
  for step in (2, 4):
    for process in (0, 1):
      assert any(n.startswith(f'run/checkpoints/{step}/default/ocdbt.process_{process}/') for n in names), names
  for name in ('config.json', 'results.json'):
    uploads = [r for r in requests if r.startswith('POST ') and r.endswith(f'(object run/{name})')]
    assert len(uploads) == 1, uploads
  assert json.loads(gcs.read('rsam-two-processes', 'run/results.json'))['hardware']['num_processes'] == 2


# ---------------------------------------------------------------------------------------------------------
# The path layer's retries (rsam/training/paths.py), one request at a time: within the deadline a request
# waits out an outage (one line), past it one StorageUnreachable, and a stop signal ends the wait early.

RETRIED_WRITE = '''
import sys, threading, time
from rsam.training import paths
paths.set_storage_retry(float(sys.argv[2]))
paths.write_text(sys.argv[1] + '/before.txt', 'x')
print('ready', flush=True)
sys.stdin.readline()  # the outage has started
if sys.argv[3] == 'stop':
  threading.Timer(1.0, paths.stop_waiting).start()
start = time.time()
try:
  paths.write_text(sys.argv[1] + '/during.txt', 'x')
  print(f'written after {time.time() - start:.0f} s', flush=True)
except paths.StorageUnreachable as e:
  print(f'gave up after {time.time() - start:.0f} s: {e}', flush=True)
'''


def test_a_short_deadline_still_gets_several_tries():
  """The backoff between tries is capped at a fraction of config.storage_retry_s: under a 2 s deadline a
  request that keeps failing is tried at least 6 times (with the 16 s cap alone: 3, at 0, 1 and 2 s), so
  that after a short outage one unlucky reply is not the last try before the deadline."""
  import asyncio  # pylint: disable=g-import-not-at-top
  from rsam.training import paths  # pylint: disable=g-import-not-at-top
  tries = []

  async def refused(self, *args, **kwargs):
    tries.append(time.monotonic())
    raise ConnectionRefusedError('refused')

  before = paths.storage_retry_s()
  paths.set_storage_retry(2.0)
  try:
    with pytest.raises(paths.StorageUnreachable, match='unreachable for 2 s'):
      asyncio.run(paths._with_deadline(refused)(None, 'GET', 'b/{}/o', 'bucket'))  # pylint: disable=protected-access
  finally:
    paths.set_storage_retry(before)
    paths._RETRY.outage_since, paths._RETRY.gave_up = None, False  # pylint: disable=protected-access
  assert len(tries) >= 6, [round(t - tries[0], 2) for t in tries]
  assert tries[-1] - tries[0] < 3


@pytest.mark.faults
def test_a_request_waits_out_an_outage_up_to_its_deadline(gcs):
  from tests import fault_proxy
  bucket = gcs.create_bucket('rsam-retries')
  cases = {'within': (10, 30, '-'), 'past': (60, 4, '-'), 'signal': (60, 60, 'stop')}  # outage, deadline, stop
  proxies, procs = {}, {}
  try:
    for name, (_, deadline, stop) in cases.items():
      proxies[name] = fault_proxy.FaultProxy(gcs.url)
      procs[name] = subprocess.Popen([sys.executable, '-c', RETRIED_WRITE, f'{bucket}/{name}', str(deadline), stop],
                                     cwd=ROOT, env=dict(proxies[name].env(gcs.env()), PYTHONPATH=ROOT),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
      assert proc.stdout.readline().strip() == 'ready', proc.stderr.read()[-2000:]
      proxies[name].outage(cases[name][0])
      proc.stdin.write('go\n')
      proc.stdin.flush()
    results = {name: proc.communicate(timeout=120) for name, proc in procs.items()}
  finally:
    for proxy in proxies.values():
      proxy.stop()
  out, err = results['within']
  assert re.fullmatch(r'written after (\d+) s\n', out) and int(out.split()[2]) >= 5, (out, err)
  assert err.count('waiting for gs://rsam-retries: unreachable for ') == 1, err
  assert 'gs://rsam-retries is reachable again after' in err and 'Traceback' not in err, err
  out, err = results['past']
  seconds = int(out.split()[3])
  assert out.startswith('gave up after') and 4 <= seconds <= 8, (out, err)
  assert re.search(r'gs://rsam-retries unreachable for [4-8] s', out) and 'config.storage_retry_s=4' in out, out
  out, err = results['signal']
  seconds = int(out.split()[3])
  assert out.startswith('gave up after') and 'a signal asked the run to stop' in out, (out, err)
  assert seconds <= 1 + 15 + 2, out  # STOP_GRACE_S after the signal, not the 60 s deadline
  assert gcs.objects('rsam-retries', 'within/') == ['within/before.txt', 'within/during.txt']


# ---------------------------------------------------------------------------------------------------------
# The bucket under real faults (tests/fault_proxy.py between train.py and the emulator): lost replies, 503s,
# resets and outages within config.storage_retry_s are waited out; a SIGTERM during an outage still stops
# with 143 and says what was not saved; an outage past the deadline is one line and exit 69; the same
# command then finishes bit-identical to the uninterrupted reference, every logged step in TensorBoard once.

OUTAGES = 'rsam-outages'
# scripts/reliability_report.py --long: outages of minutes (a real GCS outage), beside CI's seconds.
LONG = bool(os.environ.get('RSAM_FAULTS_LONG'))
WITHIN = (150, 300) if LONG else (8, 30)  # an outage during the run, and config.storage_retry_s
PAST = (400, 120) if LONG else (120, 8)  # an outage, and a deadline it outlasts


class _Run:
  """train.py with stdout and stderr merged, read line by line; ``on(text, action)`` runs ``action`` once
  at the first line that starts with ``text``."""

  def __init__(self, command, env):
    self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, start_new_session=True)
    self.watchdog = threading.Timer(600, lambda: os.killpg(self.proc.pid, signal.SIGKILL))
    self.watchdog.start()
    self.lines, self.actions = [], []

  def on(self, text, action):
    self.actions.append([text, action])
    return self

  def wait(self):
    for line in self.proc.stdout:
      self.lines.append((time.time(), line.rstrip()))
      for pending in self.actions:
        if pending[1] is not None and line.startswith(pending[0]):
          pending[1](), pending.__setitem__(1, None)
    rc = self.proc.wait()
    self.watchdog.cancel()
    self.text = '\n'.join(line for _, line in self.lines)
    return rc


def _report(key, facts):
  """Facts for scripts/reliability_report.py (a JSON file beside the fault suite's, when it asks)."""
  if os.environ.get('RSAM_FAULTS_REPORT'):
    path = os.environ['RSAM_FAULTS_REPORT'] + '.gcs.json'
    known = json.load(open(path)) if os.path.exists(path) else {}
    known[key] = facts
    with open(path, 'w') as f:
      json.dump(known, f, indent=2, default=str)


@pytest.fixture(scope='module')
def outages(gcs, chain):
  from tests import fault_proxy
  gcs.create_bucket(OUTAGES)
  proxy = fault_proxy.FaultProxy(gcs.url, seed=1)
  env = proxy.env(chain['env'])
  workdir = f'gs://{OUTAGES}/run'
  command = TRAIN + ['--workdir', workdir, f'--config.log_every_steps={LOG_EVERY}', '--config.lease_timeout_s=5']
  out = {'workdir': workdir}
  try:
    # 1: 5% 503s and 5% resets on every request, the replies of 30% of the lease's writes lost (a heartbeat
    # every 0.5 s), an 8 s outage at step 6; then, at step 14, an outage that outlasts the process, and a
    # SIGTERM 3 s into it.
    for action, p in (('503', 0.05), ('reset', 0.05)):
      proxy.add(action, times=-1, p=p)
    proxy.add('drop_reply', match='uploadType=multipart', times=-1, p=0.3)

    def sigterm_in_an_outage():
      proxy.clear()
      proxy.outage(120)
      threading.Timer(3, lambda: out['first'].proc.send_signal(signal.SIGTERM)).start()
    out['first'] = _Run(command + [f'--config.storage_retry_s={WITHIN[1]}'], env)
    out['first'].on(f'step 6/{STEPS}', lambda: proxy.outage(WITHIN[0])).on(f'step 14/{STEPS}', sigterm_in_an_outage)
    out['first_rc'] = out['first'].wait()
    out['faults'] = proxy.events()
    proxy.end_outage()
    # 2: an outage past config.storage_retry_s right after its first step line.
    out['second'] = _Run(command + [f'--config.storage_retry_s={PAST[1]}'], env).on(
        'step ', lambda: proxy.outage(PAST[0]))
    out['second_rc'] = out['second'].wait()
    proxy.end_outage()
    # 3: the same command, to the end.
    out['third'] = _Run(command, env)
    out['third_rc'] = out['third'].wait()
  finally:
    proxy.stop()
  out['mirror'] = _download(gcs, OUTAGES, 'run', str(chain['base'] / 'outages_mirror'))
  out['objects'] = gcs.objects(OUTAGES)
  _report('outages', {
      'within': WITHIN, 'past': PAST, 'faults': dict(collections.Counter(e['action'] for e in out['faults'])),
      'rc': [out['first_rc'], out['second_rc'], out['third_rc']],
      'lines': {name: [line for _, line in out[name].lines if line.startswith(
          ('waiting for', 'error:', 'SIGTERM', 'resumed from', 'gs://')) or ' is reachable again' in line]
                for name in ('first', 'second', 'third')},
      'seconds': {name: round(out[name].lines[-1][0] - out[name].lines[0][0], 1)
                  for name in ('first', 'second', 'third') if out[name].lines}})
  return out


@pytest.mark.faults
def test_faults_within_the_deadline_are_waited_out_with_one_line(outages):
  text = outages['first'].text
  kinds = collections.Counter(e['action'] for e in outages['faults'])
  assert kinds['drop_reply'] >= 3 and kinds['503'] and kinds['reset'] and kinds['outage'] == 2, kinds
  waiting = [line for line in text.splitlines() if line.startswith('waiting for ')]
  assert waiting and waiting[0].startswith(f'waiting for gs://{OUTAGES}: unreachable for '), text[-3000:]
  assert f'retrying until {WITHIN[1]} s (config.storage_retry_s)' in waiting[0], waiting
  assert f'gs://{OUTAGES} is reachable again after ' in text, text[-3000:]
  assert 'taken over' not in text  # the heartbeats whose replies were lost recognised their own writes


@pytest.mark.faults
def test_sigterm_during_an_outage_exits_143_and_says_what_was_not_saved(outages):
  text = outages['first'].text
  assert outages['first_rc'] == 143, text[-3000:]
  stops = [line for line in text.splitlines() if line.startswith('SIGTERM at step')]
  assert len(stops) == 1, text[-3000:]
  assert 'during a storage outage' in stops[0] and 'was NOT saved' in stops[0], stops
  assert re.search(r'the newest checkpoint saved is step \d+ in gs://', stops[0]), stops
  assert 'Traceback' not in text, text[-3000:]
  # Within the grace after the signal (15 s) and the last backoff, not the 30 s deadline or the outage.
  sent = next(t for t, line in outages['first'].lines if line.startswith(f'step 14/{STEPS}')) + 3
  assert outages['first'].lines[-1][0] - sent < 25, outages['first'].lines[-5:]


@pytest.mark.faults
def test_an_outage_past_the_deadline_is_one_line_and_exit_69(outages):
  text = outages['second'].text
  assert outages['second_rc'] == 69, text[-3000:]
  errors = [line for line in text.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and f'gs://{OUTAGES} unreachable for ' in errors[0], text[-3000:]
  assert f'config.storage_retry_s={PAST[1]}' in errors[0] and 'rerun' in errors[0], errors
  assert 'Traceback' not in text, text[-3000:]


@pytest.mark.faults
def test_after_the_outages_the_same_command_ends_bit_identical_and_nothing_is_mixed(outages, chain):
  third = outages['third']
  assert outages['third_rc'] == 0, third.text[-3000:]
  _assert_same_state(_state(outages['mirror'], STEPS), _state(chain['reference'], STEPS))
  with open(os.path.join(outages['mirror'], 'results.json')) as f:
    results = json.load(f)
  assert results['eval'] == chain['reference_results']['eval']
  assert [s['ended'] for s in results['segments']][-1] == 'finished'
  assert not [n for n in outages['objects'] if '.rsam_write_probe_' in n], outages['objects']
  import tensorflow as tf
  logged = collections.Counter()
  for name in os.listdir(outages['mirror']):
    if name.startswith('events.out.tfevents.'):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(outages['mirror'], name)):
        logged.update(event.step for v in event.summary.value if v.tag == 'train/loss')
  assert logged == collections.Counter(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), logged


# TensorFlow's event writer meets a full disk (a real 64 KB tmpfs) under the staging folder of a gs:// run.
FULL_STAGING = '''
import os, sys
import tensorflow as tf
from rsam.training import paths
path = os.path.join(sys.argv[2], 'events.out.tfevents.test')
try:
  with tf.io.gfile.GFile(path, 'wb') as f:
    for _ in range(64):
      f.write(b'x' * 4096)
      f.flush()
except Exception as e:
  print(paths.write_failure(e, sys.argv[1]), flush=True)
'''


@pytest.mark.faults
def test_a_full_local_staging_disk_of_a_gcs_run_is_named_as_the_local_disk(gcs, tmp_path):
  """The bucket is never "full": the message used to say `cannot write gs://BUCKET/run: no space left`."""
  if os.geteuid() != 0:
    pytest.skip('a small tmpfs needs root (mount)')
  bucket = gcs.create_bucket('rsam-full-staging')
  disk = tmp_path / 'disk'
  disk.mkdir()
  try:
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(disk)], check=True, capture_output=True)
  except (subprocess.CalledProcessError, FileNotFoundError) as e:
    pytest.skip(f'cannot mount a tmpfs here: {e}')
  try:
    proc = subprocess.run([sys.executable, '-c', FULL_STAGING, f'{bucket}/run', str(disk)], cwd=ROOT,
                          env=dict(gcs.env(), PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3'), capture_output=True,
                          text=True, timeout=300)
  finally:
    subprocess.run(['umount', '-l', str(disk)], check=False)
  message = proc.stdout.strip()
  assert 'no space left on the device' in message, (proc.stdout, proc.stderr[-2000:])
  assert f'cannot write {bucket}/run:' not in message and "this machine's disk" in message, message
  assert 'RSAM_CACHE_DIR' in message and 'the bucket is fine' in message, message
