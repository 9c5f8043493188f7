"""Model registry: ``get_model(name, num_classes=..., dtype=..., **overrides)``.

Every model is a ``flax.linen.Module`` called as ``model.apply(vars, x, train=...)``
with NHWC float inputs; it returns float32 logits. ``dtype`` is the compute
dtype, parameters are always float32. BatchNorm statistics live in the
``'batch_stats'`` collection and dropout draws from the ``'dropout'`` rng.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from .resnet import ResNet
from .vit import ViT
from .wrn import WideResNet

__all__ = ["get_model", "MODEL_NAMES", "ResNet", "WideResNet", "ViT"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def _register(name: str):
  def wrap(fn):
    _REGISTRY[name] = fn
    return fn
  return wrap


def _build(cls: type[nn.Module], preset: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
  """Instantiate ``cls`` with ``preset`` updated by ``kwargs`` (fields checked)."""
  fields = [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
  unknown = [k for k in kwargs if k not in fields]
  if unknown:
    raise ValueError(
        f"unknown override {', '.join(map(repr, unknown))} for {cls.__name__}; "
        f"valid fields: {', '.join(fields)}")
  return cls(**{**preset, **kwargs})


# --- ResNets (CIFAR stem) ---------------------------------------------------
@_register("resnet18")
def _resnet18(**kw):
  return _build(ResNet, dict(stage_sizes=(2, 2, 2, 2), block="basic"), kw)


@_register("resnet50")
def _resnet50(**kw):
  return _build(ResNet, dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"), kw)


@_register("resnet_tiny")
def _resnet_tiny(**kw):
  return _build(ResNet, dict(stage_sizes=(1, 1, 1, 1), block="basic",
                             widths=(8, 16, 32, 64)), kw)


# --- Wide ResNets -------------------------------------------------------------
@_register("wrn28_10")
def _wrn28_10(**kw):
  return _build(WideResNet, dict(depth=28, widen_factor=10), kw)


@_register("wrn16_4")
def _wrn16_4(**kw):
  return _build(WideResNet, dict(depth=16, widen_factor=4), kw)


@_register("wrn_tiny")
def _wrn_tiny(**kw):
  return _build(WideResNet, dict(depth=10, widen_factor=1), kw)


# --- Vision Transformers ------------------------------------------------------
@_register("vit_s16")
def _vit_s16(**kw):
  return _build(ViT, dict(patch_size=16, hidden_size=384, depth=12, num_heads=6,
                          mlp_dim=1536), kw)


@_register("vit_b16")
def _vit_b16(**kw):
  return _build(ViT, dict(patch_size=16, hidden_size=768, depth=12, num_heads=12,
                          mlp_dim=3072), kw)


@_register("vit_l16")
def _vit_l16(**kw):  # beyond the paper (configs/vit_l16_rsam.py); ViT-L/16 of Dosovitskiy et al. 2021
  return _build(ViT, dict(patch_size=16, hidden_size=1024, depth=24, num_heads=16,
                          mlp_dim=4096), kw)


@_register("vit_ti4")
def _vit_ti4(**kw):
  return _build(ViT, dict(patch_size=4, hidden_size=192, depth=12, num_heads=3,
                          mlp_dim=768), kw)


@_register("vit_tiny")
def _vit_tiny(**kw):
  return _build(ViT, dict(patch_size=4, hidden_size=32, depth=2, num_heads=2,
                          mlp_dim=64), kw)


MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_model(name: str, *, num_classes: int, dtype=jnp.float32, **overrides) -> nn.Module:
  """Return the registered model ``name`` configured for ``num_classes``.

  ``overrides`` replace any field of the underlying module (e.g.
  ``dropout_rate=0.1``, ``pool='gap'``); unknown names raise ``ValueError``.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
  return _REGISTRY[name](num_classes=num_classes, dtype=dtype, **overrides)
