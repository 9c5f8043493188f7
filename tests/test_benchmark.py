"""The benchmark suite (scripts/benchmark.py) end to end at its smoke size: the report is complete and sane;
its statistics, FLOP counts and device lookups against closed forms; the GPU preset where TensorFlow is absent.

No assertion is made on any timing: only that every expected key and ratio is there, finite and positive.
"""
import json
import math
import os
import re
import subprocess
import sys

import pytest

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
    assert s['min'] <= s['ci_low'] <= s['median'] <= s['ci_high'] <= s['max'] and s['target'] == target
    assert s['status'] in (('met', 'missed', 'within noise') if target is not None else (None,))
  assert result['memory_ratios']['R-SAM/SAM']['target'] == 1.10
  # The ablation really is R-SAM without the fusion boundary: same updater, no conditional in its HLO.
  assert result['variants']['rsam']['hlo_conditionals'] >= 1
  assert result['variants']['rsam_fused_noise']['hlo_conditionals'] == 0
  same = lambda r: re.sub(r' at 0x[0-9a-f]+', '', r)  # the schedules' reprs carry their addresses
  assert same(result['variants']['rsam']['updater']) == same(result['variants']['rsam_fused_noise']['updater'])
  # Model FLOPs: the two-pass variants count twice the passes of SGD.
  v = result['variants']
  assert v['sam']['model_tflops_per_s_per_device'] * v['sam']['step_s']['median'] == pytest.approx(
      2 * v['sgd']['model_tflops_per_s_per_device'] * v['sgd']['step_s']['median'])
  # Same update from the same state: optax's SAM is a correct reference for the timing comparison.
  assert result['sam_vs_optax_first_step_max_abs_param_diff'] < 1e-4
  for kind in ('cifar', 'imagenet'):
    p = on_disk['pipelines'][kind]
    assert p['all_cores']['finite']
    c = on_disk['pipeline_vs_step'][kind]
    assert c['target'] == benchmark.PIPELINE_TARGET and c['status'] in ('met', 'missed')
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


def test_median_interval_is_the_order_statistic_interval():
  xs = [9, 1, 8, 2, 7, 3, 6, 4, 5]  # n = 9: the 2nd and 8th values, coverage 1 - 2·10/512
  assert benchmark.median_interval(xs) == (2.0, 8.0, pytest.approx(1 - 20 / 512))
  low, high, coverage = benchmark.median_interval(list(range(20)))  # n = 20: k = 6 (P(B<6) = 0.0207)
  assert (low, high) == (5.0, 14.0) and coverage == pytest.approx(1 - 2 * 21700 / 2 ** 20)
  assert benchmark.median_interval([3.0, 1.0]) == (1.0, 3.0, 0.5)  # too few rounds: the range, said so
  assert benchmark.ratio_status(0.97, 1.02, 1.03) == 'met'
  assert benchmark.ratio_status(1.031, 1.05, 1.03) == 'missed'
  assert benchmark.ratio_status(0.99, 1.01, 1.00) == 'within noise'
  assert benchmark.ratio_status(0.5, 2.0, None) is None


def test_forward_flops_match_the_vit_closed_form():
  """2·m·n·k per matmul: patch embedding, per block QKV/out/MLP and the two attention products, head."""
  import jax
  import jax.numpy as jnp
  import models
  d, mlp, depth, p, side, classes = 128, 256, 2, 8, 64, 10
  model = models.get_model('vit_tiny', num_classes=classes, hidden_size=d, mlp_dim=mlp, depth=depth,
                           num_heads=4, patch_size=p)
  variables = model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)), train=False)
  params = variables.pop('params')
  got = benchmark.forward_flops_per_example(model, {'params': params, 'model_state': dict(variables)},
                                            (side, side, 3))
  n = (side // p) ** 2
  t = n + 1  # class token
  matmuls = 2 * n * p * p * 3 * d + depth * (2 * t * (4 * d * d + 2 * d * mlp) + 4 * t * t * d) + 2 * d * classes
  assert 1.0 <= got / matmuls <= 1.05  # XLA also counts the elementwise ops (LayerNorm, GELU, ...)


def test_peak_lookup_by_device_kind():
  assert benchmark.peak_tflops('NVIDIA H200', 'bfloat16')[0] == 989.0
  assert benchmark.peak_tflops('NVIDIA H100 PCIe', 'bfloat16')[0] == 756.0
  assert benchmark.peak_tflops('TPU v5 lite', 'bfloat16')[0] == 197.0
  assert benchmark.peak_tflops('NVIDIA H200', 'float32')[0] is None
  assert benchmark.peak_tflops('cpu', 'bfloat16')[0] is None
  assert benchmark.peak_tflops('cpu', 'float32', override=2.5) == (2.5, '--peak_tflops')


# Makes `import tensorflow` (and the packages that need it) fail, as on a device host without them. A None
# entry in sys.modules is Python's own way to make an import fail: the import system raises its
# ModuleNotFoundError (no exception or message made up here).
_NO_TF = """
import sys
for name in ('tensorflow', 'tensorflow_datasets', 'clu', 'wandb'):
  sys.modules[name] = None
sys.argv[1:] = ARGV
from scripts import benchmark
report = benchmark.main()
assert sys.modules['tensorflow'] is None  # still blocked: nothing replaced the entry
print('problems', benchmark.check_report(report))
"""


def test_gpu_preset_runs_without_tensorflow(tmp_path):
  """The GPU preset's code path (bf16 ViT, MFU, no pipelines) at a tiny size, where TensorFlow, tfds, clu
  and wandb cannot be imported: the step suite needs JAX, flax, optax and ml_collections only."""
  argv = ['--preset', 'gpu', '--models', 'vit_tiny:batch=16,image=32,data=imagenet2012,dtype=bfloat16',
          '--m', '4', '--repeats', '2', '--steps', '1', '--warmup', '1', '--fast_compile',
          '--peak_tflops', '1.0', '--out', str(tmp_path)]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  proc = subprocess.run([sys.executable, '-c', _NO_TF.replace('ARGV', repr(argv))], capture_output=True, text=True,
                        env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'problems []' in proc.stdout
  report = json.loads((tmp_path / 'benchmark.json').read_text())
  assert 'pipelines' not in report and 'partial' not in report
  (result,) = report['step_times']
  assert set(result['variants']) == set(benchmark.PRESETS['gpu']['variants'])
  assert result['devices'] == 2 and result['variants']['sam_grouped']['groups_per_device'] == 2
  for name, x in result['variants'].items():
    assert 0 < x['mfu'] == pytest.approx(x['model_tflops_per_s_per_device'] / 1.0), name
  assert result['model']['dtype'] == 'bfloat16'
  md = (tmp_path / 'benchmark.md').read_text()
  assert 'compute bfloat16' in md and '## Input pipelines' not in md
