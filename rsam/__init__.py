"""rsam: sharpness-aware optimizers for JAX and optax (SAM, ASAM, R-SAM, GSAM, R-GSAM, LPF-SGD).

In any optax training loop, as a wrapper around the base optimizer (rsam/transforms.py):

    tx = rsam.transforms.rsam(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
                              rho=0.05, gamma=5e-4, lam=2.0, key=0)
    opt_state = tx.init(params)
    grad_fn = lambda p, key: jax.grad(loss)(p, batch)    # the gradient of this batch's loss at p
    updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)

or as an updater, a function that returns the gradient to hand to any base optimizer (rsam/updaters.py):

    updater = rsam.SharpnessAware(rho=0.05, gamma=5e-4, lam=2.0)
    result = updater(loss_fn, params, model_state, batch, key, step)   # -> UpdateResult
    updates, opt_state = base.update(result.grads, opt_state, params)

The library needs JAX and optax only. The training repo's config factory lives in rsam/training/ (a
checkout), not in this package.
"""
import importlib

# Every name loads its module on first use (PEP 562), so `import rsam` alone imports no JAX: train.py's
# flag errors answer before JAX starts, and `rsam.transforms` loads jax and optax only when used.
_LAZY = {
    'ConfigError': 'rsam.errors', 'PerGroup': 'rsam.msharpness',
    'kernel_scale': 'rsam.noise', 'kernelwise_noise': 'rsam.noise', 'cosine_increase': 'rsam.schedules',
    'lr_tied_rho': 'rsam.schedules', 'LPFSGD': 'rsam.updaters', 'Plain': 'rsam.updaters',
    'SharpnessAware': 'rsam.updaters', 'UpdateResult': 'rsam.updaters', 'LeafRules': 'rsam.leaf_rules',
}
_SUBMODULES = ('transforms', 'leaf_rules', 'schedules', 'updaters', 'noise', 'msharpness', 'tree', 'errors',
               'checks')

# The one version number (pyproject.toml reads it; CHANGELOG.md has a section per version).
__version__ = '0.2.0'

__all__ = [
    'ConfigError', 'PerGroup', 'kernel_scale', 'kernelwise_noise', 'cosine_increase', 'lr_tied_rho',
    'LPFSGD', 'Plain', 'SharpnessAware', 'UpdateResult', 'LeafRules', 'transforms', 'leaf_rules',
]


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f'rsam.{name}')
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  """The lazy names too (``dir(rsam)``, tab completion), without importing them."""
  return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
