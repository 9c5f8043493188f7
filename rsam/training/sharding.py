"""The device mesh and how the training state and the batch are laid out on it: the one place for both.

``config.mesh`` (configs/common.py) names the mesh's axes and their sizes, e.g. ``{'data': -1, 'fsdp': 1}``
(the default: every device on 'data', the state replicated, as the paper's runs) or
``{'data': 4, 'fsdp': 2}``. -1 means "the devices the other axes leave". The axes are, in this order:

  data   batch only: each device along it holds a full copy of the state (plain data parallelism).
  fsdp   batch AND state: parameters, optimizer state and model state are split along it (FSDP, ZeRO-3
         style). XLA (GSPMD) all-gathers a parameter where the computation needs it whole and
         reduce-scatters its gradient, so memory for the state drops by the fsdp size at the cost of
         that communication.

The batch is split over both axes (every device gets global_batch / num_devices examples). 'fsdp' is the
inner (minor) axis: its groups are consecutive devices, within one host where fsdp divides the host's
device count, so the all-gathers stay on the fastest links.

Which leaves are split (``leaf_spec``), a rule in the spirit of big_vision's fsdp strategy: a leaf of at
least ``config.shard_min_bytes`` is split along its largest dimension that the fsdp size divides (ties:
the earlier dimension); smaller leaves (biases, LayerNorm scales, counters) and leaves with no such
dimension stay replicated. Adam's moments have their parameter's shape, so they are split as it is.
Nothing here changes what a step computes: norms, inner products and random draws are those of the
global arrays under jit, whatever the layout (tests/test_sharding.py checks every updater).
"""
import math
from typing import Any, Dict, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rsam.errors import ConfigError

AXES = ('data', 'fsdp')          # outer to inner
STATE_AXIS = 'fsdp'              # the axis the state is split along
DEFAULT_MESH = {'data': -1, 'fsdp': 1}
DEFAULT_MIN_SHARD_BYTES = 2**20  # 1 MiB: smaller leaves (biases, norms) are not worth an all-gather each


def mesh_config(config) -> Dict[str, int]:
  """``config.mesh`` as {axis: size}, unresolved (-1 kept); the default when the config has none."""
  fields = config.get('mesh') if config is not None else None
  return dict(DEFAULT_MESH if fields is None else fields)


def min_shard_bytes(config) -> int:
  value = config.get('shard_min_bytes') if config is not None else None
  return DEFAULT_MIN_SHARD_BYTES if value is None else int(value)


def mesh_shape(axes: Dict[str, Any], num_devices: int) -> Dict[str, int]:
  """{axis: size} for every axis of AXES (absent axes: 1), -1 resolved; one-line ConfigError if the sizes
  are not positive integers or do not multiply to ``num_devices``."""
  unknown = [k for k in axes if k not in AXES]
  if unknown:
    raise ConfigError(f'config.mesh has unknown axes {unknown}; the axes are {", ".join(AXES)}')
  sizes = {name: axes.get(name, 1) for name in AXES}
  for name, size in sizes.items():
    if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
      raise ConfigError(f'config.mesh.{name}={size!r} must be a positive integer or -1 (the rest)')
  rest = [name for name, size in sizes.items() if size == -1]
  if len(rest) > 1:
    raise ConfigError(f'config.mesh: only one axis may be -1 (got {", ".join(rest)})')
  fixed = math.prod(size for size in sizes.values() if size != -1)
  described = ' x '.join(f'{k}={v}' for k, v in sizes.items())
  if rest:
    if num_devices % fixed:
      raise ConfigError(f'config.mesh ({described}) does not fit the {num_devices} devices: {fixed} does '
                        f'not divide {num_devices}')
    sizes[rest[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(f'config.mesh ({described}) has {fixed} devices but this run has {num_devices}; '
                      f'make the sizes multiply to {num_devices} or set one axis to -1')
  return sizes


def make_mesh(config=None, devices=None) -> Mesh:
  """The mesh ``config.mesh`` describes over ``devices`` (default: all of them); no config: every device
  on 'data' (replicated state)."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = mesh_shape(mesh_config(config), len(devices))
  shape = tuple(sizes[name] for name in AXES)
  # jax.devices() order (process by process), as before meshes came from the config: each host's devices
  # hold one contiguous block of the batch, as the input pipeline's per-process slices require, and an
  # fsdp group is consecutive devices, i.e. within a host when fsdp divides its device count.
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def batch_axes(mesh: Mesh) -> tuple:
  """The mesh axes the batch is split over: all of them (AXES are all data-like)."""
  return tuple(mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over every mesh axis."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def leaf_spec(shape, itemsize: int, fsdp_size: int, min_bytes: int) -> P:
  """P with STATE_AXIS on the largest dimension of ``shape`` that ``fsdp_size`` divides (the earliest of
  equal ones); P() when fsdp_size is 1, the leaf is below ``min_bytes``, or no dimension is divisible."""
  if fsdp_size <= 1 or math.prod(shape) * itemsize < min_bytes:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      return P(*([None] * dim + [STATE_AXIS]))
  return P()


def state_specs(mesh: Mesh, shapes, min_bytes: int = DEFAULT_MIN_SHARD_BYTES):
  """A PartitionSpec per leaf of ``shapes`` (arrays or ShapeDtypeStructs)."""
  fsdp_size = dict(zip(mesh.axis_names, mesh.devices.shape)).get(STATE_AXIS, 1)
  return jax.tree.map(lambda s: leaf_spec(tuple(s.shape), np.dtype(s.dtype).itemsize, fsdp_size, min_bytes),
                      shapes)


def state_shardings(mesh: Mesh, shapes, min_bytes: int = DEFAULT_MIN_SHARD_BYTES):
  """A NamedSharding per leaf of ``shapes``, by ``leaf_spec``."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), state_specs(mesh, shapes, min_bytes),
                      is_leaf=lambda x: isinstance(x, P))


def check_state_split(mesh: Mesh, param_shapes, min_bytes: int) -> None:
  """One-line ConfigError when the fsdp axis is > 1 but splits no parameter (it would only cost
  communication)."""
  fsdp_size = dict(zip(mesh.axis_names, mesh.devices.shape)).get(STATE_AXIS, 1)
  if fsdp_size <= 1:
    return
  specs = jax.tree.leaves(state_specs(mesh, param_shapes, min_bytes), is_leaf=lambda x: isinstance(x, P))
  if not any(spec != P() for spec in specs):
    raise ConfigError(f'config.mesh.fsdp={fsdp_size} divides no dimension of any parameter of at least '
                      f'config.shard_min_bytes={min_bytes} bytes; pick an fsdp size that divides the '
                      f'model\'s widths, lower shard_min_bytes, or set config.mesh.fsdp=1')


def bytes_per_device(shapes, specs, mesh_sizes: Dict[str, int]) -> int:
  """Bytes of ``shapes`` one device holds under ``specs``, from shapes alone (nothing materialized)."""
  total = 0
  for s, spec in zip(jax.tree.leaves(shapes), jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))):
    split = math.prod(mesh_sizes[a] for part in spec if part is not None
                      for a in (part if isinstance(part, tuple) else (part,)))
    total += math.prod(s.shape) * np.dtype(s.dtype).itemsize // split
  return total


def bytes_by_fsdp(shapes, fsdp_sizes, min_bytes: int = DEFAULT_MIN_SHARD_BYTES) -> Dict[int, int]:
  """{fsdp size: bytes of ``shapes`` per device} under ``leaf_spec`` (any data size: 'data' replicates)."""
  out = {}
  for fsdp in fsdp_sizes:
    specs = jax.tree.map(lambda s: leaf_spec(tuple(s.shape), np.dtype(s.dtype).itemsize, fsdp, min_bytes),
                         shapes)
    out[int(fsdp)] = bytes_per_device(shapes, specs, {'data': 1, STATE_AXIS: fsdp})
  return out


def addressable_bytes(tree, device: Optional[Any] = None) -> int:
  """Bytes of ``tree``'s arrays that live on ``device`` (default: the first), measured from the shards."""
  device = jax.devices()[0] if device is None else device
  return sum(shard.data.nbytes for leaf in jax.tree.leaves(tree) for shard in leaf.addressable_shards
             if shard.device == device)
