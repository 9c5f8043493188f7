"""The benchmark suite (scripts/benchmark.py) end to end at its smoke size: the report is complete and sane.

No assertion is made on any timing: only that every expected key and ratio is there, finite and positive.
"""
import json
import math

from scripts import benchmark


def test_smoke_benchmark_writes_a_well_formed_report(tmp_path):
  report = benchmark.main(['--preset', 'smoke', '--out', str(tmp_path)])

  assert benchmark.check_report(report) == []
  on_disk = json.loads((tmp_path / 'benchmark.json').read_text())
  assert benchmark.check_report(on_disk) == []
  for key in ('command', 'date', 'git', 'hardware', 'versions', 'settings', 'machine_load', 'method',
              'step_times', 'pipelines', 'pipeline_vs_step'):
    assert key in on_disk, key
  assert on_disk['command'].startswith('python scripts/benchmark.py --preset smoke')
  assert on_disk['hardware']['num_devices'] >= 1 and on_disk['versions']['jax']
  load = on_disk['machine_load']
  assert len(load['load_average_before']) == 3 and load['load_average_1min_during']['n'] >= 1

  (result,) = on_disk['step_times']
  assert set(result['variants']) == set(benchmark.VARIANTS)
  for name, x in result['variants'].items():
    assert x['memory']['peak_estimate_bytes'] > 0, name
    assert all(t > 0 and math.isfinite(t) for t in x['step_s']['values']), name
  for name, _, _, target in benchmark.TIME_RATIOS:
    s = result['time_ratios'][name]
    assert s['min'] <= s['median'] <= s['max'] and s['target'] == target
    assert isinstance(s['met'], bool) or target is None
  assert result['memory_ratios']['R-SAM/SAM']['target'] == 1.10
  # Same update from the same state: optax's SAM is a correct reference for the timing comparison.
  assert result['sam_vs_optax_first_step_max_abs_param_diff'] < 1e-4
  for kind in ('cifar', 'imagenet'):
    p = on_disk['pipelines'][kind]
    assert p['all_cores']['finite']
    c = on_disk['pipeline_vs_step'][kind]
    assert c['target'] == benchmark.PIPELINE_TARGET and isinstance(c['met'], bool)
  assert on_disk['pipelines']['imagenet']['all_cores']['image_shape'] == [32, 32, 3]

  md = (tmp_path / 'benchmark.md').read_text()
  assert '## Targets' in md and '## Input pipelines' in md
  for name, _, _, _ in benchmark.TIME_RATIOS:
    assert f'step time {name}' in md
  assert 'peak memory R-SAM/SAM' in md and 'pipeline /' in md

  # --render redoes the derived numbers and the markdown from the JSON alone.
  (tmp_path / 'benchmark.md').unlink()
  rendered = benchmark.main(['--render', str(tmp_path / 'benchmark.json')])
  assert benchmark.check_report(rendered) == []
  assert rendered['step_times'][0]['time_ratios'] == on_disk['step_times'][0]['time_ratios']
  assert (tmp_path / 'benchmark.md').read_text() == md


def test_report_checker_flags_missing_and_bad_values():
  assert benchmark.check_report({}) != []
  bad = {'step_times': [{'model': {'spec': 'x'}, 'time_ratios': {'SAM/SGD': {'median': float('nan')}},
                         'memory_ratios': {}, 'variants': {}}]}
  problems = benchmark.check_report(bad)
  assert any('SAM/SGD' in p and 'finite' in p for p in problems)
  assert any('missing variant sgd' in p for p in problems)
  assert any('missing pipeline cifar' in p for p in problems)
