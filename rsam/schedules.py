"""Schedules of ρ and γ as plain functions of the step, built from optax schedules where one fits."""
from typing import Callable, Union

import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
ScalarOrSchedule = Union[float, Schedule]


def as_schedule(value: ScalarOrSchedule) -> Schedule:
  return value if callable(value) else optax.constant_schedule(float(value))


def cosine_increase(init_value: float, growth: float, total_steps: int) -> Schedule:
  """γ(t) = γ0 · (1 + (growth − 1) · (1 − cos(π t / T)) / 2), held at γ0·growth after T.

  The official R-SAM noise schedule (γ0 = 5e-4, growth = 5, i.e. 5e-4 → 2.5e-3 over T = 93,834 steps),
  taken from LPF-SGD (which uses growth α = 35 / 25 on WRN). ``growth = 1`` is a constant. This is
  optax's cosine decay with a final ratio above one.
  """
  if growth == 1.0 or init_value == 0.0:
    return optax.constant_schedule(init_value)
  return optax.cosine_decay_schedule(init_value, decay_steps=max(int(total_steps), 1), alpha=growth)


def lr_tied_rho(lr_schedule: Schedule, *, rho_max: float, rho_min: float, lr_max: float, lr_min: float,
                warmup_steps: int = 0) -> Schedule:
  """ρ_t tied to the learning rate (GSAM Alg. 1; official R-SAM code).

  ρ_t = ρ_min + (ρ_max − ρ_min) · (lr_t − lr_min) / (lr_max − lr_min)  for t ≥ warmup_steps,
  ρ_t = ρ_max · lr_t / lr_max                                           for t < warmup_steps.
  GSAM (big_vision) has no warm-up branch (``warmup_steps = 0``); the official R-SAM code uses 10,000.
  """
  def schedule(step):
    lr = lr_schedule(step)
    tied = rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)
    warm = rho_max * lr / lr_max
    return jnp.where(step < warmup_steps, warm, tied)
  return schedule
