"""The runs behind every paper table and figure: one ``Run`` per cell, shared where the paper reuses a run.

``scripts/reproduce.py`` launches these, ``scripts/make_tables.py`` lays their results out in the paper's
tables, ``tests/test_configs.py`` builds every one. A run lives in ``<root>/<home>/<name>/seed<k>``, where
``home`` is the first table that needs it: Table 4, the R-SAM bar of Fig. 3(a) and the official points of
the Fig. 3(b, c) sweeps are the Table 3 runs without augmentation (the paper's own numbers agree: R-SAM
80.7 in Table 3, Table 4 and Sec. 4.5), so they are trained once.

Fig. 3(b, c) have no numbers in the paper text; their grids are ours: ρ_max ∈ {1.0, 1.5, 2.0, 2.5, 3.0}
with ρ_min = 0.6 ρ_max (the official 1.5/2.5 ratio), and λ ∈ {0.5, 1, 2, 4, 8}; both include the
official point (ρ_max 2.5, λ 2).

'cifar_rho' is not in the paper: R-SAM's ρ on CIFAR, which no source publishes. The CIFAR configs set it to
SAM's (0.05 / 0.1), a choice; in the official ViT recipe R-SAM's ρ (2.5 → 1.5) is 15-50× SAM's (0.05-0.1),
because ρ normalises δ0 + λĝ and δ0 can dominate. The sweep, in the style of Fig. 3(b), runs ResNet-18
R-SAM at ρ = k × SAM's ρ for k in CIFAR_RHO_MULTIPLES on both datasets; k = 1 is the Table 1/2 run.
"""
import dataclasses
import functools
import glob
import importlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from configs import families
from rsam.errors import ConfigError

TABLES = ('1', '2', '3', '4', 'fig3a', 'fig3b', 'fig3c', 'cifar_rho')
TABLE_DATASET = {'1': 'cifar10', '2': 'cifar100'}
FIG3B_RHO_MAX = (1.0, 1.5, 2.0, 2.5, 3.0)
FIG3B_RHO_MIN_RATIO = 0.6
FIG3C_LAM = (0.5, 1.0, 2.0, 4.0, 8.0)
OFFICIAL_RHO_MAX, OFFICIAL_LAM = 2.5, 2.0
CIFAR_RHO_MULTIPLES = (1, 2, 5, 10, 20, 50)   # × SAM's ρ; 1 is the configs' default (the Table 1/2 run)
CIFAR_RHO_MODEL = 'resnet18'


def cifar_rho(dataset: str, multiple: float) -> float:
  """R-SAM's ρ at ``multiple`` × SAM's ρ on ``dataset`` (the 'cifar_rho' sweep)."""
  return round(families.SAM_RHO_CIFAR[dataset] * multiple, 6)


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run (per seed): its config string, home table, directory name and place in tables."""
  home: str                 # the table whose directory holds the run
  name: str                 # the cell's directory name, unique within ``home``
  config: str               # 'configs/<file>.py[:arg]', relative to the repository root
  tables: Tuple[str, ...]   # every table / figure that reads this run

  def workdir(self, root: str, seed: int) -> str:
    return f'{root.rstrip("/")}/{self.home}/{self.name}/seed{seed}'

  def load(self, *, runlocal: bool = False):
    """The ConfigDict this run trains (``runlocal``: its 2-step CPU version)."""
    path, _, arg = self.config.partition(':')
    module = importlib.import_module(path[:-len('.py')].replace('/', '.'))
    if runlocal:
      arg = f'{arg},runlocal=1' if arg else 'runlocal=1'
    return module.get_config(arg) if arg else module.get_config()


def _cifar(table: str) -> List[Run]:
  dataset = TABLE_DATASET[table]
  return [Run(table, f'{model}-{updater}',
              f'configs/cifar.py:dataset={dataset},model={model},updater={updater}',
              (table, 'cifar_rho') if (model, updater) == (CIFAR_RHO_MODEL, 'rsam') else (table,))
          for model in families.CIFAR_MODELS for updater in families.CIFAR_UPDATERS[:7]]


def cifar_rho_run(dataset: str, multiple: float) -> Run:
  """The 'cifar_rho' run at ``multiple`` × SAM's ρ (``multiple`` 1: the Table 1/2 run it shares)."""
  if multiple == 1:
    return by_name()[({v: k for k, v in TABLE_DATASET.items()}[dataset], f'{CIFAR_RHO_MODEL}-rsam')]
  rho = cifar_rho(dataset, multiple)
  return Run('cifar_rho', f'{dataset}-{CIFAR_RHO_MODEL}-rsam-rho{rho:g}',
             f'configs/cifar.py:dataset={dataset},model={CIFAR_RHO_MODEL},updater=rsam,rho={rho:g}',
             ('cifar_rho',))


def _vit_config(model: str, updater: str, aug: str = 'none', **kw) -> str:
  arg = ','.join([f'aug={aug}'] * (aug != 'none') + [f'{k}={v:g}' for k, v in kw.items()])
  return f'configs/{model}_{updater}.py' + (f':{arg}' if arg else '')


def _table3() -> List[Run]:
  runs = []
  for model, augs in (('vit_b16', ('none', 'mixup', 'mixup_ra')), ('vit_s16', ('none',))):
    for aug in augs:
      for updater in ('adamw', 'sam', 'rsam'):
        tables = ('3', '4') if aug == 'none' else ('3',)
        if (model, aug, updater) == ('vit_b16', 'none', 'rsam'):
          tables += ('fig3a', 'fig3b', 'fig3c')
        runs.append(Run('3', f'{model}-{aug}-{updater}', _vit_config(model, updater, aug), tables))
  return runs


def all_runs() -> List[Run]:
  """Every distinct run, in table order."""
  runs = _cifar('1') + _cifar('2') + _table3()
  runs += [Run('fig3a', f'vit_b16-none-{u}', _vit_config('vit_b16', u), ('fig3a',))
           for u in ('gsam', 'rgsam')]
  runs += [Run('fig3b', f'rho_max_{r:g}',
               _vit_config('vit_b16', 'rsam', rho_max=r, rho_min=round(FIG3B_RHO_MIN_RATIO * r, 6)),
               ('fig3b',))
           for r in FIG3B_RHO_MAX if r != OFFICIAL_RHO_MAX]
  runs += [Run('fig3c', f'lam_{lam:g}', _vit_config('vit_b16', 'rsam', lam=lam), ('fig3c',))
           for lam in FIG3C_LAM if lam != OFFICIAL_LAM]
  runs += [cifar_rho_run(dataset, k) for dataset in families.CIFAR_DATASETS for k in CIFAR_RHO_MULTIPLES
           if k != 1]
  return runs


def runs_of(table: str) -> List[Run]:
  """The runs a table or figure reads (some live under another table's directory)."""
  if table not in TABLES:
    raise ValueError(f"unknown table {table!r}; choose one of: {', '.join(TABLES)}")
  return [r for r in all_runs() if table in r.tables]


def by_name() -> Dict[Tuple[str, str], Run]:
  return {(r.home, r.name): r for r in all_runs()}


def label(table: str) -> str:
  """'3' -> 'table3', 'fig3a' -> 'fig3a': how directories, wandb groups and tags name a table."""
  return f'table{table}' if table[0].isdigit() else table


# --- the paper's numbers (results/paper/*.json) ---------------------------------------------------------

PAPER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results', 'paper')
TABLE4_EVAL = {'imagenet': 'validation', 'real': 'imagenet_real', 'v2': 'imagenet_v2', 'r': 'imagenet_r',
               'c': 'imagenet_c'}


def paper(table: str) -> Optional[dict]:
  """The paper's numbers of ``table`` (results/paper/), or None (Fig. 3(b, c), cifar_rho: none published)."""
  for path in sorted(glob.glob(os.path.join(PAPER_DIR, '*.json'))):
    with open(path) as f:
      d = json.load(f)
    if str(d.get('table')) == table:
      return d
  return None


def paper_positions(table: str) -> Dict[tuple, Tuple[Run, str, Optional[dict]]]:
  """Every position of a paper table: position -> (the run of the cell, its eval set, the paper's row or
  None). Positions: (model, optimizer) for Tables 1-2 and Fig. 3(a); (model, resolution, mixup, randaug,
  optimizer) for Table 3; (model, optimizer, eval set) for Table 4; (dataset, multiple) for cifar_rho;
  (value,) for Fig. 3(b, c)."""
  specs, rows = by_name(), (paper(table) or {}).get('rows', [])
  positions = {}
  if table in ('1', '2'):
    for row in rows:
      positions[(row['model'], row['optimizer'])] = (specs[(table, f"{row['model']}-{row['optimizer']}")],
                                                     'test', row)
  elif table == '3':
    for row in rows:
      aug = 'mixup_ra' if row['randaug'] else ('mixup' if row['mixup'] else 'none')
      key = (row['model'], row['resolution'], row['mixup'], row['randaug'], row['optimizer'])
      positions[key] = (specs[('3', f"{row['model']}-{aug}-{row['optimizer']}")], 'validation', row)
  elif table == '4':
    for row in rows:
      positions[(row['model'], row['optimizer'], row['eval_set'])] = (
          specs[('3', f"{row['model']}-none-{row['optimizer']}")], TABLE4_EVAL[row['eval_set']], row)
  elif table == 'fig3a':
    for row in rows:
      home = '3' if row['optimizer'] == 'rsam' else 'fig3a'
      positions[(row['model'], row['optimizer'])] = (specs[(home, f"vit_b16-none-{row['optimizer']}")],
                                                     'validation', row)
  elif table == 'cifar_rho':
    for dataset in families.CIFAR_DATASETS:
      for k in CIFAR_RHO_MULTIPLES:
        positions[(dataset, k)] = (cifar_rho_run(dataset, k), 'test', None)
  elif table in ('fig3b', 'fig3c'):
    grid = FIG3B_RHO_MAX if table == 'fig3b' else FIG3C_LAM
    official = OFFICIAL_RHO_MAX if table == 'fig3b' else OFFICIAL_LAM
    prefix = 'rho_max_' if table == 'fig3b' else 'lam_'
    for value in grid:
      spec = specs[('3', 'vit_b16-none-rsam')] if value == official else specs[(table, f'{prefix}{value:g}')]
      positions[(value,)] = (spec, 'validation', None)
  else:
    raise ValueError(f"unknown table {table!r}; choose one of: {', '.join(TABLES)}")
  return positions


def paper_numbers(run: Run) -> Dict[Tuple[str, str], Any]:
  """{(table, eval set): the paper's mean top-1 in %} of every paper table that has ``run``'s cell."""
  out = {}
  for table in run.tables:
    for spec, eval_set, row in paper_positions(table).values():
      if (spec.home, spec.name) == (run.home, run.name) and row and row.get('mean') is not None:
        out[(table, eval_set)] = row['mean']
  return out


# --- the cell of a config (train.py hands it to the trainer's wandb run: rsam/training/writers.py) ----------


def cell(text: str) -> Run:
  """The run of the cell named ``'<home>/<name>'`` (``config.wandb.cell``, ``reproduce.py --cells``)."""
  home, _, name = text.partition('/')
  run = by_name().get((home, name))
  if run is None:
    raise ConfigError(f"config.wandb.cell={text!r} is not a table cell of configs/tables.py; write it as "
                      f"'<home>/<name>', e.g. '3/vit_b16-none-rsam' (`.venv/bin/python scripts/reproduce.py "
                      f"--list` lists them)")
  return run


def is_smoke(config) -> bool:
  """A runlocal config (``model.runlocal_of``) or one on tfds mock data: a smoke run, never a result."""
  return bool(config.model.get('runlocal_of')) or bool(config.data.get('mock_examples'))


def _key(config) -> str:
  """A config's content up to its seed, its bookkeeping fields and where its data comes from."""
  from rsam.training import config_check  # pylint: disable=g-import-not-at-top  (JAX: only when asked)
  d = config_check.identity(config)
  d.pop('seed', None)
  d.get('data', {}).pop('mock_examples', None)
  return json.dumps(d, sort_keys=True, default=str)


@functools.lru_cache(maxsize=1)
def _cells_by_key() -> Dict[str, Tuple[Run, bool]]:
  out = {}
  for run in all_runs():
    for smoke in (False, True):
      out.setdefault(_key(run.load(runlocal=smoke)), (run, smoke))
  return out


def match(config) -> Optional[Tuple[Run, bool]]:
  """(the run of the table cell whose config ``config`` is, whether it is that cell's runlocal version), up
  to seed, bookkeeping fields (wandb, intervals, data_dir, ...) and mock data; None for a config changed
  anywhere else."""
  return _cells_by_key().get(_key(config))


def config_label(config_file: str) -> str:
  """'configs/quickstart.py' -> 'quickstart'; 'configs/cifar.py:model=wrn28_10' -> 'cifar:model=wrn28_10'."""
  path, colon, arg = config_file.partition(':')
  return os.path.splitext(os.path.basename(path))[0] + colon + arg


def wandb_naming(config, config_file: Optional[str] = None) -> Dict[str, Any]:
  """The names of ``config``'s wandb run, for the trainer (rsam/training/writers.py: identity).

  The table cell is ``config.wandb.cell`` when set, else the cell ``config`` matches (``match``). A cell's
  run: group ``table<k>/<cell>`` (wandb's group average is the cell's mean over seeds), name
  ``<group>/seed<s>``, tags the tables that read it, summary the paper's numbers of the cell
  (``paper/table<k>/<set>/accuracy``, fractions). A smoke run (``is_smoke``) of a cell: group
  ``runlocal/table<k>/<cell>``, tag 'runlocal', no paper numbers, so it never joins the real runs. A config
  in no cell: named after its file (``config_file``, e.g. ``quickstart/seed0``), no group.
  """
  seed = config.get('seed', 0)
  explicit = config.get('wandb', {}).get('cell')
  found = (cell(explicit), is_smoke(config)) if explicit else match(config)
  if found is None:
    name = f'{config_label(config_file)}/seed{seed}' if config_file else None
    return {'group': None, 'name': name, 'tags': [], 'summary': {}}
  run, smoke = found
  smoke = smoke or is_smoke(config)
  group = f'{label(run.home)}/{run.name}'
  if smoke:
    return {'group': f'runlocal/{group}', 'name': f'runlocal/{group}/seed{seed}', 'tags': ['runlocal'],
            'summary': {}, 'job_type': 'runlocal'}
  summary = {f'paper/{label(table)}/{eval_set}/accuracy': value / 100.0
             for (table, eval_set), value in paper_numbers(run).items()}
  return {'group': group, 'name': f'{group}/seed{seed}', 'tags': [label(t) for t in run.tables],
          'summary': summary}
