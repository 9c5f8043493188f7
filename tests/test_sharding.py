"""Sharded training state (rsam/training/sharding.py) on the 8 fake CPU devices of tests/conftest.py.

One step of every updater (m-sharpness and gradient accumulation included) with the state split 8 ways
along 'fsdp' gives the state of the same step replicated (a small MLP + AdamW, cheap to compile; and the
full training step of the tiny ViT with R-SAM and m-sharpness groups); δ0 and the global norms do not
depend on the layout; a device holds about 1/8 of the state; checkpoints move between meshes. Every leaf
that can be split is (``shard_min_bytes=0``).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import tiny
from rsam import tree as T
from rsam.noise import kernelwise_noise
from rsam.training import checkpointing, factory, sharding, train_step

# Every updater on a small MLP with AdamW: name -> (updater, updater field overrides, grad_accum_steps).
CASES = {
    'plain': ('plain', {}, 1), 'sam': ('sam', {}, 1), 'asam': ('asam', {}, 1), 'rsam': ('rsam', {}, 1),
    'gsam': ('gsam', {}, 1), 'rgsam': ('rgsam', {}, 1), 'lpf_sgd': ('lpf_sgd', {'num_samples': 2}, 1),
    'rsam_m4': ('rsam', {'m': 4}, 1), 'rsam_accum2': ('rsam', {}, 2),
}
FSDP8, DATA4_FSDP2, REPLICATED = (1, 8), (4, 2), (8, 1)  # (data, fsdp)


def _mesh(sizes):
  return sharding.make_mesh({'mesh': dict(zip(sharding.AXES, sizes))})


def _mlp_loss(params, model_state, batch, rng):
  hidden = jnp.tanh(batch['x'] @ params['dense1']['kernel'] + params['dense1']['bias'])
  hidden = hidden * jax.random.bernoulli(rng, 0.9, hidden.shape) / 0.9  # dropout: the step's key matters
  out = hidden @ params['dense2']['kernel'] + params['dense2']['bias']
  loss = jnp.mean(jnp.square(out - batch['y']))
  return loss, (model_state, {'mse': loss})


FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def _run(fn, in_shardings, out_shardings, *args):
  """``jax.jit(fn)(*args)`` compiled at XLA's lowest optimisation level: these programs run once, and
  compiling them is most of the test's time."""
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings).lower(*args).compile(
      compiler_options=FAST_COMPILE)(*args)


def _mlp_steps(sizes):
  """({name: state shardings}, state before, {name: (state after, metrics)}): one step of every updater
  of CASES + AdamW from the same state, as ONE program (one compilation per layout, not one per updater)."""
  mesh = _mesh(sizes)
  tx = optax.adamw(0.01, weight_decay=0.1)
  updaters = {}
  for name, (updater_name, fields, accum) in CASES.items():
    cfg = factory.updater_config(updater_name, **fields)
    if 'rho_schedule' in cfg:
      cfg.rho_schedule = 'constant'
    updaters[name] = factory.make_updater(cfg, total_steps=10, mesh=mesh, accum_steps=accum, per_device_batch=4)
  rng = np.random.default_rng(0)
  params = {'dense1': {'kernel': rng.normal(size=(16, 64)) / 4, 'bias': rng.normal(size=(64,)) / 10},
            'dense2': {'kernel': rng.normal(size=(64, 8)) / 8, 'bias': np.zeros(8)}}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  state_sharding = sharding.state_shardings(mesh, jax.eval_shape(lambda: state), min_bytes=0)
  batch = {'x': rng.normal(size=(32, 16)).astype(np.float32), 'y': rng.normal(size=(32, 8)).astype(np.float32)}

  def steps(state, batch):
    out = {}
    for name, updater in updaters.items():
      result = updater(_mlp_loss, state['params'], {}, batch, jax.random.key(7), state['step'])
      updates, opt_state = tx.update(result.grads, state['opt_state'], state['params'])
      out[name] = ({'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
                    'opt_state': opt_state}, {'loss': result.loss, **result.aux})
    return out

  state = jax.device_put(state, state_sharding)
  out_shardings = {name: (state_sharding, sharding.replicated(mesh)) for name in updaters}
  return state_sharding, state, _run(steps, (state_sharding, sharding.batch_sharding(mesh)), out_shardings,
                                     state, jax.device_put(batch, sharding.batch_sharding(mesh)))


@pytest.fixture(scope='module')
def mlp_steps():
  return {sizes: _mlp_steps(sizes) for sizes in (REPLICATED, FSDP8)}


def _assert_close(a, b, what):
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=2e-5, atol=2e-6,
                               err_msg=f'{what}{jax.tree_util.keystr(path)}')


@pytest.mark.parametrize('name', list(CASES))
def test_a_sharded_step_of_every_updater_equals_the_replicated_step(mlp_steps, name):
  """Global norms, inner products, δ0 and m-sharpness groups under GSPMD: same new state and metrics."""
  shardings, state, out = mlp_steps[FSDP8]
  rep_shardings, _, rep_out = mlp_steps[REPLICATED]
  (new, metrics), (rep_new, rep_metrics) = out[name], rep_out[name]
  assert shardings['params']['dense1']['kernel'].spec == P(None, 'fsdp')  # the state really is split
  assert shardings['opt_state'][0].mu['dense2']['kernel'].spec == P('fsdp')
  assert all(s.spec == P() for s in jax.tree.leaves(rep_shardings))
  assert jax.tree.map(lambda x: x.sharding.spec, new) == jax.tree.map(lambda s: s.spec, shardings)
  _assert_close(new, rep_new, 'state ')
  _assert_close(metrics, rep_metrics, 'metric ')
  assert not np.allclose(new['params']['dense1']['kernel'], state['params']['dense1']['kernel'])


# The training step itself (model, targets, AdamW chain, finite guard, checkpoints) on the tiny ViT, with
# R-SAM and m-sharpness groups: the costliest path of the issue, compiled once per layout.
def _config(mesh=REPLICATED):
  c = tiny.get_config('rsam')
  c.model.name = 'vit_tiny'
  c.optimizer.name = 'adamw'
  c.optimizer.lr = 0.01
  c.updater.m = 4
  c.shard_min_bytes = 0
  c.mesh.data, c.mesh.fsdp = mesh
  return c


def _one_step(config, state=None):
  """(run, initial state, state after one step, metrics) on the mesh of ``config``; ``state``: an initial
  state to lay out on it (spares compiling the initialisation again)."""
  mesh = sharding.make_mesh(config)
  run = train_step.build(config, mesh)
  state = run.init_state() if state is None else jax.device_put(state, run.state_sharding)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(32, 8, 8, 1)).astype(np.float32),
           'label': rng.integers(0, 10, size=(32,)).astype(np.int32)}
  new_state, metrics = _run(train_step.make_train_step(config, run.model, run.updater, run.tx, run.num_classes),
                            (run.state_sharding, run.batch_sharding),
                            (run.state_sharding, sharding.replicated(mesh)),
                            state, jax.device_put(batch, run.batch_sharding))
  return run, state, new_state, metrics


@pytest.fixture(scope='module')
def steps(compile_cache):
  del compile_cache
  replicated = _one_step(_config(REPLICATED))
  return {REPLICATED: replicated, FSDP8: _one_step(_config(FSDP8), state=replicated[1])}


def test_a_sharded_train_step_equals_the_replicated_one(steps):
  rep_run, rep_state, rep_new, rep_metrics = steps[REPLICATED]
  run, state, new, metrics = steps[FSDP8]
  specs = jax.tree.map(lambda s: s.spec, run.state_sharding)
  assert specs['params']['encoderblock_0']['mlp']['fc1']['kernel'] != P(), specs
  assert all(s.spec == P() for s in jax.tree.leaves(rep_run.state_sharding))
  assert jax.tree.map(lambda x: x.sharding.spec, new) == specs
  _assert_close(new, rep_new, 'state ')
  _assert_close(metrics, rep_metrics, 'metric ')
  assert int(new['step']) == 1 and float(metrics['finite']) == 1.0


def test_state_bytes_per_device_is_an_eighth(steps):
  """Measured from the shards each device holds; and the shape-only count the benchmark uses agrees."""
  run, _, new, _ = steps[FSDP8]
  _, _, rep_new, _ = steps[REPLICATED]
  total = sharding.addressable_bytes(rep_new)
  assert total == sum(x.nbytes for x in jax.tree.leaves(rep_new))
  per_device = [sharding.addressable_bytes(new, d) for d in jax.devices()]
  assert max(per_device) <= total / 8 * 1.03, (per_device, total)  # only a few small leaves stay whole
  shapes = jax.eval_shape(lambda s: s, new)
  specs = jax.tree.map(lambda s: s.spec, run.state_sharding)
  assert sharding.bytes_per_device(shapes, specs, {'data': 1, 'fsdp': 8}) == per_device[0]


def test_noise_and_global_norms_do_not_depend_on_the_layout(mlp_steps):
  """δ0 = γ‖w_j‖z: the draw z is the same bits in any layout (seen through all-ones parameters, whose
  kernel norms are exact in any summation order); with real parameters ‖w_j‖ is a reduction over split
  dimensions, so δ0 agrees to float32 rounding. Global norms and inner products are those of the whole
  arrays."""
  shardings, state, _ = mlp_steps[FSDP8]
  rep_shardings, rep_state, _ = mlp_steps[REPLICATED]

  def draws(params):
    ones = jax.tree.map(jnp.ones_like, params)
    delta = kernelwise_noise(jax.random.key(3), params, 0.01)
    return (kernelwise_noise(jax.random.key(3), ones, 0.01), delta, T.norm(params),
            T.vdot(params, delta))

  def run_draws(shardings, params):
    return _run(draws, (shardings['params'],), (shardings['params'],) * 2 + (None, None), params)
  ones_delta, delta, norm, dot = run_draws(shardings, state['params'])
  rep_ones_delta, rep_delta, _, _ = run_draws(rep_shardings, rep_state['params'])
  assert any('fsdp' in x.sharding.spec for x in jax.tree.leaves(delta))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), ones_delta,
               rep_ones_delta)
  _assert_close(delta, rep_delta, 'δ0 ')
  host = [np.asarray(x, np.float64) for x in jax.tree.leaves(rep_state['params'])]
  np.testing.assert_allclose(norm, np.sqrt(sum(np.sum(x * x) for x in host)), rtol=1e-6)
  np.testing.assert_allclose(dot, sum(np.sum(x * np.asarray(d, np.float64)) for x, d in
                                      zip(host, jax.tree.leaves(rep_delta))), rtol=1e-5)


def test_a_checkpoint_restores_onto_other_meshes(steps, tmp_path):
  """fsdp=8 -> data=4 x fsdp=2 -> replicated: each restore lands in the target mesh's layout, same values."""
  _, _, state, _ = steps[FSDP8]
  expected = jax.tree.map(np.asarray, jax.device_get(state))
  for i, mesh in enumerate((DATA4_FSDP2, REPLICATED)):
    source_dir, target_dir = tmp_path / str(i), tmp_path / str(i + 1)
    writer = checkpointing.Checkpointer(str(source_dir), every_steps=1, max_to_keep=None, asynchronous=False)
    writer.save(1, state, force=True)
    writer.close()
    run = train_step.build(_config(mesh), sharding.make_mesh(_config(mesh)))
    reader = checkpointing.Checkpointer(str(source_dir), every_steps=1, max_to_keep=None, asynchronous=False)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          jax.eval_shape(run.init_state), run.state_sharding)
    step, state = reader.restore(1, target)
    reader.close()
    assert step == 1
    assert jax.tree.map(lambda x: x.sharding, state) == run.state_sharding
    assert (any('fsdp' in x.sharding.spec for x in jax.tree.leaves(state)) == (mesh == DATA4_FSDP2))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, jax.device_get(state)), expected)
    del target_dir


@pytest.mark.parametrize('mesh, expected', [
    ({'data': 3, 'fsdp': 1}, 'has 3 devices but this run has 8'),
    ({'data': -1, 'fsdp': 3}, 'does not fit the 8 devices'),
    ({'data': -1, 'fsdp': -1}, 'only one axis may be -1'),
    ({'data': 0, 'fsdp': 8}, 'config.mesh.data=0 must be'),
    ({'data': -1, 'model': 2}, 'unknown axes'),
])
def test_a_mesh_that_does_not_fit_is_one_error_line(mesh, expected):
  with pytest.raises(sharding.ConfigError) as info:
    sharding.make_mesh({'mesh': mesh})
  assert expected in str(info.value) and '\n' not in str(info.value)


def test_an_fsdp_axis_that_divides_nothing_is_one_error_line():
  config = _config(FSDP8)
  config.shard_min_bytes = 4 * 2**20  # the tiny ViT has no leaf that large
  with pytest.raises(sharding.ConfigError, match='config.mesh.fsdp=8 divides no dimension') as info:
    train_step.build(config, sharding.make_mesh(config))
  assert '\n' not in str(info.value)


def test_leaf_rule():
  assert sharding.leaf_spec((768, 3072), 4, 8, 0) == P(None, 'fsdp')   # the largest divisible dimension
  assert sharding.leaf_spec((3072, 768), 4, 8, 0) == P('fsdp')
  assert sharding.leaf_spec((10, 768), 4, 16, 0) == P(None, 'fsdp')    # 10 is not divisible by 16
  assert sharding.leaf_spec((1000,), 4, 16, 0) == P()                   # nothing divisible: replicated
  assert sharding.leaf_spec((768,), 4, 8, 4 * 2**20) == P()             # small: replicated
  assert sharding.leaf_spec((768, 3072), 4, 1, 0) == P()                # no fsdp axis
  assert sharding.leaf_spec((16, 16), 4, 8, 0) == P('fsdp')             # ties: the earlier dimension


def test_the_vit_l16_config_documents_its_state_per_chip():
  """configs/vit_l16_rsam.py's memory figures are the rule's, from shapes (a trace of ViT-L/16, no arrays)."""
  import re
  from configs import vit_l16_rsam
  config = vit_l16_rsam.get_config()
  replicated_gib, fsdp8_gib = map(float, re.search(r'([\d.]+) GiB replicated, ([\d.]+) GiB at fsdp=8',
                                                   vit_l16_rsam.__doc__).groups())
  assert dict(config.mesh) == {'data': -1, 'fsdp': 8} and sharding.make_mesh(config).shape['fsdp'] == 8
  config.total_steps = 100_000  # the shapes do not depend on it; spares reading the dataset's size
  shapes = train_step.state_shapes(config)
  by_fsdp = sharding.bytes_by_fsdp(shapes, (1, 8), sharding.min_shard_bytes(config))
  assert round(by_fsdp[1] / 2**30, 2) == replicated_gib and round(by_fsdp[8] / 2**30, 2) == fsdp8_gib
  assert f"{sum(x.size for x in jax.tree.leaves(shapes['params'])) / 1e6:.1f}M parameters" in (
      ' '.join(vit_l16_rsam.__doc__.split()))
