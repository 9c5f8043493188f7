"""One factory: an updater config (ml_collections) -> an updater. The training loop never branches on names.

It belongs to the training repo (it reads ml_collections configs), not to the installed library: the
configs (configs/common.py) and the trainer (config_check.py, train_step.py) import it as
``rsam.training.factory``. Its schedules count steps as the official
R-SAM loop does (``one_based=True``, rsam/schedules.py), so the configs follow the official code.

Every constant is a field; the defaults are the official values (sources in
``shared/reference/algorithms.md``):

| name    | fields (default)                                                                         |
|---------|------------------------------------------------------------------------------------------|
| plain   | —                                                                                        |
| sam     | rho 0.05 (constant)                                                                      |
| asam    | rho 0.5, eta 0.01, scale_biases False: T = |w| + η on weights, 1 on biases [SamsungLabs/ |
|         | ASAM asam.py: class defaults rho 0.5, eta 0.01; README: ρ 0.5 CIFAR-10, 1.0 CIFAR-100].  |
|         | Its example_cifar.py flag --eta defaults to 0.0, so the README's commands ran with η = 0. |
|         | davda54/sam's adaptive=True is eta 0, scale_biases True (T = |w| on every leaf), with    |
|         | rho 2.0 (its README: "as suggested by [ASAM's] authors", davda54/sam issue #37).         |
| rsam    | ρ tied to lr: rho_max 2.5, rho_min 1.5, rho_warmup_steps 10,000; lam 2.0; gamma 5e-4 with |
|         | gamma_growth 5 (cosine increase to 2.5e-3)      [official R-SAM code, ViT-B/16]           |
| gsam    | ρ tied to lr: rho_max 0.6, rho_min 0.2, no warm-up branch; alpha 0.4  [GSAM Table 4]      |
| rgsam   | GSAM's ρ and α with R-SAM's noise and λ (no public code: our composition, paper §4.5)    |
| lpf_sgd | gamma 0.002 constant (gamma_growth 1), num_samples M = 1   [LPF-SGD, CIFAR ResNets]      |

Fields every sharpness-aware updater has: ``m`` (examples per ascent group, None = the whole batch),
``group_mode`` (how a device runs its groups: 'auto' | 'loop' | 'unroll' | 'vmap', rsam/msharpness.py),
``clean_loss`` (extra forward at w for monitoring noise-based updaters).
"""
from typing import Optional

import ml_collections
from ml_collections.config_dict import placeholder

from rsam.errors import ConfigError
from rsam.msharpness import GROUP_MODES, PerGroup
from rsam.schedules import cosine_increase, lr_tied_rho
from rsam.updaters import LPFSGD, Plain, SharpnessAware

# ``rho`` is used with rho_schedule='constant'; rho_max, rho_min, rho_warmup_steps with 'lr_tied'.
_SAM = dict(rho=0.05, rho_schedule='constant', rho_max=0.05, rho_min=0.05, rho_warmup_steps=0, m=None,
            group_mode='auto')
_LR_TIED = dict(_SAM, rho_schedule='lr_tied')
_NOISE = dict(lam=2.0, gamma=5e-4, gamma_growth=5.0, clean_loss=False)

DEFAULTS = {
    'plain': dict(),
    'sam': dict(_SAM, adaptive=False),
    'asam': dict(_SAM, rho=0.5, rho_max=0.5, rho_min=0.5, adaptive=True, eta=0.01, scale_biases=False),
    'rsam': dict(_LR_TIED, rho_max=2.5, rho_min=1.5, rho_warmup_steps=10_000, **_NOISE),
    'gsam': dict(_LR_TIED, rho_max=0.6, rho_min=0.2, alpha=0.4),
    'rgsam': dict(_LR_TIED, rho_max=0.6, rho_min=0.2, alpha=0.4, **_NOISE),
    'lpf_sgd': dict(gamma=0.002, gamma_growth=1.0, num_samples=1),
}
NAMES = tuple(DEFAULTS)
_NON_NEGATIVE = ('rho', 'rho_max', 'rho_min', 'lam', 'gamma', 'alpha', 'rho_warmup_steps', 'eta')


def updater_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """The default config of updater ``name`` (official values), with ``overrides`` applied."""
  if name not in DEFAULTS:
    raise ConfigError(f"unknown updater '{name}'; choose one of: {', '.join(NAMES)}")
  fields = dict(DEFAULTS[name], name=name)
  if 'm' in fields:  # None = ungrouped; a typed placeholder so --config.updater.m=16 parses
    fields['m'] = placeholder(int)
  cfg = ml_collections.ConfigDict(fields)
  for key, value in overrides.items():
    if key not in cfg:
      raise ConfigError(f"updater '{name}' has no field '{key}'; its fields: {', '.join(sorted(cfg))}")
    cfg[key] = value
  return cfg


def validate(cfg, *, per_device_batch: Optional[int] = None) -> None:
  """One-line ConfigError for any bad updater field; called once, before anything is built."""
  name = cfg.get('name')
  if name not in DEFAULTS:
    raise ConfigError(f"unknown updater '{name}' (config.updater.name); choose one of: {', '.join(NAMES)}")
  allowed = set(DEFAULTS[name]) | {'name'}
  for key in cfg:
    if key not in allowed:
      raise ConfigError(f"config.updater.{key} does not apply to updater '{name}'; remove it "
                        f"(fields of '{name}': {', '.join(sorted(allowed))})")
  for key in _NON_NEGATIVE:
    if key in cfg and (not isinstance(cfg[key], (int, float)) or cfg[key] < 0):
      raise ConfigError(f"config.updater.{key}={cfg[key]!r} must be a number >= 0")
  if cfg.get('rho_schedule', 'constant') not in ('constant', 'lr_tied'):
    raise ConfigError(f"config.updater.rho_schedule={cfg.rho_schedule!r}; use 'constant' or 'lr_tied'")
  if cfg.get('rho_schedule') == 'lr_tied' and cfg.rho_max < cfg.rho_min:
    raise ConfigError(f"config.updater.rho_max={cfg.rho_max} is below rho_min={cfg.rho_min}; swap them")
  if 'gamma_growth' in cfg and not (isinstance(cfg.gamma_growth, (int, float)) and cfg.gamma_growth > 0):
    raise ConfigError(f"config.updater.gamma_growth={cfg.gamma_growth!r} must be > 0 (1 = constant gamma)")
  for key in ('adaptive', 'scale_biases', 'clean_loss'):
    if key in cfg and not isinstance(cfg[key], bool):
      raise ConfigError(f"config.updater.{key}={cfg[key]!r} must be True or False")
  if 'num_samples' in cfg and not (isinstance(cfg.num_samples, int) and cfg.num_samples >= 1):
    raise ConfigError(f"config.updater.num_samples={cfg.num_samples!r} must be an integer >= 1")
  if cfg.get('group_mode', 'auto') not in GROUP_MODES:
    raise ConfigError(f"config.updater.group_mode={cfg.group_mode!r}; use one of: {', '.join(GROUP_MODES)}")
  m = cfg.get('m')
  if m is not None:
    if not isinstance(m, int) or m < 1:
      raise ConfigError(f"config.updater.m={m!r} must be a positive integer or None (whole batch)")
    if per_device_batch is not None and per_device_batch % m:
      raise ConfigError(f"config.updater.m={m} does not divide the per-device batch {per_device_batch}; "
                        f"pick an m that divides it (or m=None)")


def _gamma_schedule(cfg, total_steps: int):
  """γ rising on a cosine, at the official loop's t = step + 1."""
  return cosine_increase(cfg.gamma, cfg.gamma_growth, max(int(total_steps), 1), one_based=True)


def make_updater(cfg, *, total_steps: int, lr_schedule=None, lr_max: Optional[float] = None,
                 lr_min: Optional[float] = None, mesh=None, accum_steps: int = 1,
                 per_device_batch: Optional[int] = None):
  """Builds the updater that ``cfg`` describes (see the table above)."""
  validate(cfg, per_device_batch=per_device_batch)
  name = cfg.name
  if name == 'plain':
    return Plain(accum_steps=accum_steps)
  if name == 'lpf_sgd':
    if accum_steps != 1:
      raise ConfigError('lpf_sgd already splits the batch into num_samples chunks; set '
                        'config.grad_accum_steps=1 and raise config.updater.num_samples instead')
    return LPFSGD(gamma=_gamma_schedule(cfg, total_steps), num_samples=cfg.num_samples)

  if cfg.rho_schedule == 'lr_tied':
    if lr_schedule is None or lr_max is None or lr_min is None or lr_max == lr_min:
      raise ConfigError(f"updater '{name}' ties rho to the learning rate: it needs a schedule whose peak "
                        f"and final values differ (got lr_max={lr_max}, lr_min={lr_min}); or set "
                        f"config.updater.rho_schedule='constant' with config.updater.rho")
    rho = lr_tied_rho(lr_schedule, rho_max=cfg.rho_max, rho_min=cfg.rho_min, lr_max=lr_max,
                      lr_min=lr_min, warmup_steps=cfg.rho_warmup_steps, one_based=True)
  else:
    rho = cfg.rho
  gamma = _gamma_schedule(cfg, total_steps) if 'gamma' in cfg else None
  m = cfg.get('m')
  updater = SharpnessAware(
      rho=rho, gamma=gamma, lam=cfg.get('lam', 1.0), alpha=cfg.get('alpha', 0.0),
      adaptive=cfg.get('adaptive', False), eta=cfg.get('eta', 0.0),
      scale_biases=cfg.get('scale_biases', False), clean_loss=cfg.get('clean_loss', False),
      accum_steps=1 if m else accum_steps)
  if m is None:
    return updater
  if accum_steps != 1:
    raise ConfigError(f"config.updater.m={m} already runs the groups one after another; set "
                      f"config.grad_accum_steps=1")
  if mesh is None:
    raise ConfigError('m-sharpness needs the device mesh; pass mesh= to make_updater')
  return PerGroup(updater, m=m, mesh=mesh, mode=cfg.group_mode)
