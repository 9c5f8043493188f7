"""Wide Residual Networks (Zagoruyko & Komodakis 2016) in Flax linen.

WRN-d-k with pre-activation blocks (BN-ReLU-conv), stage widths 16, 16k, 32k,
64k, (d - 4) / 6 blocks per stage, optional dropout between the two convs, and a
bias-free 1x1 conv shortcut (no BN) where the shape changes, as in the common
PyTorch implementation (xternalz/WideResNet-pytorch). Parameter counts at 10
classes: WRN-28-10 36,479,194; WRN-16-4 2,748,890.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from .resnet import conv_and_norm

_PAD3 = ((1, 1), (1, 1))


class WideBasicBlock(nn.Module):
  """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3."""

  filters: int
  strides: int
  dropout_rate: float
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x, *, train: bool):
    preact = nn.relu(self.norm(name="bn1")(x))
    if x.shape[-1] != self.filters or self.strides != 1:
      # The shortcut sees the pre-activated input when the shape changes.
      shortcut = self.conv(self.filters, (1, 1), self.strides, padding="VALID",
                           name="shortcut_conv")(preact)
    else:
      shortcut = x
    y = self.conv(self.filters, (3, 3), self.strides, padding=_PAD3, name="conv1")(preact)
    y = nn.relu(self.norm(name="bn2")(y))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = self.conv(self.filters, (3, 3), 1, padding=_PAD3, name="conv2")(y)
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-``depth``-``widen_factor`` for small (CIFAR-size) images."""

  num_classes: int
  depth: int = 28
  widen_factor: int = 10
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if (self.depth - 4) % 6 != 0 or self.depth < 10:
      raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {self.depth}")
    n = (self.depth - 4) // 6
    widths = [16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor]
    conv, norm = conv_and_norm(self.dtype, train)

    x = jnp.asarray(x, self.dtype)
    x = conv(16, (3, 3), 1, padding=_PAD3, name="stem_conv")(x)
    for i, width in enumerate(widths):
      for j in range(n):
        strides = 2 if (i > 0 and j == 0) else 1
        x = WideBasicBlock(width, strides, self.dropout_rate, conv=conv, norm=norm,
                           name=f"stage{i + 1}_block{j + 1}")(x, train=train)
    x = nn.relu(norm(name="final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 bias_init=nn.initializers.zeros, name="head")(x)
    return jnp.asarray(x, jnp.float32)
