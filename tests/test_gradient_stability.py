"""scripts/gradient_stability.py on losses with closed-form answers (Fig. 1 / Fig. 2 curves)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsam.noise import kernelwise_noise
from scripts import gradient_stability as gs

RHOS = np.array([0.0, 0.1, 0.5, 1.0, 2.0], np.float32)


def _as_loss_fn(f):
  """A plain f(params) -> the updaters' loss_fn signature (no model state, no metrics)."""
  return lambda params, model_state, batch, rng: (f(params), (model_state, {}))


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _params(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {'dense': {'kernel': jax.random.normal(k1, (3, 4)), 'bias': jax.random.normal(k2, (4,))}}


def _profile(loss_fn, params, delta0, lam=1.0):
  out = gs.ascent_profile(loss_fn, params, {}, None, jax.random.key(0), delta0, RHOS, lam)
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


# -- linear loss: constant gradient c ----------------------------------------------------------------

def _linear(params):
  c = jax.tree.map(lambda w: jnp.linspace(-1.0, 2.0, w.size).reshape(w.shape), params)
  loss = lambda p: sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(c), jax.tree.leaves(p))) + 3.0
  return loss, _flat(c)


@pytest.mark.parametrize('with_noise', [False, True])
def test_linear_loss_cosine_is_one_and_loss_grows_by_rho_norm_c(with_noise):
  params = _params()
  f, c = _linear(params)
  delta0 = (kernelwise_noise(jax.random.key(1), params, 0.3) if with_noise
            else jax.tree.map(jnp.zeros_like, params))
  p = _profile(_as_loss_fn(f), params, delta0, lam=2.0)
  w, d = _flat(params), _flat(delta0)
  np.testing.assert_allclose(p['cos'], 1.0, atol=1e-5)
  np.testing.assert_allclose(p['loss0'], c @ (w + d) + 3.0, rtol=1e-5)
  np.testing.assert_allclose(p['loss'], c @ (w + d) + 3.0 + RHOS * np.linalg.norm(c), rtol=1e-5)
  u7 = (d + 2.0 * c) / np.linalg.norm(d + 2.0 * c)
  np.testing.assert_allclose(p['loss_eq7'], c @ w + 3.0 + RHOS * (c @ u7), rtol=1e-5)
  np.testing.assert_allclose(p['grad_norm'], np.linalg.norm(c), rtol=1e-5)
  np.testing.assert_allclose(p['noise_norm'], np.linalg.norm(d), rtol=1e-5, atol=1e-7)


# -- quadratic loss ½ wᵀAw: g = Aw --------------------------------------------------------------------

def _quadratic(params, seed=3):
  n = _flat(params).size
  m = np.random.default_rng(seed).normal(size=(n, n))
  a = m @ m.T / n + np.diag(np.linspace(0.1, 5.0, n))  # SPD, condition number ~ 50

  def f(p):
    w = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(p)])
    return 0.5 * w @ jnp.asarray(a, jnp.float32) @ w
  return f, a


@pytest.mark.parametrize('with_noise', [False, True])
def test_quadratic_loss_matches_closed_form(with_noise):
  params = _params(1)
  f, a = _quadratic(params)
  delta0 = (kernelwise_noise(jax.random.key(2), params, 0.2) if with_noise
            else jax.tree.map(jnp.zeros_like, params))
  lam = 0.7
  p = _profile(_as_loss_fn(f), params, delta0, lam)
  w, d = _flat(params), _flat(delta0)
  w_hat = w + d
  g = a @ w_hat
  u = g / np.linalg.norm(g)
  g_rho = g[None] + RHOS[:, None] * (a @ u)[None]              # ∇L(ŵ + ρu) = g + ρAu
  cos = g_rho @ g / (np.linalg.norm(g_rho, axis=1) * np.linalg.norm(g))
  loss = 0.5 * w_hat @ a @ w_hat + RHOS * np.linalg.norm(g) + 0.5 * RHOS ** 2 * (u @ a @ u)
  u7 = (d + lam * g) / np.linalg.norm(d + lam * g)
  loss7 = 0.5 * w @ a @ w + RHOS * (u7 @ a @ w) + 0.5 * RHOS ** 2 * (u7 @ a @ u7)
  np.testing.assert_allclose(p['cos'], cos, atol=2e-5)
  np.testing.assert_allclose(p['loss'], loss, rtol=2e-5)
  np.testing.assert_allclose(p['loss_eq7'], loss7, rtol=2e-5)
  assert p['cos'][0] == pytest.approx(1.0, abs=1e-6)
  assert np.all(np.diff(p['cos']) < 0)  # a curved loss: the gradient turns away as ρ grows


def test_samples_and_summary_count_batches_times_draws():
  params = _params()
  f, c = _linear(params)
  batches = [None, None, None]
  samples = gs.stability_samples(_as_loss_fn(f), params, {}, batches, jax.random.key(0), RHOS,
                                 [0.01, 0.1], num_draws=2, lam=1.0)
  assert set(samples) == {'vanilla', 0.01, 0.1}
  assert samples['vanilla']['cos'].shape == (3, len(RHOS))
  assert samples[0.1]['cos'].shape == (6, len(RHOS))
  for s in samples.values():  # linear: every sample has cos 1 and gains exactly ρ‖c‖
    np.testing.assert_allclose(s['cos'], 1.0, atol=1e-5)
    np.testing.assert_allclose(s['loss'] - s['loss0'][:, None],
                               np.broadcast_to(RHOS * np.linalg.norm(c), s['loss'].shape),
                               rtol=1e-4, atol=1e-5)
  # The draws differ from each other, and a bigger γ gives bigger noise.
  assert len(set(np.round(samples[0.1]['noise_norm'], 6))) == 6
  assert samples[0.1]['noise_norm'].mean() > 5 * samples[0.01]['noise_norm'].mean()
  summary = gs.summarize(samples)
  assert summary[0.1]['n'] == 6 and summary['vanilla']['n'] == 3
  np.testing.assert_allclose(summary[0.1]['cos_mean'], 1.0, atol=1e-5)
  np.testing.assert_allclose(summary[0.1]['loss_std'], samples[0.1]['loss'].std(0), rtol=1e-6)
  np.testing.assert_allclose(summary[0.1]['loss_sem'],
                             samples[0.1]['loss'].std(0, ddof=1) / np.sqrt(6), rtol=1e-6)
  # Paired with vanilla: a constant gradient gives no difference at all.
  np.testing.assert_allclose(summary[0.1]['cos_diff_mean'], 0.0, atol=1e-5)
  np.testing.assert_allclose(summary[0.1]['gain_diff_mean'], 0.0, atol=1e-4)
  assert 'cos_diff_mean' not in summary['vanilla']


def test_paired_difference_is_per_batch_mean_over_draws():
  rng = np.random.default_rng(0)
  def fake(n):
    return {'cos': rng.normal(size=(n, 2)), 'loss': rng.normal(size=(n, 2)), 'loss_eq7': np.zeros((n, 2)),
            'loss0': rng.normal(size=n), 'grad_norm': np.ones(n), 'noise_norm': np.ones(n)}
  samples = {'vanilla': fake(3), 0.1: fake(6)}  # 3 batches x 2 draws
  s = gs.summarize(samples)
  diff = samples[0.1]['cos'].reshape(3, 2, 2).mean(1) - samples['vanilla']['cos']
  np.testing.assert_allclose(s[0.1]['cos_diff_mean'], diff.mean(0))
  np.testing.assert_allclose(s[0.1]['cos_diff_sem'], diff.std(0, ddof=1) / np.sqrt(3))


def test_noise_scale_reports_isotropic_equivalent():
  params = {'k': jnp.ones((1000, 4)), 'b': jnp.ones((4,))}
  scales = gs.noise_scale(params, [0.5], jax.random.key(0), num_draws=8, noise_fn=gs.isotropic_noise)
  assert scales[0.5]['gamma_iso'] == pytest.approx(0.5, rel=0.02)
  # kernel-wise: per-element std γ‖w_j‖ = γ √1000 for the kernel, so γ_iso ≈ γ √1000 (the bias is tiny).
  kw = gs.noise_scale(params, [0.01], jax.random.key(0), num_draws=8)
  assert kw[0.01]['gamma_iso'] == pytest.approx(0.01 * np.sqrt(1000) * np.sqrt(4000 / 4004), rel=0.03)
  assert kw[0.01]['relative_to_w'] == pytest.approx(kw[0.01]['noise_norm'] / np.sqrt(4004), rel=1e-6)


def test_gain_csv_and_plots(tmp_path):
  params = _params()
  f, c = _linear(params)
  samples = gs.stability_samples(_as_loss_fn(f), params, {}, [None, None], jax.random.key(0), RHOS, [0.05],
                                 num_draws=2)
  summary = gs.summarize(samples)
  np.testing.assert_allclose(summary[0.05]['gain_mean'], RHOS * np.linalg.norm(c), rtol=1e-4, atol=1e-5)
  scales = gs.noise_scale(params, [0.05], jax.random.key(0))
  gs.write_csv(str(tmp_path / 'curves.csv'), RHOS, summary)
  gs.plot(str(tmp_path), RHOS, summary, scales, 'linear', 'kernelwise', 1.0)
  lines = (tmp_path / 'curves.csv').read_text().splitlines()
  assert len(lines) == 1 + 2 * len(RHOS) and lines[0].startswith('curve,gamma,rho,n,cos_mean')
  assert (tmp_path / 'fig1_cosine.png').stat().st_size > 0 and (tmp_path / 'fig2_loss.png').stat().st_size > 0


def test_report_reads_summary_json(tmp_path):
  import json
  params = _params()
  f, _ = _linear(params)
  samples = gs.stability_samples(_as_loss_fn(f), params, {}, [None, None], jax.random.key(0), RHOS, [0.05],
                                 num_draws=2)
  summary = gs.summarize(samples)
  info = {'config': 'cfg', 'step': 7, 'noise': 'kernelwise', 'num_batches': 2, 'num_draws': 2, 'batch_size': 1,
          'param_norm': 1.0, 'num_params': 16, 'rhos': RHOS.tolist(), 'lam_eq7': 2.0,
          'noise_scale': {'0.05': {'relative_to_w': 0.1, 'gamma_iso_squared': 0.01}},
          'per_curve': {str(k): {n: (v.tolist() if isinstance(v, np.ndarray) else v) for n, v in s.items()}
                        for k, s in summary.items()}}
  (tmp_path / 'summary.json').write_text(json.dumps(info))
  text = gs.report([str(tmp_path)], rhos=(0.1, 1.0))
  assert '| vanilla | 0 | 0 |' in text and '| γ = 0.05 | 0.100 | 0.01 |' in text
  assert '(Δ +0.000 ± 0.000)' in text.replace('-0.000', '+0.000')  # linear: no paired difference
  assert "eq. 7" in text


def _fake_summary(offset, n_rho=3):
  """A summarize()-shaped dict whose means are known: vanilla cos = 0.5 + offset, noisy cos_diff = offset."""
  base = {'n': 4, 'loss0_mean': 1.0 + offset, 'grad_norm_mean': 2.0, 'noise_norm_mean': 0.0}
  out = {'vanilla': dict(base, **{f'{k}_mean': np.full(n_rho, 0.5 + offset) for k in ('cos', 'loss', 'loss_eq7', 'gain')})}
  out[0.01] = dict(base, noise_norm_mean=3.0 + offset,
                   **{f'{k}_mean': np.full(n_rho, 0.5 + offset) for k in ('cos', 'loss', 'loss_eq7', 'gain')},
                   cos_diff_mean=np.full(n_rho, offset), gain_diff_mean=np.arange(n_rho) * offset)
  return out


def test_aggregate_seeds_is_mean_and_sem_over_seeds():
  agg = gs.aggregate_seeds([_fake_summary(o) for o in (0.0, 0.1, 0.2)])
  assert agg['vanilla']['n_seeds'] == 3 and agg['vanilla']['n'] == 12
  np.testing.assert_allclose(agg['vanilla']['cos_mean'], 0.6)
  np.testing.assert_allclose(agg[0.01]['cos_diff_mean'], 0.1)
  np.testing.assert_allclose(agg[0.01]['cos_diff_sem'], 0.1 / np.sqrt(3))  # std of (0, .1, .2) is 0.1
  np.testing.assert_allclose(agg[0.01]['gain_diff_sem'], np.arange(3) * 0.1 / np.sqrt(3))
  np.testing.assert_allclose(agg[0.01]['cos_diff_seeds'][:, 0], [0.0, 0.1, 0.2])
  assert 'cos_diff_mean' not in agg['vanilla']
  assert agg[0.01]['noise_norm_mean'] == pytest.approx(3.1)
  one = gs.aggregate_seeds([_fake_summary(0.3)])
  np.testing.assert_allclose(one[0.01]['cos_diff_sem'], 0.0)


def test_seed_outputs_csv_plots_and_report(tmp_path):
  rhos = [0.0, 0.5, 1.0]
  agg = gs.aggregate_seeds([_fake_summary(o) for o in (0.0, 0.1, 0.2)])
  scales = {0.01: {'noise_norm': 3.0, 'relative_to_w': 0.1, 'gamma_iso': 0.01, 'gamma_iso_squared': 1e-4}}
  gs.write_seeds_csv(str(tmp_path / 'curves.csv'), rhos, agg)
  gs.plot_seeds(str(tmp_path), rhos, agg, scales, 'fake', 'kernelwise', 2.0)
  lines = (tmp_path / 'curves.csv').read_text().splitlines()
  assert len(lines) == 1 + 2 * len(rhos) and lines[0].startswith('curve,gamma,rho,n_seeds,cos_mean,cos_sem')
  assert (tmp_path / 'fig1_cosine.png').stat().st_size > 0 and (tmp_path / 'fig2_loss.png').stat().st_size > 0
  info = {'configs': ['c.py:seed=0'] * 3, 'n_seeds': 3, 'steps': [5], 'rhos': rhos, 'noise': 'kernelwise',
          'num_batches': 2, 'num_draws': 2, 'batch_size': 8, 'param_norm': 30.0,
          'noise_scale': {'0.01': scales[0.01]}, 'per_curve': gs._to_json(agg)}
  (tmp_path / 'summary.json').write_text(json.dumps(info))
  text = gs.report_seeds([str(tmp_path)], rhos=(0.5, 1.0))
  assert f'| vanilla | 0 | 1.100 | 0.600 ± {0.1 / np.sqrt(3):.3f} | 0.600 ± {0.1 / np.sqrt(3):.3f} |' in text
  assert f'| γ = 0.01 | 0.100 | 1.100 | +0.100 ± {0.1 / np.sqrt(3):.3f} |' in text
