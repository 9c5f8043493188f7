"""Fault-injection suite (issue #7): what a run that lasts days on preemptible machines must survive.

    python -m pytest -m faults -q                       # about 3 minutes on 2 CPU cores
    RSAM_FAULTS_SEED=123 python -m pytest -m faults -q  # replay the kill points of an earlier run
    python scripts/reliability_report.py                # runs the suite, writes results/reliability.md

One config everywhere (``_config``): configs/tiny.py (R-SAM, constant rho) with m-sharpness m=4 (12 steps
on the offline digits, 8 fake CPU devices from conftest), so every fault also covers the noise and group
keys that R-SAM draws per step and per group. Compilation dominates, so the
module turns on JAX's persistent compilation cache (a fresh folder per session, shared with the
subprocesses through JAX_COMPILATION_CACHE_DIR): the step compiles once for the whole suite. Everything
that does not need a separate process runs ``train_and_evaluate`` in-process; subprocesses are used for
kill -9 / SIGTERM (one chain of processes on one workdir) and for the command line's exit code and stderr.

Hooks, all from the outside: a NaN/Inf is injected by wrapping ``data.make_train_iterator`` (the batch of a
chosen step gets a non-finite pixel); "before any work" is proven by replacing ``jax.jit``, the data
iterators and the dataset readers with functions that fail; 1 device is a 1-device mesh
(``loop.make_mesh`` patched) in the same process.

The run's folder (rsam/training/run_folder.py, issue #25): records ahead of the checkpoints, the identity
without config.json, a folder emptied under the run, a crash between the events and segments.json, cache
folders that cannot be used; SIGHUP in the kill chain and a stdout whose reader went away, as real
processes. The gs:// faults through a proxy are in tests/test_gcs.py, the lease's in tests/test_lease.py.

Facts each test establishes are collected in ``REPORT`` and, when RSAM_FAULTS_REPORT names a file, written
there as JSON for scripts/reliability_report.py.
"""
import concurrent.futures
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.faults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = int(os.environ.get('RSAM_FAULTS_SEED', random.SystemRandom().randrange(10**6)))
REPORT = {'seed': SEED}
TOTAL_STEPS = 12

# A config file for the subprocesses: the same run as _config(), checkpointing and logging every step.
_SUBPROCESS_CONFIG = '''
from configs import tiny


def get_config():
  c = tiny.get_config('rsam')
  c.updater.m = 4
  c.checkpoint_every_steps = 1
  c.log_every_steps = 1
  return c
'''


def _config(**overrides):
  from configs import tiny
  c = tiny.get_config('rsam')
  c.updater.m = 4
  return _config_from(c, overrides)


def _config_from(c, overrides):
  for key, value in overrides.items():
    node, *path = [c] + key.split('.')
    for name in path[:-1]:
      node = node[name]
    with node.ignore_type():
      node[path[-1]] = value
  return c


# ---------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope='module', autouse=True)
def compile_cache(tmp_path_factory):
  """JAX's persistent compilation cache, in-process and for the subprocesses, for this module only."""
  from jax.experimental.compilation_cache import compilation_cache
  path = str(tmp_path_factory.mktemp('jax_cache'))
  settings = {'jax_compilation_cache_dir': path, 'jax_persistent_cache_min_compile_time_secs': 0,
              'jax_persistent_cache_min_entry_size_bytes': -1}
  before = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()  # an earlier compile may have decided "no cache" for the process
  yield path
  for name, value in before.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  if os.environ.get('RSAM_FAULTS_REPORT'):
    with open(os.environ['RSAM_FAULTS_REPORT'], 'w') as f:
      json.dump(REPORT, f, indent=2, default=str)


def _env(cache_dir):
  env = dict(os.environ)
  env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1', WANDB_MODE='disabled', TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS=os.environ.get('XLA_FLAGS', '--xla_force_host_platform_device_count=8'))
  return env


def _train(config, workdir, **kwargs):
  from rsam.training import loop
  return loop.train_and_evaluate(config, str(workdir), **kwargs)


_TARGET = []


def _target():
  """A train state of _config() on the 8-device mesh: the restore target (built once)."""
  from rsam.training import train_step
  if not _TARGET:
    _TARGET.append(train_step.build(_config(), train_step.make_mesh()).init_state())
  return _TARGET[0]


def _states(workdir, steps):
  """{step: train state of that checkpoint in ``workdir``, as numpy leaves}."""
  from rsam.training import checkpointing
  ckpt = checkpointing.Checkpointer(str(workdir), every_steps=1, max_to_keep=None, asynchronous=False)
  out = {}
  try:
    for step in steps:
      got, state = ckpt.restore(step, _target())
      assert got == step
      out[step] = jax.tree.map(np.asarray, jax.device_get(state))
  finally:
    ckpt.close()
  return out


def _state(workdir, step):
  return _states(workdir, [step])[step]


def _assert_states_equal(a, b):
  paths_a, leaves_a = zip(*jax.tree_util.tree_flatten_with_path(a)[0])
  paths_b, leaves_b = zip(*jax.tree_util.tree_flatten_with_path(b)[0])
  assert paths_a == paths_b
  for path, x, y in zip(paths_a, leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  return len(leaves_a)


def _steps(workdir):
  directory = os.path.join(str(workdir), 'checkpoints')
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def _hashes(directory):
  """{relative path: sha256} of every file under ``directory``."""
  out = {}
  for path in sorted(glob.glob(os.path.join(directory, '**'), recursive=True)):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _checkpoint_hashes(workdir, steps):
  return {s: _hashes(os.path.join(str(workdir), 'checkpoints', str(s))) for s in steps}


def _train_scalars(workdir):
  """{(step, tag): value} of the train/* scalars in the TensorBoard events (timings left out)."""
  import tensorflow as tf
  out = {}
  for path in sorted(glob.glob(os.path.join(str(workdir), 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag.startswith('train/') and 'per_s' not in v.tag:
          value = tf.make_ndarray(v.tensor) if v.HasField('tensor') else v.simple_value
          out[(event.step, v.tag)] = float(value)
  return out


class _NoWork:
  """Patches jax.jit, the data iterators and the dataset readers to fail: a config error must come first."""

  def __init__(self, monkeypatch):
    from data import sources
    from rsam.training import loop

    def fail(*args, **kwargs):
      raise AssertionError('compilation or data loading started before the config error')

    def jit(*args, **kwargs):  # wrapping a function is no work; calling the result (compiling) is
      return fail
    monkeypatch.setattr(jax, 'jit', jit)
    for module, name in ((loop.data, 'make_train_iterator'), (loop.data, 'make_eval_sets'),
                         (sources, '_digits_splits'), (sources, 'tfds_builder'), (sources, 'tfds_read')):
      monkeypatch.setattr(module, name, fail)


# Bookkeeping fields of the reference run (not part of the run's identity, nor of the compiled step).
EVERY_STEP = dict(checkpoint_every_steps=1, keep_checkpoints=TOTAL_STEPS)


@pytest.fixture(scope='module')
def reference(request, compile_cache, tmp_path_factory):
  """An uninterrupted run of _config(): its workdir (a checkpoint of every step), results and final state.

  The subprocess work (kill chain, command line) needs nothing else, so it starts here, in a background
  thread, and runs on the second core while the in-process tests run; its tests collect the results."""
  workdir = tmp_path_factory.mktemp('reference')
  start = time.time()
  results = _train(_config(**EVERY_STEP), workdir)
  REPORT['reference_run_s'] = round(time.time() - start, 1)
  assert _steps(workdir) == list(range(1, TOTAL_STEPS + 1))
  ref = {'workdir': workdir, 'results': results, 'state': _state(workdir, TOTAL_STEPS)}
  _start_background(request, compile_cache, ref, tmp_path_factory)
  return ref


def _copy_run(reference, tmp_path, name='run'):
  workdir = tmp_path / name
  shutil.copytree(reference['workdir'], workdir)
  return workdir


# ---------------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_twice_gives_identical_metrics_and_parameters(reference, tmp_path):
  results = _train(_config(), tmp_path / 'again')
  assert results['eval'] == reference['results']['eval']
  scalars, ref_scalars = _train_scalars(tmp_path / 'again'), _train_scalars(reference['workdir'])
  assert scalars and scalars == ref_scalars
  leaves = _assert_states_equal(_state(tmp_path / 'again', TOTAL_STEPS), reference['state'])
  REPORT['same_seed'] = {'train_scalars_compared': len(scalars), 'state_leaves_bit_identical': leaves}


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - y))) for x, y in zip(jax.tree.leaves(a),
                                                                                  jax.tree.leaves(b)))


def test_one_and_eight_devices_agree_for_the_same_m(reference, tmp_path, monkeypatch, capsys):
  """Same m=4 groups and noise keys on 1 and 8 devices; only the order of the float sums that average the
  groups differs (a scan over 8 groups on one device; a mean per device, then pmean). After one step the two
  states agree to float precision; over 12 steps this tiny config amplifies any such difference (R-SAM with
  BatchNorm over 4 examples, lr 0.05), which the control shows: the 8-device run with its initial
  parameters scaled by 1 + 1e-7 drifts as far."""
  from jax.sharding import Mesh
  from rsam.training import loop
  with monkeypatch.context() as m:
    m.setattr(loop, 'make_mesh', lambda config=None: Mesh(np.asarray(jax.devices()[:1]), ('data',)))
    results = _train(_config(**EVERY_STEP), tmp_path / 'one_device')
  assert ', 1 devices' in capsys.readouterr().out
  steps = (1, 2, 3, 6, TOTAL_STEPS)
  ones, eights = _states(tmp_path / 'one_device', steps), _states(reference['workdir'], steps)
  drift = {step: _max_diff(ones[step]['params'], eights[step]['params']) for step in steps}
  identical = drift[1] == 0
  for (p, x), y in zip(jax.tree_util.tree_flatten_with_path(ones[1])[0], jax.tree.leaves(eights[1])):
    # float32 sums of the same terms in another order: an error relative to the leaf's scale
    scale = float(np.max(np.abs(y))) if np.size(y) else 0.0
    assert np.max(np.abs(np.asarray(x, np.float64) - y), initial=0) <= 1e-4 * scale + 1e-7, \
        f'step 1 {jax.tree_util.keystr(p)}'
  from rsam.training import train_step
  real_init = train_step.init_variables

  def perturbed_init(*args, **kwargs):
    params, model_state = real_init(*args, **kwargs)
    return jax.tree.map(lambda x: x * (1 + 1e-7), params), model_state
  monkeypatch.setattr(train_step, 'init_variables', perturbed_init)
  _train(_config(), tmp_path / 'perturbed')
  control = _max_diff(_state(tmp_path / 'perturbed', TOTAL_STEPS)['params'], reference['state']['params'])
  assert drift[1] < 1e-5
  # The final difference is of the size a 1e-7 perturbation grows to: sensitivity, not a device effect.
  assert drift[TOTAL_STEPS] < 20 * max(control, 1e-6), (drift, control)
  REPORT['devices'] = {'max_abs_param_diff_by_step': drift, 'bit_identical_after_step_1': identical,
                       'control_8_devices_init_times_1_plus_1e-7_step_12': control,
                       'eval_1_device': results['eval'], 'eval_8_devices': reference['results']['eval']}


# ---------------------------------------------------------------------------------------------------------
# Bad configurations: a one-line error naming the field and the fix, before any compilation or data loading

BAD_CONFIGS = [  # (what, overrides, text the message must contain)
    ('unknown model', {'model.name': 'resnet_huge'}, ['config.model.name', 'choose one of']),
    ('unknown updater', {'updater.name': 'rsamm'}, ['config.updater.name', 'choose one of']),
    ('unknown dataset', {'data.name': 'cifar11'}, ['data.name', 'valid names']),
    ('unknown optimizer', {'optimizer.name': 'adam'}, ['config.optimizer.name', 'choose one of']),
    ('unknown schedule', {'schedule.name': 'cosinus'}, ['config.schedule.name', 'choose one of']),
    ('batch_size of the wrong type', {'batch_size': 'x'}, ['config.batch_size', 'must be']),
    ('lr of the wrong type', {'optimizer.lr': '0.1'}, ['config.optimizer.lr', 'must be']),
    ('lr not finite', {'optimizer.lr': float('nan')}, ['config.optimizer.lr', 'finite']),
    ('negative rho', {'updater.rho': -0.05}, ['config.updater.rho', '>= 0']),
    ('negative gamma', {'updater.gamma': -1e-3}, ['config.updater.gamma', '>= 0']),
    ('negative lambda', {'updater.lam': -2.0}, ['config.updater.lam', '>= 0']),
    ('rho tied to a constant lr', {'updater.rho_schedule': 'lr_tied', 'schedule.name': 'constant'},
     ["rho_schedule='constant'", 'lr_max']),
    ('m does not divide the per-device batch', {'updater.m': 3}, ['config.updater.m', 'per-device batch 4']),
    ('grad_accum_steps does not divide', {'updater.m': None, 'grad_accum_steps': 3},
     ['config.grad_accum_steps', 'divisor']),
    ('batch not divisible by the devices', {'batch_size': 36}, ['config.batch_size', 'multiple of 8']),
    ('eval set without its dataset', {'data.name': 'cifar10', 'eval_sets': ('imagenet_real',)},
     ["'imagenet_real'", 'cifar10', 'valid']),
    ('eval_sets a string', {'eval_sets': 'test'}, ['config.eval_sets', "('test',)"]),
    ('warm-up longer than the run', {'schedule.warmup_steps': 12}, ['config.schedule.warmup_steps', 'lower']),
    ("'step' schedule without boundaries", {'schedule.name': 'step'}, ['config.schedule.step_boundaries']),
    ('optimizer field misspelt', {'optimizer.weight_decy': 0.0}, ['config.optimizer.weight_decy', 'remove']),
    ('unknown model override', {'model.overrides': {'widht': 2}}, ['config.model.overrides', 'widht']),
    ('non-finite updater field', {'updater.rho': float('inf')}, ['config.updater.rho', 'finite']),
    ('unknown nan_policy', {'nan_policy': 'ignore'}, ['config.nan_policy', "'skip'"]),
    ('total_steps of the wrong type', {'total_steps': '12'}, ['config.total_steps', 'int']),
    ('total_steps zero', {'total_steps': 0}, ['config.total_steps=0', '>= 1', 'num_epochs']),
    ('no limit on skipped steps', {'nan_policy': 'skip', 'max_consecutive_skipped_steps': 0},
     ['config.max_consecutive_skipped_steps', '>= 1']),
]


@pytest.mark.parametrize('what,overrides,expected', BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_one_line_before_any_work(what, overrides, expected, tmp_path, monkeypatch):
  from data import DataError
  from rsam.errors import ConfigError
  config = _config(**overrides)
  _NoWork(monkeypatch)
  start = time.time()
  with pytest.raises((ConfigError, DataError)) as info:
    _train(config, tmp_path / 'work')
  seconds = time.time() - start
  message = str(info.value)
  assert '\n' not in message, message
  for text in expected:
    assert text in message, message
  assert not (tmp_path / 'work').exists(), 'a bad config wrote into the workdir'
  assert seconds < 2, seconds
  REPORT.setdefault('bad_configs', {})[what] = {'error': f'{type(info.value).__name__}: {message}',
                                                 'seconds': round(seconds, 3)}


def test_unwritable_workdir_is_one_line_error(tmp_path, monkeypatch):
  from rsam.errors import ConfigError
  (tmp_path / 'a_file').write_text('')
  _NoWork(monkeypatch)
  with pytest.raises(ConfigError) as info:
    _train(_config(), tmp_path / 'a_file' / 'work')
  message = str(info.value)
  assert '\n' not in message and '--workdir' in message and 'writable' in message, message
  REPORT.setdefault('bad_configs', {})['unwritable workdir'] = {'error': f'ConfigError: {message}'}


# ---------------------------------------------------------------------------------------------------------
# A workdir of a different run


def test_resume_into_a_different_config_is_refused_unless_forced(reference, tmp_path, monkeypatch, capsys):
  from rsam.errors import ConfigError
  workdir = _copy_run(reference, tmp_path)
  other = _config(**{'data.label_noise': 0.1})  # same compiled step, a different run
  with monkeypatch.context() as m:
    _NoWork(m)
    with pytest.raises(ConfigError) as info:
      _train(other, workdir)
  message = str(info.value)
  assert '\n' not in message and 'data.label_noise' in message and '--force_resume' in message, message
  # Bookkeeping fields (cadence, eval sets, storage deadline) may change on resume.
  from rsam.training import run_folder
  run_folder.check(_config(checkpoint_every_steps=2, log_every_steps=1, storage_retry_s=20.0), str(workdir))
  capsys.readouterr()
  _train(other, workdir, force_resume=True)
  assert f'resumed from step {TOTAL_STEPS}' in capsys.readouterr().out
  with open(workdir / 'config.json') as f:
    assert json.load(f)['data']['label_noise'] == 0.1
  REPORT['identity'] = {'refused': message, 'forced': 'resumed from step 12, config.json rewritten'}


def test_start_that_failed_before_any_checkpoint_does_not_lock_the_workdir(tmp_path, monkeypatch):
  """A start that fails after writing config.json but before any checkpoint (here: CIFAR-10 not prepared;
  also a crash or a kill during compilation) must not lock the workdir to that config; a run with checkpoints
  whose config.json is half-written names the file and the way out."""
  from data import DataError
  from rsam.errors import ConfigError
  from rsam.training import run_folder
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'no_tfds_data'))
  with pytest.raises(DataError, match='not prepared'):
    _train(_config(**{'data.name': 'cifar10'}), tmp_path / 'work')
  assert (tmp_path / 'work' / 'config.json').exists() and not _steps(tmp_path / 'work')
  run_folder.open(_config(), str(tmp_path / 'work')).release()  # the corrected config: accepted
  with open(tmp_path / 'work' / 'config.json') as f:
    assert json.load(f)['data']['name'] == 'digits'
  os.makedirs(tmp_path / 'work' / 'checkpoints' / '4')
  (tmp_path / 'work' / 'config.json').write_text('{"seed": 0, "data": {')  # half-written
  with pytest.raises(ConfigError) as info:
    run_folder.check(_config(), str(tmp_path / 'work'))
  message = str(info.value)
  assert '\n' not in message and 'config.json' in message and '--force_resume' in message, message
  REPORT['late_failure'] = {'first_error': 'DataError: CIFAR-10 not prepared (config.json written)',
                            'corrected_config': 'accepted', 'half_written_config_json': message}


@pytest.mark.parametrize('saved', ['[1, 2]', '{"seed": 0, "data": "digits"}', '"a string"'])
def test_config_json_of_the_wrong_shape_is_one_line(saved, tmp_path):
  """A config.json that parses but is not a config (a list, a field of the wrong type): one line naming the
  file and --force_resume, which rewrites it."""
  from rsam.errors import ConfigError
  from rsam.training import run_folder
  os.makedirs(tmp_path / 'work' / 'checkpoints' / '4')
  (tmp_path / 'work' / 'config.json').write_text(saved)
  with pytest.raises(ConfigError) as info:
    run_folder.check(_config(), str(tmp_path / 'work'))
  message = str(info.value)
  assert '\n' not in message and 'config.json' in message and '--force_resume' in message, message
  run_folder.open(_config(), str(tmp_path / 'work'), force_resume=True).release()
  with open(tmp_path / 'work' / 'config.json') as f:
    assert json.load(f)['data']['name'] == 'digits'
  REPORT.setdefault('config_json_shape', {})[saved] = message


# ---------------------------------------------------------------------------------------------------------
# The run's folder (rsam/training/run_folder.py): records ahead of the checkpoints, the identity without
# config.json, a folder emptied under the run, the dashboard after a crash between its two records


def test_records_ahead_of_the_checkpoints_are_refused_and_start_over_archives_them(reference, tmp_path,
                                                                                   monkeypatch):
  """checkpoints/ deleted under a run whose records say it reached step 12: the same command used to train
  from step 0 again, duplicate every TensorBoard point and add a second "finished" segment. Now one line
  (the step the records reached, where the checkpoints went, the flag), nothing written; --start_over
  archives the old records and trains from 0 with nothing mixed."""
  from rsam.errors import ConfigError
  workdir = _copy_run(reference, tmp_path)
  shutil.rmtree(workdir / 'checkpoints')
  # As a killed run leaves it: no results.json, its segment 'running'; only saved_to says what was saved.
  os.remove(workdir / 'results.json')
  segments = json.loads((workdir / 'segments.json').read_text())
  segments[-1]['ended'] = 'running'
  (workdir / 'segments.json').write_text(json.dumps(segments))
  before = _hashes(str(workdir))
  for attempt in range(2):  # the second start must be refused the same way, not restart silently
    with monkeypatch.context() as m:
      _NoWork(m)
      with pytest.raises(ConfigError) as info:
        _train(_config(**EVERY_STEP), workdir)
    message = str(info.value)
    assert '\n' not in message and f'reached step {TOTAL_STEPS}' in message, message
    assert str(workdir / 'checkpoints') in message and '--start_over' in message, message
    assert _hashes(str(workdir)) == before  # nothing written, not even the lease
  results = _train(_config(**EVERY_STEP), workdir, start_over=True)
  archived = glob.glob(str(workdir / 'archive' / '*'))
  assert len(archived) == 1, archived
  assert {'config.json', 'segments.json'} <= set(os.listdir(archived[0]))
  assert [(s['from_step'], s['ended']) for s in results['segments']] == [(0, 'finished')], results['segments']
  assert _train_scalar_counts(workdir) == _train_scalar_counts(reference['workdir'])  # each logged step once
  assert results['eval'] == reference['results']['eval']
  REPORT['records_ahead'] = message


@pytest.mark.parametrize('records', ['segments of this version', 'segments of an older version',
                                     'results.json only'])
def test_each_record_of_progress_is_checked_and_force_resume_takes_an_older_checkpoint(records, tmp_path,
                                                                                     capsys):
  """Each record that says how far a run got counts (segments.json's saved_to; an older version's segment
  that ended saved; a finished run's results.json). With an older checkpoint left, the line names it and
  --force_resume resumes from it, saying which steps are trained again. Only the check: nothing trains."""
  from rsam.errors import ConfigError
  from rsam.training import run_folder
  workdir = tmp_path / 'run'
  os.makedirs(workdir / 'checkpoints' / '4')  # a checkpoint older than the records (no manifest: older version)
  if records == 'results.json only':
    (workdir / 'results.json').write_text(json.dumps({'steps': TOTAL_STEPS}))
  else:
    segment = ({'from_step': 0, 'to_step': TOTAL_STEPS, 'saved_to': TOTAL_STEPS, 'ended': 'running'}
               if records == 'segments of this version' else
               {'from_step': 0, 'to_step': TOTAL_STEPS, 'ended': 'SIGTERM'})
    (workdir / 'segments.json').write_text(json.dumps([segment]))
  before = _hashes(str(workdir))
  with pytest.raises(ConfigError) as info:
    run_folder.check(_config(), str(workdir))
  message = str(info.value)
  where = 'results.json (a finished run)' if records == 'results.json only' else 'segments.json'
  assert f'{where} says this run reached step {TOTAL_STEPS}' in message, message
  assert 'the newest that remains is step 4: pass --force_resume' in message, message
  run_folder.check(_config(), str(workdir), force=True)
  assert f'resuming from it (--force_resume): steps 5-{TOTAL_STEPS} are trained again' in capsys.readouterr().out
  assert _hashes(str(workdir)) == before


def test_a_checkpoint_refuses_another_config_without_config_json(reference, tmp_path, monkeypatch):
  """config.json deleted, then a resume with another lr and rho: it used to continue with the new values
  and rewrite config.json. The checkpoint's manifest carries the run's identity."""
  from rsam.errors import ConfigError
  workdir = _copy_run(reference, tmp_path)
  os.remove(workdir / 'config.json')
  before = _hashes(str(workdir))
  with monkeypatch.context() as m:
    _NoWork(m)
    with pytest.raises(ConfigError) as info:
      _train(_config(**{'optimizer.lr': 0.1, 'updater.rho': 0.1}), workdir)
  message = str(info.value)
  assert '\n' not in message and 'optimizer.lr' in message and 'updater.rho' in message, message
  assert f'checkpoint {TOTAL_STEPS}' in message and '--force_resume' in message, message
  assert _hashes(str(workdir)) == before  # config.json not rewritten
  REPORT['identity_without_config_json'] = message


def test_a_folder_emptied_under_the_run_stops_it_at_its_next_save(tmp_path, monkeypatch):
  """Every file of the workdir deleted after checkpoint 4 (a bucket emptied, an rm -r): the run notices at
  its next save and stops in one line, writing no checkpoint into what is left."""
  from rsam.errors import ConfigError
  from rsam.training import loop
  workdir = tmp_path / 'run'
  real = loop.data.make_train_iterator

  def emptying(*args, start_step=0, **kwargs):
    for index, batch in enumerate(real(*args, start_step=start_step, **kwargs), start=start_step + 1):
      if index == 7:
        deadline = time.time() + 120  # checkpoint 4 finished (renamed from its temporary name), then all goes
        while not (workdir / 'checkpoints' / '4').is_dir() or glob.glob(str(workdir / 'checkpoints' / '*tmp*')):
          assert time.time() < deadline, os.listdir(workdir / 'checkpoints')
          time.sleep(0.05)
        for name in os.listdir(workdir):
          path = workdir / name
          shutil.rmtree(path) if path.is_dir() else os.remove(path)
      yield batch
  monkeypatch.setattr(loop.data, 'make_train_iterator', emptying)
  with pytest.raises(ConfigError) as info:  # run_folder.FolderChanged: exit 2
    _train(_config(checkpoint_every_steps=4), workdir)
  message = str(info.value)
  assert '\n' not in message and str(workdir / 'checkpoints' / '4') in message and 'gone' in message, message
  assert '--start_over' in message, message
  assert not _steps(workdir)  # nothing saved into the emptied folder
  REPORT['emptied'] = message


def test_a_crash_between_the_events_and_segments_json_logs_each_step_once(reference, tmp_path, monkeypatch):
  """A process that dies after its events of step 6 reached the workdir but before segments.json said so
  (the issue's one duplicated point in ten kills): the resumed run reads what the events hold."""
  from rsam.training import writers
  real, calls = writers.persist, []

  def persist_then_crash(writer):
    real(writer)
    calls.append(1)
    if len(calls) == 2:  # step 6: its events are in the workdir, segments.json not yet rewritten
      raise RuntimeError('simulated kill between the events and segments.json')
  workdir = tmp_path / 'run'
  config = _config(checkpoint_every_steps=3, log_every_steps=1)
  with monkeypatch.context() as m:
    m.setattr(writers, 'persist', persist_then_crash)
    with pytest.raises(RuntimeError, match='simulated kill'):
      _train(config, workdir)
  results = _train(config, workdir)
  first, second = results['segments']
  assert first['to_step'] > second['from_step'], results['segments']  # steps were redone
  counts = _train_scalar_counts(workdir)
  assert counts == {step: 1 for step in range(1, TOTAL_STEPS + 1)}, counts
  assert results['eval'] == reference['results']['eval']
  REPORT['events_before_segments'] = {'train_loss_writes_per_step': sorted(set(counts.values()))}


def test_an_unusable_cache_folder_is_a_warning_or_one_line(tmp_path, monkeypatch, compile_cache, capfd):
  """RSAM_CACHE_DIR under a regular file, or a read-only compilation cache: the cache is only an
  optimisation, so the run goes on without it after a warning; a gs:// run's staging folder, which it
  needs, is one error line naming RSAM_CACHE_DIR (it was a traceback)."""
  from rsam.training import compilation_cache, paths
  (tmp_path / 'a_file').write_text('')
  under_a_file = str(tmp_path / 'a_file' / 'cache')
  monkeypatch.setenv('RSAM_CACHE_DIR', under_a_file)
  read_only = tmp_path / 'read_only_cache'
  read_only.mkdir()
  how = _make_read_only(read_only)
  try:
    assert compilation_cache.enable(os.path.join(under_a_file, 'jax_compilation_cache')) == ''
    assert compilation_cache.enable(str(read_only)) == ''
  finally:
    _undo_read_only(read_only, how)
    compilation_cache.enable(compile_cache)  # the module's cache again
  err = capfd.readouterr().err
  assert err.count('warning: the compilation cache') == 2 and 'running without it' in err, err
  with pytest.raises(paths.StorageError) as info:
    paths.staging_dir('gs://BUCKET/run')
  message = str(info.value)
  assert '\n' not in message and 'RSAM_CACHE_DIR' in message and under_a_file in message, message
  REPORT['cache_folders'] = {'read-only compilation cache': f'warning, run goes on ({how})',
                             'RSAM_CACHE_DIR under a file (gs:// staging)': message}


def _make_read_only(folder):
  if os.geteuid() == 0:  # root writes through chmod: a read-only bind mount
    _mount('--bind', str(folder), str(folder))
    _mount('-o', 'remount,bind,ro', str(folder))
    return 'read-only bind mount'
  os.chmod(folder, 0o555)
  return 'chmod 555'


def _undo_read_only(folder, how):
  if how == 'read-only bind mount':
    subprocess.run(['umount', str(folder)], check=False)
  else:
    os.chmod(folder, 0o755)


# ---------------------------------------------------------------------------------------------------------
# Damaged checkpoints


def _data_files(ckpt_dir):
  return sorted(p for p in glob.glob(os.path.join(ckpt_dir, 'default', 'ocdbt.process_0', 'd', '*')))


def _truncate(path, fraction=0.5):
  with open(path, 'r+b') as f:
    f.truncate(int(os.path.getsize(path) * fraction))


def _damage_remove_data(d):
  os.remove(max(_data_files(d), key=os.path.getsize))


def _damage_truncate_data(d):
  _truncate(max(_data_files(d), key=os.path.getsize))


def _damage_truncate_metadata(d):
  _truncate(os.path.join(d, 'default', '_METADATA'))


def _damage_remove_manifest(d):
  os.remove(os.path.join(d, 'default', 'manifest.ocdbt'))


def _damage_empty_folder(d):
  shutil.rmtree(d)
  os.mkdir(d)


def _damage_remove_checksums(d):
  os.remove(os.path.join(d, 'rsam_checksums.json'))  # its siblings keep theirs: lost, not "saved before"


DAMAGES = {'data file removed': _damage_remove_data, 'data file truncated': _damage_truncate_data,
           'tree metadata truncated': _damage_truncate_metadata, 'manifest removed': _damage_remove_manifest,
           'checkpoint folder empty': _damage_empty_folder, 'checksum manifest removed': _damage_remove_checksums}


@pytest.mark.parametrize('damage', list(DAMAGES))
def test_damaged_latest_checkpoint_falls_back_to_newest_intact(damage, reference, tmp_path, capsys):
  from rsam.training import checkpointing
  workdir = _copy_run(reference, tmp_path)
  older = list(range(1, TOTAL_STEPS))
  intact = _checkpoint_hashes(workdir, older)
  latest = os.path.join(workdir, 'checkpoints', str(TOTAL_STEPS))
  DAMAGES[damage](latest)
  damaged = _hashes(latest)
  ckpt = checkpointing.Checkpointer(str(workdir), every_steps=1, max_to_keep=TOTAL_STEPS, cleanup_tmp=True)
  step, state = ckpt.restore_latest(_target())
  ckpt.close()
  assert step == 11
  _assert_states_equal(jax.tree.map(np.asarray, jax.device_get(state)), _state(reference['workdir'], 11))
  out = capsys.readouterr().out
  assert 'checkpoint 12' in out and 'damaged' in out and 'resuming from step 11' in out, out
  assert _checkpoint_hashes(workdir, older) == intact  # intact ones untouched
  assert _hashes(latest + '.damaged') == damaged  # the damaged one set aside, not deleted
  REPORT.setdefault('damage', {})[damage] = [line for line in out.splitlines() if 'damaged' in line][0]


def test_resume_after_damaged_checkpoints_ends_bit_identical(reference, tmp_path, capsys):
  """The whole restart: checkpoint 12 truncated, 11 without its manifest -> resume from 10 and finish with
  the reference's parameters; intact checkpoints never rewritten. (Interrupted saves: made by killing real
  saves in tests/test_checkpointing.py and in the kill chain below.)"""
  workdir = _copy_run(reference, tmp_path)
  ckpts = workdir / 'checkpoints'
  _damage_truncate_data(str(ckpts / '12'))
  _damage_remove_manifest(str(ckpts / '11'))
  os.remove(workdir / 'results.json')
  intact = _checkpoint_hashes(workdir, range(1, 11))
  results = _train(_config(**EVERY_STEP), workdir)
  out = capsys.readouterr().out
  assert 'checkpoint 12' in out and 'checkpoint 11' in out and 'resumed from step 10' in out, out
  assert _checkpoint_hashes(workdir, range(1, 11)) == intact
  assert os.path.isdir(ckpts / '12.damaged') and os.path.isdir(ckpts / '11.damaged')
  assert results['eval'] == reference['results']['eval']
  _assert_states_equal(_state(workdir, TOTAL_STEPS), reference['state'])
  REPORT['damage_full_restart'] = ('12 truncated + 11 without manifest: resumed from 10, final state '
                                   'bit-identical')


def test_resume_restores_into_abstract_shapes_without_computing_the_initial_state(reference, tmp_path,
                                                                                  monkeypatch, capsys):
  """A resume traces ``init_state`` for its shapes (jax.eval_shape) but never runs it: the state comes from
  the checkpoint alone."""
  import dataclasses
  from rsam.training import loop
  workdir = _copy_run(reference, tmp_path)
  os.remove(workdir / 'results.json')
  computed = []
  real_build = loop.build

  def build(config, mesh):
    run = real_build(config, mesh)

    def init_state():
      state = run.init_state()
      computed.append(not isinstance(state['step'], jax.core.Tracer))  # False: traced for its shapes
      return state
    return dataclasses.replace(run, init_state=init_state)
  monkeypatch.setattr(loop, 'build', build)
  results = _train(_config(**EVERY_STEP), workdir)
  assert f'resumed from step {TOTAL_STEPS}' in capsys.readouterr().out
  assert computed == [False], computed
  assert results['eval'] == reference['results']['eval']
  REPORT['abstract_restore'] = 'resume traced init_state once for its shapes and never ran it'


def test_no_intact_checkpoint_stops_with_one_line_and_moves_nothing(reference, tmp_path):
  from rsam.training import checkpointing
  workdir = _copy_run(reference, tmp_path)
  for step in _steps(workdir):
    _damage_truncate_data(str(workdir / 'checkpoints' / str(step)))
  before = _hashes(str(workdir / 'checkpoints'))
  for attempt in range(2):  # the second start must fail the same way, not silently start from scratch
    with pytest.raises(checkpointing.CheckpointError) as info:
      _train(_config(), workdir)
    message = str(info.value)
    assert '\n' not in message and str(workdir / 'checkpoints') in message, message
    assert _hashes(str(workdir / 'checkpoints')) == before
  REPORT['no_intact'] = message


def test_flipped_bytes_in_array_data_are_detected(reference, tmp_path, capsys):
  """One byte flipped at 5 places (one at a time) of checkpoint 12's largest array file: the checksum
  manifest written with the save catches it, 12 is set aside as damaged and the restore falls back to 11."""
  from rsam.training import checkpointing
  outcomes, expected = [], _state(reference['workdir'], 11)
  for i, fraction in enumerate((0.1, 0.3, 0.5, 0.7, 0.9)):
    workdir = tmp_path / f'flip{i}'
    for step in (11, 12):
      shutil.copytree(reference['workdir'] / 'checkpoints' / str(step), workdir / 'checkpoints' / str(step))
    path = max(_data_files(str(workdir / 'checkpoints' / '12')), key=os.path.getsize)
    with open(path, 'r+b') as f:
      f.seek(int(os.path.getsize(path) * fraction))
      byte = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([byte[0] ^ 0xFF]))
    ckpt = checkpointing.Checkpointer(str(workdir), every_steps=1, max_to_keep=TOTAL_STEPS)
    step, state = ckpt.restore_latest(_target())
    ckpt.close()
    out = capsys.readouterr().out
    if step == 11:
      assert 'ChecksumError' in out and os.path.isdir(workdir / 'checkpoints' / '12.damaged'), out
      _assert_states_equal(jax.tree.map(np.asarray, jax.device_get(state)), expected)
      outcomes.append('detected')
    else:
      same = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(jax.device_get(state)),
                                                      jax.tree.leaves(reference['state'])))
      outcomes.append('restored, identical' if same else 'restored with wrong values, no error')
  REPORT['flipped_byte'] = {'outcomes': outcomes, 'message': [l for l in out.splitlines() if 'damaged' in l]}
  assert all(o == 'detected' for o in outcomes), outcomes


# ---------------------------------------------------------------------------------------------------------
# Interrupted saves: a real save (a subprocess) SIGKILLed while orbax writes it, locally and on gs://

# Saves a ~48 MB state again and again (one step each, every save finished before the next starts) and
# prints each finished step; the parent kills it while a later save is being written.
_SAVER = '''
import sys
import jax, numpy as np
from rsam.training import checkpointing
ckpt = checkpointing.Checkpointer(sys.argv[1], every_steps=1, max_to_keep=None)
state = {f'w{i}': jax.device_put(np.full((1_500_000,), i, np.float32)) for i in range(8)}
for step in range(1, 200):
  ckpt.save(step, state)
  ckpt.wait()
  print(step, flush=True)
'''


def _kill_during_a_save(workdir: str, unfinished, env=None, timeout=240):
  """Runs _SAVER on ``workdir`` and SIGKILLs it as soon as ``unfinished()`` (a listing of what orbax has
  written) shows a save in progress after a first finished one; returns that listing."""
  proc = subprocess.Popen([sys.executable, '-c', _SAVER, workdir], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True,
                          env=dict(env or os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
                                   XLA_FLAGS='--xla_force_host_platform_device_count=1'))
  try:
    assert proc.stdout.readline().strip() == '1'  # one save finished: the kill lands in a later one
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
      seen = unfinished()
      if seen:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return seen
      time.sleep(0.002)
    raise AssertionError(f'no save in progress was seen (exit code {proc.poll()})')
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def _files(folder):
  out = {}
  for base, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(base, name), 'rb') as f:
        out[os.path.relpath(os.path.join(base, name), folder)] = f.read()
  return out


def test_a_save_killed_locally_is_removed_when_the_trainer_opens_the_directory(tmp_path, capsys):
  """orbax 0.12 writes a save into ``<step>.orbax-checkpoint-tmp`` and renames it when finished."""
  from rsam.training import checkpointing
  directory = tmp_path / 'checkpoints'
  leftovers = _kill_during_a_save(
      str(tmp_path), lambda: [n for n in os.listdir(directory) if not n.isdigit()] if directory.exists() else [])
  leftovers = [n for n in os.listdir(directory) if not n.isdigit()]  # what the kill really left
  assert leftovers, os.listdir(directory)
  finished = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  before = {s: _files(directory / str(s)) for s in finished}
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, max_to_keep=None, cleanup_tmp=True)
  try:
    assert sorted(os.listdir(directory)) == [str(s) for s in finished], (leftovers, os.listdir(directory))
    assert {s: _files(directory / str(s)) for s in finished} == before
    step, state = ckpt.restore_latest(checkpointing.abstract_state(
        {f'w{i}': jax.ShapeDtypeStruct((1_500_000,), np.float32) for i in range(8)}))
  finally:
    ckpt.close()
  assert step == finished[-1] and float(state['w7'][0]) == 7.0
  out = capsys.readouterr().out
  assert all(f'removed {directory / n}' in out for n in leftovers), (leftovers, out)
  REPORT['interrupted_save_local'] = {'left_by_the_kill': leftovers, 'finished_kept': finished}


def test_a_save_killed_on_gcs_is_removed_when_the_trainer_opens_the_directory(gcs, tmp_path):
  """On gs:// orbax writes a save in place and marks it finished with ``commit_success.txt`` (object
  stores have no atomic rename): an unfinished save is a step folder without it."""
  bucket = 'killed-save'
  gcs.create_bucket(bucket)
  prefix = 'run/checkpoints/'

  def unfinished():
    names = gcs.objects(bucket, prefix)
    steps = {n[len(prefix):].split('/')[0] for n in names}
    return sorted(s for s in steps if f'{prefix}{s}/commit_success.txt' not in names)

  env = gcs.env()
  leftovers = _kill_during_a_save(f'gs://{bucket}/run', unfinished, env=env)
  assert leftovers and all(s.isdigit() for s in leftovers), leftovers
  finished = sorted({n[len(prefix):].split('/')[0] for n in gcs.objects(bucket, prefix)} - set(unfinished()))
  assert finished
  before = {n: gcs.read(bucket, n) for n in gcs.objects(bucket, prefix)
            if n[len(prefix):].split('/')[0] in finished}
  # The cleanup runs in a subprocess: the emulator's address reaches gcsfs and tensorstore at import time.
  opener = ('import sys; from rsam.training import checkpointing; checkpointing.Checkpointer(sys.argv[1], '
            'every_steps=1, max_to_keep=None, cleanup_tmp=True).close()')
  proc = subprocess.run([sys.executable, '-c', opener, f'gs://{bucket}/run'], cwd=ROOT, capture_output=True,
                        text=True, timeout=240, env=dict(env, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert unfinished() == [], (leftovers, proc.stdout, proc.stderr[-2000:])
  assert {n: gcs.read(bucket, n) for n in gcs.objects(bucket, prefix)} == before
  assert all(f'removed gs://{bucket}/{prefix}{s}' in proc.stdout for s in leftovers), proc.stdout
  REPORT['interrupted_save_gcs'] = {'left_by_the_kill': [f'{s}/ without {"commit_success.txt"}'
                                                         for s in leftovers], 'finished_kept': finished}


# ---------------------------------------------------------------------------------------------------------
# NaN / Inf


def _inject(monkeypatch, bad_steps):
  """Wraps the train iterator: the batch of step s (1-based) in ``bad_steps`` gets one non-finite pixel."""
  from rsam.training import loop
  real = loop.data.make_train_iterator

  def make_train_iterator(*args, start_step=0, **kwargs):
    for index, batch in enumerate(real(*args, start_step=start_step, **kwargs), start=start_step + 1):
      if index in bad_steps:
        batch = dict(batch, image=np.array(batch['image'], copy=True))
        batch['image'][0, 0, 0, 0] = bad_steps[index]
      yield batch
  monkeypatch.setattr(loop.data, 'make_train_iterator', make_train_iterator)


def test_nan_with_policy_stop_names_step_and_keeps_last_good_checkpoint(reference, tmp_path, monkeypatch):
  from rsam.training import config_check
  _inject(monkeypatch, {6: np.nan})
  config = _config(checkpoint_every_steps=2)  # step 6 is a checkpoint step: it must not be saved
  with pytest.raises(config_check.NonFiniteError) as info:
    _train(config, tmp_path / 'nan')
  message = str(info.value)
  assert '\n' not in message and 'at step 6' in message and 'loss' in message, message
  assert max(_steps(tmp_path / 'nan')) == 4
  _assert_states_equal(_state(tmp_path / 'nan', 4), _state(reference['workdir'], 4))
  REPORT['nan_stop'] = message


def test_nan_and_inf_with_policy_skip_drop_those_steps(tmp_path, monkeypatch, capsys):
  _inject(monkeypatch, {3: np.inf, 7: np.nan})
  results = _train(_config(nan_policy='skip'), tmp_path / 'skip')
  out = capsys.readouterr().out
  assert results['skipped_steps'] == [3, 7]
  assert 'skipped step 3' in out and 'skipped step 7' in out, out
  state = _state(tmp_path / 'skip', TOTAL_STEPS)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))
  REPORT['nan_skip'] = {'skipped_steps': results['skipped_steps'], 'eval': results['eval']}


def test_nan_skip_stops_after_too_many_non_finite_steps_in_a_row(reference, tmp_path, monkeypatch):
  """lr = 1e6 makes every step non-finite: with nan_policy='skip' the run used to skip them all and report
  chance accuracy. Here steps 3-12 are non-finite; the limit (3) stops it at step 5, as 'stop' would."""
  from rsam.training import config_check
  _inject(monkeypatch, {s: np.nan for s in range(3, TOTAL_STEPS + 1)})
  with pytest.raises(config_check.NonFiniteError) as info:
    _train(_config(nan_policy='skip', max_consecutive_skipped_steps=3, checkpoint_every_steps=2),
           tmp_path / 'skip')
  message = str(info.value)
  assert '\n' not in message and '3 non-finite steps in a row (steps 3-5' in message, message
  assert not (tmp_path / 'skip' / 'results.json').exists()
  _assert_states_equal(_state(tmp_path / 'skip', 2), _state(reference['workdir'], 2))
  REPORT['nan_skip_limit'] = message


def _train_scalar_counts(workdir):
  """{(step, tag): how many times it was written} over every events file, for train/loss."""
  import tensorflow as tf
  counts = {}
  for path in sorted(glob.glob(os.path.join(str(workdir), 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == 'train/loss':
          counts[event.step] = counts.get(event.step, 0) + 1
  return counts


def test_resumed_run_records_every_segment_and_logs_redone_steps_once(reference, tmp_path, monkeypatch):
  """A process that dies after logging step 6 (its last checkpoint: 4), then the same command: steps 5 and 6
  run twice but are on the dashboard once; results.json lists both segments and their total wall time."""
  from rsam.training import loop
  real = loop.data.make_train_iterator

  def crashing(*args, start_step=0, **kwargs):
    for index, batch in enumerate(real(*args, start_step=start_step, **kwargs), start=start_step + 1):
      if index == 7:
        raise RuntimeError('simulated crash')
      yield batch
  workdir = tmp_path / 'run'
  config = _config(checkpoint_every_steps=4, log_every_steps=1)
  with monkeypatch.context() as m:
    m.setattr(loop.data, 'make_train_iterator', crashing)
    with pytest.raises(RuntimeError, match='simulated crash'):
      _train(config, workdir)
  results = _train(config, workdir)
  first, second = results['segments']
  assert (first['from_step'], first['to_step'], first['ended']) == (0, 6, 'running'), first
  assert (second['from_step'], second['to_step'], second['ended']) == (4, TOTAL_STEPS, 'finished'), second
  for segment in (first, second):
    assert segment['wall_time_s'] > 0 and segment['hardware']['num_devices'] == len(jax.devices())
  assert results['total_wall_time_s'] == pytest.approx(first['wall_time_s'] + second['wall_time_s'], abs=0.01)
  counts = _train_scalar_counts(workdir)
  assert counts == {step: 1 for step in range(1, TOTAL_STEPS + 1)}, counts
  assert results['eval'] == reference['results']['eval']
  REPORT['segments'] = {'segments': [{k: v for k, v in s.items() if k != 'hardware'} for s in results['segments']],
                        'train_loss_writes_per_step': sorted(set(counts.values()))}


# ---------------------------------------------------------------------------------------------------------
# Signals after the last step: during the final checkpoint and during the final evaluation (real signals sent
# to this process; the test's own SIGTERM handler catches any that the run does not)


@pytest.fixture
def sigterm_guard():
  caught = []
  previous = signal.signal(signal.SIGTERM, lambda *_: caught.append(1))
  yield caught
  signal.signal(signal.SIGTERM, previous)


def _sigterm_on_first_call(monkeypatch, owner, name):
  real = getattr(owner, name)
  sent = []

  def wrapper(*args, **kwargs):
    if not sent:
      sent.append(1)
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.1)  # the handler runs here, in this thread, at the next bytecode
    return real(*args, **kwargs)
  monkeypatch.setattr(owner, name, wrapper)


@pytest.mark.parametrize('during', ['final checkpoint', 'final evaluation'])
def test_sigterm_after_the_last_step_completes_the_checkpoint_and_stops(during, reference, tmp_path, monkeypatch,
                                                                        sigterm_guard, capsys):
  from rsam.training import checkpointing, evaluation, loop
  if during == 'final checkpoint':  # the first close of the run is the final checkpoint's
    _sigterm_on_first_call(monkeypatch, checkpointing.Checkpointer, 'close')
  else:
    _sigterm_on_first_call(monkeypatch, evaluation.Evaluator, 'run')
  workdir = tmp_path / 'run'
  with pytest.raises(loop.Preempted) as info:
    _train(_config(), workdir)
  message = str(info.value)
  assert info.value.exit_code == 143 and '\n' not in message, message
  assert message.startswith('SIGTERM after the last step (12)') and 'rerun' in message, message
  assert not sigterm_guard and not (workdir / 'results.json').exists()
  assert not glob.glob(str(workdir / 'checkpoints' / '*tmp*'))
  _assert_states_equal(_state(workdir, TOTAL_STEPS), reference['state'])  # whole, and the right one
  monkeypatch.undo()
  capsys.readouterr()
  results = _train(_config(), workdir)  # the same command again: evaluates the final checkpoint
  assert f'resumed from step {TOTAL_STEPS}' in capsys.readouterr().out
  assert results['eval'] == reference['results']['eval']
  REPORT.setdefault('signal_after_last_step', {})[during] = message


# ---------------------------------------------------------------------------------------------------------
# Disk full, a read-only checkpoint folder: one line naming the path and the cause, the last good checkpoint
# intact, exit code 74. A real small tmpfs and a read-only bind mount when root; chmod otherwise.


def _mount(*args):
  subprocess.run(['mount', *args], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
  """A 2 MB tmpfs (one checkpoint of _config() is about 1 MB), unmounted afterwards."""
  if os.geteuid() != 0:
    pytest.skip('a small tmpfs needs root (mount); the read-only case runs without it')
  folder = tmp_path / 'small_disk'
  folder.mkdir()
  try:
    _mount('-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', str(folder))
  except (subprocess.CalledProcessError, FileNotFoundError) as e:
    pytest.skip(f'cannot mount a tmpfs here: {e}')
  yield folder
  subprocess.run(['umount', '-l', str(folder)], check=False)


def _write_failure(config, workdir, capfd):
  from rsam.training import paths
  with pytest.raises(paths.WriteFailed) as info:
    _train(config, workdir)
  message = str(info.value)
  assert info.value.exit_code == 74 and '\n' not in message, message
  assert 'Traceback' not in capfd.readouterr().err
  return message


def test_disk_full_is_one_line_and_keeps_the_last_checkpoint(reference, small_disk, capfd):
  workdir = small_disk / 'run'
  message = _write_failure(_config(checkpoint_every_steps=4), workdir, capfd)
  steps = _steps(workdir)
  assert steps and f'no space left on the device; the newest checkpoint, step {max(steps)}' in message, message
  assert f'cannot write {workdir}' in message, message
  _assert_states_equal(_state(workdir, max(steps)), _state(reference['workdir'], max(steps)))
  REPORT.setdefault('write_failures', {})['disk full (2 MB tmpfs)'] = message


def test_read_only_checkpoint_folder_is_one_line_and_keeps_the_last_checkpoint(reference, tmp_path, monkeypatch,
                                                                               capfd):
  """The checkpoint folder becomes read-only once checkpoint 4 is written (a read-only bind mount as root;
  chmod 555 otherwise): the save of step 8 fails, checkpoint 4 stays."""
  from rsam.training import checkpointing
  workdir = tmp_path / 'run'
  folder = workdir / 'checkpoints'
  real = checkpointing.Checkpointer.save
  how = []

  def save(self, step, *args, **kwargs):
    if step == 5 and not how:
      self.wait()  # checkpoint 4 is complete
      if os.geteuid() == 0:
        _mount('--bind', str(folder), str(folder))
        how.append('read-only bind mount')
        _mount('-o', 'remount,bind,ro', str(folder))
      else:
        os.chmod(folder, 0o555)
        how.append('chmod 555')
    return real(self, step, *args, **kwargs)
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', save)
  try:
    message = _write_failure(_config(checkpoint_every_steps=4), workdir, capfd)
  finally:
    if how and how[0] == 'read-only bind mount':
      subprocess.run(['umount', str(folder)], check=False)
    elif how:
      os.chmod(folder, 0o755)
  cause = 'read-only file system' if how[0] == 'read-only bind mount' else 'permission denied'
  assert f'cannot write {folder}: {cause}; the newest checkpoint, step 4' in message, message
  assert max(_steps(workdir)) == 4
  _assert_states_equal(_state(workdir, 4), _state(reference['workdir'], 4))
  REPORT.setdefault('write_failures', {})[f'checkpoint folder made unwritable ({how[0]})'] = message


# ---------------------------------------------------------------------------------------------------------
# Processes: SIGTERM (preemption) and kill -9 at random steps, then the command line

_BACKGROUND = {}


def _start_background(request, cache_dir, reference, tmp_path_factory):
  """Starts _run_kill_chain and _run_command_lines, one after the other in one thread, if a selected test
  needs them."""
  wanted = [name for name in ('kill_chain', 'command_lines', 'closed_output')
            if any(name in item.fixturenames for item in request.session.items)]
  if not wanted:
    return
  dirs = {name: tmp_path_factory.mktemp(name) for name in wanted}
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='faults')
  jobs = {'kill_chain': _run_kill_chain, 'command_lines': _run_command_lines, 'closed_output': _run_closed_output}
  for name in wanted:
    _BACKGROUND[name] = pool.submit(jobs[name], cache_dir, reference, dirs[name])
  pool.shutdown(wait=False)


# The signaller: a process of its own that reads train.py's stdout, passes each line on, and sends the signal
# the moment the target step's line arrives. In a thread of the pytest worker it was not: a test running
# in-process training there holds the GIL for seconds at a time, the thread read the line late, and the
# run went on meanwhile (a CI chain ran to the end before its kills). argv: pid, signal name or '-', the
# step (N) or steps after the one the run resumed from (+N).
_SIGNALLER = r'''
import os, signal, sys
pid, sig, target = int(sys.argv[1]), sys.argv[2], sys.argv[3]
resumed, step, signalled, past = 0, None, None, 0
for line in sys.stdin:
  sys.stdout.write(line)
  sys.stdout.flush()
  if line.startswith('resumed from step '):
    resumed = int(line.split()[3])
  if not line.startswith('step ') or sig == '-':
    continue
  step = int(line.split()[1].split('/')[0])
  if signalled is not None:
    past += 1
  elif step == (resumed + int(target[1:]) if target.startswith('+') else int(target)):
    os.kill(pid, signal.SIGSTOP)  # frozen where it is: in the next step or in this step's save
    os.kill(pid, getattr(signal, sig))
    if sig != 'SIGKILL':  # SIGTERM/SIGINT are handled once it runs again
      os.kill(pid, signal.SIGCONT)
    signalled = step
print(f'@signaller {signalled} {past}', flush=True)
'''


class _Process:
  """train.py in a subprocess, its stdout read through _SIGNALLER, which sends ``signal_at`` = (signal, step
  or '+N') when the run reports that step."""

  def __init__(self, args, cache_dir, log_dir, name, signal_at=None, timeout=300):
    self.stderr_path = os.path.join(log_dir, f'{name}.stderr')
    self.stdout_lines = []
    self.signalled = self.lines_past_signal = None
    self.start = time.time()
    sig, target = signal_at or (None, '0')
    with open(self.stderr_path, 'w') as err:
      self.proc = subprocess.Popen([sys.executable, 'train.py'] + args, cwd=ROOT, env=_env(cache_dir),
                                   stdout=subprocess.PIPE, stderr=err)
      self.signaller = subprocess.Popen(
          [sys.executable, '-c', _SIGNALLER, str(self.proc.pid), sig.name if sig else '-', str(target)],
          stdin=self.proc.stdout, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
    self.proc.stdout.close()  # the signaller's now: train.py sees a closed pipe only if the signaller dies
    self.watchdog = threading.Timer(timeout, self.proc.kill)
    self.watchdog.start()

  def _lines(self):
    for line in self.signaller.stdout:
      if line.startswith('@signaller '):
        signalled, past = line.split()[1:]
        self.signalled = None if signalled == 'None' else int(signalled)
        self.lines_past_signal = int(past)
        continue
      self.stdout_lines.append(line.rstrip())
      yield line

  def resumed_from(self):
    """Reads stdout up to the line saying where the run starts: the step it resumed from (0: fresh)."""
    for line in self._lines():
      if line.startswith('resumed from step '):
        return int(line.split()[3])
      if line.startswith('training '):
        return 0
    return None

  def wait(self):
    """Reads stdout to the end and reaps train.py: its exit code (-9: killed)."""
    for _ in self._lines():
      pass
    self.signaller.wait()
    _, status, usage = os.wait4(self.proc.pid, 0)
    self.proc.returncode = os.waitstatus_to_exitcode(status)
    self.watchdog.cancel()
    self.seconds = round(time.time() - self.start, 1)
    self.cpu_s = round(usage.ru_utime + usage.ru_stime, 1)
    return self.proc.returncode

  @property
  def stderr(self):
    with open(self.stderr_path) as f:
      return f.read()


def _run_kill_chain(cache_dir, reference, base):
  """One workdir, one command: SIGTERM at a random step, SIGINT, SIGHUP (a dropped ssh session), then kill
  -9 three times, each one step after where the process resumed (frozen the moment it reports that step, so a kill lands in the next
  step or in the reported step's checkpoint save, wherever the process then is), then a run to the end.
  The config checkpoints every step and keeps 3."""
  del reference
  rng = random.Random(SEED)
  config_file = base / 'chain_config.py'
  config_file.write_text(_SUBPROCESS_CONFIG)
  workdir = base / 'work'
  args = ['--config', str(config_file), '--workdir', str(workdir)]
  events = []
  for i, sig in enumerate([signal.SIGTERM, signal.SIGINT, signal.SIGHUP] + [signal.SIGKILL] * 3 + [None]):
    interrupted_saves = len(glob.glob(str(workdir / 'checkpoints' / '*tmp*')))
    # SIGTERM at step 2-3; SIGINT, SIGHUP and each kill 1 step after the step the process resumed from, so
    # the chain always has steps left for its last kill (it lands by step 10 of 12 at the latest)
    target = rng.randint(2, 3) if sig == signal.SIGTERM else '+1'
    proc = _Process(args, cache_dir, str(base), f'p{i}', signal_at=sig and (sig, target))
    start = proc.resumed_from()
    assert start is not None, proc.stdout_lines + [proc.stderr]
    event = {'signal': sig and sig.name, 'started_at_step': start, 'tmp_dirs_at_start': interrupted_saves,
             'rc': proc.wait()}
    if sig is not None:
      # kill -9: the step lines train.py had written when it was frozen (> 0: the signaller read late)
      event.update(signal_after_step=proc.signalled, step_lines_past_signal=proc.lines_past_signal)
    event.update(checkpoints_after=_steps(workdir), seconds=proc.seconds, cpu_s=proc.cpu_s,
                 stderr=[line for line in proc.stderr.splitlines()
                         if ' at step ' in line or line.startswith('error') or 'Traceback' in line])
    events.append(event)
  REPORT['kill_chain'] = {'events': events}
  return {'workdir': workdir, 'events': events}


@pytest.fixture(scope='module')
def kill_chain(reference):
  return _BACKGROUND['kill_chain'].result(timeout=1200)


def test_sigterm_writes_a_checkpoint_of_the_current_step_and_exits_143(kill_chain):
  first, second = kill_chain['events'][0], kill_chain['events'][1]
  assert first['signal_after_step'] is not None and first['rc'] == 143, first
  lines = [line for line in first['stderr'] if 'SIGTERM at step' in line]
  assert len(lines) == 1 and 'rerun' in lines[0] and 'Traceback' not in first['stderr'], first
  step = int(lines[0].split('SIGTERM at step ')[1].split(':')[0])
  assert step >= first['signal_after_step']
  assert max(first['checkpoints_after']) == step  # the step it stopped at, not an older one
  assert second['started_at_step'] == step
  REPORT['kill_chain']['sigterm'] = {'message': lines[0], 'resumed_from': step}


def test_sigint_writes_a_checkpoint_of_the_current_step_and_exits_130(kill_chain):
  """Ctrl-C: handled as SIGTERM is (it used to print a traceback and save nothing)."""
  first, second, third = kill_chain['events'][:3]
  assert second['signal'] == 'SIGINT' and second['rc'] == 130, second
  lines = [line for line in second['stderr'] if 'SIGINT at step' in line]
  assert len(lines) == 1 and 'rerun' in lines[0] and not any('Traceback' in x for x in second['stderr']), second
  step = int(lines[0].split('SIGINT at step ')[1].split(':')[0])
  assert first['rc'] == 143 and step >= second['signal_after_step']
  assert max(second['checkpoints_after']) == step and third['started_at_step'] == step
  REPORT['kill_chain']['sigint'] = {'message': lines[0], 'resumed_from': step}


def test_sighup_writes_a_checkpoint_of_the_current_step_and_exits_129(kill_chain):
  """The ssh session that started the run dropped: handled as SIGTERM is (it used to kill the run at once,
  the step unsaved, the lease held)."""
  second, third, fourth = kill_chain['events'][1:4]
  assert third['signal'] == 'SIGHUP' and third['rc'] == 129, third
  lines = [line for line in third['stderr'] if 'SIGHUP at step' in line]
  assert len(lines) == 1 and 'rerun' in lines[0] and not any('Traceback' in x for x in third['stderr']), third
  step = int(lines[0].split('SIGHUP at step ')[1].split(':')[0])
  assert second['rc'] == 130 and step >= third['signal_after_step']
  assert max(third['checkpoints_after']) == step and fourth['started_at_step'] == step
  REPORT['kill_chain']['sighup'] = {'message': lines[0], 'resumed_from': step}


def test_kill_9_at_random_steps_then_restart_ends_bit_identical(kill_chain, reference):
  kills = [e for e in kill_chain['events'] if e['signal'] == 'SIGKILL']
  assert len(kills) == 3
  for event in kills:
    assert event['signal_after_step'] is not None and event['rc'] == -signal.SIGKILL, event
  final = kill_chain['events'][-1]
  assert final['rc'] == 0, final
  with open(kill_chain['workdir'] / 'results.json') as f:
    results = json.load(f)
  assert results['eval'] == reference['results']['eval']
  # Every process of the chain is a segment of results.json, in order, each starting where the last stopped.
  assert [s['ended'] for s in results['segments']] == ['SIGTERM', 'SIGINT', 'SIGHUP'] + ['running'] * 3 + [
      'finished']
  assert [s['from_step'] for s in results['segments']] == [e['started_at_step'] for e in kill_chain['events']]
  # Every step on the dashboard exactly once, wherever the kills landed (the resumed runs read what the
  # events already hold).
  counts = _train_scalar_counts(kill_chain['workdir'])
  assert counts == {step: 1 for step in range(1, TOTAL_STEPS + 1)}, counts
  leaves = _assert_states_equal(_state(kill_chain['workdir'], TOTAL_STEPS), reference['state'])
  assert not glob.glob(str(kill_chain['workdir'] / 'checkpoints' / '*tmp*'))
  REPORT['kill_chain']['state_leaves_bit_identical'] = leaves


def _run_closed_output(cache_dir, reference, base):
  """train.py whose stdout reader goes away after the first step line (``train.py ... | tee`` over an ssh
  session that dropped): the run must go on to the end."""
  del reference
  config_file = base / 'config.py'
  config_file.write_text(_SUBPROCESS_CONFIG)
  workdir = base / 'work'
  with open(base / 'stderr', 'w') as err:
    proc = subprocess.Popen([sys.executable, 'train.py', '--config', str(config_file), '--workdir', str(workdir)],
                            cwd=ROOT, env=_env(cache_dir), stdout=subprocess.PIPE, stderr=err)
  for line in proc.stdout:
    if line.startswith(b'step '):
      break
  proc.stdout.close()  # the next progress line meets a closed pipe
  try:
    rc = proc.wait(timeout=300)
  except subprocess.TimeoutExpired:
    proc.kill()
    rc = proc.wait()
  return {'rc': rc, 'stderr': (base / 'stderr').read_text(), 'workdir': workdir}


@pytest.fixture(scope='module')
def closed_output(reference):
  return _BACKGROUND['closed_output'].result(timeout=1200)


def test_a_closed_stdout_never_stops_training(closed_output, reference):
  err = closed_output['stderr']
  assert closed_output['rc'] == 0, err[-3000:]
  assert 'Traceback' not in err and 'BrokenPipe' not in err, err[-3000:]
  assert f'step {TOTAL_STEPS}/{TOTAL_STEPS}' in err  # the progress lines went on, to stderr
  workdir = closed_output['workdir']
  with open(workdir / 'results.json') as f:
    assert json.load(f)['eval'] == reference['results']['eval']
  _assert_states_equal(_state(workdir, TOTAL_STEPS), reference['state'])
  REPORT['closed_stdout'] = 'exit 0, progress lines continued on stderr, final state bit-identical'


def _run_command_lines(cache_dir, reference, base):
  """train.py with bad configs (JAX_LOG_COMPILES=1 prints a line for every compilation, cached or not), on
  a workdir of another run and on a workdir whose checkpoints are all damaged (a resume restores into
  abstract shapes, so that compiles nothing either); side by side, with a one-line jit as the positive
  control of the compile detector."""
  damaged = _copy_run(reference, base, 'all_damaged')
  for step in _steps(damaged):
    _damage_truncate_data(str(damaged / 'checkpoints' / str(step)))
  damaged_before = _hashes(str(damaged / 'checkpoints'))
  other = _copy_run(reference, base, 'other_run')
  same_run = base / 'same_run_config.py'
  same_run.write_text(_SUBPROCESS_CONFIG)
  tiny = 'configs/tiny.py'
  cases = {  # name: (args, workdir, text the error line must contain)
      'negative lambda': (['--config', tiny, '--config.updater.lam=-2.0'], None, 'config.updater.lam'),
      'eval set without its dataset': (['--config', tiny, '--config.data.name=cifar10',
                                        "--config.eval_sets=('imagenet_real',)"], None, "'imagenet_real'"),
      'workdir of a different config': (['--config', tiny, '--config.optimizer.lr=0.1'], other,
                                        '--force_resume'),
      'all checkpoints damaged': (['--config', str(same_run)], damaged, str(damaged / 'checkpoints')),
  }
  env = dict(_env(cache_dir), JAX_LOG_COMPILES='1')
  procs = {}
  for name, (args, workdir, _) in cases.items():
    workdir = workdir or base / name.replace(' ', '_')
    stderr_path = base / (name.replace(' ', '_') + '.stderr')
    with open(stderr_path, 'w') as err:
      procs[name] = (workdir, stderr_path, subprocess.Popen(
          [sys.executable, 'train.py', *args, '--workdir', str(workdir)], cwd=ROOT, env=env,
          stdout=subprocess.DEVNULL, stderr=err))
  control = subprocess.run([sys.executable, '-c', 'import jax; jax.jit(lambda x: x + 1)(1)'], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
  out = {}
  for name, (workdir, stderr_path, proc) in procs.items():
    timer = threading.Timer(300, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)  # the CPU seconds of this process alone, whatever the load
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out[name] = {'rc': proc.returncode, 'stderr': stderr_path.read_text(), 'expected': cases[name][2],
                 'cpu_s': round(usage.ru_utime + usage.ru_stime, 1),
                 'workdir_exists': os.path.exists(workdir)}
  out['all checkpoints damaged']['unchanged'] = _hashes(str(damaged / 'checkpoints')) == damaged_before
  return out, control.stderr


@pytest.fixture(scope='module')
def command_lines(reference):
  return _BACKGROUND['command_lines'].result(timeout=1200)


def test_command_line_errors_are_one_line_exit_2_and_compile_nothing(command_lines):
  command_lines, control = command_lines
  assert 'Compiling ' in control, 'the compile detector saw nothing where something compiles'
  report = {}
  for name, run in command_lines.items():
    err = run['stderr']
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    compiles = [line for line in err.splitlines() if 'Compiling ' in line]
    assert run['rc'] == 2, (name, err[-3000:])
    assert len(errors) == 1 and run['expected'] in errors[0], (name, err[-3000:])
    before, _, after = err.partition(errors[0])
    assert 'Traceback' not in before, (name, err[-3000:])
    # orbax threads and coroutines left by the failed restores can print at interpreter exit, after the
    # error line (seen only under heavy load); recorded, not failed.
    assert not compiles, (name, compiles[:3])
    if name == 'all checkpoints damaged':
      assert run['unchanged']
    if name not in ('workdir of a different config', 'all checkpoints damaged'):
      assert not run['workdir_exists'], name
    report[name] = {'error_line': errors[0], 'cpu_s': run['cpu_s'], 'compilations': len(compiles),
                    'traceback_at_exit': 'Traceback' in after}
  REPORT['cli'] = report
