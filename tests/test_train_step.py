"""What the training step hands the updater and the loss (rsam/training/train_step.py).

A spy updater records the batch the step built and the value of the loss function on it; the test
recomputes both from the raw batch with NumPy: mixup's ratio is read back from the mixed images, the
targets (one-hot, smoothed for the configured loss, then mixed with the same ratio) and the loss
(softmax or sigmoid cross-entropy) are then formed here. A step that ignores mixup's mixed targets or
images, the smoothing, or the configured loss fails.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from rsam.training import train_step
from rsam.updaters import UpdateResult

B, K, H = 8, 5, 3


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(K)(x.reshape((x.shape[0], -1)))


def spy(loss_fn, params, model_state, batch, key, step):
  """An updater that changes nothing and reports what it was given."""
  del step
  loss, (state, metrics) = loss_fn(params, model_state, batch, key)
  grads = jax.tree.map(jnp.zeros_like, params)
  return UpdateResult(loss, grads, state, {**metrics, 'seen_image': batch['image'],
                                           'seen_target': batch['target'],
                                           'seen_key': jax.random.uniform(key, ())})


@pytest.fixture(scope='module')
def setup(compile_cache):
  del compile_cache  # the steps compiled here load from the persistent cache in later modules and runs
  rng = np.random.default_rng(0)
  images = rng.normal(size=(B, H, H, 1)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 4, 0, 2, 4], np.int32)  # neighbours differ: mixing is visible
  model = Linear()
  params = model.init(jax.random.key(0), jnp.asarray(images))['params']
  return model, params, images, labels


def np_logits(model, params, images):
  return np.asarray(model.apply({'params': params}, jnp.asarray(images)), np.float64)


def np_loss(logits, targets, loss):
  if loss == 'softmax_xent':
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.mean(-(targets * logp).sum(-1)))
  p_log = -np.logaddexp(0, -logits)   # log sigmoid
  n_log = -np.logaddexp(0, logits)    # log(1 - sigmoid)
  return float(np.mean(-(targets * p_log + (1 - targets) * n_log).sum(-1)))


def run_step(setup, *, mixup_alpha, label_smoothing, loss, step):
  model, params, images, labels = setup
  config = ml_collections.ConfigDict({'seed': 3, 'loss': loss, 'label_smoothing': label_smoothing,
                                      'mixup_alpha': mixup_alpha})
  tx = optax.sgd(0.1)
  fn = jax.jit(train_step.make_train_step(config, model, spy, tx, K))
  state = {'step': jnp.asarray(step, jnp.int32), 'params': params, 'model_state': {},
           'opt_state': tx.init(params)}
  _, metrics = fn(state, {'image': jnp.asarray(images), 'label': jnp.asarray(labels)})
  return {k: np.asarray(v, np.float64) for k, v in metrics.items()}


@pytest.mark.parametrize('loss,smoothing', [('softmax_xent', 0.1), ('sigmoid_xent', 0.2)])
def test_step_feeds_the_loss_the_mixed_batch(setup, loss, smoothing):
  model, params, images, labels = setup
  m = run_step(setup, mixup_alpha=0.4, label_smoothing=smoothing, loss=loss, step=2)
  x = images.astype(np.float64)
  rolled = np.roll(x, 1, axis=0)
  # The ratio a of a·x + (1 − a)·roll(x), read back from the images the updater saw.
  diff = x - rolled
  a = float(np.median((m['seen_image'] - rolled)[np.abs(diff) > 0.5] / diff[np.abs(diff) > 0.5]))
  assert 0.05 < a < 0.95, f'pick another step: mixup ratio {a} is too close to no mixing'
  np.testing.assert_allclose(m['seen_image'], a * x + (1 - a) * rolled, atol=1e-5)
  onehot = np.eye(K)[labels]
  floor = smoothing if loss == 'sigmoid_xent' else smoothing / K
  t = onehot * (1 - smoothing) + floor
  expected_targets = a * t + (1 - a) * np.roll(t, 1, axis=0)
  np.testing.assert_allclose(m['seen_target'], expected_targets, atol=1e-5)
  expected_loss = np_loss(np_logits(model, params, m['seen_image']), expected_targets, loss)
  np.testing.assert_allclose(m['loss'], expected_loss, rtol=1e-5)
  logits = np_logits(model, params, m['seen_image'])
  np.testing.assert_allclose(m['accuracy'], np.mean(logits.argmax(-1) == expected_targets.argmax(-1)))


def test_step_without_mixup_feeds_the_smoothed_labels(setup):
  model, params, images, labels = setup
  m = run_step(setup, mixup_alpha=0.0, label_smoothing=0.3, loss='softmax_xent', step=0)
  np.testing.assert_array_equal(m['seen_image'], images)
  t = np.eye(K)[labels] * 0.7 + 0.3 / K
  np.testing.assert_allclose(m['seen_target'], t, atol=1e-6)
  np.testing.assert_allclose(m['loss'], np_loss(np_logits(model, params, images), t, 'softmax_xent'),
                             rtol=1e-5)


def test_each_step_draws_its_own_mixup_ratio_and_updater_key(setup):
  """The step's keys fold in the step number: the same ratio at every step would mix every batch alike."""
  model, params, images, labels = setup
  config = ml_collections.ConfigDict({'seed': 3, 'loss': 'softmax_xent', 'label_smoothing': 0.0,
                                      'mixup_alpha': 0.4})
  tx = optax.sgd(0.1)
  fn = jax.jit(train_step.make_train_step(config, model, spy, tx, K))
  seen = []
  for step in (2, 3):
    state = {'step': jnp.asarray(step, jnp.int32), 'params': params, 'model_state': {},
             'opt_state': tx.init(params)}
    _, m = fn(state, {'image': jnp.asarray(images), 'label': jnp.asarray(labels)})
    seen.append((np.asarray(m['seen_target']), float(m['seen_key'])))
  assert np.abs(seen[0][0] - seen[1][0]).max() > 1e-3, 'the same mixup ratio at steps 2 and 3'
  assert seen[0][1] != seen[1][1], 'the same updater key at steps 2 and 3'
