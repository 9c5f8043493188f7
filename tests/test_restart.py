"""Restart cost (issue #15, point 8): the persistent compilation cache is on by default, a resume restores
into abstract shapes (no initial state computed), the first checkpoint save compiles nothing, and the
restart benchmark's measuring module (rsam/training/restart_bench.py)."""
import logging
import os

import jax
import numpy as np
import pytest


@pytest.fixture
def no_cache_config(monkeypatch):
  """JAX's cache folder unset for the test (and put back after it): what a fresh process starts with."""
  from jax.experimental.compilation_cache import compilation_cache
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  jax.config.update('jax_compilation_cache_dir', None)
  yield
  jax.config.update('jax_compilation_cache_dir', before)
  compilation_cache.reset_cache()


def test_compilation_cache_is_on_by_default_in_the_documented_folder(no_cache_config, monkeypatch, tmp_path):
  from rsam.training import compilation_cache, paths
  from configs import common
  assert common.get_base_config().compilation_cache_dir == ''
  monkeypatch.setenv('RSAM_CACHE_DIR', str(tmp_path / 'rsam_cache'))
  folder = compilation_cache.enable(common.get_base_config().compilation_cache_dir)
  assert folder == os.path.join(paths.cache_dir(), 'jax_compilation_cache') == str(tmp_path / 'rsam_cache' /
                                                                                  'jax_compilation_cache')
  assert jax.config.jax_compilation_cache_dir == folder and os.path.isdir(folder)


def test_compilation_cache_folder_is_configurable_and_can_be_turned_off(no_cache_config, monkeypatch,
                                                                       tmp_path):
  from rsam.training import compilation_cache
  assert compilation_cache.enable(str(tmp_path / 'mine')) == str(tmp_path / 'mine')
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'mine')
  assert compilation_cache.enable('off') == '' and not jax.config.jax_compilation_cache_dir
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'env'))
  assert compilation_cache.enable('') == str(tmp_path / 'env')


def test_first_checkpoint_save_compiles_nothing(tmp_path, caplog):
  """A replicated state (8 devices) with shapes nothing has saved before in this process: orbax's
  replica-parallel saving compiled a slice program per shape on the main thread at the first save."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from rsam.training import checkpointing, train_step
  replicated = NamedSharding(train_step.make_mesh(), P())
  state = {f'w{i}': jax.device_put(np.ones((8 * (i + 3), 24 + i), np.float32), replicated) for i in range(6)}
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, max_to_keep=None)
  try:
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
      assert ckpt.save(1, state)
      ckpt.wait()
  finally:
    ckpt.close()
  compiles = [r.getMessage() for r in caplog.records if 'Compiling' in r.getMessage()]
  assert not compiles, compiles[:5]
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, max_to_keep=None, asynchronous=False)
  try:
    step, restored = ckpt.restore(None, checkpointing.abstract_state(jax.eval_shape(lambda: state), replicated))
  finally:
    ckpt.close()
  assert step == 1 and all(np.array_equal(restored[k], state[k]) for k in state)


# Stands in for train.py in the orchestration test: a first start prints its first step and, on SIGTERM,
# "writes a checkpoint" of it and exits 143; a second start resumes from it.
_FAKE_TRAIN = '''
import os, signal, sys, time
workdir = sys.argv[sys.argv.index('--workdir') + 1]
marker = os.path.join(workdir, 'ckpt')
os.makedirs(workdir, exist_ok=True)
def stop(*_):
  with open(marker, 'w') as f:
    f.write(str(start + 1))
  sys.exit(143)
signal.signal(signal.SIGTERM, stop)
start = int(open(marker).read()) if os.path.exists(marker) else 0
cache = os.path.join(os.environ['RSAM_CACHE_DIR'], 'jax_compilation_cache')
os.makedirs(cache, exist_ok=True)
open(os.path.join(cache, 'entry'), 'w').close()
if start:
  print(f'resumed from step {start} in {workdir}', flush=True)
time.sleep(0.5 if start else 1.5)  # a cold start compiles
print(f'step {start + 1}/4 | loss 1.0', flush=True)
time.sleep(60)
'''


def test_restart_measurement_times_a_cold_start_and_its_resume(tmp_path):
  from rsam.training import restart_bench
  script = tmp_path / 'fake_train.py'
  script.write_text(_FAKE_TRAIN)
  result = restart_bench.measure(['--config', 'x'], str(tmp_path / 'base'), script=str(script), timeout=60)
  assert result['cold']['rc'] == 143 and result['cold']['step'] == 1 and result['cold']['resumed_from'] == 0
  assert result['resume']['resumed_from'] == 1 and result['resume']['step'] == 2
  assert 1.5 <= result['cold']['seconds'] and 0.5 <= result['resume']['seconds'] < result['cold']['seconds']
  assert result['ratio'] == result['resume']['seconds'] / result['cold']['seconds']
  assert result['cache_entries_after_cold_start'] == 1
  report = {'command': 'python scripts/benchmark.py --restart', 'date': 'd', 'git': 'g', 'hardware': 'h',
            'load': [1, 1, 1], 'restart': result, 'hashing': restart_bench.hash_throughput(1 << 20),
            'vit_b16': {'config': 'c', 'bytes': 10**9}}
  assert report['hashing']['bytes_per_s'] > 0
  text = restart_bench.markdown(report)
  assert f"resume / cold = {result['ratio']:.2f}" in text and 'per save and per restore' in text


def test_every_save_holds_a_checksum_manifest_and_one_without_restores_unverified(tmp_path, capsys):
  """Async and synchronous saves both write rsam_checksums.json (the sha256 of each file of the state); a
  folder of checkpoints without one (an older version's) restores, with a warning line."""
  import json
  from rsam.training import checkpointing
  state = {'a': jax.device_put(np.arange(64, dtype=np.float32)), 'b': jax.device_put(np.ones((3, 5)))}
  for asynchronous in (True, False):
    ckpt = checkpointing.Checkpointer(str(tmp_path / str(asynchronous)), every_steps=1, max_to_keep=None,
                                      asynchronous=asynchronous)
    try:
      assert ckpt.save(1, state) and ckpt.save(2, state)
      ckpt.wait()
    finally:
      ckpt.close()
    for step in (1, 2):
      folder = tmp_path / str(asynchronous) / 'checkpoints' / str(step)
      manifest = json.loads((folder / checkpointing.MANIFEST).read_text())
      files = sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file()
                     and p.parts[len(folder.parts)] == checkpointing.ITEM)
      assert sorted(manifest['files']) == files and len(files) > 3
  for step in (1, 2):  # none has one (one alone without it, beside others, is damage: tests/test_faults.py)
    os.remove(tmp_path / 'True' / 'checkpoints' / str(step) / checkpointing.MANIFEST)
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'True'), every_steps=1, max_to_keep=None)
  try:
    step, restored = ckpt.restore_latest(checkpointing.abstract_state(jax.eval_shape(lambda: state)))
  finally:
    ckpt.close()
  assert step == 2 and np.array_equal(restored['a'], state['a'])
  out = capsys.readouterr().out
  assert 'checkpoint 2' in out and f'no {checkpointing.MANIFEST}' in out and 'unverified' in out, out
