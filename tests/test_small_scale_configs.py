"""configs/small_scale.py (issue #5): every updater's config validates, parses, and trains two steps."""
import json
import math
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
      f.write(json.dumps({'arg': f'updater={u},seed={s}', 'val': a, 'test': a, 'unused': 1.0 - a,
                          'counts': {'val': 10, 'test': 10, 'unused': 30}}) + '\n')
  text = run_small_scale.paired_differences(str(tmp_path), 'test', pairs=(('rsam', 'sam'), ('sam', 'plain')))
  # mean +0.50, sd 2.12, s.e.m. 1.50, t(0.975, 1) = 12.706: half-width 19.06; ±0.5 needs 72 seeds at sd 2.12
  # t = 0.5 / 1.5 on 1 dof: p = 1 − 2 atan(1/3) / π = 0.795; Holm over the one tested pair: the same
  assert '| rsam − sam | 2 | +0.50 | 2.12 | 1.50 | [-18.56, +19.56] | 1/2 | 72 | 0.795 | 0.795 |' in text
  assert '| sam − plain | 1 | +40.00 | nan |' in text and '| nan | nan |' in text
  assert '| sam | 2 | 85.00 ± 5.00 | 7.07 |' in text
  first = run_small_scale.paired_differences(str(tmp_path), 'test', pairs=(('rsam', 'sam'),), seeds=[1])
  assert '| rsam − sam | 1 | -1.00 |' in first and '| sam | 1 | 80.00 ± 0.00 |' in first
  # pooled over two sets by their counts: sam seed 0 = (0.9·10 + 0.1·30) / 40 = 30%, rsam 0.29 -> −1.00
  pooled = run_small_scale.read_accuracies(str(tmp_path), 'test+unused')
  assert pooled[('updater=sam', 0)] == pytest.approx(30.0) and pooled[('updater=rsam', 0)] == pytest.approx(29.0)


def test_power_from_tuning(tmp_path):
  rows = [('updater=sam,rho=0.1', 0, 0.80), ('updater=sam,rho=0.1', 1, 0.84), ('updater=sam,rho=0.1', 2, 0.82),
          ('updater=rsam,rho_max=0.3', 0, 0.81), ('updater=rsam,rho_max=0.3', 1, 0.86),
          ('updater=rsam,rho_max=0.3', 2, 0.82), ('updater=sam,rho=0.2', 0, 0.7), ('updater=sam,rho=0.2', 1, 0.7)]
  with open(tmp_path / 'runs.jsonl', 'w') as f:
    for a, s, v in rows:
      f.write(json.dumps({'arg': f'{a},seed={s}', 'val': v}) + '\n')
  text = run_small_scale.power_from_tuning(
      str(tmp_path), {'sam': 'updater=sam,rho=0.1', 'rsam': 'updater=rsam,rho_max=0.3'})
  # differences 1, 2, 0 points: sd 1.00 (2 dof) -> 2 seeds... at sd 1 ±0.5 needs 18
  assert 'over seeds [0, 1, 2] (2 degrees of freedom): 1.00 points -> n = 18' in text
  # the two chosen configs: squares 8 + 14 over 2 + 2 dof -> √5.5 = 2.35, ×√2 = 3.32
  assert 'over the two chosen configs (4 degrees of freedom): √2 × 2.35 = 3.32 points' in text
  # every config: squares 8 + 14 + 0 over 2 + 2 + 1 dof -> √4.4 = 2.10, ×√2 = 2.97
  assert 'over all 3 configs (5 degrees of freedom): √2 × 2.10 = 2.97 points' in text
  with pytest.raises(ValueError, match='fewer than 2 seeds of updater=sam,rho=0.5'):
    run_small_scale.power_from_tuning(str(tmp_path), {'sam': 'updater=sam,rho=0.5', 'rsam': 'updater=rsam,rho_max=0.3'})
  from rsam.training import seed_stats
  assert f'plan: sd 3.32, the larger of (1) and (2): a 95% interval of ±0.5 needs n = ' \
         f'{seed_stats.seeds_needed(math.sqrt(11), 0.5)} paired seeds' in text


def test_vit_family_follows_the_official_recipe_structure():
  from configs import small_scale_vit as V
  for updater in V.UPDATERS:
    c = V.get_config(f'updater={updater},seed=4')
    config_check.validate(c)
    assert (c.optimizer.name, c.optimizer.weight_decay, c.optimizer.decay_kernels_only) == ('adamw', 0.3, False)
    assert (c.loss, c.model.overrides.head_bias_init, c.model.overrides.pool) == ('sigmoid_xent', -2.2, 'token')
    assert c.schedule.name == 'linear' and c.schedule.warmup_steps == 110
    assert config_check.total_steps(c) == 1000 and c.eval_sets == ('val', 'test', 'train_unused')
  rsam = V.get_config('updater=rsam,rho_max=0.5')
  assert (rsam.updater.rho_schedule, rsam.updater.rho_max, rsam.updater.rho_min) == ('lr_tied', 0.5, pytest.approx(0.3))
  assert (rsam.updater.rho_warmup_steps, rsam.updater.lam, rsam.updater.gamma, rsam.updater.gamma_growth) == (
      110, 2.0, 5e-4, 5.0)
  gsam = V.get_config('updater=rgsam,rho_max=0.3')
  assert (gsam.updater.rho_min, gsam.updater.alpha) == (pytest.approx(0.1), 0.4)
  assert V.get_config('updater=sam,rho=0.07').updater.rho == 0.07
  for bad in ('updater=sam,rho_max=0.1', 'updater=rsam,rho=0.1', 'updater=plain', 'updater=sam,data=clean'):
    with pytest.raises(ValueError):
      V.get_config(bad)
  tune = run_small_scale.phase_runs('tune', (), None, family='vit')
  final = run_small_scale.phase_runs('final', (), None, family='vit')
  assert not set(run_small_scale.FAMILIES['vit']['final_seeds']) & set(run_small_scale.FAMILIES['vit']['tune_seeds'])
  for arg in tune + final:
    config_check.validate(V.get_config(arg))


def test_digits_train_unused_is_the_rest_of_the_train_split_with_true_labels():
  import numpy as np
  from data import sources
  c = small_scale.get_config('updater=sam')
  spec = sources.resolve(c.data)
  x, y = sources.digits_split(spec, 'train_unused')
  clean = sources.resolve(small_scale.get_config('updater=sam,data=clean').data)
  x_all, y_all = sources.digits_split(clean, 'train')
  assert len(y) == 1077 - 320
  np.testing.assert_array_equal(x, x_all[320:])
  np.testing.assert_array_equal(y, y_all[320:])
  with pytest.raises(sources.DataError, match='train_unused'):
    sources.digits_split(clean, 'train_unused')


def test_vit_driver_trains_seeds_together_and_pools_the_test_sets(tmp_path):
  """The real path of the mini Table 3: --family vit --vmap, two seeds in one program for two steps, then
  --paired over test + train_unused from the lines it wrote (their counts)."""
  argv = ['--family', 'vit', '--phase', 'custom', '--runs', 'updater=sam', 'updater=rsam', '--seeds', '1', '2',
          '--vmap', '--seeds_per_program', '2', '--total_steps', '2', '--workroot', str(tmp_path / 'work'),
          '--out', str(tmp_path / 'out')]
  run_small_scale.main(argv)
  with open(tmp_path / 'out' / 'vit' / 'custom' / 'runs.jsonl') as f:
    lines = [json.loads(line) for line in f]
  assert [d['name'] for d in lines] == ['sam_seed1', 'sam_seed2', 'rsam_seed1', 'rsam_seed2']
  assert lines[0]['counts'] == {'val': 360, 'test': 360, 'train_unused': 757}
  with open(tmp_path / 'out' / 'vit' / 'custom' / 'rsam_seed1' / 'results.json') as f:
    results = json.load(f)
  assert results['config']['model']['overrides']['head_bias_init'] == -2.2
  assert 'noise_grad_ratio' in results['train_log'][-1]  # the ascent composition, per seed
  text = run_small_scale.paired_differences(str(tmp_path / 'out' / 'vit' / 'custom'), 'test+train_unused')
  assert '| rsam − sam | 2 |' in text


def test_data_draws_move_the_noisy_subset_and_keep_val_and_test():
  """Issue #26's data draws (data.subset_seed, the configs' draw=): another 320 images of the same train
  split and another 30% of them flipped; val and test unchanged; train_unused is the rest of the split."""
  import numpy as np
  from data import sources

  def split(arg, name):
    return sources.digits_split(sources.resolve(small_scale.get_config(arg).data), name)

  for name in ('train', 'val', 'test', 'train_unused'):  # draw 0 is the subset every earlier run used
    for got, want in zip(split('updater=sam,draw=0', name), split('updater=sam', name)):
      np.testing.assert_array_equal(got, want)
  clean = sources.resolve(small_scale.get_config('updater=sam,data=clean').data)
  x_all, y_all = sources.digits_split(clean, 'train')
  key = {x.tobytes(): y for x, y in zip(x_all, y_all)}  # every train-split image and its true label
  flipped = {}
  for draw in (1, 2):
    for name in ('val', 'test'):
      for got, want in zip(split(f'updater=sam,draw={draw}', name), split('updater=sam', name)):
        np.testing.assert_array_equal(got, want)
    x, y = split(f'updater=sam,draw={draw}', 'train')
    xu, yu = split(f'updater=sam,draw={draw}', 'train_unused')
    true = np.array([key[img.tobytes()] for img in x])
    assert len(y) == 320 and np.array_equal(np.bincount(true, minlength=10), np.full(10, 32))  # stratified
    assert (y != true).sum() == 96  # exactly 30% flipped, each to another class
    used, unused = {img.tobytes() for img in x}, {img.tobytes() for img in xu}
    assert len(xu) == 757 and not used & unused and len(used | unused) == len(key) == 1077
    np.testing.assert_array_equal(yu, [key[img.tobytes()] for img in xu])  # true labels
    flipped[draw] = y != true
  x0 = split('updater=sam', 'train')[0]
  assert not np.array_equal(split('updater=sam,draw=1', 'train')[0], x0)
  assert not np.array_equal(flipped[1], flipped[2])  # the flips are drawn too, not only the images
  assert small_scale.get_config('updater=sam').data.get('subset_seed') is None
  from configs import small_scale_vit
  assert small_scale_vit.get_config('updater=sam,draw=5').data.subset_seed == 5
  with pytest.raises(ValueError, match='draw=-1'):
    small_scale.get_config('updater=sam,draw=-1')
  with pytest.raises(sources.DataError, match='subset_seed'):
    sources.resolve({'name': 'digits', 'subset_seed': 'a'})


def test_driver_gives_every_draw_its_own_seeds_in_order(tmp_path, monkeypatch):
  runs = run_small_scale.phase_runs('final', ['updater=sam,rho=0.2', 'updater=rsam'], [10, 11, 12, 13],
                                    draws=[1, 2])
  assert runs == ['updater=sam,rho=0.2,draw=1,seed=10', 'updater=sam,rho=0.2,draw=1,seed=11',
                  'updater=rsam,draw=1,seed=10', 'updater=rsam,draw=1,seed=11',
                  'updater=sam,rho=0.2,draw=2,seed=12', 'updater=sam,rho=0.2,draw=2,seed=13',
                  'updater=rsam,draw=2,seed=12', 'updater=rsam,draw=2,seed=13']
  for bad in ([10, 11, 12], [10, 10, 11, 12]):
    with pytest.raises(ValueError):
      run_small_scale.phase_runs('final', ['updater=sam'], bad, draws=[1, 2])
  assert run_small_scale.phase_runs('tune', ['updater=sam,rho=0.7'], [40, 41]) == [
      'updater=sam,rho=0.7,seed=40', 'updater=sam,rho=0.7,seed=41']  # an edge step of a sweep
  with pytest.raises(ValueError, match='tuning reads draw 0'):
    run_small_scale.phase_runs('tune', (), None, draws=[1])
  # the vmapped programs: one per (config, draw), each with its draw's data and seeds
  from rsam.training import multi_seed
  programs = []

  def fake_train_seeds(config, seeds, workdirs):
    programs.append((config.updater.name, config.data.subset_seed, list(seeds)))
    return [{'config': {}, 'eval': {'val': {'accuracy': 0.5, 'count': 360}}} for _ in seeds]

  monkeypatch.setattr(multi_seed, 'train_seeds', fake_train_seeds)
  run_small_scale.main(['--phase', 'final', '--runs', 'updater=sam', 'updater=rsam', '--draws', '3', '4',
                        '--seeds', '7', '8', '--vmap', '--workroot', str(tmp_path / 'w'), '--out', str(tmp_path / 'o')])
  assert programs == [('sam', 3, [7]), ('rsam', 3, [7]), ('sam', 4, [8]), ('rsam', 4, [8])]
  assert os.path.exists(tmp_path / 'o' / 'final' / 'rsam_draw4_seed8' / 'results.json')


def _write_runs(path, rows, logs=None):
  """runs.jsonl lines (arg, accuracy on 'val' and 'test', counts) and, for args in ``logs``, a
  results.json whose train_log is that list."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'runs.jsonl'), 'w') as f:
    for arg, acc in rows:
      name = run_small_scale.run_name(arg)
      f.write(json.dumps({'name': name, 'arg': arg, 'val': acc, 'test': acc, 'counts': {'val': 1, 'test': 1}}) + '\n')
      os.makedirs(os.path.join(path, name), exist_ok=True)
      with open(os.path.join(path, name, 'results.json'), 'w') as g:
        json.dump({'train_log': (logs or {}).get(arg.rsplit(',seed=', 1)[0])}, g)


def _log(ratio_late, ratio_early=0.1, cos=0.6):
  return [{'step': 100, 'noise_grad_ratio': ratio_early, 'ascent_grad_cos': 1.0, 'noise_norm': 1.0, 'lam_grad_norm': 1.0},
          {'step': 300, 'noise_grad_ratio': ratio_late, 'ascent_grad_cos': cos, 'noise_norm': 2.0, 'lam_grad_norm': 1.0},
          {'step': 500, 'noise_grad_ratio': ratio_late + 0.2, 'ascent_grad_cos': cos, 'noise_norm': 2.0,
           'lam_grad_norm': 1.0}]


def test_run_composition_skips_the_burn_in():
  c = run_small_scale.run_composition(_log(1.0))  # windows ending after 20% of 500 steps: 300 and 500
  assert c['noise_grad_ratio'] == pytest.approx(1.1) and c['ascent_grad_cos'] == pytest.approx(0.6)
  assert c['grad_share'] == pytest.approx(0.36) and c['noise_norm'] == pytest.approx(2.0)
  assert run_small_scale.run_composition([{'step': 10, 'loss': 1.0}]) == {}  # SAM: no noise
  assert run_small_scale.run_composition(None) == {}


def test_select_from_tuning_takes_the_best_config_in_the_regime(tmp_path):
  rows = [('updater=sam,rho=0.2,seed=0', 0.80), ('updater=sam,rho=0.2,seed=1', 0.84),
          ('updater=sam,rho=0.5,seed=0', 0.70), ('updater=sam,rho=0.5,seed=1', 0.70),
          ('updater=rsam,rho=0.2,lam=2,gamma=0.002,seed=0', 0.95),  # the best, but mostly gradient
          ('updater=rsam,rho=0.2,lam=2,gamma=0.002,seed=1', 0.95),
          ('updater=rsam,rho=0.5,lam=0.5,gamma=0.002,seed=0', 0.85),
          ('updater=rsam,rho=0.5,lam=0.5,gamma=0.002,seed=1', 0.87),
          ('updater=rsam,rho=1.0,lam=0.5,gamma=0.002,seed=0', 0.83),
          ('updater=rsam,rho=1.0,lam=0.5,gamma=0.002,seed=1', 0.83)]
  logs = {'updater=rsam,rho=0.2,lam=2,gamma=0.002': _log(0.3, cos=0.95),
          'updater=rsam,rho=0.5,lam=0.5,gamma=0.002': _log(1.2),
          'updater=rsam,rho=1.0,lam=0.5,gamma=0.002': _log(1.4)}
  _write_runs(tmp_path, rows, logs)
  text = run_small_scale.select_from_tuning(str(tmp_path), 'val', min_ratio=1.0)
  assert '| updater=rsam,gamma=0.002,lam=2,rho=0.2 | 2 | 95.00 ± 0.00 | 0.40 | 0.950 | 0.90 | no |' in text
  assert '| updater=rsam,gamma=0.002,lam=0.5,rho=0.5 | 2 | 86.00 ± 1.41 | 1.30 | 0.600 | 0.36 | yes |' in text
  assert '- rsam: updater=rsam,gamma=0.002,lam=0.5,rho=0.5 (86.00 ± 1.41, 2 seeds)' in text
  assert '- sam: updater=sam,rho=0.2 (82.00 ± 2.83, 2 seeds)' in text
  assert '| updater=sam,rho=0.5 | 2 | 70.00 ± 0.00 | 0 (no noise) | 1 | 1 | yes |' in text
  _write_runs(tmp_path, rows + [('updater=rsam,rho=2.0,seed=0', 0.99)], logs)  # no composition logged
  text = run_small_scale.select_from_tuning(str(tmp_path), 'val', min_ratio=1.0)
  assert '| updater=rsam,rho=2.0 | 1 | 99.00 ± nan | not logged | — | — | no |' in text
  assert '- rsam: updater=rsam,gamma=0.002,lam=0.5,rho=0.5 (86.00 ± 1.41, 2 seeds)' in text


def test_two_level_report_pairs_by_draw_and_seed(tmp_path):
  # draws 1, 2, 3 with differences (points) [1, 3], [5, 7], [3, 5]: seed_stats' worked example
  diffs = {1: (1.0, 3.0), 2: (5.0, 7.0), 3: (3.0, 5.0)}
  rows, seed = [], 100
  for draw, ds in diffs.items():
    for d in ds:
      rows += [(f'updater=rsam,lam=0.5,draw={draw},seed={seed}', (50.0 + d) / 100),
               (f'updater=sam,rho=0.2,draw={draw},seed={seed}', 0.5)]
      seed += 1
  rows.append(('updater=sam,rho=0.2,draw=3,seed=999', 0.1))  # unpaired: left out
  _write_runs(tmp_path, rows, {f'updater=rsam,lam=0.5,draw={d}': _log(1.0 + d) for d in diffs})
  report = run_small_scale.two_level_report(str(tmp_path), 'test', 'updater=rsam,lam=0.5', 'rho=0.2,updater=sam',
                                            effect=1.0, alpha=0.05)
  p = report['result']['primary']
  assert p['mean'] == pytest.approx(4.0) and p['dof'] == 2 and p['se'] == pytest.approx(2 / math.sqrt(3))
  assert report['result']['means'] == {1: pytest.approx(2.0), 2: pytest.approx(6.0), 3: pytest.approx(4.0)}
  from rsam.training import seed_stats
  assert report['power_at_estimates'] == pytest.approx(seed_stats.power_two_level(1.0, math.sqrt(2), math.sqrt(3), 3, 2))
  comp = report['arms']['a']['composition']
  assert comp['runs'] == 6 and comp['ratio_at_least_1'] == 6 and comp['noise_grad_ratio'][2] == pytest.approx(3.1)
  assert report['arms']['b']['composition'] == {} and report['arms']['b']['mean'] == pytest.approx(50.0)
  text = run_small_scale.format_two_level(report)
  assert 'primary (draws random; t test on the 3 draw means, 2 dof): mean +4.000, se 1.155, t 3.46, p 0.0742' in text
  assert '| updater=sam,rho=0.2 | 6 | 50.00 ± 0.00 | 0.00 | 0 (no noise) | — | 1 | 1 |' in text
  with open(tmp_path / 'a.json', 'w') as f:
    json.dump(report, f)
  table = run_small_scale.holm_table({'H1': report, 'H2': json.load(open(tmp_path / 'a.json'))})
  assert '| H1 | +4.00 | 0.0742 | 0.1484 | no |' in table
  with pytest.raises(ValueError, match='no \\(draw, seed\\) run by both'):
    run_small_scale.two_level_report(str(tmp_path), 'test', 'updater=rsam', 'updater=sam', effect=1.0)


def test_stability_cell_tests_test_every_cell_and_correct_over_all(tmp_path):
  summary = {'rhos': [0.0, 0.5, 1.0], 'per_curve': {
      'vanilla': {'cos_seeds': [[1, 0.5, 0.4]] * 3},
      '0.02': {'cos_diff_seeds': [[0.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 3.0, -1.0]]}}}
  os.makedirs(tmp_path / 'conv')
  with open(tmp_path / 'conv' / 'summary.json', 'w') as f:
    json.dump(summary, f)
  text = run_small_scale.stability_cell_tests([str(tmp_path / 'conv')], 'cos_diff')
  # ρ = 0.5: 1, 2, 3 -> t 2√3 on 2 dof, p = 1 − t/√(2 + t²) = 0.0742; ρ = 1: 0, 1, −1 -> p 1; Holm over 2
  assert 'Holm over all 2 cells' in text and 'critical t 4.30' in text
  assert '| conv | 0.02 | 0.5 | +2.000 | 0.577 | 3.46 | 0.074 | 0.148 |' in text
  assert '| conv | 0.02 | 1 | +0.000 | 0.577 | 0.00 | 1.000 | 1.000 |' in text
  assert '0 of 2 cells have p ≤ 0.05 unadjusted; 0 after Holm.' in text
