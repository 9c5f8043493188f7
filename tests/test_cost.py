"""The time and chip-hours estimate (rsam/training/cost.py) and the page it writes (docs/cost.md)."""
import math
import os
import re
import subprocess
import sys

import pytest

from rsam.training import cost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_slices_count_chips_as_their_names_do():
  assert cost.parse_slice('v3-8') == ('v3', 4)          # v3, v4 and v5p names count TensorCores
  assert cost.parse_slice('v3-256') == ('v3', 128)
  assert cost.parse_slice('v4-512') == ('v4', 256)
  assert cost.parse_slice('v5p-512') == ('v5p', 256)
  assert cost.parse_slice('v5litepod-256') == ('v5litepod', 256)  # v5e and v6e names count chips
  assert cost.parse_slice('v6e-8') == ('v6e', 8)
  for bad in ('v3-7', 'v7-8', 'v6e', 'tpu-v3-8'):
    with pytest.raises(ValueError):
      cost.parse_slice(bad)


def test_passes_per_step():
  assert [cost.passes_per_step({'name': n}) for n in ('plain', 'lpf_sgd', 'sam', 'asam', 'rsam', 'gsam', 'rgsam')] \
      == [1, 1, 2, 2, 2, 2, 2]
  assert cost.passes_per_step({'name': 'rsam', 'clean_loss': True}) == pytest.approx(2 + 1 / 3)


def test_estimate_arithmetic():
  e = cost.Estimate(forward_flops=2e9, batch=256, steps=1000, passes=2, mfu=0.5)
  assert e.training_flops == 3 * 2e9 * 256 * 1000 * 2
  assert e.chip_hours('v3') == pytest.approx(e.training_flops / (123e12 * 0.5) / 3600)
  assert e.chip_hours('v6e') == pytest.approx(e.chip_hours('v3') * 123 / 918)
  assert e.hours('v3-256') == pytest.approx(e.chip_hours('v3') / 128)
  assert e.cost('v3', 2.0) == pytest.approx(2.0 * e.chip_hours('v3')) and e.cost('v3', None) is None
  # A published wall time gives back the MFU it was computed with.
  assert cost.implied_mfu(e.training_flops, e.hours('v3-8'), 'v3-8') == pytest.approx(0.5)
  with pytest.raises(ValueError):
    cost.estimate(None, mfu=0.0)


def test_formatting():
  assert [cost.format_hours(h) for h in (0.06, 0.5, 3.21, 41.4, 100, 500)] == \
      ['3.6 min', '30 min', '3.2 h', '41 h', '4.2 d', '21 d']
  assert [cost.significant(x) for x in (0.0318, 1234.5, 5.0, 0)] == ['0.032', '1,200', '5', '0']


def test_a_configs_forward_flops_follow_the_vit_closed_form():
  """The config's own model, classes and image size: 2·m·n·k per matmul (patch embedding, per block QKV, out,
  MLP and the two attention products, head), within the elementwise ops XLA also counts."""
  from configs import vit_s16_adamw
  c = vit_s16_adamw.get_config()
  d, mlp, depth, p, side = 128, 256, 2, 8, 64
  with c.unlocked():
    c.model.name = 'vit_tiny'
    c.model.overrides = {'hidden_size': d, 'mlp_dim': mlp, 'depth': depth, 'num_heads': 4, 'patch_size': p}
    c.data.image_size = side
  classes = 1000
  n = (side // p) ** 2
  t = n + 1  # class token
  matmuls = 2 * n * p * p * 3 * d + depth * (2 * t * (4 * d * d + 2 * d * mlp) + 4 * t * t * d) + 2 * d * classes
  got = cost.config_forward_flops(c)
  assert 1.0 <= got / matmuls <= 1.05, (got, matmuls)
  e = cost.estimate(c, mfu=0.25, steps=10)
  assert (e.forward_flops, e.batch, e.steps, e.passes) == (got, c.batch_size, 10, 1)


def _rows(page: str, table: str) -> list:
  section = page.split(f'## {table}\n', 1)[1].split('\n## ', 1)[0]
  return [line for line in section.splitlines() if line.startswith('| `')]


@pytest.mark.slow
def test_the_cost_page_is_what_its_command_writes_now():
  """docs/cost.md's rows of Fig. 3(a) come out of the script again, at the page's own MFU."""
  with open(os.path.join(ROOT, 'docs', 'cost.md')) as f:
    page = f.read()
  command = re.search(r'```\n(\.venv/bin/python scripts/estimate_cost\.py[^\n]*)\n```', page).group(1)
  assert '--mfu' not in command  # the page's MFU is the reference run's: the script derives it
  mfu = float(re.search(r'The MFU, an assumption: (\d+)%', page).group(1)) / 100
  proc = subprocess.run([sys.executable, 'scripts/estimate_cost.py', '--tables', 'fig3a', '--mfu', str(mfu)],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  fresh = {row.split('|')[1]: row.split('|')[1:-1] for row in _rows(proc.stdout, 'fig3a')}
  committed = _rows(page, 'fig3a')  # alone, fig3a also lists its Table 3 run; the page lists it there
  assert len(committed) == 2 and all(row.split('|')[1] in fresh for row in committed)
  # The page's MFU is rounded to a percent here: the columns that do not depend on it agree exactly, the
  # chip-hours to within that rounding.
  for row in committed:
    old_cells = row.split('|')[1:-1]
    new_cells = fresh[old_cells[0]]
    assert new_cells[:6] == old_cells[:6], (new_cells, old_cells)
    for x, y in zip(new_cells[6:9], old_cells[6:9]):
      assert math.isclose(float(x.replace(',', '')), float(y.replace(',', '')), rel_tol=0.1), (x, y)
