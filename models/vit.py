"""Vision Transformer (Dosovitskiy et al. 2021) in Flax linen.

Patch-embedding conv, learned position embedding (class token included when
``pool='token'``), pre-LN encoder blocks (MHA + GELU MLP), final LayerNorm,
optional tanh pre-logits layer and a zero-initialised head. Published counts
(1000 classes, 224 px, token pool, no representation layer): ViT-B/16
86,567,656; ViT-S/16 22,050,664.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

_xavier = nn.initializers.xavier_uniform()
_tiny_normal = nn.initializers.normal(stddev=1e-6)
_LN_EPS = 1e-6


class MlpBlock(nn.Module):
  """Dense -> GELU -> dropout -> Dense -> dropout."""

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    width = x.shape[-1]
    dense = lambda f, name: nn.Dense(  # noqa: E731
        f, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_xavier,
        bias_init=_tiny_normal, name=name)
    x = nn.gelu(dense(self.mlp_dim, "fc1")(x))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = dense(width, "fc2")(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + MHA(LN(x)); x + MLP(LN(x))."""

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, param_dtype=jnp.float32,
                     name="ln1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=_xavier, broadcast_dropout=False,
        dropout_rate=self.attention_dropout_rate, name="attn")(y, deterministic=not train)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x = x + y
    y = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, param_dtype=jnp.float32,
                     name="ln2")(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, dtype=self.dtype, name="mlp")(y, train=train)
    return x + y


class ViT(nn.Module):
  """ViT classifier; position embeddings are sized from the input at init."""

  num_classes: int
  patch_size: int = 16
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  pool: str = "token"
  representation_size: Optional[int] = None
  head_bias_init: float = 0.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.pool not in ("token", "gap"):
      raise ValueError(f"unknown pool {self.pool!r}; choose one of: token, gap")
    x = jnp.asarray(x, self.dtype)
    p = self.patch_size
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                dtype=self.dtype, param_dtype=jnp.float32, name="embedding")(x)
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c)
    if self.pool == "token":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, c), jnp.float32)
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], axis=1)
    posemb = self.param("pos_embedding", nn.initializers.normal(stddev=c ** -0.5),
                        (1, x.shape[1], c), jnp.float32)
    x = x + posemb.astype(x.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate,
                       self.attention_dropout_rate, dtype=self.dtype,
                       name=f"encoderblock_{i}")(x, train=train)
    x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, param_dtype=jnp.float32,
                     name="encoder_norm")(x)

    x = x[:, 0] if self.pool == "token" else jnp.mean(x, axis=1)
    if self.representation_size is not None:
      x = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype,
                           param_dtype=jnp.float32, name="pre_logits")(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=nn.initializers.zeros,
                 bias_init=nn.initializers.constant(self.head_bias_init), name="head")(x)
    return jnp.asarray(x, jnp.float32)
