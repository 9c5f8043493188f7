r"""ViT-S/16 + R-SAM on ImageNet-1k (Table 3 78.7, Table 4).

    python train.py --config configs/vit_s16_rsam.py --workdir DIR
    python train.py --config configs/vit_s16_rsam.py:runlocal=1 --workdir /tmp/vit_s16_rsam  # 2 CPU steps

R-SAM: the official ViT-B/16 values (ρ 2.5 → 1.5 lr-tied, 10k warm-up branch, λ 2, γ0 5e-4 ×5)
[R-SAM code]; the S/16 values are not published (ours: the same); m 16.
Everything else is the shared ViT recipe of configs/imagenet_vit.py (sources there and in
configs/families.py): AdamW β 0.9/0.999, wd 0.3 (every leaf), lr 3e-3, 10k warm-up, linear decay to 3e-5,
clip 1.0; dropout 0.1; sigmoid xent, smoothing 1e-4, head bias -10, token pool + tanh pre-logits;
batch 4096, 93,834 steps of train[:99%] (the official run.sh; steps=epochs: 300 epochs, 92,897);
Inception crop 224; bfloat16.
Arguments: aug=none|mixup|mixup_ra, rho_max=, rho_min=, lam=, m=, steps=official|epochs, runlocal=1.
"""
from configs import imagenet_vit


def get_config(arg=None):
  return imagenet_vit.get_config(arg, model='vit_s16', updater='rsam')
