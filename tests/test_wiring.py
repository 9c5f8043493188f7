"""Every config field reaches the object it configures (issue: tests that fail when the code is wrong).

Each test builds an object from a config whose every field has a NON-default value and compares the
object with an independent float64 reference written here from the formulas (updaters: the least-squares
references of tests/test_updaters.py; schedules and optimizers: the closed forms in the docstrings of
rsam/schedules.py and rsam/training/optim.py). A field the factory drops, or replaces by a constant, then
changes a number the test checks. ``test_every_field_is_covered`` fails when a field is added without
being added here.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from rsam.training import factory, optim
from tests.test_updaters import (assert_tree_close, flat, make_problem, np_asam_point, np_decompose,
                                 np_grad, np_loss, np_noise, np_sam_point, run, tmap)

TOTAL = 40        # training steps of every schedule here
STEP = 23         # the step the updaters are evaluated at (past every warm-up, mid-schedule)
LR_MAX, LR_MIN = 1.0, 0.1


def np_lr(step):
  """The lr schedule the tests hand to the factory: linear LR_MAX -> LR_MIN over TOTAL steps."""
  return LR_MAX + (LR_MIN - LR_MAX) * min(step, TOTAL) / TOTAL


def np_rho(step, rho_max, rho_min, warmup):
  """ρ tied to lr at t = step + 1 (GSAM Alg. 1; official R-SAM warm-up branch)."""
  lr = np_lr(step)
  if step + 1 < warmup:
    return rho_max * lr / LR_MAX
  return rho_min + (rho_max - rho_min) * (lr - LR_MIN) / (LR_MAX - LR_MIN)


def np_gamma(step, gamma0, growth):
  """γ0 (1 + (growth − 1)(1 − cos(π t / T)) / 2) at t = step + 1, held after T."""
  t = min(step + 1, TOTAL)
  return gamma0 * (1 + (growth - 1) * (1 - math.cos(math.pi * t / TOTAL)) / 2)


# Non-default values for EVERY field of every updater (factory.DEFAULTS). Constant-ρ configs test the
# update itself; the lr-tied ones below test the ρ schedule.
OVERRIDES = {
    'sam': dict(rho=0.23, adaptive=False),
    'asam': dict(rho=0.7, eta=0.03, scale_biases=True),
    'rsam': dict(rho_schedule='constant', rho=0.31, lam=0.7, gamma=0.03, gamma_growth=3.0, clean_loss=True),
    'gsam': dict(rho_schedule='constant', rho=0.27, alpha=0.25),
    'rgsam': dict(rho_schedule='constant', rho=0.29, alpha=0.35, lam=0.6, gamma=0.04, gamma_growth=2.0,
                  clean_loss=True),
    'lpf_sgd': dict(gamma=0.03, gamma_growth=4.0, num_samples=2),
}
LR_TIED = dict(rho_schedule='lr_tied', rho_max=0.8, rho_min=0.3, rho_warmup_steps=7)
GROUPS = dict(m=4, group_mode='loop')
# Fields whose effect is checked elsewhere in this file: ASAM's `adaptive` (True by default; the
# reference is the adaptive ascent), SAM's `adaptive` (False = plain SAM), and the lr-tied/group fields.
COVERED_ELSEWHERE = set(LR_TIED) | set(GROUPS) | {'adaptive'}


def _build(name, **fields):
  cfg = factory.updater_config(name, **fields)
  return factory.make_updater(cfg, total_steps=TOTAL, lr_schedule=optax.linear_schedule(LR_MAX, LR_MIN, TOTAL),
                           lr_max=LR_MAX, lr_min=LR_MIN)


def test_every_field_is_covered():
  for name, fields in factory.DEFAULTS.items():
    if name == 'plain':
      continue
    missing = set(fields) - set(OVERRIDES[name]) - COVERED_ELSEWHERE
    assert not missing, f'{name}: no wiring test for {sorted(missing)}'
    for key, value in OVERRIDES[name].items():
      if key not in ('rho_schedule', 'adaptive'):
        assert value != fields[key], f'{name}.{key}: the test value must differ from the default'


def _noisy_ascent(w, x, y, key, gamma, lam, rho):
  noise_key, _ = jax.random.split(jax.random.key(key))
  delta0 = np_noise(noise_key, w, gamma)
  g_hat = np_grad(tmap(np.add, w, delta0), x, y)
  g_adv = np_grad(np_sam_point(w, tmap(lambda d, g: d + lam * g, delta0, g_hat), rho), x, y)
  return delta0, g_hat, g_adv


@pytest.mark.parametrize('name', sorted(OVERRIDES))
def test_updater_from_config_matches_reference(name):
  x, y, w = make_problem(5)
  o = OVERRIDES[name]
  key = 11
  out = run(_build(name, **o), w, x, y, key=key, step=STEP)
  if name == 'sam':
    expected = np_grad(np_sam_point(w, np_grad(w, x, y), o['rho']), x, y)
  elif name == 'asam':
    expected = np_grad(np_asam_point(w, np_grad(w, x, y), o['rho'], o['eta'], scaled=('kernel', 'bias')),
                       x, y)
  elif name == 'gsam':
    g = np_grad(w, x, y)
    expected = np_decompose(g, np_grad(np_sam_point(w, g, o['rho']), x, y), o['alpha'])
  elif name in ('rsam', 'rgsam'):
    gamma = np_gamma(STEP, o['gamma'], o['gamma_growth'])
    delta0, g_hat, g_adv = _noisy_ascent(w, x, y, key, gamma, o['lam'], o['rho'])
    expected = np_decompose(g_hat, g_adv, o['alpha']) if name == 'rgsam' else g_adv
    np.testing.assert_allclose(out.aux['gamma'], gamma, rtol=1e-5)
    np.testing.assert_allclose(out.aux['loss_clean'], np_loss(w, x, y), rtol=1e-5)  # clean_loss=True
  else:  # lpf_sgd: the mean over num_samples interleaved chunks, each with its own noise
    gamma = np_gamma(STEP, o['gamma'], o['gamma_growth'])
    noise_key, _ = jax.random.split(jax.random.key(key))
    n = o['num_samples']
    grads = [np_grad(tmap(np.add, w, np_noise(jax.random.fold_in(noise_key, k), w, gamma)),
                     x[k::n], y[k::n]) for k in range(n)]
    expected = tmap(lambda *g: np.mean(g, 0), *grads)
  if 'rho' in o:
    np.testing.assert_allclose(out.aux['rho'], o['rho'], rtol=1e-6)
  assert_tree_close(out.grads, expected)


@pytest.mark.parametrize('name', ['sam', 'asam', 'rsam', 'gsam', 'rgsam'])
def test_lr_tied_rho_from_config(name):
  upd = _build(name, **LR_TIED)
  for step in (0, 3, 5, 6, 7, 20, TOTAL - 1):
    np.testing.assert_allclose(upd.rho(step), np_rho(step, 0.8, 0.3, 7), rtol=1e-5, err_msg=f'step {step}')


def test_rgsam_lr_tied_update_uses_the_schedule_alpha_and_lambda():
  """The whole R-GSAM update at a step of an lr-tied run, against the reference built from the formulas."""
  x, y, w = make_problem(6)
  o = dict(LR_TIED, alpha=0.15, lam=1.7, gamma=0.02, gamma_growth=2.5)
  out = run(_build('rgsam', **o), w, x, y, key=4, step=STEP)
  rho = np_rho(STEP, 0.8, 0.3, 7)
  _, g_hat, g_adv = _noisy_ascent(w, x, y, 4, np_gamma(STEP, 0.02, 2.5), 1.7, rho)
  assert_tree_close(out.grads, np_decompose(g_hat, g_adv, 0.15))


def test_group_fields_reach_the_grouped_updater():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('data',))
  cfg = factory.updater_config('rsam', lam=0.7, **GROUPS)
  upd = factory.make_updater(cfg, total_steps=TOTAL, lr_schedule=optax.linear_schedule(LR_MAX, LR_MIN, TOTAL),
                          lr_max=LR_MAX, lr_min=LR_MIN, mesh=mesh, per_device_batch=8)
  assert (upd.m, upd.mode, upd.part_mode()) == (4, 'loop', 'loop')
  assert upd.updater.lam == 0.7 and upd.updater.accum_steps == 1


def test_accum_steps_reach_the_updater():
  for name in ('plain', 'sam', 'rsam'):
    upd = factory.make_updater(factory.updater_config(name, **({'rho_schedule': 'constant'} if name == 'rsam'
                                                          else {})), total_steps=TOTAL, accum_steps=4)
    assert upd.accum_steps == 4, name


# ---------------------------------------------------------------- config.schedule -> optax schedule
def np_schedule(name, step, *, lr, total, warmup, end_lr, boundaries=(), factor=1.0):
  if step < warmup:
    return lr * step / warmup
  s, n = step - warmup, total - warmup
  if name == 'cosine':
    frac = min(s, n) / n
    return end_lr + (lr - end_lr) * 0.5 * (1 + math.cos(math.pi * frac))
  if name == 'linear':
    return lr + (end_lr - lr) * min(s, n) / n
  if name == 'constant':
    return lr
  return lr * factor ** sum(step >= int(b * total) for b in boundaries)


@pytest.mark.parametrize('name', optim.SCHEDULES)
def test_schedule_from_config(name):
  total, lr = 50, 0.4
  cfg = ml_collections.ConfigDict({'name': name, 'warmup_steps': 5, 'end_lr': 0.01,
                                   'step_boundaries': (0.4, 0.8), 'step_factor': 0.3})
  schedule, lr_max, lr_min = optim.make_lr_schedule(cfg, lr, total)
  kw = dict(lr=lr, total=total, warmup=5, end_lr=0.01, boundaries=(0.4, 0.8), factor=0.3)
  for step in (0, 2, 5, 6, 19, 20, 21, 39, 40, 41, 49, 50):
    np.testing.assert_allclose(schedule(step), np_schedule(name, step, **kw), rtol=1e-5, atol=1e-7,
                               err_msg=f'{name} at step {step}')
  assert lr_max == lr
  expected_min = {'cosine': 0.01, 'linear': 0.01, 'constant': lr, 'step': lr * 0.3 ** 2}[name]
  np.testing.assert_allclose(lr_min, expected_min, rtol=1e-6)


# ---------------------------------------------------------------- config.optimizer -> optax chain
def _np_optimizer(name, params, grads_seq, *, lr, momentum, nesterov, wd, kernels_only, clip, b1, b2, eps):
  """Three steps of each base optimizer in float64 (PyTorch semantics, as rsam/training/optim.py says)."""
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  state = {k: {'m': np.zeros_like(v), 'v': np.zeros_like(v), 'buf': None} for k, v in p.items()}
  for t, grads in enumerate(grads_seq, start=1):
    g = {k: np.array(v, np.float64) for k, v in grads.items()}
    if clip:
      n = math.sqrt(sum(float((v ** 2).sum()) for v in g.values()))
      g = {k: v * min(1.0, clip / n) for k, v in g.items()}
    for k in p:
      decays = p[k].ndim > 1 or not kernels_only
      s = state[k]
      if name == 'adamw':
        s['m'] = b1 * s['m'] + (1 - b1) * g[k]
        s['v'] = b2 * s['v'] + (1 - b2) * g[k] ** 2
        mhat, vhat = s['m'] / (1 - b1 ** t), s['v'] / (1 - b2 ** t)
        p[k] = p[k] - lr * (mhat / (np.sqrt(vhat) + eps) + (wd * p[k] if decays else 0))
        continue
      d = g[k] + (wd * p[k] if decays else 0)
      if name == 'rmsprop':   # optax.rmsprop: v = b2 v + (1 − b2) d², step d / sqrt(v + eps), heavy ball
        s['v'] = b2 * s['v'] + (1 - b2) * d ** 2
        d = d / np.sqrt(s['v'] + eps)
        s['buf'] = d if s['buf'] is None else momentum * s['buf'] + d
        p[k] = p[k] - lr * s['buf']
      elif name == 'sgd':
        p[k] = p[k] - lr * d
      else:                  # momentum (optax.trace: buf = d + μ buf; nesterov: d + μ buf)
        s['buf'] = d if s['buf'] is None else d + momentum * s['buf']
        p[k] = p[k] - lr * (d + momentum * s['buf'] if nesterov else s['buf'])
  return p


@pytest.mark.parametrize('name,nesterov', [('sgd', False), ('momentum', False), ('momentum', True),
                                           ('rmsprop', False), ('adamw', False)])
@pytest.mark.parametrize('kernels_only', [False, True])
def test_optimizer_from_config(name, nesterov, kernels_only):
  rng = np.random.default_rng(0)
  params = {'kernel': rng.normal(size=(3, 2)), 'bias': rng.normal(size=(2,))}
  grads_seq = [{k: rng.normal(size=v.shape) * 3 for k, v in params.items()} for _ in range(3)]
  h = dict(lr=0.05, momentum=0.7, nesterov=nesterov, wd=0.02, kernels_only=kernels_only, clip=1.5,
           b1=0.8, b2=0.95, eps=1e-3)
  cfg = ml_collections.ConfigDict({
      'name': name, 'lr': h['lr'], 'momentum': h['momentum'], 'nesterov': nesterov,
      'weight_decay': h['wd'], 'decay_kernels_only': kernels_only, 'grad_clip_norm': h['clip'],
      'b1': h['b1'], 'b2': h['b2'], 'eps': h['eps']})
  tx = optim.make_optimizer(cfg, optax.constant_schedule(h['lr']))
  p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  opt_state = tx.init(p)
  for g in grads_seq:
    updates, opt_state = tx.update({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}, opt_state, p)
    p = optax.apply_updates(p, updates)
  expected = _np_optimizer(name, params, grads_seq, **h)
  np.testing.assert_allclose(flat(p), flat(expected), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- a whole config -> train_step.build
def test_build_hands_every_part_its_fields():
  """train_step.build: the lr schedule from config.schedule and config.optimizer.lr, the updater's ρ tied
  to THAT schedule, its α/λ/γ, grad_accum_steps and the total steps, checked against closed forms."""
  from configs.common import get_base_config
  from rsam.training import train_step
  config = get_base_config('rgsam')
  config.data.name = 'digits'
  config.model.name = 'resnet_tiny'
  config.total_steps = 60
  config.batch_size = 32
  config.grad_accum_steps = 2
  config.optimizer.lr = 0.3
  config.schedule.update(name='linear', warmup_steps=6, end_lr=0.03)
  config.updater.update(rho_max=0.9, rho_min=0.2, rho_warmup_steps=3, alpha=0.15, lam=1.3, gamma=0.02,
                        gamma_growth=3.0)
  run = train_step.build(config, train_step.make_mesh())
  assert run.total_steps == 60 and run.num_classes == 10
  upd = run.updater
  assert (upd.alpha, upd.lam, upd.accum_steps) == (0.15, 1.3, 2)

  def lr(step):
    return 0.3 * step / 6 if step < 6 else 0.3 + (0.03 - 0.3) * (step - 6) / 54
  for step in (0, 1, 2, 5, 6, 30, 59):
    np.testing.assert_allclose(run.schedule(step), lr(step), rtol=1e-5, atol=1e-8)
    tied = 0.2 + (0.9 - 0.2) * (lr(step) - 0.03) / (0.3 - 0.03)
    expected_rho = 0.9 * lr(step) / 0.3 if step + 1 < 3 else tied
    np.testing.assert_allclose(upd.rho(step), expected_rho, rtol=1e-5, atol=1e-7, err_msg=f'step {step}')
    t = step + 1
    np.testing.assert_allclose(upd.gamma(step), 0.02 * (1 + 2.0 * (1 - math.cos(math.pi * t / 60)) / 2),
                               rtol=1e-5)
