"""rsam: sharpness-aware updaters (SAM, ASAM, R-SAM, GSAM, R-GSAM, LPF-SGD) behind one interface.

    updater = rsam.make_updater(rsam.updater_config('rsam'), total_steps=..., lr_schedule=..., ...)
    result = updater(loss_fn, params, model_state, batch, key, step)   # -> UpdateResult
    updates, opt_state = optax_tx.update(result.grads, opt_state, params)

or, in any optax training loop, as a transform (rsam/transforms.py):

    tx = rsam.transforms.rsam(optax.adamw(1e-3), rho=0.05, gamma=5e-4, lam=2.0)
    updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)

A plain install needs JAX and optax only. The config factory (``make_updater``, ``updater_config``,
``validate``, ``DEFAULTS``, ``NAMES``) reads ml_collections configs, from the ``train`` extra: it is
imported when first used.
"""
import importlib

# Every name loads its module on first use (PEP 562), so `import rsam` alone imports no JAX: train.py's
# flag errors answer before JAX starts, and `rsam.transforms` loads jax and optax only when used.
_LAZY = {
    'ConfigError': 'rsam.errors', 'PerGroup': 'rsam.msharpness',
    'kernel_scale': 'rsam.noise', 'kernelwise_noise': 'rsam.noise', 'cosine_increase': 'rsam.schedules',
    'lr_tied_rho': 'rsam.schedules', 'LPFSGD': 'rsam.updaters', 'Plain': 'rsam.updaters',
    'SharpnessAware': 'rsam.updaters', 'UpdateResult': 'rsam.updaters',
}

# The one version number (pyproject.toml reads it; CHANGELOG.md has a section per version).
__version__ = '0.1.0'

_FACTORY = ('DEFAULTS', 'NAMES', 'make_updater', 'updater_config', 'validate')

__all__ = [
    'ConfigError', 'PerGroup', 'kernel_scale', 'kernelwise_noise', 'cosine_increase', 'lr_tied_rho',
    'LPFSGD', 'Plain', 'SharpnessAware', 'UpdateResult', 'transforms', *_FACTORY,
]


def __getattr__(name):
  if name in _FACTORY:
    from rsam import factory
    return getattr(factory, name)
  if name == 'transforms':
    return importlib.import_module('rsam.transforms')
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
