r"""ViT-B/16 + R-GSAM on ImageNet-1k (Fig. 3(a) 81.2).

    python train.py --config configs/vit_b16_rgsam.py --workdir DIR
    python train.py --config configs/vit_b16_rgsam.py:runlocal=1 --workdir /tmp/vit_b16_rgsam  # 2 CPU steps

R-GSAM (ours, no public code; paper Sec. 4.5): GSAM's ρ 0.6 → 0.2 and α 0.4 [GSAM Table 4] with
R-SAM's noise: λ 2, γ0 5e-4 growing 5× [R-SAM code]; m 16.
Everything else is the shared ViT recipe of configs/imagenet_vit.py (sources there and in
configs/families.py): AdamW β 0.9/0.999, wd 0.3 (every leaf), lr 3e-3, 10k warm-up, linear decay to 3e-5,
clip 1.0; dropout 0.1; sigmoid xent, smoothing 1e-4, head bias -10, token pool + tanh pre-logits;
batch 4096, 93,834 steps of train[:99%] (the official run.sh; steps=epochs: 300 epochs, 92,897);
Inception crop 224; bfloat16.
Arguments: aug=none|mixup|mixup_ra, rho_max=, rho_min=, lam=, m=, steps=official|epochs, runlocal=1.
"""
from configs import imagenet_vit


def get_config(arg=None):
  return imagenet_vit.get_config(arg, model='vit_b16', updater='rgsam')
