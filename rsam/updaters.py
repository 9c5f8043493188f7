"""Sharpness-aware updaters behind one interface.

An updater is a frozen dataclass called as

    updater(loss_fn, params, model_state, batch, key, step) -> UpdateResult(loss, grads, model_state, aux)

with ``loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics))``: the mean loss of
the batch, the model's non-trainable state after a training-mode forward pass (BatchNorm statistics) and
a dict of scalar metrics (accuracy, ...). ``rng`` feeds dropout. ``grads`` is what the base optax
optimizer receives; the updater never applies it, so any optax chain (SGD, momentum, RMSProp, AdamW,
clipping, weight decay) composes with any updater.

Conventions, shared by all updaters:
- ``model_state`` and the reported ``loss``/metrics come from the FIRST pass only: at ``w`` for SAM/GSAM,
  at ``w + δ0`` for R-SAM/R-GSAM/LPF-SGD (these never evaluate L at ``w``; ``clean_loss=True`` adds a
  forward-only pass at ``w`` for monitoring, at the cost of a third forward).
- One dropout key serves both passes of a step (as google-research/sam); the noise draws its own key.
- Norms, inner products and perturbations are float32, float64 for float64 parameters (rsam/tree.py);
  ε = 1e-12 keeps a zero gradient finite. ``grads`` comes back in each parameter's dtype (bfloat16
  parameters get bfloat16 gradients, computed in float32), so a base optimizer's state keeps its dtypes.
- Which leaves are weights (ASAM) and which axis of a kernel indexes its outputs (the kernel-wise noise)
  is a per-leaf rule, ``rules`` (rsam/leaf_rules.py), Flax's conventions by default. ``mask`` leaves
  leaves out of the ascent (no noise, no perturbation).
- ``accum_steps`` splits the batch into that many interleaved micro-batches and sums their gradients
  one after another (memory of one micro-batch). The ascent still uses the gradient of the WHOLE batch:
  pass 1 accumulates it, the ascent is taken once, pass 2 accumulates the gradient at ``w_adv`` — the
  exact large-batch update at the same two-pass cost.
"""
import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rsam import tree as T
from rsam.checks import check_non_negative, static_int
from rsam.leaf_rules import FLAX, LeafRules, path_names
from rsam.noise import _masked, kernelwise_noise
from rsam.schedules import ScalarOrSchedule, as_schedule

PyTree = Any
LossFn = Callable[[PyTree, PyTree, PyTree, jax.Array], tuple]


class UpdateResult(NamedTuple):
  loss: jax.Array     # mean loss of the first pass
  grads: PyTree       # gradient handed to the base optimizer, in the parameters' dtypes
  model_state: PyTree  # non-trainable state from the first pass
  aux: dict           # loss_fn metrics of the first pass + the updater's diagnostics


def split_batch(batch: PyTree, num: int, *, interleaved: bool) -> PyTree:
  """[B, ...] -> [num, B/num, ...].

  Interleaved (example i goes to part i mod num) keeps every part spread over all devices when the batch
  is sharded on its leading axis; contiguous (part k = examples k·B/num ...) is used for m-sharpness
  groups, so a group is the same set of examples however many devices run it.
  """
  def split(x):
    b = x.shape[0]
    if b % num:
      raise ValueError(f'the batch of {b} examples does not split into {num} equal parts '
                       f'({"micro-batches or noise samples" if interleaved else "groups"}); use a batch '
                       f'size that is a multiple of {num}')
    if interleaved:
      return jnp.swapaxes(x.reshape((b // num, num) + x.shape[1:]), 0, 1)
    return x.reshape((num, b // num) + x.shape[1:])
  return jax.tree.map(split, batch)


# How mean_over_parts runs its parts (rsam/msharpness.py chooses per backend for m-sharpness groups).
PART_MODES = ('loop', 'unroll', 'vmap')


def mean_over_parts(fn: Callable[[PyTree, jax.Array], PyTree], parts: PyTree, num: int,
                    mode: str = 'loop') -> PyTree:
  """mean_k fn(parts[k], k), the mean in float32 (cast back to fn's dtypes).

  ``mode``:
    'loop'    one part after another (lax.scan): the memory of one part.
    'unroll'  the same sums in the same order, as straight-line code: faster where a loop body compiles
              badly (backward convolutions on CPU, see rsam/msharpness.py), but XLA keeps every part's
              buffers, so memory and compile time grow with ``num``.
    'vmap'    all parts at once, as one batched computation (jax.vmap): the parallelism of one big batch
              for small parts, with every part's parameter-sized values (perturbed weights, gradients)
              live together: about ``num`` × the parameters' memory on top of the activations.
  """
  if mode not in PART_MODES:
    raise ValueError(f'mode={mode!r}; choose one of: {", ".join(PART_MODES)}')
  if num == 1:
    return fn(jax.tree.map(lambda x: x[0], parts), jnp.asarray(0))
  first = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], parts), jnp.asarray(0))
  f32 = lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if mode == 'vmap':
    total = jax.tree.map(lambda x: jnp.sum(f32(x), axis=0), jax.vmap(fn)(parts, jnp.arange(num)))
  else:
    zeros = jax.tree.map(lambda s: f32(jnp.zeros(s.shape, s.dtype)), first)

    def body(total, xs):
      part, k = xs
      return jax.tree.map(lambda t, v: t + v, total, fn(part, k)), None

    total, _ = jax.lax.scan(body, zeros, (parts, jnp.arange(num)), unroll=mode == 'unroll')
  return jax.tree.map(lambda t, s: (t / num).astype(s.dtype), total, first)


def value_and_grad(loss_fn: LossFn, params, model_state, batch, rng, accum_steps: int = 1):
  """(loss, grads, new_model_state, metrics) of ``loss_fn`` at ``params``, micro-batched if asked."""
  def one(part, k):
    part_rng = rng if accum_steps == 1 else jax.random.fold_in(rng, k)
    (loss, (state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, model_state, part, part_rng)
    return loss, T.widen(grads), state, metrics

  parts = split_batch(batch, accum_steps, interleaved=True)
  return mean_over_parts(one, parts, accum_steps)


def mean_loss(loss_fn: LossFn, params, model_state, batch, rng, accum_steps: int = 1):
  """Forward-only mean loss (monitoring)."""
  def one(part, k):
    part_rng = rng if accum_steps == 1 else jax.random.fold_in(rng, k)
    return loss_fn(params, model_state, part, part_rng)[0]
  return mean_over_parts(one, split_batch(batch, accum_steps, interleaved=True), accum_steps)


def materialized(tree: PyTree, step) -> PyTree:
  """``tree``, computed once into memory before its consumers read it (same values).

  XLA fuses an elementwise producer into each of its consumers. For the noise δ0 (threefry bits and an
  erf_inv polynomial per element) that recomputes the draw in every consumer of w + δ0 — on CPU even
  inside activation-sized loops (a bias broadcast over batch × tokens), which makes an R-SAM step several
  percent slower than SAM on CPU (the rsam_fused_noise ablation in results/benchmarks/). The result of a conditional is a fusion boundary (an
  optimization_barrier is not: the CPU compiler removes it before fusion). Its predicate, step >= 0,
  always holds: the zeros branch never runs. Cost: a copy of δ0; on GPU also one wait of the host for
  the predicate (XLA runs a conditional by reading it back), a bubble of microseconds per step. The
  benchmark's rsam_fused_noise variant measures R-SAM without this, on any backend.
  """
  return jax.lax.cond(jnp.asarray(step) >= 0, lambda t: t,
                      lambda t: jax.tree.map(jnp.zeros_like, t), tree)


def resolve_mask(mask, params) -> Optional[PyTree]:
  """None (every leaf takes part in the ascent), or a pytree like ``params`` of bools (Python bools or
  bool arrays broadcastable to the leaf): ``mask`` itself, or ``mask(params)`` if it is a function (as
  ``optax.masked``). False leaves get no noise and no perturbation."""
  if mask is None:
    return None
  tree = mask(params) if callable(mask) else mask
  treedef = jax.tree.structure(params)
  try:
    leaves = treedef.flatten_up_to(tree)
  except (ValueError, TypeError):
    raise ValueError(f'mask has the structure {jax.tree.structure(tree)}, not that of params {treedef}; pass '
                     f'a pytree of bools like params, or a function params -> such a pytree') from None
  return treedef.unflatten([bool(x) if isinstance(x, (bool, np.bool_)) else x for x in leaves])


def apply_mask(tree: PyTree, keep: Optional[PyTree]) -> PyTree:
  """``tree`` with the leaves that ``keep`` (``resolve_mask``) marks False set to zero."""
  if keep is None:
    return tree
  return treedef_map(_masked, tree, keep)


def treedef_map(fn, tree: PyTree, other: PyTree) -> PyTree:
  """fn(leaf, other_leaf) with ``other`` flattened up to ``tree``'s structure (its leaves may be bools)."""
  treedef = jax.tree.structure(tree)
  return treedef.unflatten([fn(a, b) for a, b in zip(treedef.flatten_up_to(tree), treedef.flatten_up_to(other))])


def asam_scale(params, *, eta: float = 0.01, scale_biases: bool = False, rules: LeafRules = FLAX):
  """ASAM's T_w (Kwon et al. 2021, with the authors' code's η): |w| + η on the leaves ``rules.is_weight``
  marks (Flax: ``kernel``, ``scale``, ``embedding``, what PyTorch names ``weight``), the scalar 1 on the
  others (biases, a ViT's position embedding and class token: SamsungLabs/ASAM asam.py scales a parameter
  when 'weight' is in its name); ``scale_biases`` scales every leaf.

  A tree with no weight under ``rules`` (e.g. a haiku or PyTorch tree under the Flax rule) would silently
  make ASAM plain SAM at ASAM's large ρ: it is refused (ValueError naming the rule and the leaves).
  """
  paths_and_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  weights = rules.weights(params)
  if not scale_biases and paths_and_leaves and not any(weights):
    names = ', '.join('/'.join(path_names(p)) for p, _ in paths_and_leaves[:4])
    raise ValueError(f'ASAM: no leaf of params is a weight under the {rules.name} leaf rule (leaves: {names}'
                     f'{", ..." if len(paths_and_leaves) > 4 else ""}); pass rules=rsam.leaf_rules.HAIKU or '
                     f'PYTORCH (equinox) or a LeafRules of your own, or scale_biases=True to scale every leaf')

  def scale(w, is_weight):
    if scale_biases or is_weight:
      return jnp.abs(jnp.asarray(w, T.compute_dtype(jnp.result_type(w)))) + eta
    return jnp.ones((), T.compute_dtype(jnp.result_type(w)))
  treedef = jax.tree.structure(params)
  return treedef.unflatten([scale(w, k) for (_, w), k in zip(paths_and_leaves, weights)])


def ascent_perturbation(params, direction, rho, *, adaptive: bool = False, eta: float = 0.01,
                        scale_biases: bool = False, rules: LeafRules = FLAX, eps: float = T.EPS):
  """e = ρ · d / (‖d‖ + ε)   (SAM eq. 2; R-SAM eq. 7 with d = δ0 + λĝ).

  Adaptive (ASAM, Kwon et al. 2021, Algorithm 1 with p = 2, as SamsungLabs/ASAM asam.py):
  e = ρ · T² d / (‖T d‖ + ε) with T = |w| + η on weights and T = 1 on biases (``asam_scale``; ``rules``
  says which leaves are weights). davda54/sam's ``adaptive=True`` is ``eta=0, scale_biases=True``:
  T = |w| on every leaf, so a zero-initialised kernel is never perturbed.
  """
  direction = T.widen(direction)
  if adaptive:
    t = asam_scale(params, eta=eta, scale_biases=scale_biases, rules=rules)
    scaled = jax.tree.map(lambda s, d: s * d, t, direction)
    n = T.norm(scaled)
    return jax.tree.map(lambda s, sd: rho * s * sd / (n + eps), t, scaled)
  n = T.norm(direction)
  return jax.tree.map(lambda d: rho * d / (n + eps), direction)


def surrogate_gap_descent(g, g_adv, alpha: float, eps: float = T.EPS):
  """GSAM (Zhuang et al. 2022, Alg. 1): g_adv − α g_⊥ with g_⊥ = g − (⟨g, g_adv⟩ / ‖g_adv‖²) g_adv."""
  coef = T.vdot(g, g_adv) / (T.vdot(g_adv, g_adv) + eps)
  return jax.tree.map(lambda a, b: b - alpha * (a - coef * b), g, g_adv)


def ascent_composition(noise_norm, grad_norm, noise_dot_grad, lam, eps: float = T.EPS) -> dict:
  """What R-SAM's ascent direction d = δ0 + λĝ is made of, from ‖δ0‖, ‖ĝ‖ and ⟨δ0, ĝ⟩ alone.

    lam_grad_norm     = λ‖ĝ‖
    noise_grad_ratio  = ‖δ0‖ / (λ‖ĝ‖ + ε)
    ascent_grad_cos   = cos(d, ĝ) = (⟨δ0, ĝ⟩ + λ‖ĝ‖²) / (‖d‖‖ĝ‖ + ε),
                        ‖d‖² = ‖δ0‖² + 2λ⟨δ0, ĝ⟩ + λ²‖ĝ‖²

  cos² is the share of the (unit) ascent ρ d/‖d‖ that lies along the gradient, in squared length; SAM's
  ascent has cos = 1. With δ0 independent of ĝ, ⟨δ0, ĝ⟩ ≈ 0 and cos ≈ 1/√(1 + ratio²). The two norms
  are already computed by the updater and ⟨δ0, ĝ⟩ is one more reduction over the parameters: no extra
  forward or backward pass. (With ``adaptive`` the ascent is T²d/‖Td‖; these describe d before scaling.)
  """
  lam = jnp.asarray(lam, jnp.float32)
  lam_grad = jnp.abs(lam) * grad_norm
  d_sq = noise_norm ** 2 + 2 * lam * noise_dot_grad + (lam * grad_norm) ** 2
  d_norm = jnp.sqrt(jnp.maximum(d_sq, 0.0))
  return {'lam_grad_norm': lam_grad, 'noise_grad_ratio': noise_norm / (lam_grad + eps),
          'ascent_grad_cos': (noise_dot_grad + lam * grad_norm ** 2) / (d_norm * grad_norm + eps)}


def _is_zero(value) -> bool:
  """True for a Python number equal to 0 (a static zero: the computation it would scale is skipped)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def _check_rules(rules) -> None:
  if not isinstance(rules, LeafRules):
    raise TypeError(f'rules={rules!r} must be a rsam.LeafRules (rsam.leaf_rules.FLAX, HAIKU, PYTORCH or your '
                    f'own)')


@dataclasses.dataclass(frozen=True)
class Plain:
  """Plain gradient g = ∇L(w): the SGD / momentum / RMSProp / AdamW baselines (one pass)."""
  accum_steps: int = 1

  def __post_init__(self):
    object.__setattr__(self, 'accum_steps', static_int('accum_steps', self.accum_steps, minimum=1,
                                                       what='micro-batches per step'))

  def diagnostic_names(self) -> Tuple[str, ...]:
    """The names of the diagnostics this updater adds to ``aux``."""
    return ('grad_norm',)

  def __call__(self, loss_fn, params, model_state, batch, key, step) -> UpdateResult:
    loss, grads, state, metrics = value_and_grad(loss_fn, params, model_state, batch, key, self.accum_steps)
    return UpdateResult(loss, T.cast_like(grads, params), state, {**metrics, 'grad_norm': T.norm(grads)})


@dataclasses.dataclass(frozen=True)
class SharpnessAware:
  """SAM, R-SAM, GSAM and R-GSAM: one ascent step, then the gradient at the ascent point.

  With ĝ the first-pass gradient and ``step`` t:

    R-SAM (paper Alg. 1, eq. 6–7), ``gamma`` set:
      δ0 ~ kernel-wise N(0, (γ_t ‖w_j‖)²)          (rsam/noise.py)
      ĝ = ∇L(w + δ0)
      w_adv = w + ρ_t (δ0 + λ ĝ) / (‖δ0 + λ ĝ‖ + ε)   (eq. 7; λ multiplies the raw gradient, as the
                                                     official code)
    SAM (eq. 2–3), ``gamma=None``: ĝ = ∇L(w), w_adv = w + ρ_t ĝ / (‖ĝ‖ + ε).
    Then g_adv = ∇L(w_adv) and the returned gradient is
      g_adv                                          (SAM, R-SAM; eq. 3)
      g_adv − α (ĝ − ⟨ĝ, g_adv⟩ g_adv / ‖g_adv‖²)       (GSAM, R-GSAM with ``alpha`` > 0)
    R-GSAM (paper §4.5, no public code) is this direct composition: R-SAM's ascent, then GSAM's
    decomposition of the first-pass gradient ĝ against g_adv.

  Diagnostics in ``aux`` (no extra pass): ``rho`` ρ_t, ``grad_norm`` ‖ĝ‖, ``descent_grad_norm`` ‖g_adv‖,
  ``cos_ascent_descent`` cos(ĝ, g_adv); with noise also ``gamma`` γ_t, ``noise_norm`` ‖δ0‖ and
  ``ascent_composition``'s ``lam_grad_norm`` λ‖ĝ‖, ``noise_grad_ratio`` ‖δ0‖/‖λĝ‖ and ``ascent_grad_cos``
  cos(δ0 + λĝ, ĝ).

  Two forward-backward passes per step. ``adaptive`` gives ASAM's scale-invariant ascent
  (``ascent_perturbation``: T = |w| + ``eta`` on weights, 1 on biases unless ``scale_biases``).
  ``gamma=0`` is SAM; ``alpha=0`` and a constant ρ is SAM. ``rho``, ``gamma``, ``lam``, ``alpha`` are
  floats, arrays (traced values included) or schedules of the step. ``mask`` (``resolve_mask``) leaves
  leaves out of the ascent: no noise and no perturbation there, the norms taken over the others. ``rules``
  (rsam/leaf_rules.py) says which leaves are weights (ASAM) and which axis of a kernel indexes its
  outputs (the noise).
  """
  rho: ScalarOrSchedule = 0.05
  gamma: Optional[ScalarOrSchedule] = None
  lam: ScalarOrSchedule = 1.0
  alpha: ScalarOrSchedule = 0.0
  adaptive: bool = False
  eta: float = 0.01
  scale_biases: bool = False
  clean_loss: bool = False
  accum_steps: int = 1
  eps: float = T.EPS
  mask: Any = None
  rules: LeafRules = FLAX

  def __post_init__(self):
    check_non_negative('rho', self.rho, 'the ascent radius; 0 turns the ascent off')
    if self.gamma is not None:
      check_non_negative('gamma', self.gamma, 'the noise scale; 0 is SAM')
    check_non_negative('lam', self.lam, "the weight of the gradient in R-SAM's ascent direction")
    check_non_negative('alpha', self.alpha, "GSAM's weight of the orthogonal gradient; 0 is SAM")
    check_non_negative('eta', self.eta, "ASAM's offset in T = |w| + eta")
    check_non_negative('eps', self.eps, 'the constant that keeps a zero norm finite')
    object.__setattr__(self, 'accum_steps', static_int('accum_steps', self.accum_steps, minimum=1,
                                                       what='micro-batches per step'))
    _check_rules(self.rules)

  def diagnostic_names(self) -> Tuple[str, ...]:
    """The names of the diagnostics this updater adds to ``aux`` (the class docstring)."""
    noise = ('gamma', 'noise_norm') + (('loss_clean',) if self.clean_loss else ()) + (
        'lam_grad_norm', 'noise_grad_ratio', 'ascent_grad_cos')
    return ('rho',) + (noise if self.gamma is not None else ()) + (
        'grad_norm', 'descent_grad_norm', 'cos_ascent_descent')

  def __call__(self, loss_fn, params, model_state, batch, key, step) -> UpdateResult:
    step = jnp.asarray(step)
    rho = as_schedule(self.rho)(step)
    lam = as_schedule(self.lam)(step)
    alpha = as_schedule(self.alpha)(step)
    keep = resolve_mask(self.mask, params)
    noise_key, dropout_key = jax.random.split(key)

    def grad_at(w):
      return value_and_grad(loss_fn, w, model_state, batch, dropout_key, self.accum_steps)

    diagnostics = {'rho': jnp.asarray(rho, jnp.float32)}
    if self.gamma is None:
      loss, g_first, state, metrics = grad_at(params)
      direction = apply_mask(g_first, keep)
    else:
      gamma = as_schedule(self.gamma)(step)
      delta0 = materialized(kernelwise_noise(noise_key, params, gamma, rules=self.rules, mask=keep), step)
      loss, g_first, state, metrics = grad_at(T.add_scaled(params, 1.0, delta0))
      direction = apply_mask(jax.tree.map(lambda d, g: d + lam * g, delta0, g_first), keep)
      diagnostics.update(gamma=jnp.asarray(gamma, jnp.float32), noise_norm=T.norm(delta0))
      if self.clean_loss:
        diagnostics['loss_clean'] = mean_loss(loss_fn, params, model_state, batch, dropout_key,
                                              self.accum_steps)

    e = ascent_perturbation(params, direction, rho, adaptive=self.adaptive, eta=self.eta,
                            scale_biases=self.scale_biases, rules=self.rules, eps=self.eps)
    _, g_adv, _, _ = grad_at(T.add_scaled(params, 1.0, e))
    grads = g_adv if _is_zero(alpha) else surrogate_gap_descent(g_first, g_adv, alpha, self.eps)

    grad_norm = T.norm(g_first)
    if self.gamma is not None:
      diagnostics.update(ascent_composition(diagnostics['noise_norm'], grad_norm,
                                            T.vdot(delta0, g_first), lam, self.eps))
    diagnostics.update(grad_norm=grad_norm, descent_grad_norm=T.norm(g_adv),
                       cos_ascent_descent=T.cosine(g_first, g_adv, self.eps))
    diagnostics = {k: jnp.asarray(v, jnp.float32) for k, v in diagnostics.items()}
    return UpdateResult(loss, T.cast_like(grads, params), state, {**metrics, **diagnostics})


@dataclasses.dataclass(frozen=True)
class LPFSGD:
  """LPF-SGD (Bisla et al. 2022): descend along the Monte-Carlo smoothed gradient.

    g = (1/M) Σ_k ∇L_k(w + δ_k),  δ_k kernel-wise N(0, (γ_t ‖w_j‖)²) as R-SAM's δ0,

  where the batch is split into M interleaved chunks L_k, each with its own noise draw. One pass in all.
  ``rules`` (rsam/leaf_rules.py) says which axis of a kernel indexes its outputs.
  """
  gamma: ScalarOrSchedule = 0.002
  num_samples: int = 1
  rules: LeafRules = FLAX

  def __post_init__(self):
    check_non_negative('gamma', self.gamma, 'the noise scale')
    object.__setattr__(self, 'num_samples', static_int('num_samples', self.num_samples, minimum=1,
                                                       what='noise draws per step, one per batch chunk'))
    _check_rules(self.rules)

  def diagnostic_names(self) -> Tuple[str, ...]:
    return ('gamma', 'noise_norm', 'grad_norm')

  def __call__(self, loss_fn, params, model_state, batch, key, step) -> UpdateResult:
    gamma = as_schedule(self.gamma)(jnp.asarray(step))
    noise_key, dropout_key = jax.random.split(key)

    def one(chunk, k):
      delta = materialized(kernelwise_noise(jax.random.fold_in(noise_key, k), params, gamma, rules=self.rules),
                           step)
      result = value_and_grad(loss_fn, T.add_scaled(params, 1.0, delta), model_state, chunk,
                              jax.random.fold_in(dropout_key, k))
      return result + (T.norm(delta),)

    chunks = split_batch(batch, self.num_samples, interleaved=True)
    loss, grads, state, metrics, noise_norm = mean_over_parts(one, chunks, self.num_samples)
    return UpdateResult(loss, T.cast_like(grads, params), state,
                        {**metrics, 'gamma': jnp.asarray(gamma, jnp.float32),
                         'noise_norm': jnp.asarray(noise_norm, jnp.float32), 'grad_norm': T.norm(grads)})
