"""Stand-ins for what a TPU launch meets, for tests/test_tpu_launch.py, run as real processes:

- ``gcloud compute tpus tpu-vm|queued-resources describe|create|delete|scp|ssh``: a TPU is a folder
  ``$FAKE_GCLOUD_DIR/tpus/<name>/`` holding its ``state`` and one home folder per worker
  (``$FAKE_WORKERS``, default 2); ``create`` makes it CREATING (READY at the next describe); ``ssh`` runs
  the command with bash in each worker's home (HOME set, ``FAKE_WORKER`` its index), ``scp`` copies into
  them; ``delete`` kills what runs there (as the VM's end would) and removes it. Every call is appended to
  ``calls.jsonl``. ``preempt(name)`` does what a preemption does: PREEMPTED, and every process gone.
- ``python3.11`` on the workers: ``-m venv DIR`` makes ``DIR/bin/pip`` (records its arguments in
  ``pip.jsonl``) and ``DIR/bin/python``, which runs ``train`` below.
- ``train``: train.py's stand-in. It records its start (worker, RSAM_LEASE_OWNER, arguments, pid, session)
  in ``starts.jsonl``, then behaves as ``$FAKE_GCLOUD_DIR/exits`` says for this worker's n-th start (a JSON
  list): an exit status after ``$FAKE_TRAIN_SECONDS`` (default 0.3), or "wait" (runs until a signal).
  SIGTERM, SIGINT and SIGHUP are recorded in ``signals.jsonl`` and end it as train.py does (128 + signal).

    python tests/fake_gcloud.py gcloud ARGS...    |    python tests/fake_gcloud.py python3.11 ARGS...
    python tests/fake_gcloud.py train ARGS...
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.environ.get('FAKE_GCLOUD_DIR', '')
HERE = os.path.abspath(__file__)


def _append(name, record):
  with open(os.path.join(ROOT, name), 'a') as f:
    f.write(json.dumps(record) + '\n')


def _read(name):
  try:
    with open(os.path.join(ROOT, name)) as f:
      return [json.loads(line) for line in f if line.strip()]
  except FileNotFoundError:
    return []


def tpu_dir(name):
  return os.path.join(ROOT, 'tpus', name)


def homes(name):
  d = tpu_dir(name)
  return sorted((os.path.join(d, w) for w in os.listdir(d) if w.startswith('worker')),
                key=lambda p: int(p.rsplit('worker', 1)[1]))


def kill_workers(name):
  """Every process started on the TPU's workers (worker.sh's detached shells and their train.py) gone."""
  for home in homes(name):
    for record in ('rsam-train.wrapper', 'rsam-train.pid'):
      try:
        with open(os.path.join(home, record)) as f:
          pid = int(f.read().strip())
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
          command = f.read()
        if b'worker.sh' not in command and b'fake_gcloud' not in command:
          continue  # a reused pid: not ours
        os.killpg(os.getpgid(pid), signal.SIGKILL)
      except (OSError, ValueError):
        pass


def preempt(name):
  kill_workers(name)
  with open(os.path.join(tpu_dir(name), 'state'), 'w') as f:
    f.write('PREEMPTED')


def _flag(argv, name):
  for i, a in enumerate(argv):
    if a == name:
      return argv[i + 1]
    if a.startswith(name + '='):
      return a.split('=', 1)[1]
  return None


def gcloud(argv):
  _append('calls.jsonl', argv)
  if argv[:2] != ['compute', 'tpus']:
    print(f'fake gcloud: unsupported {argv}', file=sys.stderr)
    return 2
  group, verb, target = argv[2], argv[3], argv[4]
  name = target.split(':')[0] if verb != 'scp' else argv[5].split(':')[0]
  d = tpu_dir(name)
  state_file = os.path.join(d, 'state')
  ready = 'ACTIVE' if group == 'queued-resources' else 'READY'
  if verb == 'describe':
    if not os.path.exists(state_file):
      print(f'ERROR: (gcloud.compute.tpus.{group}.describe) NOT_FOUND: {name}', file=sys.stderr)
      return 1
    with open(state_file) as f:
      current = f.read().strip()
    if current == 'CREATING':  # ready at the next look
      with open(state_file, 'w') as f:
        f.write(ready)
    print(current)
    return 0
  if verb == 'create':
    os.makedirs(d)
    for i in range(int(os.environ.get('FAKE_WORKERS', '2'))):
      os.makedirs(os.path.join(d, f'worker{i}'))
    with open(state_file, 'w') as f:
      f.write('CREATING')
    return 0
  if verb == 'delete':
    if os.path.exists(d):
      kill_workers(name)
      shutil.rmtree(d)
    return 0
  with open(state_file) as f:
    if f.read().strip() != ready:
      print('ssh: connect to host: Connection refused', file=sys.stderr)
      return 255
  which = _flag(argv, '--worker')
  selected = list(enumerate(homes(name)))
  if which != 'all':
    selected = [selected[int(which)]]
  if verb == 'scp':
    for _, home in selected:
      shutil.copy(target, os.path.join(home, argv[5].split(':', 1)[1]))
    return 0
  if verb == 'ssh':
    worst = 0
    for i, home in selected:
      env = dict(os.environ, HOME=home, FAKE_WORKER=str(i))
      done = subprocess.run(['bash', '-c', _flag(argv, '--command')], cwd=home, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True)
      sys.stdout.write(done.stdout)
      sys.stderr.write(done.stderr)
      worst = worst or done.returncode
    return worst
  print(f'fake gcloud: unsupported {argv}', file=sys.stderr)
  return 2


def python311(argv):
  if argv[:2] != ['-m', 'venv']:
    print(f'fake python3.11: unsupported {argv}', file=sys.stderr)
    return 2
  bin_dir = os.path.join(argv[2], 'bin')
  os.makedirs(bin_dir)
  me = f'{sys.executable} {HERE}'
  scripts = {'pip': f'#!/bin/sh\nexec {me} pip "$@"\n', 'python': f'#!/bin/sh\nexec {me} train "$@"\n'}
  for name, text in scripts.items():
    with open(os.path.join(bin_dir, name), 'w') as f:
      f.write(text)
    os.chmod(os.path.join(bin_dir, name), 0o755)
  return 0


def pip(argv):
  _append('pip.jsonl', {'worker': os.environ.get('FAKE_WORKER'), 'cwd': os.getcwd(), 'args': argv})
  return 0


def train(argv):
  worker = os.environ.get('FAKE_WORKER', '0')
  attempt = sum(1 for s in _read('starts.jsonl') if s['worker'] == worker)

  def stop(signum, frame):
    del frame
    _append('signals.jsonl', {'worker': worker, 'attempt': attempt, 'signal': signum})
    print(f'stopped by signal {signum}; step saved', flush=True)
    sys.exit(128 + signum)
  for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, stop)
  # Recorded once it handles signals, as train.py does from its first step on.
  _append('starts.jsonl', {'worker': worker, 'attempt': attempt, 'owner': os.environ.get('RSAM_LEASE_OWNER'),
                           'args': argv, 'pid': os.getpid(), 'sid': os.getsid(0)})
  with open(os.path.join(ROOT, 'exits')) as f:
    plan = json.load(f)
  what = plan[min(attempt, len(plan) - 1)]
  print(f'train.py {" ".join(argv)} (attempt {attempt}) on worker {worker}', flush=True)
  if what == 'wait':
    while True:
      time.sleep(0.1)
  time.sleep(float(os.environ.get('FAKE_TRAIN_SECONDS', '0.3')))
  print(f'step 2: exit {what}', flush=True)
  return int(what)


if __name__ == '__main__':
  role, rest = sys.argv[1], sys.argv[2:]
  sys.exit({'gcloud': gcloud, 'python3.11': python311, 'pip': pip, 'train': train}[role](rest))
