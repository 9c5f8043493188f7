r"""Lists (prints) or launches the training runs behind a paper table, one per cell and seed.

    .venv/bin/python scripts/reproduce.py --table 1 --seeds 3 --workdir_root runs           # print commands
    .venv/bin/python scripts/reproduce.py --list --table 1                                   # its cells
    .venv/bin/python scripts/reproduce.py --cells '1/resnet18-*' --workdir_root runs --runlocal --launch local
    .venv/bin/python scripts/reproduce.py --table 3 --workdir_root gs://BUCKET/rsam --data_dir gs://BUCKET/tfds

Each run is ``python train.py --config <config of the cell> --config.seed=<k> --workdir
<root>/<home table>/<cell>/seed<k> --config.wandb.cell=<home table>/<cell>``: wandb names the run after its
cell and seed and groups the seeds of a cell (train.py: configs/tables.py wandb_naming), and make_tables
places it in its cell. ``--runlocal`` runs the 2-step CPU version of every run (no dataset needed) under its
own root, ``<root>_runlocal``, so a smoke run's results.json never makes the real run count as done. The
grid is ``configs/tables.py``: the Table 4 runs, the R-SAM bar of Fig. 3(a) and the official points of
Fig. 3(b, c) are the Table 3 runs without augmentation, so they are listed with their Table 3 workdir.
``--cells`` picks cells by name, ``<home>/<cell>`` as ``--list`` prints them, with shell-style wildcards
(``'1/resnet18-*'``; a pattern without '/' matches the cell name in any table). Runs whose
``results.json`` exists are skipped (a local folder or a gs:// bucket, read through
rsam/training/paths.py). Interrupted runs resume from their checkpoints when the same command runs again.

--print (the default) writes one command per line, for a TPU VM (run the same line on every host of the
slice, or use scripts/tpu/launch.py) or a job scheduler.
--launch local runs them one after another on this machine: one line per run (its cell, seed, how it
ended), each run's output in ``<log_dir>/<home>/<cell>/seed<k>.log``, and one last line. It stops at the
first failure. Ctrl-C, SIGTERM and SIGHUP are handed to the running train.py once, which saves its step and
stops (exit 130 / 143 / 129); this script waits for it and ends with the same exit status. A closed
output (``| head``) is not an error: the listing stops, the runs go on.
wandb logs when ``--wandb`` is given or WANDB_MODE=online|offline is set in the environment.
"""
import argparse
import fnmatch
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import tables  # pylint: disable=wrong-import-position
from rsam.training import paths  # pylint: disable=wrong-import-position

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What train.py's exit statuses after a signal mean (its "Exit codes"): the step was saved.
SAVED = {129: 'SIGHUP', 130: 'SIGINT', 143: 'SIGTERM'}


class UsageError(Exception):
  """A bad argument: one `error:` line naming it and the fix."""


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


def cell_name(run: tables.Run) -> str:
  return f'{run.home}/{run.name}'


def select(table: Optional[str], patterns: Sequence[str] = ()) -> List[tables.Run]:
  """The runs of ``table`` (every run when None) whose cell name matches one of ``patterns`` (all when
  empty): shell-style wildcards on '<home>/<cell>', or on '<cell>' alone for a pattern without '/'."""
  runs = tables.runs_of(table) if table else tables.all_runs()
  if not patterns:
    return runs
  picked = []
  for pattern in patterns:
    hits = [r for r in runs if fnmatch.fnmatchcase(cell_name(r) if '/' in pattern else r.name, pattern)]
    if not hits:
      where = f'table {table}' if table else 'configs/tables.py'
      listing = '.venv/bin/python scripts/reproduce.py --list' + (f' --table {table}' if table else '')
      raise UsageError(f'--cells {pattern!r} matches no cell of {where}; `{listing}` lists them')
    picked += [r for r in hits if r not in picked]
  return [r for r in runs if r in picked]  # table order


def plan(table: Optional[str], seeds: int, root: str, *, cells: Sequence[str] = (), **kw):
  """[(run, seed, argv, done)] for every run of ``table`` (and ``cells``) and seed 0..seeds-1."""
  out = []
  where = runlocal_root(root) if kw.get('runlocal') else root
  for run in select(table, cells):
    for seed in range(seeds):
      done = paths.exists(paths.path(run.workdir(where, seed)) / 'results.json')
      out.append((run, seed, command(run, seed, root=root, **kw), done))
  return out


class Output:
  """stdout that a closed reader (``| head``) does not turn into a traceback: after the first broken pipe
  everything written is dropped, and ``closed`` says so."""

  def __init__(self, stream=None):
    self.stream = stream or sys.stdout
    self.closed = False

  def write(self, text: str, end: str = '\n') -> None:
    if self.closed:
      return
    try:
      self.stream.write(text + end)
      self.stream.flush()
    except BrokenPipeError:
      self.closed = True
      try:  # what Python would flush at exit goes nowhere instead of raising again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())
        os.close(devnull)
      except (OSError, ValueError):
        pass


class Forwarder:
  """While active: SIGINT, SIGTERM and SIGHUP to this process are handed to ``child`` (the running
  train.py, in its own process group so that a terminal's Ctrl-C reaches it once, from here), and the first
  one is remembered in ``received``; no KeyboardInterrupt is raised."""

  def __init__(self):
    self.child: Optional[subprocess.Popen] = None
    self.received: Optional[int] = None
    self._forwarded = False
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.received = self.received or signum
    child = self.child
    if child is not None and child.poll() is None:
      self._forwarded = True
      child.send_signal(signum)

  def attach(self, child: Optional[subprocess.Popen]) -> None:
    """``child`` is the running train.py now (None: none); a signal that came just before it started is
    handed to it."""
    self.child, self._forwarded = child, False
    if child is not None and self.received is not None and not self._forwarded:
      self._forwarded = True
      child.send_signal(self.received)

  def __enter__(self):
    for sig in FORWARDED:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def run_one(argv: Sequence[str], log_path: str, forwarder: Forwarder) -> int:
  """Runs ``argv`` from the repository root, its output appended to ``log_path``; returns its exit status
  (a signal that killed it: 128 + the signal's number, as a shell reports it)."""
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, 'ab') as log:
    log.write(f'# {shlex.join(argv)}\n'.encode())
    log.flush()
    child = subprocess.Popen(list(argv), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    forwarder.attach(child)
    try:
      code = child.wait()
    finally:
      forwarder.attach(None)
  return 128 - code if code < 0 else code


def _last_line(path: str) -> str:
  try:
    with open(path, 'rb') as f:
      f.seek(max(0, os.path.getsize(path) - 4096))
      lines = [l.strip() for l in f.read().decode(errors='replace').splitlines() if l.strip()]
  except OSError:
    return ''
  return lines[-1] if lines else ''


def launch_local(todo, *, log_dir: str, out: Output, skipped: int) -> int:
  """Runs ``todo`` one after another: one line per run, one line at the end; the exit status of the run
  that stopped the loop (failed or interrupted), else 0."""
  n = len(todo)
  with Forwarder() as forwarder:
    for i, (run, seed, argv, _) in enumerate(todo):
      if forwarder.received is not None:  # a signal arrived between two runs: start no other
        name = signal.Signals(forwarder.received).name
        out.write(f'reproduce: interrupted ({name}) before {cell_name(run)} seed{seed} started; {n - i} '
                  f'runs not started; rerun this command to go on')
        return 128 + forwarder.received
      log_path = os.path.join(log_dir, run.home, run.name, f'seed{seed}.log')
      out.write(f'[{i + 1}/{n}] {cell_name(run)} seed{seed}: ', end='')
      start = time.time()
      code = run_one(argv, log_path, forwarder)
      took = f'{time.time() - start:.0f} s'
      if forwarder.received is not None:
        name = signal.Signals(forwarder.received).name
        saved = f'exit {code}: its step was saved' if code in SAVED else f'exit {code}'
        out.write(f'stopped by {name} after {took} ({saved}; log: {log_path})')
        out.write(f'reproduce: interrupted ({name}) during {cell_name(run)} seed{seed}; {n - i - 1} runs not '
                  f'started; rerun this command to resume it and go on')
        return code if code else 128 + forwarder.received
      if code:
        last = _last_line(log_path)
        out.write(f'failed with exit {code} after {took}' + (f': {last}' if last else '') + f' (log: {log_path})')
        out.write(f'reproduce: stopped at the first failure ({cell_name(run)} seed{seed}); fix it and rerun '
                  f'this command (finished runs are skipped, interrupted ones resume)')
        return code
      out.write(f'done in {took} (log: {log_path})')
  out.write(f'reproduce: {n} runs done' + (f', {skipped} skipped (results.json exists)' if skipped else ''))
  return 0


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(f'{message} (see --help)')


def parse_args(argv):
  p = _Parser(description=__doc__.split('\n')[0], prog='scripts/reproduce.py')
  p.add_argument('--table', choices=tables.TABLES, help='a paper table or figure (default: every run)')
  p.add_argument('--cells', action='append', default=[], metavar='PATTERN[,PATTERN]',
                 help="cells by name, with wildcards, e.g. '1/resnet18-*' (repeatable; see --list)")
  p.add_argument('--list', action='store_true', help='print the cells (of --table / --cells) and stop')
  p.add_argument('--seeds', type=int, default=1, help='seeds 0..N-1 per cell (default 1)')
  p.add_argument('--workdir_root', help='root of <table>/<cell>/seed<k> workdirs')
  mode = p.add_mutually_exclusive_group()
  mode.add_argument('--print', dest='launch', action='store_const', const=None,
                    help='print the command lines (default)')
  mode.add_argument('--launch', choices=('local',), help='run the commands here, one after another')
  p.add_argument('--data_dir', help='tfds data_dir (local path or gs://)')
  p.add_argument('--wandb', action='store_true', help='log to wandb (sets config.wandb.enabled)')
  p.add_argument('--runlocal', action='store_true', help='the 2-step CPU version of every run')
  p.add_argument('--python', default='python', help='interpreter in the printed commands')
  p.add_argument('--log_dir', help='--launch local: where each run\'s output goes (default: <root>/logs, or '
                 'reproduce_logs for a gs:// root)')
  p.add_argument('--include_done', action='store_true', help='also list runs that have results.json')
  p.add_argument('extra', nargs='*', help='more train.py flags after --, e.g. -- --config.log_every_steps=50')
  args = p.parse_args(argv)
  args.cells = [c.strip() for item in args.cells for c in item.split(',') if c.strip()]
  if args.seeds < 1:
    raise UsageError(f'--seeds={args.seeds} must be >= 1')
  if not args.list and not args.table and not args.cells:
    raise UsageError('name the runs: --table T and/or --cells PATTERN (`.venv/bin/python '
                     'scripts/reproduce.py --list` lists the cells)')
  if not args.list and not args.workdir_root:
    raise UsageError('--workdir_root is required (the root of the runs\' workdirs, a folder or gs://...)')
  return args


def main(argv=None) -> int:
  out = Output()
  try:
    args = parse_args(argv)
    if args.list:
      runs = select(args.table, args.cells)
      width = max(len(cell_name(r)) for r in runs)
      for r in runs:
        out.write(f'{cell_name(r):<{width}}  {r.config}  (tables: {", ".join(r.tables)})')
        if out.closed:
          break
      return 0
    python = sys.executable if args.launch == 'local' and args.python == 'python' else args.python
    root = args.workdir_root
    if args.launch == 'local' and '://' not in root:
      root = os.path.abspath(root)  # train.py runs from the repository root
    runs = plan(args.table, args.seeds, root, cells=args.cells, data_dir=args.data_dir, wandb=args.wandb,
                runlocal=args.runlocal, python=python, extra=args.extra)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  where = runlocal_root(root) if args.runlocal else root
  todo = [r for r in runs if args.include_done or not r[3]]
  what = ', '.join(([f'table {args.table}'] if args.table else []) + ([f'cells {",".join(args.cells)}']
                                                                         if args.cells else []))
  ndone = sum(1 for r in runs if r[3])
  out.write(f'# {what}: {len(runs)} runs ({len({r[0] for r in runs})} cells x {args.seeds} seeds), {ndone} '
            f'done, {len(todo)} listed')
  for run, seed, _, done in runs:
    if done and not args.include_done:
      out.write(f'# done: {run.workdir(where, seed)}/results.json')
  if args.launch is None:
    for _, _, argv_, _ in todo:
      out.write(shlex.join(argv_))
      if out.closed:
        break
    return 0
  log_dir = args.log_dir or (os.path.join(where, 'logs') if '://' not in where else 'reproduce_logs')
  return launch_local(todo, log_dir=os.path.abspath(log_dir), out=out, skipped=ndone)


if __name__ == '__main__':
  try:
    sys.exit(main())
  except KeyboardInterrupt:  # Ctrl-C while the runs were being listed: nothing had started
    print('reproduce: interrupted (SIGINT) before any run started', file=sys.stderr)
    sys.exit(130)
