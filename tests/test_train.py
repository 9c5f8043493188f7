"""The training system end to end (issue #3): train.py, eval.py, checkpoints, results, writers, errors.

    python -m pytest tests/test_train.py -q          # about 1.5 minutes on 2 CPU cores

One module-scoped chain of runs of configs/tiny.py (R-SAM, digits, the tiny ResNet, 8 fake CPU devices from
conftest), reused by every end-to-end test:

  1. in-process, uninterrupted, with wandb in offline mode: the reference;
  2. ``python train.py`` in a subprocess, SIGKILLed as soon as a checkpoint is on disk;
  3. the same command again: it resumes and runs to the end;
  4. ``python eval.py`` on that workdir.

Compilation dominates, so the module turns on JAX's persistent compilation cache (a fresh folder, shared with
the subprocesses through JAX_COMPILATION_CACHE_DIR): the reference compiles, the subprocesses load.
Bad inputs are checked in-process (``train_and_evaluate`` raises before any XLA compilation, which a
jax.monitoring listener would see) and through the command line (exit code 2, one ``error:`` line).
"""
import glob
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from data import sources
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WANDB_CELL = '1/resnet18-rsam'  # the reference run's wandb identity: a Table 1 cell (configs/tables.py)
STEPS = 16  # tiny's 12 steps would do; 16 leaves the SIGKILL more room to land mid-run
TRAIN = ['train.py', '--config', 'configs/tiny.py', f'--config.total_steps={STEPS}']
# absl/glog lines and TF's pre-InitializeLog notice: everything on stderr that is not the error itself.
_LOG_LINE = re.compile(r'^([IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog)')


def _tiny(**overrides):
  from configs import tiny
  c = tiny.get_config()
  c.total_steps = STEPS
  for key, value in overrides.items():
    node, *path = [c] + key.split('.')
    for name in path[:-1]:
      node = node[name]
    node[path[-1]] = value
  return c


_env = helpers.subprocess_env


def _finished_steps(workdir):
  directory = os.path.join(str(workdir), 'checkpoints')
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def _state(workdir, step):
  return helpers.restored_state(_tiny(), workdir, step)


def _kill_after_first_checkpoint(proc, workdir, record):
  """SIGKILLs ``proc``'s process group once a finished checkpoint folder exists (a thread: the main thread
  is free meanwhile). Records what was on disk at that moment."""
  deadline = time.time() + 600
  while proc.poll() is None and time.time() < deadline:
    steps = _finished_steps(workdir)
    if steps:
      os.killpg(proc.pid, signal.SIGKILL)
      record.update(steps_at_kill=steps, results_at_kill=os.path.exists(os.path.join(workdir, 'results.json')))
      return
    time.sleep(0.01)
  record.update(steps_at_kill=None)


@pytest.fixture(scope='module')
def runs(compile_cache, tmp_path_factory):
  from rsam.training import loop
  base = tmp_path_factory.mktemp('train')
  out = {'reference': base / 'reference', 'killed': base / 'killed', 'seconds': {}}

  # 1. The uninterrupted reference, in-process, logging to wandb offline.
  start = time.time()
  with pytest.MonkeyPatch.context() as mp:
    for name, value in {'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true',
                        'WANDB_CONFIG_DIR': str(base / 'wandb_config'),
                        'WANDB_CACHE_DIR': str(base / 'wandb_cache'),
                        'WANDB_DATA_DIR': str(base / 'wandb_data')}.items():
      mp.setenv(name, value)
    try:
      from configs import tables
      reference = _tiny(**{'wandb.enabled': True, 'wandb.cell': WANDB_CELL})
      out['reference_results'] = loop.train_and_evaluate(  # names handed down as train.py does
          reference, str(out['reference']), wandb_naming=tables.wandb_naming(reference))
    finally:
      import wandb
      wandb.teardown()  # stops wandb's service process
  out['seconds']['reference'] = time.time() - start

  # 2. train.py killed with SIGKILL right after its first checkpoint, 3. the same command to the end.
  command = [sys.executable, *TRAIN, '--workdir', str(out['killed'])]
  env = _env(compile_cache)
  start = time.time()
  with open(base / 'killed.log', 'w') as log:
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    record = {}
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(proc, str(out['killed']), record))
    killer.start()
    killer.join()
    if proc.poll() is None and record.get('steps_at_kill') is None:  # never checkpointed: do not leak it
      os.killpg(proc.pid, signal.SIGKILL)
    out['killed_rc'] = proc.wait(timeout=60)
  out['kill'] = record
  out['kill']['log'] = (base / 'killed.log').read_text()
  out['kill']['steps_after_kill'] = _finished_steps(out['killed'])
  out['seconds']['killed'] = time.time() - start
  start = time.time()
  out['resumed'] = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  out['seconds']['resumed'] = time.time() - start
  return out


def _assert_states_equal(a, b):
  paths_a, leaves_a = zip(*jax.tree_util.tree_flatten_with_path(a)[0])
  paths_b, leaves_b = zip(*jax.tree_util.tree_flatten_with_path(b)[0])
  assert paths_a == paths_b
  for path, x, y in zip(paths_a, leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _results(workdir):
  with open(os.path.join(str(workdir), 'results.json')) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------------------
# Kill, resume, evaluate


@pytest.mark.slow
def test_killed_run_resumes_and_ends_bit_identical_to_an_uninterrupted_one(runs):
  kill, resumed = runs['kill'], runs['resumed']
  # The kill landed mid-run: a checkpoint was on disk, the run had not finished.
  assert kill['steps_at_kill'], kill['log'][-3000:]
  assert runs['killed_rc'] == -signal.SIGKILL, kill['log'][-3000:]
  assert not kill['results_at_kill'] and max(kill['steps_after_kill']) < STEPS, kill
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  starts = re.findall(r'^resumed from step (\d+)', resumed.stdout, re.M)
  assert len(starts) == 1 and 0 < int(starts[0]) < STEPS, resumed.stdout
  assert int(starts[0]) == max(kill['steps_after_kill'])  # from the newest finished checkpoint
  reference, killed = runs['reference'], runs['killed']
  assert max(_finished_steps(reference)) == max(_finished_steps(killed)) == STEPS
  a, b = _state(reference, STEPS), _state(killed, STEPS)
  assert int(a['step']) == int(b['step']) == STEPS
  for part in ('params', 'opt_state', 'model_state'):
    _assert_states_equal(a[part], b[part])
  assert _results(killed)['eval'] == _results(reference)['eval'] == runs['reference_results']['eval']


@pytest.mark.slow
def test_a_run_prints_no_start_up_noise(runs):
  """A local run's stderr: no TensorFlow oneDNN/absl start-up lines, no credentials lookup."""
  noise = [line for line in runs['resumed'].stderr.splitlines()
           if re.search(r'oneDNN|absl::InitializeLog|credentials file|gcloud auth', line)]
  assert runs['resumed'].returncode == 0 and not noise, runs['resumed'].stderr[-3000:]


@pytest.mark.slow
def test_eval_reproduces_the_accuracy_in_results_json(runs, compile_cache):
  import eval as eval_script
  reference = str(runs['reference'])
  out = eval_script.evaluate_checkpoint(_tiny(), reference)
  assert out['step'] == STEPS
  with open(os.path.join(reference, f'eval_step{STEPS}.json')) as f:
    written = json.load(f)
  expected = _results(reference)['eval']['test']
  assert written['step'] == STEPS
  assert written['eval']['test']['accuracy'] == expected['accuracy']
  assert written['eval']['test']['count'] == expected['count'] == 360  # the whole digits test split

  # The command line as the README gives it, without --config (the workdir's config.json), on the
  # killed-and-resumed run's workdir (its newest checkpoint).
  killed = str(runs['killed'])
  proc = subprocess.run([sys.executable, 'eval.py', '--workdir', killed],
                        cwd=ROOT, env=_env(compile_cache), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(killed, f'eval_step{STEPS}.json')) as f:
    written = json.load(f)
  assert written['eval']['test']['accuracy'] == _results(killed)['eval']['test']['accuracy']
  assert json.loads(proc.stdout.splitlines()[-2]) == written['eval']
  assert proc.stdout.splitlines()[-1].endswith(f'eval_step{STEPS}.json')


def test_eval_takes_the_runs_config_and_refuses_another(runs, tmp_path):
  """eval.py's config: the workdir's config.json; a --config of another run (configs/quickstart.py: the same
  model, so its checkpoint would restore) is one ConfigError naming the fields, before any evaluation."""
  import eval as eval_script
  from configs import quickstart
  from rsam.errors import ConfigError
  from rsam.training import config_check
  reference = str(runs['reference'])
  assert config_check.run_config(reference).to_dict() == _results(reference)['config']
  assert config_check.run_config(reference, _tiny(eval_batch_size=32)).eval_batch_size == 32  # bookkeeping
  before = os.path.getmtime(os.path.join(reference, f'eval_step{STEPS}.json')) if os.path.exists(
      os.path.join(reference, f'eval_step{STEPS}.json')) else None
  with pytest.raises(ConfigError, match=r'--config does not match the run in .*batch_size.*drop --config'):
    eval_script.evaluate_checkpoint(quickstart.get_config(), reference)
  after = os.path.getmtime(os.path.join(reference, f'eval_step{STEPS}.json')) if before is not None else None
  assert before == after  # nothing overwritten
  with pytest.raises(ConfigError, match='config.json does not exist.*pass --config'):
    eval_script.evaluate_checkpoint(None, str(tmp_path))


# ---------------------------------------------------------------------------------------------------------
# What a run leaves behind


@pytest.mark.slow
def test_results_json_and_tensorboard_events(runs):
  import tensorflow as tf
  results = _results(runs['reference'])
  assert results['config']['model']['name'] == 'resnet_tiny'
  assert results['config']['updater']['name'] == 'rsam'
  assert results['config']['total_steps'] == STEPS
  assert results['steps'] == results['total_steps'] == STEPS
  assert set(results['eval']) == {'test'}
  assert 0 <= results['eval']['test']['accuracy'] <= 1 and results['eval']['test']['count'] == 360
  assert results['wall_time_s'] > 0
  hw = results['hardware']
  assert hw['platform'] == 'cpu' and hw['num_devices'] == 8 and hw['num_processes'] == 1, hw
  assert hw['jax'] == jax.__version__ and hw['device_kind'] and hw['cpu_count'] >= 1

  files = glob.glob(os.path.join(str(runs['reference']), 'events.out.tfevents.*'))
  assert len(files) == 1
  tags, values = {}, {}
  for event in tf.compat.v1.train.summary_iterator(files[0]):
    for value in event.summary.value:
      tags.setdefault(value.tag, set()).add(event.step)
      if value.tag.startswith('train/'):
        values[event.step, value.tag] = float(tf.make_ndarray(value.tensor))
  assert tags['train/loss'] == {4, 8, 12, 16}, tags
  assert tags['train/lr'] == {4, 8, 12, 16}
  # Throughput from the timed steps alone (rsam/training/progress.py): one measurement, two units; clu's
  # steps_per_sec, which counted the compile and the evaluations, is not written.
  assert tags['train/steps_per_sec'] == tags['train/img_per_s_per_device'] == {4, 8, 12, 16}
  for step in (4, 8, 12, 16):
    assert values[step, 'train/steps_per_sec'] * 32 / 8 == pytest.approx(values[step, 'train/img_per_s_per_device'])
  assert 'steps_per_sec' not in tags and 'uptime' not in tags
  assert tags['eval/test/accuracy'] == {STEPS}
  # The resumed run appended to the same workdir: its events cover the steps after the resume.
  resumed_tags = set()
  for path in glob.glob(os.path.join(str(runs['killed']), 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      resumed_tags |= {(event.step, v.tag) for v in event.summary.value}
  assert (STEPS, 'eval/test/accuracy') in resumed_tags and (STEPS, 'train/loss') in resumed_tags


def _wandb_records(path):
  """The protobuf records of a wandb 0.31 ``.wandb`` transaction log. wandb ships no reader for offline runs;
  the format is a 7-byte file header (':W&B', magic, version) then LevelDB's log format: 32 KiB blocks of
  chunks, each with a 7-byte header (crc32c, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4), a block's tail
  under 7 bytes zero-padded. Records are wandb_internal_pb2.Record."""
  from wandb.proto import wandb_internal_pb2
  with open(path, 'rb') as f:
    raw = f.read()
  assert raw[:4] == b':W&B'
  block, pos, pending, records = 32768, 7, b'', []
  while pos + 7 <= len(raw):
    if block - pos % block < 7:
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack('<IHB', raw[pos:pos + 7])
    chunk = raw[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind == 0 and length == 0:
      pos += block - pos % block if pos % block else 0
      continue
    pending = chunk if kind in (1, 2) else pending + chunk
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
  return records


@pytest.mark.slow
def test_wandb_offline_run_holds_the_config_and_the_logged_metrics(runs):
  run_dirs = glob.glob(os.path.join(str(runs['reference']), 'wandb', 'offline-run-*'))
  assert len(run_dirs) == 1, run_dirs
  logs = glob.glob(os.path.join(run_dirs[0], 'run-*.wandb'))
  assert len(logs) == 1
  records = _wandb_records(logs[0])
  config = {}
  history = {}
  for record in records:
    kind = record.WhichOneof('record_type')
    if kind == 'run':
      items = record.run.config.update
    elif kind == 'config':
      items = record.config.update
    else:
      items = ()
    for item in items:
      config[item.key] = json.loads(item.value_json)
    if kind == 'history':
      step = record.history.step.num
      for item in record.history.item:
        key = item.key or '/'.join(item.nested_key)
        history.setdefault(key, {})[step] = json.loads(item.value_json)
  assert config['model']['name'] == 'resnet_tiny', config.get('model')
  assert config['updater']['name'] == 'rsam' and config['updater']['rho'] == runs['reference_results'][
      'config']['updater']['rho']
  assert config['total_steps'] == STEPS and config['batch_size'] == 32
  assert set(history['train/loss']) == {4, 8, 12, 16}, sorted(history)
  accuracy = runs['reference_results']['eval']['test']['accuracy']
  assert history['eval/test/accuracy'] == {STEPS: pytest.approx(accuracy, abs=1e-12)}
  assert 'eval/test/count' not in history  # the example count is no curve

  # The run's identity (issue 12): the id stored in the workdir, named and grouped by its table cell,
  # tagged, and a summary with the final accuracy beside the paper's number for that cell.
  (run,) = [r.run for r in records if r.WhichOneof('record_type') == 'run']
  with open(os.path.join(str(runs['reference']), 'wandb_id')) as f:
    assert run.run_id == f.read().strip()
  assert run.display_name == 'table1/resnet18-rsam/seed0' and run.run_group == 'table1/resnet18-rsam'
  assert list(run.tags) == ['table1', 'cifar_rho', 'resnet_tiny', 'rsam', 'digits', 'seed0']
  assert run.job_type == 'train'
  summary = {}
  for record in records:
    if record.WhichOneof('record_type') == 'summary':
      for item in record.summary.update:
        summary[item.key or '/'.join(item.nested_key)] = json.loads(item.value_json)
  with open(os.path.join(ROOT, 'results', 'paper', 'table1_cifar10.json')) as f:
    paper = {(r['model'], r['optimizer']): r['mean'] for r in json.load(f)['rows']}
  assert summary['final/test/accuracy'] == pytest.approx(accuracy, abs=1e-12)
  assert summary['paper/table1/test/accuracy'] == pytest.approx(paper[('resnet18', 'rsam')] / 100)


# ---------------------------------------------------------------------------------------------------------
# Bad inputs: one line naming the fix, before any compilation


_BAD = {  # name: (config overrides, exception type name, text the message must contain)
    'unknown dataset': ({'data.name': 'mnist'}, 'DataError', 'valid names: '),
    'unknown model': ({'model.name': 'resnet_huge'}, 'ConfigError', 'choose one of: '),
    'unknown updater': ({'updater.name': 'adamsam'}, 'ConfigError', 'choose one of: '),
    'negative rho': ({'updater.rho': -1.0}, 'ConfigError', 'config.updater.rho'),
    'batch not divisible by devices': ({'batch_size': 12}, 'ConfigError', 'use a multiple of 8'),
    'missing dataset': ({'data.name': 'cifar10', 'data.data_dir': '<empty>'}, 'DataError',
                        f'`{sources.tfds_command()} build cifar10'),  # this environment's tfds
    'mesh that does not fit the devices': ({'mesh.data': 3}, 'ConfigError', 'has 3 devices but this run has 8'),
    'fsdp axis that splits no parameter': ({'mesh.fsdp': 8}, 'ConfigError', 'config.mesh.fsdp=8 divides no'),
}


@pytest.mark.parametrize('name', list(_BAD))
def test_bad_input_is_a_one_line_error_before_any_compilation(name, tmp_path):
  from rsam.training import loop
  overrides, error, expected = _BAD[name]
  if overrides.get('data.data_dir') == '<empty>':
    (tmp_path / 'empty').mkdir()
    overrides = {**overrides, 'data.data_dir': str(tmp_path / 'empty')}
  compiles = []

  def listener(event, duration, **kwargs):
    if 'backend_compile' in event:
      compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with pytest.raises(Exception) as info:
      loop.train_and_evaluate(_tiny(**overrides), str(tmp_path / 'work'))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert type(info.value).__name__ == error, repr(info.value)
  message = str(info.value)
  assert '\n' not in message and expected in message, message
  assert not compiles, f'{name}: XLA compiled {len(compiles)} programs before the error'


@pytest.mark.slow
def test_bad_inputs_on_the_command_line_are_one_error_line_and_exit_2(compile_cache, tmp_path):
  (tmp_path / 'empty').mkdir()
  cases = {  # name: (extra args, text the error line must contain)
      'unknown config field': (['--config.nope=1'], "--config.nope: the config has no field 'nope'"),
      'negative rho': (['--config.updater.rho=-1'], 'config.updater.rho=-1.0 must be'),
      'missing dataset': (['--config.data.name=cifar10', f'--config.data.data_dir={tmp_path / "empty"}'],
                          'tfds build cifar10'),
  }
  procs = {}
  for name, (args, _) in cases.items():  # side by side: each is mostly Python imports
    procs[name] = subprocess.Popen(
        [sys.executable, *TRAIN, *args, '--workdir', str(tmp_path / name.replace(' ', '_'))], cwd=ROOT,
        env=_env(compile_cache, JAX_LOG_COMPILES='1', PYTHONPROFILEIMPORTTIME='1'), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    imported = {line.rsplit('|', 1)[1].strip() for line in err.splitlines() if line.startswith('import time:')}
    err = '\n'.join(line for line in err.splitlines() if not line.startswith('import time:')) + '\n'
    if name != 'missing dataset':  # config errors answer before TensorFlow (and the loop) is imported
      assert 'absl' in imported and 'tensorflow' not in imported, (name, sorted(imported)[:50])
    lines = [line for line in err.splitlines() if line.strip() and not _LOG_LINE.match(line)]
    assert proc.returncode == 2, (name, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith('error: '), (name, err[-3000:])
    assert lines[0] == err.rstrip('\n').splitlines()[-1]
    assert cases[name][1] in lines[0], (name, lines[0])
    assert 'Compiling' not in err and 'training' not in out, (name, err[-3000:])


def test_a_non_finite_update_leaves_the_state_as_it_was():
  """The step's guard checks the update the optimizer made, not only the loss: an optimizer whose update
  is NaN (here a scale by NaN, standing in for a NaN gradient or the optimizer's own arithmetic) leaves
  params, optimizer state and model state untouched, with 'finite' 0; the same step with a sound
  optimizer moves them."""
  import jax.numpy as jnp
  import optax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from data import sources
  from rsam.training import train_step
  config = _tiny()
  mesh = train_step.make_mesh()
  shape = tuple(sources.image_shape(config.data))
  run = train_step.build(config, mesh)
  rng = np.random.default_rng(0)
  batch = jax.device_put({'image': rng.normal(size=(config.batch_size,) + shape).astype(np.float32),
                          'label': rng.integers(0, 10, size=(config.batch_size,)).astype(np.int32)},
                         NamedSharding(mesh, P('data')))
  for tx, moves in ((optax.chain(run.tx, optax.scale(jnp.nan)), False), (run.tx, True)):
    step = jax.jit(train_step.make_train_step(config, run.model, run.updater, tx, run.num_classes))
    state = run.init_state()
    state = {**state, 'opt_state': tx.init(state['params'])}
    new, metrics = step(state, batch)
    assert np.isfinite(float(metrics['loss'])) and float(metrics['finite']) == float(moves)
    leaves = lambda s: jax.tree.leaves({k: s[k] for k in ('params', 'opt_state', 'model_state')})
    same = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(leaves(new), leaves(state)))
    assert same != moves
    assert int(new['step']) == 1


# ---------------------------------------------------------------------------------------------------------
# Several seeds in one program (rsam/training/multi_seed.py)


@pytest.mark.slow
def test_multi_seed_training_matches_the_separate_run(runs, tmp_path):
  """Seeds (1, 0) vmapped in one program: seed 0 (second in the stack, so the seed axis is really indexed)
  ends where the separate reference run of the same config ended -- parameters, BatchNorm statistics,
  test accuracy and the logged training loss -- and seed 1 somewhere else."""
  from rsam.training import ascent_probe, multi_seed
  config = _tiny()
  assert config.seed == 0
  out = multi_seed.train_seeds(config, [1, 0], workdirs=[tmp_path / 's1', tmp_path / 's0'])
  ref = _state(runs['reference'], STEPS)
  got, other = _state(tmp_path / 's0', STEPS), _state(tmp_path / 's1', STEPS)
  for part in ('params', 'model_state'):
    for a, b in zip(jax.tree.leaves(ref[part]), jax.tree.leaves(got[part])):
      np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5)
  far = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(ref['params']),
                                                       jax.tree.leaves(other['params'])))
  assert far > 1e-2
  assert out[1]['config']['seed'] == 0 and out[0]['config']['seed'] == 1
  assert out[1]['eval']['test']['accuracy'] == pytest.approx(
      runs['reference_results']['eval']['test']['accuracy'], abs=1.5 / 360)  # at most one image apart
  logged = ascent_probe.read_scalars(str(runs['reference']))
  assert [r['step'] for r in out[1]['train_log']] == [r['step'] for r in logged]
  np.testing.assert_allclose([r['loss'] for r in out[1]['train_log']], [r['loss'] for r in logged], rtol=1e-4)
  assert all('noise_grad_ratio' in r for r in out[0]['train_log'])
  with open(tmp_path / 's0' / 'results.json') as f:
    assert json.load(f)['eval'] == out[1]['eval']


def test_multi_seed_prefetch_keeps_order_and_raises_the_producers_error():
  from rsam.training import multi_seed
  counter = iter(range(100))
  assert list(multi_seed._prefetched(lambda: next(counter), 20, depth=3)) == list(range(20))

  def failing():
    raise ValueError('pipeline broke')
  with pytest.raises(ValueError, match='pipeline broke'):
    list(multi_seed._prefetched(failing, 5))
