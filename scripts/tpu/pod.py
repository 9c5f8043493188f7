r"""A train.py run on a Cloud TPU VM pod slice, end to end: the logic behind scripts/tpu/launch.py.

    python scripts/tpu/launch.py --name rsam-pod --zone europe-west4-a --accelerator_type v3-256 --spot \
        --workdir gs://BUCKET/rsam/vit_b16_rsam --data_dir gs://BUCKET/tfds -- --config configs/vit_b16_rsam.py

1. The TPU: ``--name`` names it. When it does not exist (or was preempted) and ``--accelerator_type`` is
   given, it is created: ``gcloud compute tpus tpu-vm create`` (``--spot`` / ``--preemptible``), or with
   ``--queued`` a queued resource (``gcloud compute tpus queued-resources create``, ``--spot``), which
   waits in Google's queue until the slice is free. Then it waits for READY (ACTIVE for a queued resource).
2. The code: ``git archive`` of ``--commit`` (default HEAD: commit first), copied to every worker with
   ``gcloud compute tpus tpu-vm scp --worker=all`` and unpacked in ``~/rsam``; a venv there, the README's
   install (``requirements.txt`` and the checkout, editable, as the README installs it) and the ``jax[tpu]`` build of the jax version requirements.txt pins.
   Skipped when that commit is already installed on the workers.
3. The run: the same ``train.py`` command on every worker (``gcloud compute tpus tpu-vm ssh --worker=all
   --command``) with ``--workdir`` and ``--config.data.data_dir`` in buckets; jax finds the pod by itself
   (rsam/training/distributed.py). The workers' output streams here (and into ``~/rsam-train.log`` on each).
4. Preemption: when the command ends without success, the TPU's state decides. Preempted or terminated
   (a queued resource: suspended or failed): delete it, create it again, install, rerun. A
   healthy TPU: rerun, except after an exit status a rerun does not fix (``NOT_RERUN``: 2 a bad config
   or data, 74 a failed write, 75 a workdir held by another run, 130 Ctrl-C). The run resumes from the checkpoints in its workdir by itself. At most
   ``--max_restarts`` reruns.

``--dry_run`` prints every command instead of running it (the path of a fresh start: the TPU does not exist
yet when ``--accelerator_type`` is given). Needs the Google Cloud SDK (``gcloud``), logged in, with a project
and the TPU API enabled; the TPU VM's service account must be able to read and write the buckets.
"""
import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REMOTE_DIR = 'rsam'               # on each worker, relative to the home folder
REMOTE_LOG = 'rsam-train.log'
# train.py's exit statuses that a rerun does not fix (README, "Exit codes"): they stop the launcher.
NOT_RERUN = {2: 'an `error:` line about the config, data or flags',
             74: 'a write failed (disk full, read-only or unwritable workdir)',
             75: 'the workdir is in use by another run (its lease)',
             130: 'stopped with Ctrl-C'}

# TPU VM states (gcloud compute tpus tpu-vm describe) and queued-resource states (its state.state): ready;
# gone (preempted or ended: delete and create again); on the way (wait). Any other (STOPPED, HIDDEN, ...)
# is left to the user.
READY = {'tpu-vm': ('READY',), 'queued': ('ACTIVE',)}
GONE = {'tpu-vm': ('PREEMPTED', 'TERMINATED'), 'queued': ('FAILED', 'SUSPENDED')}
PENDING = {'tpu-vm': ('CREATING', 'STARTING', 'RESTARTING', 'REPAIRING', 'REIMAGING', 'DELETING'),
           'queued': ('ACCEPTED', 'CREATING', 'PROVISIONING', 'WAITING_FOR_RESOURCES', 'SUSPENDING',
                      'DELETING')}
ABSENT = 'NOT_FOUND'


class LaunchError(Exception):
  """Bad input or a failed step: its message is one line naming what and the fix."""


@dataclasses.dataclass(frozen=True)
class Result:
  returncode: int
  stdout: str = ''
  stderr: str = ''


Runner = Callable[..., Result]  # runner(argv, stream=False) -> Result; stream: output goes to the terminal


def run_command(argv: Sequence[str], stream: bool = False) -> Result:
  """The real runner."""
  if stream:
    return Result(subprocess.run(list(argv), check=False).returncode)
  done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
  return Result(done.returncode, done.stdout, done.stderr)


class DryRun:
  """Prints each command. State queries answer as on a fresh start: absent until created (or present from
  the start when ``exists``), then ready; every other command succeeds."""

  def __init__(self, *, exists: bool, out=None):
    self.exists = exists
    self.out = out or sys.stdout

  def __call__(self, argv: Sequence[str], stream: bool = False) -> Result:
    del stream
    print(shlex.join(argv), file=self.out, flush=True)
    if 'describe' in argv:
      kind = 'queued' if 'queued-resources' in argv else 'tpu-vm'
      return Result(0, READY[kind][0]) if self.exists else Result(1, '', f'{ABSENT}: (dry run)')
    if 'create' in argv:
      self.exists = True
    return Result(0)


@dataclasses.dataclass(frozen=True)
class Pod:
  """The gcloud commands of one TPU VM (or of the queued resource that holds it, under the same name)."""
  name: str
  zone: str
  project: Optional[str] = None
  accelerator_type: Optional[str] = None   # None: the TPU must exist; never created
  runtime_version: Optional[str] = None    # None: the one for the accelerator type (runtime_version())
  provisioning: str = 'standard'           # 'standard' | 'spot' | 'preemptible'
  queued: bool = False

  @property
  def kind(self) -> str:
    return 'queued' if self.queued else 'tpu-vm'

  def _gcloud(self, group: str, verb: str, positional: Sequence[str], *flags: str) -> List[str]:
    project = ['--project', self.project] if self.project else []
    return ['gcloud', 'compute', 'tpus', group, verb, *positional, '--zone', self.zone, *project, *flags]

  def _group(self) -> str:
    return 'queued-resources' if self.queued else 'tpu-vm'

  def describe(self) -> List[str]:
    field = 'state.state' if self.queued else 'state'
    return self._gcloud(self._group(), 'describe', [self.name], f'--format=value({field})')

  def create(self) -> List[str]:
    version = self.runtime_version or runtime_version(self.accelerator_type)
    if self.queued:
      flags = ['--node-id', self.name, '--accelerator-type', self.accelerator_type,
               '--runtime-version', version]
    else:
      flags = ['--accelerator-type', self.accelerator_type, '--version', version]
    if self.provisioning != 'standard':
      flags.append(f'--{self.provisioning}')
    return self._gcloud(self._group(), 'create', [self.name], *flags)

  def delete(self) -> List[str]:
    force = ['--force'] if self.queued else []  # a queued resource: its TPU VM goes with it
    return self._gcloud(self._group(), 'delete', [self.name], *force, '--quiet')

  def scp(self, local: str, remote: str) -> List[str]:
    return self._gcloud('tpu-vm', 'scp', [local, f'{self.name}:{remote}'], '--worker=all')

  def ssh(self, command: str) -> List[str]:
    return self._gcloud('tpu-vm', 'ssh', [self.name], '--worker=all', '--command', command)


def runtime_version(accelerator_type: str) -> str:
  """The TPU software version Google lists for JAX on each generation (cloud.google.com/tpu/docs/runtimes)."""
  for prefix, version in (('v6e', 'v2-alpha-tpuv6e'), ('v5p', 'v2-alpha-tpuv5'),
                          ('v5litepod', 'v2-alpha-tpuv5-lite'), ('v5e', 'v2-alpha-tpuv5-lite')):
    if accelerator_type.startswith(prefix):
      return version
  return 'tpu-ubuntu2204-base'  # v2, v3, v4


@dataclasses.dataclass(frozen=True)
class Job:
  """What runs on every worker: train.py ``train_args`` at ``commit`` with a gs:// workdir and data_dir."""
  train_args: Tuple[str, ...]
  workdir: str
  data_dir: str
  commit: str                      # a full commit hash
  jax_tpu: str                     # the pip requirement of the TPU build, e.g. 'jax[tpu]>=0.10.2,<0.11'
  env: Tuple[str, ...] = ()        # KEY=VALUE set for train.py
  python: str = 'python3.11'

  @property
  def archive_name(self) -> str:
    return f'rsam-{self.commit[:12]}.tar.gz'

  def install_command(self) -> str:
    """Idempotent: a worker that already holds this commit does nothing."""
    d, marker = f'~/{REMOTE_DIR}', f'~/{REMOTE_DIR}/.installed-{self.commit[:12]}'
    py = shlex.quote(self.python)
    steps = [
        f'rm -rf {d}', f'mkdir -p {d}', f'tar -xzf ~/{self.archive_name} -C {d}',
        f'(command -v {py} >/dev/null || (sudo apt-get update -qq && sudo apt-get install -y -qq {py} '
        f'{py}-venv))',
        f'{py} -m venv {d}/.venv', f'(cd {d} && .venv/bin/pip install -q -r requirements.txt -e ".[train]")',
        f'{d}/.venv/bin/pip install -q "{self.jax_tpu}"', f'touch {marker}']
    return f'set -e; if [ ! -f {marker} ]; then {" && ".join(steps)}; fi'

  def train_argv(self) -> List[str]:
    return ['.venv/bin/python', 'train.py', *self.train_args, f'--workdir={self.workdir}',
            f'--config.data.data_dir={self.data_dir}']

  def train_command(self) -> str:
    env = ' '.join(shlex.quote(e) for e in self.env)
    train = (f'env {env} ' if env else '') + shlex.join(self.train_argv())
    return f'cd ~/{REMOTE_DIR} && {train} 2>&1 | tee -a ~/{REMOTE_LOG}; exit ${{PIPESTATUS[0]}}'


def state(pod: Pod, runner: Runner) -> str:
  """The TPU's state, or ABSENT."""
  result = runner(pod.describe())
  if result.returncode == 0:
    return result.stdout.strip() or 'UNKNOWN'
  if ABSENT in result.stderr or 'not found' in result.stderr.lower():
    return ABSENT
  raise LaunchError(f'`{shlex.join(pod.describe())}` failed: {_last_line(result.stderr)}')


def ensure_ready(pod: Pod, runner: Runner, *, poll_seconds: float, max_wait_seconds: float,
                 sleep: Callable[[float], None] = time.sleep, log=print) -> bool:
  """Makes the TPU ready: creates it when absent, deletes and recreates it when preempted, waits while it is
  on the way. Returns whether it was (re)created."""
  created = False
  waited = 0.0
  current = state(pod, runner)
  while current not in READY[pod.kind]:
    if current in GONE[pod.kind] or current == ABSENT:
      if created:  # e.g. a queued resource that FAILED: recreating it would loop
        raise LaunchError(f'TPU {pod.name} became {current} right after its creation; see '
                          f'`{shlex.join(pod.describe()[:-1])}`')
      if pod.accelerator_type is None:
        raise LaunchError(f'TPU {pod.name} in {pod.zone} is {current}; pass --accelerator_type (e.g. v3-256) '
                          f'to create it, or name a TPU that exists')
      if current != ABSENT:
        log(f'# TPU {pod.name} is {current}: deleting it to create it again')
        _check(runner(pod.delete()), pod.delete())
      log(f'# creating TPU {pod.name} ({pod.accelerator_type}, {pod.provisioning}'
          f'{", queued resource" if pod.queued else ""})')
      _check(runner(pod.create()), pod.create())
      created = True
    elif current in PENDING[pod.kind]:
      if waited >= max_wait_seconds:
        raise LaunchError(f'TPU {pod.name} still {current} after {waited / 3600:.1f} h; raise '
                          f'--max_wait_hours or look at it in the Cloud console')
      log(f'# TPU {pod.name} is {current}; checking again in {poll_seconds:.0f} s')
      sleep(poll_seconds)
      waited += poll_seconds
    else:
      raise LaunchError(f'TPU {pod.name} is {current}; start it (gcloud compute tpus tpu-vm start) or delete '
                        f'it, then launch again')
    current = state(pod, runner)
  return created


def install(pod: Pod, job: Job, runner: Runner, *, archive_dir: str) -> None:
  local = os.path.join(archive_dir, job.archive_name)
  steps = [['git', '-C', REPO, 'archive', '--format=tar.gz', '-o', local, job.commit],
           pod.scp(local, job.archive_name), pod.ssh(job.install_command())]
  for argv in steps:
    _check(runner(argv), argv)


def launch(pod: Pod, job: Job, runner: Runner, *, max_restarts: int, poll_seconds: float = 60,
           max_wait_seconds: float = 24 * 3600, archive_dir: Optional[str] = None,
           sleep: Callable[[float], None] = time.sleep, log=print) -> int:
  """Runs ``job`` on ``pod`` to completion through preemptions; returns 0, or raises LaunchError."""
  archive_dir = archive_dir or tempfile.gettempdir()
  installed = False
  restarts = 0
  while True:
    fresh = ensure_ready(pod, runner, poll_seconds=poll_seconds, max_wait_seconds=max_wait_seconds,
                         sleep=sleep, log=log)
    if fresh or not installed:
      install(pod, job, runner, archive_dir=archive_dir)
      installed = True
    log(f'# running on every worker of {pod.name} (restart {restarts} of at most {max_restarts})')
    code = runner(pod.ssh(job.train_command()), stream=True).returncode
    if code == 0:
      log(f'# done: results in {job.workdir}')
      return 0
    now = state(pod, runner)
    if now in READY[pod.kind] and code in NOT_RERUN:
      raise LaunchError(f'train.py stopped: {NOT_RERUN[code]} (exit {code}; its `error:` line is above); fix '
                        f'it and launch again: the run resumes from {job.workdir}')
    if restarts >= max_restarts:
      raise LaunchError(f'the run ended with exit {code} (TPU {now}) after {restarts} restarts; raise '
                        f'--max_restarts or look at ~/{REMOTE_LOG} on the workers')
    restarts += 1
    log(f'# the run ended with exit {code}; TPU {pod.name} is {now}: restarting ({restarts}/{max_restarts}),'
        f' it resumes from the checkpoints in {job.workdir}')


def _check(result: Result, argv: Sequence[str]) -> None:
  if result.returncode != 0:
    raise LaunchError(f'`{shlex.join(argv)}` failed (exit {result.returncode}): {_last_line(result.stderr)}')


def _last_line(text: str) -> str:
  lines = [line.strip() for line in (text or '').splitlines() if line.strip()]
  return lines[-1] if lines else 'no message'


def _git(*args: str) -> str:
  done = subprocess.run(['git', '-C', REPO, *args], capture_output=True, text=True, check=False)
  if done.returncode != 0:
    raise LaunchError(f'`git {" ".join(args)}` failed in {os.path.basename(REPO)}: {_last_line(done.stderr)}')
  return done.stdout


def jax_tpu_requirement(commit: str) -> str:
  """The TPU build of the jax version that requirements.txt pins at ``commit``, e.g. jax[tpu]>=0.10.2,<0.11."""
  for line in _git('show', f'{commit}:requirements.txt').splitlines():
    pinned = re.match(r'\s*jax\s*([<>=!~][<>=!~0-9.,* ]*?)\s*(#.*)?$', line)
    if pinned:
      return f'jax[tpu]{pinned.group(1)}'
  raise LaunchError(f'requirements.txt at {commit[:12]} names no jax version')


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='scripts/tpu/launch.py', description=__doc__.split('\n\n')[0],
      usage='%(prog)s --name NAME --zone ZONE --workdir gs://... --data_dir gs://... [options] -- TRAIN_ARGS')
  parser.add_argument('--name', required=True, help='TPU VM name (and queued-resource id with --queued).')
  parser.add_argument('--zone', required=True, help='e.g. europe-west4-a')
  parser.add_argument('--project', help='Google Cloud project (default: gcloud config).')
  parser.add_argument('--accelerator_type', help='Create the TPU when missing or preempted, e.g. v3-256, '
                      'v4-512, v5p-512, v6e-256. Without it, the TPU must exist.')
  parser.add_argument('--runtime_version', help='TPU software version (default: Google\'s JAX image for '
                      'the accelerator type: tpu-ubuntu2204-base up to v4, v2-alpha-tpuv5-lite, '
                      'v2-alpha-tpuv5, v2-alpha-tpuv6e).')
  how = parser.add_mutually_exclusive_group()
  how.add_argument('--spot', action='store_true', help='Spot TPU (cheaper, preemptible at any time).')
  how.add_argument('--preemptible', action='store_true', help='Preemptible TPU (the older kind).')
  parser.add_argument('--queued', action='store_true', help='Request it as a queued resource.')
  parser.add_argument('--workdir', required=True, help='gs:// workdir of the run.')
  parser.add_argument('--data_dir', required=True, help='gs:// tfds data_dir (config.data.data_dir).')
  parser.add_argument('--commit', default='HEAD', help='Commit to install on the workers (default HEAD).')
  parser.add_argument('--python', default=Job.python, help='Python on the workers (installed with apt '
                      'if missing).')
  parser.add_argument('--env', action='append', default=[], metavar='KEY=VALUE',
                      help='Environment for train.py on the workers (repeatable), e.g. WANDB_MODE=offline.')
  parser.add_argument('--max_restarts', type=int, default=10, help='Reruns after preemptions/failures.')
  parser.add_argument('--poll_seconds', type=float, default=60.0)
  parser.add_argument('--max_wait_hours', type=float, default=24.0,
                      help='How long to wait for the TPU to become ready (a queued resource may wait long).')
  parser.add_argument('--dry_run', action='store_true', help='Print every command instead of running it.')
  parser.add_argument('train_args', nargs='*', help='train.py arguments after --: --config ... [overrides]')
  return parser.parse_args(argv)


def build(args: argparse.Namespace) -> Tuple[Pod, Job]:
  """Checks the arguments (LaunchError) and makes the Pod and the Job."""
  for flag in ('workdir', 'data_dir'):
    if not getattr(args, flag).startswith('gs://'):
      raise LaunchError(f'--{flag}={getattr(args, flag)} must be a gs:// path: every worker must read and '
                        f'write the same one (e.g. gs://BUCKET/rsam/run1)')
  train_args = tuple(args.train_args)
  if not any(a == '--config' or a.startswith('--config=') for a in train_args):
    raise LaunchError('no train.py config: add it after --, e.g. -- --config configs/vit_b16_rsam.py')
  for a in train_args:
    if a.split('=')[0] in ('--workdir', '--config.data.data_dir'):
      raise LaunchError(f'{a} after --: give it as --{"workdir" if "workdir" in a else "data_dir"} of this '
                        f'script instead')
  for e in args.env:
    if not re.match(r'^[A-Za-z_][A-Za-z0-9_]*=', e):
      raise LaunchError(f'--env {e!r} must be KEY=VALUE')
  if args.queued and args.preemptible:
    raise LaunchError('--queued takes --spot, not --preemptible (queued resources have no preemptible tier)')
  if args.max_restarts < 0:
    raise LaunchError(f'--max_restarts={args.max_restarts} must be >= 0')
  commit = _git('rev-parse', '--verify', f'{args.commit}^{{commit}}').strip()
  if args.commit == 'HEAD' and _git('status', '--porcelain', '--untracked-files=no').strip():
    print(f'note: uncommitted changes stay here: the workers get commit {commit[:12]}', file=sys.stderr)
  provisioning = 'spot' if args.spot else 'preemptible' if args.preemptible else 'standard'
  pod = Pod(name=args.name, zone=args.zone, project=args.project, accelerator_type=args.accelerator_type,
            runtime_version=args.runtime_version, provisioning=provisioning, queued=args.queued)
  job = Job(train_args=train_args, workdir=args.workdir.rstrip('/'), data_dir=args.data_dir.rstrip('/'),
            commit=commit, jax_tpu=jax_tpu_requirement(commit), env=tuple(args.env), python=args.python)
  return pod, job


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  try:
    if not args.dry_run and shutil.which('gcloud') is None:
      raise LaunchError('gcloud not found on PATH: install the Google Cloud SDK (https://cloud.google.com/sdk/'
                        'docs/install), then `gcloud auth login`; or pass --dry_run to print the commands')
    pod, job = build(args)
    runner = DryRun(exists=pod.accelerator_type is None) if args.dry_run else run_command
    return launch(pod, job, runner, max_restarts=args.max_restarts, poll_seconds=args.poll_seconds,
                  max_wait_seconds=args.max_wait_hours * 3600)
  except LaunchError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
