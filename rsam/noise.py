"""Kernel-wise Gaussian noise δ0 of R-SAM (Algorithm 1) and LPF-SGD."""
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from rsam import tree as T
from rsam.leaf_rules import FLAX, LeafRules
from rsam.tree import PyTree

# Added to the norm of 1-D leaves so an all-zero bias still gets a (zero-std) finite draw (official code).
VECTOR_NORM_EPS = 1e-16


def kernel_scale(leaf: jax.Array, output_axis: int = -1) -> jax.Array:
  """‖w_j‖ for every kernel j, broadcastable against ``leaf``, in float32 (float64 for float64 leaves).

  A kernel is one slice along ``output_axis`` (Flax's default, the last axis: Dense (in, out), Conv
  (kh, kw, in, out); PyTorch's is 0): for a leaf with ndim > 1, the norm of ``w[..., j]`` over all other
  axes. A 1-D (or 0-D) leaf — a bias or a normalisation scale — is one kernel: the norm of the whole
  vector plus 1e-16.
  """
  w = jnp.asarray(leaf, T.compute_dtype(jnp.result_type(leaf)))
  if w.ndim > 1:
    out = output_axis % w.ndim
    return jnp.sqrt(jnp.sum(jnp.square(w), axis=tuple(a for a in range(w.ndim) if a != out), keepdims=True))
  return jnp.sqrt(jnp.sum(jnp.square(w))) + VECTOR_NORM_EPS


def kernelwise_noise(key: jax.Array, params: PyTree, gamma, *, rules: LeafRules = FLAX,
                     mask: Optional[PyTree] = None) -> PyTree:
  """δ0 with δ0[..., j] = γ · ‖w_j‖ · z,  z ~ N(0, I)  (paper Algorithm 1, §3.2).

  The paper writes δ0 ~ N(0, γ² diag(‖w_j‖)); the official code (and this function) reads it as a
  per-element standard deviation γ‖w_j‖. Kernel j of a leaf is its slice along ``rules.output_axis``
  (``rsam.leaf_rules``; Flax's last axis by default). The official code reused one key for every leaf,
  so leaves of equal shape got identical noise. Here each leaf takes its own, non-overlapping segment of
  ONE standard normal draw of all parameters (in tree-flatten order): independent across leaves like a
  key per leaf, but one random-number kernel instead of one per leaf (XLA compiles a Threefry kernel per
  call, which made the R-SAM step several times slower to compile than SAM's).

  Args:
    key: a PRNG key.
    params: the parameters w.
    gamma: γ, a float or a scalar array.
    rules: which axis of a kernel indexes its outputs (``rsam.leaf_rules``).
    mask: None, or a pytree of bools like ``params`` (``rsam.updaters.resolve_mask``): leaves marked False
      get no noise (zeros; they still take their segment of the draw).

  Returns:
    δ0, shaped like ``params``, in float32 (float64 for float64 leaves).
  """
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = [leaf for _, leaf in paths_and_leaves]
  keep = [True] * len(leaves) if mask is None else treedef.flatten_up_to(mask)
  sizes = [math.prod(jnp.shape(w)) for w in leaves]
  dtype = jnp.result_type(*[T.compute_dtype(jnp.result_type(w)) for w in leaves]) if leaves else jnp.float32
  z = jax.random.normal(key, (sum(sizes),), dtype)
  offsets = [0]
  for size in sizes:
    offsets.append(offsets[-1] + size)
  out = []
  for (path, w), start, stop, k in zip(paths_and_leaves, offsets[:-1], offsets[1:], keep):
    axis = rules.axis_of(path, w) if jnp.ndim(w) > 1 else -1
    delta = gamma * kernel_scale(w, axis) * z[start:stop].reshape(jnp.shape(w))
    out.append(_masked(delta, k))
  return treedef.unflatten(out)


def _masked(x: jax.Array, keep) -> jax.Array:
  """``x`` where ``keep`` (a bool or a bool array broadcastable to x), zeros elsewhere."""
  if isinstance(keep, (bool, np.bool_)):
    return x if keep else jnp.zeros_like(x)
  return jnp.where(keep, x, jnp.zeros_like(x))
