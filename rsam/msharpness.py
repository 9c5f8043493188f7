"""m-sharpness: an ascent step per group of m examples, whatever the number of devices.

Foret et al. (2021) and the official R-SAM run perturb each device's examples separately (16 images per
TPU core for ViT-B/16), so the ascent depends on how many devices run the job. This wrapper fixes the
group size instead:

    g = (1/G) Σ_k U(w; B_k),   B_k = examples [k·m, (k+1)·m) of the global batch,

where U is any updater. Under ``jax.shard_map`` over the mesh's axes (all of them split the batch,
rsam/training/sharding.py) each device takes its contiguous slice of the batch and runs U on each of
its groups (``mode``, below); the group averages are then averaged over devices (``pmean``). Group k
draws its noise and dropout from ``fold_in(key, k)`` with k the GLOBAL group index, so 1 and 8 devices
compute the same update (up to float summation order). Model state (BatchNorm statistics) and metrics are the mean over groups.

Sharded state (an 'fsdp' mesh axis): the groups need every parameter whole, so the body takes them
replicated (``in_specs`` P()); XLA all-gathers a sharded parameter once on the way in, and the averaged
gradient leaves replicated, to be split again where the optimizer state is. The step computes the same
numbers as with a replicated state; the parameters (and one gradient) are whole on each device during it.

How the groups run (``mode``; rsam.updaters.mean_over_parts):
  'loop'    one after another in a lax.scan: the memory of one group. The default on GPU and TPU.
  'unroll'  the same sums as straight-line code. The default on CPU: XLA:CPU leaves the backward
            convolutions of a loop body to its slow generic emitter (jax-ml/jax#12868), which made a
            grouped ResNet step 20× slower than the ungrouped one (results/benchmarks/); unrolled it is
            faster than ungrouped, but memory is about that of the whole batch and compile time grows
            with the number of groups.
  'vmap'    all groups at once, batched: the parallelism of the ungrouped step where small groups leave
            an accelerator idle in a loop, at the memory of one perturbed copy of the parameters (and of
            their gradients) per group.
``mode='auto'`` picks 'unroll' when the mesh's devices are CPUs, else 'loop'.
"""
import dataclasses
from typing import Any

import jax
from jax.sharding import Mesh, PartitionSpec as P

from rsam.updaters import PART_MODES, UpdateResult, mean_over_parts, split_batch

GROUP_MODES = ('auto',) + PART_MODES


@dataclasses.dataclass(frozen=True)
class PerGroup:
  updater: Any
  m: int
  mesh: Mesh
  axis: Any = None  # the mesh axes the batch is split over; None: all of them
  mode: str = 'auto'

  def part_mode(self) -> str:
    """The mode the groups run in on this mesh ('auto' resolved)."""
    if self.mode != 'auto':
      return self.mode
    return 'unroll' if self.mesh.devices.flat[0].platform == 'cpu' else 'loop'

  def __call__(self, loss_fn, params, model_state, batch, key, step) -> UpdateResult:
    axes = tuple(self.mesh.axis_names) if self.axis is None else self.axis

    def per_device(params, model_state, batch, key, step):
      local_batch = jax.tree.leaves(batch)[0].shape[0]
      num_groups = local_batch // self.m
      first_group = jax.lax.axis_index(axes) * num_groups  # the device's place along the batch

      def one(group, k):
        return self.updater(loss_fn, params, model_state, group,
                            jax.random.fold_in(key, first_group + k), step)

      result = mean_over_parts(one, split_batch(batch, num_groups, interleaved=False), num_groups,
                               mode=self.part_mode())
      return jax.lax.pmean(result, axes)

    return jax.shard_map(
        per_device, mesh=self.mesh,
        in_specs=(P(), P(), P(axes), P(), P()), out_specs=P(),
        check_vma=False)(params, model_state, batch, key, step)
