r"""Fig. 3(b, c) at small scale: R-SAM's accuracy against ρ and against λ, with SAM's best as a line.

    python scripts/sensitivity.py --runs results/small_scale/tune/runs.jsonl --eval_set val \
        --out results/small_scale/sensitivity

Reads the one-line-per-run ``runs.jsonl`` of scripts/run_small_scale.py (through rsam/training/paths.py).
Panel (b): R-SAM runs that differ only in ρ (the other knobs at ``--fixed_b``); panel (c): runs that differ
only in λ (``--fixed_c``). Every point is the mean over its seeds ± the standard error (std ddof 1 / √n);
the horizontal line is SAM's best config on the same eval set (mean over its seeds, band ± s.e.m.).
Writes fig3bc.png and sensitivity.json.
"""
import argparse
import io
import json
import math
import os
import sys
from typing import Dict, Iterable, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rsam.training.seed_stats import mean_sem  # pylint: disable=g-import-not-at-top


def parse_arg(arg: str) -> Dict[str, str]:
  return dict(kv.split('=', 1) for kv in arg.split(',') if kv)


def sweep(rows: Iterable[dict], updater: str, axis: str, fixed: Dict[str, float], eval_set: str,
          defaults: Optional[Dict[str, float]] = None) -> List[dict]:
  """Points of ``updater``'s runs whose knobs equal ``fixed`` except ``axis`` (a knob missing from a run's
  arg takes its value in ``defaults``; a run with any other knob set is on another axis and left out):
  one per ``axis`` value, sorted, with the accuracy in points as mean, s.e.m. and n over seeds."""
  defaults = defaults or {}
  groups: Dict[float, List[float]] = {}
  for row in rows:
    a = dict(defaults, **parse_arg(row['arg']))
    if a.get('updater') != updater or axis not in a:
      continue
    if any(k not in a or not math.isclose(float(a[k]), v) for k, v in fixed.items()):
      continue
    if set(a) - set(fixed) - set(defaults) - {axis, 'updater', 'seed'}:
      continue
    groups.setdefault(float(a[axis]), []).append(100.0 * row[eval_set])
  out = []
  for x in sorted(groups):
    m, s, n = mean_sem(groups[x])
    out.append({axis: x, 'mean': m, 'sem': s, 'n': n})
  return out


def best_config(rows: Iterable[dict], updater: str, eval_set: str) -> Optional[dict]:
  """The config of ``updater`` (its arg without the seed) with the highest mean accuracy over its seeds."""
  groups: Dict[str, List[float]] = {}
  for row in rows:
    a = parse_arg(row['arg'])
    if a.get('updater') != updater:
      continue
    key = ','.join(f'{k}={v}' for k, v in a.items() if k != 'seed')
    groups.setdefault(key, []).append(100.0 * row[eval_set])
  if not groups:
    return None
  key = max(groups, key=lambda k: sum(groups[k]) / len(groups[k]))
  m, s, n = mean_sem(groups[key])
  return {'config': key, 'mean': m, 'sem': s, 'n': n}


def _fixed(text: str) -> Dict[str, float]:
  return {k: float(v) for k, v in parse_arg(text).items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--runs', required=True, help='a runs.jsonl of scripts/run_small_scale.py')
  parser.add_argument('--eval_set', default='val')
  parser.add_argument('--fixed_b', default='lam=2,gamma=0.002', help='R-SAM knobs held fixed in the ρ panel')
  parser.add_argument('--fixed_c', default='rho=0.1,gamma=0.002', help='R-SAM knobs held fixed in the λ panel')
  parser.add_argument('--defaults', default='', help="knob values of runs whose arg omits them (the ViT "
                      "family's config values, e.g. lam=2)")
  parser.add_argument('--rho_key', default='rho', help="R-SAM's ρ knob in the runs' args (the ViT family's "
                      "lr-tied peak: rho_max)")
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  from rsam.training import paths
  rows = [json.loads(line) for line in paths.read_text(args.runs).splitlines() if line.strip()]
  defaults = _fixed(args.defaults)
  b = sweep(rows, 'rsam', args.rho_key, _fixed(args.fixed_b), args.eval_set, defaults)
  c = sweep(rows, 'rsam', 'lam', _fixed(args.fixed_c), args.eval_set, defaults)
  sam = best_config(rows, 'sam', args.eval_set)
  info = {'runs': args.runs, 'eval_set': args.eval_set, 'fixed_b': args.fixed_b, 'fixed_c': args.fixed_c,
          'rho_sweep': b, 'lam_sweep': c, 'sam_best': sam}
  paths.makedirs(args.out)
  paths.write_json(os.path.join(args.out, 'sensitivity.json'), info)

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, points, axis, fixed, name in ((axes[0], b, args.rho_key, args.fixed_b, '(b) ρ'),
                                        (axes[1], c, 'lam', args.fixed_c, '(c) λ')):
    ax.errorbar([p[axis] for p in points], [p['mean'] for p in points], yerr=[p['sem'] for p in points],
                marker='o', capsize=3, label=f'R-SAM ({fixed})')
    if sam:
      ax.axhline(sam['mean'], color='tab:red', ls='--', label=f"SAM best ({sam['config']}, n={sam['n']})")
      ax.axhspan(sam['mean'] - sam['sem'], sam['mean'] + sam['sem'], color='tab:red', alpha=0.12)
    ax.set_xscale('log')
    ax.set_xlabel('λ' if axis == 'lam' else 'ρ' if axis == 'rho' else f'ρ ({axis})')
    ax.set_ylabel(f'{args.eval_set} accuracy (%)')
    ax.set_title(f'{name}: mean ± s.e.m. over seeds (n = {", ".join(str(p["n"]) for p in points)})', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f'Fig. 3(b, c) at small scale, from {args.runs}', fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=120)
  plt.close(fig)
  paths.write_bytes(os.path.join(args.out, 'fig3bc.png'), buf.getvalue())
  print(json.dumps(info, indent=1))


if __name__ == '__main__':
  main()
