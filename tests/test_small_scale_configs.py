"""configs/small_scale.py (issue #5): every updater's config validates, parses, and trains two steps."""
import json
import os

import pytest

from configs import small_scale
from rsam.training import config_check
from scripts import run_small_scale


@pytest.mark.parametrize('updater', small_scale.UPDATERS)
def test_every_updater_validates_with_the_shared_budget(updater):
  c = small_scale.get_config(f'updater={updater},seed=3')
  config_check.validate(c)
  assert c.updater.name == updater and c.seed == 3
  assert (c.data.name, c.model.name) == ('digits', 'resnet_tiny')
  assert c.data.train_subset == small_scale.SETTING['train_subset']
  assert c.data.label_noise == small_scale.SETTING['label_noise']
  assert (c.optimizer.name, c.optimizer.lr, c.schedule.name) == ('momentum', small_scale.SETTING['lr'], 'cosine')
  assert config_check.total_steps(c) == 500  # 320 examples / 64 x 100 epochs, the same for all
  for key, value in small_scale.TUNED[updater].items():
    assert c.updater[key] == value
  if 'rho_schedule' in c.updater:
    assert c.updater.rho_schedule == 'constant'


def test_overrides_and_bad_arguments():
  c = small_scale.get_config('updater=rgsam,rho=0.2,alpha=0.1,gamma=0.006,lam=8')
  assert (c.updater.rho, c.updater.alpha, c.updater.gamma, c.updater.lam) == (0.2, 0.1, 0.006, 8.0)
  assert small_scale.get_config('').updater.name == 'rsam'
  with pytest.raises(ValueError, match='no field'):
    small_scale.get_config('updater=sam,gamma=0.1')
  with pytest.raises(ValueError, match='unknown key'):
    small_scale.get_config('updater=sam,lr=0.1')
  with pytest.raises(ValueError, match='choose one of'):
    small_scale.get_config('updater=adam')


def test_clean_data_is_the_whole_clean_train_split():
  c = small_scale.get_config('updater=plain,seed=2,data=clean')
  config_check.validate(c)
  assert c.data.train_subset is None and c.data.label_noise == 0.0
  assert config_check.total_steps(c) == 1682  # 1,077 examples / 64 x 100 epochs
  assert small_scale.get_config('updater=plain').data.label_noise == 0.3
  with pytest.raises(ValueError, match='choose one of'):
    small_scale.get_config('data=dirty')


def test_driver_runs_cover_the_grid_and_names_are_unique():
  tune = run_small_scale.phase_runs('tune', (), None)
  final = run_small_scale.phase_runs('final', (), None)
  assert len(final) == 6 * len(run_small_scale.FINAL_SEEDS)
  assert not set(run_small_scale.FINAL_SEEDS) & set(run_small_scale.TUNE_SEEDS)
  names = [run_small_scale.run_name(a) for a in tune + final]
  assert len(set(names)) == len(names)
  for arg in tune + final:  # every run's config builds and validates
    config_check.validate(small_scale.get_config(arg))


@pytest.mark.parametrize('updater', ['rsam'])
def test_config_trains_two_steps(updater):
  """build() + the loop's train step on the config's own data, two steps on one device (no sharding, no
  eval: the full train_and_evaluate path is the driver's, exercised by the experiment itself)."""
  import jax
  import numpy as np
  import data
  from rsam.training import train_step
  c = small_scale.get_config(f'updater={updater},seed=5')
  config_check.validate(c)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('data',))
  run = train_step.build(c, mesh)
  fast = {'xla_backend_optimization_level': 0}  # halves XLA's CPU compile time; 2 steps need no speed
  state = run.init_state.lower().compile(fast)()
  batches = data.make_train_iterator(c.data, global_batch_size=c.batch_size, seed=c.seed)
  batch = {k: jax.numpy.asarray(v) for k, v in next(batches).items()}
  step = jax.jit(train_step.make_train_step(c, run.model, run.updater, run.tx, run.num_classes))
  step = step.lower(state, batch).compile(fast)
  for i in range(2):
    state, metrics = step(state, batch if i == 0 else
                          {k: jax.numpy.asarray(v) for k, v in next(batches).items()})
  assert int(state['step']) == 2
  assert bool(metrics['finite']) and np.isfinite(float(metrics['loss']))
  assert float(metrics['rho']) == pytest.approx(small_scale.TUNED[updater]['rho'])


def test_driver_records_results_and_skips_finished_runs(tmp_path, monkeypatch):
  from rsam.training import loop
  calls = []

  def fake_train(config, workdir):  # the driver's bookkeeping, without the training
    os.makedirs(workdir, exist_ok=True)
    calls.append((config.updater.name, config.seed, config.total_steps))
    results = {'config': config.to_dict(), 'eval': {'val': {'accuracy': 0.5}, 'test': {'accuracy': 0.25}}}
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f)
    return results

  monkeypatch.setattr(loop, 'train_and_evaluate', fake_train)
  argv = ['--phase', 'custom', '--runs', 'updater=rgsam,seed=5', 'updater=plain', '--total_steps', '2',
          '--workroot', str(tmp_path / 'work'), '--out', str(tmp_path / 'out')]
  os.makedirs(tmp_path / 'work' / 'custom' / 'rgsam_seed5')  # an interrupted run's workdir is redone
  run_small_scale.main(argv)
  assert calls == [('rgsam', 5, 2), ('plain', 0, 2)]
  with open(tmp_path / 'out' / 'custom' / 'rgsam_seed5' / 'results.json') as f:
    assert json.load(f)['config']['updater']['name'] == 'rgsam'
  with open(tmp_path / 'out' / 'custom' / 'runs.jsonl') as f:
    lines = [json.loads(line) for line in f]
  assert [(d['name'], d['val'], d['test']) for d in lines] == [('rgsam_seed5', 0.5, 0.25), ('plain', 0.5, 0.25)]
  run_small_scale.main(argv)  # a rerun skips both
  assert len(calls) == 2


def test_paired_differences(tmp_path):
  rows = [('sam', 0, 0.90), ('rsam', 0, 0.92), ('sam', 1, 0.80), ('rsam', 1, 0.79), ('plain', 0, 0.5)]
  with open(tmp_path / 'runs.jsonl', 'w') as f:
    for u, s, a in rows:
      f.write(json.dumps({'arg': f'updater={u},seed={s}', 'val': a, 'test': a}) + '\n')
  text = run_small_scale.paired_differences(str(tmp_path), 'test', pairs=(('rsam', 'sam'), ('sam', 'plain')))
  assert '| rsam − sam | 0: +2.00, 1: -1.00 | +0.50 ± 2.12 | 1.50 | 1/2 |' in text
  assert '| sam − plain | 0: +40.00 | +40.00 ± nan |' in text


def test_driver_vmap_groups_seeds_into_one_program(tmp_path, monkeypatch):
  from rsam.training import multi_seed
  calls = []

  def fake_train_seeds(config, seeds, workdirs):  # the driver's bookkeeping, without the training
    calls.append((config.updater.name, config.data.label_noise, list(seeds), config.total_steps))
    return [{'config': dict(config.to_dict(), seed=s), 'eval': {'val': {'accuracy': s / 10},
                                                                'test': {'accuracy': s / 100}}} for s in seeds]

  monkeypatch.setattr(multi_seed, 'train_seeds', fake_train_seeds)
  assert run_small_scale.seed_groups(['updater=sam,seed=1', 'updater=plain,seed=1', 'updater=sam,seed=2']) == {
      'updater=sam': [(1, 'updater=sam,seed=1'), (2, 'updater=sam,seed=2')],
      'updater=plain': [(1, 'updater=plain,seed=1')]}
  argv = ['--phase', 'custom', '--runs', 'updater=plain,data=clean', 'updater=sam', '--seeds', '1', '2',
          '--vmap', '--total_steps', '3', '--workroot', str(tmp_path / 'work'), '--out', str(tmp_path / 'out')]
  run_small_scale.main(argv)
  assert calls == [('plain', 0.0, [1, 2], 3), ('sam', 0.3, [1, 2], 3)]
  with open(tmp_path / 'out' / 'custom' / 'runs.jsonl') as f:
    lines = [json.loads(line) for line in f]
  assert [(d['name'], d['val']) for d in lines] == [
      ('plain_dataclean_seed1', 0.1), ('plain_dataclean_seed2', 0.2), ('sam_seed1', 0.1), ('sam_seed2', 0.2)]
  os.remove(tmp_path / 'out' / 'custom' / 'sam_seed2' / 'results.json')
  run_small_scale.main(argv)  # only the missing seed is trained again
  assert calls[2:] == [('sam', 0.3, [2], 3)]
