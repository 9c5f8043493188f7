"""Schedules of ρ and γ as plain functions of the step, built from optax schedules where one fits.

Step index. A schedule here is called, as optax's are, with ``step``, the 0-based count of updates so far:
``cosine_increase(...)(0)`` is its initial value. The official R-SAM loop (vit_jax/train.py) counts its
iterations t = 1, ..., total_steps instead: it evaluates γ (``CosineInc(t)``) and ρ's ``t < 10000``
warm-up branch at t, and the learning rate at t − 1 (``lr_prefetch_iter`` starts at 0). ``one_based=True``
evaluates these schedules at t = step + 1 (``official_t``), as that loop does; the training repo's
configs use it (rsam/training/factory.py), so their numbers follow the official code. ρ always reads the
learning rate at ``step``.
"""
from typing import Callable, Union

import jax
import jax.numpy as jnp
import optax

from rsam.checks import check_non_negative, concrete, static_int

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
# A hyperparameter: a Python float, a (possibly traced) scalar array, or a schedule of the step.
ScalarOrSchedule = Union[float, jax.Array, Schedule]


def as_schedule(value: ScalarOrSchedule) -> Schedule:
  """``value`` if it is a schedule, else the constant schedule of ``value`` (a float or an array, traced or
  not: it is not converted, so a value traced under jit stays traced)."""
  return value if callable(value) else (lambda step: value)


def official_t(step):
  """The official loop's 1-based iteration t of the 0-based update ``step``."""
  return step + 1


def cosine_increase(init_value: float, growth: float, total_steps: int, *,
                    one_based: bool = False) -> Schedule:
  """R-SAM's noise schedule: γ rising from γ0 to γ0·growth on a half cosine.

    γ(t) = γ0 · (1 + (growth − 1) · (1 − cos(π · min(t, T) / T)) / 2)

  with t = ``step`` (``one_based=False``, optax's convention: ``schedule(0) == init_value``) or
  t = step + 1 (``one_based=True``, the official R-SAM loop's iteration count, module docstring). The
  official values are γ0 = 5e-4, growth = 5 (5e-4 → 2.5e-3 over T = the total steps, hard-coded 93,834
  there), taken from LPF-SGD (which uses growth α = 35 / 25 on WRN, also at a 1-based count). ``growth = 1``
  is a constant. This is ``optax.cosine_decay_schedule`` with a final ratio above one.

  Args:
    init_value: γ0 >= 0.
    growth: the final value's ratio to γ0, > 0 (1: constant).
    total_steps: T >= 1, the steps over which γ rises; held at γ0·growth after.
    one_based: evaluate at t = step + 1 (the official loop) instead of t = step.

  Returns:
    A schedule ``step -> γ``.

  References:
    Liu, Mai, Cheng, Chen, Hsieh and You, Random Sharpness-Aware Minimization, NeurIPS 2022 (§3.2 and
    the official code's ``CosineInc``).
    Bisla, Wang and Choromanska, `Low-Pass Filtering SGD for Recovering Flat Optima in the Deep Learning
    Optimization Landscape <https://arxiv.org/abs/2201.08025>`_, AISTATS 2022.
  """
  check_non_negative('init_value', init_value, 'γ0, the initial noise scale')
  growth_value = concrete(growth)
  if growth_value is None or growth_value.ndim or not growth_value > 0:
    raise ValueError(f'growth={growth!r} must be a number > 0 (the ratio of the final γ to γ0; 1 = constant)')
  total_steps = static_int('total_steps', total_steps, minimum=1, what='the steps over which γ rises')
  if growth == 1.0 or init_value == 0.0:
    return optax.constant_schedule(init_value)
  increase = optax.cosine_decay_schedule(init_value, decay_steps=total_steps, alpha=growth)
  if one_based:
    return lambda step: increase(official_t(step))
  return increase


def lr_tied_rho(lr_schedule: Schedule, *, rho_max: float, rho_min: float, lr_max: float, lr_min: float,
                warmup_steps: int = 0, one_based: bool = False) -> Schedule:
  """ρ tied to the learning rate lr = lr_schedule(step) (GSAM Algorithm 1; the official R-SAM code).

    ρ = ρ_min + (ρ_max − ρ_min) · (lr − lr_min) / (lr_max − lr_min)   for t >= warmup_steps,
    ρ = ρ_max · lr / lr_max                                            for t <  warmup_steps,

  with t = ``step`` (``one_based=False``) or t = step + 1 (``one_based=True``, the official loop's count,
  module docstring); the learning rate is always read at ``step``. GSAM (big_vision) has no warm-up
  branch (``warmup_steps = 0``); the official R-SAM code uses 10,000 with ``one_based=True``.

  Args:
    lr_schedule: the learning-rate schedule of the base optimizer.
    rho_max: ρ at the peak learning rate, >= 0.
    rho_min: ρ at the final learning rate, >= 0.
    lr_max: the schedule's peak learning rate.
    lr_min: the schedule's final learning rate; must differ from ``lr_max``.
    warmup_steps: steps with ρ proportional to the learning rate (the official code's warm-up branch).
    one_based: compare t = step + 1 with ``warmup_steps`` (the official loop) instead of t = step.

  Returns:
    A schedule ``step -> ρ``.

  References:
    Zhuang et al., `Surrogate Gap Guided Sharpness-Aware Minimization
    <https://arxiv.org/abs/2203.08065>`_, ICLR 2022 (Algorithm 1).
    Liu, Mai, Cheng, Chen, Hsieh and You, Random Sharpness-Aware Minimization, NeurIPS 2022 (the official
    code's ρ warm-up branch).
  """
  if not callable(lr_schedule):
    raise TypeError(f'lr_schedule={lr_schedule!r} must be a schedule (a function of the step) such as '
                    f'optax.cosine_decay_schedule(...)')
  check_non_negative('rho_max', rho_max, 'ρ at the peak learning rate')
  check_non_negative('rho_min', rho_min, 'ρ at the final learning rate')
  check_non_negative('warmup_steps', warmup_steps, 'steps of the warm-up branch')
  if lr_max == lr_min:
    raise ValueError(f'lr_max={lr_max!r} equals lr_min={lr_min!r}: ρ cannot follow a flat learning rate; '
                     f'use a constant rho instead of lr_tied_rho')

  def schedule(step):
    lr = lr_schedule(step)
    tied = rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)
    warm = rho_max * lr / lr_max
    t = official_t(step) if one_based else step
    return jnp.where(t < warmup_steps, warm, tied)
  return schedule
