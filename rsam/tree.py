"""Pytree arithmetic in float32 or wider, shared by every updater.

Norms, inner products and perturbations are computed in ``compute_dtype`` of each leaf: float32 for
bfloat16/float16/float32 leaves, float64 for float64 leaves (under ``jax_enable_x64``). A bfloat16 model
still gets an exact ascent direction, and a float64 one loses no precision. What leaves the library (the
gradient handed to the base optimizer, the perturbed parameters) is cast back to each parameter's dtype
(``cast_like``), so an optimizer's state keeps its dtypes from step to step.
"""
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any

# The small constant of the JAX reference codes (google-research/sam, big_vision GSAM, official R-SAM).
EPS = 1e-12

# optax.tree (optax >= 0.2.4) or optax.tree_utils (older): the same functions.
_tree_norm = getattr(getattr(optax, 'tree', None), 'norm', None) or optax.tree_utils.tree_l2_norm
_tree_vdot = getattr(getattr(optax, 'tree', None), 'vdot', None) or optax.tree_utils.tree_vdot


def compute_dtype(dtype) -> jnp.dtype:
  """The dtype the library computes a leaf of ``dtype`` in: float32, or the leaf's dtype if wider."""
  return jnp.promote_types(dtype, jnp.float32)


def widen(tree: PyTree) -> PyTree:
  """Every leaf in its ``compute_dtype`` (float32 leaves are returned as they are)."""
  return jax.tree.map(lambda x: jnp.asarray(x, compute_dtype(jnp.result_type(x))), tree)


def cast_like(tree: PyTree, like: PyTree) -> PyTree:
  """Each leaf of ``tree`` in the dtype of the matching leaf of ``like`` (a no-op where they agree)."""
  return jax.tree.map(lambda x, p: jnp.asarray(x, jnp.result_type(p)), tree, like)


def norm(tree: PyTree) -> jax.Array:
  """Global L2 norm ‖x‖ over all leaves, in float32 (float64 for float64 leaves)."""
  return _tree_norm(widen(tree))


def vdot(a: PyTree, b: PyTree) -> jax.Array:
  """Global inner product ⟨a, b⟩ over all leaves, in float32 (float64 for float64 leaves)."""
  return _tree_vdot(widen(a), widen(b))


def cosine(a: PyTree, b: PyTree, eps: float = EPS) -> jax.Array:
  """⟨a, b⟩ / (‖a‖‖b‖ + ε): 0, not NaN, when either is zero."""
  return vdot(a, b) / (norm(a) * norm(b) + eps)


def add_scaled(params: PyTree, scale, direction: PyTree) -> PyTree:
  """params + scale · direction, computed in float32 (or wider) and cast back to each parameter's dtype."""
  def add(p, d):
    dtype = jnp.promote_types(compute_dtype(jnp.result_type(p)), jnp.result_type(d))
    return (jnp.asarray(p, dtype) + scale * jnp.asarray(d, dtype)).astype(jnp.result_type(p))
  return jax.tree.map(add, params, direction)
