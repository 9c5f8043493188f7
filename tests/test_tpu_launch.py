"""scripts/tpu/launch.py and its module scripts/tpu/pod.py, without gcloud: the commands --dry_run prints,
the preemption path driven by a scripted gcloud (the TPU's states and the run's exit statuses), and the
one-line errors (no gcloud, bad arguments)."""
import os
import shlex
import subprocess
import sys

import pytest

from scripts.tpu import pod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZONE = ['--zone', 'europe-west4-a', '--project', 'proj']
TRAIN = ['--config', 'configs/vit_b16_rsam.py', '--config.seed=1']


def _launch(*args, env=None):
  return subprocess.run([sys.executable, 'scripts/tpu/launch.py', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def _commands(stdout):
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith('#')]


def _head():
  return subprocess.run(['git', '-C', ROOT, 'rev-parse', 'HEAD'], capture_output=True, text=True,
                        check=True).stdout.strip()


def test_dry_run_prints_every_command_of_a_fresh_spot_start():
  done = _launch('--dry_run', '--name', 'rsam-pod', '--zone', 'europe-west4-a', '--project', 'proj',
                 '--accelerator_type', 'v3-256', '--spot', '--workdir', 'gs://bkt/rsam/vit_b16_rsam',
                 '--data_dir', 'gs://bkt/tfds', '--env', 'WANDB_MODE=offline', '--', *TRAIN)
  assert done.returncode == 0, done.stderr
  commit = _head()
  short = commit[:12]
  commands = _commands(done.stdout)
  describe = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'rsam-pod', *ZONE, '--format=value(state)']
  assert commands[:3] == [
      describe,
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'rsam-pod', *ZONE, '--accelerator-type', 'v3-256',
       '--version', 'tpu-ubuntu2204-base', '--spot'],
      describe]
  archive = commands[3]
  assert archive[:2] == ['git', '-C'] and archive[3:6] == ['archive', '--format=tar.gz', '-o']
  assert archive[6].endswith(f'rsam-{short}.tar.gz') and archive[7] == commit
  assert commands[4] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', archive[6],
                         f'rsam-pod:rsam-{short}.tar.gz', *ZONE, '--worker=all']
  ssh = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'rsam-pod', *ZONE, '--worker=all', '--command']
  install, run = commands[5], commands[6]
  assert install[:-1] == ssh and run[:-1] == ssh and len(commands) == 7
  assert install[-1] == (
      f'set -e; if [ ! -f ~/rsam/.installed-{short} ]; then rm -rf ~/rsam && mkdir -p ~/rsam && '
      f'tar -xzf ~/rsam-{short}.tar.gz -C ~/rsam && (command -v python3.11 >/dev/null || (sudo apt-get '
      f'update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv)) && python3.11 -m venv '
      f'~/rsam/.venv && (cd ~/rsam && .venv/bin/pip install -q -r requirements.txt -e ".[train]") && ~/rsam/.venv/bin/pip '
      f'install -q "jax[tpu]>=0.10.2,<0.11" && touch ~/rsam/.installed-{short}; fi')
  assert run[-1] == ('cd ~/rsam && env WANDB_MODE=offline .venv/bin/python train.py --config '
                     'configs/vit_b16_rsam.py --config.seed=1 --workdir=gs://bkt/rsam/vit_b16_rsam '
                     '--config.data.data_dir=gs://bkt/tfds 2>&1 | tee -a ~/rsam-train.log; '
                     'exit ${PIPESTATUS[0]}')


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
  # Without --accelerator_type the TPU is named, never created.
  done = _launch('--dry_run', '--name', 'mine', '--zone', 'us-east5-a', '--workdir', 'gs://b/w',
                 '--data_dir', 'gs://b/d', '--', *TRAIN)
  assert done.returncode == 0, done.stderr
  verbs = [c[4] for c in _commands(done.stdout) if c[0] == 'gcloud']
  assert verbs == ['describe', 'scp', 'ssh', 'ssh']


class ScriptedGcloud:
  """A runner that answers as gcloud would: ``states`` the TPU's successive describe answers, ``exits`` the
  train command's successive exit statuses. Records every command."""

  def __init__(self, states, exits):
    self.states, self.exits, self.commands = list(states), list(exits), []

  def __call__(self, argv, stream=False):
    self.commands.append(argv)
    if 'describe' in argv:
      current = self.states.pop(0)
      return pod.Result(1, '', 'ERROR: NOT_FOUND') if current == pod.ABSENT else pod.Result(0, current + '\n')
    if 'ssh' in argv and 'train.py' in argv[-1]:
      assert stream  # the workers' output goes to the terminal
      return pod.Result(self.exits.pop(0))
    return pod.Result(0)

  def steps(self):
    names = []
    for argv in self.commands:
      if argv[0] == 'git':
        names.append('archive')
      elif argv[4] == 'ssh':
        names.append('train' if 'train.py' in argv[-1] else 'install')
      else:
        names.append(argv[4])
    return names


def _pod_and_job(**pod_fields):
  spec = dict(name='p', zone='z', accelerator_type='v4-512', provisioning='spot', **pod_fields)
  return pod.Pod(**spec), pod.Job(train_args=tuple(TRAIN), workdir='gs://b/w', data_dir='gs://b/d',
                                  commit='0' * 40, jax_tpu='jax[tpu]')


def test_a_preempted_tpu_is_recreated_reinstalled_and_the_run_rerun(tmp_path):
  the_pod, job = _pod_and_job()
  gcloud = ScriptedGcloud(states=['READY', 'PREEMPTED', 'PREEMPTED', 'CREATING', 'READY'], exits=[255, 0])
  sleeps = []
  assert pod.launch(the_pod, job, gcloud, max_restarts=3, archive_dir=str(tmp_path), sleep=sleeps.append,
                    log=lambda *_: None) == 0
  assert gcloud.steps() == ['describe', 'archive', 'scp', 'install', 'train',   # the first run, preempted
                            'describe',                                         # why it ended: PREEMPTED
                            'describe', 'delete', 'create', 'describe', 'describe',  # recreated, waited
                            'archive', 'scp', 'install', 'train']               # the rerun, to the end
  assert sleeps == [60]
  # The same command each time: the run resumes from the checkpoints in its workdir.
  trains = [argv for argv in gcloud.commands if 'train.py' in argv[-1]]
  assert trains[0] == trains[1]


def test_a_suspended_queued_resource_is_deleted_with_its_node_and_requested_again(tmp_path):
  the_pod, job = _pod_and_job(queued=True)
  gcloud = ScriptedGcloud(states=['ACTIVE', 'SUSPENDED', 'SUSPENDED', 'WAITING_FOR_RESOURCES', 'ACTIVE'],
                          exits=[143, 0])
  assert pod.launch(the_pod, job, gcloud, max_restarts=1, archive_dir=str(tmp_path), sleep=lambda s: None,
                    log=lambda *_: None) == 0
  deletes = [argv for argv in gcloud.commands if argv[4] == 'delete']
  assert deletes == [['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'p', '--zone', 'z', '--force',
                      '--quiet']]
  assert gcloud.steps().count('train') == 2 and gcloud.steps().count('create') == 1


def test_reruns_are_bounded_and_an_error_exit_is_not_rerun(tmp_path):
  the_pod, job = _pod_and_job()
  gcloud = ScriptedGcloud(states=['READY'] * 10, exits=[1, 1, 1])  # the run crashes on a healthy TPU
  with pytest.raises(pod.LaunchError, match=r'ended with exit 1 \(TPU READY\) after 2 restarts'):
    pod.launch(the_pod, job, gcloud, max_restarts=2, archive_dir=str(tmp_path), log=lambda *_: None)
  assert gcloud.steps().count('train') == 3 and gcloud.steps().count('install') == 1  # installed once
  for code in (2, 74, 75, 130):  # an `error:` line, a failed write, another run's lease, Ctrl-C
    gcloud = ScriptedGcloud(states=['READY'] * 2, exits=[code])
    with pytest.raises(pod.LaunchError, match=rf'train.py stopped: .*\(exit {code};'):
      pod.launch(the_pod, job, gcloud, max_restarts=5, archive_dir=str(tmp_path), log=lambda *_: None)
    assert gcloud.steps().count('train') == 1, code


def test_a_missing_tpu_without_accelerator_type_is_an_error(tmp_path):
  the_pod, job = _pod_and_job()
  the_pod = pod.Pod(name='p', zone='z')
  with pytest.raises(pod.LaunchError, match=r'TPU p in z is NOT_FOUND; pass --accelerator_type'):
    pod.launch(the_pod, job, ScriptedGcloud([pod.ABSENT], []), max_restarts=0, archive_dir=str(tmp_path),
               log=lambda *_: None)


def test_no_gcloud_is_one_error_line(tmp_path):
  done = _launch('--name', 'p', '--zone', 'z', '--workdir', 'gs://b/w', '--data_dir', 'gs://b/d', '--', *TRAIN,
                 env=dict(os.environ, PATH=str(tmp_path)))  # an empty folder: no gcloud
  assert done.returncode == 2
  assert done.stderr.splitlines() == [
      'error: gcloud not found on PATH: install the Google Cloud SDK '
      '(https://cloud.google.com/sdk/docs/install), then `gcloud auth login`; or pass --dry_run to print the '
      'commands']
  assert done.stdout == ''


@pytest.mark.parametrize('args, message', [
    (['--workdir', '/tmp/w'], 'error: --workdir=/tmp/w must be a gs:// path'),
    (['--', '--workdir=gs://b/x'], 'error: --workdir=gs://b/x after --: give it as --workdir of this script'),
    (['--env', 'novalue'], "error: --env 'novalue' must be KEY=VALUE"),
    (['--queued', '--preemptible'], 'error: --queued takes --spot, not --preemptible'),
    (['--commit', 'no-such-commit'], 'error: `git rev-parse --verify no-such-commit^{commit}` failed'),
])
def test_bad_arguments_are_one_error_line(capsys, args, message):
  base = ['--dry_run', '--name', 'p', '--zone', 'z', '--workdir', 'gs://b/w', '--data_dir', 'gs://b/d']
  rest = args[args.index('--'):] if '--' in args else []
  head = args[:args.index('--')] if '--' in args else args
  assert pod.main(base + head + ['--'] + TRAIN + rest[1:]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith(message), err
