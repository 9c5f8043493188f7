"""Statistics over training seeds: means with standard errors, paired differences with their 95% interval,
and how many seeds an interval of a given half-width needs (issue #14's mini tables).

A seed fixes the init, the data order, the augmentation and the noise draws, so two updaters run on the
same seed form a pair; over n seeds with per-seed differences d_1..d_n (accuracy points)

  mean d̄ = Σ d_i / n,   s = sqrt(Σ (d_i − d̄)² / (n − 1)),   95% interval d̄ ± t_{0.975, n−1} · s / √n.

The seeds a target half-width h needs, from a standard deviation s measured beforehand (the tuning
seeds), is the smallest n with t_{0.975, n−1} · s / √n ≤ h (the normal approximation n ≈ (1.96 s / h)²,
corrected for t's heavier tails at small n).

Accuracy over several evaluation sets pooled into one (``pooled_accuracy``) weights each set by its
number of examples: Σ acc_k · N_k / Σ N_k.
"""
import math
from typing import Dict, Iterable, Mapping, Optional, Sequence

from scipy import stats


def mean_sem(values: Sequence[float]) -> tuple:
  """(mean, standard error of the mean with ddof 1, n); the s.e.m. of one value is 0."""
  n = len(values)
  mean = sum(values) / n
  return mean, (std(values) / math.sqrt(n) if n > 1 else 0.0), n


def std(values: Sequence[float]) -> float:
  """Sample standard deviation (ddof 1); nan below two values."""
  n = len(values)
  if n < 2:
    return float('nan')
  mean = sum(values) / n
  return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_half_width(sd: float, n: int, confidence: float = 0.95) -> float:
  """Half-width of the two-sided t interval of a mean of n values with standard deviation sd."""
  if n < 2:
    return float('inf')
  return stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)


def paired(diffs: Sequence[float], confidence: float = 0.95) -> Dict[str, float]:
  """Summary of per-seed paired differences: n, mean, sd, sem, the interval's half-width and ends, and
  how many of the differences are positive."""
  mean, sem, n = mean_sem(list(diffs))
  sd = std(list(diffs))
  half = t_half_width(sd, n, confidence)
  return {'n': n, 'mean': mean, 'sd': sd, 'sem': sem, 'half_width': half, 'low': mean - half,
          'high': mean + half, 'positive': sum(d > 0 for d in diffs)}


def seeds_needed(sd: float, half_width: float, confidence: float = 0.95, max_n: int = 100_000) -> int:
  """The smallest n >= 2 with t_half_width(sd, n) <= half_width."""
  if sd <= 0:
    return 2
  if half_width <= 0:
    raise ValueError(f'half_width={half_width} must be > 0')
  n = max(2, math.ceil((stats.norm.ppf(0.5 + confidence / 2) * sd / half_width) ** 2))
  while t_half_width(sd, n, confidence) > half_width:
    n += 1
    if n > max_n:
      raise ValueError(f'more than {max_n} seeds for sd={sd}, half_width={half_width}')
  return n


def pooled_sd(groups: Iterable[Sequence[float]]) -> Optional[float]:
  """The standard deviation pooled over groups (each group's squares about its own mean, degrees of
  freedom Σ (n_k − 1)); None when no group has two values."""
  squares, dof = 0.0, 0
  for values in groups:
    values = list(values)
    if len(values) < 2:
      continue
    mean = sum(values) / len(values)
    squares += sum((v - mean) ** 2 for v in values)
    dof += len(values) - 1
  return math.sqrt(squares / dof) if dof else None


def pooled_accuracy(accuracies: Mapping[str, float], counts: Mapping[str, int]) -> float:
  """Σ acc_k · N_k / Σ N_k over the sets of ``accuracies`` (each must be in ``counts``)."""
  total = sum(counts[k] for k in accuracies)
  return sum(accuracies[k] * counts[k] for k in accuracies) / total
