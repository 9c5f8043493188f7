r"""What R-SAM's ascent d = δ0 + λĝ is made of (rsam/training/ascent_probe.py).

At initialisation, the real recipe on synthetic data (a few steps of the config's own train step):

    python scripts/ascent_composition.py init --config configs/vit_b16_rsam.py --steps 3 --batch_size 16 \
        --out results/small_scale/ascent/vit_b16_rsam_init

Over a small-scale training run (configs/small_scale.py; the diagnostics logged every --log_every steps,
each a mean over that window of steps):

    python scripts/ascent_composition.py train --run updater=rsam,seed=100 --log_every 10 \
        --workdir workdirs/small_scale/ascent/rsam_seed100 --out results/small_scale/ascent/rsam_seed100

Over several seeds trained together (scripts/run_small_scale.py --vmap writes each seed's ``train_log``):

    python scripts/ascent_composition.py seeds --results results/small_scale/issue14/custom/rsam_seed10{0,1,2} \
        --out results/small_scale/ascent/rsam_training

    python scripts/ascent_composition.py report OUT [OUT ...]     # markdown of finished outputs

Every output folder gets summary.json (records, summary, config, hardware, wall time); ``train`` also
writes composition.png. Files go through rsam/training/paths.py (local or gs://).
"""
import argparse
import io
import json
import os
import platform
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('WANDB_MODE', 'disabled')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rsam.training import ascent_probe as AP  # noqa: E402
from rsam.training import paths  # noqa: E402

ROWS = (('noise_norm', '‖δ0‖'), ('lam_grad_norm', '‖λĝ‖'), ('noise_grad_ratio', '‖δ0‖/‖λĝ‖'),
        ('ascent_grad_cos', 'cos(δ0+λĝ, ĝ)'), ('grad_share', 'cos² (share of the ascent along ĝ)'))


def _hardware() -> dict:
  import jax
  return {'platform': jax.devices()[0].platform, 'device_count': jax.device_count(),
          'cpu_count': os.cpu_count(), 'machine': platform.machine(), 'jax': jax.__version__}


def _load_config(spec: str):
  from scripts.gradient_stability import load_config
  return load_config(spec)


def _write(out: str, info: dict) -> None:
  paths.makedirs(out)
  paths.write_json(paths.path(out) / 'summary.json', info)


def cmd_init(args) -> dict:
  config = _load_config(args.config)
  t0 = time.time()
  records = AP.probe_at_init(config, args.steps, batch_size=args.batch_size, seed=args.seed)
  info = {'mode': 'init', 'config': args.config, 'model': config.model.name, 'updater': config.updater.name,
          'batch_size': args.batch_size or config.batch_size, 'm': config.updater.get('m'),
          'lam': float(config.updater.get('lam', float('nan'))), 'compute_dtype': config.compute_dtype,
          'image_size': config.data.get('image_size'), 'steps': args.steps, 'seed': args.seed,
          'data': 'synthetic: images U(-1, 1), uniform random labels',
          'records': records, 'summary': AP.summarize_composition(records),
          'wall_time_s': round(time.time() - t0, 1), 'hardware': _hardware()}
  _write(args.out, info)
  return info


def cmd_train(args) -> dict:
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from configs import small_scale
  from rsam.training.loop import train_and_evaluate
  config = small_scale.get_config(args.run)
  config.log_every_steps = args.log_every
  t0 = time.time()
  workdir = paths.normalize(args.workdir)
  if paths.exists(paths.path(workdir) / 'results.json'):
    results = paths.read_json(paths.path(workdir) / 'results.json')
  else:
    results = train_and_evaluate(config, workdir)
  records = AP.read_scalars(workdir)
  info = {'mode': 'train', 'config': f'configs/small_scale.py:{args.run}', 'log_every_steps': args.log_every,
          'records': records, 'summary': AP.summarize_composition(records),
          'eval': results['eval'], 'wall_time_s': round(time.time() - t0, 1), 'hardware': _hardware()}
  _write(args.out, info)
  plot(args.out, [info])
  return info


def cmd_seeds(args) -> dict:
  """Per logged step, mean ± s.e.m. over seeds of the composition (``AP.over_seeds``), from results.json
  files (their ``train_log``); composition.png and summary.json in --out."""
  t0 = time.time()
  results = [paths.read_json(paths.path(r) / 'results.json') for r in args.results]
  logs = [r['train_log'] for r in results]
  agg = AP.over_seeds(logs)
  records = [rec for log in logs for rec in log]
  info = {'mode': 'seeds', 'results': list(args.results), 'seeds': [r['config']['seed'] for r in results],
          'config': results[0]['config'], 'log_every_steps': results[0]['config']['log_every_steps'],
          'over_seeds': agg, 'summary': AP.summarize_composition(records),
          'eval': [r['eval'] for r in results], 'wall_time_s': round(time.time() - t0, 1)}
  _write(args.out, info)
  c = results[0]['config']
  plot_seeds(args.out, agg, f"{c['updater']['name']} on {c['model']['name']} ({c['data']['name']}), seeds "
             f"{', '.join(str(x) for x in info['seeds'])}")
  return info


def plot_seeds(out: str, agg: dict, title: str) -> None:
  """composition.png: (a) ‖δ0‖ and ‖λĝ‖, (b) their ratio, (c) cos(δ0+λĝ, ĝ) and cos², over training,
  mean ± 1 s.e.m. over seeds (shaded)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np
  steps = np.asarray(agg['steps'])
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))

  def band(ax, key, label, **kw):
    m, e = np.asarray(agg[key]['mean']), np.asarray(agg[key]['sem'])
    line, = ax.plot(steps, m, label=label, **kw)
    ax.fill_between(steps, m - e, m + e, color=line.get_color(), alpha=0.2)

  band(axes[0], 'noise_norm', '‖δ0‖')
  band(axes[0], 'lam_grad_norm', '‖λĝ‖')
  axes[0].set_yscale('log')
  axes[0].set_title('(a) the two parts of d = δ0 + λĝ', fontsize=9)
  band(axes[1], 'noise_grad_ratio', '‖δ0‖ / ‖λĝ‖', color='tab:purple')
  axes[1].axhline(1, color='k', lw=0.8)
  axes[1].set_yscale('log')
  axes[1].set_title('(b) ratio (> 1: the noise is the larger part)', fontsize=9)
  band(axes[2], 'ascent_grad_cos', 'cos(δ0 + λĝ, ĝ)', color='tab:green')
  band(axes[2], 'grad_share', 'cos² (share of the ascent along ĝ)', color='tab:olive', ls='--')
  axes[2].set_ylim(0, 1.02)
  axes[2].set_title('(c) alignment of the ascent with the gradient', fontsize=9)
  for ax in axes:
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"{title}; each point a mean over a logging window; bands ±1 s.e.m. over "
               f"{agg['n_seeds']} seeds", fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=120)
  plt.close(fig)
  paths.write_bytes(paths.path(out) / 'composition.png', buf.getvalue())


def plot(out: str, infos) -> None:
  """composition.png: ‖δ0‖ and ‖λĝ‖ (log scale), and cos(δ0+λĝ, ĝ) over training steps."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for info in infos:
    recs = [r for r in info['records'] if 'noise_grad_ratio' in r]
    steps = [r['step'] for r in recs]
    name = info['config'].split(':', 1)[-1]
    line, = axes[0].plot(steps, [r['noise_norm'] for r in recs], label=f'‖δ0‖ {name}')
    axes[0].plot(steps, [r['lam_grad_norm'] for r in recs], ls='--', color=line.get_color(),
                 label=f'‖λĝ‖ {name}')
    axes[1].plot(steps, [r['ascent_grad_cos'] for r in recs], color=line.get_color(), label=name)
  axes[0].set_yscale('log')
  axes[0].set_xlabel('step')
  axes[0].set_title('norms (mean over each logging window)', fontsize=9)
  axes[1].set_xlabel('step')
  axes[1].set_ylabel('cos(δ0 + λĝ, ĝ)')
  axes[1].set_ylim(0, 1.02)
  axes[1].set_title('alignment of the ascent with the gradient', fontsize=9)
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=120)
  plt.close(fig)
  paths.write_bytes(paths.path(out) / 'composition.png', buf.getvalue())


def report(outs, steps=()) -> str:
  """Markdown: each output's pooled summary; for 'seeds' outputs also one row per step in ``steps`` (mean ±
  s.e.m. over seeds of that logged window)."""
  lines = []
  for out in outs:
    info = paths.read_json(paths.path(out) / 'summary.json')
    s = info['summary']
    if info['mode'] == 'init':
      head = (f"{info['config']}: {info['model']} batch {info['batch_size']} m {info['m']} λ {info['lam']} "
              f"{info['compute_dtype']}, {info['steps']} steps at init")
    elif info['mode'] == 'seeds':
      c = info['config']
      head = (f"{c['updater']['name']} on {c['model']['name']} ({c['data']['name']}) seeds {info['seeds']}: every "
              f"logged window (of {info['log_every_steps']} steps) of every seed pooled")
    else:
      head = f"{info['config']}: training, logged every {info['log_every_steps']} steps"
    lines += [f'### {out}', '', head, '', '| quantity | mean ± s.e.m. | min | max | n |', '|---|---|---|---|---|']
    for key, label in ROWS:
      if key in s:
        v = s[key]
        lines.append(f"| {label} | {v['mean']:.4g} ± {v['sem']:.2g} | {v['min']:.4g} | {v['max']:.4g} | {v['n']} |")
    lines.append('')
    agg = info.get('over_seeds')
    if agg and steps:
      keys = [(k, label) for k, label in ROWS if k in agg]
      lines += ['| step | ' + ' | '.join(label for _, label in keys) + ' |', '|---|' + '---|' * len(keys)]
      for step in steps:
        if step in agg['steps']:
          i = agg['steps'].index(step)
          lines.append(f'| {step} | ' + ' | '.join(
              f"{agg[k]['mean'][i]:.3g} ± {agg[k]['sem'][i]:.1g}" for k, _ in keys) + ' |')
      lines.append('')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='cmd', required=True)
  p = sub.add_parser('init')
  p.add_argument('--config', required=True, help="'path.py[:arg]' as for train.py")
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--batch_size', type=int, default=None, help='default: the config\'s (one m-group: m)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', required=True)
  p = sub.add_parser('train')
  p.add_argument('--run', required=True, help='configs/small_scale.py argument, e.g. updater=rsam,seed=100')
  p.add_argument('--log_every', type=int, default=10)
  p.add_argument('--workdir', required=True)
  p.add_argument('--out', required=True)
  p = sub.add_parser('seeds')
  p.add_argument('--results', nargs='+', required=True, help='folders holding results.json with a train_log')
  p.add_argument('--out', required=True)
  p = sub.add_parser('report')
  p.add_argument('outs', nargs='+')
  p.add_argument('--steps', type=int, nargs='*', default=(), help="'seeds' outputs: a row per logged step")
  args = parser.parse_args(argv)
  if args.cmd == 'report':
    print(report(args.outs, args.steps))
    return
  info = {'init': cmd_init, 'train': cmd_train, 'seeds': cmd_seeds}[args.cmd](args)
  print(report([args.out]))
  print(f"({info['wall_time_s']} s)")


if __name__ == '__main__':
  main()
