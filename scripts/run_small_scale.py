r"""Issue #5 driver: the val sweep and the final six-updater table, many runs in ONE process.

    python scripts/run_small_scale.py --phase tune     # val sweep (seeds 0, 1): picks TUNED
    python scripts/run_small_scale.py --phase final    # 6 updaters x seeds 100..104 with TUNED
    python scripts/run_small_scale.py --phase custom --runs updater=sam,rho=0.1 updater=plain
    python scripts/run_small_scale.py --phase final --paired test   # per-seed R-SAM − SAM etc.
    python scripts/run_small_scale.py --phase custom --runs updater=plain,data=clean --seeds 0 1 2 --vmap

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
GRIDS = {'base': TUNE_GRID, 'ext': TUNE_GRID_EXT, 'stage2': TUNE_GRID_STAGE2,
         'all': TUNE_GRID + TUNE_GRID_EXT + TUNE_GRID_STAGE2}
FINAL_UPDATERS = ('plain', 'lpf_sgd', 'sam', 'rsam', 'gsam', 'rgsam')
FINAL_SEEDS = (100, 101, 102, 103, 104)  # fresh seeds: none of them was used to pick TUNED


def run_name(arg: str) -> str:
  return arg.replace('updater=', '').replace(',', '_').replace('=', '')


def phase_runs(phase: str, custom, seeds, updaters=None, grid: str = 'all') -> list:
  if phase == 'tune':
    runs = [f'{a},seed={s}' for s in (seeds or TUNE_SEEDS) for a in GRIDS[grid]]
  elif phase == 'final':
    runs = [f'updater={u},seed={s}' for s in (seeds or FINAL_SEEDS) for u in FINAL_UPDATERS]
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


PAIRS = (('rsam', 'sam'), ('rgsam', 'gsam'), ('sam', 'plain'), ('lpf_sgd', 'plain'), ('gsam', 'sam'))


def paired_differences(out_dir: str, eval_set: str = 'test', pairs=PAIRS) -> str:
  """Markdown: per pair (a, b) of updaters, a − b in accuracy points seed by seed (a seed fixes the init,
  the data order and the augmentation for both), with mean ± std and the standard error over seeds."""
  import math
  from rsam.training import paths
  acc = {}
  for line in paths.read_text(paths.path(out_dir) / 'runs.jsonl').splitlines():
    if line.strip():
      d = json.loads(line)
      fields = dict(kv.split('=') for kv in d['arg'].split(','))
      acc[(fields['updater'], int(fields.get('seed', 0)))] = 100.0 * d[eval_set]
  out = [f'Paired differences on {eval_set} (accuracy points, a − b on the same seed)', '',
         '| a − b | per seed | mean ± std | s.e.m. | a wins |', '|---|---|---|---|---|']
  for a, b in pairs:
    seeds = sorted(s for (u, s) in acc if u == a and (b, s) in acc)
    if not seeds:
      continue
    diffs = [acc[(a, s)] - acc[(b, s)] for s in seeds]
    mean = sum(diffs) / len(diffs)
    std = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else float('nan')
    per = ', '.join(f'{s}: {x:+.2f}' for s, x in zip(seeds, diffs))
    out.append(f'| {a} − {b} | {per} | {mean:+.2f} ± {std:.2f} | {std / math.sqrt(len(diffs)):.2f} | '
               f'{sum(x > 0 for x in diffs)}/{len(diffs)} |')
  return '\n'.join(out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--phase', choices=('tune', 'final', 'custom'), required=True)
  parser.add_argument('--runs', nargs='*', default=(), help='config args for --phase custom')
  parser.add_argument('--seeds', type=int, nargs='*', default=None, help='override the phase seeds')
  parser.add_argument('--updaters', nargs='*', default=None, help='only the runs of these updaters')
  parser.add_argument('--grid', choices=tuple(GRIDS), default='all', help='part of the tune grid')
  parser.add_argument('--workroot', default='workdirs/small_scale')
  parser.add_argument('--out', default='results/small_scale')
  parser.add_argument('--log_every_steps', type=int, default=None, help='override the config (train metrics '
                      'are logged as means over windows of this many steps)')
  parser.add_argument('--vmap', action='store_true', help='train the seeds of each config in one program')
  parser.add_argument('--dry_run', action='store_true', help='list the runs and exit')
  parser.add_argument('--total_steps', type=int, default=None, help='smoke tests only: cap every run')
  parser.add_argument('--paired', metavar='EVAL_SET', default=None,
                      help='print the paired per-seed differences of <out>/<phase>/runs.jsonl and exit')
  args = parser.parse_args(argv)
  if args.paired:
    print(paired_differences(os.path.join(args.out, args.phase), args.paired))
    return

  runs = phase_runs(args.phase, args.runs, args.seeds, args.updaters, args.grid)
  if args.dry_run:
    print('\n'.join(runs))
    return
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from configs import small_scale
  from rsam.training import paths
  from rsam.training.loop import train_and_evaluate

  out_dir = paths.path(args.out) / args.phase
  paths.makedirs(out_dir)
  start = time.time()
  print(f'{len(runs)} runs in phase {args.phase}', flush=True)

  def finish(name, arg, results, seconds):
    copy = out_dir / name / 'results.json'
    paths.write_json(copy, results)
    line = {'name': name, 'arg': arg, 'val': results['eval']['val']['accuracy'],
            'test': results['eval']['test']['accuracy'], 'wall_s': round(seconds, 1)}
    runs_jsonl = out_dir / 'runs.jsonl'
    previous = paths.read_text(runs_jsonl) if paths.exists(runs_jsonl) else ''
    paths.write_text(runs_jsonl, previous + json.dumps(line) + '\n')
    print(f'RESULT {json.dumps(line)} | driver elapsed {time.time() - start:.0f}s', flush=True)

  def fresh_workdir(name):
    workdir = paths.normalize(paths.path(args.workroot) / args.phase / name)  # orbax wants absolute
    if paths.exists(workdir):  # an interrupted run: start it again from scratch
      paths.path(workdir).rmtree()
    return workdir

  def config_of(arg):  # the config of a run, with the command line's overrides
    config = small_scale.get_config(arg)
    if args.total_steps:
      config.total_steps = args.total_steps
    if args.log_every_steps:
      config.log_every_steps = args.log_every_steps
    return config

  if args.vmap:
    from rsam.training import multi_seed
    for rest, members in seed_groups(runs).items():
      todo = [(seed, arg) for seed, arg in members if not paths.exists(out_dir / run_name(arg) / 'results.json')]
      if not todo:
        print(f'{rest}: seeds {[s for s, _ in members]} done before, skipped', flush=True)
        continue
      t0 = time.time()
      print(f'{rest}: seeds {[s for s, _ in todo]} in one program', flush=True)
      config = config_of(rest)
      workdirs = [fresh_workdir(run_name(arg)) for _, arg in todo]
      all_results = multi_seed.train_seeds(config, [s for s, _ in todo], workdirs)
      for (_, arg), results in zip(todo, all_results):
        finish(run_name(arg), arg, results, (time.time() - t0) / len(todo))
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
