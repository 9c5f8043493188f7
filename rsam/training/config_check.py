"""Config validation in one place: every bad field is a one-line ConfigError before any work starts.

Also the run's identity: ``<workdir>/config.json`` is written on the first start, and a later start with
a config that differs in anything but bookkeeping fields is refused unless forced.
"""
import hashlib
import json
import math
import os

import jax

import data
import models
import rsam
from rsam.errors import ConfigError
from rsam.training import losses, optim


class NonFiniteError(ConfigError):
  """The loss or the gradient became NaN/Inf (config.nan_policy='stop')."""


# Fields that may change between a run and its resumption (cadence, logging, where data lives).
BOOKKEEPING = ('wandb', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
               'keep_checkpoints', 'eval_sets', 'eval_batch_size', 'distributed', 'data.data_dir')

_TYPES = {'seed': int, 'batch_size': int, 'grad_accum_steps': int, 'log_every_steps': int,
          'checkpoint_every_steps': int, 'keep_checkpoints': int, 'eval_batch_size': int,
          'mixup_alpha': (int, float), 'label_smoothing': (int, float)}


def validate(config) -> None:
  for field, kind in _TYPES.items():
    value = config.get(field)
    if not isinstance(value, kind) or isinstance(value, bool):
      raise ConfigError(f'config.{field}={value!r} must be a {getattr(kind, "__name__", "number")}')
  for field in ('batch_size', 'grad_accum_steps', 'log_every_steps', 'checkpoint_every_steps',
                'keep_checkpoints', 'eval_batch_size'):
    if config[field] < 1:
      raise ConfigError(f'config.{field}={config[field]} must be >= 1')
  if config.mixup_alpha < 0:
    raise ConfigError(f'config.mixup_alpha={config.mixup_alpha} must be >= 0 (0 = no mixup)')
  if not 0 <= config.label_smoothing < 1:
    raise ConfigError(f'config.label_smoothing={config.label_smoothing} must be in [0, 1)')
  if config.get('eval_every_steps') is not None and config.eval_every_steps < 0:
    raise ConfigError(f'config.eval_every_steps={config.eval_every_steps} must be >= 0 (0 = only at the end)')
  if config.loss not in losses.LOSSES:
    raise ConfigError(f"config.loss={config.loss!r}; choose one of: {', '.join(losses.LOSSES)}")
  if config.compute_dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f"config.compute_dtype={config.compute_dtype!r}; use 'float32' or 'bfloat16'")
  if config.nan_policy not in ('stop', 'skip'):
    raise ConfigError(f"config.nan_policy={config.nan_policy!r}; use 'stop' or 'skip'")
  if config.model.name not in models.MODEL_NAMES:
    raise ConfigError(f"unknown model '{config.model.name}' (config.model.name); choose one of: "
                      f"{', '.join(models.MODEL_NAMES)}")
  if config.optimizer.name not in optim.OPTIMIZERS:
    raise ConfigError(f"config.optimizer.name={config.optimizer.name!r}; choose one of: "
                      f"{', '.join(optim.OPTIMIZERS)}")
  if not isinstance(config.optimizer.lr, (int, float)) or config.optimizer.lr <= 0:
    raise ConfigError(f'config.optimizer.lr={config.optimizer.lr!r} must be a number > 0')
  if config.schedule.name not in optim.SCHEDULES:
    raise ConfigError(f"config.schedule.name={config.schedule.name!r}; choose one of: "
                      f"{', '.join(optim.SCHEDULES)}")
  rsam.validate(config.updater)
  data.validate(config.data, tuple(config.eval_sets))
  if total_steps(config) < 1:
    raise ConfigError('the run has no steps: set config.num_epochs or config.total_steps above 0')


def total_steps(config) -> int:
  """config.total_steps if set, else ⌊num_epochs · N_train / batch_size⌋ (partial last step dropped)."""
  if config.get('total_steps'):
    return int(config.total_steps)
  return int(math.floor(config.num_epochs * data.num_train_examples(config.data) / config.batch_size))


def check_batch(config, *, num_devices: int, process_count: int) -> None:
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    if value % num_devices:
      raise ConfigError(f'config.{field}={value} does not divide across the {num_devices} devices; use a '
                        f'multiple of {num_devices} (e.g. {max(num_devices, value // num_devices * num_devices)})')
  if (config.batch_size // num_devices) % config.grad_accum_steps:
    raise ConfigError(f'config.grad_accum_steps={config.grad_accum_steps} does not divide the per-device '
                      f'batch {config.batch_size // num_devices}; pick a divisor of it')
  rsam.validate(config.updater, per_device_batch=config.batch_size // num_devices)
  del process_count  # a multiple of the device count is a multiple of the process count


def _identity(config) -> dict:
  d = json.loads(config.to_json_best_effort())
  for path in BOOKKEEPING:
    node, *rest = path.split('.')
    if rest:
      d.get(node, {}).pop(rest[0], None)
    else:
      d.pop(node, None)
  return d


def _diff(a, b, prefix=''):
  keys = sorted(set(a) | set(b)) if isinstance(a, dict) and isinstance(b, dict) else None
  if keys is None:
    return [prefix.rstrip('.')] if a != b else []
  out = []
  for k in keys:
    out += _diff(a.get(k), b.get(k), f'{prefix}{k}.')
  return out


def check_workdir(config, workdir: str, *, force: bool) -> None:
  """Writes config.json on the first start; refuses a workdir that holds a different run."""
  path = os.path.join(workdir, 'config.json')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'cannot create --workdir {workdir} ({e.strerror}); choose a writable directory')
  if not os.access(workdir, os.W_OK):
    raise ConfigError(f'--workdir {workdir} is not writable; choose a writable directory')
  if os.path.exists(path) and not force:
    with open(path) as f:
      saved = json.load(f)
    differ = _diff(_identity_from_json(saved), _identity(config))
    if differ:
      raise ConfigError(f'--workdir {workdir} holds a run of a different config ({", ".join(differ[:5])} '
                        f'differ); use a new --workdir, or pass --force_resume to continue it anyway')
  if jax.process_index() == 0 and (force or not os.path.exists(path)):
    with open(path, 'w') as f:
      f.write(config.to_json_best_effort(indent=2))


def _identity_from_json(saved: dict) -> dict:
  import ml_collections
  return _identity(ml_collections.ConfigDict(saved))


def run_id(config, workdir: str) -> str:
  """A stable id for the run (the wandb id), so a resumed run appends to the same wandb run."""
  del config
  return hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:12]
