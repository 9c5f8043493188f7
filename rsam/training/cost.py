"""How long a training run takes and how many chip-hours it costs, estimated from model FLOPs.

    training FLOPs  = 3 · F · B · S · P
    chip-hours      = training FLOPs / (peak · MFU) / 3600
    hours on slice  = chip-hours / chips of the slice

F is XLA's FLOP count of one example's forward pass (the unoptimised inference program, so the same on
every backend; a multiply-add is 2 FLOPs, as in the chips' peaks), 3 · F the forward and backward pass
(the backward costs about twice the forward), B the global batch, S the steps, P the forward-backward
passes per step (``passes_per_step``: 2 for the sharpness-aware updaters, 1 for plain gradients and
LPF-SGD). ``peak`` is a chip's dense bfloat16 peak from its vendor's datasheet and MFU (model FLOPs
utilisation) the share of it a run achieves: an assumption unless measured (``scripts/benchmark.py
--preset gpu`` measures it on one chip). Evaluation passes, input stalls, compilation and restarts are
left out, so the hours are a lower bound at the stated MFU.

Also the pieces scripts/benchmark.py uses for MFU: ``forward_flops_per_example`` and the peak of a JAX
device by its ``device_kind``. Imports no TensorFlow (the benchmark's device preset runs without it).
"""
import dataclasses
import math
import re
from typing import Dict, Optional, Tuple

# Dense bfloat16 matrix peak per JAX device in TFLOP/s (vendor datasheets), by a substring of the lower-case
# device_kind, first match wins; for MFU. A TPU v3 chip is two JAX devices (one per core).
PEAK_BF16_TFLOPS = (('h200', 989.0), ('h100 pcie', 756.0), ('h100', 989.0), ('a100', 312.0),
                    ('tpu v6', 918.0), ('tpu v5 lite', 197.0), ('tpu v5e', 197.0), ('tpu v5', 459.0),
                    ('tpu v4', 275.0), ('tpu v3', 61.5))


@dataclasses.dataclass(frozen=True)
class Chip:
  """A Cloud TPU generation: its dense bf16 peak per chip and how its slice names count (cores or chips)."""
  name: str
  peak_tflops: float     # per chip, bf16 (Google Cloud's system architecture page of the generation)
  cores_per_chip: int    # the number in an accelerator type counts TensorCores for v3, v4, v5p; chips else
  source: str


CHIPS: Dict[str, Chip] = {
    'v3': Chip('TPU v3', 123.0, 2, 'https://cloud.google.com/tpu/docs/v3'),
    'v4': Chip('TPU v4', 275.0, 2, 'https://cloud.google.com/tpu/docs/v4'),
    'v5litepod': Chip('TPU v5e', 197.0, 1, 'https://cloud.google.com/tpu/docs/v5e'),
    'v5p': Chip('TPU v5p', 459.0, 2, 'https://cloud.google.com/tpu/docs/v5p'),
    'v6e': Chip('TPU v6e', 918.0, 1, 'https://cloud.google.com/tpu/docs/v6e'),
}


def parse_slice(accelerator_type: str) -> Tuple[str, int]:
  """('v3', 128) for 'v3-256': the chip generation and the number of chips of a TPU accelerator type."""
  match = re.fullmatch(r'(v3|v4|v5litepod|v5p|v6e)-(\d+)', accelerator_type)
  if not match:
    raise ValueError(f'unknown TPU accelerator type {accelerator_type!r}; e.g. v3-8, v3-256, v4-512, v5p-512, '
                     f'v5litepod-256, v6e-256')
  kind, number = match.group(1), int(match.group(2))
  chips, rest = divmod(number, CHIPS[kind].cores_per_chip)
  if rest or not chips:
    raise ValueError(f'{accelerator_type!r}: {number} is not a whole number of {CHIPS[kind].name} chips')
  return kind, chips


def passes_per_step(updater_config) -> float:
  """Forward-backward passes per step: 1 for plain gradients and LPF-SGD (its noise samples split the batch),
  2 for SAM, ASAM, R-SAM, GSAM and R-GSAM (ascent, then descent), plus 1/3 (a forward pass) for
  ``clean_loss`` (the loss at w, for monitoring)."""
  name = updater_config['name']
  passes = 1.0 if name in ('plain', 'lpf_sgd') else 2.0
  if updater_config.get('clean_loss', False):
    passes += 1.0 / 3.0
  return passes


def forward_flops_per_example(model, state, image_shape) -> float:
  """XLA's FLOP count of one inference forward pass of ``model`` on one example (before optimisation,
  so the same on every backend). Model FLOPs of a step = 3 × this × batch per forward-backward pass."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  variables = {'params': state['params'], **state['model_state']}
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(shapes, x).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


def peak_tflops(device_kind: str, compute_dtype: str, override=None):
  """(TFLOP/s, source) of one JAX device for MFU, or (None, why not)."""
  if override:
    return float(override), '--peak_tflops'
  if compute_dtype != 'bfloat16':
    return None, f'no peak for {compute_dtype} compute (pass --peak_tflops)'
  kind = device_kind.lower()
  for key, value in PEAK_BF16_TFLOPS:
    if key in kind:
      return value, f'dense bf16 datasheet peak of {device_kind!r}'
  return None, f'unknown device kind {device_kind!r} (pass --peak_tflops)'


def config_forward_flops(config) -> float:
  """``forward_flops_per_example`` of the model ``config`` trains, at its input size (traced, nothing run)."""
  import jax  # pylint: disable=g-import-not-at-top
  from data import sources  # pylint: disable=g-import-not-at-top
  from rsam.training import train_step  # pylint: disable=g-import-not-at-top
  model = train_step.build_model(config, sources.num_classes(config.data))
  shape = sources.image_shape(config.data)
  params, model_state = jax.eval_shape(lambda: train_step.init_variables(model, config, shape,
                                                                         jax.random.key(0)))
  return forward_flops_per_example(model, {'params': params, 'model_state': model_state}, shape)


@dataclasses.dataclass(frozen=True)
class Estimate:
  forward_flops: float   # F, per example
  batch: int             # B
  steps: int             # S
  passes: float          # P
  mfu: float

  @property
  def training_flops(self) -> float:
    return 3.0 * self.forward_flops * self.batch * self.steps * self.passes

  def chip_hours(self, kind: str) -> float:
    return self.training_flops / (CHIPS[kind].peak_tflops * 1e12 * self.mfu) / 3600.0

  def hours(self, accelerator_type: str) -> float:
    kind, chips = parse_slice(accelerator_type)
    return self.chip_hours(kind) / chips

  def cost(self, kind: str, price_per_chip_hour: Optional[float]) -> Optional[float]:
    return None if price_per_chip_hour is None else self.chip_hours(kind) * price_per_chip_hour


def estimate(config, *, mfu: float, forward_flops: Optional[float] = None, steps: Optional[int] = None) -> Estimate:
  """The estimate of one run of ``config`` at an assumed (or measured) ``mfu`` in (0, 1]. ``forward_flops``
  and ``steps`` default to ``config_forward_flops(config)`` and the config's step count."""
  if not 0 < mfu <= 1:
    raise ValueError(f'mfu={mfu!r} must be in (0, 1]')
  if steps is None:
    from rsam.training import config_check  # pylint: disable=g-import-not-at-top
    steps = config_check.total_steps(config)
  flops = config_forward_flops(config) if forward_flops is None else forward_flops
  return Estimate(forward_flops=flops, batch=int(config.batch_size), steps=int(steps),
                  passes=passes_per_step(config.updater), mfu=float(mfu))


def implied_mfu(training_flops: float, hours: float, accelerator_type: str) -> float:
  """The MFU at which ``training_flops`` take ``hours`` on a slice: what a published wall time implies."""
  kind, chips = parse_slice(accelerator_type)
  return training_flops / (chips * CHIPS[kind].peak_tflops * 1e12 * hours * 3600.0)


def format_hours(hours: float) -> str:
  """'14 min', '3.2 h', '41 h', '5.3 d': two significant figures; minutes below an hour, days past 48 hours."""
  if hours < 1:
    return f'{hours * 60:.2g} min' if hours * 60 < 10 else f'{hours * 60:.0f} min'
  if hours >= 48:
    return f'{hours / 24:.2g} d' if hours / 24 < 10 else f'{hours / 24:.0f} d'
  return f'{hours:.2g} h' if hours < 10 else f'{hours:.0f} h'


def significant(x: float, digits: int = 2) -> str:
  """``x`` to ``digits`` significant figures, without exponent notation below 10^6."""
  if x == 0:
    return '0'
  rounded = round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))
  return f'{rounded:,.0f}' if abs(rounded) >= 10 ** (digits - 1) else f'{rounded:g}'
