"""What R-SAM's ascent is made of: ‖δ0‖ against ‖λĝ‖, and cos(δ0 + λĝ, ĝ), for any config.

R-SAM normalises d = δ0 + λĝ to length ρ (rsam.updaters.SharpnessAware, eq. 7). If ‖δ0‖ ≫ ‖λĝ‖ its
ascent is mostly a random direction of length ρ; the updaters log the composition of d at every step
(``rsam.updaters.ascent_composition``: ``noise_norm``, ``lam_grad_norm``, ``noise_grad_ratio``,
``ascent_grad_cos``). This module reads it

  - at initialisation, for the real model and recipe, on synthetic data (``probe_at_init``): the
    config's own train step, run for a few steps on random images and labels; and
  - over a training run, from the metrics the loop wrote (``read_scalars`` of its TensorBoard events);

and summarises it (``summarize_composition``): mean, standard error and range of each quantity, plus the
share of the ascent that is gradient, cos² (the squared length of ρ d/‖d‖ along ĝ, out of ρ²).

Pure JAX except ``read_scalars`` (TensorBoard's protos; files through rsam/training/paths.py); scripts/ascent_composition.py is the CLI.
"""
import math
import struct
from typing import Dict, Iterable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

COMPOSITION_KEYS = ('noise_norm', 'grad_norm', 'lam_grad_norm', 'noise_grad_ratio', 'ascent_grad_cos')


def synthetic_batch(key, batch_size: int, image_shape: Sequence[int], num_classes: int) -> dict:
  """{'image': U(−1, 1) of [B, H, W, C] float32, 'label': uniform int32 classes}: input of the range the
  pipelines feed the models, labels unrelated to the images (the network at init cannot tell)."""
  image_key, label_key = jax.random.split(key)
  return {'image': jax.random.uniform(image_key, (batch_size,) + tuple(image_shape), jnp.float32, -1.0, 1.0),
          'label': jax.random.randint(label_key, (batch_size,), 0, num_classes, jnp.int32)}


def probe_at_init(config, num_steps: int, *, batch_size: Optional[int] = None, seed: int = 0) -> List[dict]:
  """Runs the config's training step ``num_steps`` times from its initial state on synthetic batches and
  returns each step's metrics as floats (the updater's diagnostics among them).

  ``batch_size`` (default: the config's) replaces the global batch, and nothing else: the number of
  steps, hence every schedule (lr, ρ, γ), stays that of the full run. With m-sharpness the ascent is taken
  per group of ``config.updater.m`` examples, so a batch of m gives one group's ascent exactly as in the
  full run (the logged values are the mean over groups otherwise).
  """
  from rsam.training import config_check, train_step as ts
  from data import sources
  config = config.copy_and_resolve_references()
  config.total_steps = config_check.total_steps(config)  # fixed before the batch changes
  if batch_size:
    config.batch_size = batch_size
  config_check.validate(config)
  mesh = ts.make_mesh()
  run = ts.build(config, mesh)
  step_fn = jax.jit(ts.make_train_step(config, run.model, run.updater, run.tx, run.num_classes),
                    in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))),
                    out_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P())))
  shape = sources.image_shape(config.data)
  return probe_steps(step_fn, run.init_state(), num_steps,
                     lambda i: synthetic_batch(jax.random.fold_in(jax.random.key(seed), i), config.batch_size,
                                               shape, run.num_classes))


def probe_steps(step_fn, state, num_steps: int, make_batch) -> List[dict]:
  """``num_steps`` of ``state, metrics = step_fn(state, make_batch(i))``; each step's metrics as floats,
  with ``'step': i``."""
  out = []
  for i in range(num_steps):
    state, metrics = step_fn(state, make_batch(i))
    out.append({'step': i, **{k: float(v) for k, v in jax.device_get(metrics).items()}})
  return out


def summarize_composition(records: Iterable[dict]) -> Dict[str, dict]:
  """Per quantity of ``COMPOSITION_KEYS`` (and ``grad_share`` = ascent_grad_cos²): n, mean, standard
  error of the mean (ddof 1; 0 for n = 1), min and max over the records that have it."""
  records = list(records)
  rows = {k: [r[k] for r in records if k in r] for k in COMPOSITION_KEYS}
  rows['grad_share'] = [r['ascent_grad_cos'] ** 2 for r in records if 'ascent_grad_cos' in r]
  out = {}
  for k, v in rows.items():
    if not v:
      continue
    a = np.asarray(v, np.float64)
    out[k] = {'n': len(a), 'mean': float(a.mean()),
              'sem': float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0,
              'min': float(a.min()), 'max': float(a.max())}
  return out


def tfrecords(data: bytes) -> Iterable[bytes]:
  """The records of a TFRecord file's bytes (uint64 length, uint32 CRC, payload, uint32 CRC; the CRCs
  are not checked: a torn last record, as of a run still writing, is dropped)."""
  pos = 0
  while pos + 12 <= len(data):
    (length,) = struct.unpack('<Q', data[pos:pos + 8])
    start, end = pos + 12, pos + 12 + length
    if end + 4 > len(data):
      return
    yield data[start:end]
    pos = end + 4


def read_scalars(workdir: str, prefix: str = 'train/') -> List[dict]:
  """The scalars the training loop wrote (clu's TensorBoard writer) under ``prefix``, one dict per logged
  step, ``{'step': s, name: value, ...}`` with the prefix removed, sorted by step. Read through
  rsam/training/paths.py, so a gs:// workdir works."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.util import tensor_util
  from rsam.training import paths
  by_step = {}
  for name in paths.listdir(workdir):
    if not name.startswith('events.out.tfevents.'):
      continue
    for raw in tfrecords(paths.read_bytes(paths.path(workdir) / name)):
      event = event_pb2.Event.FromString(raw)
      for value in event.summary.value:
        if not value.tag.startswith(prefix):
          continue
        number = (float(tensor_util.make_ndarray(value.tensor)) if value.HasField('tensor')
                  else float(value.simple_value))
        by_step.setdefault(int(event.step), {})[value.tag[len(prefix):]] = number
  return [{'step': s, **v} for s, v in sorted(by_step.items())]


def over_seeds(logs: Sequence[Sequence[dict]], keys: Sequence[str] = COMPOSITION_KEYS + ('loss',)) -> dict:
  """Training logs of S seeds (lists of ``{'step': s, key: value}``, e.g. multi_seed's ``train_log``) ->
  ``{'steps': [...], key: {'mean': [...], 'sem': [...]}}`` over the steps every seed logged; sem is the
  std over seeds (ddof 1) / √S (0 for one seed). ``grad_share`` (cos²) is added when the cosine is there."""
  by_seed = [{r['step']: dict(r, grad_share=r['ascent_grad_cos'] ** 2) if 'ascent_grad_cos' in r else r
              for r in log} for log in logs]
  steps = sorted(set.intersection(*[set(b) for b in by_seed]))
  keys = list(keys) + (['grad_share'] if 'ascent_grad_cos' in keys else [])
  out = {'steps': steps, 'n_seeds': len(logs)}
  for k in keys:
    if not steps or any(k not in b[s] for b in by_seed for s in steps):
      continue
    a = np.asarray([[b[s][k] for s in steps] for b in by_seed], np.float64)
    out[k] = {'mean': a.mean(0).tolist(),
              'sem': (a.std(0, ddof=1) / math.sqrt(len(a))).tolist() if len(a) > 1 else [0.0] * len(steps)}
  return out
