"""Evaluation on the config's eval sets, shared by train.py and eval.py, and when each set runs.

Each evaluator has its own interval (big_vision's ``evals.<name>.log_steps``): ``config.eval_intervals``
maps an eval set to every how many training steps it runs (0: only at the end); a set without an entry
runs every ``config.eval_every_steps`` (0: only at the end). ``config.eval_sets`` is the final list (the
sets results.json reports for the tables); a set named only in ``eval_intervals`` (ImageNet's 'minival',
the curve) runs at its interval and at the end too. Every set runs once at the end.

Each set's protocol (top-1, ReaL, ImageNet-R mask, ImageNet-C table; data/evalsets.py) returns additive
sums; they are computed inside one jit per set on the global, padded, masked batch, so every process runs
the same number of steps and padding never counts.
"""
from typing import Dict, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import data
from rsam.errors import ConfigError
from rsam.training import sharding


def intervals(config) -> Dict[str, int]:
  """{eval set: interval in steps (0 = only at the end)} of every set the run evaluates, in order:
  config.eval_sets, then the sets named only in config.eval_intervals. One-line ConfigError for a bad one."""
  default = config.get('eval_every_steps') or 0
  given = dict(config.get('eval_intervals') or {})
  for name, every in given.items():
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
      raise ConfigError(f'config.eval_intervals.{name}={every!r} must be an int >= 0 (0 = only at the end)')
  out = {name: given.get(name, default) for name in config.eval_sets}
  out.update({name: every for name, every in given.items() if name not in out})
  return out


def due(every: Dict[str, int], step: int, total_steps: int) -> Tuple[str, ...]:
  """The sets that run after training step ``step`` (the end's evaluation of every set is separate)."""
  if step >= total_steps:
    return ()
  return tuple(name for name, n in every.items() if n and step % n == 0)


def write(writer, step: int, eval_results: dict) -> None:
  """The scalars of ``eval_results`` as ``eval/<set>/<metric>`` (one line printed). ``count`` (the number
  of examples) is no curve: it stays in results.json only."""
  flat = {}
  for name, result in eval_results.items():
    for k, v in result.items():
      if isinstance(v, (int, float)) and k != 'count':
        flat[f'eval/{name}/{k}'] = v
  writer.write_scalars(step, flat)
  print(f'eval at step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in flat.items()), flush=True)


class Evaluator:
  def __init__(self, model, mesh, eval_sets: dict):
    self.model, self.eval_sets = model, eval_sets
    self.batch_sharding = sharding.batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    self._steps, self._compiled = {}, set()
    for name, eval_set in eval_sets.items():
      def step(params, model_state, batch, metric_fn=eval_set.metric_fn):
        logits = model.apply({'params': params, **model_state}, batch['image'], train=False)
        return metric_fn(logits.astype(np.float32), batch)
      self._steps[name] = jax.jit(step, out_shardings=replicated)

  def run(self, params, model_state, names: Optional[Sequence[str]] = None) -> dict:
    """{set name: finalized metrics (accuracy, count, and the per-set extras)} of ``names`` (default all)."""
    results = {}
    first = [n for n in self.eval_sets if (names is None or n in names) and n not in self._compiled]
    if first:  # each set's program compiles on its first use: say so, the wait can be minutes
      print(f'compiling the evaluation of {", ".join(first)} (first use)...', flush=True)
      self._compiled.update(first)
    for name, eval_set in self.eval_sets.items():
      if names is not None and name not in names:
        continue
      total = None
      for local in eval_set.iterate():
        sums = self._steps[name](params, model_state, data.to_global_batch(local, self.batch_sharding))
        total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
      results[name] = _to_python(eval_set.finalize(jax.device_get(total)))
    return results


def _to_python(tree):
  return jax.tree.map(lambda x: x.item() if hasattr(x, 'item') and np.ndim(x) == 0 else x, tree)
