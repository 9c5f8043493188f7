"""scripts/make_tables.py on the fixture runs of tests/fixtures/make_tables/: the expected tables, by hand.

Fixture accuracies (results.json stores fractions; tables show %):
  paper/  Table 1 ResNet-18 SGD+M seeds 0, 1: 95.4, 96.0 -> mean 95.70, std 0.6/√2 = 0.42;
          SAM seeds 0-2: 96.5, 96.7, 96.6 -> 96.60 ± 0.10, plus a copy of seed 0 elsewhere (ignored);
          R-SAM seed 0: 96.61; WRN-28-10 LPF-SGD seed 0: 96.00 at batch 64 (†);
          a SAM run with ρ 0.1 on CIFAR-10 (in no table cell);
          ViT-B/16 R-SAM (official ρ, λ): val 81.23, ReaL 86.50, v2 68.00, R 25.00, C 57.00 (Tables 3, 4,
          Fig. 3(a), the official points of Fig. 3(b, c)); ρ_max 2 / ρ_min 1.2 seeds 0, 1: 80, 81 ->
          80.50 ± 0.71 (Fig. 3(b)).
  generic/ digits, resnet_tiny; label noise 0: SGD+M 88, 89, 87 -> 88.00 ± 1.00; SAM 90, 92 -> 91.00 ±
          1.41; R-SAM 93; label noise 0.2: SGD+M 75; SAM 80 (lr 0.05), 84 (lr 0.1) -> 82.00 ± 2.83 ‡.
"""
import json
import os
import shutil

import pytest

from scripts import make_tables

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'make_tables')
PAPER, GENERIC = os.path.join(FIXTURES, 'paper'), os.path.join(FIXTURES, 'generic')

TABLE1 = """\
## Table 1 (CIFAR-10): top-1 test accuracy (%)

> Accuracy of ResNet and WideResNet on CIFAR-10 for 200 epoch. The base optimizer for SAM and R-SAM is \
SGD with Momentum (SGD+M). We select batch size as 128.

Each cell: ours, mean ± std over seeds [seeds] / paper / ours − paper; — = no runs.

| Model | SGD | SGD+M | RMSProp | AdamW | LPF-SGD | SAM | R-SAM |
|---|---|---|---|---|---|---|---|
| ResNet-18 | — / 95.4 ± 0.1 | 95.70 ± 0.42 [2] / 95.6 ± 0.2 / +0.10 | — / 95.4 ± 0.2 | — / 95.1 ± 0.1 \
| — / 95.9 ± 0.1 | 96.60 ± 0.10 [3] / 96.4 ± 0.2 / +0.20 | 96.61 [1] / 96.5 ± 0.1 / +0.11 |
| ResNet-50 | — / 95.8 ± 0.1 | — / 95.7 ± 0.1 | — / 95.7 ± 0.1 | — / 96.0 ± 0.1 | — / 96.3 ± 0.2 \
| — / 96.7 ± 0.1 | — / 96.9 ± 0.1 |
| WRN-28-10 | — / 96.4 ± 0.1 | — / 96.5 ± 0.1 | — / 96.4 ± 0.2 | — / 96.0 ± 0.1 \
| 96.00 [1]† / 96.8 ± 0.1 / -0.80 | — / 97.3 ± 0.1 | — / 97.5 ± 0.1 |

- resnet18/sam: {paper}/copy/resnet18-sam/seed0/results.json repeats a seed already counted; ignored
- † wrn28_10/lpf_sgd: runs differ from configs/cifar.py:dataset=cifar10,model=wrn28_10,updater=lpf_sgd \
in batch_size=64 (config: 128)
- 4 of 21 cells have runs.
"""

TABLE4_ROWS = """\
| Model | Training | ImageNet | ImageNet-Real | ImageNet-v2 | ImageNet-R | ImageNet-C |
|---|---|---|---|---|---|---|
| ViT-B-16 | AdamW | — / 74.6 | — / 79.8 | — / 61.3 | — / 20.1 | — / 46.6 |
| ViT-B-16 | SAM | — / 79.8 | — / 85.2 | — / 67.5 | — / 26.4 | — / 56.5 |
| ViT-B-16 | R-SAM | 81.23 [1] / 80.7 / +0.53 | 86.50 [1] / 86.1 / +0.40 | 68.00 [1] / 68.6 / -0.60 \
| 25.00 [1] / 26.9 / -1.90 | 57.00 [1] / 56.8 / +0.20 |
| ViT-S-16 | AdamW | — / 74.4 | — / 80.4 | — / 61.7 | — / 20.0 | — / 46.5 |
| ViT-S-16 | SAM | — / 77.9 | — / 84.1 | — / 65.6 | — / 24.7 | — / 53.0 |
| ViT-S-16 | R-SAM | — / 78.7 | — / 84.9 | — / 66.7 | — / 25.1 | — / 53.2 |

- 5 of 30 cells have runs.
"""

FIG3B_ROWS = """\
| ρ_max | ρ_min | R-SAM |
|---|---|---|
| 1 | 0.6 | — |
| 1.5 | 0.9 | — |
| 2 | 1.2 | 80.50 ± 0.71 [2] |
| 2.5* | 1.5 | 81.23 [1] |
| 3 | 1.8 | — |
"""

GENERIC_TABLE = """\
## generic: top-1 accuracy (%) on test

Each cell: mean ± std over seeds [seeds]; — = no runs.

| data.label_noise | sgd_momentum | sam | rsam |
|---|---|---|---|
| 0.0 | 88.00 ± 1.00 [3] | 91.00 ± 1.41 [2] | 93.00 [1] |
| 0.2 | 75.00 [1] | 82.00 ± 2.83 [2]‡ | — |

- ‡ 0.2 × sam: its runs differ in optimizer.lr
"""


def test_mean_and_sample_std():
  assert make_tables.mean_std([95.4, 96.0]) == pytest.approx((95.7, 0.6 / 2 ** 0.5))
  assert make_tables.mean_std([96.5, 96.7, 96.6]) == pytest.approx((96.6, 0.1))
  assert make_tables.mean_std([81.0]) == (81.0, None)
  assert make_tables.fmt_ours([], 2) == '—'
  cell = make_tables.fmt_cell([74.0, 76.0], {'mean': 74.7, 'std': None}, 1)
  assert cell == '75.00 ± 1.41 [2] / 74.7 / +0.30'


def test_table1_from_fixture(capsys):
  make_tables.main(['--root', PAPER, '--table', '1'])
  assert capsys.readouterr().out == TABLE1.format(paper=PAPER)


def test_imagenet_tables_share_the_table3_run():
  out = make_tables.make(PAPER, '4')
  assert out.endswith(TABLE4_ROWS)
  assert '## Table 4 (ImageNet-1k): top-1 accuracy (%) on each evaluation set' in out
  table3 = make_tables.make(PAPER, '3')
  assert '| ViT-B-16 | 224 |  |  | — / 74.7 | — / 79.8 | 81.23 [1] / 80.7 / +0.53 |' in table3
  assert '| ViT-B-16 | 224 | ✓ | ✓ | — / 79.6 | — / 80.8 | — / 81.6 |' in table3
  assert '| ViT-B-16 | 81.23 [1] / 80.7 / +0.53 | — / 80.8 | — / 81.2 |' in make_tables.make(PAPER, 'fig3a')
  assert FIG3B_ROWS in make_tables.make(PAPER, 'fig3b')
  assert '| 2* | 81.23 [1] |' in make_tables.make(PAPER, 'fig3c')


def test_default_prints_tables_with_runs_and_the_rest():
  out = make_tables.make(PAPER)
  titles = [line for line in out.splitlines() if line.startswith('## ')]
  assert [t.split(':')[0] for t in titles] == [
      '## Table 1 (CIFAR-10)', '## Table 3 (ImageNet-1k)', '## Table 4 (ImageNet-1k)',
      '## Fig. 3(a) (ImageNet-1k)', '## Fig. 3(b)', '## Fig. 3(c)', '## R-SAM ρ on CIFAR (not in the paper; ResNet-18, top-1 test accuracy, %)',
      '## Runs in no paper table']
  assert out.endswith('| dataset / model | sam |\n|---|---|\n| cifar10 / resnet18 | 96.90 [1] |\n')
  assert 'Table 2' not in out  # no CIFAR-100 runs: left out unless asked for


CIFAR_RHO_ROWS = """\
| ρ / SAM's ρ | CIFAR-10 ρ | CIFAR-10 R-SAM | CIFAR-100 ρ | CIFAR-100 R-SAM |
|---|---|---|---|---|
| 1* | 0.05 | 96.61 [1] | 0.1 | — |
| 2 | 0.1 | — | 0.2 | — |
| 5 | 0.25 | — | 0.5 | — |
| 10 | 0.5 | — | 1 | — |
| 20 | 1 | — | 2 | — |
| 50 | 2.5 | — | 5 | — |
"""


def test_cifar_rho_sweep_shares_the_table1_run_and_keeps_datasets_apart():
  # The CIFAR-10 R-SAM run of Table 1 is the ×1 point of CIFAR-10 only (Tables 1 and 2 both name their
  # cell 'resnet18-rsam').
  out = make_tables.make(PAPER, 'cifar_rho')
  assert CIFAR_RHO_ROWS in out and '- 1 of 12 cells have runs.' in out


def test_empty_table_marks_every_cell(tmp_path):
  out = make_tables.make(str(tmp_path), '2')
  assert '| ResNet-18 | — / 78.0 ± 0.1 | — / 78.9 ± 0.2 |' in out and '- 0 of 21 cells have runs.' in out
  assert make_tables.make(str(tmp_path)) == f'No results.json under {tmp_path}.\n'


def test_generic_layout_from_run_configs(capsys):
  make_tables.main(['--root', GENERIC, '--layout', 'rows=data.label_noise,cols=optimizer'])
  assert capsys.readouterr().out == GENERIC_TABLE
  by_model = make_tables.make(GENERIC, layout='rows=model,cols=optimizer+data.label_noise', eval_set='val')
  header = '| model | sgd_momentum / 0.0 | sgd_momentum / 0.2 | sam / 0.0 | sam / 0.2 | rsam / 0.0 |'
  assert header in by_model
  assert '| resnet_tiny | 50.00 ± 0.00 [3] |' in by_model and 'on val' in by_model


def test_unreadable_results_are_reported(tmp_path):
  bad = tmp_path / 'run' / 'results.json'
  bad.parent.mkdir()
  bad.write_text('{not json')
  out = make_tables.make(str(tmp_path), layout='rows=model,cols=optimizer')
  assert f'- {bad}: unreadable' in out


def test_generic_duplicates_count_once_but_other_configs_of_a_seed_count(tmp_path):
  root = tmp_path / 'generic'
  shutil.copytree(GENERIC, root)
  shutil.copytree(root / 'sam' / 'noise0' / 'seed0', root / 'sam' / 'noise0' / 'zcopy')  # same run twice
  second = root / 'sam' / 'noise0.2' / 'seed1' / 'results.json'
  results = json.loads(second.read_text())
  results['config']['seed'] = 0  # seed 0 again, but lr 0.1 instead of 0.05: another experiment
  second.write_text(json.dumps(results))
  out = make_tables.make(str(root), layout='rows=data.label_noise,cols=optimizer')
  assert '| 0.0 | 88.00 ± 1.00 [3] | 91.00 ± 1.41 [2] | 93.00 [1] |' in out
  assert '| 0.2 | 75.00 [1] | 82.00 ± 2.83 [2]‡ | — |' in out
  assert f'- 0.0 × sam: {root}/sam/noise0/zcopy/results.json repeats a seed already counted; ignored' in out


def test_generic_tables_ignore_every_bookkeeping_field():
  """A field that may change on resume (config_check.BOOKKEEPING) never splits runs into experiments."""
  from rsam.training import config_check
  assert [f for f in config_check.BOOKKEEPING if not f.startswith(make_tables.IGNORED)] == []


def _results(path, config, accuracy):
  """A results.json of ``config`` (a ConfigDict, as train.py writes it) with test accuracy ``accuracy``."""
  path.mkdir(parents=True)
  (path / 'results.json').write_text(json.dumps({'config': json.loads(config.to_json_best_effort()),
                                                 'eval': {'test': {'accuracy': accuracy}}}))


def test_smoke_runs_fill_their_cells_in_a_table_of_their_own(tmp_path):
  """runlocal runs of five Table 1 cells -- ResNet-18 and ResNet-50 shrink to the same tiny model -- by
  reproduce.py (config.wandb.cell set) and by hand (found by the model they stand in for), beside one real
  run: each lands in its own cell of a separate smoke table, never averaged with the real one."""
  from configs import tables
  cells = {'resnet18-rsam': (0.50, True), 'resnet50-rsam': (0.30, False), 'resnet18-sam': (0.40, False),
           'resnet50-sgd': (0.20, True), 'wrn28_10-lpf_sgd': (0.10, False)}
  for name, (accuracy, by_reproduce) in cells.items():
    config = tables.by_name()[('1', name)].load(runlocal=True)
    if by_reproduce:
      config.wandb.cell = f'1/{name}'
    _results(tmp_path / 'runs_runlocal' / name, config, accuracy)
  real = tables.by_name()[('1', 'resnet18-rsam')].load()
  _results(tmp_path / 'runs' / 'resnet18-rsam', real, 0.9661)
  out = make_tables.make(str(tmp_path), '1')
  real_table, smoke_table = out.split('## Table 1: smoke runs')
  assert '| ResNet-18 | — / 95.4 ± 0.1 | — / 95.6 ± 0.2 | — / 95.4 ± 0.2 | — / 95.1 ± 0.1 | — / 95.9 ± 0.1 | ' \
         '— / 96.4 ± 0.2 | 96.61 [1] / 96.5 ± 0.1 / +0.11 |' in real_table
  assert '- 1 of 21 cells have runs.' in real_table
  assert make_tables.SMOKE_NOTE in smoke_table
  assert '| Model | SGD | SGD+M | RMSProp | AdamW | LPF-SGD | SAM | R-SAM |' in smoke_table
  assert '| ResNet-18 | — | — | — | — | — | 40.00 [1] | 50.00 [1] |' in smoke_table
  assert '| ResNet-50 | 20.00 [1] | — | — | — | — | — | 30.00 [1] |' in smoke_table
  assert '| WRN-28-10 | — | — | — | — | 10.00 [1] | — | — |' in smoke_table
  assert '- 5 of 21 cells have smoke runs.' in smoke_table and '†' not in smoke_table
  assert 'Runs in no paper table' not in make_tables.make(str(tmp_path))  # every run found its cell
