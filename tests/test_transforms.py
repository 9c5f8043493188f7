"""rsam.transforms against the updaters they adapt (bit for bit, over several steps) and optax.contrib.sam."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import rsam
from rsam import transforms
from rsam.training import factory

D, K, STEPS = 5, 3, 3
LR_MAX, LR_MIN = 0.1, 0.01
# Small values of every field, so that each one changes the update in three steps: ρ tied to the
# learning rate with a warm-up branch for the first two steps, γ rising on a cosine.
CONFIGS = {
    'sam': dict(rho=0.3),
    'asam': dict(rho=0.5),
    'rsam': dict(rho_max=0.5, rho_min=0.1, rho_warmup_steps=2, lam=2.0, gamma=0.05, gamma_growth=5.0),
    'gsam': dict(rho_max=0.5, rho_min=0.1, alpha=0.4),
    'rgsam': dict(rho_max=0.5, rho_min=0.1, lam=2.0, gamma=0.05, gamma_growth=5.0, alpha=0.4),
}


class Net(nn.Module):
  """BatchNorm (model state) and dropout (a key): the two things a transform has to carry."""
  @nn.compact
  def __call__(self, x, *, train):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(8)(x))
    x = nn.Dropout(0.25, deterministic=not train)(nn.relu(x))
    return nn.Dense(K)(x)


MODEL = Net()


def loss_fn(params, model_state, batch, rng):
  """The updaters' convention: (loss, (new model state, metrics))."""
  out, new_state = MODEL.apply({'params': params, **model_state}, batch['x'], train=True,
                               mutable=['batch_stats'], rngs={'dropout': rng})
  return jnp.mean((out - batch['y']) ** 2), (new_state, {})


def grad_fn_of(model_state, batch=None):
  """What a user writes for the transforms: the gradient at p, and the loss and BatchNorm statistics."""
  def grad_fn(p, key, *maybe_batch):
    (loss, (new_state, _)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        p, model_state, maybe_batch[0] if maybe_batch else batch, key)
    return g, (loss, new_state)
  return grad_fn


def setup(batch_size=16, seed=0):
  rng = np.random.default_rng(seed)
  batches = [{'x': jnp.asarray(rng.normal(size=(batch_size, D)), jnp.float32),
              'y': jnp.asarray(rng.normal(size=(batch_size, K)), jnp.float32)} for _ in range(STEPS)]
  variables = MODEL.init(jax.random.key(seed), batches[0]['x'], train=False)
  return variables['params'], {'batch_stats': variables['batch_stats']}, batches


def lr_schedule():
  return optax.cosine_decay_schedule(LR_MAX, STEPS + 1, alpha=LR_MIN / LR_MAX)


def base_optimizer():
  """A base chain: clipping and AdamW with the learning-rate schedule."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr_schedule(), weight_decay=1e-2))


def updater_and_transform(name, base, **transform_kw):
  """The repo's updater built by its factory, and the transform a user builds from the same values."""
  cfg = factory.updater_config(name, **CONFIGS[name])
  sched = lr_schedule()
  updater = factory.make_updater(cfg, total_steps=STEPS + 1, lr_schedule=sched, lr_max=LR_MAX, lr_min=LR_MIN)
  kw = {}
  if cfg.rho_schedule == 'lr_tied':
    kw['rho'] = rsam.lr_tied_rho(sched, rho_max=cfg.rho_max, rho_min=cfg.rho_min, lr_max=LR_MAX,
                                 lr_min=LR_MIN, warmup_steps=cfg.rho_warmup_steps, one_based=True)
  else:
    kw['rho'] = cfg.rho
  if 'gamma' in cfg:
    kw.update(gamma=rsam.cosine_increase(cfg.gamma, cfg.gamma_growth, STEPS + 1, one_based=True), lam=cfg.lam)
  if 'alpha' in cfg:
    kw['alpha'] = cfg.alpha
  return updater, getattr(transforms, name)(base, **kw, **transform_kw)


def run_updater(updater, params, model_state, batches, keys, base):
  """The repo's train step: the updater's gradient to the base optimizer; statistics of the first pass."""
  @jax.jit
  def step(params, model_state, opt_state, batch, key, t):
    r = updater(loss_fn, params, model_state, batch, key, t)
    updates, opt_state = base.update(r.grads, opt_state, params)
    return optax.apply_updates(params, updates), r.model_state, opt_state, r.loss

  opt_state, out = base.init(params), []
  for t, (batch, key) in enumerate(zip(batches, keys)):
    params, model_state, opt_state, loss = step(params, model_state, opt_state, batch, key, t)
    out.append((params, model_state, loss))
  return out


def run_transform(tx, params, model_state, batches, keys):
  """An optax loop: the transform gets grad_fn (and the step's key when ``keys`` is given)."""
  @jax.jit
  def step(params, model_state, opt_state, batch, key):
    extra = {} if key is None else {'key': key}
    updates, opt_state = tx.update(None, opt_state, params, grad_fn=grad_fn_of(model_state, batch), **extra)
    loss, new_state = opt_state.aux
    return optax.apply_updates(params, updates), new_state, opt_state, loss

  opt_state, out = tx.init(params), []
  for batch, key in zip(batches, keys):
    params, model_state, opt_state, loss = step(params, model_state, opt_state, batch, key)
    out.append((params, model_state, loss))
  assert int(opt_state.sam_step) == len(batches)
  return out


def assert_runs_equal(a, b):
  for t, (x, y) in enumerate(zip(a, b)):
    for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=f'step {t}')


def init_aux(model_state):
  return (jnp.zeros((), jnp.float32), model_state)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_transform_equals_updater_bit_for_bit(name):
  """Parameters (through clip + AdamW), BatchNorm statistics and loss of three steps. SAM, ASAM and GSAM
  get the step's key through update(key=...); R-SAM and R-GSAM derive it from the transform's key and the
  step count in its state, fold_in(key, t), which the repo's updater receives."""
  params, model_state, batches = setup()
  base = base_optimizer()
  keys_from_state = name in ('rsam', 'rgsam')
  updater, tx = updater_and_transform(name, base, init_aux=init_aux(model_state), key=7)
  keys = [jax.random.fold_in(jax.random.key(7), t) if keys_from_state else jax.random.key(100 + t)
          for t in range(STEPS)]
  expected = run_updater(updater, params, model_state, batches, keys, base)
  got = run_transform(tx, params, model_state, batches, [None] * STEPS if keys_from_state else keys)
  assert_runs_equal(got, expected)
  # Every step moved the parameters: the comparison above compares something.
  assert all(np.abs(np.asarray(a[0]['Dense_0']['kernel'] - params['Dense_0']['kernel'])).max() > 1e-4
             for a in expected)


def test_m_sharpness_transform_equals_per_group_updater():
  """m-sharpness: the batch goes to update(batch=...) and grad_fn(params, key, batch); a group of m = 4
  on each of 2 devices (each group draws its own noise, the statistics are averaged over groups)."""
  params, model_state, batches = setup(batch_size=8)
  mesh = Mesh(np.array(jax.devices()[:2]), ('data',))
  batches = [jax.device_put(b, NamedSharding(mesh, P('data'))) for b in batches[:2]]
  fields = dict(rho=0.3, gamma=0.05, lam=2.0)
  base = optax.sgd(0.1, momentum=0.9)
  updater = rsam.PerGroup(rsam.SharpnessAware(**fields), m=4, mesh=mesh)
  tx = transforms.rsam(base, **fields, m=4, mesh=mesh, init_aux=init_aux(model_state), key=None)
  keys = [jax.random.key(100 + t) for t in range(len(batches))]
  expected = run_updater(updater, params, model_state, batches, keys, base)

  @jax.jit
  def step(params, model_state, opt_state, batch, key):
    updates, opt_state = tx.update(None, opt_state, params, grad_fn=grad_fn_of(model_state), key=key,
                                   batch=batch)
    loss, new_state = opt_state.aux
    return optax.apply_updates(params, updates), new_state, opt_state, loss

  opt_state, got = tx.init(params), [(params, model_state)]
  for batch, key in zip(batches, keys):
    params_t, state_t, opt_state, loss = step(*got[-1][:2], opt_state, batch, key)
    got.append((params_t, state_t, loss))
  assert_runs_equal(got[1:], expected)


def test_sam_matches_optax_contrib_sam():
  """Where SAM overlaps optax.contrib.sam (opaque mode, adv_optimizer = normalize + sgd(ρ)): the same
  steps, up to ε = 1e-12 in the norm and the order of float operations."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, D)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(1).normal(size=(16, K)), jnp.float32)
  params = {'w': jnp.asarray(np.random.default_rng(2).normal(size=(D, K)), jnp.float32), 'b': jnp.zeros(K)}
  loss = lambda p: jnp.mean((jnp.tanh(x @ p['w'] + p['b']) - y) ** 2)
  rho = 0.2
  base = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.05))
  ours = transforms.sam(base, rho=rho)
  theirs = optax.contrib.sam(base, optax.chain(optax.contrib.normalize(), optax.sgd(rho)), opaque_mode=True)

  def train(tx, steps=5):
    def step(carry, _):
      p, state = carry
      updates, state = tx.update(jax.grad(loss)(p), state, p, grad_fn=lambda q, _: jax.grad(loss)(q))
      return (optax.apply_updates(p, updates), state), None
    return jax.jit(lambda: jax.lax.scan(step, (params, tx.init(params)), length=steps)[0][0])()

  p_ours, p_theirs, p_plain = train(ours), train(theirs), train(base)
  for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # SAM is not the base optimizer alone: the comparison sees the ascent.
  assert np.abs(np.asarray(p_ours['w'] - p_plain['w'])).max() > 1e-3


def test_transform_composes_inside_an_outer_chain():
  """The transform as one link of an optax chain: the chain forwards grad_fn; the result is the same."""
  params, model_state, batches = setup()
  tx = transforms.gsam(optax.sgd(0.1), rho=0.3, alpha=0.4, init_aux=init_aux(model_state))
  outer = optax.chain(tx, optax.scale(0.5))
  grad_fn = grad_fn_of(model_state, batches[0])
  key = jax.random.key(0)

  @jax.jit
  def both(params):
    u_tx, _ = tx.update(None, tx.init(params), params, grad_fn=grad_fn, key=key)
    u_outer, state = outer.update(None, outer.init(params), params, grad_fn=grad_fn, key=key)
    return u_tx, u_outer, optax.tree.get(state, 'aux')[0]

  u_tx, u_outer, first_loss = both(params)
  for a, b in zip(jax.tree.leaves(u_tx), jax.tree.leaves(u_outer)):
    np.testing.assert_array_equal(0.5 * np.asarray(a), np.asarray(b))
  assert first_loss > 0  # the first pass's loss, found inside the chain


def test_bad_calls_say_what_to_do():
  params, model_state, batches = setup()
  grad_fn = grad_fn_of(model_state, batches[0])
  tx = transforms.rsam(optax.sgd(0.1), rho=0.1, gamma=0.01, lam=2.0, key=0)
  state = tx.init(params)
  trace = lambda f: jax.eval_shape(f)  # the checks run while tracing: nothing is computed
  with pytest.raises(ValueError, match='needs grad_fn='):
    trace(lambda: tx.update(None, state, params))
  with pytest.raises(ValueError, match='pass init_aux='):  # grad_fn returns (grads, aux), no init_aux
    trace(lambda: tx.update(None, state, params, grad_fn=grad_fn))
  with_aux = transforms.rsam(optax.sgd(0.1), rho=0.1, gamma=0.01, lam=2.0, init_aux=model_state, key=0)
  with pytest.raises(ValueError, match='unlike init_aux'):
    trace(lambda: with_aux.update(None, with_aux.init(params), params, grad_fn=grad_fn))
  with pytest.raises(ValueError, match='needs mesh='):
    transforms.sam(optax.sgd(0.1), rho=0.1, m=4)
  grouped = transforms.sam(optax.sgd(0.1), rho=0.1, m=4, mesh=Mesh(np.array(jax.devices()), ('data',)))
  with pytest.raises(ValueError, match='pass batch='):
    trace(lambda: grouped.update(None, grouped.init(params), params, grad_fn=grad_fn))
