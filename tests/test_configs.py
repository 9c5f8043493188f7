"""Every config in configs/ and every cell of Tables 1-4 / Fig. 3: loads, validates, builds, counts its steps.

Big models are only traced (``jax.eval_shape``), once per (model, classes, image size); each family
(CIFAR ResNet, WRN + LPF-SGD, ViT + mixup + RandAugment, R-GSAM) trains two steps at ``runlocal`` size on
``tfds.testing.mock_data`` through ``train_and_evaluate``. scripts/reproduce.py's command lines are parsed
with train.py's own flag definitions.
"""
import glob
import importlib
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from absl import flags
from ml_collections import config_flags

import data
from configs import families, tables
from rsam.errors import ConfigError
from rsam.training import config_check, loop, optim, train_step
from scripts import reproduce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
                      if os.path.basename(p) not in ('__init__.py', 'common.py', 'families.py', 'tables.py'))
IMAGENET_TRAIN = 1_281_167
MESH = train_step.make_mesh()


def expected_steps(config) -> int:
  """The documented rule: total_steps if set, else ⌊epochs · N_train / batch⌋."""
  if config.get('total_steps'):
    return config.total_steps
  return math.floor(config.num_epochs * data.num_train_examples(config.data) / config.batch_size)


# --- every file ---------------------------------------------------------------------------------------


def test_config_files_are_the_expected_set():
  for name in ('cifar.py', 'imagenet_vit.py', 'vit_b16_rsam.py', 'vit_b16_sam.py', 'vit_b16_adamw.py',
               'vit_s16_rsam.py', 'vit_s16_sam.py', 'vit_s16_adamw.py', 'vit_b16_gsam.py',
               'vit_b16_rgsam.py', 'quickstart.py', 'tiny.py'):
    assert name in CONFIG_FILES


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_every_config_file_loads_validates_and_documents_its_command(name):
  module = importlib.import_module(f'configs.{name[:-3]}')
  assert f'configs/{name}' in module.__doc__, 'the docstring gives the command that runs the config'
  config = module.get_config()
  config_check.validate(config)
  config_check.check_batch(config, num_devices=8, process_count=1)
  assert config_check.total_steps(config) == expected_steps(config) >= 1


def test_headline_files_are_imagenet_vit_with_two_defaults_fixed():
  for model in ('vit_b16', 'vit_s16'):
    for updater in ('adamw', 'sam', 'rsam'):
      headline = importlib.import_module(f'configs.{model}_{updater}').get_config('aug=mixup')
      generic = importlib.import_module('configs.imagenet_vit').get_config(
          f'model={model},updater={updater},aug=mixup')
      assert headline.to_dict() == generic.to_dict()
  with pytest.raises(ConfigError, match='fixes model=vit_b16'):
    importlib.import_module('configs.vit_b16_rsam').get_config('model=vit_s16')


def test_arguments_are_checked():
  cifar = importlib.import_module('configs.cifar')
  with pytest.raises(ConfigError, match='key among: dataset, model, updater, m, rho, runlocal'):
    cifar.get_config('optimiser=sgd')
  with pytest.raises(ConfigError, match="updater='lion'; choose one of"):
    cifar.get_config('updater=lion')
  with pytest.raises(ConfigError, match='m=.x.* not a valid int'):
    cifar.get_config('m=x')
  with pytest.raises(ConfigError, match="lam= does not apply to updater 'sam'"):
    importlib.import_module('configs.vit_b16_sam').get_config('lam=1')
  assert cifar.get_config('m=16').updater.m == 16
  assert importlib.import_module('configs.vit_b16_rsam').get_config('m=none').updater.m is None


# --- every table cell -----------------------------------------------------------------------------


_SHAPES = {}


def _param_shapes(run, config):
  """eval_shape of the initial state, once per model/classes/image size (big models: no real init)."""
  key = (config.model.name, json.dumps(config.model.overrides.to_dict(), sort_keys=True),
         run.num_classes, data.image_shape(config.data), config.compute_dtype)
  if key not in _SHAPES:
    _SHAPES[key] = jax.eval_shape(run.init_state)['params']
  return _SHAPES[key]


CELLS = [(r.home, r.name) for r in tables.all_runs()]
EXTRA = [f'configs/cifar.py:dataset={d},model=resnet18,updater={u}' for d in families.CIFAR_DATASETS
         for u in ('gsam', 'rgsam', 'asam')]


@pytest.mark.parametrize('cell', CELLS + EXTRA, ids=lambda c: '/'.join(c) if isinstance(c, tuple) else c)
def test_every_cell_validates_builds_and_counts_its_steps(cell):
  spec = tables.by_name()[cell] if isinstance(cell, tuple) else tables.Run('x', 'x', cell, ())
  config = spec.load()
  config_check.validate(config)
  config_check.check_batch(config, num_devices=8, process_count=1)
  run = train_step.build(config, MESH)
  if config.data.name == 'imagenet2012':
    # 300 epochs of train[:99%]: tfds's percent slices end at the closest example, round(0.99 · N).
    assert config.data.train_split == 'train[:99%]'
    assert run.total_steps == math.floor(300 * round(0.99 * IMAGENET_TRAIN) / 4096) == 92_897
    assert families.OFFICIAL_TOTAL_STEPS - run.total_steps == 937  # run.sh's 93,834: 303 epochs of it
    assert (config.num_epochs, config.batch_size) == (300, 4096)
  else:
    assert run.total_steps == expected_steps(config) == 200 * 50_000 // 128 == 78_125
  lr0 = 0.0 if config.schedule.warmup_steps else config.optimizer.lr
  assert float(run.schedule(0)) == pytest.approx(lr0, rel=1e-6)
  assert float(run.schedule(run.total_steps)) == pytest.approx(config.schedule.end_lr, rel=1e-5, abs=1e-9)
  shapes = _param_shapes(run, config)
  jax.eval_shape(run.tx.init, shapes)  # the base optimizer's state builds for these parameters
  num_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  assert num_params > 1e7  # the full-size model, not a tiny one

  local = spec.load(runlocal=True)
  config_check.validate(local)
  config_check.check_batch(local, num_devices=8, process_count=1)
  assert config_check.total_steps(local) == 2 and local.batch_size == 16
  assert local.model.name in ('resnet_tiny', 'wrn_tiny', 'vit_tiny')
  assert local.updater.to_dict().keys() == config.updater.to_dict().keys()


def test_table_grids_match_the_paper_files():
  for table, path in (('1', 'table1_cifar10.json'), ('2', 'table2_cifar100.json'),
                      ('3', 'table3_imagenet_vit.json'), ('4', 'table4_robustness.json'),
                      ('fig3a', 'fig3a_gsam_comparison.json')):
    with open(os.path.join(REPO, 'results', 'paper', path)) as f:
      paper = json.load(f)
    runs = tables.runs_of(table)
    configs = [r.load() for r in runs]
    cells = {(c.model.name, _column(c), c.mixup_alpha > 0, c.data.get('randaugment_layers', 0) > 0)
             for c in configs}
    wanted = {(r['model'], r['optimizer'], r.get('mixup', False), r.get('randaug', False))
              for r in paper['rows']}
    assert cells == wanted, table
    if table in ('1', '2'):
      assert {c.data.name for c in configs} == {paper['dataset']}
      assert {(c.batch_size, c.num_epochs) for c in configs} == {(paper['batch_size'], paper['epochs'])}
  assert len(tables.all_runs()) == 21 + 21 + 12 + 2 + 4 + 4 + 10
  assert len({(r.home, r.name) for r in tables.all_runs()}) == len(tables.all_runs())


def _column(config):
  if config.updater.name == 'plain':
    return {'momentum': 'sgd_momentum'}.get(config.optimizer.name, config.optimizer.name)
  return config.updater.name


# --- the published and the chosen values -------------------------------------------------------------


def test_cifar_values():
  cifar = importlib.import_module('configs.cifar').get_config
  c = cifar('dataset=cifar10,model=resnet18,updater=sam')
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.momentum, c.optimizer.weight_decay) == (
      'momentum', 0.1, 0.9, 5e-4)
  assert (c.schedule.name, c.data.augment, c.updater.rho, c.updater.m) == ('cosine', 'basic', 0.05, None)
  assert cifar('dataset=cifar100,model=resnet18,updater=rsam').updater.rho == 0.1
  r = cifar('dataset=cifar10,model=resnet50,updater=rsam').updater
  assert (r.rho_schedule, r.lam, r.gamma, r.gamma_growth) == ('constant', 2.0, 5e-4, 5.0)
  for dataset, rho in (('cifar10', 0.5), ('cifar100', 1.0)):  # SamsungLabs/ASAM README's commands
    a = cifar(f'dataset={dataset},updater=asam').updater
    assert (a.rho, a.eta, a.scale_biases, a.adaptive) == (rho, 0.01, False, True)
  lpf = cifar('dataset=cifar10,model=resnet18,updater=lpf_sgd').updater
  assert (lpf.num_samples, lpf.gamma, lpf.gamma_growth) == (1, 0.002, 1.0)
  for dataset, growth in (('cifar10', 35.0), ('cifar100', 25.0)):
    lpf = cifar(f'dataset={dataset},model=wrn28_10,updater=lpf_sgd').updater
    assert (lpf.num_samples, lpf.gamma, lpf.gamma_growth) == (8, 5e-4, growth)
  for updater, opt in (('sgd', 'sgd'), ('rmsprop', 'rmsprop'), ('adamw', 'adamw')):
    c = cifar(f'updater={updater}')
    assert (c.updater.name, c.optimizer.name) == ('plain', opt)
  sgdm, adamw = cifar('updater=sgd_momentum').optimizer, cifar('updater=adamw').optimizer
  assert sgdm.lr * sgdm.weight_decay == pytest.approx(adamw.lr * adamw.weight_decay)  # same shrink per step


def test_vit_values():
  get = lambda name, arg=None: importlib.import_module(f'configs.{name}').get_config(arg)  # noqa: E731
  c = get('vit_b16_rsam')
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.b1, c.optimizer.b2,
          c.optimizer.grad_clip_norm, c.optimizer.decay_kernels_only) == ('adamw', 3e-3, 0.3, 0.9, 0.999,
                                                                          1.0, False)
  assert (c.schedule.name, c.schedule.warmup_steps, c.schedule.end_lr) == ('linear', 10_000, 3e-5)
  assert (c.loss, c.label_smoothing, c.compute_dtype) == ('sigmoid_xent', 1e-4, 'bfloat16')
  assert c.model.overrides.to_dict() == dict(pool='token', representation_size=768, head_bias_init=-10.0,
                                             dropout_rate=0.1, attention_dropout_rate=0.0)
  assert tuple(c.eval_sets) == ('validation', 'imagenet_real', 'imagenet_v2', 'imagenet_r', 'imagenet_c')
  u = c.updater
  assert (u.rho_schedule, u.rho_max, u.rho_min, u.rho_warmup_steps, u.lam, u.gamma, u.gamma_growth, u.m) == (
      'lr_tied', 2.5, 1.5, 10_000, 2.0, 5e-4, 5.0, 16)
  assert (c.mixup_alpha, c.data.randaugment_layers) == (0.0, 0)
  ra = get('vit_b16_sam', 'aug=mixup_ra')
  assert (ra.mixup_alpha, ra.data.randaugment_layers, ra.data.randaugment_magnitude) == (0.5, 2, 15.0)
  assert get('vit_b16_adamw', 'aug=mixup').mixup_alpha == 0.5
  assert get('vit_b16_adamw').updater.name == 'plain'
  assert (get('vit_b16_sam').updater.rho, get('vit_s16_sam').updater.rho) == (0.05, 0.1)
  # ViT-SAM's pair: its ρ with its per-device batch, 4096 images over 64 TPU v3 chips of 2 cores each.
  assert get('vit_b16_sam').updater.m == get('vit_s16_sam').updater.m == 4096 // (64 * 2) == 32
  assert get('vit_b16_sam', 'm=16').updater.m == 16 and get('vit_b16_sam', 'm=none').updater.m is None
  assert get('vit_b16_rsam').data.train_split == 'train[:99%]' and get('vit_b16_rsam').total_steps is None
  assert get('vit_b16_rsam').data.eval_resize_mode == 'square' and 'minival' not in c.eval_sets
  assert get('vit_s16_rsam').model.overrides.representation_size == 384
  g, rg = get('vit_b16_gsam').updater, get('vit_b16_rgsam').updater
  assert (g.rho_max, g.rho_min, g.alpha, g.rho_warmup_steps, g.m) == (0.6, 0.2, 0.4, 0, 16)
  assert (rg.rho_max, rg.rho_min, rg.alpha, rg.lam, rg.gamma, rg.gamma_growth) == (
      0.6, 0.2, 0.4, 2.0, 5e-4, 5.0)
  sweep = get('vit_b16_rsam', 'rho_max=2,rho_min=1.2,lam=4')
  assert (sweep.updater.rho_max, sweep.updater.rho_min, sweep.updater.lam) == (2.0, 1.2, 4.0)


def official_adam_steps(params, grads_per_step, lrs, *, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.3,
                        clip=1.0):
  """The official update (R-SAM vit_jax/train.py): global-norm clip g · min(1, clip/‖g‖), then
  flax.optim.Adam(beta1=0.9, beta2=0.999, weight_decay=0.3).apply_param_gradient on EVERY leaf:
  m, v moving averages, bias correction at t = step + 1, p − lr·m̂/(√v̂ + eps) − lr·wd·p (decay decoupled,
  multiplied by the learning rate, of the pre-update parameter)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  for step, (g, lr) in enumerate(zip(grads_per_step, lrs)):
    norm = np.sqrt(sum(np.sum(np.square(x)) for x in g.values()))
    g = {k: x * min(1.0, clip / norm) for k, x in g.items()}
    t = step + 1.0
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
      update = (m[k] / (1 - b1 ** t)) / (np.sqrt(v2[k] / (1 - b2 ** t)) + eps)
      p[k] = p[k] - lr * update - lr * weight_decay * p[k]
  return p


@pytest.mark.parametrize('name', ['vit_b16_rsam', 'vit_b16_sam', 'vit_s16_adamw', 'vit_b16_gsam'])
def test_vit_base_optimizer_is_the_official_flax_adam(name):
  """Three steps of the config's optax chain equal flax.optim.Adam(weight_decay=0.3) after the official
  clip, on a kernel, a bias and a LayerNorm scale (kernels-only decay left the 1-D leaves 4% apart)."""
  config = importlib.import_module(f'configs.{name}').get_config()
  rng = np.random.default_rng(0)
  params = {'kernel': rng.normal(size=(4, 3)), 'bias': rng.normal(size=3), 'scale': 1 + rng.normal(size=3)}
  grads = [{k: 2.0 * rng.normal(size=v.shape) for k, v in params.items()} for _ in range(3)]
  lrs = [3e-3, 2e-3, 1e-3]  # the lr multiplies the decay: a schedule tells it apart from a constant
  tx = optim.make_optimizer(config.optimizer, lambda count: jnp.asarray(lrs)[count])
  p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  state = tx.init(p)
  for g in grads:
    updates, state = tx.update({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}, state, p)
    p = optax.apply_updates(p, updates)
  expected = official_adam_steps(params, grads, lrs)
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), expected[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_cifar_rho_sweep_runs_rsam_at_multiples_of_sams_rho():
  for dataset, sam_rho in (('cifar10', 0.05), ('cifar100', 0.1)):
    rhos = []
    for k in tables.CIFAR_RHO_MULTIPLES:
      c = tables.cifar_rho_run(dataset, k).load()
      assert (c.data.name, c.model.name, c.updater.name, c.updater.rho_schedule) == (
          dataset, 'resnet18', 'rsam', 'constant')
      rhos.append(c.updater.rho)
      assert c.updater.rho == c.updater.rho_max == c.updater.rho_min
    assert rhos == pytest.approx([k * sam_rho for k in tables.CIFAR_RHO_MULTIPLES])
    assert tables.CIFAR_RHO_MULTIPLES[0] == 1 and tables.cifar_rho_run(dataset, 1).home in ('1', '2')
  with pytest.raises(ConfigError, match="rho= does not apply to updater 'lpf_sgd'"):
    importlib.import_module('configs.cifar').get_config('updater=lpf_sgd,rho=0.1')


def test_runlocal_shrinks_imagenet():
  c = importlib.import_module('configs.vit_b16_rsam').get_config('runlocal=1,aug=mixup_ra')
  assert (c.model.name, c.model.overrides.representation_size, c.data.image_size) == ('vit_tiny', 32, 32)
  assert (c.data.num_train_examples, c.updater.m, c.schedule.warmup_steps) == (32, 2, 1)
  assert tuple(c.data.imagenet_c_corruptions) == ('gaussian_noise',) and c.mixup_alpha == 0.5


# --- scripts/reproduce.py --------------------------------------------------------------------------


def _parse_train_flags(argv):
  """Parses a printed train.py command with train.py's own flag definitions."""
  assert argv[:2] == ['python', 'train.py']
  argv = ['train.py'] + argv[2:]
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, '', flag_values=fv)
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv


def test_reproduce_lists_runs_and_skips_finished_ones(tmp_path, capsys):
  root = str(tmp_path)
  done = tables.by_name()[('3', 'vit_b16-none-rsam')].workdir(root, 1)
  os.makedirs(done)
  open(os.path.join(done, 'results.json'), 'w').close()
  assert reproduce.main(['--table', '4', '--seeds', '2', '--workdir_root', root,
                         '--data_dir', 'gs://bucket/tfds', '--', '--config.distributed.num_processes=4']) == 0
  lines = capsys.readouterr().out.splitlines()
  commands = [line for line in lines if not line.startswith('#')]
  assert lines[0] == '# table 4: 12 runs (6 cells x 2 seeds), 1 done, 11 listed'
  assert len(commands) == 11 and f'# done: {done}/results.json' in lines
  argv = reproduce.shlex.split(commands[-1])
  fv = _parse_train_flags(argv)
  config = fv.config
  assert fv.workdir == f'{root}/3/vit_s16-none-rsam/seed1'
  assert (config.model.name, config.updater.name, config.seed) == ('vit_s16', 'rsam', 1)
  assert config.wandb.cell == '3/vit_s16-none-rsam'  # wandb's group, name and tags: tests/test_everyday.py
  assert config.data.data_dir == 'gs://bucket/tfds' and config.distributed.num_processes == 4


def test_reproduce_fig3b_sweep_and_runlocal(capsys):
  reproduce.main(['--table', 'fig3b', '--workdir_root', 'runs', '--runlocal'])
  commands = [line for line in capsys.readouterr().out.splitlines() if not line.startswith('#')]
  assert len(commands) == 5
  fv = _parse_train_flags(reproduce.shlex.split(commands[1]))
  assert fv.workdir == 'runs_runlocal/fig3b/rho_max_1/seed0'  # its own root: never a real run's results
  assert (fv.config.updater.rho_max, fv.config.updater.rho_min) == (1.0, 0.6)
  assert fv.config.total_steps == 2 and fv.config.model.name == 'vit_tiny'


def test_reproduce_launch_local_runs_each_command(tmp_path, capsys):
  # 'true' stands in for the interpreter: the loop runs every listed command from the repository root.
  assert reproduce.main(['--table', 'fig3a', '--workdir_root', str(tmp_path), '--launch', 'local',
                         '--python', 'true']) == 0
  out = capsys.readouterr().out
  assert out.count(': done in ') == 3 and '[3/3] fig3a/vit_b16-none-rgsam seed0: done in ' in out
  log = tmp_path / 'logs' / 'fig3a' / 'vit_b16-none-rgsam' / 'seed0.log'
  assert log.read_text().startswith('# true train.py --config=configs/vit_b16_rgsam.py')
  assert reproduce.main(['--table', 'fig3a', '--workdir_root', str(tmp_path), '--launch', 'local',
                         '--python', 'false']) == 1


# --- two steps of each family ----------------------------------------------------------------------


# Three runs cover the four families: the ViT run is R-GSAM (GSAM's decomposition on top of R-SAM's noise,
# lr-tied ρ) with mixup + RandAugment, bfloat16, m-sharpness groups and all five Table 4 eval sets.
FAMILIES = {
    'cifar_resnet_rsam': 'configs/cifar.py:dataset=cifar10,model=resnet18,updater=rsam',
    'cifar_wrn_lpf_sgd': 'configs/cifar.py:dataset=cifar100,model=wrn28_10,updater=lpf_sgd',
    'vit_rgsam_mixup_randaugment': 'configs/vit_b16_rgsam.py:aug=mixup_ra',
}


@pytest.fixture
def rbg_keys():
  """rbg keys: XLA compiles them much faster on CPU than threefry (R-SAM's per-leaf noise and the init:
  ~95 s instead of ~140 s of CPU for the three runs); the loop and the updaters take any key type."""
  previous = jax.config.jax_default_prng_impl
  jax.config.update('jax_default_prng_impl', 'rbg')
  yield
  jax.config.update('jax_default_prng_impl', previous)


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_family_trains_two_steps_at_runlocal_size(family, tmp_path, rbg_keys, capsys):
  """runlocal=1 with no dataset (an empty data_dir): tfds mock data through the same pipeline; every periodic
  evaluator runs after step 1, every set at the end (ImageNet-C only there), and no 'count' curve."""
  del rbg_keys
  import tensorflow as tf
  config = tables.Run('x', 'x', FAMILIES[family], ()).load(runlocal=True)
  (tmp_path / 'no_data').mkdir()
  with config.unlocked():
    config.data.data_dir = str(tmp_path / 'no_data')
    config.profile.first_step = config.profile.last_step = 2  # a jax.profiler trace of step 2
  results = loop.train_and_evaluate(config, str(tmp_path / 'work'))
  out = capsys.readouterr().out
  # The compile is announced before it starts and timed; the first step line has no rate (only the
  # compiling step ran), the second an ETA of 0 s.
  compiling, compiled = out.index('compiling the train step'), out.index('compiled and ran step 1 in ')
  assert compiling < compiled < out.index('step 1/2 |') < out.index('step 2/2 |')
  assert 'step 1/2 | ' in out and 'img/s after the first timed step' in out.split('step 1/2 |')[1].split('\n')[0]
  assert 'ETA 0s' in out.split('step 2/2 |')[1].split('\n')[0]
  periodic_first = [n for n in config.eval_sets if config.eval_intervals.get(n)] + [
      n for n in config.eval_intervals if n not in config.eval_sets and config.eval_intervals[n]]
  assert f'compiling the evaluation of {", ".join(periodic_first)} (first use)...' in out  # after step 1
  assert glob.glob(str(tmp_path / 'work' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  assert results['steps'] == results['total_steps'] == 2
  assert set(results['eval']) == set(config.eval_sets) | set(config.eval_intervals)  # the periodic-only too
  for name, result in results['eval'].items():
    assert 0.0 <= result['accuracy'] <= 1.0, name
  assert os.path.exists(tmp_path / 'work' / 'results.json')
  assert not os.listdir(tmp_path / 'no_data')
  evaluated = {}
  for path in glob.glob(str(tmp_path / 'work' / 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag.startswith('eval/'):
          evaluated.setdefault(value.tag, set()).add(event.step)
  periodic = {name for name, every in config.eval_intervals.items() if every}
  expected = {f'eval/{name}/accuracy': {1, 2} if name in periodic else {2} for name in results['eval']}
  assert evaluated == expected
  if family.startswith('vit'):
    assert (config.mixup_alpha, config.data.randaugment_layers, config.updater.m) == (0.5, 2, 2)
    assert set(results['eval']) == {'minival', 'validation', 'imagenet_real', 'imagenet_v2', 'imagenet_r',
                                    'imagenet_c'} and set(results['eval']['imagenet_c']['table']) == {'gaussian_noise'}
    assert evaluated['eval/minival/accuracy'] == {1, 2} and evaluated['eval/imagenet_c/accuracy'] == {2}
  else:
    assert evaluated == {'eval/test/accuracy': {1, 2}}
