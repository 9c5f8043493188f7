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
- Norms, inner products and perturbations are float32 (rsam/tree.py); ε = 1e-12 keeps a zero gradient
  finite.
- ``accum_steps`` splits the batch into that many interleaved micro-batches and sums their gradients
  one after another (memory of one micro-batch). The ascent still uses the gradient of the WHOLE batch:
  pass 1 accumulates it, the ascent is taken once, pass 2 accumulates the gradient at ``w_adv`` — the
  exact large-batch update at the same two-pass cost.
"""
import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from rsam import tree as T
from rsam.noise import kernelwise_noise
from rsam.schedules import ScalarOrSchedule, as_schedule

PyTree = Any
LossFn = Callable[[PyTree, PyTree, PyTree, jax.Array], tuple]


class UpdateResult(NamedTuple):
  loss: jax.Array     # mean loss of the first pass
  grads: PyTree       # gradient handed to the base optimizer
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
    return loss, T.to_f32(grads), state, metrics

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


# Leaves ASAM scales (T_w = |w| + η): Flax's names for what PyTorch names `weight` -- Dense/Conv
# `kernel`, BatchNorm/LayerNorm `scale`, Embed `embedding`. SamsungLabs/ASAM asam.py scales a parameter
# when 'weight' is in its name, so biases (and other unnamed tensors such as a ViT's position embedding or
# class token) keep T = 1.
ASAM_WEIGHT_NAMES = ('kernel', 'scale', 'embedding')


def _leaf_name(path) -> str:
  last = path[-1] if path else None
  return str(getattr(last, 'key', getattr(last, 'name', last)))


def asam_scale(params, *, eta: float = 0.01, scale_biases: bool = False):
  """ASAM's T_w (Kwon et al. 2021, with the authors' code's η): |w| + η on the leaves named in
  ``ASAM_WEIGHT_NAMES``, the scalar 1 on the others; ``scale_biases`` scales every leaf."""
  def scale(path, w):
    if scale_biases or _leaf_name(path) in ASAM_WEIGHT_NAMES:
      return jnp.abs(jnp.asarray(w, jnp.float32)) + eta
    return jnp.ones((), jnp.float32)
  return jax.tree_util.tree_map_with_path(scale, params)


def ascent_perturbation(params, direction, rho, *, adaptive: bool = False, eta: float = 0.01,
                        scale_biases: bool = False, eps: float = T.EPS):
  """e = ρ · d / (‖d‖ + ε)   (SAM eq. 2; R-SAM eq. 7 with d = δ0 + λĝ).

  Adaptive (ASAM, Kwon et al. 2021, Algorithm 1 with p = 2, as SamsungLabs/ASAM asam.py):
  e = ρ · T² d / (‖T d‖ + ε) with T = |w| + η on weights and T = 1 on biases (``asam_scale``).
  davda54/sam's ``adaptive=True`` is ``eta=0, scale_biases=True``: T = |w| on every leaf, so a
  zero-initialised kernel is never perturbed.
  """
  if adaptive:
    t = asam_scale(params, eta=eta, scale_biases=scale_biases)
    scaled = jax.tree.map(lambda s, d: s * jnp.asarray(d, jnp.float32), t, direction)
    n = T.norm(scaled)
    return jax.tree.map(lambda s, sd: rho * s * sd / (n + eps), t, scaled)
  n = T.norm(direction)
  return jax.tree.map(lambda d: rho * jnp.asarray(d, jnp.float32) / (n + eps), direction)


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


@dataclasses.dataclass(frozen=True)
class Plain:
  """Plain gradient g = ∇L(w): the SGD / momentum / RMSProp / AdamW baselines (one pass)."""
  accum_steps: int = 1

  def __call__(self, loss_fn, params, model_state, batch, key, step) -> UpdateResult:
    loss, grads, state, metrics = value_and_grad(loss_fn, params, model_state, batch, key, self.accum_steps)
    return UpdateResult(loss, grads, state, {**metrics, 'grad_norm': T.norm(grads)})


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

  Diagnostics in ``aux`` (no extra pass): ``grad_norm`` ‖ĝ‖, ``descent_grad_norm`` ‖g_adv‖,
  ``cos_ascent_descent`` cos(ĝ, g_adv); with noise also ``noise_norm`` ‖δ0‖ and ``ascent_composition``'s
  ``lam_grad_norm`` λ‖ĝ‖, ``noise_grad_ratio`` ‖δ0‖/‖λĝ‖ and ``ascent_grad_cos`` cos(δ0 + λĝ, ĝ).

  Two forward-backward passes per step. ``adaptive`` gives ASAM's scale-invariant ascent
  (``ascent_perturbation``: T = |w| + ``eta`` on weights, 1 on biases unless ``scale_biases``).
  ``gamma=0`` is SAM; ``alpha=0`` and a constant ρ is SAM.
  """
  rho: ScalarOrSchedule = 0.05
  gamma: Optional[ScalarOrSchedule] = None
  lam: float = 1.0
  alpha: float = 0.0
  adaptive: bool = False
  eta: float = 0.01
  scale_biases: bool = False
  clean_loss: bool = False
  accum_steps: int = 1
  eps: float = T.EPS

  def __call__(self, loss_fn, params, model_state, batch, key, step) -> UpdateResult:
    step = jnp.asarray(step)
    rho = as_schedule(self.rho)(step)
    noise_key, dropout_key = jax.random.split(key)

    def grad_at(w):
      return value_and_grad(loss_fn, w, model_state, batch, dropout_key, self.accum_steps)

    diagnostics = {'rho': jnp.asarray(rho, jnp.float32)}
    if self.gamma is None:
      loss, g_first, state, metrics = grad_at(params)
      direction = g_first
    else:
      gamma = as_schedule(self.gamma)(step)
      delta0 = materialized(kernelwise_noise(noise_key, params, gamma), step)
      loss, g_first, state, metrics = grad_at(T.add_scaled(params, 1.0, delta0))
      direction = jax.tree.map(lambda d, g: d + self.lam * g, delta0, g_first)
      diagnostics.update(gamma=jnp.asarray(gamma, jnp.float32), noise_norm=T.norm(delta0))
      if self.clean_loss:
        diagnostics['loss_clean'] = mean_loss(loss_fn, params, model_state, batch, dropout_key,
                                              self.accum_steps)

    e = ascent_perturbation(params, direction, rho, adaptive=self.adaptive, eta=self.eta,
                            scale_biases=self.scale_biases, eps=self.eps)
    _, g_adv, _, _ = grad_at(T.add_scaled(params, 1.0, e))
    grads = surrogate_gap_descent(g_first, g_adv, self.alpha, self.eps) if self.alpha else g_adv

    grad_norm = T.norm(g_first)
    if self.gamma is not None:
      diagnostics.update(ascent_composition(diagnostics['noise_norm'], grad_norm,
                                            T.vdot(delta0, g_first), self.lam, self.eps))
    diagnostics.update(grad_norm=grad_norm, descent_grad_norm=T.norm(g_adv),
                       cos_ascent_descent=T.cosine(g_first, g_adv, self.eps))
    return UpdateResult(loss, grads, state, {**metrics, **diagnostics})


@dataclasses.dataclass(frozen=True)
class LPFSGD:
  """LPF-SGD (Bisla et al. 2022): descend along the Monte-Carlo smoothed gradient.

    g = (1/M) Σ_k ∇L_k(w + δ_k),  δ_k kernel-wise N(0, (γ_t ‖w_j‖)²) as R-SAM's δ0,

  where the batch is split into M interleaved chunks L_k, each with its own noise draw. One pass in all.
  """
  gamma: ScalarOrSchedule = 0.002
  num_samples: int = 1

  def __call__(self, loss_fn, params, model_state, batch, key, step) -> UpdateResult:
    gamma = as_schedule(self.gamma)(jnp.asarray(step))
    noise_key, dropout_key = jax.random.split(key)

    def one(chunk, k):
      delta = materialized(kernelwise_noise(jax.random.fold_in(noise_key, k), params, gamma), step)
      result = value_and_grad(loss_fn, T.add_scaled(params, 1.0, delta), model_state, chunk,
                              jax.random.fold_in(dropout_key, k))
      return result + (T.norm(delta),)

    chunks = split_batch(batch, self.num_samples, interleaved=True)
    loss, grads, state, metrics, noise_norm = mean_over_parts(one, chunks, self.num_samples)
    return UpdateResult(loss, grads, state, {**metrics, 'gamma': jnp.asarray(gamma, jnp.float32),
                                             'noise_norm': noise_norm, 'grad_norm': T.norm(grads)})
