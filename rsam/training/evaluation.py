"""Evaluation on the config's eval sets, shared by train.py and eval.py.

Each set's protocol (top-1, ReaL, ImageNet-R mask, ImageNet-C table; data/evalsets.py) returns additive
sums; they are computed inside one jit per set on the global, padded, masked batch, so every process runs
the same number of steps and padding never counts.
"""
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import data
from rsam.training import sharding


class Evaluator:
  def __init__(self, model, mesh, eval_sets: dict):
    self.model, self.eval_sets = model, eval_sets
    self.batch_sharding = sharding.batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    self._steps = {}
    for name, eval_set in eval_sets.items():
      def step(params, model_state, batch, metric_fn=eval_set.metric_fn):
        logits = model.apply({'params': params, **model_state}, batch['image'], train=False)
        return metric_fn(logits.astype(np.float32), batch)
      self._steps[name] = jax.jit(step, out_shardings=replicated)

  def run(self, params, model_state) -> dict:
    """{set name: finalized metrics (accuracy, count, and the per-set extras)}."""
    results = {}
    for name, eval_set in self.eval_sets.items():
      total = None
      for local in eval_set.iterate():
        sums = self._steps[name](params, model_state, data.to_global_batch(local, self.batch_sharding))
        total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
      results[name] = _to_python(eval_set.finalize(jax.device_get(total)))
    return results


def _to_python(tree):
  return jax.tree.map(lambda x: x.item() if hasattr(x, 'item') and np.ndim(x) == 0 else x, tree)
