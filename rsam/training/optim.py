"""Learning-rate schedules and base optimizers, from optax, built from ``config.optimizer``/``config.schedule``.

config.optimizer:
  name            'sgd' | 'momentum' | 'rmsprop' | 'adamw'
  lr              peak learning rate
  momentum        0.9 (momentum; also rmsprop's momentum, 0 = none)
  nesterov        False
  b1, b2, eps     AdamW (0.9, 0.999, 1e-8); rmsprop's decay is ``b2`` and its eps ``eps``
  weight_decay    coupled (added to the gradient before the optimizer: PyTorch SGD/RMSProp) for
                  sgd/momentum/rmsprop; decoupled (optax.adamw) for adamw. Applied in the base step only,
                  so it never enters the ascent gradient (as davda54/sam).
  decay_kernels_only  True: only leaves with ndim > 1 decay (big_vision ViT); False: every leaf (PyTorch)
  grad_clip_norm  None or the global-norm clip applied to the updater's gradient (ViT: 1.0)
config.schedule:
  name            'cosine' | 'linear' | 'constant' | 'step'
  warmup_steps    linear warm-up from 0
  end_lr          final learning rate (cosine/linear)
  step_boundaries fractions of training where 'step' multiplies lr by step_factor
  step_factor
"""
import jax
import optax

from rsam.errors import ConfigError

OPTIMIZERS = ('sgd', 'momentum', 'rmsprop', 'adamw')
SCHEDULES = ('cosine', 'linear', 'constant', 'step')


def make_lr_schedule(sched_cfg, lr: float, total_steps: int):
  """Returns (schedule, lr_max, lr_min): the values an lr-tied ρ needs."""
  name, warmup = sched_cfg.name, int(sched_cfg.get('warmup_steps', 0))
  if name not in SCHEDULES:
    raise ConfigError(f"config.schedule.name={name!r}; choose one of: {', '.join(SCHEDULES)}")
  if warmup >= total_steps and total_steps > 0 and name != 'constant':
    raise ConfigError(f'config.schedule.warmup_steps={warmup} is not below the {total_steps} training '
                      f'steps; lower it')
  end_lr = float(sched_cfg.get('end_lr', 0.0))
  decay_steps = max(total_steps - warmup, 1)
  if name == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr / lr if lr else 0.0)
  elif name == 'linear':
    main = optax.linear_schedule(lr, end_lr, decay_steps)
  elif name == 'constant':
    main, end_lr = optax.constant_schedule(lr), lr
  else:
    boundaries = {int(f * total_steps) - warmup: sched_cfg.step_factor for f in sched_cfg.step_boundaries}
    main = optax.piecewise_constant_schedule(lr, boundaries)
    end_lr = lr * sched_cfg.step_factor ** len(sched_cfg.step_boundaries)
  if warmup:
    main = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main, lr, end_lr


def _decay_mask(kernels_only: bool):
  return lambda params: jax.tree.map(lambda p: p.ndim > 1 or not kernels_only, params)


def make_optimizer(opt_cfg, schedule) -> optax.GradientTransformation:
  name = opt_cfg.name
  if name not in OPTIMIZERS:
    raise ConfigError(f"config.optimizer.name={name!r}; choose one of: {', '.join(OPTIMIZERS)}")
  wd = float(opt_cfg.get('weight_decay', 0.0))
  mask = _decay_mask(opt_cfg.get('decay_kernels_only', False))
  parts = []
  if opt_cfg.get('grad_clip_norm'):
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
  if name == 'adamw':
    parts.append(optax.adamw(schedule, b1=opt_cfg.get('b1', 0.9), b2=opt_cfg.get('b2', 0.999),
                             eps=opt_cfg.get('eps', 1e-8), weight_decay=wd, mask=mask))
    return optax.chain(*parts)
  if wd:
    parts.append(optax.add_decayed_weights(wd, mask))
  if name == 'rmsprop':
    parts.append(optax.rmsprop(schedule, decay=opt_cfg.get('b2', 0.99), eps=opt_cfg.get('eps', 1e-8),
                               momentum=opt_cfg.get('momentum', 0.0) or None))
  else:
    momentum = opt_cfg.get('momentum', 0.9) if name == 'momentum' else None
    parts.append(optax.sgd(schedule, momentum=momentum, nesterov=opt_cfg.get('nesterov', False)))
  return optax.chain(*parts)
