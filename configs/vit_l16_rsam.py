r"""ViT-L/16 + R-SAM on ImageNet-1k: beyond the paper (which stops at ViT-B/16), with a sharded state.

    python train.py --config configs/vit_l16_rsam.py --workdir gs://BUCKET/vit_l16_rsam
    python train.py --config configs/vit_l16_rsam.py:runlocal=1 --workdir runs/vit_l16_local  # 2 CPU steps

The ViT-B/16 R-SAM recipe of configs/imagenet_vit.py (AdamW, lr 3e-3, 10k warm-up, batch 4096, 93,834
steps, ρ 2.5 → 1.5 lr-tied, λ 2, γ0 5e-4 ×5, m 16) on ViT-L/16 (24 layers, width 1024, 16 heads, MLP
4096; 305.4M parameters with the 1000-class head and pre-logits). Its hyper-parameters are B/16's, untuned
for L/16: a starting point, not a published result.

Mesh: ``config.mesh = {'data': -1, 'fsdp': 8}``: the state is split 8 ways (8 consecutive devices: a TPU v3
host's cores, two v4 hosts on the slice's ICI, or one 8-GPU server), replicated across the 'data' groups;
on 256 chips that is data 32 × fsdp 8, 16 images per chip, one m-sharpness group each. Any device count
that 8 divides works; a checkpoint restores onto another mesh (``--config.mesh.fsdp=16``, or 1 to
replicate), so a run can move to a different slice.

Expected memory per chip (rsam/training/sharding.py's rule; the numbers come from
``scripts/benchmark.py``'s state table, from shapes, and tests/test_sharding.py recomputes them):
  train state (float32 parameters + AdamW's two moments)   3.41 GiB replicated, 0.43 GiB at fsdp=8
The step adds, whatever the fsdp size, its parameter-sized float32 temporaries (the gathered parameters,
δ0, the perturbed weights, the two gradients: about 5 × 1.14 GiB) and the bfloat16 activations of 16
images; those two are estimates, not measured here (no accelerator was available). Replicated, state and
temporaries alone come to about 9 GiB before activations: too much for a 16 GiB TPU v3 core;
fsdp=8 takes 3 GiB of it away.
Arguments: as configs/imagenet_vit.py (aug=, rho_max=, rho_min=, lam=, m=, steps=, runlocal=1).
"""
from configs import imagenet_vit

MESH = {'data': -1, 'fsdp': 8}


def get_config(arg=None):
  c = imagenet_vit.get_config(arg, model='vit_l16', updater='rsam')
  if c.model.name == 'vit_l16':  # runlocal (vit_tiny) keeps the code path but fits any host: see below
    c.mesh.update(MESH)
  else:  # every local device on 'fsdp', every leaf that can be split split: the sharded path on a CPU
    c.mesh.update(data=1, fsdp=-1)
    c.shard_min_bytes = 0
  return c
