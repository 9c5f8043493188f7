"""m-sharpness: an ascent step per group of m examples, whatever the number of devices.

Foret et al. (2021) and the official R-SAM run perturb each device's examples separately (16 images per
TPU core for ViT-B/16), so the ascent depends on how many devices run the job. This wrapper fixes the
group size instead:

    g = (1/G) Σ_k U(w; B_k),   B_k = examples [k·m, (k+1)·m) of the global batch,

where U is any updater. Under ``jax.shard_map`` over the mesh's ``batch_axes`` each device takes its
contiguous slice of the batch and runs U on each of its groups (``mode``, below); the group averages are
then averaged over devices (``pmean``). ``batch_axes=None`` (the default) splits the batch over EVERY
axis of the mesh (as rsam/training/sharding.py does); on a mesh with a model-parallel axis, name the
axes that split the batch, e.g. ``batch_axes='data'`` on a ('data', 'model') mesh. ``m`` must divide the
per-device batch (the global batch over the product of the batch axes' sizes): another m is refused,
naming both numbers, when the step is traced. Group k draws its noise and dropout from ``fold_in(key, k)``
with k the GLOBAL group index, so 1 and 8 devices compute the same update (up to float summation order).
Model state (BatchNorm statistics) and metrics are the mean over groups.

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
from typing import Any, Sequence, Tuple, Union

import jax
from jax.sharding import Mesh, PartitionSpec as P

from rsam.checks import check_choice, static_int
from rsam.updaters import PART_MODES, UpdateResult, mean_over_parts, split_batch

GROUP_MODES = ('auto',) + PART_MODES

try:  # jax >= 0.6.1; older releases have it under jax.experimental with check_rep for check_vma
  _shard_map = jax.shard_map
  _NO_CHECK = {'check_vma': False}
except AttributeError:  # pragma: no cover (the floor-version CI stage runs it)
  from jax.experimental.shard_map import shard_map as _shard_map
  _NO_CHECK = {'check_rep': False}


@dataclasses.dataclass(frozen=True)
class PerGroup:
  """An ascent per group of ``m`` examples (m-sharpness), on a device mesh (module docstring).

  Attributes:
    updater: any updater of this package (``SharpnessAware``, ``LPFSGD``, ...).
    m: examples per group, an int that divides the per-device batch.
    mesh: the ``jax.sharding.Mesh`` the step runs on.
    batch_axes: the mesh axes that split the batch (a name or a tuple of names); None: all of them.
    mode: how a device runs its groups: 'auto' (the default: 'unroll' on CPU, else 'loop'), 'loop',
      'unroll' or 'vmap' (module docstring).
  """
  updater: Any
  m: int
  mesh: Mesh
  batch_axes: Union[None, str, Sequence[str]] = None
  mode: str = 'auto'

  def __post_init__(self):
    object.__setattr__(self, 'm', static_int('m', self.m, minimum=1, what='examples per ascent group'))
    check_choice('group_mode', self.mode, GROUP_MODES)
    if not isinstance(self.mesh, Mesh):
      raise TypeError(f"mesh={self.mesh!r} must be a jax.sharding.Mesh, e.g. Mesh(jax.devices(), ('data',)) "
                      f"(optax.inject_hyperparams takes a Mesh for a schedule: pass static_args=('m', 'mesh'))")
    axes = self.axes()
    unknown = [a for a in axes if a not in self.mesh.axis_names]
    if unknown or not axes:
      raise ValueError(f'batch_axes={self.batch_axes!r} must name axes of the mesh {tuple(self.mesh.axis_names)} '
                       f'(None: all of them)')

  def axes(self) -> Tuple[str, ...]:
    """The mesh axes that split the batch."""
    if self.batch_axes is None:
      return tuple(self.mesh.axis_names)
    return (self.batch_axes,) if isinstance(self.batch_axes, str) else tuple(self.batch_axes)

  def diagnostic_names(self) -> Tuple[str, ...]:
    return self.updater.diagnostic_names()

  def part_mode(self) -> str:
    """The mode the groups run in on this mesh ('auto' resolved)."""
    if self.mode != 'auto':
      return self.mode
    return 'unroll' if self.mesh.devices.flat[0].platform == 'cpu' else 'loop'

  def per_device_batch(self, batch) -> int:
    """The examples each device holds: the batch over the product of the batch axes' sizes. ValueError
    (one line, naming both numbers) when ``m`` does not divide it."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
      raise ValueError('m-sharpness needs the batch: pass batch= (a pytree of arrays with a leading batch axis)')
    size = leaves[0].shape[0]
    devices = 1
    for a in self.axes():
      devices *= self.mesh.shape[a]
    where = f"the mesh's batch axes {self.axes()} ({devices} devices)"
    if size % devices:
      raise ValueError(f'the batch of {size} examples does not split over {where}; use a batch that is a '
                       f'multiple of {devices}, or other batch_axes')
    local = size // devices
    if self.m > local or local % self.m:
      divisors = [d for d in range(1, local + 1) if local % d == 0]
      raise ValueError(f'm={self.m} does not divide the per-device batch of {local} examples (a batch of '
                       f'{size} over {where}); pick m from {divisors}, or change the batch size or '
                       f'batch_axes')
    return local

  def __call__(self, loss_fn, params, model_state, batch, key, step) -> UpdateResult:
    axes = self.axes()
    num_groups = self.per_device_batch(batch) // self.m

    def per_device(params, model_state, batch, key, step):
      first_group = jax.lax.axis_index(axes) * num_groups  # the device's place along the batch

      def one(group, k):
        return self.updater(loss_fn, params, model_state, group,
                            jax.random.fold_in(key, first_group + k), step)

      result = mean_over_parts(one, split_batch(batch, num_groups, interleaved=False), num_groups,
                               mode=self.part_mode())
      return jax.lax.pmean(result, axes)

    return _shard_map(
        per_device, mesh=self.mesh,
        in_specs=(P(), P(), P(axes), P(), P()), out_specs=P(),
        **_NO_CHECK)(params, model_state, batch, key, step)
