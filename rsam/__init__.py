"""rsam: sharpness-aware updaters (SAM, ASAM, R-SAM, GSAM, R-GSAM, LPF-SGD) behind one interface.

    updater = rsam.make_updater(rsam.updater_config('rsam'), total_steps=..., lr_schedule=..., ...)
    result = updater(loss_fn, params, model_state, batch, key, step)   # -> UpdateResult
    updates, opt_state = optax_tx.update(result.grads, opt_state, params)
"""
from rsam.errors import ConfigError
from rsam.factory import DEFAULTS, NAMES, make_updater, updater_config, validate
from rsam.msharpness import PerGroup
from rsam.noise import kernel_scale, kernelwise_noise
from rsam.schedules import cosine_increase, lr_tied_rho
from rsam.updaters import LPFSGD, Plain, SharpnessAware, UpdateResult

__all__ = [
    'ConfigError', 'DEFAULTS', 'NAMES', 'make_updater', 'updater_config', 'validate', 'PerGroup',
    'kernel_scale', 'kernelwise_noise', 'cosine_increase', 'lr_tied_rho', 'LPFSGD', 'Plain',
    'SharpnessAware', 'UpdateResult',
]
