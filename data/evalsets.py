"""Evaluation protocols as pure functions of logits and labels (no tf.data here).

Every `*_sums` function maps one batch to additive sums ({'correct', 'count'}, arrays), so the
sums of many batches -- on any number of devices or processes -- add up, and a `finalize_*`
function turns the totals into accuracies. They use `jax.numpy`, run inside `jax.jit` on global
(sharded) arrays (the sums are then global) and accept plain NumPy arrays too.

- top-1 accuracy: argmax == label, padded rows (mask 0) left out.
- ImageNet-ReaL (Beyer et al. 2020): correct when the argmax is ANY of the image's ReaL labels
  (`real_labels`, multi-hot [B, 1000]); images with no ReaL label (about 3.5k of 50k) are left
  out of the denominator, as are padded rows.
- ImageNet-R (Hendrycks et al. 2021): 'mask200' (the reference evaluation, `eval.py` of
  github.com/hendrycks/imagenet-r: only the 200 ImageNet-R classes' logits compete for the argmax)
  or 'full1000' (a plain 1000-way argmax, harsher).
- ImageNet-C (Hendrycks & Dietterich 2019): top-1 for each (corruption, severity) of the 15
  benchmark corruptions x 5 severities; the result is the mean top-1 over all of them (the
  SAM-for-ViT papers' number; not the AlexNet-normalised mCE), and the table is kept.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

IMAGENET_R_PROTOCOLS = ('mask200', 'full1000')

# The 200 ImageNet-R classes (WordNet ids). Source: `imagenet_r_wnids` in eval.py of
# https://github.com/hendrycks/imagenet-r (commit 44d3a1d). The tfds wheel ships the 1000
# ImageNet wnids (`imagenet2012/labels.txt`, the label order of every tfds ImageNet dataset,
# imagenet_r included) but not this subset.
IMAGENET_R_WNIDS = tuple((
    'n01443537 n01484850 n01494475 n01498041 n01514859 n01518878 n01531178 n01534433 n01614925 '
    'n01616318 n01630670 n01632777 n01644373 n01677366 n01694178 n01748264 n01770393 n01774750 '
    'n01784675 n01806143 n01820546 n01833805 n01843383 n01847000 n01855672 n01860187 n01882714 '
    'n01910747 n01944390 n01983481 n01986214 n02007558 n02009912 n02051845 n02056570 n02066245 '
    'n02071294 n02077923 n02085620 n02086240 n02088094 n02088238 n02088364 n02088466 n02091032 '
    'n02091134 n02092339 n02094433 n02096585 n02097298 n02098286 n02099601 n02099712 n02102318 '
    'n02106030 n02106166 n02106550 n02106662 n02108089 n02108915 n02109525 n02110185 n02110341 '
    'n02110958 n02112018 n02112137 n02113023 n02113624 n02113799 n02114367 n02117135 n02119022 '
    'n02123045 n02128385 n02128757 n02129165 n02129604 n02130308 n02134084 n02138441 n02165456 '
    'n02190166 n02206856 n02219486 n02226429 n02233338 n02236044 n02268443 n02279972 n02317335 '
    'n02325366 n02346627 n02356798 n02363005 n02364673 n02391049 n02395406 n02398521 n02410509 '
    'n02423022 n02437616 n02445715 n02447366 n02480495 n02480855 n02481823 n02483362 n02486410 '
    'n02510455 n02526121 n02607072 n02655020 n02672831 n02701002 n02749479 n02769748 n02793495 '
    'n02797295 n02802426 n02808440 n02814860 n02823750 n02841315 n02843684 n02883205 n02906734 '
    'n02909870 n02939185 n02948072 n02950826 n02951358 n02966193 n02980441 n02992529 n03124170 '
    'n03272010 n03345487 n03372029 n03424325 n03452741 n03467068 n03481172 n03494278 n03495258 '
    'n03498962 n03594945 n03602883 n03630383 n03649909 n03676483 n03710193 n03773504 n03775071 '
    'n03888257 n03930630 n03947888 n04086273 n04118538 n04133789 n04141076 n04146614 n04147183 '
    'n04192698 n04254680 n04266014 n04275548 n04310018 n04325704 n04347754 n04389033 n04409515 '
    'n04465501 n04487394 n04522168 n04536866 n04552348 n04591713 n07614500 n07693725 n07695742 '
    'n07697313 n07697537 n07714571 n07714990 n07718472 n07720875 n07734744 n07742313 n07745940 '
    'n07749582 n07753275 n07753592 n07768694 n07873807 n07880968 n07920052 n09472597 n09835506 '
    'n10565667 n12267677').split())

# Their indices in the 1000-class label space (same source, the commented-out
# `imagenet_r_indices`); tests check that the two lists agree with tfds' label names.
IMAGENET_R_INDICES = (
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99,
    100, 105, 107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162, 163,
    171, 172, 178, 187, 195, 199, 203, 207, 208, 219, 231, 232, 234, 235, 242, 245, 247, 250, 251,
    254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289, 291, 292, 293, 296, 299, 301, 308,
    309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337, 338, 340, 341, 344, 347, 353, 355,
    361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407, 413, 414, 425, 428, 430, 435,
    437, 441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558, 570,
    579, 583, 587, 593, 594, 596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768,
    774, 776, 779, 780, 787, 805, 812, 815, 820, 824, 833, 847, 852, 866, 875, 883, 889, 895, 907,
    928, 931, 932, 933, 934, 936, 937, 943, 945, 947, 948, 949, 951, 953, 954, 957, 963, 965, 967,
    980, 981, 983, 988)

# The 15 benchmark corruptions (Hendrycks & Dietterich 2019), tfds config prefixes, and the 4
# extra ones tfds also has (not part of the benchmark mean).
IMAGENET_C_CORRUPTIONS = (
    'gaussian_noise', 'shot_noise', 'impulse_noise',
    'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur',
    'snow', 'frost', 'fog', 'brightness',
    'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression')
IMAGENET_C_EXTRA_CORRUPTIONS = ('gaussian_blur', 'saturate', 'spatter', 'speckle_noise')
IMAGENET_C_ALL_CORRUPTIONS = IMAGENET_C_CORRUPTIONS + IMAGENET_C_EXTRA_CORRUPTIONS
IMAGENET_C_SEVERITIES = (1, 2, 3, 4, 5)


def imagenet_r_class_mask(num_classes: int = 1000) -> np.ndarray:
  """bool [num_classes], True for the 200 ImageNet-R classes."""
  mask = np.zeros([num_classes], bool)
  mask[list(IMAGENET_R_INDICES)] = True
  return mask


def _mask(mask, n):
  return jnp.ones([n], jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)


def accuracy_sums(logits, labels, mask=None):
  """Top-1: {'correct': sum of mask * [argmax == label], 'count': sum of mask}."""
  logits = jnp.asarray(logits)
  m = _mask(mask, logits.shape[0])
  hit = (jnp.argmax(logits, axis=-1) == jnp.asarray(labels)).astype(jnp.float32)
  return {'correct': jnp.sum(hit * m), 'count': jnp.sum(m)}


def real_sums(logits, real_labels, mask=None):
  """ImageNet-ReaL: real_labels is multi-hot bool [B, C]. Correct when the argmax is one of the
  image's labels; images with no label, and padded rows, are not counted."""
  logits = jnp.asarray(logits)
  real = jnp.asarray(real_labels).astype(bool)
  m = _mask(mask, logits.shape[0]) * jnp.any(real, axis=-1).astype(jnp.float32)
  pred = jnp.argmax(logits, axis=-1)
  hit = jnp.take_along_axis(real, pred[:, None], axis=-1)[:, 0].astype(jnp.float32)
  return {'correct': jnp.sum(hit * m), 'count': jnp.sum(m)}


def imagenet_r_sums(logits, labels, mask=None, *, protocol: str = 'mask200'):
  """ImageNet-R top-1 under `protocol` ('mask200': the 800 non-R logits are set to -inf before
  the argmax; 'full1000': plain argmax)."""
  if protocol not in IMAGENET_R_PROTOCOLS:
    raise ValueError(f'imagenet_r protocol {protocol!r} not in {IMAGENET_R_PROTOCOLS}')
  logits = jnp.asarray(logits)
  if protocol == 'mask200':
    keep = jnp.asarray(imagenet_r_class_mask(logits.shape[-1]))
    logits = jnp.where(keep, logits, -jnp.inf)
  return accuracy_sums(logits, labels, mask)


def subset_accuracy_sums(logits, labels, mask, subset, num_subsets: int):
  """Top-1 per subset: {'correct': [num_subsets], 'count': [num_subsets]}; `subset` [B] int
  says which subset (e.g. ImageNet-C corruption x severity) each row belongs to."""
  logits = jnp.asarray(logits)
  m = _mask(mask, logits.shape[0])
  hit = (jnp.argmax(logits, axis=-1) == jnp.asarray(labels)).astype(jnp.float32)
  onehot = (jnp.asarray(subset)[:, None] == jnp.arange(num_subsets)[None, :]).astype(jnp.float32)
  return {'correct': (hit * m) @ onehot, 'count': m @ onehot}


def finalize_accuracy(sums: Mapping) -> dict:
  """{'accuracy': correct / count, 'count': count} (accuracy NaN when nothing was counted)."""
  correct, count = float(np.asarray(sums['correct'])), float(np.asarray(sums['count']))
  return {'accuracy': correct / count if count else float('nan'), 'count': count}


def aggregate_imagenet_c(table: Mapping) -> dict:
  """Aggregates top-1 accuracies keyed by (corruption, severity) into the ImageNet-C result:
  {'accuracy': mean over all entries (the 15 x 5 = 75 of the benchmark),
   'per_corruption': {corruption: mean over its severities},
   'per_severity': {severity: mean over corruptions},
   'table': {corruption: {severity: accuracy}}}."""
  if not table:
    raise ValueError('empty ImageNet-C table')
  nested = {}
  for (corruption, severity), acc in table.items():
    nested.setdefault(corruption, {})[int(severity)] = float(acc)
  severities = sorted({int(s) for _, s in table})
  return {
      'accuracy': float(np.mean([float(a) for a in table.values()])),
      'per_corruption': {c: float(np.mean(list(v.values()))) for c, v in nested.items()},
      'per_severity': {s: float(np.mean([v[s] for v in nested.values() if s in v]))
                       for s in severities},
      'table': nested,
  }


def finalize_subsets(sums: Mapping, keys: Sequence) -> dict:
  """ImageNet-C finalize: per-subset accuracies from summed [num_subsets] vectors, keyed by
  `keys` ((corruption, severity) pairs), aggregated by `aggregate_imagenet_c`."""
  correct = np.asarray(sums['correct'], np.float64)
  count = np.asarray(sums['count'], np.float64)
  table = {k: (c / n if n else float('nan')) for k, c, n in zip(keys, correct, count)}
  out = aggregate_imagenet_c(table)
  out['count'] = float(count.sum())
  return out
