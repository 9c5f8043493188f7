"""m-sharpness: an ascent step per group of m examples, whatever the number of devices.

Foret et al. (2021) and the official R-SAM run perturb each device's examples separately (16 images per
TPU core for ViT-B/16), so the ascent depends on how many devices run the job. This wrapper fixes the
group size instead:

    g = (1/G) Σ_k U(w; B_k),   B_k = examples [k·m, (k+1)·m) of the global batch,

where U is any updater. Under ``jax.shard_map`` over the data axis each device takes its contiguous
slice of the batch and scans its groups one after another (memory of one perturbed copy); the group
averages are then averaged over devices (``pmean``). Group k draws its noise and dropout from
``fold_in(key, k)`` with k the GLOBAL group index, so 1 and 8 devices compute the same update (up to
float summation order). Model state (BatchNorm statistics) and metrics are the mean over groups.

On CPU the groups are unrolled (``unroll=None``: unrolled on CPU only): XLA:CPU leaves the backward
convolutions of a loop body to its slow generic emitter (jax-ml/jax#12868), which made a grouped ResNet
step 20× slower than the ungrouped one (results/benchmarks/); unrolled it is faster than ungrouped, but
XLA keeps every group's buffers, so memory is about that of the whole batch, and compile time grows with
the number of groups. ``unroll=False`` keeps the loop (memory of one group) on any backend.
"""
import dataclasses
from typing import Any, Optional

import jax
from jax.sharding import Mesh, PartitionSpec as P

from rsam.updaters import UpdateResult, mean_over_parts, split_batch


@dataclasses.dataclass(frozen=True)
class PerGroup:
  updater: Any
  m: int
  mesh: Mesh
  axis: str = 'data'
  unroll: Optional[bool] = None

  def __call__(self, loss_fn, params, model_state, batch, key, step) -> UpdateResult:
    def per_device(params, model_state, batch, key, step):
      local_batch = jax.tree.leaves(batch)[0].shape[0]
      num_groups = local_batch // self.m
      first_group = jax.lax.axis_index(self.axis) * num_groups

      def one(group, k):
        return self.updater(loss_fn, params, model_state, group,
                            jax.random.fold_in(key, first_group + k), step)

      unroll = self.unroll
      if unroll is None:
        unroll = self.mesh.devices.flat[0].platform == 'cpu'
      result = mean_over_parts(one, split_batch(batch, num_groups, interleaved=False), num_groups,
                               unroll=unroll)
      return jax.lax.pmean(result, self.axis)

    return jax.shard_map(
        per_device, mesh=self.mesh,
        in_specs=(P(), P(), P(self.axis), P(), P()), out_specs=P(),
        check_vma=False)(params, model_state, batch, key, step)
