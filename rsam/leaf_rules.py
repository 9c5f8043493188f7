"""Per-leaf rules: which leaves are weights, and which axis of a kernel indexes its output units.

Two parts of the library depend on a framework's conventions for its parameter trees:

* ASAM's scale T_w = |w| + η applies to WEIGHTS (Dense/Conv kernels, normalisation scales, embeddings)
  and T = 1 to biases and the other tensors (SamsungLabs/ASAM asam.py scales a parameter when 'weight' is
  in its PyTorch name). ``LeafRules.is_weight(path, leaf)`` decides.
* R-SAM's (and LPF-SGD's) kernel-wise noise scales the noise of kernel j by ‖w_j‖, where kernel j is one
  output unit's slice of a weight. ``LeafRules.output_axis`` says which axis indexes the output units.

``path`` is the leaf's key path (``jax.tree_util.tree_flatten_with_path``): dict keys, attribute names
(dataclass or equinox-style modules), sequence indices. ``path_names`` turns it into strings.

The presets:

============  =======================================  ==========================  =========================
preset        weights (``is_weight``)                  kernel output axis          trees
============  =======================================  ==========================  =========================
``FLAX``      last name in kernel, scale, embedding    last (Dense (in, out),      flax.linen, flax.nnx
              (nnx's trailing ``.value`` skipped)      Conv (kh, kw, in, out))     (the default)
``HAIKU``     last name in w, scale, embeddings        last (Linear (in, out),     dm-haiku
                                                       Conv (kh, kw, in, out))
``PYTORCH``   'weight' in the last name (asam.py's     0 (Linear (out, in),        PyTorch state dicts,
              rule: Linear, Conv, norm and Embedding   Conv (out, in, kh, kw))     equinox modules
              weights)
============  =======================================  ==========================  =========================

A 0-D or 1-D leaf (a bias, a normalisation scale) is one kernel under every rule. For a tree that mixes
layouts (a PyTorch ``nn.Embedding`` weight is (num, features), out-last), give ``output_axis`` as a
function of (path, leaf), or build your own ``LeafRules``:

    rules = rsam.LeafRules(is_weight=lambda path, leaf: rsam.leaf_rules.leaf_name(path) == 'w',
                           output_axis=lambda path, leaf: -1 if 'embed' in rsam.leaf_rules.leaf_name(path) else 0)
"""
import dataclasses
from typing import Any, Callable, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

KeyPath = Tuple[Any, ...]
IsWeight = Callable[[KeyPath, Any], bool]
OutputAxis = Union[int, Callable[[KeyPath, Any], int]]

# Entries a framework appends to a parameter's path that are not its name: flax.nnx's Variable `.value`.
_WRAPPER_NAMES = ('value', 'raw_value')


def path_names(path: KeyPath) -> Tuple[str, ...]:
  """The key path as strings: dict keys, attribute names and sequence indices, in order."""
  names = []
  for entry in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)))
        break
    else:
      names.append(str(entry))
  return tuple(names)


def leaf_name(path: KeyPath) -> str:
  """The parameter's own name: the last entry of its path, skipping flax.nnx's trailing ``value``."""
  names = list(path_names(path))
  while len(names) > 1 and names[-1] in _WRAPPER_NAMES:
    names.pop()
  return names[-1] if names else ''


def named(*names: str) -> IsWeight:
  """A weight predicate: the leaf's name (``leaf_name``) is one of ``names``."""
  names = frozenset(names)
  return lambda path, leaf: leaf_name(path) in names


def name_contains(fragment: str) -> IsWeight:
  """A weight predicate: ``fragment`` occurs in the leaf's name (SamsungLabs/ASAM's ``'weight' in name``)."""
  return lambda path, leaf: fragment in leaf_name(path)


@dataclasses.dataclass(frozen=True)
class LeafRules:
  """Which leaves are weights (ASAM) and which axis of a kernel indexes its outputs (kernel-wise noise).

  Attributes:
    is_weight: ``is_weight(path, leaf) -> bool``, with ``path`` the leaf's key path. True for the leaves
      ASAM scales by |w| + η (weights); the others get T = 1.
    output_axis: the axis of a kernel (a leaf with ndim >= 2) that indexes its output units, an int for
      every kernel or ``output_axis(path, leaf) -> int`` per leaf. The kernel-wise noise takes the norm
      over every other axis. Negative values count from the end (Flax: -1; PyTorch: 0).
    name: shown in messages.
  """
  is_weight: IsWeight
  output_axis: OutputAxis = -1
  name: str = 'custom'

  def __post_init__(self):
    if not callable(self.is_weight):
      raise TypeError(f'LeafRules(is_weight={self.is_weight!r}) must be a function (path, leaf) -> bool')
    if not (callable(self.output_axis) or isinstance(self.output_axis, int)):
      raise TypeError(f'LeafRules(output_axis={self.output_axis!r}) must be an int or a function '
                      f'(path, leaf) -> int')

  def axis_of(self, path: KeyPath, leaf) -> int:
    """The output axis of ``leaf`` as a non-negative int (leaves with ndim >= 2)."""
    ndim = len(jnp.shape(leaf))
    axis = self.output_axis(path, leaf) if callable(self.output_axis) else self.output_axis
    if not -ndim <= axis < ndim:
      raise ValueError(f'LeafRules {self.name}: output_axis={axis} is out of range for the leaf '
                       f'{"/".join(path_names(path))} of shape {jnp.shape(leaf)}; fix output_axis')
    return axis % ndim

  def weights(self, params) -> Sequence[bool]:
    """``is_weight`` of every leaf of ``params``, in flatten order."""
    return [bool(self.is_weight(path, leaf)) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]


FLAX = LeafRules(is_weight=named('kernel', 'scale', 'embedding'), output_axis=-1, name='FLAX')
HAIKU = LeafRules(is_weight=named('w', 'scale', 'embeddings'), output_axis=-1, name='HAIKU')
PYTORCH = LeafRules(is_weight=name_contains('weight'), output_axis=0, name='PYTORCH')
