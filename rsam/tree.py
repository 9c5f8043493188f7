"""Pytree arithmetic in float32, shared by every updater.

Norms, inner products and perturbations are computed in float32 whatever dtype the model computes in, so
a bfloat16 model still gets an exact ascent direction (parameters are kept in float32 by the models).
"""
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any

# The small constant of the JAX reference codes (google-research/sam, big_vision GSAM, official R-SAM).
EPS = 1e-12


def to_f32(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def norm(tree: PyTree) -> jax.Array:
  """Global L2 norm ‖x‖ over all leaves, in float32."""
  return optax.tree.norm(to_f32(tree))


def vdot(a: PyTree, b: PyTree) -> jax.Array:
  """Global inner product ⟨a, b⟩ over all leaves, in float32."""
  return optax.tree.vdot(to_f32(a), to_f32(b))


def cosine(a: PyTree, b: PyTree, eps: float = EPS) -> jax.Array:
  """⟨a, b⟩ / (‖a‖‖b‖ + ε): 0, not NaN, when either is zero."""
  return vdot(a, b) / (norm(a) * norm(b) + eps)


def add_scaled(params: PyTree, scale, direction: PyTree) -> PyTree:
  """params + scale · direction, computed in float32 and cast back to each parameter's dtype."""
  return jax.tree.map(
      lambda p, d: (jnp.asarray(p, jnp.float32) + scale * jnp.asarray(d, jnp.float32)).astype(p.dtype),
      params, direction)


def mean_over_leading_axis(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)
