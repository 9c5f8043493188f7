r"""ViT-B/16 + SAM on ImageNet-1k (Table 3 79.8, Table 4).

    python train.py --config configs/vit_b16_sam.py --workdir DIR
    python train.py --config configs/vit_b16_sam.py:runlocal=1 --workdir /tmp/vit_b16_sam  # 2 CPU steps

SAM: ρ 0.05 constant with m 32, the pair of ViT-SAM (Chen et al. 2022; its ρ table was not readable
here to confirm 0.05; m = 4096 images / 64 TPU v3 chips × 2 cores, per-device ascent as google-research/sam).
Everything else is the shared ViT recipe of configs/imagenet_vit.py (sources there and in
configs/families.py): AdamW β 0.9/0.999, wd 0.3 (every leaf), lr 3e-3, 10k warm-up, linear decay to 3e-5,
clip 1.0; dropout 0.1; sigmoid xent, smoothing 1e-4, head bias -10, token pool + tanh pre-logits;
batch 4096, 93,834 steps of train[:99%] (the official run.sh; steps=epochs: 300 epochs, 92,897);
Inception crop 224; bfloat16.
Arguments: aug=none|mixup|mixup_ra, rho_max=, rho_min=, lam=, m=, steps=official|epochs, runlocal=1.
"""
from configs import imagenet_vit


def get_config(arg=None):
  return imagenet_vit.get_config(arg, model='vit_b16', updater='sam')
