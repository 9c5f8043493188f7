"""The updaters as optax transforms, for a training loop that is not this repository's.

    tx = rsam.transforms.rsam(optax.adamw(1e-3), rho=0.05, gamma=5e-4, lam=2.0)
    opt_state = tx.init(params)
    ...                                                   # in the (jitted) train step:
    grad_fn = lambda p, key: jax.grad(loss)(p, batch)    # the gradient of the batch's loss at p
    updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
    params = optax.apply_updates(params, updates)

The calling convention is ``optax.contrib.sam``'s opaque mode: ``update`` receives a gradient function in
its extra arguments, evaluates it where the method needs it, and returns the update of the base
optimizer it wraps (any optax chain: clipping, weight decay, schedules, AdamW, ...). Each transform is
an adapter over this package's updater (rsam/updaters.py): it hands ``grad_fn`` to the updater as a loss
function and the step count as its step, so the ascent, the noise, the GSAM decomposition, the float32
arithmetic and the ρ/γ schedules are the updater's own, and a transform's update equals the updater's
gradient passed to the same base optimizer (tests/test_transforms.py checks this bit for bit).

``update(updates, state, params, *, grad_fn, key=None, batch=None, **extra_args)``:
  updates    not used: the transform evaluates both gradients itself with ``grad_fn`` (R-SAM's first
             gradient is taken at w + δ0, not at w). Pass the gradient you have, as for optax.contrib.sam;
             under ``jax.jit`` a gradient nobody uses is not computed.
  grad_fn    ``grad_fn(params, key) -> grads``; with ``init_aux`` set, ``-> (grads, aux)``; with ``batch``
             passed, ``grad_fn(params, key, batch)``. ``key`` is the step's dropout key, the same for both
             passes (as google-research/sam); a model without dropout ignores it, so a grad_fn written for
             optax.contrib.sam (which passes an int there) works unchanged.
  key        this step's PRNG key (noise and dropout). Default: ``fold_in(key, t)`` of the transform's
             ``key`` argument and the step count t kept in the state, so a run is reproducible without it.
  batch      optional. Passed on to ``grad_fn``, and split by the updater where it splits batches:
             m-sharpness groups (``m``), micro-batches (``accum_steps``). Required for those.
  extra_args go to the base optimizer (e.g. ``value`` for optax.contrib.reduce_on_plateau).

Model state (BatchNorm statistics), loss and metrics: with ``init_aux`` set, ``grad_fn`` returns
``(grads, aux)`` and ``state.aux`` holds the aux of the FIRST pass of the last step (at w for SAM, ASAM and
GSAM; at w + δ0 for R-SAM and R-GSAM), the updater's convention: the adversarial pass never updates it.
``init_aux`` is its value before the first step and fixes its structure, shapes and dtypes (so a jitted
step or a ``lax.scan`` over steps compiles once), e.g. ``init_aux=(jnp.zeros(()), batch_stats)`` for a
grad_fn that returns ``(grads, (loss, new_batch_stats))``. ``optax.tree.get(opt_state, 'aux')`` finds it
inside a chain.

Arguments shared by the five constructors:
  optimizer  the base optax transform that turns the sharpness-aware gradient into the update.
  rho, gamma a float or a schedule of the step t (``rsam.lr_tied_rho`` ties ρ to the learning rate;
             ``rsam.cosine_increase`` is R-SAM's increasing γ). t counts this transform's updates from 0.
  key        an int seed or a ``jax.random.key``: the per-step keys derive from it (above).
  init_aux   None (grad_fn returns the gradient only) or the aux before the first step (above).
  m, mesh, group_mode
             m-sharpness (``rsam.PerGroup``): an ascent per group of m examples of ``batch``, which must
             then be passed; ``mesh`` is a ``jax.sharding.Mesh`` with a 'data' axis (e.g.
             ``Mesh(jax.devices(), ('data',))``), over which the batch is split.
  **fields   any other field of ``rsam.SharpnessAware`` (``eps``, ``accum_steps``, ``clean_loss``, ...).
``from_updater`` wraps any updater of this package (``rsam.make_updater``'s, ``rsam.LPFSGD``, ...).
"""
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from rsam import tree as T
from rsam.msharpness import PerGroup
from rsam.schedules import ScalarOrSchedule
from rsam.updaters import LPFSGD, SharpnessAware

PyTree = Any


class SharpnessAwareState(NamedTuple):
  count: jax.Array             # the step t of the schedules: the number of updates so far
  inner_state: optax.OptState  # the base optimizer's state
  aux: PyTree                  # the first pass's aux of the last step (init_aux before the first)


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


def _aux_spec(tree):
  return jax.tree.structure(tree), [(jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)]


def _as_key(key: Union[int, jax.Array]) -> jax.Array:
  return jax.random.key(key) if isinstance(key, int) else key


def from_updater(optimizer: optax.GradientTransformation, updater, *, key: Union[int, jax.Array] = 0,
                 init_aux: PyTree = None) -> optax.GradientTransformationExtraArgs:
  """Any updater of this package as an optax transform (see the module docstring).

  At step t, with the updater U and the base optimizer's update function O:
    r = U(grad_fn as a loss, w, batch, key_t, t)      (r.grads: the updater's gradient)
    update, inner_state = O(r.grads, inner_state, w)
  """
  inner = optax.with_extra_args_support(optimizer)
  with_aux = init_aux is not None
  root_key = key  # update's own ``key`` argument overrides the per-step key derived from this one

  def init_fn(params):
    return SharpnessAwareState(count=jnp.zeros([], jnp.int32), inner_state=inner.init(params),
                               aux=init_aux)

  def update_fn(updates, state, params=None, *, grad_fn=None, key=None, batch=None, **extra_args):
    del updates  # both gradients come from grad_fn (module docstring)
    if grad_fn is None:
      raise ValueError('the transform needs grad_fn=: call update(updates, state, params, '
                       'grad_fn=grad_fn) with grad_fn(params, key) -> gradient')
    if params is None:
      raise ValueError('the transform needs params: call update(updates, state, params, grad_fn=...)')
    if batch is None and _splits_batch(updater):
      raise ValueError(f'{type(updater).__name__} splits the batch (m-sharpness groups, micro-batches '
                       f'or noise samples): pass batch= to update and take it as grad_fn\'s third argument')
    step_key = jax.random.fold_in(_as_key(root_key), state.count) if key is None else key
    result = updater(_as_loss_fn(grad_fn, with_aux, batch is not None), params, None, batch, step_key,
                     state.count)
    if with_aux and _aux_spec(result.model_state) != _aux_spec(state.aux):
      raise ValueError(f'grad_fn returned an aux {_aux_spec(result.model_state)} unlike init_aux '
                       f'{_aux_spec(state.aux)}; pass init_aux= with the structure, shapes and dtypes '
                       f'of the aux grad_fn returns')
    new_updates, inner_state = inner.update(result.grads, state.inner_state, params, **extra_args)
    return new_updates, SharpnessAwareState(count=optax.safe_increment(state.count),
                                            inner_state=inner_state,
                                            aux=result.model_state if with_aux else None)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _sharpness_aware(optimizer, key, init_aux, m, mesh, group_mode, **fields):
  updater = SharpnessAware(**fields)
  if m is not None:
    if mesh is None:
      raise ValueError(f"m={m} (m-sharpness) needs mesh=: a jax.sharding.Mesh with a 'data' axis, "
                       f"e.g. Mesh(jax.devices(), ('data',))")
    updater = PerGroup(updater, m=m, mesh=mesh, mode=group_mode)
  return from_updater(optimizer, updater, key=key, init_aux=init_aux)


def sam(optimizer: optax.GradientTransformation, *, rho: ScalarOrSchedule, key=0, init_aux=None,
        m: Optional[int] = None, mesh=None, group_mode: str = 'auto',
        **fields) -> optax.GradientTransformationExtraArgs:
  """SAM (Foret et al. 2021; R-SAM paper eq. 2–3): the base optimizer gets

    g = ∇L(w),   w_adv = w + ρ_t g / (‖g‖ + ε),   ∇L(w_adv)

  Two gradient evaluations per step; norms and the ascent in float32. optax.contrib.sam's opaque mode
  with ``adv_optimizer = chain(normalize(), sgd(rho))`` computes the same, but for ε = 1e-12 and the
  order of the float operations.
  """
  return _sharpness_aware(optimizer, key, init_aux, m, mesh, group_mode, rho=rho, **fields)


def asam(optimizer: optax.GradientTransformation, *, rho: ScalarOrSchedule, key=0, init_aux=None,
         m: Optional[int] = None, mesh=None, group_mode: str = 'auto',
         **fields) -> optax.GradientTransformationExtraArgs:
  """ASAM (Kwon et al. 2021), SAM's scale-invariant ascent with T_w = |w|: the base optimizer gets

    g = ∇L(w),   w_adv = w + ρ_t T_w² g / (‖T_w g‖ + ε),   ∇L(w_adv)

  (``rsam.updaters.ascent_perturbation`` with ``adaptive=True``; its other fields pass through ``fields``).
  """
  return _sharpness_aware(optimizer, key, init_aux, m, mesh, group_mode, rho=rho, adaptive=True,
                          **fields)


def rsam(optimizer: optax.GradientTransformation, *, rho: ScalarOrSchedule, gamma: ScalarOrSchedule,
         lam: float, key=0, init_aux=None, m: Optional[int] = None, mesh=None, group_mode: str = 'auto',
         **fields) -> optax.GradientTransformationExtraArgs:
  """R-SAM (Liu et al. 2022, Algorithm 1, eq. 6–7): the base optimizer gets

    δ0 ~ N(0, (γ_t ‖w_j‖)²) per kernel j,   ĝ = ∇L(w + δ0),
    w_adv = w + ρ_t (δ0 + λ ĝ) / (‖δ0 + λ ĝ‖ + ε),   ∇L(w_adv)

  δ0 is drawn from the step's key (``rsam.kernelwise_noise``); ĝ's pass gives ``state.aux``. The
  official ViT-B/16 values: ρ tied to the learning rate 2.5 → 1.5 (``rsam.lr_tied_rho`` with a 10k-step
  warm-up branch), λ = 2, γ from 5e-4 rising ×5 on a cosine (``rsam.cosine_increase``).
  """
  return _sharpness_aware(optimizer, key, init_aux, m, mesh, group_mode, rho=rho, gamma=gamma, lam=lam,
                          **fields)


def gsam(optimizer: optax.GradientTransformation, *, rho: ScalarOrSchedule, alpha: float, key=0,
         init_aux=None, m: Optional[int] = None, mesh=None, group_mode: str = 'auto',
         **fields) -> optax.GradientTransformationExtraArgs:
  """GSAM (Zhuang et al. 2022, Alg. 1): with g = ∇L(w) and g_adv = ∇L(w + ρ_t g / (‖g‖ + ε)), the base
  optimizer gets

    g_adv − α g_⊥,   g_⊥ = g − (⟨g, g_adv⟩ / ‖g_adv‖²) g_adv

  GSAM ties ρ to the learning rate (``rsam.lr_tied_rho``; Table 4: 0.6 → 0.2, α = 0.4 on ViT-B/16).
  """
  return _sharpness_aware(optimizer, key, init_aux, m, mesh, group_mode, rho=rho, alpha=alpha, **fields)


def rgsam(optimizer: optax.GradientTransformation, *, rho: ScalarOrSchedule, gamma: ScalarOrSchedule,
          lam: float, alpha: float, key=0, init_aux=None, m: Optional[int] = None, mesh=None,
          group_mode: str = 'auto', **fields) -> optax.GradientTransformationExtraArgs:
  """R-GSAM (R-SAM paper §4.5): R-SAM's ascent (eq. 6–7, ``rsam``), then GSAM's decomposition of the
  first-pass gradient ĝ = ∇L(w + δ0) against g_adv = ∇L(w_adv); the base optimizer gets

    g_adv − α (ĝ − (⟨ĝ, g_adv⟩ / ‖g_adv‖²) g_adv)

  The paper publishes no code for it: this is the direct composition (``rsam.SharpnessAware``).
  """
  return _sharpness_aware(optimizer, key, init_aux, m, mesh, group_mode, rho=rho, gamma=gamma, lam=lam,
                          alpha=alpha, **fields)
