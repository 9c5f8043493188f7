"""The library as someone else's optax code adopts it: only jax, optax, numpy and the installed rsam.

Each test is a small adopter's script: a plain-JAX MLP under rsam(optax.chain(clip, adamw)), bf16, f32 and
x64 parameters, optax.inject_hyperparams, jit with donation and lax.scan, m-sharpness with shard_map on
8 fake devices and a 2-D mesh, haiku-, equinox-, PyTorch- and flax.nnx-style trees built by hand,
optax's wrappers, masks, diagnostics, pickle resume, bad input. It imports nothing of the training repo
(no flax, no ml_collections), so CI also runs it in a venv with only the built wheel and the oldest jax and
optax that pyproject.toml allows (.ci/run); RSAM_EXPECT_INSTALLED=1 then checks that rsam comes from that
venv's site-packages, not from a checkout.
"""
import os

# Eight CPU devices for the m-sharpness tests; tests/conftest.py sets the same in the main suite.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import inspect  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from importlib import metadata  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import rsam  # noqa: E402
from rsam import leaf_rules, transforms  # noqa: E402

D_IN, D_HID, D_OUT, N = 6, 8, 3, 16
KEY = 7
TOTAL = 20


# ---------------------------------------------------------------- an adopter's model: a plain-JAX MLP
def init_mlp(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return {'hidden': {'kernel': jnp.asarray(rng.normal(size=(D_IN, D_HID)) * 0.5, dtype),
                     'bias': jnp.asarray(rng.normal(size=(D_HID,)) * 0.1, dtype)},
          'out': {'kernel': jnp.asarray(rng.normal(size=(D_HID, D_OUT)) * 0.5, dtype),
                  'bias': jnp.zeros((D_OUT,), dtype)}}


def make_batch(seed=1, n=N):
  rng = np.random.default_rng(seed)
  return {'x': jnp.asarray(rng.normal(size=(n, D_IN)), jnp.float32),
          'y': jnp.asarray(rng.normal(size=(n, D_OUT)), jnp.float32)}


def loss(params, batch):
  """Mean squared error of a tanh MLP, computed in float32 whatever the parameters' dtype."""
  p = jax.tree.map(lambda v: v.astype(jnp.promote_types(v.dtype, jnp.float32)), params)
  h = jnp.tanh(batch['x'] @ p['hidden']['kernel'] + p['hidden']['bias'])
  return jnp.mean(jnp.sum((h @ p['out']['kernel'] + p['out']['bias'] - batch['y']) ** 2, -1))


def grad_fn_of(batch):
  return lambda p, _key: jax.grad(loss)(p, batch)


def base_optimizer():
  return optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(1e-2, weight_decay=1e-2))


def sam_gradient(params, batch, rho, direction=None):
  """SAM by hand: ∇L(w + ρ d/‖d‖), d = ∇L(w) unless given."""
  d = jax.grad(loss)(params, batch) if direction is None else direction
  n = optax.tree_utils.tree_l2_norm(d)
  return jax.grad(loss)(jax.tree.map(lambda w, v: w + rho * v / (n + 1e-12), params, d), batch)


def step_key(t, seed=KEY):
  """The key rsam derives for step t from its seed, split into (noise, dropout) as the updaters do."""
  return jax.random.split(jax.random.fold_in(jax.random.key(seed), t))


def rsam_gradient(params, batch, rho, gamma, lam, t, seed=KEY, rules=leaf_rules.FLAX):
  """R-SAM by hand (Algorithm 1) with the library's noise draw."""
  noise_key, _ = step_key(t, seed)
  delta0 = rsam.kernelwise_noise(noise_key, params, gamma, rules=rules)
  g_hat = jax.grad(loss)(jax.tree.map(jnp.add, params, delta0), batch)
  return sam_gradient(params, batch, rho, jax.tree.map(lambda d, g: d + lam * g, delta0, g_hat))


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), rtol=rtol, atol=atol)


def max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def one_line(e):
  message = str(e.value)
  assert '\n' not in message, message
  return message


def test_rsam_is_the_installed_wheel_where_asked():
  if os.environ.get('RSAM_EXPECT_INSTALLED'):
    assert 'site-packages' in rsam.__file__, rsam.__file__
  assert rsam.__version__ == metadata.version('rsam')


# ---------------------------------------------------------------- the MLP under clip + AdamW, wrapped
def test_mlp_under_clip_and_adamw_gets_the_rsam_gradient_through_the_whole_chain():
  """rsam(chain(clip, adamw)): the clip acts on the R-SAM gradient (a hand-written Algorithm 1), AdamW
  after it; jitted with the parameters and state donated; training lowers the loss."""
  params, batch = init_mlp(), make_batch()
  rho, gamma, lam = 0.1, 0.05, 2.0
  tx = transforms.rsam(base_optimizer(), rho=rho, gamma=gamma, lam=lam, key=KEY)
  base = base_optimizer()

  step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p, batch), s, p, grad_fn=grad_fn_of(batch)))
  state, base_state, p = tx.init(params), base.init(params), params
  for t in range(3):
    updates, state = step(p, state)
    expected, base_state = base.update(rsam_gradient(p, batch, rho, gamma, lam, t), base_state, p)
    assert_trees_close(updates, expected)
    p = optax.apply_updates(p, updates)
  # The clip mattered (the R-SAM gradient's norm is above 0.5), and R-SAM is not the plain gradient.
  assert float(optax.tree_utils.tree_l2_norm(rsam_gradient(params, batch, rho, gamma, lam, 0))) > 0.5
  assert max_diff(rsam_gradient(params, batch, rho, gamma, lam, 0), jax.grad(loss)(params, batch)) > 1e-3

  @jax.jit
  def train_step(p, s):
    updates, s = tx.update(None, s, p, grad_fn=grad_fn_of(batch))
    return optax.apply_updates(p, updates), s
  donated = jax.jit(train_step, donate_argnums=(0, 1))
  initial = float(loss(params, batch))
  p, s = jax.tree.map(jnp.copy, params), tx.init(params)
  for _ in range(30):
    p, s = donated(p, s)
  assert float(loss(p, batch)) < 0.5 * initial


def test_sam_equals_optax_contrib_sam():
  params, batch = init_mlp(), make_batch()
  ours = transforms.sam(base_optimizer(), rho=0.2)
  theirs = optax.contrib.sam(base_optimizer(), optax.chain(optax.contrib.normalize(), optax.sgd(0.2)),
                             opaque_mode=True)

  def train(tx):
    def body(carry, _):
      p, s = carry
      updates, s = tx.update(jax.grad(loss)(p, batch), s, p, grad_fn=grad_fn_of(batch))
      return (optax.apply_updates(p, updates), s), None
    return jax.jit(lambda: jax.lax.scan(body, (params, tx.init(params)), xs=None, length=5)[0][0])()
  assert_trees_close(train(ours), train(theirs), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- dtypes
def dtypes(tree):
  return jax.tree.map(lambda x: jnp.result_type(x), tree)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float32])
def test_updates_and_state_keep_the_parameters_dtype(dtype):
  """bf16 params get bf16 updates, AdamW's moments stay bf16, a lax.scan over steps runs and a second
  jitted call compiles nothing new; the ascent inside is float32 (the bf16 update is the float32 one,
  rounded)."""
  params, batch = init_mlp(dtype=dtype), make_batch()
  tx = transforms.rsam(optax.adamw(1e-2), rho=0.1, gamma=0.05, lam=2.0, key=KEY)
  traces = []

  def grad_fn(p, _key):
    traces.append(1)
    return jax.grad(loss)(p, batch)

  @jax.jit
  def step(p, s):
    updates, s = tx.update(None, s, p, grad_fn=grad_fn)
    return optax.apply_updates(p, updates), s, updates

  state = tx.init(params)
  p1, s1, updates = step(params, state)
  assert dtypes(updates) == dtypes(params) and dtypes(p1) == dtypes(params)
  assert dtypes(s1) == dtypes(state)
  n = len(traces)
  step(p1, s1)
  assert len(traces) == n  # the second call reuses the compiled step

  def body(carry, _):
    p, s, _ = step(*carry)
    return (p, s), None
  (p3, s3), _ = jax.lax.scan(body, (params, state), xs=None, length=3)
  assert dtypes(s3) == dtypes(state)

  # The update equals AdamW's on the float32 R-SAM gradient of the (rounded) parameters, rounded to dtype.
  p32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
  g = rsam_gradient(p32, batch, 0.1, 0.05, 2.0, 0)
  u32, _ = optax.adamw(1e-2).update(g, optax.adamw(1e-2).init(p32), p32)
  tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
  assert_trees_close(updates, u32, rtol=tol, atol=tol * 1e-2)


_X64_SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np, optax, rsam.transforms as rt
assert jax.config.jax_enable_x64
rng = np.random.default_rng(0)
x, y = rng.normal(size=(16, 6)), rng.normal(size=(16, 3))
w = {"k": jnp.asarray(rng.normal(size=(6, 3)), jnp.float64), "b": jnp.zeros(3, jnp.float64)}
loss = lambda p: jnp.mean(jnp.sum((x @ p["k"] + p["b"] - y) ** 2, -1))
tx = rt.sam(optax.sgd(1.0), rho=0.3)
u, s = jax.jit(lambda p: tx.update(None, tx.init(p), p, grad_fn=lambda q, _: jax.grad(loss)(q)))(w)
def np_grad(p):
  r = x @ p["k"] + p["b"] - y
  return {"k": 2 / 16 * x.T @ r, "b": 2 / 16 * r.sum(0)}
g = np_grad({k: np.asarray(v) for k, v in w.items()})
n = np.sqrt(sum((v ** 2).sum() for v in g.values()))
ref = np_grad({k: np.asarray(w[k]) + 0.3 * g[k] / (n + 1e-12) for k in g})
err = max(float(np.max(np.abs(-np.asarray(u[k]) - ref[k]) / np.abs(ref[k]).max())) for k in ref)
print(json.dumps({"dtypes": sorted({str(v.dtype) for v in jax.tree.leaves(u)}), "error": err}))
'''


def test_float64_parameters_keep_float64_precision():
  """Under x64 (a subprocess: x64 is process-wide), float64 parameters get float64 updates computed in
  float64: SAM's step agrees with a float64 NumPy reference to 1e-12, which float32 cannot reach."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(rsam.__file__)))
  env = dict(os.environ, JAX_ENABLE_X64='1', PYTHONPATH=root, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', 'import json\n' + _X64_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['dtypes'] == ['float64']
  assert result['error'] < 1e-12, result


# ---------------------------------------------------------------- inject_hyperparams
def test_inject_hyperparams_keeps_rho_gamma_lam_in_the_state_and_lets_them_change():
  params, batch = init_mlp(), make_batch()
  tx = optax.inject_hyperparams(transforms.rsam)(optax.sgd(0.1), rho=0.05, gamma=1e-3, lam=2.0, key=KEY)
  plain = transforms.rsam(optax.sgd(0.1), rho=0.05, gamma=1e-3, lam=2.0, key=KEY)

  @jax.jit
  def step(tx_state, p):
    return tx.update(None, tx_state, p, grad_fn=grad_fn_of(batch))

  state = tx.init(params)
  assert set(state.hyperparams) >= {'rho', 'gamma', 'lam'}
  updates, state = step(state, params)
  expected, _ = plain.update(None, plain.init(params), params, grad_fn=grad_fn_of(batch))
  assert_trees_close(updates, expected)
  assert float(optax.tree_utils.tree_get(state, 'rho')) == pytest.approx(0.05)
  # Mid-run: ρ = 0 in the state makes the step the plain gradient's (w_adv = w), with no recompilation.
  state.hyperparams['rho'] = jnp.zeros_like(state.hyperparams['rho'])
  updates, state = step(state, params)
  assert_trees_close(updates, jax.tree.map(lambda g: -0.1 * g, jax.grad(loss)(params, batch)))
  assert float(optax.tree_utils.tree_get(state, 'sam_diagnostics')['rho_t']) == 0.0
  # A schedule for γ: evaluated at inject's count, as the transform's own schedules are.
  scheduled = optax.inject_hyperparams(transforms.rsam)(
      optax.sgd(0.1), rho=0.05, gamma=optax.linear_schedule(0.0, 0.01, 10), lam=2.0, key=KEY)
  s = scheduled.init(params)
  for _ in range(3):
    _, s = jax.jit(lambda s, p: scheduled.update(None, s, p, grad_fn=grad_fn_of(batch)))(s, params)
  assert float(optax.tree_utils.tree_get(s, 'sam_diagnostics')['gamma_t']) == pytest.approx(0.002)


def test_hyperparameters_may_be_traced_values():
  """ρ, γ, λ, α as arguments of a jitted function: no float() on a traced value."""
  params, batch = init_mlp(), make_batch()

  @jax.jit
  def update(rho, gamma, lam, alpha):
    tx = transforms.rgsam(optax.sgd(1.0), rho=rho, gamma=gamma, lam=lam, alpha=alpha, key=KEY)
    return tx.update(None, tx.init(params), params, grad_fn=grad_fn_of(batch))[0]

  traced = update(0.1, 0.0, 2.0, 0.0)  # γ = 0 and α = 0: SAM
  assert_trees_close(traced, jax.tree.map(jnp.negative, sam_gradient(params, batch, 0.1)))


def test_inject_hyperparams_refuses_what_must_be_static():
  """m fixes shapes and a Mesh is callable (inject_hyperparams would take it for a schedule): both go in
  static_args, and the messages say so."""
  params, batch = init_mlp(), make_batch()
  mesh = Mesh(np.array(jax.devices()[:2]), ('data',))

  def run(static_args):
    tx = optax.inject_hyperparams(transforms.sam, static_args=static_args)(optax.sgd(0.1), rho=0.1, m=4,
                                                                            mesh=mesh)
    grad_fn = lambda q, k, b: jax.grad(loss)(q, b)  # noqa: E731
    return jax.jit(lambda s, p: tx.update(None, s, p, grad_fn=grad_fn, batch=batch))(tx.init(params), params)

  with pytest.raises(TypeError, match=r"static_args=\('m', 'mesh'\)|Cannot determine dtype"):
    run(())  # optax < 0.2.4 fails first, converting the Mesh it takes for a schedule's value
  with pytest.raises(TypeError, match=r"static_args=\('m',\)"):
    run(('mesh',))
  updates, _ = run(('m', 'mesh'))
  assert_trees_close(updates, jax.tree.map(lambda g: -0.1 * g, grouped_sam_reference(params, batch, 0.1, 4)))


# ---------------------------------------------------------------- m-sharpness, shard_map, meshes
def grouped_sam_reference(params, batch, rho, m):
  groups = [jax.tree.map(lambda x: x[k * m:(k + 1) * m], batch) for k in range(N // m)]
  return jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), 0), *[sam_gradient(params, b, rho) for b in groups])


def grouped_update(tx, params, batch):
  return jax.jit(lambda p, b: tx.update(None, tx.init(p), p, grad_fn=lambda q, k, bb: jax.grad(loss)(q, bb),
                                        batch=b)[0])(params, batch)


def test_m_sharpness_groups_on_8_devices_and_refuses_a_group_size_that_does_not_divide():
  params, batch = init_mlp(), make_batch()
  mesh = Mesh(np.array(jax.devices()[:2]), ('data',))  # a batch of 16: 8 examples per device
  for m in (2, 8):
    tx = transforms.sam(optax.sgd(1.0), rho=0.2, m=m, mesh=mesh)
    assert_trees_close(grouped_update(tx, params, batch),
                       jax.tree.map(jnp.negative, grouped_sam_reference(params, batch, 0.2, m)))
  eight = Mesh(np.array(jax.devices()), ('data',))
  assert_trees_close(grouped_update(transforms.sam(optax.sgd(1.0), rho=0.2, m=2, mesh=eight), params, batch),
                     jax.tree.map(jnp.negative, grouped_sam_reference(params, batch, 0.2, 2)))
  for m in (3, 5, 16):
    tx = transforms.sam(optax.sgd(1.0), rho=0.2, m=m, mesh=mesh)
    with pytest.raises(ValueError) as e:
      grouped_update(tx, params, batch)
    assert f'm={m} does not divide the per-device batch of 8 examples' in one_line(e), str(e.value)


def test_m_sharpness_on_a_2d_mesh_splits_the_batch_over_the_axes_named():
  """('data', 'model') = 4 x 2 devices. By default every axis splits the batch (16 / 8 = 2 per device, so
  m = 4 is refused, naming the axes); batch_axes='data' splits it 4 ways (4 per device) and runs."""
  params, batch = init_mlp(), make_batch()
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('data', 'model'))
  with pytest.raises(ValueError) as e:
    grouped_update(transforms.sam(optax.sgd(1.0), rho=0.2, m=4, mesh=mesh), params, batch)
  assert "per-device batch of 2 examples" in one_line(e) and "('data', 'model')" in str(e.value)
  tx = transforms.sam(optax.sgd(1.0), rho=0.2, m=4, mesh=mesh, batch_axes='data')
  assert_trees_close(grouped_update(tx, params, batch),
                     jax.tree.map(jnp.negative, grouped_sam_reference(params, batch, 0.2, 4)))
  with pytest.raises(ValueError, match="batch_axes='batch' must name axes of the mesh"):
    transforms.sam(optax.sgd(1.0), rho=0.2, m=4, mesh=mesh, batch_axes='batch')


def test_accum_steps_is_the_exact_large_batch_step():
  params, batch = init_mlp(), make_batch()
  tx = transforms.sam(optax.sgd(1.0), rho=0.2, accum_steps=4)
  updates = jax.jit(lambda p: tx.update(None, tx.init(p), p, grad_fn=lambda q, k, b: jax.grad(loss)(q, b),
                                        batch=batch)[0])(params)
  assert_trees_close(updates, jax.tree.map(jnp.negative, sam_gradient(params, batch, 0.2)))


# ---------------------------------------------------------------- per-leaf rules on other frameworks' trees
@jax.tree_util.register_pytree_with_keys_class
class EqxLinear:
  """An equinox-style module: attributes, PyTorch layout (weight (out, in), bias (out,))."""

  def __init__(self, weight, bias):
    self.weight, self.bias = weight, bias

  def tree_flatten_with_keys(self):
    return ((jax.tree_util.GetAttrKey('weight'), self.weight), (jax.tree_util.GetAttrKey('bias'), self.bias)), None

  def tree_flatten(self):
    return (self.weight, self.bias), None

  @classmethod
  def tree_unflatten(cls, _, children):
    return cls(*children)


@jax.tree_util.register_pytree_with_keys_class
class NnxParam:
  """flax.nnx's Variable: the array sits under a trailing ``.value`` in the key path."""

  def __init__(self, value):
    self.value = value

  def tree_flatten_with_keys(self):
    return ((jax.tree_util.GetAttrKey('value'), self.value),), None

  def tree_flatten(self):
    return (self.value,), None

  @classmethod
  def tree_unflatten(cls, _, children):
    return cls(*children)


def framework_trees():
  """One linear layer (4 -> 3) and a conv (2 -> 5 channels, 3x3) in four frameworks' naming and layout:
  (tree, rules, paths of the weights, kernel output axis of each weight)."""
  rng = np.random.default_rng(3)
  lin, conv = rng.normal(size=(4, 3)), rng.normal(size=(3, 3, 2, 5))  # Flax/haiku layout: out last
  lin_t, conv_t = lin.T, conv.transpose(3, 2, 0, 1)                   # PyTorch layout: out first
  f = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  b3, b5 = f(rng.normal(size=3)), f(rng.normal(size=5))
  return {
      'haiku': ({'linear': {'w': f(lin), 'b': b3}, 'conv2_d': {'w': f(conv), 'b': b5}}, leaf_rules.HAIKU),
      'pytorch': ({'fc.weight': f(lin_t), 'fc.bias': b3, 'conv.weight': f(conv_t), 'conv.bias': b5},
                  leaf_rules.PYTORCH),
      'equinox': ({'layers': [EqxLinear(f(lin_t), b3), EqxLinear(f(conv_t), b5)]}, leaf_rules.PYTORCH),
      'nnx': ({'lin': {'kernel': NnxParam(f(lin)), 'bias': NnxParam(b3)},
               'conv': {'kernel': NnxParam(f(conv)), 'bias': NnxParam(b5)}}, leaf_rules.FLAX),
  }


@pytest.mark.parametrize('framework', ['haiku', 'pytorch', 'equinox', 'nnx'])
def test_asam_scales_the_weights_of_each_frameworks_tree(framework):
  params, rules = framework_trees()[framework]
  t = rsam.updaters.asam_scale(params, eta=0.01, rules=rules)
  for w, s in zip(jax.tree.leaves(params), jax.tree.leaves(t)):
    expected = np.abs(np.asarray(w)) + 0.01 if w.ndim > 1 else np.ones(())  # weights are the 2-D/4-D leaves
    np.testing.assert_allclose(np.broadcast_to(np.asarray(s), w.shape), np.broadcast_to(expected, w.shape),
                               rtol=1e-6)
  if framework != 'nnx':  # under Flax's names these trees have no weight: refused, not silently SAM
    with pytest.raises(ValueError) as e:
      rsam.updaters.asam_scale(params, rules=leaf_rules.FLAX)
    assert 'no leaf of params is a weight under the FLAX leaf rule' in one_line(e)


@pytest.mark.parametrize('framework', ['haiku', 'pytorch', 'equinox', 'nnx'])
def test_kernel_noise_follows_each_frameworks_output_axis(framework):
  """Kernel j's noise is γ‖w_j‖z with w_j its output unit's slice: scaling output unit 0 of each weight
  by 3 scales its noise by 3 and leaves every other unit's noise unchanged (same key). Under the wrong
  axis every unit's noise would change."""
  params, rules = framework_trees()[framework]
  key = jax.random.key(0)
  out_axis = 0 if rules is leaf_rules.PYTORCH else -1

  def scale_unit0(w):
    if w.ndim < 2:
      return w
    index = [slice(None)] * w.ndim
    index[out_axis] = 0
    return w.at[tuple(index)].multiply(3.0)

  delta = rsam.kernelwise_noise(key, params, 0.1, rules=rules)
  scaled = rsam.kernelwise_noise(key, jax.tree.map(scale_unit0, params), 0.1, rules=rules)
  per_leaf = rsam.LeafRules(is_weight=rules.is_weight, output_axis=lambda path, leaf: out_axis % leaf.ndim)
  assert max_diff(rsam.kernelwise_noise(key, params, 0.1, rules=per_leaf), delta) == 0  # a function of the leaf
  for d, s in zip(jax.tree.leaves(delta), jax.tree.leaves(scaled)):
    if d.ndim < 2:
      continue
    d, s = np.moveaxis(np.asarray(d), out_axis, 0), np.moveaxis(np.asarray(s), out_axis, 0)
    np.testing.assert_allclose(s[0], 3 * d[0], rtol=1e-5)
    np.testing.assert_allclose(s[1:], d[1:], rtol=1e-6)


def test_asam_and_rsam_transforms_take_the_rules():
  """The transforms hand ``rules`` to the ascent: ASAM on a haiku tree equals the hand-written ASAM step."""
  params, rules = framework_trees()['haiku']
  x = jnp.asarray(np.random.default_rng(4).normal(size=(8, 4)), jnp.float32)
  lossh = lambda p: jnp.mean((x @ p['linear']['w'] + p['linear']['b']) ** 2) + jnp.sum(p['conv2_d']['w'] ** 2)  # noqa: E731
  tx = transforms.asam(optax.sgd(1.0), rho=0.5, rules=rules)
  updates = tx.update(None, tx.init(params), params, grad_fn=lambda p, _: jax.grad(lossh)(p))[0]
  g = jax.grad(lossh)(params)
  t = jax.tree.map(lambda w: jnp.abs(w) + 0.01 if w.ndim > 1 else jnp.ones_like(w), params)
  tg = jax.tree.map(jnp.multiply, t, g)
  n = optax.tree_utils.tree_l2_norm(tg)
  expected = jax.grad(lossh)(jax.tree.map(lambda w, s, v: w + 0.5 * s * v / n, params, t, tg))
  assert_trees_close(updates, jax.tree.map(jnp.negative, expected))
  with pytest.raises(ValueError, match='under the FLAX leaf rule'):
    bad = transforms.asam(optax.sgd(1.0), rho=0.5)
    bad.update(None, bad.init(params), params, grad_fn=lambda p, _: jax.grad(lossh)(p))


# ---------------------------------------------------------------- composition with optax's transforms
def test_optax_wrappers_work_where_they_can_and_are_refused_where_they_cannot():
  params, batch = init_mlp(), make_batch()
  gf = grad_fn_of(batch)
  g = jax.grad(loss)(params, batch)
  sam_g = sam_gradient(params, batch, 0.2)

  def update(tx, **kw):
    return jax.jit(lambda p: tx.update(g, tx.init(p), p, grad_fn=gf, **kw))(params)

  # Chained after: fine. Chained before: refused (it would be dropped), also through inject_hyperparams.
  after, _ = update(optax.chain(transforms.sam(optax.sgd(1.0), rho=0.2), optax.scale(0.5)))
  assert_trees_close(after, jax.tree.map(lambda v: -0.5 * v, sam_g))
  for before in (optax.chain(optax.clip_by_global_norm(1e-3), transforms.sam(optax.sgd(1.0), rho=0.2)),
                 optax.chain(optax.scale(2.0), optax.inject_hyperparams(transforms.sam)(optax.sgd(1.0), rho=0.2))):
    with pytest.raises(ValueError) as e:
      update(before)
    assert 'sam is chained after another transform' in one_line(e)
  # The right pattern: clipping inside.
  inside, _ = update(transforms.sam(optax.chain(optax.clip_by_global_norm(1e-3), optax.sgd(1.0)), rho=0.2))
  assert float(optax.tree_utils.tree_l2_norm(inside)) == pytest.approx(1e-3, rel=1e-4)

  # apply_if_finite: outside refused; inside, it skips a step whose sharpness-aware gradient is not finite.
  with pytest.raises(ValueError, match=r'put it inside instead: sam\(optax.apply_if_finite'):
    update(optax.apply_if_finite(transforms.sam(optax.sgd(1.0), rho=0.2), 2))
  def nan_away_from_w(p, _key):  # finite at w, NaN at the ascent point
    moved = optax.tree_utils.tree_l2_norm(jax.tree.map(jnp.subtract, p, params)) > 0
    return jax.tree.map(lambda v: jnp.where(moved, jnp.nan, v), jax.grad(loss)(p, batch))
  tx = transforms.sam(optax.apply_if_finite(optax.sgd(1.0), 2), rho=0.2)
  skipped, state = tx.update(g, tx.init(params), params, grad_fn=nan_away_from_w)
  assert max_diff(skipped, jax.tree.map(jnp.zeros_like, params)) == 0
  assert int(optax.tree_utils.tree_get(state, 'notfinite_count')) == 1

  # MultiSteps: outside refused; inside, the base steps every k updates on the mean SAM gradient.
  with pytest.raises(ValueError, match='ascent of the last micro-batch only'):
    ms = optax.MultiSteps(transforms.sam(optax.sgd(1.0), rho=0.2), 2)
    ms.update(g, ms.init(params), params, grad_fn=gf)
  tx = transforms.sam(optax.MultiSteps(optax.sgd(1.0), 2), rho=0.2)
  state, grads = tx.init(params), []
  for b in (make_batch(5), make_batch(6)):
    grads.append(sam_gradient(params, b, 0.2))
    u, state = tx.update(None, state, params, grad_fn=grad_fn_of(b))
  assert_trees_close(u, jax.tree.map(lambda a, b: -(a + b) / 2, *grads))

  # optax.masked around: refused; mask= for the ascent and masked inside for the base are the patterns.
  with pytest.raises(ValueError, match='got part of the parameters'):
    mk = optax.masked(transforms.sam(optax.sgd(1.0), rho=0.2), {'hidden': True, 'out': False})
    mk.update(g, mk.init(params), params, grad_fn=gf)
  inner_mask = {'hidden': {'kernel': True, 'bias': True}, 'out': {'kernel': False, 'bias': False}}
  masked_base, _ = update(transforms.sam(optax.masked(optax.sgd(1.0), inner_mask), rho=0.2))
  assert_trees_close(masked_base['hidden'], jax.tree.map(jnp.negative, sam_g['hidden']))
  assert_trees_close(masked_base['out'], sam_g['out'])  # optax.masked passes the other leaves through


def test_extra_arguments_reach_the_base_optimizer():
  """update's other keyword arguments go to the base optimizer (e.g. reduce_on_plateau's value=)."""
  params, batch = init_mlp(), make_batch()
  scaled_by = optax.GradientTransformationExtraArgs(
      init=lambda p: optax.EmptyState(),
      update=lambda u, s, p=None, *, factor, **_: (jax.tree.map(lambda g: -factor * g, u), s))
  tx = transforms.sam(scaled_by, rho=0.2)
  updates, _ = tx.update(None, tx.init(params), params, grad_fn=grad_fn_of(batch), factor=3.0)
  assert_trees_close(updates, jax.tree.map(lambda g: -3.0 * g, sam_gradient(params, batch, 0.2)))


# ---------------------------------------------------------------- mask, diagnostics, model state
def test_mask_keeps_leaves_out_of_the_ascent():
  """mask: biases are not perturbed (SAM's ascent and its norm over the kernels only), and R-SAM draws no
  noise for them: the first pass's point, returned as aux, has the biases unchanged."""
  params, batch = init_mlp(), make_batch()
  kernels_only = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
  g = jax.grad(loss)(params, batch)
  d = jax.tree.map(lambda v, keep: v if keep else jnp.zeros_like(v), g, kernels_only(params))
  expected = sam_gradient(params, batch, 0.3, d)
  for mask in (kernels_only, kernels_only(params)):
    tx = transforms.sam(optax.sgd(1.0), rho=0.3, mask=mask)
    updates = tx.update(None, tx.init(params), params, grad_fn=grad_fn_of(batch))[0]
    assert_trees_close(updates, jax.tree.map(jnp.negative, expected))
  assert max_diff(expected, sam_gradient(params, batch, 0.3)) > 1e-4  # the mask changed the step

  tx = transforms.rsam(optax.sgd(1.0), rho=0.3, gamma=0.1, lam=2.0, key=KEY, mask=kernels_only,
                       init_aux=init_mlp())
  _, state = tx.update(None, tx.init(params), params, grad_fn=lambda p, _: (jax.grad(loss)(p, batch), p))
  point = state.aux  # w + δ0
  assert max_diff(point['hidden']['bias'], params['hidden']['bias']) == 0
  assert max_diff(point['hidden']['kernel'], params['hidden']['kernel']) > 1e-3


def test_diagnostics_are_in_the_state_under_names_that_do_not_collide():
  params, batch = init_mlp(), make_batch()
  rho = rsam.lr_tied_rho(optax.linear_schedule(1.0, 0.1, TOTAL), rho_max=0.5, rho_min=0.1, lr_max=1.0,
                         lr_min=0.1)
  gamma = rsam.cosine_increase(0.01, 5.0, TOTAL)
  tx = transforms.rsam(optax.adamw(1e-3), rho=rho, gamma=gamma, lam=2.0, key=KEY)
  state = tx.init(params)
  step = jax.jit(lambda s: tx.update(None, s, params, grad_fn=grad_fn_of(batch))[1])
  for t in range(3):
    state = step(state)
  diag = optax.tree_utils.tree_get(state, 'sam_diagnostics')
  assert int(optax.tree_utils.tree_get(state, 'count')) == 3  # AdamW's count: no collision with sam_step
  assert int(state.sam_step) == 3
  np.testing.assert_allclose(diag['rho_t'], rho(2), rtol=1e-6)
  np.testing.assert_allclose(diag['gamma_t'], gamma(2), rtol=1e-6)
  noise_key, _ = step_key(2)
  delta0 = rsam.kernelwise_noise(noise_key, params, gamma(2))
  g_hat = jax.grad(loss)(jax.tree.map(jnp.add, params, delta0), batch)
  np.testing.assert_allclose(diag['noise_norm'], optax.tree_utils.tree_l2_norm(delta0), rtol=1e-5)
  np.testing.assert_allclose(diag['grad_norm'], optax.tree_utils.tree_l2_norm(g_hat), rtol=1e-5)
  assert set(diag) == {'rho_t', 'gamma_t', 'noise_norm', 'grad_norm', 'descent_grad_norm', 'cos_ascent_descent',
                       'lam_grad_norm', 'noise_grad_ratio', 'ascent_grad_cos'}
  assert set(transforms.sam(optax.sgd(1.0), rho=0.1).init(params).sam_diagnostics) == {
      'rho_t', 'grad_norm', 'descent_grad_norm', 'cos_ascent_descent'}


def batchnorm_loss(params, stats, batch):
  """A hand-written BatchNorm layer: the loss and the new running mean (momentum 0.9)."""
  h = batch['x'] @ params['hidden']['kernel']
  mean = jnp.mean(h, 0)
  h = (h - mean) / jnp.sqrt(jnp.var(h, 0) + 1e-5) + params['hidden']['bias']
  out = jnp.tanh(h) @ params['out']['kernel'] + params['out']['bias']
  return jnp.mean(jnp.sum((out - batch['y']) ** 2, -1)), 0.9 * stats + 0.1 * mean


def test_model_state_comes_from_the_first_pass_and_resumes_from_pickle(tmp_path):
  """BatchNorm statistics through init_aux (the loss and running mean of the clean pass, SAM's first);
  four steps straight equal two, a pickle of (params, state), and two more."""
  params, batch = init_mlp(), make_batch()
  stats0 = jnp.zeros((D_HID,), jnp.float32)
  tx = optax.inject_hyperparams(transforms.gsam)(base_optimizer(), rho=0.2, alpha=0.3, key=KEY,
                                                 init_aux=(jnp.zeros(()), stats0))

  @jax.jit
  def step(p, s, stats):
    def grad_fn(q, _key):
      (value, new_stats), grads = jax.value_and_grad(batchnorm_loss, has_aux=True)(q, stats, batch)
      return grads, (value, new_stats)
    updates, s = tx.update(None, s, p, grad_fn=grad_fn)
    return optax.apply_updates(p, updates), s, optax.tree_utils.tree_get(s, 'aux')[1]

  p, s, stats = params, tx.init(params), stats0
  p, s, stats = step(p, s, stats)
  np.testing.assert_allclose(stats, batchnorm_loss(params, stats0, batch)[1], rtol=1e-6)  # at w, not w_adv
  straight = (p, s, stats)
  for _ in range(3):
    straight = step(*straight)
  p, s, stats = step(p, s, stats)
  path = tmp_path / 'state.pkl'
  path.write_bytes(pickle.dumps(jax.device_get((p, s, stats))))
  resumed = pickle.loads(path.read_bytes())
  for _ in range(2):
    resumed = step(*resumed)
  assert max_diff(resumed, straight) == 0


def test_lpf_sgd_and_any_updater_through_from_updater():
  params, batch = init_mlp(), make_batch()
  tx = transforms.from_updater(optax.sgd(1.0), rsam.LPFSGD(gamma=0.01), key=KEY)
  updates = tx.update(None, tx.init(params), params, grad_fn=grad_fn_of(batch))[0]
  noise_key, _ = step_key(0)
  delta = rsam.kernelwise_noise(jax.random.fold_in(noise_key, 0), params, 0.01)
  assert_trees_close(updates, jax.tree.map(jnp.negative,
                                           jax.grad(loss)(jax.tree.map(jnp.add, params, delta), batch)))
  keyless = transforms.from_updater(optax.sgd(1.0), rsam.LPFSGD(gamma=0.01))
  with pytest.raises(ValueError, match='draws noise and has no key'):
    keyless.update(None, keyless.init(params), params, grad_fn=grad_fn_of(batch))


# ---------------------------------------------------------------- keys and bad input
def test_keys_of_any_integer_type_and_a_required_key_for_noise():
  params, batch = init_mlp(), make_batch()

  def first_update(tx, **kw):
    return tx.update(None, tx.init(params), params, grad_fn=grad_fn_of(batch), **kw)[0]

  reference = first_update(transforms.rsam(optax.sgd(1.0), rho=0.1, gamma=0.05, lam=2.0, key=3))
  for key in (np.int64(3), np.uint32(3), jnp.int32(3), jax.random.key(3), jax.random.PRNGKey(3)):
    assert max_diff(first_update(transforms.rsam(optax.sgd(1.0), rho=0.1, gamma=0.05, lam=2.0, key=key)),
                    reference) == 0
  other = first_update(transforms.rsam(optax.sgd(1.0), rho=0.1, gamma=0.05, lam=2.0, key=4))
  assert max_diff(other, reference) > 1e-6  # another seed, other noise
  with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'key'"):
    transforms.rsam(optax.sgd(1.0), rho=0.1, gamma=0.05, lam=2.0)  # pylint: disable=missing-kwoa
  per_call = transforms.rsam(optax.sgd(1.0), rho=0.1, gamma=0.05, lam=2.0, key=None)
  with pytest.raises(ValueError, match='draws noise and has no key'):
    first_update(per_call)
  assert max_diff(first_update(per_call, key=jax.random.fold_in(jax.random.key(3), 0)), reference) == 0


SGD = optax.sgd(0.1)


@pytest.mark.parametrize('build,error,fragment', [
    (lambda: transforms.sam(SGD, rho=-0.1), ValueError, 'rho=-0.1 must be >= 0'),
    (lambda: transforms.rsam(SGD, rho=0.1, gamma=-1.0, lam=2.0, key=0), ValueError, 'gamma=-1.0 must be >= 0'),
    (lambda: transforms.rsam(SGD, rho=0.1, gamma=1e-3, lam=-2.0, key=0), ValueError, 'lam=-2.0 must be >= 0'),
    (lambda: transforms.gsam(SGD, rho=0.1, alpha=-0.4), ValueError, 'alpha=-0.4 must be >= 0'),
    (lambda: transforms.asam(SGD, rho=0.5, eta=-0.01), ValueError, 'eta=-0.01 must be >= 0'),
    (lambda: transforms.sam(SGD, rho=0.1, gamma=1e-3), TypeError, "unexpected keyword argument 'gamma'"),
    (lambda: transforms.gsam(SGD, rho=0.1, alpha=0.1, lam=2.0), TypeError, "unexpected keyword argument 'lam'"),
    (lambda: transforms.sam(SGD, rho=0.1, group_mode='bogus'), ValueError, "group_mode='bogus'; choose one of"),
    (lambda: transforms.sam(SGD, rho=0.1, m=4), ValueError, 'm=4 (m-sharpness) needs mesh='),
    (lambda: transforms.sam(SGD, rho=0.1, mesh=Mesh(np.array(jax.devices()), ('data',))), ValueError,
     'mesh= and batch_axes= are for m-sharpness'),
    (lambda: transforms.sam(SGD, rho=0.1, m=0, mesh=Mesh(np.array(jax.devices()), ('data',))), ValueError,
     'm=0 must be an integer >= 1'),
    (lambda: transforms.sam(SGD, rho=0.1, m=2.5, mesh=Mesh(np.array(jax.devices()), ('data',))), TypeError,
     'm=2.5 must be an integer >= 1'),
    (lambda: transforms.sam(SGD, rho=0.1, accum_steps=0), ValueError, 'accum_steps=0 must be an integer >= 1'),
    (lambda: transforms.sam(SGD, rho=0.1, key='seven'), TypeError, "key='seven' must be an integer seed"),
    (lambda: transforms.sam(SGD, rho='0.1'), TypeError, "rho='0.1' must be a number"),
    (lambda: transforms.sam('sgd', rho=0.1), TypeError, "the base optimizer 'sgd' is not an optax transform"),
    (lambda: transforms.asam(SGD, rho=0.5, rules='flax'), TypeError, "rules='flax' must be a rsam.LeafRules"),
    (lambda: rsam.lr_tied_rho(optax.constant_schedule(0.1), rho_max=0.5, rho_min=0.1, lr_max=0.1, lr_min=0.1),
     ValueError, 'lr_max=0.1 equals lr_min=0.1'),
    (lambda: rsam.lr_tied_rho(optax.constant_schedule(0.1), rho_max=-0.5, rho_min=0.1, lr_max=1, lr_min=0),
     ValueError, 'rho_max=-0.5 must be >= 0'),
    (lambda: rsam.cosine_increase(5e-4, 5.0, 0), ValueError, 'total_steps=0 must be an integer >= 1'),
    (lambda: rsam.cosine_increase(5e-4, 0.0, 10), ValueError, 'growth=0.0 must be a number > 0'),
    (lambda: rsam.cosine_increase(-5e-4, 5.0, 10), ValueError, 'init_value=-0.0005 must be >= 0'),
])
def test_bad_construction_is_one_line_naming_the_value(build, error, fragment):
  with pytest.raises(error) as e:
    build()
  assert fragment in one_line(e), str(e.value)


def test_bad_update_calls_say_what_to_do():
  params, batch = init_mlp(), make_batch()
  tx = transforms.sam(optax.adamw(1e-3), rho=0.1)
  state = tx.init(params)
  with pytest.raises(TypeError) as e:  # e.g. a chain's state tuple, whose .count is a method
    tx.update(None, (state,), params, grad_fn=grad_fn_of(batch))
  assert 'state is a tuple, not the SharpnessAwareState that tx.init(params) returns' in one_line(e)
  with pytest.raises(ValueError, match='needs grad_fn='):
    tx.update(None, state, params)
  with pytest.raises(ValueError, match='pass batch='):
    grouped = transforms.sam(optax.sgd(0.1), rho=0.1, accum_steps=2)
    grouped.update(None, grouped.init(params), params, grad_fn=grad_fn_of(batch))


# ---------------------------------------------------------------- schedules, docs, packaging
def test_schedules_start_at_their_initial_value_as_optax_schedules_do():
  assert float(rsam.cosine_increase(5e-4, 5.0, 100)(0)) == pytest.approx(5e-4)
  assert float(rsam.cosine_increase(5e-4, 5.0, 100)(100)) == pytest.approx(2.5e-3)
  # one_based=True: the official R-SAM loop's t = step + 1.
  np.testing.assert_allclose(rsam.cosine_increase(5e-4, 5.0, 100, one_based=True)(0),
                             rsam.cosine_increase(5e-4, 5.0, 100)(1), rtol=1e-7)
  lr = optax.linear_schedule(1.0, 0.1, 100)
  rho = rsam.lr_tied_rho(lr, rho_max=0.5, rho_min=0.1, lr_max=1.0, lr_min=0.1, warmup_steps=10)
  np.testing.assert_allclose(rho(9), 0.5 * lr(9), rtol=1e-6)        # t = 9 < 10: the warm-up branch
  np.testing.assert_allclose(rho(10), 0.1 + 0.4 * (lr(10) - 0.1) / 0.9, rtol=1e-6)
  one_based = rsam.lr_tied_rho(lr, rho_max=0.5, rho_min=0.1, lr_max=1.0, lr_min=0.1, warmup_steps=10,
                               one_based=True)
  np.testing.assert_allclose(one_based(9), 0.1 + 0.4 * (lr(9) - 0.1) / 0.9, rtol=1e-6)  # t = 10


CONSTRUCTORS = [transforms.sam, transforms.asam, transforms.rsam, transforms.gsam, transforms.rgsam,
                transforms.from_updater, rsam.cosine_increase, rsam.lr_tied_rho]


@pytest.mark.parametrize('constructor', CONSTRUCTORS, ids=lambda c: c.__name__)
def test_constructors_document_their_math_every_argument_and_references(constructor):
  doc = inspect.getdoc(constructor)
  sections = ('Args:', 'Returns:') + (('References:',) if constructor is not transforms.from_updater else ())
  for section in sections:
    assert section in doc, (constructor.__name__, section)
  args = doc.split('Args:')[1].split('Returns:')[0]
  for name, parameter in inspect.signature(constructor).parameters.items():
    assert f'\n{name}:' in '\n' + '\n'.join(line.strip() for line in args.splitlines()), (constructor.__name__, name)
    assert parameter.annotation is not inspect.Parameter.empty, (constructor.__name__, name)
  assert '=' in doc.split('Args:')[0]  # the equations come before the arguments


def test_package_ships_types_licence_and_lists_its_names():
  assert os.path.exists(os.path.join(os.path.dirname(rsam.__file__), 'py.typed'))
  assert {'transforms', 'SharpnessAware', 'cosine_increase', 'LeafRules', 'leaf_rules'} <= set(dir(rsam))
  meta = metadata.metadata('rsam')
  assert meta['License-Expression'] == 'Apache-2.0'
  assert 'LICENSE' in (meta.get_all('License-File') or [])
  requires = metadata.requires('rsam') or []
  assert sorted(r.split(';')[0].split('>')[0].split('=')[0].split('<')[0].strip() for r in requires
                if 'extra' not in r) == ['jax', 'optax']


def test_the_library_pages_example_runs_as_written(capsys):
  """The first Python block of docs/library.md, the wheel's long description (read from the installed
  package's metadata, so the floor venv runs it too), trains: its loss ends below the starting one."""
  page = metadata.metadata('rsam').get_payload()
  code = page.split('```python\n', 1)[1].split('```', 1)[0]
  assert 'rsam.transforms.rsam(' in code and len(code.strip().splitlines()) <= 12
  namespace = {}
  exec(compile(code, 'docs/library.md', 'exec'), namespace)  # pylint: disable=exec-used
  start = float(jnp.mean(namespace['y'] ** 2))  # the loss at w2 = 0
  final = float(capsys.readouterr().out.split('loss ')[1].split(',')[0])
  assert final < 0.5 * start, (final, start)
