r"""Lists (prints) or launches the training runs behind a paper table, one per cell and seed.

    python scripts/reproduce.py --table 1 --seeds 3 --workdir_root runs              # print commands
    python scripts/reproduce.py --table 3 --seeds 1 --workdir_root gs://bkt/rsam --data_dir gs://bkt/tfds
    python scripts/reproduce.py --table fig3b --seeds 1 --workdir_root runs --launch local
    python scripts/reproduce.py --table 1 --seeds 1 --workdir_root runs --runlocal --launch local  # smoke

Each run is ``python train.py --config <config of the cell> --config.seed=<k> --workdir
<root>/<home table>/<cell>/seed<k> --config.wandb.cell=<home table>/<cell>``: wandb names the run after its
cell and seed, groups the seeds of a cell, tags it with its tables, model, updater, dataset and seed, and
puts the paper's numbers in its summary (rsam/training/writers.py). ``--runlocal`` runs the 2-step CPU version
of every run (no dataset needed) under its own root, ``<root>_runlocal``, so a smoke run's results.json never
makes the real run count as done. The
grid is ``configs/tables.py``: the Table 4 runs, the R-SAM bar of Fig. 3(a) and the official points of
Fig. 3(b, c) are the Table 3 runs without augmentation, so they are listed with their Table 3 workdir.
Runs whose ``results.json`` exists are skipped (a local folder or a gs:// bucket, read through
rsam/training/paths.py). Interrupted runs resume from their checkpoints when the same command runs again.

--print (the default) writes one command per line, for a TPU VM (run the same line on every host of the
slice, e.g. ``gcloud compute tpus tpu-vm ssh ... --worker=all --command "<line>"``) or a job scheduler.
--launch local runs them one after another on this machine and stops at the first failure.
wandb logs when ``--wandb`` is given or WANDB_MODE=online|offline is set in the environment.
"""
import argparse
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import tables  # pylint: disable=wrong-import-position
from rsam.training import paths  # pylint: disable=wrong-import-position


def command(run: tables.Run, seed: int, *, root: str, data_dir=None, wandb=False,
            runlocal=False, python='python', extra=()) -> list:
  """The argv of one run (as a list, relative to the repository root)."""
  config = run.config
  if runlocal:
    config += (',' if ':' in config else ':') + 'runlocal=1'
    root = runlocal_root(root)
  argv = [python, 'train.py', f'--config={config}', f'--config.seed={seed}',
          f'--workdir={run.workdir(root, seed)}', f'--config.wandb.cell={run.home}/{run.name}']
  if wandb:
    argv.append('--config.wandb.enabled=True')
  if data_dir:
    argv.append(f'--config.data.data_dir={data_dir}')
  return argv + list(extra)


def runlocal_root(root: str) -> str:
  """Where --runlocal runs go: beside ``root``, never in it."""
  return root.rstrip('/') + '_runlocal'


def plan(table: str, seeds: int, root: str, **kw):
  """[(run, seed, argv, done)] for every run of ``table`` and seed 0..seeds-1."""
  out = []
  where = runlocal_root(root) if kw.get('runlocal') else root
  for run in tables.runs_of(table):
    for seed in range(seeds):
      done = paths.exists(paths.path(run.workdir(where, seed)) / 'results.json')
      out.append((run, seed, command(run, seed, root=root, **kw), done))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--table', required=True, choices=tables.TABLES)
  p.add_argument('--seeds', type=int, default=1, help='seeds 0..N-1 per cell (default 1)')
  p.add_argument('--workdir_root', required=True, help='root of <table>/<cell>/seed<k> workdirs')
  mode = p.add_mutually_exclusive_group()
  mode.add_argument('--print', dest='launch', action='store_const', const=None,
                    help='print the command lines (default)')
  mode.add_argument('--launch', choices=('local',), help='run the commands here, one after another')
  p.add_argument('--data_dir', help='tfds data_dir (local path or gs://)')
  p.add_argument('--wandb', action='store_true', help='log to wandb (sets config.wandb.enabled)')
  p.add_argument('--runlocal', action='store_true', help='the 2-step CPU version of every run')
  p.add_argument('--python', default='python', help='interpreter in the printed commands')
  p.add_argument('--include_done', action='store_true', help='also list runs that have results.json')
  p.add_argument('extra', nargs='*', help='more train.py flags after --, e.g. -- --config.log_every_steps=50')
  args = p.parse_args(argv)
  if args.seeds < 1:
    p.error('--seeds must be >= 1')

  python = sys.executable if args.launch == 'local' and args.python == 'python' else args.python
  root = args.workdir_root
  if args.launch == 'local' and '://' not in root:
    root = os.path.abspath(root)  # train.py runs from the repository root
  runs = plan(args.table, args.seeds, root, data_dir=args.data_dir, wandb=args.wandb,
              runlocal=args.runlocal, python=python, extra=args.extra)
  todo = [r for r in runs if args.include_done or not r[3]]
  print(f'# table {args.table}: {len(runs)} runs ({len({r[0] for r in runs})} cells x {args.seeds} '
        f'seeds), {len(runs) - len([r for r in runs if not r[3]])} done, {len(todo)} listed')
  for run, seed, _, done in runs:
    if done and not args.include_done:
      print(f'# done: {run.workdir(runlocal_root(root) if args.runlocal else root, seed)}/results.json')
  if args.launch is None:
    for _, _, argv_, _ in todo:
      print(shlex.join(argv_))
    return 0
  for i, (run, seed, argv_, _) in enumerate(todo):
    print(f'# [{i + 1}/{len(todo)}] {shlex.join(argv_)}', flush=True)
    rc = subprocess.call(argv_, cwd=REPO)
    if rc:
      print(f'# failed with exit status {rc}: {run.name} seed {seed}; fix it and rerun this command '
            f'(finished runs are skipped, interrupted ones resume)', file=sys.stderr)
      return rc
  return 0


if __name__ == '__main__':
  sys.exit(main())
