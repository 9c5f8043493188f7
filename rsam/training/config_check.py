"""Config validation in one place: every bad field is a one-line ConfigError before any work starts.

Also the run's identity (``identity``: the config less its bookkeeping fields), which the run's folder
keeps in ``config.json`` and in every checkpoint (rsam/training/run_folder.py) and checks on every start.
"""
import json
import math

import jax

import data
import models
from rsam.errors import ConfigError
from rsam.training import factory, losses, optim, paths


class NonFiniteError(ConfigError):
  """The loss or the gradient became NaN/Inf (config.nan_policy='stop')."""


# Fields that may change between a run and its resumption (cadence, logging, where data lives, and the
# device layout: a checkpoint restores onto any mesh, so a run can move to another slice).
BOOKKEEPING = ('wandb', 'log_every_steps', 'eval_every_steps', 'eval_intervals', 'checkpoint_every_steps',
               'keep_checkpoints', 'eval_sets', 'eval_batch_size', 'distributed', 'data.data_dir', 'profile',
               'compilation_cache_dir', 'max_consecutive_skipped_steps', 'lease_timeout_s', 'mesh',
               'shard_min_bytes', 'storage_retry_s')

_TYPES = {'seed': int, 'batch_size': int, 'grad_accum_steps': int, 'log_every_steps': int,
          'checkpoint_every_steps': int, 'keep_checkpoints': int, 'eval_batch_size': int,
          'mixup_alpha': (int, float), 'label_smoothing': (int, float)}


def validate(config) -> None:
  _check_types(config)
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
  limit = config.get('max_consecutive_skipped_steps', 10)
  if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
    raise ConfigError(f'config.max_consecutive_skipped_steps={limit!r} must be an int >= 1 (non-finite steps '
                      f"in a row that nan_policy='skip' drops before the run stops)")
  if not _number(config.get('lease_timeout_s', 300.0), low=0, low_open=True):
    raise ConfigError(f'config.lease_timeout_s={config.get("lease_timeout_s")!r} must be a number of seconds '
                      f'> 0')
  if not _number(config.get('storage_retry_s', 900.0), low=0, low_open=True):
    raise ConfigError(f'config.storage_retry_s={config.get("storage_retry_s")!r} must be a number of seconds '
                      f'> 0 (how long a gs:// request is retried before the run stops with exit code 69)')
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
  factory.validate(config.updater)
  from rsam.training import evaluation, progress  # pylint: disable=g-import-not-at-top
  data.validate(config.data, tuple(evaluation.intervals(config)))
  progress.trace_steps(config)
  try:  # a module is a dataclass: building one checks config.model.overrides and does no work
    models.get_model(config.model.name, num_classes=data.num_classes(config.data),
                     **dict(config.model.get('overrides', {})))
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model.overrides={dict(config.model.get("overrides", {}))!r}: {e}') from None
  steps = total_steps(config)
  if steps < 1:
    raise ConfigError('the run has no steps: set config.num_epochs or config.total_steps above 0')
  warmup = config.schedule.get('warmup_steps') or 0
  if config.schedule.name != 'constant' and warmup >= steps:
    raise ConfigError(f'config.schedule.warmup_steps={warmup} is not below the {steps} training steps; '
                      f'lower it')


# Every field the optimizer and schedule read (rsam/training/optim.py): anything else is a typo.
_OPTIMIZER_FIELDS = ('name', 'lr', 'momentum', 'nesterov', 'weight_decay', 'decay_kernels_only',
                     'grad_clip_norm', 'b1', 'b2', 'eps')
_SCHEDULE_FIELDS = ('name', 'warmup_steps', 'end_lr', 'step_boundaries', 'step_factor')


def _number(value, *, low=None, high=None, low_open=False, high_open=False) -> bool:
  """A finite int/float (not bool) within the bounds."""
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
    return False
  return ((low is None or (value > low if low_open else value >= low)) and
          (high is None or (value < high if high_open else value <= high)))


def _check_types(config) -> None:
  """Fields whose wrong type or value would otherwise surface as a traceback in build() or a NaN later."""
  steps = config.get('total_steps')
  if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool)):
    raise ConfigError(f'config.total_steps={steps!r} must be an int (or None to use config.num_epochs)')
  if steps is not None and steps < 1:  # 0 would silently mean "use num_epochs"
    raise ConfigError(f'config.total_steps={steps} must be >= 1, or None to train for config.num_epochs')
  if not steps and not _number(config.get('num_epochs'), low=0):
    raise ConfigError(f'config.num_epochs={config.get("num_epochs")!r} must be a number > 0 (or set '
                      f'config.total_steps)')
  every = config.get('eval_every_steps')
  if every is not None and (not isinstance(every, int) or isinstance(every, bool)):
    raise ConfigError(f'config.eval_every_steps={every!r} must be an int (0 = only at the end)')
  names = config.get('eval_sets')
  if isinstance(names, str) or not isinstance(names, (tuple, list)) or not all(
      isinstance(n, str) for n in names):
    raise ConfigError(f"config.eval_sets={names!r} must be a tuple of eval set names, e.g. ('test',)")
  opt, sched = config.optimizer, config.schedule
  for group, fields in (('optimizer', _OPTIMIZER_FIELDS), ('schedule', _SCHEDULE_FIELDS)):
    unknown = [k for k in config[group] if k not in fields]
    if unknown:
      raise ConfigError(f"config.{group}.{unknown[0]} is not a field of config.{group}; remove it or fix "
                        f"the name (fields: {', '.join(fields)})")
  if not _number(opt.get('lr'), low=0, low_open=True):
    raise ConfigError(f'config.optimizer.lr={opt.get("lr")!r} must be a finite number > 0')
  for field, high in (('momentum', 1), ('weight_decay', None), ('b1', 1), ('b2', 1), ('eps', None)):
    if opt.get(field) is not None and not _number(opt[field], low=0, high=high, high_open=True):
      raise ConfigError(f'config.optimizer.{field}={opt[field]!r} must be a finite number '
                        f'{"in [0, 1)" if high else ">= 0"}')
  for field in ('nesterov', 'decay_kernels_only'):
    if opt.get(field) is not None and not isinstance(opt[field], bool):
      raise ConfigError(f'config.optimizer.{field}={opt[field]!r} must be True or False')
  if opt.get('grad_clip_norm') is not None and not _number(opt.grad_clip_norm, low=0, low_open=True):
    raise ConfigError(f'config.optimizer.grad_clip_norm={opt.grad_clip_norm!r} must be a number > 0 (or None '
                      f'for no clipping)')
  warmup = sched.get('warmup_steps')
  if warmup is not None and (not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0):
    raise ConfigError(f'config.schedule.warmup_steps={warmup!r} must be an int >= 0')
  if sched.get('end_lr') is not None and not _number(sched.end_lr, low=0):
    raise ConfigError(f'config.schedule.end_lr={sched.end_lr!r} must be a finite number >= 0')
  if sched.get('name') == 'step':
    bounds = sched.get('step_boundaries')
    if not isinstance(bounds, (tuple, list)) or not all(
        _number(b, low=0, high=1, low_open=True, high_open=True) for b in bounds):
      raise ConfigError(f"config.schedule.step_boundaries={bounds!r}: the 'step' schedule needs a tuple of "
                        f"fractions of training in (0, 1), e.g. (0.3, 0.6, 0.8)")
    if not _number(sched.get('step_factor'), low=0, low_open=True):
      raise ConfigError(f"config.schedule.step_factor={sched.get('step_factor')!r}: the 'step' schedule "
                        f"needs the factor (> 0) applied at each boundary, e.g. 0.2")
  for field, value in config.updater.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f'config.updater.{field}={value!r} must be a finite number')


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
  factory.validate(config.updater, per_device_batch=config.batch_size // num_devices)
  del process_count  # a multiple of the device count is a multiple of the process count


def identity(config) -> dict:
  """The run's identity: the config as JSON less its BOOKKEEPING fields (two configs of one run agree)."""
  d = json.loads(config.to_json_best_effort())
  for path in BOOKKEEPING:
    node, *rest = path.split('.')
    if rest:
      d.get(node, {}).pop(rest[0], None)
    else:
      d.pop(node, None)
  return d


def identity_diff(saved: dict, current: dict) -> list:
  """The fields in which a stored identity (or a whole config.json) differs from ``current``; its own
  bookkeeping fields, as of this version, left out. ValueError etc. if ``saved`` is not a config."""
  return _diff(_identity_from_json(saved), current)


def _diff(a, b, prefix=''):
  keys = sorted(set(a) | set(b)) if isinstance(a, dict) and isinstance(b, dict) else None
  if keys is None:
    return [prefix.rstrip('.')] if a != b else []
  out = []
  for k in keys:
    out += _diff(a.get(k), b.get(k), f'{prefix}{k}.')
  return out


def _identity_from_json(saved: dict) -> dict:
  import ml_collections
  return identity(ml_collections.ConfigDict(saved))


def run_config(workdir: str, config=None):
  """The config of the run in ``workdir`` (its ``config.json``), for eval.py.

  ``config`` given (``--config``): it is checked against config.json and returned; one that differs in
  anything but bookkeeping fields is a ConfigError naming the fields (its model would not be the
  checkpoint's, or its numbers would not be the run's). Without config.json, ``config`` is used as given.
  """
  path = paths.path(workdir) / 'config.json'
  if not paths.exists(path):
    if config is None:
      raise ConfigError(f'{path} does not exist, so the run\'s config is unknown; pass --config (the '
                        f'training config of the run), or point --workdir at a train.py workdir')
    return config
  try:
    saved = paths.read_json(path)
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} does not read ({type(e).__name__}); pass --config with the training config '
                      f'of the run') from None
  import ml_collections  # pylint: disable=g-import-not-at-top
  if config is None:
    return ml_collections.ConfigDict(saved)
  differ = _diff(_identity_from_json(saved), identity(config))
  if differ:
    raise ConfigError(f'--config does not match the run in {workdir} ({", ".join(differ[:5])} differ from '
                      f'its config.json), so it does not describe that checkpoint; drop --config to use '
                      f'the run\'s own config')
  return config
