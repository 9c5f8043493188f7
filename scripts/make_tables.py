r"""Prints the paper's tables (markdown) from the ``results.json`` of finished runs, beside its numbers.

    python scripts/make_tables.py --root runs                  # every paper table that has runs
    python scripts/make_tables.py --root runs --table 1        # Table 1, also when no run has finished
    python scripts/make_tables.py --root runs/digits --layout rows=model,cols=optimizer
    python scripts/make_tables.py --root runs/digits --layout rows=data.label_noise,cols=optimizer+model

Every ``results.json`` under ``--root`` (any depth) is one run. A run is placed by its own config (the
``config`` inside results.json), never by its directory:

- ``dataset`` data.name, ``model`` model.name, ``optimizer`` the table column: the updater's name, or for
  updater 'plain' the base optimizer's (sgd, sgd_momentum, rmsprop, adamw); ``mixup`` / ``randaug``
  (mixup_alpha > 0, data.randaugment_layers > 0), ``updater``, ``seed``, or any dotted config path
  (``data.label_noise``, ``updater.rho``) -- the fields a ``--layout`` can use.
- In a paper table, a cell takes the runs whose dataset, model, optimizer, mixup, randaug and ρ / λ / α
  equal those of the cell's config in ``configs/tables.py`` (so the Fig. 3 sweeps do not mix into
  Table 3). Runs that differ from that config elsewhere (batch size, epochs, lr, ...) still count; the
  cell is marked † and a footnote names the fields.
- Smoke runs (``:runlocal=1``, whose config names the model its tiny one stands in for, or any run on
  tfds mock data) fill the same cells of a separate table under the real one, never averaged with real
  runs nor compared with the paper: the cell its ``config.wandb.cell`` names (scripts/reproduce.py sets
  it), else the one whose config it is, with the full-size model.

Each cell is the mean ± sample standard deviation (n − 1) over seeds of the top-1 accuracy in %, with the
number of runs in brackets; paper tables add the paper's number and ours minus the paper's. Two runs of
one cell with the same seed (and, in --layout tables, the same config) count once; a --layout cell whose
runs differ in more than the seed is marked ‡ with the differing fields; '—' marks a cell with no runs.
The ImageNet-C number is the mean top-1 over the corruptions × severities the run evaluated.
"""
import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from rsam.training import paths  # pylint: disable=wrong-import-position

BASE_OPTIMIZER_LABEL = {'sgd': 'sgd', 'momentum': 'sgd_momentum', 'rmsprop': 'rmsprop', 'adamw': 'adamw'}
OPTIMIZER_ORDER = ('sgd', 'sgd_momentum', 'rmsprop', 'adamw', 'lpf_sgd', 'sam', 'rsam', 'gsam', 'rgsam',
                   'asam')
PAPER_TABLES = ('1', '2', '3', '4', 'fig3a', 'fig3b', 'fig3c', 'cifar_rho')
DATASET_LABEL = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'imagenet': 'ImageNet-1k'}
# Fields compared with the cell's config to mark deviating runs (†); compared only where the run has them.
CHECKED = ('batch_size', 'num_epochs', 'total_steps', 'grad_accum_steps', 'loss', 'label_smoothing',
           'mixup_alpha', 'compute_dtype', 'optimizer.', 'schedule.', 'updater.', 'model.', 'data.augment',
           'data.image_size', 'data.randaugment_layers', 'data.randaugment_magnitude')
# Fields that never make two runs different experiments (generic tables): config_check.BOOKKEEPING (a
# test keeps them in step; not imported, to keep this script free of JAX), the seed and the NaN policy.
IGNORED = ('seed', 'wandb', 'distributed', 'data.data_dir', 'eval_sets', 'eval_batch_size',
           'eval_every_steps', 'eval_intervals', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
           'nan_policy', 'profile', 'compilation_cache_dir', 'max_consecutive_skipped_steps', 'lease_timeout_s',
           'mesh', 'shard_min_bytes', 'storage_retry_s')


# --- runs ---------------------------------------------------------------------------------------------


class Run:
  """One results.json: its path, flattened config and eval results."""

  def __init__(self, path: str, results: dict):
    self.path = path
    self.config = results.get('config') or {}
    self.flat = flatten(self.config)
    self.eval = results.get('eval') or {}
    model, data = self.config.get('model') or {}, self.config.get('data') or {}
    # A smoke run (runlocal: configs/families.py) and the full-size model it stands in for.
    self.stands_in_for = model.get('runlocal_of')
    self.smoke = bool(self.stands_in_for) or bool(data.get('mock_examples'))
    self.cell = (self.config.get('wandb') or {}).get('cell')  # '<home>/<name>' of configs/tables.py, or None

  def field(self, name: str):
    c = self.config
    if name == 'dataset':
      return (c.get('data') or {}).get('name')
    if name == 'model':
      return (c.get('model') or {}).get('name')
    if name == 'updater':
      return (c.get('updater') or {}).get('name')
    if name == 'optimizer':
      return optimizer_label(c)
    if name == 'mixup':
      return float(c.get('mixup_alpha') or 0) > 0
    if name == 'randaug':
      return int((c.get('data') or {}).get('randaugment_layers') or 0) > 0
    if name == 'seed':
      return c.get('seed', 0)
    return self.flat.get(name)

  def accuracy(self, eval_set: str) -> Optional[float]:
    value = (self.eval.get(eval_set) or {}).get('accuracy')
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
      return None
    return 100.0 * float(value)


def optimizer_label(config: dict) -> Optional[str]:
  updater = (config.get('updater') or {}).get('name')
  if updater == 'plain':
    return BASE_OPTIMIZER_LABEL.get((config.get('optimizer') or {}).get('name'))
  return updater


def flatten(tree, prefix: str = '') -> Dict[str, Any]:
  out = {}
  for key, value in (tree or {}).items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return out


def find_runs(root: str) -> Tuple[List[Run], List[str]]:
  """Every results.json under ``root`` (a local folder or gs://...; a repository's tests/fixtures are
  skipped), and a line for each one that does not read or does not have a run's shape."""
  runs, problems = [], []
  for path in paths.find(root, 'results.json'):
    try:
      results = paths.read_json(path)
      shape_problem = _shape_problem(results)
      if shape_problem:
        raise ValueError(shape_problem)
      runs.append(Run(path, results))
    except (OSError, ValueError) as e:
      problems.append(f'{path}: unreadable ({e})')
  return runs, problems


def _shape_problem(results) -> Optional[str]:
  """Why ``results`` is not a results.json of train.py (None if it is one)."""
  if not isinstance(results, dict):
    return f'a JSON {type(results).__name__}, not an object'
  for key in ('config', 'eval'):
    if not isinstance(results.get(key), dict):
      return f'"{key}" is {type(results.get(key)).__name__}, not an object'
  bad = [name for name, value in results['eval'].items() if not isinstance(value, dict)]
  if bad:
    return f'eval["{bad[0]}"] is not an object'
  for section in ('data', 'model', 'updater', 'optimizer'):
    if not isinstance(results['config'].get(section, {}), dict):
      return f'config["{section}"] is not an object'
  return None


def signature(flat: Dict[str, Any], config: dict, model: Optional[str] = None) -> tuple:
  """What places a run in a paper table: dataset, model (``model``: the one a smoke run stands in for),
  optimizer, mixup, RandAugment and ρ, λ, α."""
  def num(key):
    v = flat.get(key)
    return None if v is None else round(float(v), 6)
  schedule = flat.get('updater.rho_schedule')
  hp = {}
  if schedule == 'constant':
    hp['rho'] = num('updater.rho')
  elif schedule == 'lr_tied':
    hp['rho_max'], hp['rho_min'] = num('updater.rho_max'), num('updater.rho_min')
  for key in ('lam', 'alpha'):
    if f'updater.{key}' in flat:
      hp[key] = num(f'updater.{key}')
  return (flat.get('data.name'), model or flat.get('model.name'), optimizer_label(config),
          float(flat.get('mixup_alpha') or 0) > 0, int(flat.get('data.randaugment_layers') or 0) > 0,
          tuple(sorted(hp.items())))


def _same(a, b) -> bool:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
  return a == b


# --- statistics and formatting ----------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, None
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def fmt_ours(values: Sequence[float], decimals: int) -> str:
  if not values:
    return '—'
  mean, std = mean_std(values)
  text = f'{mean:.{decimals}f}' if std is None else f'{mean:.{decimals}f} ± {std:.{decimals}f}'
  return f'{text} [{len(values)}]'


def fmt_paper(row: Optional[dict], decimals: int) -> str:
  if row is None or row.get('mean') is None:
    return 'n/a'
  text = f"{row['mean']:.{decimals}f}"
  return text if row.get('std') is None else f"{text} ± {row['std']:.{decimals}f}"


def fmt_cell(values, paper_row, paper_decimals: int, mark: str = '') -> str:
  ours = fmt_ours(values, paper_decimals + 1) + mark
  if paper_row is None:
    return ours
  out = f'{ours} / {fmt_paper(paper_row, paper_decimals)}'
  if values and paper_row.get('mean') is not None:
    out += f' / {mean_std(values)[0] - paper_row["mean"]:+.{paper_decimals + 1}f}'
  return out


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  return '\n'.join(lines)


# --- cells ----------------------------------------------------------------------------------------------


class Cell:
  """The runs of one table cell, deduplicated by seed; marks runs that deviate from the cell's config."""

  def __init__(self, eval_set: str, reference: Optional[Dict[str, Any]] = None):
    self.eval_set, self.reference = eval_set, reference
    self.by_seed: Dict[Any, Run] = {}
    self.duplicates: List[str] = []
    self.deviations: Dict[str, Tuple[Any, Any]] = {}
    self.mixed: set = set()

  def add(self, run: Run):
    if run.accuracy(self.eval_set) is None:
      return
    seed = run.field('seed')
    if self.reference is None:  # generic tables: the same seed of a different config is another run
      seed = (seed, json.dumps({k: v for k, v in run.flat.items() if not k.startswith(IGNORED)},
                               sort_keys=True, default=str))
    if seed in self.by_seed:
      self.duplicates.append(run.path)
      return
    if self.reference is not None:
      for key, value in run.flat.items():
        if key.startswith(CHECKED) and key in self.reference and not _same(value, self.reference[key]):
          self.deviations.setdefault(key, (value, self.reference[key]))
    elif self.by_seed:
      first = next(iter(self.by_seed.values())).flat
      for key in set(first) | set(run.flat):
        if not key.startswith(IGNORED) and not _same(first.get(key), run.flat.get(key)):
          self.mixed.add(key)
    self.by_seed[seed] = run

  @property
  def values(self) -> List[float]:
    return [r.accuracy(self.eval_set) for _, r in sorted(self.by_seed.items(), key=lambda kv: str(kv[0]))]

  @property
  def mark(self) -> str:
    return '†' if self.deviations else ('‡' if self.mixed else '')


def _reference(run_spec, runlocal: bool = False) -> Tuple[tuple, Dict[str, Any], dict]:
  config = run_spec.load(runlocal=runlocal).to_dict()
  config = json.loads(json.dumps(config, default=str))
  flat = flatten(config)
  return signature(flat, config), flat, config


SMOKE_NOTE = ('Smoke runs (`:runlocal=1`: a tiny model of the family, 2 steps, on tfds mock data unless told '
              'otherwise) test the code path, not the method: never averaged with real runs, never compared '
              'with the paper. Each cell: mean ± std over seeds [seeds]; — = no runs.')


class PaperTable:
  """One paper table: its positions, each with the cell's config (configs/tables.py) and paper row. Real
  runs and smoke runs (``Run.smoke``) fill separate cells and are shown in separate tables."""

  def __init__(self, table: str):
    from configs import tables  # pylint: disable=g-import-not-at-top
    self.table, self.tables = table, tables
    self.paper = tables.paper(table)  # None for fig3b / fig3c / cifar_rho: no numbers in the paper text
    # pos -> (run spec, eval set, paper row): configs/tables.py, which wandb's summaries read too
    self.positions: Dict[tuple, Tuple[Any, str, Optional[dict]]] = tables.paper_positions(table)
    self.references, self.smoke_references = {}, {}
    for pos, (spec, _, _) in self.positions.items():
      if (spec.home, spec.name) not in self.references:
        self.references[(spec.home, spec.name)] = _reference(spec)
        self.smoke_references[(spec.home, spec.name)] = _reference(spec, runlocal=True)
    self.cells = {pos: Cell(ev, self.references[(spec.home, spec.name)][1])
                  for pos, (spec, ev, _) in self.positions.items()}
    self.smoke_cells = {pos: Cell(ev, self.smoke_references[(spec.home, spec.name)][1])
                        for pos, (spec, ev, _) in self.positions.items()}

  def add(self, runs: Sequence[Run]) -> int:
    """Places the runs; returns how many were placed in at least one cell. A real run goes where its
    signature equals the cell's; a smoke run where its ``config.wandb.cell`` says (scripts/reproduce.py
    sets it), else where its signature, with the model it stands in for, equals the cell's."""
    placed = 0
    for run in runs:
      sig = signature(run.flat, run.config, model=run.stands_in_for)
      hit = False
      for pos, (spec, _, _) in self.positions.items():
        if run.smoke:
          wanted = (run.cell == f'{spec.home}/{spec.name}' if run.cell
                    else sig == self.references[(spec.home, spec.name)][0])
        else:
          wanted = sig == self.references[(spec.home, spec.name)][0]
        if wanted:
          (self.smoke_cells if run.smoke else self.cells)[pos].add(run)
          hit = True
      placed += hit
    return placed

  def render(self) -> str:
    out = self._render(self.cells, smoke=False)
    if any(c.values for c in self.smoke_cells.values()):
      out += '\n\n' + self._render(self.smoke_cells, smoke=True)
    return out

  def _title(self) -> str:
    if self.table in ('1', '2', '3', '4'):
      return f'Table {self.table}'
    if self.table.startswith('fig3'):
      return f'Fig. 3({self.table[-1]})'
    return 'R-SAM ρ on CIFAR'

  def _render(self, cells, smoke: bool) -> str:
    p, d = self.paper, (self.paper or {}).get('decimals', 1)
    labels = (p or {}).get('labels', {})
    lab = lambda k: labels.get(k, k)  # noqa: E731
    cell = lambda pos: self._cell(cells, pos, d, smoke)  # noqa: E731
    out = []
    if smoke:
      out += [f'## {self._title()}: smoke runs', '', SMOKE_NOTE, '']
    elif self.table in ('1', '2', '3', '4', 'fig3a'):
      dataset = DATASET_LABEL.get(p['dataset'], p['dataset'])
      out += [f'## {self._title()} ({dataset}): {p["metric"]}', '', f'> {p["caption"]}', '',
              'Each cell: ours, mean ± std over seeds [seeds] / paper / ours − paper; — = no runs.', '']
    if self.table in ('1', '2', 'fig3a'):
      header = ['Model'] + [lab(o) for o in p['optimizers']]
      rows = [[lab(m)] + [cell((m, o)) for o in p['optimizers']] for m in p['models']
              if any((m, o) in self.positions for o in p['optimizers'])]
    elif self.table == '3':
      header = ['Model', 'Resolution', 'Mixup', 'RandAug'] + [lab(o) for o in p['optimizers']]
      settings = list(dict.fromkeys(pos[:4] for pos in self.positions))
      rows = [[lab(s[0]), str(s[1]), '✓' if s[2] else '', '✓' if s[3] else '']
              + [cell(s + (o,)) for o in p['optimizers']] for s in settings]
    elif self.table == '4':
      header = ['Model', 'Training'] + [lab(e) for e in p['eval_sets']]
      rows = [[lab(m), lab(o)] + [cell((m, o, e)) for e in p['eval_sets']]
              for m in p['models'] for o in p['optimizers']]
    elif self.table == 'cifar_rho':
      if not smoke:
        out += ['## R-SAM ρ on CIFAR (not in the paper; ResNet-18, top-1 test accuracy, %)', '',
                "No source publishes R-SAM's CIFAR ρ; the configs use SAM's (× 1). Each cell: mean ± std over "
                "seeds [seeds]; — = no runs; * = the configs' default (the Table 1/2 run).", '']
      datasets = self.tables.families.CIFAR_DATASETS
      header = ["ρ / SAM's ρ"] + [f'{DATASET_LABEL[ds]} {h}' for ds in datasets for h in ('ρ', 'R-SAM')]
      rows = [[f'{k:g}' + ('*' if k == 1 else '')]
              + [x for ds in datasets for x in (f'{self.tables.cifar_rho(ds, k):g}', cell((ds, k)))]
              for k in self.tables.CIFAR_RHO_MULTIPLES]
    else:
      if not smoke:
        fig = ('3(b): sensitivity of R-SAM to ρ' if self.table == 'fig3b'
               else '3(c): sensitivity of R-SAM to λ')
        out += [f'## Fig. {fig} (ViT-B/16, ImageNet top-1 validation accuracy, %)', '',
                'The paper text gives no numbers for this figure (only "a stable pattern"). Each cell: mean '
                '± std over seeds [seeds]; — = no runs; * = the official value (the Table 3 run).', '']
      official = (self.tables.OFFICIAL_RHO_MAX if self.table == 'fig3b' else self.tables.OFFICIAL_LAM)
      if self.table == 'fig3b':
        header = ['ρ_max', 'ρ_min', 'R-SAM']
        rows = [[f'{v:g}' + ('*' if v == official else ''),
                 f'{round(self.tables.FIG3B_RHO_MIN_RATIO * v, 6):g}', cell((v,))]
                for (v,) in self.positions]
      else:
        header = ['λ', 'R-SAM']
        rows = [[f'{v:g}' + ('*' if v == official else ''), cell((v,))] for (v,) in self.positions]
    out.append(markdown(header, rows))
    out += self._footnotes(cells, smoke)
    return '\n'.join(out)

  def _cell(self, cells, pos, decimals, smoke: bool) -> str:
    if pos not in self.positions:
      return ''
    cell, paper_row = cells[pos], None if smoke else self.positions[pos][2]
    return fmt_cell(cell.values, paper_row, decimals, cell.mark)

  def _footnotes(self, cells, smoke: bool) -> List[str]:
    notes = []
    for pos, cell in cells.items():
      name = '/'.join(str(x) for x in pos)
      if cell.deviations:
        config = self.positions[pos][0].config + (' with :runlocal=1' if smoke else '')
        diffs = ', '.join(f'{k}={v!r} (config: {r!r})' for k, (v, r) in sorted(cell.deviations.items()))
        notes.append(f'- † {name}: runs differ from {config} in {diffs}')
      for path in cell.duplicates:
        notes.append(f'- {name}: {path} repeats a seed already counted; ignored')
    missing = sum(1 for c in cells.values() if not c.values)
    notes.append(f'- {len(cells) - missing} of {len(cells)} cells have {"smoke " if smoke else ""}runs.')
    return [''] + notes

  @property
  def has_runs(self) -> bool:
    return any(c.values for c in list(self.cells.values()) + list(self.smoke_cells.values()))


# --- generic tables ---------------------------------------------------------------------------------


def parse_layout(text: str) -> Tuple[List[str], List[str]]:
  parts = dict(item.split('=', 1) for item in text.split(',') if '=' in item)
  if set(parts) != {'rows', 'cols'}:
    raise SystemExit(f'--layout {text!r}: use rows=FIELD[+FIELD...],cols=FIELD[+FIELD...]')
  return parts['rows'].split('+'), parts['cols'].split('+')


def _sort_key(value):
  if isinstance(value, str) and value in OPTIMIZER_ORDER:
    return (0, OPTIMIZER_ORDER.index(value), '')
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return (1, float(value), '')
  return (2, 0, str(value))


def _default_eval_set(run: Run) -> Optional[str]:
  for name in ('test', 'validation'):
    if name in run.eval:
      return name
  return sorted(run.eval)[0] if run.eval else None


def generic_table(runs: Sequence[Run], rows: List[str], cols: List[str], *, title: str,
                  eval_set: Optional[str] = None, decimals: int = 2) -> str:
  cells: Dict[Tuple[tuple, tuple], Cell] = {}
  used_sets = set()
  for run in runs:
    ev = eval_set or _default_eval_set(run)
    if ev is None or run.accuracy(ev) is None:
      continue
    used_sets.add(ev)
    key = (tuple(run.field(f) for f in rows), tuple(run.field(f) for f in cols))
    cells.setdefault(key, Cell(ev)).add(run)
  row_keys = sorted({k[0] for k in cells}, key=lambda t: tuple(_sort_key(v) for v in t))
  col_keys = sorted({k[1] for k in cells}, key=lambda t: tuple(_sort_key(v) for v in t))
  show = lambda t: ' / '.join(str(v) for v in t)  # noqa: E731
  header = [' / '.join(rows)] + [show(c) for c in col_keys]
  body = [[show(r)] + [fmt_ours(cells[(r, c)].values, decimals) + cells[(r, c)].mark if (r, c) in cells
                       else '—' for c in col_keys] for r in row_keys]
  sets = ', '.join(sorted(used_sets)) or 'none'
  out = [f'## {title}: top-1 accuracy (%) on {sets}', '',
         'Each cell: mean ± std over seeds [seeds]; — = no runs.', '', markdown(header, body)]
  notes = []
  for (r, c), cell in sorted(cells.items(), key=lambda kv: str(kv[0])):
    if cell.mixed:
      notes.append(f'- ‡ {show(r)} × {show(c)}: its runs differ in {", ".join(sorted(cell.mixed))}')
    for path in cell.duplicates:
      notes.append(f'- {show(r)} × {show(c)}: {path} repeats a seed already counted; ignored')
  return '\n'.join(out + ([''] + notes if notes else []))


# --- main ---------------------------------------------------------------------------------------------


def make(root: str, table: Optional[str] = None, layout: Optional[str] = None,
         eval_set: Optional[str] = None) -> str:
  runs, problems = find_runs(root)
  sections = []
  if layout:
    rows, cols = parse_layout(layout)
    sections.append(generic_table(runs, rows, cols, title=paths.normalize(root).rstrip('/').rsplit('/', 1)[-1] or root,
                                  eval_set=eval_set))
  else:
    placed = set()
    for t in ([table] if table else PAPER_TABLES):
      pt = PaperTable(t)
      for run in runs:
        if pt.add([run]):
          placed.add(run.path)
      if table or pt.has_runs:
        sections.append(pt.render())
    rest = [r for r in runs if r.path not in placed]
    if rest and not table:
      sections.append(generic_table(rest, ['dataset', 'model'], ['optimizer'], eval_set=eval_set,
                                    title='Runs in no paper table'))
    if not sections:
      sections.append(f'No results.json under {root}.')
  if problems:
    sections.append('\n'.join(['Unreadable results:'] + [f'- {p}' for p in problems]))
  return '\n\n'.join(sections) + '\n'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', required=True, help='directory searched (recursively) for results.json')
  p.add_argument('--table', choices=PAPER_TABLES, help='one paper table (default: all that have runs)')
  p.add_argument('--layout', help='a custom table: rows=FIELD[+FIELD],cols=FIELD[+FIELD] (see above)')
  p.add_argument('--eval_set', help='eval set of --layout tables (default: test, else validation)')
  args = p.parse_args(argv)
  if args.table and args.layout:
    p.error('--table and --layout are exclusive')
  sys.stdout.write(make(args.root, args.table, args.layout, args.eval_set))
  return 0


if __name__ == '__main__':
  sys.exit(main())
