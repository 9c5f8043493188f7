r"""The paper's Fig. 1 and Fig. 2 (Sec. 3.1) for a trained checkpoint.

    python scripts/gradient_stability.py --config configs/small_scale.py:updater=plain,seed=100 \
        --workdir workdirs/small_scale/final/plain_seed100 --out results/small_scale/stability_plain_seed100

Fig. 1 — gradient stability along the one-step ascent:
  vanilla   cos(g(w), g(w + ρ g(w)/‖g(w)‖))
  noisy     cos(g(ŵ), g(ŵ + ρ g(ŵ)/‖g(ŵ)‖)),  ŵ = w + δ0
Fig. 2 — the loss reached by that ascent:
  vanilla   L(w + ρ g(w)/‖g(w)‖)
  noisy     L(ŵ + ρ g(ŵ)/‖g(ŵ)‖)                     (the paper's eq. 6 point)
  extra panels: (b) the rise L(ŵ + ρ g(ŵ)/‖g(ŵ)‖) − L(ŵ) (the noise's own damage to L removed), and
  (c) R-SAM's actual ascent point (eq. 7): L(w + ρ (δ0 + λ g(ŵ)) / ‖δ0 + λ g(ŵ)‖).

δ0 is rsam.noise.kernelwise_noise: δ0[..., j] = γ ‖w_j‖ z, z ~ N(0, I), the noise R-SAM trains with
(``--noise isotropic`` draws the paper's Sec. 3.1 N(0, γ² I) instead). Every γ is reported with what it
means for this checkpoint: the mean ‖δ0‖/‖w‖ and the isotropic-equivalent per-element std
γ_iso = ‖δ0‖/√D (D = number of parameters), to compare with the paper's γ² = 0.0075, 0.01, 0.0125.

L is the training loss of the run (rsam.training.losses.make_loss_fn: softmax cross-entropy on the
run's possibly noisy training labels) on mini-batches of the run's batch size drawn from its training
split without augmentation, with TRAINING-MODE BatchNorm (batch statistics; the paper's Fig. 1 caption).
Curves are the mean over ``num_batches`` batches × ``num_draws`` noise draws (vanilla: over batches);
bands are ±1 standard deviation over those samples; the CSV also holds the standard error.

The analysis functions (``ascent_profile``, ``stability_samples``, ``summarize``) are pure and take any
``loss_fn(params, model_state, batch, rng) -> (loss, (model_state, metrics))``; the I/O is in ``main``.
``python scripts/gradient_stability.py --report OUT_DIR ...`` prints the key numbers of finished analyses
as markdown.

Several training seeds: give one --config per --workdir (or one config for all); each
checkpoint is analysed into OUT/seed<seed>/ with the same batches and noise draws, and OUT/ gets the seed
aggregate (``aggregate_seeds``: every point ± s.e.m. over training seeds) as fig1_cosine.png (with a
Δcos panel), fig2_loss.png, curves.csv and summary.json; ``--report_seeds OUT ...`` prints it. All files
go through rsam/training/paths.py (local or gs://). Outputs in ``--out``: fig1_cosine.png, fig2_loss.png, curves.csv, summary.json, samples.npz (every sample).
The CSV's *_diff columns pair each noisy curve with vanilla on the same batches: per-batch mean over draws
of noisy − vanilla, mean and standard error over batches (the batch-to-batch spread drops out).
"""
import argparse
import csv
import importlib.util
import io
import json
import os
import platform
import sys
import time
from typing import Callable, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from rsam import tree as T
from rsam.noise import kernelwise_noise
from rsam.updaters import ascent_perturbation, mean_loss, value_and_grad

PAPER_GAMMA_SQUARED = (0.0075, 0.01, 0.0125)


# ---------------------------------------------------------------------------------------------
# Pure analysis


def isotropic_noise(key, params, gamma):
  """δ0 ~ N(0, γ² I) on every parameter (the paper's Sec. 3.1 wording), float32."""
  keys = jax.tree.unflatten(jax.tree.structure(params),
                            list(jax.random.split(key, len(jax.tree.leaves(params)))))
  return jax.tree.map(lambda k, w: gamma * jax.random.normal(k, jnp.shape(w), jnp.float32), keys, params)


NOISES = {'kernelwise': kernelwise_noise, 'isotropic': isotropic_noise}


def ascent_profile(loss_fn: Callable, params, model_state, batch, rng, delta0, rhos, lam=1.0):
  """One sample of both figures at ŵ = params + delta0 (delta0 = zeros: the vanilla curves).

  With g0 = ∇L(ŵ) and, for every ρ in ``rhos``, w_ρ = ŵ + ρ g0/‖g0‖ (rsam.updaters.ascent_perturbation):
    cos[ρ]       = cos(g0, ∇L(w_ρ))                                     (Fig. 1)
    loss[ρ]      = L(w_ρ)                                               (Fig. 2)
    loss_eq7[ρ]  = L(params + ρ (δ0 + λ g0) / ‖δ0 + λ g0‖)              (R-SAM's ascent point, eq. 7)
  Also loss0 = L(ŵ), grad_norm = ‖g0‖ and noise_norm = ‖δ0‖. The ``rng`` (dropout) is shared by all
  passes, as in the updaters. Returns a dict of arrays (leading axis of the per-ρ ones: ρ).
  """
  rhos = jnp.asarray(rhos, jnp.float32)
  w0 = T.add_scaled(params, 1.0, delta0)
  loss0, g0, _, _ = value_and_grad(loss_fn, w0, model_state, batch, rng)
  direction7 = jax.tree.map(lambda d, g: jnp.asarray(d, jnp.float32) + lam * g, delta0, g0)

  def at(rho):
    w_rho = T.add_scaled(w0, 1.0, ascent_perturbation(w0, g0, rho))
    loss, g_rho, _, _ = value_and_grad(loss_fn, w_rho, model_state, batch, rng)
    w_eq7 = T.add_scaled(params, 1.0, ascent_perturbation(params, direction7, rho))
    return T.cosine(g0, g_rho), loss, mean_loss(loss_fn, w_eq7, model_state, batch, rng)

  cos, loss, loss_eq7 = jax.lax.map(at, rhos)
  return {'cos': cos, 'loss': loss, 'loss_eq7': loss_eq7, 'loss0': loss0, 'grad_norm': T.norm(g0),
          'noise_norm': T.norm(delta0)}


def stability_samples(loss_fn: Callable, params, model_state, batches: Sequence, key, rhos,
                      gammas: Sequence[float], *, num_draws: int = 4, lam: float = 1.0,
                      noise_fn: Callable = kernelwise_noise, profile: Optional[Callable] = None) -> dict:
  """All samples: {'vanilla': profiles over batches, gamma: profiles over batches × draws}.

  Each entry is a dict of numpy arrays with a leading sample axis (see ``ascent_profile``). Draw d of
  γ on batch b uses ``fold_in(fold_in(fold_in(key, b), γ index), d)``; the dropout rng is per batch.
  ``profile`` (default: ``ascent_profile`` jitted over ``loss_fn``) is there for tests to swap in.
  """
  if profile is None:
    profile = jax.jit(lambda p, s, b, r, d, rh, l: ascent_profile(loss_fn, p, s, b, r, d, rh, l))
  rhos = jnp.asarray(rhos, jnp.float32)
  zeros = jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), jnp.float32), params)
  out = {'vanilla': []}
  for gamma in gammas:
    out[gamma] = []
  for b, batch in enumerate(batches):
    bkey = jax.random.fold_in(key, b)
    rng = jax.random.fold_in(bkey, 10_000)
    out['vanilla'].append(profile(params, model_state, batch, rng, zeros, rhos, lam))
    for gi, gamma in enumerate(gammas):
      for d in range(num_draws):
        delta0 = noise_fn(jax.random.fold_in(jax.random.fold_in(bkey, gi), d), params, gamma)
        out[gamma].append(profile(params, model_state, batch, rng, delta0, rhos, lam))
  return {name: {k: np.stack([np.asarray(s[k]) for s in samples]) for k in samples[0]}
          for name, samples in out.items()}


def summarize(samples: dict) -> dict:
  """Per curve and ρ: mean, std (ddof 0) and standard error over samples of cos, loss, loss_eq7 and
  gain = loss − loss0 = L(ŵ + ρ g(ŵ)/‖g(ŵ)‖) − L(ŵ) (what the ascent itself adds, noise damage removed)."""
  out = {}
  for name, s in samples.items():
    n = s['cos'].shape[0]
    entry = {'n': n}
    values = dict(s, gain=s['loss'] - s['loss0'][:, None])
    for k in ('cos', 'loss', 'loss_eq7', 'gain'):
      entry[k + '_mean'] = values[k].mean(0)
      entry[k + '_std'] = values[k].std(0)
      entry[k + '_sem'] = values[k].std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(values[k][0])
    for k in ('loss0', 'grad_norm', 'noise_norm'):
      entry[k + '_mean'] = float(s[k].mean())
    out[name] = entry
  # Paired with vanilla on the same batches (stability_samples orders a γ's samples batch-major, draws
  # contiguous): the per-batch mean over draws of noisy − vanilla, then mean and standard error over
  # batches. Batch-to-batch spread, shared by both curves, drops out.
  if 'vanilla' in samples:
    base = samples['vanilla']
    num_batches = base['cos'].shape[0]
    for name, s in samples.items():
      if name == 'vanilla' or s['cos'].shape[0] % num_batches:
        continue
      for k in ('cos', 'gain'):
        v = s[k] if k == 'cos' else s['loss'] - s['loss0'][:, None]
        v0 = base[k] if k == 'cos' else base['loss'] - base['loss0'][:, None]
        diff = v.reshape((num_batches, -1) + v.shape[1:]).mean(1) - v0
        out[name][k + '_diff_mean'] = diff.mean(0)
        out[name][k + '_diff_sem'] = (diff.std(0, ddof=1) / np.sqrt(num_batches) if num_batches > 1
                                      else np.zeros_like(diff[0]))
  return out


SEED_KEYS = ('cos', 'loss', 'loss_eq7', 'gain', 'cos_diff', 'gain_diff')


def aggregate_seeds(summaries: Sequence[dict]) -> dict:
  """Combines ``summarize`` outputs of S checkpoints trained with different seeds (same curves, same ρ).

  Per curve and ρ, for k in cos, loss, loss_eq7, gain and the paired cos_diff, gain_diff: k_mean = the mean
  over seeds of each seed's mean, k_sem = their std (ddof 1) / √S -- the training seed is the unit, so
  the error bar holds the seed-to-seed spread as well as the batch and noise sampling inside each seed --
  and k_seeds, the S per-seed means. Scalars (loss0, grad_norm, noise_norm) are averaged. ``n_seeds``: S.
  """
  out = {}
  num = len(summaries)
  for name in summaries[0]:
    entry = {'n_seeds': num, 'n': int(sum(s[name]['n'] for s in summaries))}
    for k in SEED_KEYS:
      if k + '_mean' not in summaries[0][name]:
        continue
      per = np.stack([np.asarray(s[name][k + '_mean'], np.float64) for s in summaries])
      entry[k + '_seeds'] = per
      entry[k + '_mean'] = per.mean(0)
      entry[k + '_sem'] = per.std(0, ddof=1) / np.sqrt(num) if num > 1 else np.zeros_like(per[0])
    for k in ('loss0', 'grad_norm', 'noise_norm'):
      entry[k + '_mean'] = float(np.mean([s[name][k + '_mean'] for s in summaries]))
    out[name] = entry
  return out


def noise_scale(params, gammas: Sequence[float], key, *, num_draws: int = 4,
                noise_fn: Callable = kernelwise_noise) -> dict:
  """For each γ: mean ‖δ0‖/‖w‖ and γ_iso = mean ‖δ0‖/√D (the isotropic std of the same norm)."""
  w_norm = float(T.norm(params))
  dim = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  out = {}
  for gi, gamma in enumerate(gammas):
    norms = [float(T.norm(noise_fn(jax.random.fold_in(jax.random.fold_in(key, gi), d), params, gamma)))
             for d in range(num_draws)]
    out[gamma] = {'noise_norm': float(np.mean(norms)), 'relative_to_w': float(np.mean(norms)) / w_norm,
                  'gamma_iso': float(np.mean(norms)) / np.sqrt(dim),
                  'gamma_iso_squared': (float(np.mean(norms)) / np.sqrt(dim)) ** 2}
  return out


# ---------------------------------------------------------------------------------------------
# I/O


def load_config(spec: str):
  """'configs/x.py:arg' -> get_config(arg) (ml_collections' config_flags convention)."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_analysis_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def load_checkpoint(config, workdir: str, step: Optional[int]):
  from rsam.training import checkpointing, config_check, paths, train_step
  config_check.validate(config)
  mesh = train_step.make_mesh(config)
  run = train_step.build(config, mesh)
  ckpt = checkpointing.Checkpointer(paths.normalize(workdir), every_steps=1, max_to_keep=None,
                                   asynchronous=False)
  step, state = ckpt.restore(step, run.init_state())
  ckpt.close()
  return run, step, state


def training_batches(config, num_classes: int, num_batches: int, batch_size: int, seed: int) -> list:
  """``num_batches`` training batches (no augmentation) as {'image', 'target'} with the run's targets."""
  import data
  from rsam.training import losses
  data_config = config.data.copy_and_resolve_references()
  data_config.augment = 'none'
  it = data.make_train_iterator(data_config, global_batch_size=batch_size, seed=seed)
  out = []
  for _ in range(num_batches):
    b = next(it)
    out.append({'image': jnp.asarray(b['image']),
                'target': losses.make_targets(jnp.asarray(b['label']), num_classes, config.loss,
                                              config.label_smoothing)})
  return out


def write_csv(path: str, rhos, summary: dict) -> None:
  """curves.csv through rsam/training/paths.py (local or gs://)."""
  from rsam.training import paths
  f = io.StringIO(newline='')
  if True:  # one block, as when this wrote a local file
    w = csv.writer(f)
    w.writerow(['curve', 'gamma', 'rho', 'n', 'cos_mean', 'cos_std', 'cos_sem', 'loss_mean', 'loss_std',
                'loss_sem', 'loss_eq7_mean', 'loss_eq7_std', 'loss_eq7_sem', 'gain_mean', 'gain_std',
                'gain_sem', 'cos_diff_mean', 'cos_diff_sem', 'gain_diff_mean', 'gain_diff_sem'])
    for name, s in summary.items():
      for i, rho in enumerate(rhos):
        w.writerow(['vanilla' if name == 'vanilla' else 'noisy', '' if name == 'vanilla' else name,
                    f'{rho:.6g}', s['n']] +
                   [f"{s[k][i]:.6g}" for k in ('cos_mean', 'cos_std', 'cos_sem', 'loss_mean', 'loss_std',
                                               'loss_sem', 'loss_eq7_mean', 'loss_eq7_std', 'loss_eq7_sem',
                                               'gain_mean', 'gain_std', 'gain_sem')] +
                   [f"{s[k][i]:.6g}" if k in s else ''
                    for k in ('cos_diff_mean', 'cos_diff_sem', 'gain_diff_mean', 'gain_diff_sem')])
  paths.write_text(path, f.getvalue())


def save_figure(fig, path: str) -> None:
  """A matplotlib figure as PNG through rsam/training/paths.py."""
  from rsam.training import paths
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=130)
  paths.write_bytes(path, buf.getvalue())


def plot(out_dir: str, rhos, summary: dict, scales: dict, title: str, noise: str, lam: float) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  colors = ['tab:green', 'tab:blue', 'tab:orange', 'tab:purple', 'tab:brown']
  rhos = np.asarray(rhos)

  def label(name):
    if name == 'vanilla':
      return 'vanilla (w)'
    sym = 'γ' if noise == 'kernelwise' else 'γ (iso)'
    return (f"{sym}={name:g} (‖δ0‖/‖w‖={scales[name]['relative_to_w']:.2f}, "
            f"γ_iso²={scales[name]['gamma_iso_squared']:.2g})")

  def curves(ax, key):
    for i, (name, s) in enumerate(summary.items()):
      vanilla = name == 'vanilla'
      color = 'tab:red' if vanilla else colors[(i - 1) % len(colors)]
      m, sd = s[key + '_mean'], s[key + '_std']
      ax.plot(rhos, m, color=color, label=label(name), lw=2.2 if vanilla else 1.5,
              ls='--' if vanilla else '-', zorder=5 if vanilla else 3, marker='.' if vanilla else None)
      ax.fill_between(rhos, m - sd, m + sd, color=color, alpha=0.12, zorder=1)
    ax.set_xlabel('ρ')
    ax.grid(alpha=0.3)

  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  curves(ax, 'cos')
  ax.set_ylabel('cos(g(ŵ), g(ŵ + ρ g(ŵ)/‖g(ŵ)‖))')
  ax.set_title(f'Fig. 1 analogue: {title}', fontsize=7)
  ax.legend(fontsize=7)
  fig.tight_layout()
  save_figure(fig, os.path.join(out_dir, 'fig1_cosine.png'))
  plt.close(fig)

  fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
  curves(axes[0], 'loss')
  axes[0].set_ylabel('L(ŵ + ρ g(ŵ)/‖g(ŵ)‖)')
  axes[0].set_title('(a) paper Fig. 2: ascent from ŵ = w + δ0', fontsize=9)
  curves(axes[1], 'gain')
  axes[1].set_ylabel('L(ŵ + ρ g(ŵ)/‖g(ŵ)‖) − L(ŵ)')
  axes[1].set_title('(b) the rise due to the ascent step alone', fontsize=9)
  curves(axes[2], 'loss_eq7')
  axes[2].set_ylabel('L(w + ρ (δ0 + λ g(ŵ)) / ‖δ0 + λ g(ŵ)‖)')
  axes[2].set_title(f"(c) R-SAM's ascent point (eq. 7), λ = {lam:g}", fontsize=9)
  axes[0].legend(fontsize=7)
  fig.suptitle(f'Fig. 2 analogue: {title}', fontsize=9)
  fig.tight_layout()
  save_figure(fig, os.path.join(out_dir, 'fig2_loss.png'))
  plt.close(fig)


def report(out_dirs: Sequence[str], rhos: Sequence[float] = (0.1, 0.2, 0.5, 1.0)) -> str:
  """Markdown of finished analyses (their summary.json): per curve and ρ, cos and the ascent's rise
  L(ŵ + ρ g/‖g‖) − L(ŵ), mean ± std over samples, and for noisy curves the paired difference to vanilla
  (mean ± standard error over batches)."""
  from rsam.training import paths
  lines = []
  for out_dir in out_dirs:
    info = paths.read_json(os.path.join(out_dir, 'summary.json'))
    all_rhos = [round(r, 6) for r in info['rhos']]
    idx = [all_rhos.index(round(r, 6)) for r in rhos if round(r, 6) in all_rhos]
    lines += [f"### {out_dir}", '',
              f"{info['config']}, step {info['step']}, {info['noise']} δ0, {info['num_batches']} batches × "
              f"{info['num_draws']} draws, batch {info['batch_size']}, ‖w‖ = {info['param_norm']:.2f}, "
              f"D = {info['num_params']}", '',
              '| curve | ‖δ0‖/‖w‖ | γ_iso² | L(ŵ) | ' +
              ' | '.join(f'cos ρ={all_rhos[i]:g}' for i in idx) + ' | ' +
              ' | '.join(f'rise ρ={all_rhos[i]:g}' for i in idx) + ' |',
              '|' + '---|' * (4 + 2 * len(idx))]
    for name, c in info['per_curve'].items():
      scale = info['noise_scale'].get(name)
      def cell(key, i):
        text = f"{c[key + '_mean'][i]:.3f} ± {c[key + '_std'][i]:.3f}"
        if key + '_diff_mean' in c:
          text += f" (Δ {c[key + '_diff_mean'][i]:+.3f} ± {c[key + '_diff_sem'][i]:.3f})"
        return text
      label = 'vanilla' if name == 'vanilla' else f'γ = {float(name):g}'
      lines.append(f"| {label} | {scale['relative_to_w']:.3f} | {scale['gamma_iso_squared']:.2g} | "
                   if scale else f'| {label} | 0 | 0 | ')
      lines[-1] += (f"{c['loss0_mean']:.3f} | " + ' | '.join(cell('cos', i) for i in idx) + ' | ' +
                    ' | '.join(cell('gain', i) for i in idx) + ' |')
    lines += ['', f"L at R-SAM's eq. 7 point w + ρ (δ0 + λ g(ŵ)) / ‖δ0 + λ g(ŵ)‖, λ = {info['lam_eq7']:g}:", '',
              '| curve | ' + ' | '.join(f'ρ={all_rhos[i]:g}' for i in idx) + ' |', '|' + '---|' * (1 + len(idx))]
    for name, c in info['per_curve'].items():
      label = 'vanilla' if name == 'vanilla' else f'γ = {float(name):g}'
      lines.append(f'| {label} | ' + ' | '.join(f"{c['loss_eq7_mean'][i]:.3f} ± {c['loss_eq7_std'][i]:.3f}"
                                                for i in idx) + ' |')
    lines.append('')
  return '\n'.join(lines)


def plot_seeds(out_dir: str, rhos, agg: dict, scales: dict, title: str, noise: str, lam: float) -> None:
  """Seed-aggregated figures (``aggregate_seeds``), every point ± 1 standard error over training seeds:
  fig1_cosine.png (a) the cosine, (b) noisy − vanilla paired; fig2_loss.png (a) L(ŵ + ρ g/‖g‖), (b) the
  rise's paired difference, (c) L at R-SAM's eq. 7 point."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  colors = ['tab:green', 'tab:blue', 'tab:orange', 'tab:purple', 'tab:brown', 'tab:pink', 'tab:olive']
  rhos = np.asarray(rhos)

  def label(name):
    if name == 'vanilla':
      return 'vanilla (w)'
    sym = 'γ' if noise == 'kernelwise' else 'γ (iso)'
    sc = scales[name]
    return f"{sym}={name:g} (‖δ0‖/‖w‖={sc['relative_to_w']:.2f}, γ_iso²={sc['gamma_iso_squared']:.2g})"

  def curves(ax, key, skip_vanilla=False):
    for i, (name, s) in enumerate(agg.items()):
      if key + '_mean' not in s or (skip_vanilla and name == 'vanilla'):
        continue
      vanilla = name == 'vanilla'
      ax.errorbar(rhos, s[key + '_mean'], yerr=s[key + '_sem'], label=label(name), capsize=2,
                  color='tab:red' if vanilla else colors[(i - 1) % len(colors)], lw=2.0 if vanilla else 1.3,
                  ls='--' if vanilla else '-', marker='.', ms=4)
    ax.set_xlabel('ρ')
    ax.grid(alpha=0.3)

  n_seeds = next(iter(agg.values()))['n_seeds']
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
  curves(axes[0], 'cos')
  axes[0].set_ylabel('cos(g(ŵ), g(ŵ + ρ g(ŵ)/‖g(ŵ)‖))')
  axes[0].set_title('(a) Fig. 1: gradient stability along the ascent', fontsize=9)
  curves(axes[1], 'cos_diff', skip_vanilla=True)
  axes[1].axhline(0, color='k', lw=0.8)
  axes[1].set_ylabel('Δcos = noisy − vanilla (paired on batches)')
  axes[1].set_title('(b) the effect of the noise; > 0: noise makes the gradient more stable', fontsize=9)
  axes[0].legend(fontsize=7)
  fig.suptitle(f'{title}\nerror bars: ±1 s.e.m. over {n_seeds} training seeds', fontsize=8)
  fig.tight_layout()
  save_figure(fig, os.path.join(out_dir, 'fig1_cosine.png'))
  plt.close(fig)

  fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
  curves(axes[0], 'loss')
  axes[0].set_ylabel('L(ŵ + ρ g(ŵ)/‖g(ŵ)‖)')
  axes[0].set_title('(a) Fig. 2: loss after the ascent from ŵ = w + δ0', fontsize=9)
  curves(axes[1], 'gain_diff', skip_vanilla=True)
  axes[1].axhline(0, color='k', lw=0.8)
  axes[1].set_ylabel('Δ rise: [L(ŵ+ρĝ/‖ĝ‖) − L(ŵ)] − [L(w+ρg/‖g‖) − L(w)]')
  axes[1].set_title('(b) what noise adds to the ascent\'s rise (its own damage removed)', fontsize=9)
  curves(axes[2], 'loss_eq7')
  axes[2].set_ylabel('L(w + ρ (δ0 + λ g(ŵ)) / ‖δ0 + λ g(ŵ)‖)')
  axes[2].set_title(f"(c) R-SAM's ascent point (eq. 7), λ = {lam:g}", fontsize=9)
  axes[0].legend(fontsize=7)
  fig.suptitle(f'{title}\nerror bars: ±1 s.e.m. over {n_seeds} training seeds', fontsize=8)
  fig.tight_layout()
  save_figure(fig, os.path.join(out_dir, 'fig2_loss.png'))
  plt.close(fig)


def write_seeds_csv(path: str, rhos, agg: dict) -> None:
  from rsam.training import paths
  keys = [k for k in SEED_KEYS]
  f = io.StringIO(newline='')
  w = csv.writer(f)
  w.writerow(['curve', 'gamma', 'rho', 'n_seeds'] + [f'{k}_{x}' for k in keys for x in ('mean', 'sem')])
  for name, s in agg.items():
    for i, rho in enumerate(rhos):
      w.writerow(['vanilla' if name == 'vanilla' else 'noisy', '' if name == 'vanilla' else name,
                  f'{rho:.6g}', s['n_seeds']] +
                 [f"{s[k + '_' + x][i]:.6g}" if k + '_mean' in s else '' for k in keys for x in ('mean', 'sem')])
  paths.write_text(path, f.getvalue())


def report_seeds(out_dirs: Sequence[str], rhos: Sequence[float] = (0.1, 0.3, 0.5, 1.0, 2.0)) -> str:
  """Markdown of seed-aggregated analyses: per curve the scale of δ0, L(ŵ), and at each ρ the vanilla
  cosine / the paired Δcos, then the paired Δ rise, each mean ± s.e.m. over training seeds."""
  from rsam.training import paths
  lines = []
  for out_dir in out_dirs:
    info = paths.read_json(os.path.join(out_dir, 'summary.json'))
    all_rhos = [round(r, 6) for r in info['rhos']]
    idx = [all_rhos.index(round(r, 6)) for r in rhos if round(r, 6) in all_rhos]
    lines += [f"### {out_dir}", '',
              f"{info['noise']} δ0; {info['n_seeds']} training seeds ({', '.join(info['configs'])}), step "
              f"{info['steps']}; per seed {info['num_batches']} batches × {info['num_draws']} draws of batch "
              f"{info['batch_size']}; L(w) = {info['per_curve']['vanilla']['loss0_mean']:.4f}, "
              f"‖w‖ = {info['param_norm']:.2f}; ± = s.e.m. over seeds", '',
              '| curve | ‖δ0‖/‖w‖ | L(ŵ) | ' + ' | '.join(f'cos / Δcos ρ={all_rhos[i]:g}' for i in idx) + ' | ' +
              ' | '.join(f'Δrise ρ={all_rhos[i]:g}' for i in idx) + ' |', '|' + '---|' * (3 + 2 * len(idx))]
    for name, c in info['per_curve'].items():
      if name == 'vanilla':
        cells = [f"{c['cos_mean'][i]:.3f} ± {c['cos_sem'][i]:.3f}" for i in idx] + ['' for _ in idx]
        lines.append(f"| vanilla | 0 | {c['loss0_mean']:.3f} | " + ' | '.join(cells) + ' |')
        continue
      scale = info['noise_scale'][name]
      cells = ([f"{c['cos_diff_mean'][i]:+.3f} ± {c['cos_diff_sem'][i]:.3f}" for i in idx] +
               [f"{c['gain_diff_mean'][i]:+.3f} ± {c['gain_diff_sem'][i]:.3f}" for i in idx])
      lines.append(f"| γ = {float(name):g} | {scale['relative_to_w']:.3f} | {c['loss0_mean']:.3f} | " +
                   ' | '.join(cells) + ' |')
    lines.append('')
  return '\n'.join(lines)


def _to_json(tree):
  return {str(name): {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
          for name, s in tree.items()}


def main(argv=None):
  if argv is None:
    argv = sys.argv[1:]
  if argv and argv[0] == '--report':  # python scripts/gradient_stability.py --report OUT_DIR [OUT_DIR ...]
    print(report(argv[1:]))
    return
  if argv and argv[0] == '--report_seeds':
    print(report_seeds(argv[1:]))
    return
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, nargs='+',
                      help="the run's config, 'path.py:arg' as for train.py; one per --workdir, or one for all")
  parser.add_argument('--workdir', required=True, nargs='+',
                      help='the train.py workdir holding checkpoints/; several (training seeds): each is '
                           'analysed into OUT/seed<config.seed>/ and OUT/ gets the seed aggregate')
  parser.add_argument('--out', required=True)
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the newest)')
  parser.add_argument('--rhos', type=float, nargs='+',
                      default=[round(0.1 * i, 2) for i in range(11)] + [1.5, 2.0])
  parser.add_argument('--gammas', type=float, nargs='+', default=[0.002, 0.005, 0.01, 0.02])
  parser.add_argument('--noise', choices=tuple(NOISES), default='kernelwise')
  parser.add_argument('--lam', type=float, default=None, help="λ of the eq. 7 panel (default: the "
                      "config's updater.lam, else 1)")
  parser.add_argument('--num_batches', type=int, default=8)
  parser.add_argument('--num_draws', type=int, default=3)
  parser.add_argument('--batch_size', type=int, default=None, help="default: the run's batch size")
  parser.add_argument('--seed', type=int, default=0, help='batches and noise draws')
  args = parser.parse_args(argv)
  specs = args.config * len(args.workdir) if len(args.config) == 1 else args.config
  if len(specs) != len(args.workdir):
    parser.error(f'{len(args.config)} --config for {len(args.workdir)} --workdir; give one, or one per workdir')

  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from rsam.training import losses, paths
  t_all = time.time()
  profile = None
  per_seed = []
  for spec, workdir in zip(specs, args.workdir):
    t0 = time.time()
    config = load_config(spec)
    run, step, state = load_checkpoint(config, workdir, args.step)
    params, model_state = state['params'], state['model_state']
    lam = args.lam if args.lam is not None else float(config.updater.get('lam', 1.0))
    batch_size = args.batch_size or config.batch_size
    batches = training_batches(config, run.num_classes, args.num_batches, batch_size, args.seed)
    loss_fn = losses.make_loss_fn(run.model, config.loss)
    if profile is None:  # one compilation for every checkpoint: the seeds share the model and the loss
      profile = jax.jit(lambda p, s, b, r, d, rh, l: ascent_profile(loss_fn, p, s, b, r, d, rh, l))
    key = jax.random.key(args.seed)
    noise_fn = NOISES[args.noise]
    samples = stability_samples(loss_fn, params, model_state, batches, key, args.rhos, args.gammas,
                                num_draws=args.num_draws, lam=lam, noise_fn=noise_fn, profile=profile)
    summary = summarize(samples)
    scales = noise_scale(params, args.gammas, key, num_draws=args.num_draws, noise_fn=noise_fn)
    out = args.out if len(args.workdir) == 1 else os.path.join(args.out, f'seed{config.seed}')
    paths.makedirs(out)
    write_csv(os.path.join(out, 'curves.csv'), args.rhos, summary)
    buf = io.BytesIO()
    np.savez(buf, rhos=np.asarray(args.rhos),
             **{f'{name}/{k}': v for name, s in samples.items() for k, v in s.items()})
    paths.write_bytes(os.path.join(out, 'samples.npz'), buf.getvalue())
    title = (f"{config.model.name}, {config.updater.name} seed {config.seed}, step {step}; {args.noise} δ0\n"
             f"bands: ±1 std over {args.num_batches} batches (× {args.num_draws} noise draws)")
    plot(out, args.rhos, summary, scales, title, args.noise, lam)
    info = {
        'config': spec, 'workdir': workdir,
        'step': int(step), 'rhos': args.rhos, 'gammas': args.gammas, 'noise': args.noise, 'lam_eq7': lam,
        'num_batches': args.num_batches, 'num_draws': args.num_draws, 'batch_size': batch_size,
        'seed': args.seed, 'batchnorm': 'training mode (batch statistics)',
        'param_norm': float(T.norm(params)),
        'num_params': int(sum(np.size(x) for x in jax.tree.leaves(params))),
        'noise_scale': {str(g): v for g, v in scales.items()},
        'paper_gamma_squared': PAPER_GAMMA_SQUARED,
        'per_curve': _to_json(summary),
        'wall_time_s': round(time.time() - t0, 1),
        'hardware': {'platform': jax.devices()[0].platform, 'cpu_count': os.cpu_count(),
                     'machine': platform.machine(), 'jax': jax.__version__},
    }
    paths.write_json(os.path.join(out, 'summary.json'), info)
    per_seed.append((config, step, summary, info))
    print(f"wrote {out}/fig1_cosine.png, fig2_loss.png, curves.csv, summary.json, samples.npz "
          f"({info['wall_time_s']}s)", flush=True)
    for name, s in summary.items():
      diff = (f" | paired Δcos {s['cos_diff_mean'][-1]:+.3f}±{s['cos_diff_sem'][-1]:.3f}"
              if 'cos_diff_mean' in s else '')
      print(f"{str(name):>8}: cos@ρ={args.rhos[-1]:g} {s['cos_mean'][-1]:.3f}±{s['cos_std'][-1]:.3f}{diff} "
            f"loss@ρ={args.rhos[-1]:g} {s['loss_mean'][-1]:.3f}  L(ŵ)={s['loss0_mean']:.3f}")
  if len(per_seed) == 1:
    return

  agg = aggregate_seeds([s for _, _, s, _ in per_seed])
  # The noise scale of each γ, averaged over the seeds' checkpoints.
  scales = {g: {k: float(np.mean([info['noise_scale'][str(g)][k] for *_, info in per_seed]))
                for k in per_seed[0][3]['noise_scale'][str(g)]} for g in args.gammas}
  config0, lam = per_seed[0][0], per_seed[0][3]['lam_eq7']
  title = (f"{config0.model.name}, {config0.updater.name}, seeds "
           f"{', '.join(str(c.seed) for c, *_ in per_seed)}; {args.noise} δ0; "
           f"{args.num_batches} batches × {args.num_draws} draws per seed")
  write_seeds_csv(os.path.join(args.out, 'curves.csv'), args.rhos, agg)
  plot_seeds(args.out, args.rhos, agg, scales, title, args.noise, lam)
  info = {'configs': specs, 'workdirs': args.workdir, 'n_seeds': len(per_seed),
          'steps': sorted({int(s) for _, s, _, _ in per_seed}), 'rhos': args.rhos, 'gammas': args.gammas,
          'noise': args.noise, 'lam_eq7': lam, 'num_batches': args.num_batches, 'num_draws': args.num_draws,
          'batch_size': per_seed[0][3]['batch_size'], 'seed': args.seed,
          'param_norm': float(np.mean([info['param_norm'] for *_, info in per_seed])),
          'noise_scale': {str(g): v for g, v in scales.items()},
          'per_curve': _to_json(agg), 'wall_time_s': round(time.time() - t_all, 1),
          'hardware': per_seed[0][3]['hardware']}
  paths.write_json(os.path.join(args.out, 'summary.json'), info)
  print(report_seeds([args.out]))


if __name__ == '__main__':
  main()
