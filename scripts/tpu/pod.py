r"""A train.py run on a Cloud TPU VM (a pod slice or one host), end to end: the logic behind scripts/tpu/launch.py.

    .venv/bin/python scripts/tpu/launch.py --name rsam-b16 --zone ZONE --accelerator_type v3-256 --spot \
        --workdir gs://BUCKET/rsam/vit_b16_rsam --data_dir gs://BUCKET/tfds --detach -- --config configs/vit_b16_rsam.py
    .venv/bin/python scripts/tpu/launch.py status --name rsam-b16
    .venv/bin/python scripts/tpu/launch.py stop --name rsam-b16

Two things run, in two places (docs/tpu.md is the guide):

- Training, on every worker of the TPU, detached from ssh (scripts/tpu/worker.sh: its own session, output to
  ``~/rsam-train.log``, exit status to ``~/rsam-train.exit``): a dropped ssh connection, or the machine that
  started it going to sleep, neither stops it nor loses its output. ``RSAM_LEASE_OWNER`` is the run's id
  (``Pod.owner``: ``tpu:[PROJECT/]ZONE/NAME:WORKDIR``), the same on every restart, so a recreated VM takes
  its own lease back at once (rsam/training/lease.py).
- The restart loop (``launch``), on the machine that runs this script: it creates the TPU when missing,
  installs the commit, starts training, then polls every ``--poll_seconds`` (the TPU's state with
  ``describe``, the workers' state with one short ssh) until the training ends, and decides by the exit
  status (``EXIT_POLICY``): done, rerun, or stop. A preempted TPU is deleted and created again, and the
  run resumes from the checkpoints in its workdir. With ``--detach`` the loop runs in the background of
  this machine (its own session, output to ``<state dir>/launch.log``), so closing the terminal or the ssh
  session to this machine leaves it running; run it on a machine that stays up (a small always-on VM)
  for prompt restarts: while this machine sleeps, training goes on but nothing restarts it.

The loop's own record, for ``status``: ``<state dir>/<name>/launch.json`` (the run) and ``events.jsonl``
(one line per event: started, ended with a status and what was decided, recreated, ...). The state dir is
``--state_dir``, else ``$RSAM_LAUNCH_STATE``, else ``$XDG_STATE_HOME/rsam/launch`` (``~/.local/state``).

``--dry_run`` prints every command of a fresh start instead of running it. Needs the Google Cloud SDK
(``gcloud``), logged in, with a project and the TPU API enabled; the TPU VM's service account must be able
to read and write the buckets.
"""
import argparse
import dataclasses
import datetime
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REMOTE_DIR = 'rsam'                        # on each worker, relative to the home folder
WORKER = f'~/{REMOTE_DIR}/scripts/tpu/worker.sh'
ARCHIVE = 'rsam.tar.gz'                    # the commit, copied to each worker's home folder
REMOTE_LOG = 'rsam-train.log'              # training's output on each worker (worker.sh)
STRAGGLER_SECONDS = 900.0                  # workers still running this long after another ended: stopped

# --- what an ending means and what the loop does next (docs/tpu.md, "Rerun policy") -----------------------

DONE, RERUN, RERUN_ONCE, STOP = 'done', 'rerun', 'rerun once', 'stop'


@dataclasses.dataclass(frozen=True)
class Rule:
  meaning: str
  action: str   # DONE, RERUN, RERUN_ONCE (rerun, unless the end before was the same: then stop) or STOP


# train.py's exit statuses (the README's "Exit codes"), and the two ends that have none.
EXIT_POLICY: Dict[int, Rule] = {
    0: Rule('finished', DONE),
    1: Rule('a crash: a traceback, from a bug or a fault of a machine', RERUN_ONCE),
    2: Rule('an `error:` line about the config, data, flags, workdir or recorded progress', STOP),
    69: Rule('storage (gs://) unreachable past config.storage_retry_s', RERUN),
    74: Rule('a write failed: disk full, read-only, permission', STOP),
    75: Rule('the workdir is held by another live run, or this run was taken over (--force_resume)', STOP),
    129: Rule('SIGHUP: the current step was saved', RERUN),
    130: Rule('SIGINT (Ctrl-C): the current step was saved; stopped by hand', STOP),
    143: Rule('SIGTERM (e.g. a maintenance event): the current step was saved', RERUN),
}
PREEMPTED = Rule('the TPU was preempted or terminated (a queued resource: suspended or failed)', RERUN)
LOST = Rule('no exit status: train.py vanished (SIGKILL, a reboot)', RERUN_ONCE)
OTHER = Rule('any other status (e.g. 137: SIGKILL, such as the out-of-memory killer)', RERUN_ONCE)
STOPPED = Rule('stopped with `launch.py stop` (the current step was saved)', STOP)
WHAT = {DONE: 'the launcher ends (exit 0)', RERUN: 'rerun', STOP: 'not rerun: the launcher stops',
        RERUN_ONCE: 'rerun once: a second one in a row stops the launcher'}


def rule(code: Optional[int]) -> Rule:
  """The rule for train.py's exit status ``code`` (None: it ended without one)."""
  return LOST if code is None else EXIT_POLICY.get(code, OTHER)


def policy_table() -> str:
  """The rerun policy as docs/tpu.md shows it (a test keeps the two the same)."""
  rows = [('`0`' if c == 0 else f'`{c}`', r) for c, r in EXIT_POLICY.items()]
  rows += [('preempted', PREEMPTED), ('none', LOST), ('other', OTHER), ('`stop`', STOPPED)]
  lines = ['| exit status | meaning | the launcher |', '|---|---|---|']
  return '\n'.join(lines + [f'| {c} | {r.meaning} | {WHAT[r.action]} |' for c, r in rows])


# --- running commands -------------------------------------------------------------------------------------


class LaunchError(Exception):
  """Bad input or a failed step: its message is one line naming what and the fix."""


@dataclasses.dataclass(frozen=True)
class Result:
  returncode: int
  stdout: str = ''
  stderr: str = ''


Runner = Callable[[Sequence[str]], Result]  # runs one command, returns its status and output


def run_command(argv: Sequence[str]) -> Result:
  """The real runner."""
  done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
  return Result(done.returncode, done.stdout, done.stderr)


# TPU VM states (gcloud compute tpus tpu-vm describe) and queued-resource states (its state.state): ready;
# gone (preempted or ended: delete and create again); on the way (wait). Any other (STOPPED, HIDDEN, ...)
# is left to the user.
READY = {'tpu-vm': ('READY',), 'queued': ('ACTIVE',)}
GONE = {'tpu-vm': ('PREEMPTED', 'TERMINATED'), 'queued': ('FAILED', 'SUSPENDED')}
PENDING = {'tpu-vm': ('CREATING', 'STARTING', 'RESTARTING', 'REPAIRING', 'REIMAGING', 'DELETING'),
           'queued': ('ACCEPTED', 'CREATING', 'PROVISIONING', 'WAITING_FOR_RESOURCES', 'SUSPENDING',
                      'DELETING')}
ABSENT = 'NOT_FOUND'


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

  def ssh(self, command: str, worker: str = 'all') -> List[str]:
    return self._gcloud('tpu-vm', 'ssh', [self.name], f'--worker={worker}', '--command', command)

  def owner(self, workdir: str) -> str:
    """The lease owner (RSAM_LEASE_OWNER) of the run in ``workdir`` on this TPU: the same on every restart
    and on a recreated VM (hostnames change), another for another run."""
    return 'tpu:' + '/'.join(filter(None, (self.project, self.zone, self.name))) + ':' + workdir


def runtime_version(accelerator_type: str) -> str:
  """The TPU software version Google lists for JAX on each generation (cloud.google.com/tpu/docs/runtimes)."""
  for prefix, version in (('v6e', 'v2-alpha-tpuv6e'), ('v5p', 'v2-alpha-tpuv5'),
                          ('v5litepod', 'v2-alpha-tpuv5-lite'), ('v5e', 'v2-alpha-tpuv5-lite')):
    if accelerator_type.startswith(prefix):
      return version
  return 'tpu-ubuntu2204-base'  # v2, v3, v4


@dataclasses.dataclass(frozen=True)
class Job:
  """What runs on every worker: train.py ``train_args`` at ``commit`` with a gs:// workdir and data_dir,
  as lease owner ``owner``."""
  train_args: Tuple[str, ...]
  workdir: str
  data_dir: str
  commit: str                      # a full commit hash (by hand: HEAD)
  jax_tpu: str                     # the pip requirement of the TPU build, e.g. 'jax[tpu]>=0.10.2,<0.11'
  owner: str                       # RSAM_LEASE_OWNER of every process of the run
  env: Tuple[str, ...] = ()        # KEY=VALUE set for train.py
  python: str = 'python3.11'

  def install_command(self) -> str:
    """Unpacks the archive beside the checkout; worker.sh installs it (a venv, the runtime requirements, the
    TPU build of jax), or leaves an identical one alone."""
    new = f'~/{REMOTE_DIR}.new'
    return (f'set -e; rm -rf {new} && mkdir -p {new} && tar -xzf ~/{ARCHIVE} -C {new} && bash '
            f'{new}/scripts/tpu/worker.sh install ~/{ARCHIVE} {_join([self.python, self.jax_tpu])}')

  def train_argv(self) -> List[str]:
    return [*self.train_args, f'--workdir={self.workdir}', f'--config.data.data_dir={self.data_dir}']

  def start_command(self) -> str:
    """Starts train.py on a worker, detached (worker.sh start), unless it runs there already."""
    return f'bash {WORKER} start ' + _join([self.owner, *self.env, '--', *self.train_argv()])

  @staticmethod
  def status_command() -> str:
    return f'if [ -f {WORKER} ]; then bash {WORKER} status; else echo "rsam-worker $(hostname) none"; fi'

  @staticmethod
  def stop_command(verb: str = 'stop') -> str:
    """``stop``: SIGTERM, recorded as stopped (no rerun); ``terminate``: SIGTERM alone."""
    return f'if [ -f {WORKER} ]; then bash {WORKER} {verb}; else echo "rsam-worker $(hostname) none"; fi'

  @staticmethod
  def log_command(lines: int = 20) -> str:
    return f'tail -n {int(lines)} ~/{REMOTE_LOG}'


def _join(words: Sequence[str]) -> str:
  """shlex.join, but double quotes where they suffice: a command that itself goes inside shlex's single
  quotes (ssh --command) then reads without '"'"' in it."""
  return ' '.join(w if shlex.quote(w) == w else f'"{w}"' if not re.search(r'["$`\\!]', w) else shlex.quote(w)
                  for w in words)


# --- the workers' state -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workers:
  """What ``worker.sh status`` said on every worker: running (owners), exited ((status, owner, stopped)),
  none (never started here, or its record lost)."""
  running: Tuple[str, ...] = ()
  exited: Tuple[Tuple[int, str, bool], ...] = ()
  none: int = 0

  @property
  def total(self) -> int:
    return len(self.running) + len(self.exited) + self.none

  def summary(self) -> str:
    if not self.total:
      return 'no answer from the workers'
    parts = []
    if self.running:
      parts.append(f'running on {len(self.running)}')
    for code in sorted({c for c, _, _ in self.exited}):
      n = sum(1 for c, _, _ in self.exited if c == code)
      parts.append(f'exited {code} on {n}')
    if self.none:
      parts.append(f'not running on {self.none}')
    return ', '.join(parts) + f' of {self.total} workers'


def parse_workers(text: str) -> Workers:
  running, exited, none = [], [], 0
  for line in text.splitlines():
    words = line.split()
    if len(words) < 3 or words[0] != 'rsam-worker':
      continue
    if words[2] == 'running' and len(words) >= 5:
      running.append(words[4])
    elif words[2] == 'exited' and len(words) >= 5 and words[3].lstrip('-').isdigit():
      exited.append((int(words[3]), words[4], 'stopped' in words[5:]))
    elif words[2] == 'none':
      none += 1
  return Workers(tuple(running), tuple(exited), none)


def pod_exit(workers: Workers) -> Tuple[Optional[int], Rule]:
  """The slice's ending from its workers': the status whose rule weighs most (stop > rerun once > rerun >
  done), so a crash on one worker is not hidden by the others' SIGTERM; a worker with no status makes it
  LOST unless another's status stops the run."""
  weight = {DONE: 0, RERUN: 1, RERUN_ONCE: 2, STOP: 3}
  ends = [(code, rule(code)) for code, _, _ in workers.exited] + [(None, LOST)] * workers.none
  if any(stopped for _, _, stopped in workers.exited):
    ends.append((next(c for c, _, s in workers.exited if s), STOPPED))
  code, chosen = max(ends, key=lambda e: weight[e[1].action] + (0.5 if e[1] is STOPPED else 0))
  return code, chosen


# --- the TPU -----------------------------------------------------------------------------------------------


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
      log(f'# TPU {pod.name} is {current}; checking again in {poll_seconds:g} s')
      sleep(poll_seconds)
      waited += poll_seconds
    else:
      raise LaunchError(f'TPU {pod.name} is {current}; start it (gcloud compute tpus tpu-vm start) or delete '
                        f'it, then launch again')
    current = state(pod, runner)
  return created


def install(pod: Pod, job: Job, runner: Runner, *, archive_dir: str) -> None:
  local = os.path.join(archive_dir, ARCHIVE)
  steps = [['git', '-C', REPO, 'archive', '--format=tar.gz', '-o', local, job.commit],
           pod.scp(local, ARCHIVE), pod.ssh(job.install_command())]
  for argv in steps:
    _check(runner(argv), argv)


def workers(pod: Pod, runner: Runner) -> Optional[Workers]:
  """The workers' state, or None when ssh failed (e.g. the TPU went away while we asked)."""
  result = runner(pod.ssh(Job.status_command()))
  found = parse_workers(result.stdout)
  return found if found.total and result.returncode == 0 else None


# --- the restart loop ----------------------------------------------------------------------------------------


def _no_record(event: str, **fields) -> None:
  del event, fields


def launch(pod: Pod, job: Job, runner: Runner, *, max_restarts: int, poll_seconds: float = 60,
           max_wait_seconds: float = 24 * 3600, archive_dir: Optional[str] = None,
           sleep: Callable[[float], None] = time.sleep, log=print, record=_no_record,
           clock: Callable[[], float] = time.time) -> int:
  """Runs ``job`` on ``pod`` to its end through preemptions and reruns (``EXIT_POLICY``); returns 0, or
  raises LaunchError with the reason it stopped. Training already running for this run (the launcher was
  restarted) is adopted, not started twice."""
  archive_dir = archive_dir or tempfile.mkdtemp(prefix='rsam-launch-')
  installed, restarts, first = False, 0, True
  previous: Optional[Rule] = None
  while True:
    fresh = ensure_ready(pod, runner, poll_seconds=poll_seconds, max_wait_seconds=max_wait_seconds,
                         sleep=sleep, log=log)
    if fresh:
      record('created')
    now = workers(pod, runner) if first and not fresh else None  # later: we know nothing runs
    foreign = [o for o in (now.running if now else ()) if o != job.owner]
    if foreign:
      raise LaunchError(f'TPU {pod.name} already trains another run (lease owner {foreign[0]}); stop it '
                        f'(launch.py stop --name {pod.name}) or use another TPU')
    if now and now.running:
      log(f'# training already runs on {pod.name} ({now.summary()}): following it')
      record('adopted')
    elif (first and now and now.exited and not now.none and {o for _, o, _ in now.exited} == {job.owner}
          and pod_exit(now)[1].action == DONE):
      log(f'# the training on {pod.name} had finished ({now.summary()})')
      record('ended', code=0, meaning=EXIT_POLICY[0].meaning, action=DONE)
      return 0
    else:
      if fresh or not installed:
        log(f'# installing commit {job.commit[:12]} on every worker of {pod.name}')
        install(pod, job, runner, archive_dir=archive_dir)
        installed = True
      log(f'# starting train.py on every worker of {pod.name} (restart {restarts} of at most {max_restarts})')
      _check(runner(pod.ssh(job.start_command())), pod.ssh(job.start_command()))
      record('started', restart=restarts)
    first = False
    code, why = wait_for_end(pod, runner, poll_seconds=poll_seconds, sleep=sleep, log=log, clock=clock)
    record('ended', code=code, meaning=why.meaning, action=why.action)
    said = f'exit {code}' if code is not None else 'no exit status'
    if why.action == DONE:
      log(f'# done: train.py finished; results in {job.workdir}')
      return 0
    if why.action == STOP:
      raise LaunchError(f'train.py ended with {said}: {why.meaning}; not rerun (~/{REMOTE_LOG} on the '
                        f'workers says more; `launch.py status` shows its last lines): launching again '
                        f'resumes the run from {job.workdir}')
    if why.action == RERUN_ONCE and previous is why:
      raise LaunchError(f'train.py ended twice in a row with {why.meaning} ({said}); not rerun again: '
                        f'see ~/{REMOTE_LOG} on the workers (`launch.py status` shows its last lines)')
    if restarts >= max_restarts:
      raise LaunchError(f'train.py ended with {said} ({why.meaning}) after {restarts} restarts; raise '
                        f'--max_restarts or see ~/{REMOTE_LOG} on the workers')
    previous = why
    restarts += 1
    log(f'# train.py ended with {said} ({why.meaning}): restarting ({restarts}/{max_restarts}); it resumes '
        f'from the checkpoints in {job.workdir}')


def wait_for_end(pod: Pod, runner: Runner, *, poll_seconds: float, sleep, log,
                 clock: Callable[[], float] = time.time) -> Tuple[Optional[int], Rule]:
  """Polls until training has ended on every worker or the TPU is gone: (exit status or None, its rule)."""
  first_end, terminated = None, False
  failures = 0
  while True:
    sleep(poll_seconds)
    current = state(pod, runner)
    if current in GONE[pod.kind] or current == ABSENT:
      log(f'# TPU {pod.name} is {current}')
      return None, PREEMPTED
    if current not in READY[pod.kind]:
      continue  # e.g. REPAIRING: ask again
    now = workers(pod, runner)
    if now is None:
      failures += 1
      if failures % 10 == 0:
        log(f'# no answer from the workers of {pod.name} ({failures} tries); still asking')
      continue
    failures = 0
    if not now.running:
      return pod_exit(now)
    if now.exited or now.none:
      first_end = first_end if first_end is not None else clock()
      if clock() - first_end >= STRAGGLER_SECONDS and not terminated:  # in a collective that never ends
        log(f'# {now.summary()} for {STRAGGLER_SECONDS:g} s: SIGTERM to the rest')
        runner(pod.ssh(Job.stop_command('terminate')))
        terminated = True


def _check(result: Result, argv: Sequence[str]) -> None:
  if result.returncode != 0:
    raise LaunchError(f'`{_short(argv)}` failed (exit {result.returncode}): {_last_line(result.stderr)}')


def _short(argv: Sequence[str]) -> str:
  text = shlex.join(argv)
  return text if len(text) < 200 else text[:200] + '...'


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


# --- the loop's record on this machine ------------------------------------------------------------------


def state_root(flag: Optional[str] = None) -> str:
  base = os.environ.get('XDG_STATE_HOME') or os.path.join(os.path.expanduser('~'), '.local', 'state')
  return flag or os.environ.get('RSAM_LAUNCH_STATE') or os.path.join(base, 'rsam', 'launch')


class Record:
  """``<root>/<name>/``: launch.json (the run, the loop's pid) and events.jsonl (one JSON line per event)."""

  def __init__(self, root: str, name: str):
    self.dir = os.path.join(root, name)
    self.run_file = os.path.join(self.dir, 'launch.json')
    self.events_file = os.path.join(self.dir, 'events.jsonl')
    self.log_file = os.path.join(self.dir, 'launch.log')

  def run(self) -> Optional[dict]:
    try:
      with open(self.run_file) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def save_run(self, run: dict) -> None:
    os.makedirs(self.dir, exist_ok=True)
    with open(self.run_file + '.tmp', 'w') as f:
      json.dump(run, f, indent=1)
    os.replace(self.run_file + '.tmp', self.run_file)

  def event(self, event: str, **fields) -> None:
    os.makedirs(self.dir, exist_ok=True)
    with open(self.events_file, 'a') as f:
      f.write(json.dumps({'time': _now(), 'event': event, **fields}) + '\n')

  def events(self) -> List[dict]:
    try:
      with open(self.events_file) as f:
        return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
      return []

  def loop_pid(self) -> Optional[int]:
    """The pid of this run's restart loop when it runs on this machine."""
    pid = (self.run() or {}).get('loop_pid')
    if not pid:
      return None
    try:
      os.kill(pid, 0)
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if b'launch.py' not in f.read():  # the pid was reused
          return None
    except (OSError, ValueError):
      return None
    return pid


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


# --- status ---------------------------------------------------------------------------------------------------


STATUS_STORAGE_RETRY_S = 30.0


def progress(workdir: str) -> str:
  """Where the run is, from its workdir's records (rsam/training/paths.py: local or gs://)."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  from rsam.training import paths  # pylint: disable=g-import-not-at-top  (gcsfs: only when asked)
  logging.getLogger('gcsfs').setLevel(logging.CRITICAL)  # its retries' tracebacks: the line below says it
  paths.set_storage_retry(STATUS_STORAGE_RETRY_S)  # status answers in seconds, not after a training run's 15 min
  root = paths.path(workdir)
  try:
    if paths.exists(root / 'results.json'):
      results = paths.read_json(root / 'results.json')
      return f'finished: step {results.get("steps")} of {results.get("total_steps")}, results.json written'
    if not paths.exists(root):
      return f'nothing in {workdir} yet'
    total = None
    if paths.exists(root / 'config.json'):
      total = paths.read_json(root / 'config.json').get('total_steps')
    reached = None
    if paths.exists(root / 'segments.json'):
      segments = paths.read_json(root / 'segments.json')
      reached = max((s.get('to_step') or 0 for s in segments if isinstance(s, dict)), default=None)
    steps = []
    if paths.exists(root / 'checkpoints'):
      steps = [int(n) for n in paths.listdir(root / 'checkpoints') if n.isdigit()]
  except paths.StorageUnreachable:
    return f'unknown: {workdir} did not answer for {STATUS_STORAGE_RETRY_S:g} s'
  except (OSError, ValueError) as e:
    return f'unreadable ({" ".join(str(e).split())[:120] or "no reason given"})'
  of = f' of {total}' if total else ''
  saved = f'checkpoint at step {max(steps)}{of}' if steps else 'no checkpoint yet'
  return saved + (f'; records reach step {reached}' if reached is not None else '')


def describe_end(event: dict) -> str:
  code = event.get('code')
  said = f'exit {code}' if code is not None else 'no exit status'
  return f'{said}: {event.get("meaning")} -> {WHAT.get(event.get("action"), event.get("action"))}'


def status(pod: Pod, workdir: Optional[str], record: Record, runner: Runner) -> List[str]:
  """Where the run is: the loop, the TPU, the workers, the workdir's progress, how it last ended."""
  lines = []
  saved = record.run() or {}
  if workdir:
    lines.append(f'run: {workdir} on TPU {pod.name} ({pod.zone}), lease owner {pod.owner(workdir)}')
  events = record.events()
  pid = record.loop_pid()
  if pid:
    how = 'detached' if saved.get('detached') else 'in a terminal'
    lines.append(f'launcher: running on this machine (pid {pid}, {how}; log {record.log_file})')
  elif events:
    last = events[-1]
    lines.append(f'launcher: not running on this machine; its last event: {last["event"]} at {last["time"]}'
                 + (f' ({last["message"]})' if last.get('message') else ''))
  else:
    lines.append(f'launcher: no record on this machine ({record.dir})')
  current = state(pod, runner)
  lines.append(f'TPU: {current}' + (' (preempted: the launcher recreates it)' if current in GONE[pod.kind]
                                    else ''))
  if current in READY[pod.kind]:
    now = workers(pod, runner)
    lines.append(f'training: {now.summary()}' if now else 'training: no answer from the workers')
    if now and now.exited and not now.running:
      code, why = pod_exit(now)
      lines.append(f'last end on the workers: {describe_end({"code": code, "meaning": why.meaning, "action": why.action})}')
    log_tail = runner(pod.ssh(Job.log_command(3), worker='0'))
    for line in log_tail.stdout.splitlines()[-3:]:
      lines.append(f'  worker 0 log: {line}')
  if workdir:
    lines.append(f'progress: {progress(workdir)}')
  ends = [e for e in events if e['event'] == 'ended']
  if ends:
    restarts = sum(1 for e in events if e['event'] == 'started' and e.get('restart'))
    lines.append(f'last end seen by the launcher: {describe_end(ends[-1])} (at {ends[-1]["time"]}; '
                 f'{restarts} restarts so far)')
  return lines


# --- the command line ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise LaunchError(f'{message} (see --help)')


def _common(parser: argparse.ArgumentParser, required: bool) -> None:
  parser.add_argument('--name', required=True, help='TPU VM name (and queued-resource id with --queued).')
  parser.add_argument('--zone', required=required, help='e.g. europe-west4-a')
  parser.add_argument('--project', help='Google Cloud project (default: gcloud config).')
  parser.add_argument('--queued', action='store_true', help='The TPU is (to be) a queued resource.')
  parser.add_argument('--state_dir', help='Where the loop keeps its record (default: $RSAM_LAUNCH_STATE, '
                      'else $XDG_STATE_HOME/rsam/launch, else ~/.local/state/rsam/launch).')


DESCRIPTIONS = {
    'run': 'Runs train.py on every worker of a TPU until it finishes, through preemptions and reruns (the '
           'restart loop; with --detach, in the background of this machine).',
    'status': 'Where a run is: its launcher, the TPU, training on the workers, the workdir\'s progress, and '
              'how it last ended (exit status, its meaning, what the launcher did).',
    'stop': 'Stops a run: its launcher (when it runs here), then training on every worker (SIGTERM: the '
            'current step is saved; recorded as stopped, so no launcher reruns it).',
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  argv = list(argv)
  command = argv.pop(0) if argv and argv[0] in ('run', 'status', 'stop') else 'run'
  parser = _Parser(prog=f'scripts/tpu/launch.py {command}', description=DESCRIPTIONS[command],
                   epilog='Commands: run (the default: `launch.py --name ...` is `launch.py run --name ...`), '
                   'status, stop; `launch.py status --help`. The guide: docs/tpu.md.')
  if command != 'run':
    _common(parser, required=False)
    parser.add_argument('--workdir', help='The run\'s workdir (default: the one the launcher recorded).')
    if command == 'stop':
      parser.add_argument('--delete_tpu', action='store_true', help='Delete the TPU once training stopped.')
      parser.add_argument('--poll_seconds', type=float, default=5.0, help='How often to ask whether training '
                          'stopped (default 5; at most 120 times).')
    args = parser.parse_args(argv)
    args.command = command
    return args
  parser.usage = ('%(prog)s --name NAME --zone ZONE --workdir gs://... --data_dir gs://... [options] -- '
                  'TRAIN_ARGS')
  _common(parser, required=True)
  parser.add_argument('--accelerator_type', help='Create the TPU when missing or preempted, e.g. v3-256, '
                      'v4-512, v5p-512, v6e-256. Without it, the TPU must exist.')
  parser.add_argument('--runtime_version', help='TPU software version (default: Google\'s JAX image for '
                      'the accelerator type: tpu-ubuntu2204-base up to v4, v2-alpha-tpuv5-lite, '
                      'v2-alpha-tpuv5, v2-alpha-tpuv6e).')
  how = parser.add_mutually_exclusive_group()
  how.add_argument('--spot', action='store_true', help='Spot TPU (cheaper, preemptible at any time).')
  how.add_argument('--preemptible', action='store_true', help='Preemptible TPU (the older kind).')
  parser.add_argument('--workdir', required=True, help='gs:// workdir of the run.')
  parser.add_argument('--data_dir', required=True, help='gs:// tfds data_dir (config.data.data_dir).')
  parser.add_argument('--commit', default='HEAD', help='Commit to install on the workers (default HEAD).')
  parser.add_argument('--python', default=Job.python, help='Python on the workers (installed with apt '
                      'if missing).')
  parser.add_argument('--env', action='append', default=[], metavar='KEY=VALUE',
                      help='Environment for train.py on the workers (repeatable), e.g. WANDB_MODE=offline.')
  parser.add_argument('--max_restarts', type=int, default=10, help='Reruns after preemptions/failures.')
  parser.add_argument('--poll_seconds', type=float, default=60.0, help='How often the loop asks how the '
                      'run is (default 60).')
  parser.add_argument('--max_wait_hours', type=float, default=24.0,
                      help='How long to wait for the TPU to become ready (a queued resource may wait long).')
  parser.add_argument('--detach', action='store_true', help='Run the restart loop in the background of this '
                      'machine (its own session; output to the state dir\'s launch.log) and return.')
  parser.add_argument('--dry_run', action='store_true', help='Print every command instead of running it.')
  parser.add_argument('train_args', nargs='*', help='train.py arguments after --: --config ... [overrides]')
  args = parser.parse_args(argv)
  args.command = 'run'
  return args


def build(args: argparse.Namespace) -> Tuple[Pod, Job]:
  """Checks the arguments (LaunchError) and makes the Pod and the Job."""
  for flag in ('workdir', 'data_dir'):
    if not getattr(args, flag).startswith('gs://'):
      raise LaunchError(f'--{flag}={getattr(args, flag)} must be a gs:// path: every worker must read and '
                        f'write the same one (e.g. gs://BUCKET/rsam/run1)')
    if re.search(r'\s', getattr(args, flag)):
      raise LaunchError(f'--{flag}={getattr(args, flag)!r} has a space; name the folder without one')
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
  if not re.match(r'^[a-z]([-a-z0-9]*[a-z0-9])?$', args.name):
    raise LaunchError(f'--name={args.name!r}: a TPU name is lowercase letters, digits and hyphens, starting '
                      f'with a letter (e.g. rsam-b16)')
  commit = _git('rev-parse', '--verify', f'{args.commit}^{{commit}}').strip()
  if subprocess.run(['git', '-C', REPO, 'cat-file', '-e', f'{commit}:scripts/tpu/worker.sh'],
                    capture_output=True, check=False).returncode:
    raise LaunchError(f'--commit={args.commit} predates scripts/tpu/worker.sh, which the workers run; launch '
                      f'a newer commit')
  if args.commit == 'HEAD' and _git('status', '--porcelain', '--untracked-files=no').strip():
    print(f'note: uncommitted changes stay here: the workers get commit {commit[:12]}', file=sys.stderr)
  provisioning = 'spot' if args.spot else 'preemptible' if args.preemptible else 'standard'
  pod = Pod(name=args.name, zone=args.zone, project=args.project, accelerator_type=args.accelerator_type,
            runtime_version=args.runtime_version, provisioning=provisioning, queued=args.queued)
  workdir = args.workdir.rstrip('/')
  job = Job(train_args=train_args, workdir=workdir, data_dir=args.data_dir.rstrip('/'),
            commit=commit, jax_tpu=jax_tpu_requirement(commit), owner=pod.owner(workdir), env=tuple(args.env),
            python=args.python)
  return pod, job


class DryRun:
  """Prints each command. State queries answer as on a fresh start: absent until created (or present from
  the start when ``exists``), then ready; the workers: nothing running until started, then finished."""

  def __init__(self, *, exists: bool, owner: str, out=None):
    self.exists, self.owner, self.started = exists, owner, False
    self.out = out or sys.stdout

  def __call__(self, argv: Sequence[str]) -> Result:
    print(shlex.join(argv), file=self.out, flush=True)
    if 'describe' in argv:
      kind = 'queued' if 'queued-resources' in argv else 'tpu-vm'
      return Result(0, READY[kind][0]) if self.exists else Result(1, '', f'{ABSENT}: (dry run)')
    if 'create' in argv:
      self.exists = True
    if 'ssh' in argv and ' status;' in argv[-1]:
      line = f'rsam-worker dry-run exited 0 {self.owner}' if self.started else 'rsam-worker dry-run none'
      return Result(0, line + '\n')
    if 'ssh' in argv and ' start ' in argv[-1]:
      self.started = True
    return Result(0)


class Interrupted(Exception):
  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def _raise_interrupted(signum, frame):
  del frame
  raise Interrupted(signum)


def run_main(args: argparse.Namespace, argv: Sequence[str]) -> int:
  if not args.dry_run and shutil.which('gcloud') is None:
    raise LaunchError('gcloud not found on PATH: install the Google Cloud SDK (https://cloud.google.com/sdk/'
                      'docs/install), then `gcloud auth login`; or pass --dry_run to print the commands')
  pod, job = build(args)
  if args.dry_run:
    return launch(pod, job, DryRun(exists=pod.accelerator_type is None, owner=job.owner),
                  max_restarts=args.max_restarts, poll_seconds=0, sleep=lambda s: None,
                  log=lambda line: print(line, flush=True))
  record = Record(state_root(args.state_dir), args.name)
  running = record.loop_pid()
  if running and running != os.getpid():
    raise LaunchError(f'a launcher for {args.name} already runs on this machine (pid {running}); see '
                      f'`.venv/bin/python scripts/tpu/launch.py status --name {args.name}`')
  run = {'name': pod.name, 'zone': pod.zone, 'project': pod.project, 'queued': pod.queued,
         'workdir': job.workdir, 'data_dir': job.data_dir, 'owner': job.owner, 'commit': job.commit,
         'train_args': list(job.train_args), 'detached': args.detach}
  if args.detach:
    return detach(record, run, argv)
  record.save_run({**run, 'detached': bool(os.environ.get('RSAM_LAUNCH_DETACHED')), 'loop_pid': os.getpid(),
                   'started': _now()})
  record.event('loop-started', pid=os.getpid())
  stamp = lambda line: print(f'{_now()} {line}', flush=True)  # noqa: E731
  for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, _raise_interrupted)
  try:
    code = launch(pod, job, run_command, max_restarts=args.max_restarts, poll_seconds=args.poll_seconds,
                  max_wait_seconds=args.max_wait_hours * 3600, log=stamp, record=record.event)
  except LaunchError as e:
    record.event('loop-ended', code=2, message=str(e))
    raise
  except Interrupted as e:
    message = (f'the launcher stopped ({e}); training on {pod.name} goes on, detached: '
               f'`.venv/bin/python scripts/tpu/launch.py status --name {pod.name}` says where it is, '
               f'launching again follows it')
    record.event('loop-ended', code=128 + e.signum, message=message)
    print(message, file=sys.stderr)
    return 128 + e.signum
  record.event('loop-ended', code=code, message='done')
  return code


def detach(record: Record, run: dict, argv: Sequence[str]) -> int:
  """Starts this same command without --detach in the background (a new session, output to launch.log)
  and returns once it runs."""
  os.makedirs(record.dir, exist_ok=True)
  argv = [a for a in argv if a != '--detach'] if '--' not in argv else (
      [a for a in argv[:argv.index('--')] if a != '--detach'] + list(argv[argv.index('--'):]))
  command = [sys.executable, os.path.join(REPO, 'scripts', 'tpu', 'launch.py'), *argv]
  with open(record.log_file, 'ab') as log:
    child = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, env=dict(os.environ, RSAM_LAUNCH_DETACHED='1'))
  for _ in range(300):  # until it recorded itself (or ended: a bad argument)
    if child.poll() is not None or record.loop_pid() == child.pid:
      break
    time.sleep(0.1)
  if child.poll() is not None:
    with open(record.log_file) as f:
      raise LaunchError(f'the background launcher ended at once (exit {child.returncode}): '
                        f'{_last_line(f.read())}')
  name = run['name']
  print(f'launched in the background (pid {child.pid}): the restart loop runs on this machine until the run '
        f'ends; keep this machine up for prompt restarts (docs/tpu.md)\n'
        f'  status: .venv/bin/python scripts/tpu/launch.py status --name {name}\n'
        f'  log:    tail -f {record.log_file}\n'
        f'  stop:   .venv/bin/python scripts/tpu/launch.py stop --name {name}')
  return 0


def _pod_for(args: argparse.Namespace, record: Record) -> Tuple[Pod, Optional[str]]:
  run = record.run() or {}
  zone = args.zone or run.get('zone')
  if not zone:
    raise LaunchError(f'no record of {args.name} on this machine ({record.dir}): pass --zone (and --workdir '
                      f'for its progress)')
  pod = Pod(name=args.name, zone=zone, project=args.project or run.get('project'),
            queued=args.queued or bool(run.get('queued')))
  return pod, args.workdir or run.get('workdir')


def status_main(args: argparse.Namespace) -> int:
  if shutil.which('gcloud') is None:
    raise LaunchError('gcloud not found on PATH: install the Google Cloud SDK, then `gcloud auth login`')
  record = Record(state_root(args.state_dir), args.name)
  pod, workdir = _pod_for(args, record)
  for line in status(pod, workdir, record, run_command):
    print(line)
  return 0


def stop_main(args: argparse.Namespace) -> int:
  """Stops the loop (if it runs here) so that it reruns nothing, then training: SIGTERM on every worker,
  which saves the step and exits 143 (recorded as stopped, so a loop elsewhere does not rerun it)."""
  if shutil.which('gcloud') is None:
    raise LaunchError('gcloud not found on PATH: install the Google Cloud SDK, then `gcloud auth login`')
  record = Record(state_root(args.state_dir), args.name)
  pod, workdir = _pod_for(args, record)
  pid = record.loop_pid()
  if pid:
    os.kill(pid, signal.SIGTERM)
    print(f'stopped the launcher (pid {pid})')
  record.event('stop-asked')
  now = state(pod, run_command)
  if now in READY[pod.kind]:
    _check(run_command(pod.ssh(Job.stop_command())), pod.ssh(Job.stop_command()))
    for _ in range(120):
      found = workers(pod, run_command)
      if found and not found.running:
        break
      time.sleep(args.poll_seconds)
    print(f'training: {found.summary() if found else "no answer from the workers"}')
  else:
    print(f'TPU {pod.name} is {now}: no training to stop')
  if workdir:
    print(f'progress: {progress(workdir)}')
  if args.delete_tpu and now != ABSENT:
    _check(run_command(pod.delete()), pod.delete())
    print(f'deleted TPU {pod.name}')
  elif now != ABSENT:
    print(f'the TPU still exists (and costs): delete it with `{shlex.join(pod.delete())}`')
  return 0


def main(argv: Sequence[str]) -> int:
  try:
    args = parse_args(argv)
    if args.command == 'status':
      return status_main(args)
    if args.command == 'stop':
      return stop_main(args)
    return run_main(args, argv)
  except LaunchError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('interrupted', file=sys.stderr)
    return 130


# --- the same steps by hand (docs/tpu.md) -----------------------------------------------------------------


def by_hand(pod: Pod, job: Job) -> List[str]:
  """The launcher's steps for a fresh start, then status, the log, stop and delete, as shell lines that
  parse the same in bash and zsh (every word quoted by shlex where it needs it; the command an ssh hands to
  the worker in single quotes, double quotes inside), the archive made from ``job.commit``."""
  argv = [pod.create(), ['git', 'archive', '--format=tar.gz', '-o', ARCHIVE, job.commit], pod.scp(ARCHIVE, ARCHIVE),
          pod.ssh(job.install_command()), pod.ssh(job.start_command()), pod.ssh(f'bash {WORKER} status'),
          pod.ssh(Job.log_command(20), worker='0'), pod.ssh(f'bash {WORKER} stop'), pod.delete()]
  return [shlex.join(a) for a in argv]


EXAMPLE_POD = Pod(name='rsam-b16', zone='ZONE', accelerator_type='v3-256', provisioning='spot')
EXAMPLE_JOB = Job(train_args=('--config', 'configs/vit_b16_rsam.py'), workdir='gs://BUCKET/rsam/vit_b16_rsam',
                  data_dir='gs://BUCKET/tfds', commit='HEAD', jax_tpu='jax[tpu]>=0.10.2,<0.11',
                  owner=EXAMPLE_POD.owner('gs://BUCKET/rsam/vit_b16_rsam'))
