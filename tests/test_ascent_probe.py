"""rsam/training/ascent_probe.py: the ascent-composition summary and readers, on closed forms."""
import math

import numpy as np
import pytest

from rsam.training import ascent_probe as AP


def test_summarize_composition_closed_form():
  records = [{'noise_norm': 3.0, 'lam_grad_norm': 4.0, 'noise_grad_ratio': 0.75, 'ascent_grad_cos': 0.8},
             {'noise_norm': 1.0, 'lam_grad_norm': 1.0, 'noise_grad_ratio': 1.0, 'ascent_grad_cos': 0.6},
             {'loss': 1.0}]  # a record without the keys (SAM, plain) is left out
  s = AP.summarize_composition(records)
  assert s['noise_norm'] == {'n': 2, 'mean': 2.0, 'sem': 1.0, 'min': 1.0, 'max': 3.0}
  assert s['grad_share']['mean'] == pytest.approx((0.64 + 0.36) / 2)
  assert s['ascent_grad_cos']['sem'] == pytest.approx(0.1)  # std (ddof 1) 0.1414 / √2
  assert 'grad_norm' not in s
  assert AP.summarize_composition(records[:1])['noise_norm']['sem'] == 0.0


def test_read_scalars_reads_what_the_loop_writes(tmp_path):
  from clu import metric_writers
  writer = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)
  for step in (10, 20, 30):
    writer.write_scalars(step, {'train/noise_grad_ratio': step / 10, 'train/loss': 1.0 / step,
                                'eval/test/accuracy': 0.5})
  writer.flush()
  writer.close()
  rows = AP.read_scalars(str(tmp_path))
  assert [r['step'] for r in rows] == [10, 20, 30]
  assert [r['noise_grad_ratio'] for r in rows] == pytest.approx([1.0, 2.0, 3.0])
  assert rows[1]['loss'] == pytest.approx(0.05)
  assert all('accuracy' not in r and 'test/accuracy' not in r for r in rows)


def test_tfrecords_drops_a_torn_last_record():
  import struct
  rec = lambda payload: struct.pack('<Q', len(payload)) + b'\0' * 4 + payload + b'\0' * 4  # noqa: E731
  data = rec(b'abc') + rec(b'') + rec(b'defgh')
  assert list(AP.tfrecords(data)) == [b'abc', b'', b'defgh']
  assert list(AP.tfrecords(data[:-3])) == [b'abc', b'']


def test_synthetic_batch_shapes_and_ranges():
  import jax
  b = AP.synthetic_batch(jax.random.key(0), 6, (8, 8, 1), 10)
  assert b['image'].shape == (6, 8, 8, 1) and b['label'].shape == (6,)
  assert float(b['image'].min()) >= -1.0 and float(b['image'].max()) <= 1.0
  assert 0 <= int(b['label'].min()) and int(b['label'].max()) < 10


def test_probe_steps_logs_the_composition_of_each_step():
  """R-SAM (λ = 2) on least squares with D = 20,100 weights, three steps of SGD: the logged composition
  satisfies its identities, and for noise drawn independently of ĝ, ⟨δ0, ĝ⟩ = O(‖δ0‖‖ĝ‖/√D), so
  cos(δ0 + λĝ, ĝ) = 1/√(1 + (‖δ0‖/‖λĝ‖)²) up to O(1/√D). (The real train step at ViT-B/16 size runs in
  scripts/ascent_composition.py; compiling even a tiny model's step costs ~30 s here, too much for CI.)"""
  import jax
  import jax.numpy as jnp
  import rsam
  rng = np.random.default_rng(0)
  x, y = jnp.asarray(rng.normal(size=(64, 200)), jnp.float32), jnp.asarray(rng.normal(size=(64, 100)), jnp.float32)
  params = {'dense': {'kernel': jnp.asarray(rng.normal(size=(200, 100)) * 0.1, jnp.float32),
                      'bias': jnp.zeros(100, jnp.float32)}}

  def loss_fn(p, state, batch, key):
    del key
    pred = batch['x'] @ p['dense']['kernel'] + p['dense']['bias']
    return jnp.mean(jnp.sum((pred - batch['y']) ** 2, -1)), (state, {})

  updater = rsam.SharpnessAware(rho=0.1, gamma=0.7, lam=2.0)  # ‖δ0‖ ≈ ‖λĝ‖ here

  @jax.jit
  def step_fn(state, batch):
    r = updater(loss_fn, state['params'], {}, batch, jax.random.fold_in(jax.random.key(0), state['step']),
                state['step'])
    new = jax.tree.map(lambda w, g: w - 1e-3 * g, state['params'], r.grads)
    return {'params': new, 'step': state['step'] + 1}, {'loss': r.loss, **r.aux}

  recs = AP.probe_steps(step_fn, {'params': params, 'step': jnp.int32(0)}, 3, lambda i: {'x': x, 'y': y})
  assert [r['step'] for r in recs] == [0, 1, 2]
  for r in recs:
    assert r['lam_grad_norm'] == pytest.approx(2.0 * r['grad_norm'], rel=1e-5)
    assert r['noise_grad_ratio'] == pytest.approx(r['noise_norm'] / r['lam_grad_norm'], rel=1e-5)
    assert 0.1 < r['noise_grad_ratio'] < 10
    assert r['ascent_grad_cos'] == pytest.approx(1 / math.sqrt(1 + r['noise_grad_ratio'] ** 2), abs=0.02)
  assert recs[0]['loss'] > recs[2]['loss']  # the state does advance
  s = AP.summarize_composition(recs)
  assert s['grad_share']['mean'] == pytest.approx(np.mean([r['ascent_grad_cos'] ** 2 for r in recs]))


def test_over_seeds_mean_and_sem_per_step():
  logs = [[{'step': 10, 'noise_grad_ratio': r, 'ascent_grad_cos': c}, {'step': 20, 'noise_grad_ratio': 2 * r,
                                                                        'ascent_grad_cos': c}]
          for r, c in ((1.0, 0.6), (2.0, 0.8), (3.0, 1.0))]
  logs[0].append({'step': 30, 'noise_grad_ratio': 9.0, 'ascent_grad_cos': 0.1})  # one seed only: dropped
  out = AP.over_seeds(logs)
  assert out['steps'] == [10, 20] and out['n_seeds'] == 3
  np.testing.assert_allclose(out['noise_grad_ratio']['mean'], [2.0, 4.0])
  np.testing.assert_allclose(out['noise_grad_ratio']['sem'], [1 / math.sqrt(3), 2 / math.sqrt(3)])
  np.testing.assert_allclose(out['grad_share']['mean'], [(0.36 + 0.64 + 1.0) / 3] * 2)
  assert 'noise_norm' not in out


def test_ascent_composition_seeds_command(tmp_path):
  import json
  from scripts import ascent_composition
  folders = []
  for seed, r in ((100, 0.5), (101, 1.5)):
    log = [{'step': s, 'noise_norm': r, 'lam_grad_norm': 1.0, 'noise_grad_ratio': r, 'grad_norm': 0.5,
            'ascent_grad_cos': 1 / math.sqrt(1 + r * r), 'loss': 1.0 / s} for s in (10, 20)]
    folder = tmp_path / f'rsam_seed{seed}'
    folder.mkdir()
    (folder / 'results.json').write_text(json.dumps({'config': {'seed': seed, 'log_every_steps': 10,
                                                                 'updater': {'name': 'rsam'},
                                                                 'model': {'name': 'vit_tiny'},
                                                                 'data': {'name': 'digits'}},
                                                     'eval': {'test': {'accuracy': 0.9}}, 'train_log': log}))
    folders.append(str(folder))
  ascent_composition.main(['seeds', '--results', *folders, '--out', str(tmp_path / 'out')])
  info = json.loads((tmp_path / 'out' / 'summary.json').read_text())
  assert info['seeds'] == [100, 101] and info['over_seeds']['steps'] == [10, 20]
  assert info['over_seeds']['noise_grad_ratio']['mean'] == pytest.approx([1.0, 1.0])
  assert info['summary']['noise_grad_ratio']['n'] == 4
  assert (tmp_path / 'out' / 'composition.png').stat().st_size > 0
  assert '| ‖δ0‖/‖λĝ‖ | 1 ± 0.29 |' in ascent_composition.report([str(tmp_path / 'out')])
  rows = ascent_composition.report([str(tmp_path / 'out')], steps=[20, 30])  # 30 was not logged: no row
  assert '| 20 | 1 ± 0.5 | 1 ± 0 | 1 ± 0.5 |' in rows and '| 30 |' not in rows
