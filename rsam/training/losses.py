"""Classification losses and the ``loss_fn`` every updater consumes.

Targets are soft (one-hot, smoothed, possibly mixed up) so one loss serves plain and mixup training:
  softmax_xent: −Σ_k t_k log softmax(z)_k, with smoothing t = y(1 − s) + s/K
  sigmoid_xent: Σ_k BCE(z_k, t_k), with the official R-SAM/big_vision smoothing t = y(1 − s) + s
"""
import jax
import jax.numpy as jnp
import optax

from rsam.errors import ConfigError

LOSSES = ('softmax_xent', 'sigmoid_xent')


def make_targets(labels, num_classes: int, loss: str, label_smoothing: float):
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if not label_smoothing:
    return onehot
  floor = label_smoothing if loss == 'sigmoid_xent' else label_smoothing / num_classes
  return onehot * (1.0 - label_smoothing) + floor


def per_example_loss(logits, targets, loss: str):
  if loss == 'softmax_xent':
    return optax.softmax_cross_entropy(logits, targets)
  if loss == 'sigmoid_xent':
    return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)
  raise ConfigError(f"config.loss={loss!r}; choose one of: {', '.join(LOSSES)}")


def make_loss_fn(model, loss: str):
  """loss_fn(params, model_state, batch, rng) -> (mean loss, (new model_state, {'accuracy'})).

  ``batch`` holds 'image' and soft 'target'; ``model_state`` is the non-trainable collections
  (e.g. {'batch_stats': ...}), updated by this training-mode pass; ``rng`` feeds dropout.
  """
  def loss_fn(params, model_state, batch, rng):
    variables = {'params': params, **model_state}
    logits, new_state = model.apply(variables, batch['image'], train=True, mutable=list(model_state),
                                    rngs={'dropout': rng})
    logits = logits.astype(jnp.float32)
    value = per_example_loss(logits, batch['target'], loss).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(batch['target'], -1))
    return value, (dict(new_state), {'accuracy': accuracy})
  return loss_fn
