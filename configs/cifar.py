r"""Tables 1-2: ResNet-18 / ResNet-50 / WRN-28-10 on CIFAR-10 / CIFAR-100, 200 epochs at batch 128.

    python train.py --config configs/cifar.py:dataset=cifar10,model=resnet18,updater=rsam --workdir DIR
    python train.py --config configs/cifar.py:dataset=cifar100,model=wrn28_10,updater=sam,runlocal=1 ...

Arguments (``key=value``, comma-separated):
  dataset   cifar10 (Table 1) | cifar100 (Table 2)
  model     resnet18 | resnet50 | wrn28_10
  updater   sgd | sgd_momentum | rmsprop | adamw   (updater 'plain' with that base optimizer)
            lpf_sgd | sam | rsam                    (on SGD+M; the other table columns)
            gsam | rgsam | asam                     (accepted; in no CIFAR table of the paper)
  m         examples per ascent group (default none: the whole batch; see below)
  rho       the constant ρ of sam | rsam | gsam | rgsam | asam (default: the table below; the CIFAR
            R-SAM ρ sweep of configs/tables.py sets it)
  runlocal  1: a 2-step CPU-sized run of the same config on tfds mock data (configs/families.py: runlocal)

Hyper-parameters and their sources (details in configs/families.py):
  200 epochs, batch 128                           [paper, Tables 1-2 captions]
  basic augmentation (pad 4, crop 32, flip)        [paper Sec. 4.2: "basic augmentation", as SAM]
  SGD+M: lr 0.1, momentum 0.9, wd 5e-4, cosine     [paper 4.1.4 "based on vanilla SAM"; SAM; LPF-SGD]
  SGD: lr 0.1, wd 5e-4                             (ours: not published; SGD+M's values)
  RMSProp: lr 1e-3, decay 0.9, wd 5e-4             (ours: not published; Keras/TF defaults)
  AdamW: lr 1e-3, β 0.9/0.999, wd 0.05 decoupled   (ours: not published; lr·wd equals SGD+M's)
  LPF-SGD: ResNets M 1, γ 0.002; WRN M 8, γ0 5e-4 ×35 (C-10) / ×25 (C-100)   [LPF-SGD README]
  SAM: ρ 0.05 (C-10) / 0.1 (C-100)                 [SAM; algorithms.md]
  R-SAM: ρ = SAM's, λ 2, γ0 5e-4 ×5 (cosine increase)   (ours: no source gives R-SAM's CIFAR ρ, λ, γ;
                                                         official ViT λ/γ; ρ = SAM's is a choice, swept
                                                         ×1-50 in configs/tables.py 'cifar_rho')
  ASAM: ρ 0.5 (C-10) / 1.0 (C-100), η 0.01         [SamsungLabs/ASAM README commands, asam.py]
  m = None: one ascent on the whole batch of 128   (ours: the paper does not give its CIFAR device
        count; single-GPU SAM/LPF-SGD codes do this, and it is device-count independent)
Step count: ⌊200 · 50,000 / 128⌋ = 78,125 steps (exact), cosine over all of them. The test set is evaluated
every 5 epochs (1,950 steps; config.eval_intervals) for a curve, and at the end.
"""
from configs import families


def get_config(arg=None):
  a = families.parse_arg(arg, dataset='cifar10', model='resnet18', updater='rsam', m=(int, None),
                         rho=(float, None), runlocal=False)
  c = families.cifar(a.dataset, a.model, a.updater, m=a.m, rho=a.rho)
  return families.runlocal(c) if a.runlocal else c
