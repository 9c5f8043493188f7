r"""Tables 3-4 and Fig. 3: ViT-B/16 and ViT-S/16 on ImageNet-1k, 300 epochs at batch 4096, 224 px.

    python train.py --config configs/imagenet_vit.py:model=vit_b16,updater=rsam --workdir DIR
    python train.py --config configs/imagenet_vit.py:model=vit_b16,updater=sam,aug=mixup_ra --workdir DIR

The headline files (configs/vit_b16_rsam.py, vit_b16_sam.py, ...) are this config with model and
updater fixed; they take the remaining arguments.

Arguments (``key=value``, comma-separated):
  model     vit_b16 | vit_s16
  updater   adamw | sam | rsam | gsam | rgsam
  aug       none (Table 3 rows 1-2, Table 4, Fig. 3) | mixup | mixup_ra (mixup + RandAugment)
  rho_max, rho_min, lam   override the lr-tied ρ range and λ (Fig. 3(b) and 3(c) sweeps)
  m         examples per ascent group (default 16: the official per-TPU-core batch; SAM 32, the pair
            ViT-SAM's ρ goes with; none = whole batch)
  steps     official (default): 93,834 steps, the official run.sh's count, which produced the paper's
            numbers (γ's cosine and the lr decay run over it) | epochs: 300 epochs of train[:99%],
            ⌊300·1,268,355/4096⌋ = 92,897 steps, the paper's stated epoch count
  runlocal  1: a 2-step CPU-sized run of the same config (vit_tiny, 32 px, batch 16), tfds mock data

Every run evaluates on ImageNet val, ReaL, v2, R (200-class mask) and C (mean top-1 over 15 × 5), so
the Table 3 rows without augmentation are also the Table 4 runs and the Fig. 3(a) R-SAM bar. During
training: minival (train[99%:]) every 1,000 steps for the curve, val/ReaL/v2/R every 10,000, C at the end
(config.eval_intervals).

Hyper-parameters and their sources (details in configs/families.py):
  batch 4096, 300 epochs, Inception crop, 224 px      [paper Table 3/4 captions]
  train on train[:99%] (minival = train[99%:])        [R-SAM code input_pipeline.py]
  93,834 steps (303 epochs of it; steps=epochs:      [R-SAM code run.sh --total_steps 93834]
    300 epochs, ⌊300·1,268,355/4096⌋ = 92,897)
  eval: resize 256x256 (aspect not kept), crop 224    [R-SAM code input_pipeline.py]
  step index t = step + 1 for ρ's branch and γ        [R-SAM code train.py]
  AdamW β 0.9/0.999, wd 0.3, lr 3e-3, 10k warm-up,
    linear decay to 3e-5, clip 1.0                    [R-SAM code; GSAM Table 4]
  dropout 0.1, no stochastic depth                    [algorithms.md; paper 4.1.4]
  sigmoid xent, smoothing 1e-4, head bias -10,
    token pool + tanh pre-logits                      [R-SAM code train.py; vit_jax]
  weight decay 0.3 on every leaf, × lr (decoupled)    [R-SAM code: flax.optim.Adam(weight_decay=0.3)]
  mixup α 0.5, RandAugment(2, 15)                     (ours: unpublished; AugReg 'medium2'; the
                                                       official code's commented mixup_alpha = 0.5)
  SAM ρ 0.05 (B/16) / 0.1 (S/16), constant, m 32     [ViT-SAM, Chen et al. 2022: ρ unverified here;
                                                       m from its 64 TPU v3 chips, configs/families.py]
  R-SAM ρ 2.5 → 1.5 lr-tied, 10k warm-up branch,
    λ 2, γ0 5e-4 ×5                                   [R-SAM code]
  GSAM B/16 ρ 0.6 → 0.2, α 0.4; S/16 ρ 0.6 → 0, α 1   [GSAM Table 4]
  R-GSAM: GSAM's ρ, α + R-SAM's λ, γ                  (ours: paper Sec. 4.5, no code)
  m 16 (SAM: 32)                                      [R-SAM code: pmap over 256 cores, 16 images each]
  bfloat16 compute                                    [as the TPU runs]
"""
from configs import families


def get_config(arg=None, **fixed):
  """``fixed`` (model=, updater=) are the defaults a headline file pins; ``arg`` may still set others."""
  a = families.parse_arg(
      arg, model=fixed.get('model', 'vit_b16'), updater=fixed.get('updater', 'rsam'), aug='none',
      rho_max=(float, None), rho_min=(float, None), lam=(float, None), m=(int, families.DEFAULT_M),
      steps='official', runlocal=False)
  for key, value in fixed.items():
    if a[key] != value:
      raise families.ConfigError(f'this config fixes {key}={value}; use configs/imagenet_vit.py for '
                                 f'{key}={a[key]}')
  c = families.imagenet_vit(a.model, a.updater, aug=a.aug, rho_max=a.rho_max, rho_min=a.rho_min,
                            lam=a.lam, m=a.m, steps=a.steps)
  return families.runlocal(c) if a.runlocal else c
