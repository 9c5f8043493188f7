"""Schedules of ρ and γ as plain functions of the step, built from optax schedules where one fits.

Step index. ``step`` is the repo's 0-based update count: the count the optimizer's learning-rate schedule
sees, so the learning rate of update ``step`` is ``lr_schedule(step)``. The official R-SAM loop
(vit_jax/train.py) counts its iterations t = 1, ..., total_steps: it evaluates γ (``CosineInc(t)``) and
ρ's ``t < 10000`` warm-up branch at t, and the learning rate at t − 1 (``lr_prefetch_iter`` starts at
0). So these schedules evaluate at t = step + 1 (``official_t``), and ρ reads the learning rate at step.
"""
from typing import Callable, Union

import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
ScalarOrSchedule = Union[float, Schedule]


def as_schedule(value: ScalarOrSchedule) -> Schedule:
  return value if callable(value) else optax.constant_schedule(float(value))


def official_t(step):
  """The official loop's 1-based iteration t of the repo's 0-based update ``step``."""
  return step + 1


def cosine_increase(init_value: float, growth: float, total_steps: int) -> Schedule:
  """γ(step) = γ0 · (1 + (growth − 1) · (1 − cos(π t / T)) / 2) at t = step + 1, held at γ0·growth after T.

  The official R-SAM noise schedule (γ0 = 5e-4, growth = 5, i.e. 5e-4 → 2.5e-3 over T = total steps,
  hard-coded 93,834 there), taken from LPF-SGD (which uses growth α = 35 / 25 on WRN, also at a 1-based
  iteration count). ``growth = 1`` is a constant. This is optax's cosine decay with a final ratio above one.
  """
  if growth == 1.0 or init_value == 0.0:
    return optax.constant_schedule(init_value)
  increase = optax.cosine_decay_schedule(init_value, decay_steps=max(int(total_steps), 1), alpha=growth)
  return lambda step: increase(official_t(step))


def lr_tied_rho(lr_schedule: Schedule, *, rho_max: float, rho_min: float, lr_max: float, lr_min: float,
                warmup_steps: int = 0) -> Schedule:
  """ρ tied to the learning rate lr = lr_schedule(step) (GSAM Alg. 1; official R-SAM code).

  ρ = ρ_min + (ρ_max − ρ_min) · (lr − lr_min) / (lr_max − lr_min)  for t ≥ warmup_steps,
  ρ = ρ_max · lr / lr_max                                           for t < warmup_steps,
  with t = step + 1 as the official loop counts (module docstring). GSAM (big_vision) has no warm-up
  branch (``warmup_steps = 0``); the official R-SAM code uses 10,000.
  """
  def schedule(step):
    lr = lr_schedule(step)
    tied = rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)
    warm = rho_max * lr / lr_max
    return jnp.where(official_t(step) < warmup_steps, warm, tied)
  return schedule
