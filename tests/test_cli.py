"""What train.py and eval.py say about bad input before the run starts, and what they keep off stderr.

Each bad input is a subprocess whose stderr must be exactly one ``error:`` line (exit code 2) with no
exception class name in it; the checks on the raw command line must answer before JAX is imported. A run
with wandb on and no login must stop before it writes anything. The start-up noise tests pair the quiet
path with the noisy one it replaces, so they show the noise exists where it is not held back.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CLASS_NAME = re.compile(r'\b[A-Z]\w*(Error|Exception)\b|rsam\.errors')
_NOISE = re.compile(r'oneDNN|absl::InitializeLog|credentials file|gcloud auth|^[IWEF]\d{4} ')


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update({'PYTHONPATH': ROOT, **extra})
  return env


def _imports(stderr: str) -> set:
  return {line.rsplit('|', 1)[1].strip().split('.')[0] for line in stderr.splitlines()
          if line.startswith('import time:') and '|' in line}


def _bad_inputs(tmp_path):
  """name: (argv after the interpreter, text the error line must contain, answers before JAX?)"""
  a_file = tmp_path / 'a_file'
  a_file.write_text('not a folder')
  syntax = tmp_path / 'syntax_config.py'
  syntax.write_text('def get_config(:\n  pass\n')
  raises = tmp_path / 'raising_config.py'
  raises.write_text('def get_config():\n  return undefined_name\n')
  work = str(tmp_path / 'work')
  return {
      'unknown flag': (['train.py', '--config', 'configs/tiny.py', '--wrokdir', work],
                       'unknown flag --wrokdir; did you mean --workdir?', True),
      'unknown flag, eval': (['eval.py', '--wrokdir', work], 'unknown flag --wrokdir; did you mean --workdir?', True),
      'unknown flag among overrides': (['train.py', '--config', 'configs/tiny.py', '--config.updater.rho', '-1',
                                        '--workdir', work, '--forse_resume'],
                                       'unknown flag --forse_resume; did you mean --force_resume?', True),
      'missing --config': (['train.py', '--workdir', work], '--config is required', True),
      'missing config file': (['train.py', '--config', 'configs/quickstrat.py', '--workdir', work],
                              'configs/quickstrat.py: no such file', True),
      'config folder': (['train.py', '--config', 'configs', '--workdir', work], 'is a folder', True),
      'config not Python': (['train.py', '--config', 'README.md', '--workdir', work], 'is not a config file', True),
      'config syntax error': (['train.py', '--config', str(syntax), '--workdir', work], 'is not valid Python', True),
      'config raises': (['train.py', '--config', str(raises), '--workdir', work],
                        "name 'undefined_name' is not defined (line 2)", True),
      'bad config argument': (['train.py', '--config', 'configs/cifar.py:dataset=cifar1000', '--workdir', work],
                              "dataset='cifar1000'; choose one of: cifar10, cifar100", True),
      'argument to a config without one': (['train.py', '--config', 'configs/quickstart.py:x', '--workdir', work],
                                           "configs/quickstart.py takes no argument; drop ':x'", True),
      'workdir is a file': (['train.py', '--config', 'configs/tiny.py', '--workdir', str(a_file)],
                            f'--workdir {a_file} is a file, not a folder', True),
      'workdir inside a file': (['train.py', '--config', 'configs/tiny.py', '--workdir', str(a_file / 'run')],
                                'which is a file, not a folder', True),
      'eval workdir is a file': (['eval.py', '--workdir', str(a_file)], 'is a file, not a folder', True),
      'not a yes/no value': (['train.py', '--config', 'configs/tiny.py', '--workdir', work, '--force_resume=maybe'],
                             'a yes/no flag takes true or false', False),
  }


def test_bad_input_is_one_plain_error_line(tmp_path):
  cases = _bad_inputs(tmp_path)
  procs = {name: subprocess.Popen([sys.executable, '-X', 'importtime', *argv], cwd=ROOT, env=_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, (argv, _, _) in cases.items()}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if not line.startswith('import time:')]
    assert proc.returncode == 2, (name, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith('error: '), (name, lines)
    assert cases[name][1] in lines[0], (name, lines[0])
    assert not _CLASS_NAME.search(lines[0]), (name, lines[0])
    if cases[name][2]:
      assert not _imports(err) & {'jax', 'tensorflow', 'flax'}, (name, sorted(_imports(err) & {'jax', 'tensorflow'}))
    assert not os.path.exists(tmp_path / 'work'), name


def test_unknown_flag_reads_values_and_negations():
  from absl import flags
  from rsam.training import cli
  fv = flags.FlagValues()  # train.py's flags, apart from absl's global ones
  flags.DEFINE_string('workdir', None, '', flag_values=fv)
  flags.DEFINE_string('config', None, '', flag_values=fv)
  flags.DEFINE_bool('force_resume', False, '', flag_values=fv)
  flags.DEFINE_integer('verbosity', 0, '', short_name='v', flag_values=fv)
  flags.DEFINE_bool('helpfull', False, '', flag_values=fv)
  ok = [['p', '--workdir', 'd', '--config', 'c'], ['p', '--workdir=d', '--noforce_resume'],
        ['p', '--config.updater.rho', '-1', '-v', '1'], ['p', '--', '--anything'], ['p', '--helpfull']]
  for argv in ok:
    assert cli.unknown_flag(argv, fv) is None, argv
  assert cli.unknown_flag(['p', '--workdir', 'd', '--confg', 'c'], fv) == 'unknown flag --confg; did you mean --config?'
  assert cli.unknown_flag(['p', '-workdirr=d'], fv) == 'unknown flag --workdirr; did you mean --workdir?'
  assert cli.unknown_flag(['p', '--zzzzzz'], fv).endswith('see --helpfull for the flags')


def test_class_names_are_stripped_from_messages():
  from rsam.training import cli
  assert cli.strip_class_names('rsam.errors.ConfigError: bad rho') == 'bad rho'
  assert cli.strip_class_names('x: TypeError: y') == 'x: y'
  assert cli.strip_class_names('config.updater.rho=-1.0 must be a number') == 'config.updater.rho=-1.0 must be a number'


def test_wandb_login_check_agrees_with_the_writer():
  from rsam.training import cli, writers
  for enabled in (False, True):
    for cfg_mode in (None, 'online', 'offline', 'disabled'):
      for env_mode in (None, 'online', 'offline', 'disabled'):
        cfg = {'enabled': enabled, 'mode': cfg_mode}
        environ = {'WANDB_MODE': env_mode} if env_mode else {}
        with pytest.MonkeyPatch.context() as mp:
          mp.delenv('WANDB_MODE', raising=False)
          if env_mode:
            mp.setenv('WANDB_MODE', env_mode)
          wanted = writers.wandb_wanted(cfg)
        mode = cfg_mode or env_mode or 'online'
        assert cli.wandb_needs_login(cfg, environ) == (wanted and mode == 'online'), (cfg, env_mode)


def _no_wandb_login(home, environ):
  """An environment with no wandb login anywhere (key, netrc, settings) and a server that never answers."""
  environ.update(HOME=str(home), NETRC=str(home / 'netrc'), WANDB_MODE='online', WANDB_CONFIG_DIR=str(home / 'wandb'),
                 WANDB_BASE_URL='http://127.0.0.1:9')
  environ.pop('WANDB_API_KEY', None)
  return environ


def test_wandb_without_login_stops_before_writing_to_the_workdir(tmp_path):
  """One error line and no workdir at all: before, the lease, config.json, segments, events and an empty
  checkpoints/ were written before wandb.init found out."""
  (tmp_path / 'home').mkdir()
  env = _no_wandb_login(tmp_path / 'home', _env())
  work = tmp_path / 'work'
  proc = subprocess.run([sys.executable, 'train.py', '--config', 'configs/tiny.py', '--workdir', str(work)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and '`wandb login`' in lines[0], proc.stderr[-3000:]
  assert 'WANDB_MODE=offline' in lines[0] and not _CLASS_NAME.search(lines[0]), lines
  assert not work.exists(), sorted(os.listdir(work))


@pytest.mark.parametrize('login', ['none', 'key', 'netrc', 'offline'])
def test_wandb_login_check_reads_this_machine_only(login, tmp_path):
  """A key in the environment or in the netrc file (what `wandb login` writes) passes without asking the
  server (it never answers here); an offline run needs none."""
  home = tmp_path / 'home'
  home.mkdir()
  environ = _no_wandb_login(home, _env())
  if login == 'key':
    environ['WANDB_API_KEY'] = 'a' * 40
  elif login == 'netrc':
    (home / 'netrc').write_text(f"machine 127.0.0.1:9\n  login user\n  password {'b' * 40}\n")
    os.chmod(home / 'netrc', 0o600)
  elif login == 'offline':
    environ['WANDB_MODE'] = 'offline'
  code = 'from configs import tiny; from rsam.training import cli; print(cli.wandb_login_problem(tiny.get_config()))'
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=environ, capture_output=True, text=True,
                        timeout=120)
  out = proc.stdout.strip()
  assert proc.returncode == 0, proc.stderr[-2000:]
  if login == 'none':
    assert out.startswith('wandb is on (mode online) but this machine has no wandb login for http://127.0.0.1:9'), out
  else:
    assert out == 'None', out
  assert not (home / 'wandb').exists() or not os.listdir(home / 'wandb')  # looked, wrote nothing


def test_tensorflow_start_up_lines_are_held_back():
  quiet = subprocess.run([sys.executable, '-c', 'from rsam.training import cli; cli.import_tensorflow_quietly(); '
                          'import tensorflow as tf; print(tf.constant(2) * 3)'], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=300)
  assert quiet.returncode == 0 and 'tf.Tensor(6' in quiet.stdout, quiet.stderr[-2000:]
  assert quiet.stderr == '', quiet.stderr
  noisy = subprocess.run([sys.executable, '-c', 'import tensorflow'], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=300)
  assert _NOISE.search(noisy.stderr), 'TensorFlow no longer prints at import: the quiet import can go'


def test_a_failed_tensorflow_import_still_shows_what_it_printed(tmp_path):
  fake = tmp_path / 'tensorflow'
  fake.mkdir()
  (fake / '__init__.py').write_text('import os\nos.write(2, b"native loader says why\\n")\nraise ImportError("no")\n')
  proc = subprocess.run([sys.executable, '-c', 'from rsam.training import cli; cli.import_tensorflow_quietly()'],
                        cwd=ROOT, env=_env(PYTHONPATH=f'{tmp_path}{os.pathsep}{ROOT}'), capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 1 and 'native loader says why' in proc.stderr and 'ImportError' in proc.stderr


def test_a_gcs_emulator_run_asks_for_no_credentials(gcs, tmp_path):
  """tensorstore (orbax's array I/O) looks for gcloud's credentials unless given a token; against the
  emulator there are none to find, and it printed 'Could not find the credentials file ... gcloud auth
  application-default login'. The same write without rsam's path layer shows the line."""
  bucket = gcs.create_bucket('creds')[len('gs://'):]
  write = ("import tensorstore as ts; kv = ts.KvStore.open({'driver': 'gcs', 'bucket': %r}).result(); "
           "kv.write('x', b'1').result(); print('written')" % bucket)
  home = tmp_path / 'home'
  home.mkdir()
  env = _env(HOME=str(home), CLOUDSDK_CONFIG=str(home / 'gcloud'), STORAGE_EMULATOR_HOST=gcs.url,
             TENSORSTORE_GCS_HTTP_URL=gcs.url, GCE_METADATA_ROOT='127.0.0.1:9', GCE_METADATA_HOST='127.0.0.1:9')
  for name in ('GOOGLE_APPLICATION_CREDENTIALS', 'GOOGLE_AUTH_TOKEN_FOR_TESTING'):
    env.pop(name, None)
  ours = subprocess.run([sys.executable, '-c', 'from rsam.training import paths; ' + write], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert ours.stdout.strip() == 'written', ours.stderr[-2000:]
  assert 'credentials file' not in ours.stderr and 'gcloud auth' not in ours.stderr, ours.stderr
  bare = subprocess.run([sys.executable, '-c', write], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert 'credentials file' in bare.stderr, bare.stderr[-2000:]
