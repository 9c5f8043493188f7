"""Mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412) on a device batch: JAX, no TensorFlow."""
import jax
import jax.numpy as jnp


def mixup(key, images, labels, *, alpha: float, dominant_first: bool = False):
  """Mixup (Zhang et al. 2018) on a device batch, as in big_vision `utils.mixup`.

  Draws ONE ratio a ~ Beta(alpha, alpha) for the whole batch (big_vision's default; per-example
  ratios are "usually a bad idea" there) and mixes every example with its neighbour,
  `a * x + (1 - a) * jnp.roll(x, 1, axis=0)`, for images and (one-hot / soft, float [B, K])
  labels alike, so mixed labels still sum to 1. `alpha <= 0` returns the inputs unchanged.
  `dominant_first=True` uses max(a, 1 - a) as current big_vision does. `alpha` and
  `dominant_first` must be static under jit (e.g. `jax.jit(mixup, static_argnames="alpha")`).
  Returns (mixed_images, mixed_labels) in the input dtypes.
  """
  if alpha <= 0:
    return images, labels
  a = jax.random.beta(key, alpha, alpha)
  if dominant_first:
    a = jnp.maximum(a, 1.0 - a)

  def mix(x):
    w = a.astype(x.dtype)
    return w * x + (1 - w) * jnp.roll(x, 1, axis=0)

  return mix(images), mix(labels)
