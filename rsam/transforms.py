"""Sharpness-aware optimizers as optax transforms: SAM, ASAM, R-SAM, GSAM and R-GSAM.

Each constructor wraps a base optax transform (any chain: clipping, weight decay, schedules, AdamW, ...)
and hands it the sharpness-aware gradient instead of the plain one::

    base = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    tx = rsam.transforms.rsam(base, rho=0.05, gamma=5e-4, lam=2.0, key=0)
    opt_state = tx.init(params)
    ...                                                   # in the (jitted) train step:
    grad_fn = lambda p, key: jax.grad(loss)(p, batch)    # the gradient of the batch's loss at p
    updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
    params = optax.apply_updates(params, updates)

The calling convention is ``optax.contrib.sam``'s opaque mode: ``update`` receives a gradient function in
its extra arguments, evaluates it where the method needs it (two gradient evaluations per step), and
returns the base optimizer's update. Each transform adapts this package's updater (rsam/updaters.py):
the ascent, the noise, the GSAM decomposition, the float32 arithmetic and the schedules are the
updater's own (tests/test_transforms.py compares them bit for bit).

``update(updates, state, params, *, grad_fn, key=None, batch=None, **extra_args)``:
  updates    not used: the transform evaluates both gradients itself with ``grad_fn`` (R-SAM's first
             gradient is taken at w + δ0, not at w). Pass the gradient you have, as for optax.contrib.sam,
             or None; under ``jax.jit`` a gradient nobody uses is not computed.
  grad_fn    ``grad_fn(params, key) -> grads``; with ``init_aux`` set, ``-> (grads, aux)``; with ``batch``
             passed, ``grad_fn(params, key, batch)``. ``key`` is the step's dropout key, the same for both
             passes (as google-research/sam); a grad_fn written for optax.contrib.sam, which ignores its
             second argument, works unchanged.
  key        this step's PRNG key (noise and dropout), overriding the one derived from the constructor's
             ``key``: ``fold_in(key, t)`` with t the ``sam_step`` count kept in the state.
  batch      optional; passed on to ``grad_fn`` and split by the transform where it splits batches
             (m-sharpness groups ``m``, micro-batches ``accum_steps``), which then require it.
  extra_args go to the base optimizer (e.g. ``value`` for optax.contrib.reduce_on_plateau).

State. ``SharpnessAwareState``: ``sam_step`` (updates so far, the step t of the schedules),
``inner_state`` (the base optimizer's), ``aux`` (with ``init_aux``: the aux grad_fn returned in the FIRST
pass of the last step: at w for SAM, ASAM and GSAM, at w + δ0 for R-SAM and R-GSAM; e.g. the loss and
BatchNorm statistics) and ``sam_diagnostics``, a dict of float32 scalars of the last step, computed at no
extra pass: ``rho_t`` ρ_t, ``grad_norm`` ‖ĝ‖, ``descent_grad_norm`` ‖g_adv‖, ``cos_ascent_descent``
cos(ĝ, g_adv); for R-SAM and R-GSAM also ``gamma_t`` γ_t, ``noise_norm`` ‖δ0‖, ``lam_grad_norm`` λ‖ĝ‖,
``noise_grad_ratio`` ‖δ0‖/‖λĝ‖ and ``ascent_grad_cos`` cos(δ0 + λĝ, ĝ). Inside a chain,
``optax.tree.get(opt_state, 'sam_diagnostics')`` and ``optax.tree.get(opt_state, 'aux')`` find them; the
names do not collide with optax's (AdamW's ``count``, inject_hyperparams' ``rho``...).

Dtypes. The update has each parameter's dtype (bfloat16 stays bfloat16, float64 stays float64), so the
base optimizer's state keeps its dtypes and a jitted step or a ``lax.scan`` over steps compiles once; the
ascent is computed in float32 (float64 for float64 parameters).

Hyperparameters. ``rho``, ``gamma``, ``lam``, ``alpha`` (and ``eta``, ``eps``) take Python floats, arrays
(values traced under jit included) or schedules of the step t (``rsam.lr_tied_rho``, ``rsam.cosine_increase``,
any optax schedule). ``optax.inject_hyperparams(rsam.transforms.rsam)(base, rho=0.05, gamma=1e-3, lam=2.0,
key=0)`` keeps them in ``opt_state.hyperparams``, where they can be changed mid-run. A function argument
that is not a schedule (a callable ``mask``; ``mesh``, as a ``jax.sharding.Mesh`` is callable) must then be
named in ``static_args``, as in optax; an integer that fixes shapes (``m``, ``accum_steps``) too:
``static_args=('m', 'mesh')`` for m-sharpness. With bfloat16 parameters inject_hyperparams keeps
the hyperparameters in bfloat16 unless ``hyperparam_dtype=jnp.float32``.

Composition with optax. The transform must see every gradient the base optimizer sees, so it goes
OUTSIDE the other transforms:

  * ``sam(optax.chain(clip, adamw))``, not ``optax.chain(clip, sam(adamw))``: a transform chained BEFORE
    this one would act on a gradient this one never uses, so it is refused (ValueError) when traced.
    Chaining AFTER it (``optax.chain(sam(base), optax.scale(0.5))``) is fine.
  * ``sam(optax.apply_if_finite(base, n))`` skips a step whose SHARPNESS-AWARE gradient is not finite;
    ``apply_if_finite(sam(base), n)`` would check only the gradient passed in, and is refused.
  * ``optax.MultiSteps(sam(base), k)`` would take the ascent of the last micro-batch only, and is
    refused. Use ``accum_steps=k`` with ``update(batch=...)`` for the exact large-batch step (the ascent
    from the whole batch's gradient, the memory of one micro-batch), or ``sam(optax.MultiSteps(base, k))``
    for one ascent per micro-batch (m-sharpness with m = the micro-batch).
  * ``optax.masked(sam(base), mask)`` and ``optax.multi_transform`` hand the transform part of the
    parameters, with which grad_fn cannot be evaluated: refused. Use ``sam(base, mask=mask)`` to keep
    leaves out of the ascent, and ``sam(optax.masked(base, mask))`` to mask the base optimizer.
  * ``optax.inject_hyperparams`` (above) works inside and outside a chain.

Keys. R-SAM and R-GSAM draw noise and REQUIRE ``key`` (an integer seed or a ``jax.random.key``; None
means every ``update`` call passes ``key=``), as optax's own noise transforms do: a default seed would
give every run the same noise. SAM, ASAM and GSAM draw nothing; their ``key`` only feeds grad_fn's
dropout key, and without one grad_fn gets ``fold_in(jax.random.key(0), t)``, the same in every run: pass
``key`` (or ``update(key=...)``) for a model with dropout.

``from_updater`` wraps any updater of this package (``rsam.LPFSGD``, ``rsam.PerGroup``, ...).
"""
import os
import sys
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsam import tree as T
from rsam.checks import check_choice, static_int
from rsam.leaf_rules import FLAX, LeafRules
from rsam.msharpness import GROUP_MODES, PerGroup
from rsam.schedules import ScalarOrSchedule
from rsam.updaters import LPFSGD, SharpnessAware

PyTree = Any
Key = Union[int, jax.Array]

_safe_increment = getattr(optax, 'safe_increment', None) or optax.safe_int32_increment  # optax < 0.2.4


class SharpnessAwareState(NamedTuple):
  """The state of a sharpness-aware transform (module docstring, "State")."""
  sam_step: jax.Array          # the step t of the schedules: the number of updates so far
  inner_state: optax.OptState  # the base optimizer's state
  aux: PyTree                  # the first pass's aux of the last step (init_aux before the first)
  sam_diagnostics: Dict[str, jax.Array]  # the last step's diagnostics (zeros before the first)


# The updaters' diagnostic names that would collide with an inject_hyperparams hyperparameter of the same
# name under optax.tree.get: renamed in the state (ρ_t, γ_t: the values at the step).
_STATE_NAMES = {'rho': 'rho_t', 'gamma': 'gamma_t'}


def _state_name(name: str) -> str:
  return _STATE_NAMES.get(name, name)


def _as_loss_fn(grad_fn: Callable, with_aux: bool, with_batch: bool):
  """``grad_fn`` in the updaters' convention ``loss_fn(params, model_state, batch, rng)``.

  The updaters differentiate their loss function. ⟨sg(g), w⟩, with g = grad_fn(sg(w)) (sg: stop_gradient,
  so grad_fn is not differentiated again), has the gradient g at w exactly (g·1), which is all an
  updater reads from it; its value, a meaningless number, is never used. grad_fn's aux travels in the
  model-state slot, which the updaters take from the first pass.
  """
  def loss_fn(params, model_state, batch, rng):
    del model_state
    point = jax.lax.stop_gradient(params)
    out = grad_fn(point, rng, batch) if with_batch else grad_fn(point, rng)
    grads, aux = out if with_aux else (out, None)
    if jax.tree.structure(grads) != jax.tree.structure(params):
      raise ValueError(
          f'grad_fn returned {jax.tree.structure(grads)}, not a gradient shaped like params '
          f'{jax.tree.structure(params)}; if it returns (grads, aux), pass init_aux= to the transform')
    return T.vdot(grads, params), (aux, {})
  return loss_fn


def _splits_batch(updater) -> bool:
  return (isinstance(updater, PerGroup) or getattr(updater, 'accum_steps', 1) != 1
          or (isinstance(updater, LPFSGD) and updater.num_samples != 1))


def _draws_noise(updater) -> bool:
  inner = updater.updater if isinstance(updater, PerGroup) else updater
  return isinstance(inner, LPFSGD) or getattr(inner, 'gamma', None) is not None


def _aux_spec(tree):
  return jax.tree.structure(tree), [(jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)]


def _as_key(key: Optional[Key]) -> Optional[jax.Array]:
  """A typed PRNG key from an integer seed (any integer type, traced or not), a ``jax.random.key`` or a
  legacy ``jax.random.PRNGKey``; None stays None."""
  if key is None:
    return None
  if isinstance(key, (bool, np.bool_)):
    raise TypeError(f'key={key!r} must be an integer seed or a jax.random.key(...)')
  if isinstance(key, (int, np.integer)):
    return jax.random.key(key)
  dtype = getattr(key, 'dtype', None)
  if dtype is not None:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      return key
    if jnp.issubdtype(dtype, jnp.integer) and jnp.shape(key) == ():
      return jax.random.key(key)
    if dtype == jnp.uint32 and jnp.shape(key) == (2,):
      return jax.random.wrap_key_data(key)
  raise TypeError(f'key={key!r} must be an integer seed or a jax.random.key(...) (or a legacy '
                  f'jax.random.PRNGKey)')


# --- transforms of optax's that would wrap this one wrongly (module docstring, "Composition") ----------
def _update_code(build) -> Optional[Any]:
  try:
    return build().update.__code__
  except Exception:  # pylint: disable=broad-except  (an optax release without it)
    return None


_CHAINS = frozenset(c for c in (_update_code(lambda: optax.chain(optax.identity())),
                                 _update_code(lambda: optax.named_chain(('identity', optax.identity()))))
                    if c)
_REFUSED_WRAPPERS = {
    code: message for code, message in (
        (_update_code(lambda: optax.apply_if_finite(optax.identity(), 0)),
         'optax.apply_if_finite(tx, n) checks only the gradient passed in, not the one {name} computes; '
         'put it inside instead: {name}(optax.apply_if_finite(base, n), ...)'),
        (getattr(getattr(optax, 'MultiSteps', None), 'update', None) and optax.MultiSteps.update.__code__,
         'optax.MultiSteps(tx, k) would give {name} the ascent of the last micro-batch only; use '
         '{name}(..., accum_steps=k) with update(batch=...) for the exact large-batch step, or '
         '{name}(optax.MultiSteps(base, k), ...) for an ascent per micro-batch'),
    ) if code}
_LIBRARY_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (jax, optax))


def _refuse_wrong_wrapping(name: str) -> None:
  """ValueError if optax called this transform's update in a way that drops part of the optimizer:
  from a chain after another link, or from inside apply_if_finite or MultiSteps. Looks at the Python
  callers while the step is traced (no cost in the compiled step), up to the first frame outside jax and
  optax (the user's code)."""
  frame = sys._getframe(2)  # pylint: disable=protected-access  (0: here, 1: update_fn, 2: its caller)
  while frame is not None:
    code = frame.f_code
    if code in _CHAINS:
      if frame.f_locals.get('new_state'):  # the chain's links before this one have run
        raise ValueError(
            f'{name} is chained after another transform, whose effect it would drop (it computes its '
            f'gradients with grad_fn); put the other transforms inside instead: '
            f'{name}(optax.chain(optax.clip_by_global_norm(...), optax.adamw(...)), ...)')
    elif code in _REFUSED_WRAPPERS:
      raise ValueError(_REFUSED_WRAPPERS[code].format(name=name))
    elif not code.co_filename.startswith(_LIBRARY_DIRS):
      return
    frame = frame.f_back


def _refuse_partial_params(name: str, params) -> None:
  masked = [x for x in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
            if isinstance(x, optax.MaskedNode)]
  if masked:
    raise ValueError(f'{name} got part of the parameters (optax.masked or multi_transform around it), with '
                     f'which grad_fn cannot be evaluated; use {name}(base, ..., mask=...) to keep leaves out '
                     f'of the ascent, and {name}(optax.masked(base, mask), ...) to mask the base optimizer')


def from_updater(optimizer: optax.GradientTransformation, updater: Callable, *, key: Optional[Key] = None,
                 init_aux: PyTree = None, name: str = 'from_updater') -> optax.GradientTransformationExtraArgs:
  """Any updater of this package as an optax transform (the module docstring describes ``update``).

  At step t (``state.sam_step``), with the updater U and the base optimizer's update function O::

    r = U(grad_fn as a loss, w, batch, key_t, t)      (r.grads: the updater's gradient)
    update, inner_state = O(r.grads, inner_state, w)

  Args:
    optimizer: the base optax transform that turns the updater's gradient into the update.
    updater: an updater of this package: ``rsam.SharpnessAware``, ``rsam.LPFSGD``, ``rsam.PerGroup``,
      ``rsam.Plain``.
    key: an integer seed (any integer type) or a ``jax.random.key``; step t uses ``fold_in(key, t)``
      unless ``update`` gets ``key=``. Required (here or at every update) when the updater draws noise.
    init_aux: None (grad_fn returns the gradient only) or the aux grad_fn returns, before the first step:
      it fixes the structure, shapes and dtypes of ``state.aux``.
    name: the name shown in messages.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state ``SharpnessAwareState``.
  """
  if not (hasattr(optimizer, 'init') and hasattr(optimizer, 'update')):
    raise TypeError(f'{name}: the base optimizer {optimizer!r} is not an optax transform (e.g. optax.adamw(1e-3))')
  if not callable(updater) or not hasattr(updater, 'diagnostic_names'):
    raise TypeError(f'{name}: updater={updater!r} is not an updater of rsam (rsam.SharpnessAware, rsam.LPFSGD, '
                    f'rsam.PerGroup, rsam.Plain)')
  inner = optax.with_extra_args_support(optimizer)
  with_aux = init_aux is not None
  root_key = _as_key(key)  # update's own ``key`` argument overrides the per-step key derived from this one
  needs_key = _draws_noise(updater)
  names = tuple(_state_name(n) for n in updater.diagnostic_names())

  def init_fn(params):
    _refuse_partial_params(name, params)
    return SharpnessAwareState(sam_step=jnp.zeros([], jnp.int32), inner_state=inner.init(params),
                               aux=init_aux, sam_diagnostics={n: jnp.zeros([], jnp.float32) for n in names})

  def update_fn(updates, state, params=None, *, grad_fn=None, key=None, batch=None, **extra_args):
    del updates  # both gradients come from grad_fn (module docstring)
    if not isinstance(state, SharpnessAwareState):
      raise TypeError(f'{name}: state is a {type(state).__name__}, not the SharpnessAwareState that '
                      f'tx.init(params) returns; pass this transform\'s own state (a 0.1.0 state: see '
                      f'CHANGELOG.md)')
    _refuse_wrong_wrapping(name)
    if grad_fn is None:
      raise ValueError(f'{name} needs grad_fn=: call update(updates, state, params, grad_fn=grad_fn) with '
                       f'grad_fn(params, key) -> gradient')
    if params is None:
      raise ValueError(f'{name} needs params: call update(updates, state, params, grad_fn=...)')
    _refuse_partial_params(name, params)
    if batch is None and _splits_batch(updater):
      raise ValueError(f'{name} splits the batch (m-sharpness groups, micro-batches or noise samples): pass '
                       f'batch= to update and take it as grad_fn\'s third argument')
    if key is not None:
      step_key = _as_key(key)
    elif root_key is not None:
      step_key = jax.random.fold_in(root_key, state.sam_step)
    elif needs_key:
      raise ValueError(f'{name} draws noise and has no key: pass key= (an integer seed) to the constructor, '
                       f'or key= to every update')
    else:  # only grad_fn's dropout key derives from it (module docstring, "Keys")
      step_key = jax.random.fold_in(jax.random.key(0), state.sam_step)
    result = updater(_as_loss_fn(grad_fn, with_aux, batch is not None), params, None, batch, step_key,
                     state.sam_step)
    if with_aux and _aux_spec(result.model_state) != _aux_spec(state.aux):
      raise ValueError(f'grad_fn returned an aux {_aux_spec(result.model_state)} unlike init_aux '
                       f'{_aux_spec(state.aux)}; pass init_aux= with the structure, shapes and dtypes '
                       f'of the aux grad_fn returns')
    diagnostics = {_state_name(k): jnp.asarray(v, jnp.float32) for k, v in result.aux.items()}
    new_updates, inner_state = inner.update(result.grads, state.inner_state, params, **extra_args)
    return new_updates, SharpnessAwareState(
        sam_step=_safe_increment(state.sam_step), inner_state=inner_state,
        aux=result.model_state if with_aux else None,
        sam_diagnostics={n: diagnostics[n] for n in names})

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _sharpness_aware(name: str, optimizer, *, key, init_aux, mask, accum_steps, m, mesh, batch_axes,
                     group_mode, **fields) -> optax.GradientTransformationExtraArgs:
  check_choice('group_mode', group_mode, GROUP_MODES)
  accum = 1 if accum_steps is None else static_int('accum_steps', accum_steps, minimum=1,
                                                   what='micro-batches per step')
  updater = SharpnessAware(mask=mask, accum_steps=accum, **fields)
  if m is None:
    if mesh is not None or batch_axes is not None:
      raise ValueError(f'{name}: mesh= and batch_axes= are for m-sharpness; pass m= (examples per ascent '
                       f'group) too, or drop them')
  else:
    if mesh is None:
      raise ValueError(f"{name}: m={m} (m-sharpness) needs mesh=: the jax.sharding.Mesh the step runs on, "
                       f"e.g. Mesh(jax.devices(), ('data',))")
    if accum != 1:
      raise ValueError(f'{name}: m={m} already runs the groups one after another; drop accum_steps='
                       f'{accum_steps}')
    updater = PerGroup(updater, m=m, mesh=mesh, batch_axes=batch_axes, mode=group_mode)
  return from_updater(optimizer, updater, key=key, init_aux=init_aux, name=name)


# The constructors. Each docstring states the method's equations, every argument, the return value and
# the references; the options shared by all (key, init_aux, mask, accum_steps, m, mesh, batch_axes,
# group_mode, eps) read the same in each, so that help() on any one of them is complete.


def sam(optimizer: optax.GradientTransformation, *, rho: ScalarOrSchedule, key: Optional[Key] = None,
        init_aux: PyTree = None, mask: Any = None, accum_steps: Optional[int] = None, m: Optional[int] = None,
        mesh: Optional[jax.sharding.Mesh] = None, batch_axes: Union[None, str, Sequence[str]] = None,
        group_mode: str = 'auto', eps: float = T.EPS) -> optax.GradientTransformationExtraArgs:
  r"""Sharpness-Aware Minimization (SAM).

  The base optimizer gets the gradient at the point of highest loss within radius ρ, to first order::

    g = ∇L(w),   w_adv = w + ρ_t g / (‖g‖ + ε),   g_sam = ∇L(w_adv)

  Two gradient evaluations per step. ``optax.contrib.sam`` in opaque mode with
  ``adv_optimizer = chain(normalize(), sgd(rho))`` computes the same, but for ε and the order of the
  float operations.

  Example::

    base = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))
    tx = rsam.transforms.sam(base, rho=0.05)
    grad_fn = lambda p, key: jax.grad(loss)(p, batch)
    updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)

  Args:
    optimizer: the base optax transform that turns g_sam into the update. Any chain: clipping, weight
      decay, ``optax.apply_if_finite`` and ``optax.MultiSteps`` go here, inside. Chained after another
      transform, or wrapped by apply_if_finite, MultiSteps or ``optax.masked``, the transform refuses to
      run (the module docstring shows why, and the pattern to use).
    rho: ρ >= 0, the ascent radius: a float, an array or a schedule of the step t (``rsam.lr_tied_rho``
      ties it to the learning rate).
    key: optional: SAM draws nothing, the key only feeds grad_fn's dropout key. An integer seed (any
      integer type) or a ``jax.random.key``; step t uses ``fold_in(key, t)`` unless ``update`` gets
      ``key=``. Without it grad_fn gets ``fold_in(jax.random.key(0), t)``, the same in every run.
    init_aux: None when ``grad_fn(params, key)`` returns the gradient only; else the aux it returns
      beside it, ``grad_fn(...) -> (grads, aux)``, as it is before the first step (e.g.
      ``(jnp.zeros(()), batch_stats)`` for the loss and BatchNorm statistics). It fixes the structure,
      shapes and dtypes of ``state.aux``, which holds the aux of the first pass (at w) of the last step.
    mask: None (every leaf takes part in the ascent), a pytree of bools like params, or a function
      ``params -> such a pytree`` (as ``optax.masked``). False leaves are not perturbed, and the ascent's
      norm is taken over the others; e.g. ``lambda p: jax.tree.map(lambda x: x.ndim > 1, p)`` leaves
      biases and normalisation parameters alone.
    accum_steps: None or k >= 1: ``update(batch=...)`` is split into k interleaved micro-batches whose
      gradients are summed one after another (the memory of one). The ascent still uses the whole
      batch's gradient: the exact large-batch step.
    m: None (one ascent for the whole batch) or the examples per ascent group (m-sharpness): each group of
      m examples of ``update(batch=...)`` gets its own ascent and the groups' gradients are averaged, with
      the same result on any number of devices. m must divide the per-device batch (refused otherwise,
      naming both). Needs ``mesh``.
    mesh: with ``m``, the ``jax.sharding.Mesh`` the step runs on.
    batch_axes: with ``m``, the mesh axes that split the batch (a name or a tuple of names). None, the
      default: every axis of the mesh; on a mesh with a model-parallel axis, name the data axes.
    group_mode: with ``m``, how a device runs its groups: 'auto' ('unroll' on CPU, else 'loop'), 'loop'
      (one after another: the memory of one group), 'unroll' or 'vmap' (all at once).
    eps: ε added to norms, so that a zero gradient stays finite.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state ``SharpnessAwareState`` (``sam_step``,
    ``inner_state``, ``aux``, ``sam_diagnostics``). Its ``update`` takes ``grad_fn=``, and optionally
    ``key=`` and ``batch=`` (the module docstring).

  References:
    Foret, Kleiner, Mobahi and Neyshabur, `Sharpness-Aware Minimization for Efficiently Improving
    Generalization <https://arxiv.org/abs/2010.01412>`_, ICLR 2021 (eq. 2-3; m-sharpness: §4.1).
  """
  return _sharpness_aware('sam', optimizer, rho=rho, key=key, init_aux=init_aux, mask=mask,
                          accum_steps=accum_steps, m=m, mesh=mesh, batch_axes=batch_axes,
                          group_mode=group_mode, eps=eps)


def asam(optimizer: optax.GradientTransformation, *, rho: ScalarOrSchedule, eta: ScalarOrSchedule = 0.01,
         scale_biases: bool = False, rules: LeafRules = FLAX, key: Optional[Key] = None, init_aux: PyTree = None,
         mask: Any = None, accum_steps: Optional[int] = None, m: Optional[int] = None,
         mesh: Optional[jax.sharding.Mesh] = None, batch_axes: Union[None, str, Sequence[str]] = None,
         group_mode: str = 'auto', eps: float = T.EPS) -> optax.GradientTransformationExtraArgs:
  r"""Adaptive SAM (ASAM): SAM's ascent made invariant to the scale of each weight.

  With T_w = |w| + η on the weights and T_w = 1 on the other leaves (elementwise)::

    g = ∇L(w),   w_adv = w + ρ_t T_w² g / (‖T_w g‖ + ε),   g_asam = ∇L(w_adv)

  As the authors' code (SamsungLabs/ASAM, p = 2), which scales the parameters whose PyTorch name holds
  'weight' and leaves biases at T = 1. Which leaves are weights is ``rules.is_weight``: Flax's
  ``kernel``, ``scale`` and ``embedding`` by default, ``rsam.leaf_rules.HAIKU`` or ``PYTORCH`` (also
  equinox) for other trees. A tree with no weight under ``rules`` would make ASAM plain SAM at ASAM's
  large ρ: it is refused. davda54/sam's ``adaptive=True`` is ``eta=0, scale_biases=True``.

  Example::

    tx = rsam.transforms.asam(optax.sgd(0.1, momentum=0.9), rho=0.5, rules=rsam.leaf_rules.HAIKU)

  Args:
    optimizer: the base optax transform that turns g_asam into the update. Any chain: clipping, weight
      decay, ``optax.apply_if_finite`` and ``optax.MultiSteps`` go here, inside. Chained after another
      transform, or wrapped by apply_if_finite, MultiSteps or ``optax.masked``, the transform refuses to
      run (the module docstring shows why, and the pattern to use).
    rho: ρ >= 0, a float, an array or a schedule of the step. ASAM's ρ is larger than SAM's (the
      authors' README: 0.5 on CIFAR-10, 1.0 on CIFAR-100).
    eta: η >= 0 in T_w = |w| + η (the authors' code: 0.01), so that a zero weight is still perturbed.
    scale_biases: scale every leaf, not only the weights.
    rules: a ``rsam.LeafRules`` saying which leaves are weights (``rsam.leaf_rules``).
    key: optional: ASAM draws nothing, the key only feeds grad_fn's dropout key. An integer seed (any
      integer type) or a ``jax.random.key``; step t uses ``fold_in(key, t)`` unless ``update`` gets
      ``key=``. Without it grad_fn gets ``fold_in(jax.random.key(0), t)``, the same in every run.
    init_aux: None when ``grad_fn(params, key)`` returns the gradient only; else the aux it returns
      beside it, ``grad_fn(...) -> (grads, aux)``, as it is before the first step. It fixes the
      structure, shapes and dtypes of ``state.aux``, which holds the aux of the first pass (at w) of the
      last step.
    mask: None (every leaf takes part in the ascent), a pytree of bools like params, or a function
      ``params -> such a pytree``. False leaves are not perturbed, and the ascent's norm is taken over the
      others.
    accum_steps: None or k >= 1: ``update(batch=...)`` is split into k interleaved micro-batches whose
      gradients are summed one after another; the ascent uses the whole batch's gradient.
    m: None (one ascent for the whole batch) or the examples per ascent group (m-sharpness); m must
      divide the per-device batch. Needs ``mesh`` and ``update(batch=...)``.
    mesh: with ``m``, the ``jax.sharding.Mesh`` the step runs on.
    batch_axes: with ``m``, the mesh axes that split the batch; None, the default: every axis.
    group_mode: with ``m``, how a device runs its groups: 'auto', 'loop', 'unroll' or 'vmap'.
    eps: ε added to norms, so that a zero gradient stays finite.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state ``SharpnessAwareState`` (``sam_step``,
    ``inner_state``, ``aux``, ``sam_diagnostics``). Its ``update`` takes ``grad_fn=``, and optionally
    ``key=`` and ``batch=`` (the module docstring).

  References:
    Kwon, Kim, Park and Choi, `ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of
    Deep Neural Networks <https://arxiv.org/abs/2102.11600>`_, ICML 2021 (Algorithm 1).
  """
  return _sharpness_aware('asam', optimizer, rho=rho, adaptive=True, eta=eta, scale_biases=scale_biases,
                          rules=rules, key=key, init_aux=init_aux, mask=mask, accum_steps=accum_steps, m=m,
                          mesh=mesh, batch_axes=batch_axes, group_mode=group_mode, eps=eps)


def rsam(optimizer: optax.GradientTransformation, *, rho: ScalarOrSchedule, gamma: ScalarOrSchedule,
         lam: ScalarOrSchedule, key: Optional[Key], init_aux: PyTree = None, mask: Any = None,
         rules: LeafRules = FLAX, clean_loss: bool = False, accum_steps: Optional[int] = None,
         m: Optional[int] = None, mesh: Optional[jax.sharding.Mesh] = None,
         batch_axes: Union[None, str, Sequence[str]] = None, group_mode: str = 'auto',
         eps: float = T.EPS) -> optax.GradientTransformationExtraArgs:
  r"""Random Sharpness-Aware Minimization (R-SAM).

  The ascent starts from a random point: kernel-wise Gaussian noise smooths the loss before SAM's
  gradient step (Algorithm 1, eq. 6-7)::

    δ0 ~ N(0, (γ_t ‖w_j‖)²) on the weights of kernel j,   ĝ = ∇L(w + δ0),
    w_adv = w + ρ_t (δ0 + λ ĝ) / (‖δ0 + λ ĝ‖ + ε),          g_rsam = ∇L(w_adv)

  Two gradient evaluations per step, as SAM; γ = 0 is SAM. Kernel j is one output unit's slice of a
  weight (``rules.output_axis``: the last axis for Flax and haiku, 0 for PyTorch and equinox). δ0 is
  drawn from the step's key (``rsam.kernelwise_noise``). The official ViT-B/16 values: ρ tied to the
  learning rate from 2.5 to 1.5 (``rsam.lr_tied_rho`` with a 10k-step warm-up branch), λ = 2, γ rising
  from 5e-4 to 2.5e-3 on a cosine (``rsam.cosine_increase``).

  Example::

    gamma = rsam.cosine_increase(5e-4, 5.0, total_steps)
    tx = rsam.transforms.rsam(optax.adamw(1e-3), rho=0.05, gamma=gamma, lam=2.0, key=seed)

  Args:
    optimizer: the base optax transform that turns g_rsam into the update. Any chain: clipping, weight
      decay, ``optax.apply_if_finite`` and ``optax.MultiSteps`` go here, inside. Chained after another
      transform, or wrapped by apply_if_finite, MultiSteps or ``optax.masked``, the transform refuses to
      run (the module docstring shows why, and the pattern to use).
    rho: ρ >= 0, the ascent radius: a float, an array or a schedule of the step.
    gamma: γ >= 0, the noise's scale relative to each kernel's norm: a float, an array or a schedule.
    lam: λ >= 0, the weight of the gradient against the noise in the ascent direction (on the raw
      gradient, as the official code): a float, an array or a schedule.
    key: REQUIRED, as the noise comes from it (a default would give every run the same noise): an integer
      seed (any integer type) or a ``jax.random.key``; step t uses ``fold_in(key, t)`` unless ``update``
      gets ``key=``. None: every ``update`` call passes ``key=``.
    init_aux: None when ``grad_fn(params, key)`` returns the gradient only; else the aux it returns
      beside it, ``grad_fn(...) -> (grads, aux)``, as it is before the first step (e.g.
      ``(jnp.zeros(()), batch_stats)``). It fixes the structure, shapes and dtypes of ``state.aux``,
      which holds the aux of the first pass (at w + δ0) of the last step.
    mask: None (every leaf takes part in the ascent), a pytree of bools like params, or a function
      ``params -> such a pytree``. False leaves get no noise and are not perturbed; the ascent's norm is
      taken over the others.
    rules: a ``rsam.LeafRules`` saying which axis of a kernel indexes its outputs (``rsam.leaf_rules``).
    clean_loss: also evaluate the loss at w (a third, forward-only pass) into
      ``sam_diagnostics['loss_clean']``, for monitoring.
    accum_steps: None or k >= 1: ``update(batch=...)`` is split into k interleaved micro-batches whose
      gradients are summed one after another; the ascent uses the whole batch's gradient.
    m: None (one ascent for the whole batch) or the examples per ascent group (m-sharpness), each group
      with its own noise; m must divide the per-device batch. Needs ``mesh`` and ``update(batch=...)``.
    mesh: with ``m``, the ``jax.sharding.Mesh`` the step runs on.
    batch_axes: with ``m``, the mesh axes that split the batch; None, the default: every axis.
    group_mode: with ``m``, how a device runs its groups: 'auto', 'loop', 'unroll' or 'vmap'.
    eps: ε added to norms, so that a zero gradient stays finite.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state ``SharpnessAwareState`` (``sam_step``,
    ``inner_state``, ``aux``, ``sam_diagnostics``). Its ``update`` takes ``grad_fn=``, and optionally
    ``key=`` and ``batch=`` (the module docstring).

  References:
    Liu, Mai, Cheng, Chen, Hsieh and You, Random Sharpness-Aware Minimization, NeurIPS 2022 (Algorithm 1).
    Foret, Kleiner, Mobahi and Neyshabur, `Sharpness-Aware Minimization for Efficiently Improving
    Generalization <https://arxiv.org/abs/2010.01412>`_, ICLR 2021.
  """
  return _sharpness_aware('rsam', optimizer, rho=rho, gamma=gamma, lam=lam, rules=rules,
                          clean_loss=clean_loss, key=key, init_aux=init_aux, mask=mask, accum_steps=accum_steps,
                          m=m, mesh=mesh, batch_axes=batch_axes, group_mode=group_mode, eps=eps)


def gsam(optimizer: optax.GradientTransformation, *, rho: ScalarOrSchedule, alpha: ScalarOrSchedule,
         key: Optional[Key] = None, init_aux: PyTree = None, mask: Any = None,
         accum_steps: Optional[int] = None, m: Optional[int] = None, mesh: Optional[jax.sharding.Mesh] = None,
         batch_axes: Union[None, str, Sequence[str]] = None, group_mode: str = 'auto',
         eps: float = T.EPS) -> optax.GradientTransformationExtraArgs:
  r"""Surrogate Gap Guided SAM (GSAM).

  SAM's gradient minus α times the part of the clean gradient orthogonal to it (Algorithm 1)::

    g = ∇L(w),   g_adv = ∇L(w + ρ_t g / (‖g‖ + ε)),
    g_gsam = g_adv − α g_⊥,   g_⊥ = g − (⟨g, g_adv⟩ / ‖g_adv‖²) g_adv

  α = 0 is SAM. GSAM ties ρ to the learning rate (``rsam.lr_tied_rho``; its Table 4: ρ from 0.6 to 0.2
  and α = 0.4 on ViT-B/16).

  Example::

    rho = rsam.lr_tied_rho(lr, rho_max=0.6, rho_min=0.2, lr_max=3e-3, lr_min=3e-5)
    tx = rsam.transforms.gsam(optax.adamw(lr), rho=rho, alpha=0.4)

  Args:
    optimizer: the base optax transform that turns g_gsam into the update. Any chain: clipping, weight
      decay, ``optax.apply_if_finite`` and ``optax.MultiSteps`` go here, inside. Chained after another
      transform, or wrapped by apply_if_finite, MultiSteps or ``optax.masked``, the transform refuses to
      run (the module docstring shows why, and the pattern to use).
    rho: ρ >= 0, a float, an array or a schedule of the step.
    alpha: α >= 0, the weight of the orthogonal component: a float, an array or a schedule.
    key: optional: GSAM draws nothing, the key only feeds grad_fn's dropout key. An integer seed (any
      integer type) or a ``jax.random.key``; step t uses ``fold_in(key, t)`` unless ``update`` gets
      ``key=``. Without it grad_fn gets ``fold_in(jax.random.key(0), t)``, the same in every run.
    init_aux: None when ``grad_fn(params, key)`` returns the gradient only; else the aux it returns
      beside it, ``grad_fn(...) -> (grads, aux)``, as it is before the first step. It fixes the
      structure, shapes and dtypes of ``state.aux``, which holds the aux of the first pass (at w) of the
      last step.
    mask: None (every leaf takes part in the ascent), a pytree of bools like params, or a function
      ``params -> such a pytree``. False leaves are not perturbed, and the ascent's norm is taken over the
      others.
    accum_steps: None or k >= 1: ``update(batch=...)`` is split into k interleaved micro-batches whose
      gradients are summed one after another; the ascent uses the whole batch's gradient.
    m: None (one ascent for the whole batch) or the examples per ascent group (m-sharpness); m must
      divide the per-device batch. Needs ``mesh`` and ``update(batch=...)``.
    mesh: with ``m``, the ``jax.sharding.Mesh`` the step runs on.
    batch_axes: with ``m``, the mesh axes that split the batch; None, the default: every axis.
    group_mode: with ``m``, how a device runs its groups: 'auto', 'loop', 'unroll' or 'vmap'.
    eps: ε added to norms, so that a zero gradient stays finite.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state ``SharpnessAwareState`` (``sam_step``,
    ``inner_state``, ``aux``, ``sam_diagnostics``). Its ``update`` takes ``grad_fn=``, and optionally
    ``key=`` and ``batch=`` (the module docstring).

  References:
    Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan and Liu, `Surrogate Gap Guided
    Sharpness-Aware Minimization <https://arxiv.org/abs/2203.08065>`_, ICLR 2022 (Algorithm 1).
  """
  return _sharpness_aware('gsam', optimizer, rho=rho, alpha=alpha, key=key, init_aux=init_aux, mask=mask,
                          accum_steps=accum_steps, m=m, mesh=mesh, batch_axes=batch_axes,
                          group_mode=group_mode, eps=eps)


def rgsam(optimizer: optax.GradientTransformation, *, rho: ScalarOrSchedule, gamma: ScalarOrSchedule,
          lam: ScalarOrSchedule, alpha: ScalarOrSchedule, key: Optional[Key], init_aux: PyTree = None,
          mask: Any = None, rules: LeafRules = FLAX, clean_loss: bool = False,
          accum_steps: Optional[int] = None, m: Optional[int] = None, mesh: Optional[jax.sharding.Mesh] = None,
          batch_axes: Union[None, str, Sequence[str]] = None, group_mode: str = 'auto',
          eps: float = T.EPS) -> optax.GradientTransformationExtraArgs:
  r"""R-GSAM: R-SAM's random ascent, then GSAM's decomposition.

  With R-SAM's first-pass gradient ĝ = ∇L(w + δ0) and its ascent point w_adv (``rsam``)::

    g_adv = ∇L(w_adv),   g_rgsam = g_adv − α (ĝ − (⟨ĝ, g_adv⟩ / ‖g_adv‖²) g_adv)

  The R-SAM paper (§4.5) publishes no code for it: this is the direct composition. γ = 0 is GSAM; α = 0
  is R-SAM.

  Example::

    tx = rsam.transforms.rgsam(optax.adamw(1e-3), rho=0.6, gamma=5e-4, lam=2.0, alpha=0.4, key=seed)

  Args:
    optimizer: the base optax transform that turns g_rgsam into the update. Any chain: clipping, weight
      decay, ``optax.apply_if_finite`` and ``optax.MultiSteps`` go here, inside. Chained after another
      transform, or wrapped by apply_if_finite, MultiSteps or ``optax.masked``, the transform refuses to
      run (the module docstring shows why, and the pattern to use).
    rho: ρ >= 0, a float, an array or a schedule of the step.
    gamma: γ >= 0, the noise's scale relative to each kernel's norm: a float, an array or a schedule.
    lam: λ >= 0, the weight of the gradient in the ascent direction: a float, an array or a schedule.
    alpha: α >= 0, the weight of the orthogonal component: a float, an array or a schedule.
    key: REQUIRED, as the noise comes from it (a default would give every run the same noise): an integer
      seed (any integer type) or a ``jax.random.key``; step t uses ``fold_in(key, t)`` unless ``update``
      gets ``key=``. None: every ``update`` call passes ``key=``.
    init_aux: None when ``grad_fn(params, key)`` returns the gradient only; else the aux it returns
      beside it, ``grad_fn(...) -> (grads, aux)``, as it is before the first step. It fixes the
      structure, shapes and dtypes of ``state.aux``, which holds the aux of the first pass (at w + δ0) of
      the last step.
    mask: None (every leaf takes part in the ascent), a pytree of bools like params, or a function
      ``params -> such a pytree``. False leaves get no noise and are not perturbed.
    rules: a ``rsam.LeafRules`` saying which axis of a kernel indexes its outputs (``rsam.leaf_rules``).
    clean_loss: also evaluate the loss at w (a third, forward-only pass) into
      ``sam_diagnostics['loss_clean']``.
    accum_steps: None or k >= 1: ``update(batch=...)`` is split into k interleaved micro-batches whose
      gradients are summed one after another; the ascent uses the whole batch's gradient.
    m: None (one ascent for the whole batch) or the examples per ascent group (m-sharpness), each group
      with its own noise; m must divide the per-device batch. Needs ``mesh`` and ``update(batch=...)``.
    mesh: with ``m``, the ``jax.sharding.Mesh`` the step runs on.
    batch_axes: with ``m``, the mesh axes that split the batch; None, the default: every axis.
    group_mode: with ``m``, how a device runs its groups: 'auto', 'loop', 'unroll' or 'vmap'.
    eps: ε added to norms, so that a zero gradient stays finite.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state ``SharpnessAwareState`` (``sam_step``,
    ``inner_state``, ``aux``, ``sam_diagnostics``). Its ``update`` takes ``grad_fn=``, and optionally
    ``key=`` and ``batch=`` (the module docstring).

  References:
    Liu, Mai, Cheng, Chen, Hsieh and You, Random Sharpness-Aware Minimization, NeurIPS 2022 (§4.5).
    Zhuang et al., `Surrogate Gap Guided Sharpness-Aware Minimization
    <https://arxiv.org/abs/2203.08065>`_, ICLR 2022.
  """
  return _sharpness_aware('rgsam', optimizer, rho=rho, gamma=gamma, lam=lam, alpha=alpha, rules=rules,
                          clean_loss=clean_loss, key=key, init_aux=init_aux, mask=mask, accum_steps=accum_steps,
                          m=m, mesh=mesh, batch_axes=batch_axes, group_mode=group_mode, eps=eps)
