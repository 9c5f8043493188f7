"""scripts/sensitivity.py (Fig. 3(b, c) at small scale) on hand-made runs."""
import json
import math

import pytest

from scripts import sensitivity as S

ROWS = [{'arg': a, 'val': v, 'test': v} for a, v in (
    ('updater=rsam,rho=0.1,lam=2,gamma=0.002,seed=0', 0.80), ('updater=rsam,rho=0.1,lam=2,gamma=0.002,seed=1', 0.90),
    ('updater=rsam,rho=0.2,lam=2,gamma=0.002,seed=0', 0.95),
    ('updater=rsam,rho=0.2,lam=2,gamma=0.006,seed=0', 0.10),   # another γ: not on the ρ axis
    ('updater=rsam,rho=0.1,lam=8,gamma=0.002,seed=0', 0.70),
    ('updater=sam,rho=0.1,seed=0', 0.85), ('updater=sam,rho=0.1,seed=1', 0.87), ('updater=sam,rho=0.2,seed=0', 0.84))]


def test_sweep_and_best():
  b = S.sweep(ROWS, 'rsam', 'rho', {'lam': 2, 'gamma': 0.002}, 'val')
  assert [(p['rho'], p['n']) for p in b] == [(0.1, 2), (0.2, 1)]
  assert b[0]['mean'] == pytest.approx(85.0) and b[0]['sem'] == pytest.approx(5.0)  # std 7.07 / √2
  c = S.sweep(ROWS, 'rsam', 'lam', {'rho': 0.1, 'gamma': 0.002}, 'val')
  assert [(p['lam'], round(p['mean'], 6)) for p in c] == [(2.0, 85.0), (8.0, 70.0)]
  best = S.best_config(ROWS, 'sam', 'val')
  assert best['config'] == 'updater=sam,rho=0.1' and best['mean'] == pytest.approx(86.0)
  assert best['sem'] == pytest.approx(math.sqrt(2) / math.sqrt(2))


def test_sweep_defaults_and_other_axes():
  rows = [{'arg': a, 'val': v} for a, v in (
      ('updater=rsam,rho_max=0.1,seed=0', 0.5), ('updater=rsam,rho_max=0.3,seed=0', 0.6),
      ('updater=rsam,rho_max=0.3,lam=8,seed=0', 0.9), ('updater=rsam,rho_max=0.3,lam=8,gamma=1,seed=0', 0.1))]
  b = S.sweep(rows, 'rsam', 'rho_max', {'lam': 2}, 'val', defaults={'lam': 2})
  assert [(p['rho_max'], p['mean']) for p in b] == [(0.1, pytest.approx(50.0)), (0.3, pytest.approx(60.0))]
  c = S.sweep(rows, 'rsam', 'lam', {'rho_max': 0.3}, 'val', defaults={'lam': 2})
  assert [(p['lam'], p['mean']) for p in c] == [(2.0, pytest.approx(60.0)), (8.0, pytest.approx(90.0))]


def test_main_writes_json_and_png(tmp_path):
  runs = tmp_path / 'runs.jsonl'
  runs.write_text(''.join(json.dumps(r) + '\n' for r in ROWS))
  S.main(['--runs', str(runs), '--out', str(tmp_path / 'out')])
  info = json.loads((tmp_path / 'out' / 'sensitivity.json').read_text())
  assert len(info['rho_sweep']) == 2 and info['sam_best']['n'] == 2
  assert (tmp_path / 'out' / 'fig3bc.png').stat().st_size > 0
