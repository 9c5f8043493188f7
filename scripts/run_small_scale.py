r"""Small-scale driver: the val sweep and the final six-updater table, many runs in ONE process.

    python scripts/run_small_scale.py --phase tune     # val sweep (seeds 0, 1): picks TUNED
    python scripts/run_small_scale.py --phase final    # 6 updaters x seeds 100..104 with TUNED
    python scripts/run_small_scale.py --phase custom --runs updater=sam,rho=0.1 updater=plain
    python scripts/run_small_scale.py --phase final --paired test   # per-seed R-SAM − SAM etc.
    python scripts/run_small_scale.py --phase custom --runs updater=plain,data=clean --seeds 0 1 2 --vmap

The ViT mini Table 3 (``--family vit``: configs/small_scale_vit.py, phases under <out>/vit/):

    python scripts/run_small_scale.py --family vit --phase tune --vmap            # val sweep, seeds 0-2
    python scripts/run_small_scale.py --family vit --phase final --vmap           # 5 updaters x 32 seeds
    python scripts/run_small_scale.py --family vit --phase final --paired test+train_unused
    python scripts/run_small_scale.py --family vit --phase tune --power rsam=updater=rsam,rho_max=0.03 \
        sam=updater=sam,rho=0.01                                                  # seeds a ±0.5 CI needs

``--paired`` takes one eval set or several joined by '+', pooled by their sizes (test + train_unused: the
1,117 clean images no run trained on); it prints each updater's mean ± s.e.m. and, per pair, the paired
differences' mean, sd, 95% t interval and the seeds a ±0.5-point interval needs at that sd
(rsam/training/seed_stats.py).

``--vmap`` trains the seeds of each config together in one program (rsam/training/multi_seed.py: the
train step vmapped over seeds, one compilation; seed s computes what its separate run computes, up to
float rounding). Files are read and written through rsam/training/paths.py, so --out and --workroot may
be gs:// paths.

Every run goes through ``rsam.training.loop.train_and_evaluate`` with ``configs/small_scale.py:<arg>``;
one process runs them all, so JAX/TF start once (each run still compiles its own train step). A run's
workdir is ``<workroot>/<phase>/<name>`` (gitignored ``workdirs/`` by default; the checkpoint stays
there for scripts/gradient_stability.py) and its ``results.json`` is copied to
``<out>/<phase>/<name>/results.json``. A run whose copy exists is skipped, so a killed driver is
resumed by rerunning the same command. One JSON line per finished run is appended to
``<out>/<phase>/runs.jsonl``.
"""
import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('WANDB_MODE', 'disabled')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The val sweep: one axis at a time around the defaults (see results/small_scale/README.md).
TUNE_SEEDS = (0, 1)
TUNE_GRID = (
    ['updater=plain'] +
    [f'updater=lpf_sgd,gamma={g}' for g in (0.002, 0.006, 0.02)] +
    [f'updater=sam,rho={r}' for r in (0.02, 0.05, 0.1, 0.2)] +
    # R-SAM: ρ over SAM's grid at λ = 2 (official) and γ = 0.002; then γ and λ one at a time at ρ = 0.1.
    [f'updater=rsam,rho={r},lam=2,gamma=0.002' for r in (0.05, 0.1, 0.2)] +
    [f'updater=rsam,rho=0.1,lam=2,gamma={g}' for g in (0.0005, 0.006)] +
    [f'updater=rsam,rho=0.1,lam={l},gamma=0.002' for l in (0.5, 8.0)] +
    # GSAM / R-GSAM: constant ρ; α = 0.4 (GSAM's value) over the ρ grid, α = 0.1 at ρ = 0.1.
    [f'updater=gsam,rho={r},alpha=0.4' for r in (0.05, 0.1, 0.2)] + ['updater=gsam,rho=0.1,alpha=0.1'] +
    [f'updater=rgsam,rho={r},alpha=0.4,lam=2,gamma=0.002' for r in (0.05, 0.1, 0.2)]
)
# Added after the first LPF-SGD runs put the best γ at the top of its grid: one more step up for every
# updater's main knob (ρ = 0.5; γ = 0.05 for LPF-SGD, 0.02 for R-SAM), decided before any other result.
TUNE_GRID_EXT = (
    ['updater=lpf_sgd,gamma=0.05', 'updater=sam,rho=0.5', 'updater=rsam,rho=0.5,lam=2,gamma=0.002',
     'updater=rsam,rho=0.1,lam=2,gamma=0.02', 'updater=gsam,rho=0.5,alpha=0.4',
     'updater=rgsam,rho=0.5,alpha=0.4,lam=2,gamma=0.002']
)
# Stage 2, added when the R-SAM ρ sweep put its best ρ at 0.2 (the γ/λ axes above were run at 0.1):
# R-SAM's γ bracket around 0.002 at ρ = 0.2, and GSAM's α = 0.1 at ρ = 0.2; then, when α = 0.1 won for
# GSAM, the same α for R-GSAM at its best ρ (0.2).
TUNE_GRID_STAGE2 = (
    [f'updater=rsam,rho=0.2,lam=2,gamma={g}' for g in (0.0005, 0.006)] + ['updater=gsam,rho=0.2,alpha=0.1'] +
    ['updater=rgsam,rho=0.2,alpha=0.1,lam=2,gamma=0.002']
)
# Issue #14's Fig. 3(c): R-SAM's λ at its tuned ρ = 0.2 (the first λ axis ran at ρ = 0.1), tuning seeds;
# run after TUNED was fixed and not used to change it (so not part of 'all').
TUNE_GRID_FIG3 = [f'updater=rsam,rho=0.2,lam={l},gamma=0.002' for l in (0.5, 8.0)]
GRIDS = {'base': TUNE_GRID, 'ext': TUNE_GRID_EXT, 'stage2': TUNE_GRID_STAGE2, 'fig3': TUNE_GRID_FIG3,
         'all': TUNE_GRID + TUNE_GRID_EXT + TUNE_GRID_STAGE2}
FINAL_UPDATERS = ('plain', 'lpf_sgd', 'sam', 'rsam', 'gsam', 'rgsam')
FINAL_SEEDS = (100, 101, 102, 103, 104)  # fresh seeds: none of them was used to pick TUNED

# Issue #14's mini Table 3 (configs/small_scale_vit.py): the val sweep on three tuning seeds, fixed before
# any run: SAM's constant ρ, R-SAM's and GSAM's lr-tied peak ρ (their official ρ_min/ρ_max ratios), R-GSAM
# over GSAM's values; λ, γ and α stay at their official values (R-SAM code; GSAM Table 4).
VIT_TUNE_GRID = (
    ['updater=adamw'] +
    [f'updater=sam,rho={r}' for r in (0.02, 0.05, 0.1)] +
    [f'updater=rsam,rho_max={r}' for r in (0.1, 0.3, 1.0)] +
    [f'updater=gsam,rho_max={r}' for r in (0.05, 0.2)] +
    [f'updater=rgsam,rho_max={r}' for r in (0.05, 0.2)]
)
# Added when every sharpness-aware updater's best val ρ came out at the bottom of its grid (issue #5's rule:
# one more step beyond the edge), decided before any other result.
VIT_TUNE_GRID_EXT = (
    ['updater=sam,rho=0.01', 'updater=rsam,rho_max=0.03', 'updater=gsam,rho_max=0.02',
     'updater=rgsam,rho_max=0.02']
)
# Fig. 3(c) for the ViT: R-SAM's λ at its tuned ρ_max (the ρ panel is the sweep above), on the tuning
# seeds; run after TUNED was fixed and not used to change it.
VIT_FIG3_GRID = ['updater=rsam,rho_max=0.03,lam=0.5', 'updater=rsam,rho_max=0.03,lam=8']
# Each family: its config module, sweep, tuning seeds, final updaters and fresh final seeds, and where its
# phases go under --out (the ResNet family keeps issue #5's layout).
FAMILIES = {
    'resnet': dict(config='small_scale', grids=GRIDS, tune_seeds=TUNE_SEEDS, updaters=FINAL_UPDATERS,
                   final_seeds=FINAL_SEEDS, subdir=''),
    'vit': dict(config='small_scale_vit', grids={'base': VIT_TUNE_GRID, 'ext': VIT_TUNE_GRID_EXT,
                                                'fig3': VIT_FIG3_GRID, 'all': VIT_TUNE_GRID + VIT_TUNE_GRID_EXT}, tune_seeds=(0, 1, 2),
                updaters=('adamw', 'sam', 'rsam', 'gsam', 'rgsam'), final_seeds=tuple(range(200, 232)),
                subdir='vit'),
}


def run_name(arg: str) -> str:
  return arg.replace('updater=', '').replace(',', '_').replace('=', '')


def phase_runs(phase: str, custom, seeds, updaters=None, grid: str = 'all', family: str = 'resnet') -> list:
  f = FAMILIES[family]
  if phase == 'tune':
    runs = [f'{a},seed={s}' for s in (seeds or f['tune_seeds']) for a in f['grids'][grid]]
  elif phase == 'final':
    runs = [f'updater={u},seed={s}' for s in (seeds or f['final_seeds']) for u in f['updaters']]
  else:
    runs = [f'{a},seed={s}' if seeds else a for a in custom for s in (seeds or [None])]
  if updaters:
    runs = [r for r in runs if r.split(',')[0].split('=')[1] in updaters]
  return runs


def seed_groups(runs) -> dict:
  """{config arg without its seed: [(seed, arg), ...]} in the order of ``runs`` (for --vmap)."""
  groups = {}
  for arg in runs:
    items = [kv for kv in arg.split(',') if kv]
    seed = next((int(kv.split('=')[1]) for kv in items if kv.startswith('seed=')), 0)
    rest = ','.join(kv for kv in items if not kv.startswith('seed='))
    groups.setdefault(rest, []).append((seed, arg))
  return groups


PAIRS = (('rsam', 'sam'), ('rgsam', 'gsam'), ('sam', 'plain'), ('lpf_sgd', 'plain'), ('gsam', 'sam'),
         ('sam', 'adamw'), ('rsam', 'adamw'), ('gsam', 'adamw'), ('rgsam', 'adamw'))
TARGET_HALF_WIDTH = 0.5  # accuracy points: issue #14's precision for the paired R-SAM − SAM difference


def read_accuracies(out_dir: str, eval_set: str = 'test') -> dict:
  """{(config arg without the seed, seed): accuracy in points} from ``<out_dir>/runs.jsonl``. ``eval_set``
  may pool sets, 'test+train_unused': each set weighted by its number of examples (the line's counts)."""
  from rsam.training import paths, seed_stats
  acc = {}
  for line in paths.read_text(paths.path(out_dir) / 'runs.jsonl').splitlines():
    if not line.strip():
      continue
    d = json.loads(line)
    items = [kv for kv in d['arg'].split(',') if kv]
    seed = next((int(kv.split('=')[1]) for kv in items if kv.startswith('seed=')), 0)
    rest = ','.join(kv for kv in items if not kv.startswith('seed='))
    sets = eval_set.split('+')
    if len(sets) == 1:
      value = d[eval_set]
    else:
      counts = d.get('counts') or {  # lines written before counts were: the run's results.json has them
          k: v['count'] for k, v in paths.read_json(paths.path(out_dir) / d['name'] / 'results.json')['eval'].items()}
      value = seed_stats.pooled_accuracy({k: d[k] for k in sets}, counts)
    acc[(rest, seed)] = 100.0 * value
  return acc


def _updater(rest: str) -> str:
  return dict(kv.split('=') for kv in rest.split(','))['updater']


def paired_differences(out_dir: str, eval_set: str = 'test', pairs=PAIRS,
                       half_width: float = TARGET_HALF_WIDTH) -> str:
  """Markdown: each updater's accuracy (mean ± s.e.m. over seeds), then per pair (a, b) of updaters the
  per-seed differences a − b in points (a seed fixes the init, the data order and the augmentation for
  both) with their mean, sd, s.e.m., 95% t interval, wins, and the seeds an interval of ± ``half_width``
  would need at this sd (rsam/training/seed_stats.py). One config per updater is expected (a final
  phase); the phase's runs.jsonl is read through rsam/training/paths.py."""
  from rsam.training import seed_stats
  acc = {(_updater(rest), seed): v for (rest, seed), v in read_accuracies(out_dir, eval_set).items()}
  updaters = sorted({u for u, _ in acc}, key=lambda u: [p for p in PAIRS for p in p].index(u)
                    if u in [p for p in PAIRS for p in p] else 99)
  out = [f'Accuracy on {eval_set} (points, mean ± s.e.m. over seeds)', '', '| updater | n | mean ± s.e.m. | sd |',
         '|---|---|---|---|']
  for u in updaters:
    values = [v for (w, _), v in sorted(acc.items()) if w == u]
    mean, sem, n = seed_stats.mean_sem(values)
    out.append(f'| {u} | {n} | {mean:.2f} ± {sem:.2f} | {seed_stats.std(values):.2f} |')
  out += ['', f'Paired differences on {eval_set} (accuracy points, a − b on the same seed)', '',
          f'| a − b | n | mean | sd | s.e.m. | 95% CI | a wins | seeds for ±{half_width} |',
          '|---|---|---|---|---|---|---|---|']
  for a, b in pairs:
    seeds = sorted(s for (u, s) in acc if u == a and (b, s) in acc)
    if not seeds:
      continue
    p = seed_stats.paired([acc[(a, s)] - acc[(b, s)] for s in seeds])
    need = seed_stats.seeds_needed(p['sd'], half_width) if p['n'] > 1 else 'n/a'
    out.append(f"| {a} − {b} | {p['n']} | {p['mean']:+.2f} | {p['sd']:.2f} | {p['sem']:.2f} | "
               f"[{p['low']:+.2f}, {p['high']:+.2f}] | {p['positive']}/{p['n']} | {need} |")
  return '\n'.join(out)


def power_from_tuning(out_dir: str, chosen: dict, eval_set: str = 'val', pair=('rsam', 'sam'),
                      half_width: float = TARGET_HALF_WIDTH) -> str:
  """Markdown: the seeds a ± ``half_width`` 95% interval of the paired ``pair`` difference needs, planned
  from the tuning seeds (``chosen``: updater -> its chosen config arg, without the seed). Three estimates
  of the difference's sd, each with the seeds it implies: (1) the paired differences of the two chosen
  configs over the tuning seeds; (2) √2 × the seed sd pooled over those two configs (the pairing's
  correlation ignored); (3) √2 × the seed sd pooled over every config of the phase (larger ρ values train
  less stably, so this is an upper reference). The plan takes the larger of (1) and (2)."""
  from rsam.training import seed_stats
  acc = read_accuracies(out_dir, eval_set)
  groups = {}
  for (rest, seed), v in acc.items():
    groups.setdefault(rest, {})[seed] = v
  missing = [chosen[u] for u in pair if len(groups.get(chosen[u], {})) < 2]
  if missing:
    raise ValueError(f"{out_dir} has fewer than 2 seeds of {', '.join(missing)}; name configs of its "
                     f"runs.jsonl, e.g. {next(iter(groups), 'updater=sam,rho=0.1')}")
  a, b = (groups[chosen[u]] for u in pair)
  seeds = sorted(set(a) & set(b))
  direct = seed_stats.std([a[s] - b[s] for s in seeds])
  lines = [f'Power calculation for {pair[0]} − {pair[1]} on {eval_set} from the tuning seeds ({out_dir}):']

  def need(sd):
    return seed_stats.seeds_needed(sd, half_width) if sd == sd else 'n/a'

  def dofs(n):
    return f"{n} degree{'' if n == 1 else 's'} of freedom"

  lines.append(f'- (1) paired sd at the chosen configs over seeds {seeds} ({dofs(len(seeds) - 1)}): '
               f'{direct:.2f} points -> n = {need(direct)}')
  estimates = [direct]
  for label, members in (('the two chosen configs', [a, b]), (f'all {len(groups)} configs', groups.values())):
    pooled = seed_stats.pooled_sd(list(g.values()) for g in members)
    dof = sum(len(g) - 1 for g in members if len(g) > 1)
    sd = math.sqrt(2) * pooled if pooled is not None else float('nan')
    lines.append(f'- ({len(lines)}) √2 × seed sd pooled over {label} ({dofs(dof)}): '
                 f'√2 × {pooled:.2f} = {sd:.2f} points -> n = {need(sd)}')
    estimates.append(sd)
  plan = max(x for x in estimates[:2] if x == x)
  lines.append(f'- plan: sd {plan:.2f}, the larger of (1) and (2): a 95% interval of ±{half_width} needs '
               f'n = {seed_stats.seeds_needed(plan, half_width)} paired seeds (the smallest n with '
               f't(0.975, n−1)·sd/√n ≤ {half_width})')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--phase', choices=('tune', 'final', 'custom'), required=True)
  parser.add_argument('--family', choices=tuple(FAMILIES), default='resnet',
                      help='resnet: configs/small_scale.py (the ResNet tables); vit: configs/small_scale_vit.py (the ViT mini Table 3)')
  parser.add_argument('--runs', nargs='*', default=(), help='config args for --phase custom')
  parser.add_argument('--seeds', type=int, nargs='*', default=None, help='override the phase seeds')
  parser.add_argument('--updaters', nargs='*', default=None, help='only the runs of these updaters')
  parser.add_argument('--grid', choices=sorted({g for f in FAMILIES.values() for g in f['grids']}), default='all',
                      help='part of the tune grid')
  parser.add_argument('--workroot', default='workdirs/small_scale')
  parser.add_argument('--out', default='results/small_scale')
  parser.add_argument('--log_every_steps', type=int, default=None, help='override the config (train metrics '
                      'are logged as means over windows of this many steps)')
  parser.add_argument('--vmap', action='store_true', help='train the seeds of each config in one program')
  parser.add_argument('--seeds_per_program', type=int, default=None,
                      help='with --vmap: at most this many seeds per program (a program holds every seed\'s '
                      'state and batch; the ViT runs used 16)')
  parser.add_argument('--dry_run', action='store_true', help='list the runs and exit')
  parser.add_argument('--total_steps', type=int, default=None, help='smoke tests only: cap every run')
  parser.add_argument('--paired', metavar='EVAL_SET', default=None,
                      help="print the paired per-seed differences of the phase's runs.jsonl and exit")
  parser.add_argument('--power', nargs=2, metavar='UPDATER=ARG', default=None,
                      help="print the seeds a ±0.5 interval of the pair's difference needs, planned from this "
                      "phase's runs (the tuning seeds), and exit; e.g. rsam=updater=rsam,rho_max=0.03 "
                      "sam=updater=sam,rho=0.01 for the difference rsam − sam")
  parser.add_argument('--power_eval_set', default='val', help='eval set of --power')
  args = parser.parse_args(argv)
  phase_dir = os.path.join(args.out, FAMILIES[args.family]['subdir'], args.phase)
  if args.paired:
    print(paired_differences(phase_dir, args.paired))
    return
  if args.power:
    if not all('=updater=' in item for item in args.power):
      parser.error(f'--power {" ".join(args.power)}: write each as UPDATER=ARG, e.g. sam=updater=sam,rho=0.01')
    chosen = dict(item.split('=', 1) for item in args.power)
    a, b = list(chosen)
    try:
      print(power_from_tuning(phase_dir, chosen, args.power_eval_set, pair=(a, b)))
    except ValueError as e:
      parser.error(f'--power: {e}')
    return

  family = FAMILIES[args.family]
  if args.grid not in family['grids']:
    parser.error(f"--grid {args.grid} is not a grid of --family {args.family}: {', '.join(family['grids'])}")
  runs = phase_runs(args.phase, args.runs, args.seeds, args.updaters, args.grid, args.family)
  if args.dry_run:
    print('\n'.join(runs))
    return
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  import importlib
  config_module = importlib.import_module(f"configs.{family['config']}")
  from rsam.training import paths
  from rsam.training.loop import train_and_evaluate

  out_dir = paths.path(args.out) / family['subdir'] / args.phase if family['subdir'] else (
      paths.path(args.out) / args.phase)
  paths.makedirs(out_dir)
  start = time.time()
  print(f'{len(runs)} runs in phase {args.phase}', flush=True)

  def finish(name, arg, results, seconds):
    copy = out_dir / name / 'results.json'
    paths.write_json(copy, results)
    line = {'name': name, 'arg': arg, **{k: v['accuracy'] for k, v in results['eval'].items()},
            'counts': {k: v['count'] for k, v in results['eval'].items() if 'count' in v},
            'wall_s': round(seconds, 1)}
    runs_jsonl = out_dir / 'runs.jsonl'
    previous = paths.read_text(runs_jsonl) if paths.exists(runs_jsonl) else ''
    paths.write_text(runs_jsonl, previous + json.dumps(line) + '\n')
    print(f'RESULT {json.dumps(line)} | driver elapsed {time.time() - start:.0f}s', flush=True)

  def fresh_workdir(name):
    workdir = paths.normalize(paths.path(args.workroot) / family['subdir'] / args.phase / name)  # orbax wants absolute
    if paths.exists(workdir):  # an interrupted run: start it again from scratch
      paths.path(workdir).rmtree()
    return workdir

  def config_of(arg):  # the config of a run, with the command line's overrides
    config = config_module.get_config(arg)
    if args.total_steps:
      config.total_steps = args.total_steps
      config.schedule.warmup_steps = min(config.schedule.warmup_steps, args.total_steps - 1)
      if 'rho_warmup_steps' in config.updater:
        config.updater.rho_warmup_steps = min(config.updater.rho_warmup_steps, args.total_steps - 1)
    if args.log_every_steps:
      config.log_every_steps = args.log_every_steps
    return config

  def train_group(multi_seed, rest, todo):  # the seeds of one config in one program
    t0 = time.time()
    print(f'{rest}: seeds {[s for s, _ in todo]} in one program', flush=True)
    workdirs = [fresh_workdir(run_name(arg)) for _, arg in todo]
    all_results = multi_seed.train_seeds(config_of(rest), [s for s, _ in todo], workdirs)
    for (_, arg), results in zip(todo, all_results):
      finish(run_name(arg), arg, results, (time.time() - t0) / len(todo))

  if args.vmap:
    from rsam.training import multi_seed
    for rest, members in seed_groups(runs).items():
      todo = [(seed, arg) for seed, arg in members if not paths.exists(out_dir / run_name(arg) / 'results.json')]
      if not todo:
        print(f'{rest}: seeds {[s for s, _ in members]} done before, skipped', flush=True)
        continue
      chunk = args.seeds_per_program or len(todo)
      for first in range(0, len(todo), chunk):
        train_group(multi_seed, rest, todo[first:first + chunk])
  else:
    for i, arg in enumerate(runs):
      name = run_name(arg)
      if paths.exists(out_dir / name / 'results.json'):
        print(f'[{i + 1}/{len(runs)}] {name}: done before, skipped', flush=True)
        continue
      workdir = fresh_workdir(name)
      t0 = time.time()
      print(f'[{i + 1}/{len(runs)}] {name} (configs/small_scale.py:{arg})', flush=True)
      config = config_of(arg)
      results = train_and_evaluate(config, workdir)
      finish(name, arg, results, time.time() - t0)
  print(f'phase {args.phase} finished in {time.time() - start:.0f}s', flush=True)


if __name__ == '__main__':
  main()
