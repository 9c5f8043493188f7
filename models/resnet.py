"""CIFAR-style ResNets (He et al. 2016) in Flax linen.

The CIFAR variant follows the widely used kuangliu/pytorch-cifar layout: a 3x3
stride-1 stem (no max-pool), four stages with stride 2 at stages 2-4, projection
shortcuts (1x1 conv + BN) where the shape changes, global average pooling and a
Dense head. Published parameter counts at 10 classes (BN scale/bias included):
ResNet-18 11,173,962; ResNet-50 23,520,842.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

# He-normal with fan_out, as torch.nn.init.kaiming_normal_(mode='fan_out').
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_and_norm(dtype, train: bool):
  """The bias-free He-initialised conv and the BatchNorm shared by the ResNets and WideResNets."""
  conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=dtype,
                           param_dtype=jnp.float32)
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                           epsilon=BN_EPSILON, dtype=dtype, param_dtype=jnp.float32)
  return conv, norm


def _pad(kernel: int):
  """Symmetric PyTorch-style padding (k // 2 on each side)."""
  p = kernel // 2
  return ((p, p), (p, p))


class BasicBlock(nn.Module):
  """Two 3x3 convs, post-activation (ResNet-18/34)."""

  filters: int
  strides: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x):
    out_ch = self.filters * self.expansion
    y = self.conv(self.filters, (3, 3), self.strides, padding=_pad(3), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), 1, padding=_pad(3), name="conv2")(y)
    y = self.norm(name="bn2")(y)
    if x.shape[-1] != out_ch or self.strides != 1:
      x = self.conv(out_ch, (1, 1), self.strides, padding="VALID", name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 x4 bottleneck, post-activation (ResNet-50+)."""

  filters: int
  strides: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x):
    out_ch = self.filters * self.expansion
    y = self.conv(self.filters, (1, 1), 1, padding="VALID", name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), self.strides, padding=_pad(3), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(out_ch, (1, 1), 1, padding="VALID", name="conv3")(y)
    y = self.norm(name="bn3")(y)
    if x.shape[-1] != out_ch or self.strides != 1:
      x = self.conv(out_ch, (1, 1), self.strides, padding="VALID", name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
  """CIFAR ResNet: 3x3 stem, no max-pool, ``len(stage_sizes)`` stages.

  ``block`` is ``'basic'`` or ``'bottleneck'``; ``widths`` are the per-stage
  base widths (bottleneck output = 4x). Works on any input >= 8x8 with any
  number of channels.
  """

  stage_sizes: Sequence[int]
  num_classes: int
  block: str = "basic"
  widths: Sequence[int] = (64, 128, 256, 512)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.block not in BLOCKS:
      raise ValueError(f"unknown block {self.block!r}; choose one of: {', '.join(BLOCKS)}")
    if len(self.widths) != len(self.stage_sizes):
      raise ValueError("widths and stage_sizes must have the same length")
    block_cls = BLOCKS[self.block]
    conv, norm = conv_and_norm(self.dtype, train)

    x = jnp.asarray(x, self.dtype)
    x = conv(self.widths[0], (3, 3), 1, padding=_pad(3), name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    for i, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n_blocks):
        strides = 2 if (i > 0 and j == 0) else 1
        x = block_cls(width, strides, conv=conv, norm=norm,
                      name=f"stage{i + 1}_block{j + 1}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 name="head")(x)
    return jnp.asarray(x, jnp.float32)
