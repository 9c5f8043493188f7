r"""The config families behind every paper table: CIFAR (Tables 1-2) and ImageNet ViT (Tables 3-4, Fig. 3).

Config files are thin: ``configs/cifar.py`` and ``configs/imagenet_vit.py`` parse their argument
(``key=value,key=value``, as big_vision's ``parse_arg``) and call ``cifar`` / ``imagenet_vit`` here;
the headline files (``configs/vit_b16_rsam.py`` ...) call ``imagenet_vit`` with two defaults fixed.
Every value below names its source; values the paper does not publish are marked **(ours)**.

Sources: [paper] the R-SAM paper (``shared/paper``); [R-SAM code] RSAM-Optimizer/R-SAM (``run.sh``,
``vit_jax/train.py``, ``vit_jax/input_pipeline.py``); [GSAM] Zhuang et al. 2022, Table 4 "Hyper-parameters
to reproduce experimental results" (an image of it is ``img/gsam_hyperparam2.png`` in juntang-zhuang/GSAM)
and big_vision's ``configs/proj/gsam``; [ASAM] SamsungLabs/ASAM (``asam.py``, README); [ViT-SAM] Chen,
Hsieh & Gong 2022 ("When Vision Transformers Outperform ResNets...");
[AugReg] big_vision ``configs/vit_i1k.py`` (Steiner et al. 2021); [SAM] google-research/sam and davda54/sam;
[LPF-SGD] devansh20la/LPF-SGD. The digest of all of them is ``shared/reference/algorithms.md``.

CIFAR (Tables 1-2) -- 200 epochs, batch 128 [paper captions], basic augmentation (pad 4 + crop + flip)
[paper Sec. 4.2], softmax cross-entropy, no label smoothing [SAM, google-research/sam default], cosine
decay to 0 without warm-up [SAM]:

- sgd_momentum (SGD+M): momentum 0.9, lr 0.1, wd 5e-4 [paper 4.1.4 "based on vanilla SAM"; SAM; LPF-SGD].
- sgd: no momentum, lr 0.1, wd 5e-4 **(ours: SGD+M's lr and wd)**.
- rmsprop: lr 1e-3, decay 0.9, eps 1e-8, no momentum, wd 5e-4 **(ours: the Keras/TF defaults)**.
- adamw: lr 1e-3, β 0.9/0.999, eps 1e-8, wd 0.05 decoupled **(ours)**.
- lpf_sgd (on SGD+M): ResNets M 1, γ 0.002 constant; WRN M 8, γ0 5e-4 growing ×35 (C-10) / ×25 (C-100)
  [LPF-SGD README].
- sam (on SGD+M): ρ 0.05 (C-10) / 0.1 (C-100), constant [SAM; algorithms.md].
- rsam (on SGD+M): ρ = SAM's (constant), λ 2, γ0 5e-4 growing ×5 **(ours: official ViT λ/γ, SAM's ρ)**.
- asam (on SGD+M): ρ 0.5 (C-10) / 1.0 (C-100), η 0.01, biases unscaled [ASAM: the README's commands,
  asam.py's class defaults; its example_cifar.py's own --eta flag defaults to 0]. davda54/sam's variant
  (T = |w| on every leaf, ρ 2.0) is ``eta=0, scale_biases=True`` (rsam/training/factory.py).
- gsam / rgsam (on SGD+M): ρ = SAM's (constant), α 0.4 [GSAM B/16] (+ R-SAM's λ/γ) **(ours; these are in
  no CIFAR table of the paper)**.

- Weight decay is coupled (added to the gradient, PyTorch style) for SGD/RMSProp and decoupled for AdamW,
  always in the base step only (rsam/training/optim.py). AdamW's 0.05 makes lr·wd = 5e-5 per step, the
  same shrink per step as SGD+M's 0.1 × 5e-4. RMSProp uses optax's eps inside the square root.
- R-SAM on CIFAR: no source gives R-SAM's CIFAR ρ, λ or γ (the paper, its code -- ViT only -- and
  algorithms.md are silent). ρ = SAM's constant is OUR CHOICE, so that SAM and R-SAM differ only in the
  random initialisation of the ascent; nothing supports "R-SAM ρ = SAM ρ": in the official ViT recipe
  R-SAM's ρ (2.5 → 1.5) is 15-50× SAM's, because ρ normalises δ0 + λĝ and δ0 can dominate. The sweep
  'cifar_rho' of configs/tables.py (ResNet-18, ρ = 1, 2, 5, 10, 20, 50 × SAM's) measures the choice.
  λ 2 and γ0 5e-4 growing 5× (cosine increase) are the official ViT values.
- m-sharpness: ``m = None`` (ascent on the whole batch of 128). The paper does not say how many
  accelerators its CIFAR runs used; one ascent per batch is davda54/sam's and LPF-SGD's single-GPU setting
  and makes the result independent of the device count. ``m=16`` (the per-core batch on a TPU v3-8, as
  google-research/sam perturbs per device) is one argument away: ``configs/cifar.py:...,m=16``.

ImageNet ViT (Tables 3-4, Fig. 3) -- [R-SAM code] unless noted:

- Data: imagenet2012 ``train[:99%]`` (1,268,355 images, as tfds slices it), as the official
  ``input_pipeline.py`` (and big_vision's ViT configs); the held-out ``train[99%:]`` (12,812 images) is the
  eval set 'minival', left out of the final evaluation list (``eval_sets``). Inception crop (area
  5-100%) + flip at 224 px, values in [-1, 1]; evaluation as the official ``input_pipeline.py``:
  ``tf.image.resize`` to 256 x 256 (aspect ratio not kept, bilinear, no antialiasing) then
  ``central_crop(224/256)``, values not rounded
  (``data.eval_resize_mode='square'``; 'shorter_side' keeps the aspect ratio, big_vision's evaluation).
  ReaL and v2 are evaluated the same way; ImageNet-R keeps its reference protocol (shorter side 256,
  centre crop 224) and ImageNet-C its 224 x 224 images (data/sources.py). Batch 4096, 300 epochs (see
  Steps).
- Model: ViT-B/16 or ViT-S/16, token pooling, tanh pre-logits of the hidden size (``representation_size``
  768 / 384: the vit_jax models the code builds on), head kernel zeros and head bias -10 (train.py),
  dropout 0.1, attention dropout 0, no stochastic depth [paper 4.1.4].
- Loss: sigmoid cross-entropy, targets ``y(1 - 1e-4) + 1e-4``.
- AdamW β 0.9/0.999, eps 1e-8, lr 3e-3 with 10,000 linear warm-up steps then linear decay to 3e-5, weight
  decay 0.3 on every leaf (biases and LayerNorm parameters too), decoupled and multiplied by the lr:
  flax.optim.Adam(weight_decay=0.3) subtracts lr · 0.3 · w after the Adam step, as optax.adamw does;
  global-norm clip 1.0 of the updater's gradient (after the cross-device mean, as train.py).
  ``--config.optimizer.decay_kernels_only=True`` decays kernels only (big_vision's habit).
- Compute in bfloat16, parameters and the ascent in float32 (the official flax.nn model computes in
  float32: ``--config.compute_dtype=float32``; results/paper/README.md lists every such difference).
- Augmentation rows of Table 3 (α and N/M unpublished) **(ours)**: mixup α 0.5 -- the value left commented
  in the official ``input_pipeline.py`` and AugReg's 'medium2' preset for B/16; RandAugment(2, 15) --
  AugReg 'medium2' (the big_vision default for ViT-B/16 on ImageNet-1k).
- Updaters: AdamW = plain; SAM ρ constant 0.05 (B/16) / 0.1 (S/16) with m = 32: the pair ViT-SAM ran.
  ρ: attributed to ViT-SAM's appendix table of ImageNet hyper-parameters; no copy of that table could be
  read while writing these configs, so the two values are UNVERIFIED (neither algorithms.md nor the R-SAM
  paper gives them; the paper's SAM rows of Table 4 equal GSAM's Table 1, so its SAM baselines are those
  of ViT-SAM / GSAM). m: ViT-SAM's first author used "64 TPU chips" for batch 4096 and SAM's ascent is per
  device ("the distributed level of SAM ... corresponds to the m-sharpness"; "with fewer machines ...
  enlarge the rho": google-research/vision_transformer issue #153): 64 TPU v3 chips are 128 JAX devices,
  32 images each (64 if the chips were cores). ``m=16`` runs SAM in R-SAM's groups;
  R-SAM: ρ tied to the lr with ρ_max 2.5, ρ_min 1.5 and the 10,000-step warm-up branch, λ 2, γ0 5e-4
  growing 5× (official code, ViT-B/16; used for S/16 too, **ours**); GSAM [GSAM Table 4, with lr 3e-3 →
  3e-5, 10k warm-up, wd 0.3, 300 epochs as here]: B/16 ρ 0.6 → 0.2, α 0.4; S/16 ρ 0.6 → 0.0, α 1.0 (GSAM's
  device count, hence its m, is not published); R-GSAM: GSAM's ρ and α with R-SAM's λ and γ **(ours; no
  public code)**.
- m-sharpness: ``m = 16`` (SAM: 32, above). The official run perturbed per TPU core on 16 images (TPU
  v3-256: 32 hosts × 128 images / 8 cores; README of the R-SAM code), as google-research/sam and
  big_vision's GSAM do; ``m`` keeps those groups of 16 whatever the device count (it must divide the per-device batch).
- Evaluation during training **(ours)**: 'minival' every 1,000 steps (the curve), validation, ReaL, v2 and
  R every 10,000, ImageNet-C only at the end (``VIT_EVAL_INTERVALS``); CIFAR: its test set every 5 epochs
  (1,950 steps; it has no other held-out split: the paper trains on all 50,000 images).
- Steps: 300 epochs of what is trained: ``total_steps`` is left to the repo's rule (config_check.total_steps),
  ⌊epochs · N_train / batch⌋ = ⌊300 · 1,268,355 / 4096⌋ = 92,897, and γ's T (the official code ties T to
  its step count) follows. The official run.sh passes ``--total_steps 93834`` with the same 99% split:
  937 steps (1.0%) more, 303.0 epochs of its data (93,834 is one step short of 300 epochs of the FULL
  train split, ⌊300 · 1,281,167 / 4096⌋ = 93,835). ``--config.total_steps=93834`` runs the official count.
- Step index: the official loop counts t = 1, 2, ...: ρ's warm-up branch and γ at t = step + 1, the lr at
  step (rsam/schedules.py).

``runlocal=1`` shrinks any of these configs to a few-step CPU run with no dataset (tiny model, batch 16,
2 steps, 32-px ImageNet, one ImageNet-C subset, tfds mock data, every evaluator after step 1 and at the
end): see ``runlocal``.
"""
from typing import Optional

import ml_collections

from configs.common import get_base_config
from rsam.errors import ConfigError

# --- argument parsing ----------------------------------------------------------------------------


def parse_arg(arg: Optional[str], **spec) -> ml_collections.ConfigDict:
  """``'key=value,key=value'`` -> ConfigDict of ``spec``'s keys (big_vision's ``parse_arg``).

  ``spec`` maps each key to its default; the value's type comes from the default, or from a
  ``(type, default)`` pair (for defaults that are None). 'none' gives None; bools take 1/0/true/false.
  """
  types, values = {}, {}
  for key, default in spec.items():
    if isinstance(default, tuple) and len(default) == 2 and isinstance(default[0], type):
      types[key], values[key] = default
    else:
      types[key], values[key] = type(default), default
  for item in filter(None, (arg or '').split(',')):
    key, sep, text = item.partition('=')
    key, text = key.strip(), text.strip()
    if not sep or key not in spec:
      raise ConfigError(f"config argument {item!r} is not key=value with a key among: {', '.join(spec)}")
    values[key] = _convert(key, text, types[key])
  return ml_collections.ConfigDict(values, type_safe=False)


def _convert(key: str, text: str, kind: type):
  if text.lower() == 'none':
    return None
  try:
    if kind is bool:
      if text.lower() not in ('1', '0', 'true', 'false', 'yes', 'no'):
        raise ValueError(text)
      return text.lower() in ('1', 'true', 'yes')
    if kind is int:
      return int(text)
    if kind is float:
      return float(text)
  except ValueError:
    raise ConfigError(f"config argument {key}={text!r} is not a valid {kind.__name__}") from None
  return text


def _choose(key: str, value: str, choices) -> str:
  if value not in choices:
    raise ConfigError(f"config argument {key}={value!r}; choose one of: {', '.join(choices)}")
  return value


# --- CIFAR (Tables 1-2) ----------------------------------------------------------------------------

CIFAR_DATASETS = ('cifar10', 'cifar100')
CIFAR_MODELS = ('resnet18', 'resnet50', 'wrn28_10')
# Table order of the paper, then the extra updaters the config accepts.
CIFAR_UPDATERS = ('sgd', 'sgd_momentum', 'rmsprop', 'adamw', 'lpf_sgd', 'sam', 'rsam', 'gsam', 'rgsam',
                  'asam')
SAM_RHO_CIFAR = {'cifar10': 0.05, 'cifar100': 0.1}           # [SAM]
CIFAR_EVAL_EVERY = 5 * (50_000 // 128)  # the test set every 5 epochs of 390 steps: 40 points of a curve
ASAM_RHO_CIFAR = {'cifar10': 0.5, 'cifar100': 1.0}           # [ASAM README's commands]
LPF_WRN_GROWTH = {'cifar10': 35.0, 'cifar100': 25.0}        # [LPF-SGD]

_SGD_MOMENTUM = dict(name='momentum', lr=0.1, momentum=0.9, weight_decay=5e-4)
# The table's baseline columns: updater 'plain' with these base optimizers.
CIFAR_BASE_OPTIMIZERS = {
    'sgd': dict(name='sgd', lr=0.1, momentum=0.0, weight_decay=5e-4),
    'sgd_momentum': _SGD_MOMENTUM,
    'rmsprop': dict(name='rmsprop', lr=1e-3, momentum=0.0, b2=0.9, eps=1e-8, weight_decay=5e-4),
    'adamw': dict(name='adamw', lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05),
}


def cifar(dataset: str = 'cifar10', model: str = 'resnet18', updater: str = 'rsam', *,
          m: Optional[int] = None, rho: Optional[float] = None) -> ml_collections.ConfigDict:
  """One cell of Table 1 (cifar10) or Table 2 (cifar100); the module docstring gives every source.
  ``rho`` overrides the (constant) ρ of a sharpness-aware updater (the CIFAR R-SAM ρ sweep)."""
  _choose('dataset', dataset, CIFAR_DATASETS)
  _choose('model', model, CIFAR_MODELS + ('wrn16_4', 'resnet_tiny', 'wrn_tiny'))
  _choose('updater', updater, CIFAR_UPDATERS)
  baseline = updater in CIFAR_BASE_OPTIMIZERS
  c = get_base_config('plain' if baseline else updater)
  c.data.name = dataset
  c.data.augment = 'basic'
  c.model.name = model
  c.optimizer.update(CIFAR_BASE_OPTIMIZERS[updater] if baseline else _SGD_MOMENTUM)
  c.schedule.update(name='cosine', warmup_steps=0, end_lr=0.0)
  c.loss, c.label_smoothing, c.mixup_alpha = 'softmax_xent', 0.0, 0.0
  c.batch_size, c.num_epochs, c.total_steps = 128, 200.0, None
  c.eval_sets, c.eval_batch_size = ('test',), 512
  c.eval_intervals = {'test': CIFAR_EVAL_EVERY}  # CIFAR's only held-out split is its test set
  c.checkpoint_every_steps = 2000

  ascent = ('sam', 'rsam', 'gsam', 'rgsam', 'asam')  # the updaters with a ρ
  if rho is not None and updater not in ascent:
    raise ConfigError(f"config argument rho= does not apply to updater '{updater}'")
  if updater == 'lpf_sgd':
    if model.startswith('wrn'):
      c.updater.update(gamma=5e-4, gamma_growth=LPF_WRN_GROWTH[dataset], num_samples=8)
    else:
      c.updater.update(gamma=0.002, gamma_growth=1.0, num_samples=1)
  elif updater in ascent:
    if rho is None:
      rho = ASAM_RHO_CIFAR[dataset] if updater == 'asam' else SAM_RHO_CIFAR[dataset]
    c.updater.update(rho_schedule='constant', rho=rho, rho_max=rho, rho_min=rho, rho_warmup_steps=0)
  if 'm' in c.updater:
    c.updater.m = m
  return c


# --- ImageNet ViT (Tables 3-4, Fig. 3) -------------------------------------------------------------

VIT_MODELS = ('vit_b16', 'vit_s16')
VIT_UPDATERS = ('adamw', 'sam', 'rsam', 'gsam', 'rgsam')
VIT_AUGS = ('none', 'mixup', 'mixup_ra')
HIDDEN_SIZE = {'vit_l16': 1024, 'vit_b16': 768, 'vit_s16': 384, 'vit_ti4': 192, 'vit_tiny': 32}
IMAGENET_EVAL_SETS = ('validation', 'imagenet_real', 'imagenet_v2', 'imagenet_r', 'imagenet_c')
# Each eval set's interval in steps (rsam/training/evaluation.py), 0 = only at the end: 'minival' (12,812
# held-out train images, cheap) draws the curve, the test sets run 9 times in 92,897 steps, ImageNet-C
# (3.75M images) only at the end.
VIT_EVAL_INTERVALS = {'minival': 1000, 'validation': 10_000, 'imagenet_real': 10_000, 'imagenet_v2': 10_000,
                      'imagenet_r': 10_000, 'imagenet_c': 0}
OFFICIAL_TOTAL_STEPS = 93_834   # run.sh --total_steps of the R-SAM code; ours: 300 epochs (docstring)
VIT_MIXUP_ALPHA = 0.5           # ours: the official code's commented value; AugReg 'medium2'
VIT_RANDAUGMENT = (2, 15)       # ours: AugReg 'medium2' (N layers, magnitude M)
SAM_RHO_VIT = {'vit_b16': 0.05, 'vit_s16': 0.1}              # [ViT-SAM]
GSAM_VIT = {'vit_b16': dict(rho_max=0.6, rho_min=0.2, alpha=0.4),   # [GSAM Table 4]
            'vit_s16': dict(rho_max=0.6, rho_min=0.0, alpha=1.0)}
VIT_M = 16                      # examples per ascent group: the official per-TPU-core batch
SAM_M_VIT = 32                  # SAM: ViT-SAM's per-device batch, 4096 / (64 TPU v3 chips × 2 cores)
DEFAULT_M = 'default'           # m of imagenet_vit: SAM_M_VIT for sam, VIT_M for the others


def imagenet_vit(model: str = 'vit_b16', updater: str = 'rsam', *, aug: str = 'none',
                 rho_max: Optional[float] = None, rho_min: Optional[float] = None,
                 lam: Optional[float] = None, m=DEFAULT_M) -> ml_collections.ConfigDict:
  """One ViT run of Table 3/4 or Fig. 3; ``rho_max``/``rho_min``/``lam`` override the updater's (the
  Fig. 3(b, c) sweeps); ``m`` examples per ascent group (None: the whole batch; default: 32 for SAM, the
  pair of ρ and m ViT-SAM trained with, 16 for the others); the module docstring gives every source."""
  _choose('model', model, VIT_MODELS + ('vit_l16', 'vit_ti4', 'vit_tiny'))  # vit_l16: beyond the paper
  _choose('updater', updater, VIT_UPDATERS)
  _choose('aug', aug, VIT_AUGS)
  c = get_base_config('plain' if updater == 'adamw' else updater)
  c.data.name = 'imagenet2012'
  c.data.image_size = 224
  c.data.train_split = 'train[:99%]'  # the official split; train[99%:] is the eval set 'minival'
  c.data.augment = 'inception'
  c.data.eval_resize_mode = 'square'   # the official evaluation: 256 x 256, aspect not kept, crop 224
  c.data.randaugment_layers = VIT_RANDAUGMENT[0] if aug == 'mixup_ra' else 0
  c.data.randaugment_magnitude = float(VIT_RANDAUGMENT[1])
  c.model.name = model
  c.model.overrides = dict(pool='token', representation_size=HIDDEN_SIZE[model], head_bias_init=-10.0,
                           dropout_rate=0.1, attention_dropout_rate=0.0)
  c.optimizer.update(name='adamw', lr=3e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.3,
                     decay_kernels_only=False, grad_clip_norm=1.0)
  c.schedule.update(name='linear', warmup_steps=10_000, end_lr=3e-5)
  c.loss, c.label_smoothing = 'sigmoid_xent', 1e-4
  c.mixup_alpha = VIT_MIXUP_ALPHA if aug in ('mixup', 'mixup_ra') else 0.0
  c.batch_size, c.num_epochs, c.total_steps = 4096, 300.0, None  # 300 epochs of train[:99%]: 92,897
  c.compute_dtype = 'bfloat16'
  c.eval_sets, c.eval_batch_size = IMAGENET_EVAL_SETS, 1024
  c.eval_intervals = dict(VIT_EVAL_INTERVALS)
  c.log_every_steps, c.checkpoint_every_steps = 100, 1000

  if updater == 'sam':
    rho = SAM_RHO_VIT[model] if model in SAM_RHO_VIT else SAM_RHO_VIT['vit_b16']
    c.updater.update(rho_schedule='constant', rho=rho, rho_max=rho, rho_min=rho)
  elif updater in ('gsam', 'rgsam'):
    c.updater.update(GSAM_VIT.get(model, GSAM_VIT['vit_b16']))
  # rsam keeps the factory defaults: the official values (rsam/training/factory.py).
  overrides = {'rho_max': rho_max, 'rho_min': rho_min, 'lam': lam}
  for key, value in overrides.items():
    if value is None:
      continue
    if key not in c.updater or c.updater.get('rho_schedule') == 'constant' and key != 'lam':
      raise ConfigError(f"config argument {key}= does not apply to updater '{updater}' "
                        f"(it has: {', '.join(sorted(c.updater))})")
    c.updater[key] = float(value)
  if 'm' in c.updater:
    c.updater.m = (SAM_M_VIT if updater == 'sam' else VIT_M) if m == DEFAULT_M else m
  return c


# --- runlocal ----------------------------------------------------------------------------------------

TINY_MODEL = {'resnet18': 'resnet_tiny', 'resnet50': 'resnet_tiny', 'wrn28_10': 'wrn_tiny',
              'wrn16_4': 'wrn_tiny', 'vit_b16': 'vit_tiny', 'vit_s16': 'vit_tiny', 'vit_ti4': 'vit_tiny',
              'vit_l16': 'vit_tiny'}
RUNLOCAL = dict(batch_size=16, eval_batch_size=16, total_steps=2, num_train_examples=32, image_size=32,
                m=2)


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config to a few-step CPU run (big_vision's ``runlocal``), keeping its code paths.

  Tiny model of the same family (``model.runlocal_of`` names the full-size one), batch 16 (a multiple of 8
  devices), 2 steps, evaluation batch 16, the periodic evaluators (``eval_intervals``) after step 1 and
  every set at the end,
  warm-ups of 1 step (lr and ρ), ImageNet at 32 px with one ImageNet-C corruption × severity, m-sharpness
  groups of 2, ``num_train_examples`` set, and tfds mock data (``data.mock_examples``: random images of the
  dataset's own features through the same pipeline), so it runs on a machine with no dataset. LPF-SGD's M stays
  (it splits the batch of 16). Everything else -- updater, loss, mixup, RandAugment, dtype -- is kept.
  """
  r = RUNLOCAL
  name = c.model.name
  c.model.name = TINY_MODEL.get(name, name)
  # The model it stands in for: tells apart the smoke runs of cells that differ only in the model
  # (ResNet-18/50, ViT-B/S), for wandb names and make_tables (configs/tables.py: match).
  c.model.runlocal_of = name
  if c.model.get('overrides') and 'representation_size' in c.model.overrides:
    c.model.overrides.representation_size = HIDDEN_SIZE[c.model.name]
  c.batch_size, c.eval_batch_size, c.total_steps = r['batch_size'], r['eval_batch_size'], r['total_steps']
  c.data.num_train_examples = r['num_train_examples']
  if c.data.name != 'digits':  # tfds mock data: runs with no dataset (--config.data.mock_examples=0: the real one)
    c.data.mock_examples = r['num_train_examples']
  if c.data.name == 'imagenet2012':
    c.data.image_size = r['image_size']
    c.data.shuffle_buffer = 64
    c.data.imagenet_c_corruptions = ('gaussian_noise',)
    c.data.imagenet_c_severities = (1,)
  if c.schedule.get('warmup_steps'):
    c.schedule.warmup_steps = 1
  if c.updater.get('rho_warmup_steps'):
    c.updater.rho_warmup_steps = 1
  if c.updater.get('m'):
    c.updater.m = r['m']
  c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 1, 1000, 0
  for name, every in c.eval_intervals.items():  # every periodic evaluator also runs after step 1
    if every:
      c.eval_intervals[name] = 1
  return c
