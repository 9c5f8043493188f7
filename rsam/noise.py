"""Kernel-wise Gaussian noise δ0 of R-SAM (Algorithm 1) and LPF-SGD."""
import math

import jax
import jax.numpy as jnp

from rsam.tree import PyTree

# Added to the norm of 1-D leaves so an all-zero bias still gets a (zero-std) finite draw (official code).
VECTOR_NORM_EPS = 1e-16


def kernel_scale(leaf: jax.Array) -> jax.Array:
  """‖w_j‖ for every kernel j, broadcastable against `leaf`.

  A kernel is one slice along the LAST axis (Flax's output features): for a leaf with ndim > 1 the norm
  of ``w[..., j]`` over all other axes. A 1-D (or 0-D) leaf — a bias or a LayerNorm scale — is one
  kernel: the norm of the whole vector plus 1e-16.
  """
  w = jnp.asarray(leaf, jnp.float32)
  if w.ndim > 1:
    return jnp.sqrt(jnp.sum(jnp.square(w), axis=tuple(range(w.ndim - 1)), keepdims=True))
  return jnp.sqrt(jnp.sum(jnp.square(w))) + VECTOR_NORM_EPS


def kernelwise_noise(key: jax.Array, params: PyTree, gamma) -> PyTree:
  """δ0 with δ0[..., j] = γ · ‖w_j‖ · z,  z ~ N(0, I)  (paper Algorithm 1, §3.2).

  The paper writes δ0 ~ N(0, γ² diag(‖w_j‖)); the official code (and this function) reads it as a
  per-element standard deviation γ‖w_j‖. The official code reused one key for every leaf, so leaves of
  equal shape got identical noise. Here each leaf takes its own, non-overlapping segment of ONE standard
  normal draw of all parameters (in tree-flatten order): independent across leaves like a key per leaf,
  but one random-number kernel instead of one per leaf (XLA compiles a Threefry kernel per call, which
  made the R-SAM step several times slower to compile than SAM's). Returned in float32.
  """
  leaves, treedef = jax.tree.flatten(params)
  sizes = [math.prod(jnp.shape(w)) for w in leaves]
  z = jax.random.normal(key, (sum(sizes),), jnp.float32)
  offsets = [0]
  for size in sizes:
    offsets.append(offsets[-1] + size)
  return treedef.unflatten([
      gamma * kernel_scale(w) * z[start:stop].reshape(jnp.shape(w))
      for w, start, stop in zip(leaves, offsets[:-1], offsets[1:])])
