"""Everyday use (issue 12): errors that answer fast, ignored run folders, make_tables beside a checkout.

Each test here is cheap (sub-second, or one subprocess that stops at its flag check).
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imports(stderr: str) -> set:
  """Top-level modules named in a ``-X importtime`` report."""
  names = set()
  for line in stderr.splitlines():
    if line.startswith('import time:') and '|' in line:
      names.add(line.rsplit('|', 1)[1].strip().split('.')[0])
  return names


@pytest.mark.parametrize('script', ['train.py', 'eval.py'])
def test_a_missing_workdir_answers_before_jax_or_tensorflow_is_imported(script):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['PYTHONPATH'] = ROOT
  proc = subprocess.run([sys.executable, '-X', 'importtime', script, '--config', 'configs/tiny.py'], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if not line.startswith('import time:')]
  assert len(errors) == 1 and errors[0].startswith('error: --workdir is required'), errors
  imported = _imports(proc.stderr)
  assert 'absl' in imported  # the report is read right
  assert not imported & {'jax', 'tensorflow', 'flax', 'tensorflow_datasets'}, sorted(imported)


def test_missing_flag_check_reads_every_spelling_and_leaves_help_alone():
  from rsam.training import cli
  required = {'workdir': 'x'}
  for argv in (['p', '--workdir=d'], ['p', '--workdir', 'd'], ['p', '-workdir=d'], ['p', '--help']):
    assert cli.missing_flags(argv, required) == [], argv
  assert cli.missing_flags(['p', '--config', 'c', '--workdirs=d'], required) == ['workdir']


def test_import_rsam_alone_imports_no_jax():
  code = ('import sys, rsam, rsam.errors; print("jax" in sys.modules, rsam.ConfigError is rsam.errors.ConfigError, '
          'sorted(set(rsam.__all__) - set(dir(rsam))))')  # dir() lists the lazy names (module __dir__)
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.stdout.split() == ['False', 'True', '[]'], out.stderr[-2000:]


def test_tfds_hints_name_this_environments_tfds():
  # The hint itself is checked on a missing dataset in tests/test_train.py (test_bad_input_..., 'missing dataset').
  from data import sources
  assert os.path.samefile(sources.tfds_command(), os.path.join(os.path.dirname(sys.executable), 'tfds'))


def test_run_folders_are_ignored_by_git():
  paths = ['runs/3/x/seed0/results.json', 'runs_runlocal/3/x/seed0/results.json', 'workdirs/x/config.json',
           'wandb/run-x/files/config.yaml']
  proc = subprocess.run(['git', 'check-ignore', '--no-index', *paths], cwd=ROOT, capture_output=True, text=True)
  assert proc.stdout.split() == paths, proc.stdout + proc.stderr


def test_make_tables_skips_a_checkouts_test_fixtures(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, 'scripts'))
  import make_tables
  for folder in ('checkout/tests/fixtures/make_tables/x/seed0', 'checkout/runs/x/seed0', 'checkout/x/seed1'):
    os.makedirs(tmp_path / folder)
    (tmp_path / folder / 'results.json').write_text('{"config": {}, "eval": {}}')
  runs, problems = make_tables.find_runs(str(tmp_path))
  assert sorted(os.path.relpath(r.path, tmp_path) for r in runs) == [
      'checkout/runs/x/seed0/results.json', 'checkout/x/seed1/results.json'] and not problems


# --- each evaluator with its own interval (point 2) -------------------------------------------------------


def test_each_eval_set_runs_at_its_own_interval():
  import ml_collections
  from rsam.errors import ConfigError
  from rsam.training import evaluation
  c = ml_collections.ConfigDict({'eval_sets': ('validation', 'imagenet_c'), 'eval_every_steps': 0,
                                 'eval_intervals': {'minival': 100, 'validation': 300, 'imagenet_c': 0}})
  every = evaluation.intervals(c)
  assert every == {'validation': 300, 'imagenet_c': 0, 'minival': 100}  # the final list first
  assert evaluation.due(every, 100, 1000) == ('minival',)
  assert evaluation.due(every, 600, 1000) == ('validation', 'minival')
  assert evaluation.due(every, 1000, 1000) == ()  # the end evaluates every set once, separately
  assert evaluation.due(every, 1, 1000) == ()
  c.eval_every_steps = 50  # the default of the sets without an entry
  c.eval_sets = ('validation', 'imagenet_r')
  assert evaluation.intervals(c)['imagenet_r'] == 50
  c.eval_intervals.minival = -1
  with pytest.raises(ConfigError, match='eval_intervals.minival=-1'):
    evaluation.intervals(c)


def test_every_table_config_draws_a_curve_on_a_cheap_held_out_split():
  from configs import tables
  from rsam.training import config_check, evaluation
  for run in tables.all_runs():
    config = run.load()
    every = evaluation.intervals(config)
    total = config_check.total_steps(config)
    curve = [name for name, n in every.items() if n and total // n >= 20]
    if config.data.name == 'imagenet2012':
      assert curve == ['minival'], (run.name, every)
      assert every['imagenet_c'] == 0 and 'minival' not in config.eval_sets, (run.name, every)
      assert all(0 < every[s] < total for s in config.eval_sets if s != 'imagenet_c'), (run.name, every)
    else:
      assert curve == ['test'], (run.name, every)


# --- progress (point 4) ----------------------------------------------------------------------------------


class _Clock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


def test_throughput_and_eta_leave_out_compilation_and_evaluation():
  from rsam.training import progress
  clock, lines = _Clock(), []
  meter = progress.Meter(clock=clock, print_fn=lambda text, flush: lines.append(text))
  assert meter.window() == (0, 0.0)
  meter.compiling()
  clock.t += 60.0  # the compiling first step
  meter.compiled({'loss': 0.0}, 1)
  assert lines == ['compiling the train step (the first step waits for XLA)...',
                   'compiled and ran step 1 in 60.0s; throughput and ETA leave it out']
  for _ in range(9):  # steps 2..10 at 2 s each, with a 30 s evaluation in between
    clock.t += 2.0
    meter.step()
  with meter.paused():
    clock.t += 30.0
  steps, seconds = meter.window()
  assert (steps, seconds) == (9, 18.0)
  img_per_s, text = progress.rate_text(steps, seconds, batch_size=64, remaining=90)
  assert img_per_s == 32.0 and text == '32 img/s | ETA 3m00s'  # 90 steps x 2 s, not (60 + 18 + 30) / 10
  assert progress.rate_text(0, 0.0, batch_size=64, remaining=5)[0] is None
  assert meter.window() == (0, 0.0)


def test_profile_steps_are_checked():
  import ml_collections
  from rsam.errors import ConfigError
  from rsam.training import progress
  config = lambda first, last: ml_collections.ConfigDict({'profile': {'first_step': first, 'last_step': last}})
  assert progress.trace_steps(config(0, 0)) is None and progress.trace_steps(config(3, 5)) == (3, 5)
  with pytest.raises(ConfigError, match='last_step=2 is before first_step=3'):
    progress.trace_steps(config(3, 2))


# --- runlocal's own root (point 3) -------------------------------------------------------------------------


def test_reproduce_runlocal_has_its_own_root(tmp_path):
  from configs import tables
  from scripts import reproduce
  root = str(tmp_path / 'runs')
  run = tables.by_name()[('3', 'vit_b16-none-rsam')]
  smoke = run.workdir(reproduce.runlocal_root(root), 0)
  os.makedirs(smoke)
  open(os.path.join(smoke, 'results.json'), 'w').close()
  done = lambda **kw: {(r.home, r.name): d for r, _, _, d in reproduce.plan('4', 1, root, **kw)}
  assert not done()[('3', 'vit_b16-none-rsam')]  # a smoke run's results.json never marks the real run done
  assert done(runlocal=True)[('3', 'vit_b16-none-rsam')]
  argv = reproduce.command(run, 0, root=root, runlocal=True)
  assert f'--workdir={smoke}' in argv and not smoke.startswith(root + '/')


# --- wandb identity (point 1) ----------------------------------------------------------------------------


def _identity(config, config_file=None):
  """The wandb identity train.py gives ``config``: the application's naming handed to the trainer."""
  from configs import tables
  from rsam.training import writers
  return writers.identity(config, tables.wandb_naming(config, config_file))


def test_wandb_identity_of_a_table_cell():
  import json
  from configs import tables
  run = tables.by_name()[('3', 'vit_b16-none-rsam')]
  config = run.load()
  config.seed = 2
  config.wandb.cell = '3/vit_b16-none-rsam'
  who = _identity(config)
  assert who['group'] == 'table3/vit_b16-none-rsam' and who['name'] == 'table3/vit_b16-none-rsam/seed2'
  assert who['tags'] == ['table3', 'table4', 'fig3a', 'fig3b', 'fig3c', 'vit_b16', 'rsam', 'imagenet2012', 'seed2']
  assert who['job_type'] == 'train'
  with open(os.path.join(ROOT, 'results', 'paper', 'table4_robustness.json')) as f:
    table4 = {(r['model'], r['optimizer'], r['eval_set']): r['mean'] for r in json.load(f)['rows']}
  assert who['summary']['paper/table4/imagenet_c/accuracy'] == pytest.approx(table4[('vit_b16', 'rsam', 'c')] / 100)
  assert who['summary']['paper/table3/validation/accuracy'] == pytest.approx(0.807)  # the paper's 80.7
  assert who['summary']['paper/fig3a/validation/accuracy'] == pytest.approx(0.807)
  assert len(who['summary']) == 7  # Table 3, five Table 4 sets, Fig. 3(a); Fig. 3(b, c) publish no numbers
  # An AdamW baseline's smoke run: the base optimizer names it; its own group, no paper numbers.
  baseline = tables.by_name()[('3', 'vit_s16-none-adamw')].load(runlocal=True)
  baseline.wandb.cell, baseline.wandb.tags = '3/vit_s16-none-adamw', ('mine',)
  who = _identity(baseline)
  assert who['tags'] == ['runlocal', 'vit_tiny', 'adamw', 'imagenet2012', 'seed0', 'mine']
  assert who['group'] == 'runlocal/table3/vit_s16-none-adamw' and who['summary'] == {}
  assert who['job_type'] == 'runlocal'
  # No cell given: a table config run by hand is found by its content; a changed one belongs to no cell.
  by_hand = tables.by_name()[('1', 'resnet18-sgd')].load()
  by_hand.seed, by_hand.wandb.enabled, by_hand.data.data_dir = 3, True, 'gs://bucket/tfds'
  assert _identity(by_hand)['name'] == 'table1/resnet18-sgd/seed3'
  by_hand.optimizer.lr = 0.2
  assert _identity(by_hand)['group'] is None and _identity(by_hand)['summary'] == {}
  assert _identity(by_hand, 'configs/cifar.py:dataset=cifar10,model=resnet18,updater=sgd')['name'] == (
      'cifar:dataset=cifar10,model=resnet18,updater=sgd/seed3')
  baseline.wandb.cell = '3/nope'
  with pytest.raises(Exception, match=r"config.wandb.cell='3/nope' is not a table cell"):
    _identity(baseline)


def test_a_smoke_run_by_hand_is_named_as_its_own_cell():
  """runlocal shrinks ResNet-18 and ResNet-50 (ViT-B/16 and ViT-S/16) to the same tiny model: the config
  names the model it stands in for, so each smoke run finds its own cell, apart from the real runs."""
  from configs import tables
  for cell in ('1/resnet18-rsam', '1/resnet50-rsam', '3/vit_b16-none-adamw', '3/vit_s16-none-adamw'):
    home, name = cell.split('/')
    config = tables.by_name()[(home, name)].load(runlocal=True)
    config.seed = 1
    with config.unlocked():
      config.data.mock_examples = 0  # the prepared dataset instead of mock data: still the cell's smoke run
    who = _identity(config)
    assert who['name'] == f'runlocal/{tables.label(home)}/{name}/seed1', cell
    assert who['job_type'] == 'runlocal' and who['summary'] == {}


def test_the_quickstart_is_named_after_its_config_file():
  from configs import quickstart
  config = quickstart.get_config()
  config.seed = 4
  assert _identity(config, 'configs/quickstart.py')['name'] == 'quickstart/seed4'
  assert _identity(config, 'configs/quickstart.py')['group'] is None


def test_every_cell_and_its_smoke_run_have_their_own_content():
  from configs import tables
  keys = tables._cells_by_key()  # pylint: disable=protected-access
  assert len(keys) == 2 * len(tables.all_runs())
  assert sorted(smoke for _, smoke in keys.values()) == [False] * len(tables.all_runs()) + [True] * len(
      tables.all_runs())


def test_train_py_hands_the_cell_of_a_config_by_hand_to_the_trainer(tmp_path):
  """train.py (the application) names the run; the trainer gets the names as an argument."""
  code = (
      'import json, runpy, sys\n'
      'from rsam.training import loop\n'
      'def fake(config, workdir, **kw):\n'
      '  print("NAMING " + json.dumps(kw["wandb_naming"], sort_keys=True))\n'
      'loop.train_and_evaluate = fake\n'
      f'sys.argv = ["train.py", "--config", "configs/cifar.py:dataset=cifar10,model=resnet50,updater=rsam,'
      f'runlocal=1", "--config.seed=2", "--workdir", {str(tmp_path / "w")!r}]\n'
      'runpy.run_path("train.py", run_name="__main__")\n')
  env = dict(os.environ, WANDB_MODE='offline', TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (line,) = [l for l in proc.stdout.splitlines() if l.startswith('NAMING ')]
  naming = json.loads(line[len('NAMING '):])
  assert naming['name'] == 'runlocal/table1/resnet50-rsam/seed2' and naming['tags'] == ['runlocal']


def test_wandb_id_is_stored_in_the_workdir_not_derived_from_its_path(tmp_path):
  import shutil
  from rsam.training import run_folder
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  first = run_folder.wandb_id(None, workdir)
  assert run_folder.wandb_id(None, workdir) == first  # a resume appends to the same wandb run
  assert open(os.path.join(workdir, 'wandb_id')).read().strip() == first
  shutil.rmtree(workdir)
  os.makedirs(workdir)
  assert run_folder.wandb_id(None, workdir) != first  # rm -rf and a rerun at the same path: a new run
  from configs import tiny
  os.remove(os.path.join(workdir, 'wandb_id'))
  assert run_folder.wandb_id(tiny.get_config(), workdir) is None  # wandb off: no id, no file
  assert not os.path.exists(os.path.join(workdir, 'wandb_id'))


@pytest.mark.parametrize('logged_in', [False, True])
def test_wandb_without_login_or_network_is_one_error_line(logged_in, tmp_path, monkeypatch):
  """Not logged in: the line says `wandb login`. Logged in but no server (a TPU VM without internet access;
  wandb retries until its init timeout, 90 s by default, 1 here): the line says so, not `wandb login`."""
  from configs import tiny
  from rsam.errors import ConfigError
  from rsam.training import writers
  for name in ('WANDB_API_KEY', 'WANDB_SILENT'):
    monkeypatch.delenv(name, raising=False)
  if logged_in:
    monkeypatch.setenv('WANDB_API_KEY', 'a' * 40)
    monkeypatch.setenv('WANDB_INIT_TIMEOUT', '1')
  monkeypatch.setenv('WANDB_MODE', 'online')
  monkeypatch.setenv('NETRC', str(tmp_path / 'netrc'))
  monkeypatch.setenv('HOME', str(tmp_path))
  for name in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR', 'WANDB_DIR'):
    monkeypatch.setenv(name, str(tmp_path / name.lower()))
  monkeypatch.setenv('WANDB_BASE_URL', 'http://127.0.0.1:9')  # nothing listens: never the real service
  import wandb
  wandb.teardown()  # wandb's service process reads the environment when it starts: one per case
  try:
    with pytest.raises(ConfigError) as info:
      writers.make_writer(tiny.get_config(), str(tmp_path / 'work'), resume_id='x1')
  finally:
    wandb.teardown()
  message = str(info.value)
  assert '\n' not in message and 'WANDB_MODE=offline' in message, message
  assert ('`wandb login`' in message) != logged_in, message
  assert ('reaches the wandb server' in message) == logged_in, message


def test_a_gcs_workdirs_events_count_as_logged_once_copied_and_earlier_files_stay_behind(tmp_path):
  """The events copier of a gs:// workdir (here a local folder stands for the bucket): ``logged_to`` follows
  what was copied, not what was written; a file an earlier process left in the staging folder is not copied;
  a run resumed later writes only the steps after what reached the workdir."""
  from clu import metric_writers
  from rsam.training import run_folder, writers
  staging, workdir = tmp_path / 'staging', tmp_path / 'workdir'
  staging.mkdir()
  workdir.mkdir()
  (staging / 'events.out.tfevents.earlier').write_bytes(b'left by a killed process')

  def copier():
    earlier = frozenset(os.listdir(staging))
    return writers.CopiedToWorkdir(metric_writers.create_default_writer(str(staging), asynchronous=False),
                                   str(staging), str(workdir), every_secs=3600, earlier=earlier)

  segment = run_folder.Segments(str(workdir), 0, {})
  writer = segment.wrap(copier())
  writer.write_scalars(4, {'loss': 1.0})
  writer.flush()  # an hour before the next timed copy
  segment.update(4, logged=True)
  assert segment.current['logged_to'] is None and os.listdir(workdir) == [run_folder.SEGMENTS]
  writers.persist(writer)  # as before a checkpoint: copied now
  segment.update(4)
  assert segment.current['logged_to'] == 4
  copied = sorted(n for n in os.listdir(workdir) if n.startswith('events.'))
  assert len(copied) == 1 and copied[0] != 'events.out.tfevents.earlier', copied
  writer.write_scalars(8, {'loss': 0.5})
  writer.flush()
  segment.update(8, logged=True)  # step 8 is on this machine only: a resumed run must write it again
  assert segment.current['logged_to'] == 4

  written = []

  class Recorder(writers.Forwarding):
    def write_scalars(self, step, scalars):
      written.append(step)

  resumed = run_folder.Segments(str(workdir), 4, {})
  inner = copier()
  assert copied[0] in inner.earlier
  resumed_writer = resumed.wrap(Recorder(inner))
  for step in (4, 8):  # redone after a resume from the checkpoint of step 4
    resumed_writer.write_scalars(step, {'loss': 0.0})
  assert written == [8]
