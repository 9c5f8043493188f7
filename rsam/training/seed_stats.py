"""Statistics over training seeds: means with standard errors, paired differences with their 95% interval
and t test, how many seeds an interval of a given half-width needs (issue #14's mini tables); the power
of a t test against a stated effect, a two-level analysis (pairs within data draws) and Holm's
correction for several comparisons (issue #26).

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
  test = t_test(mean, sem, n - 1) if sem > 0 else {'t': float('nan'), 'p': float('nan')}
  return {'n': n, 'mean': mean, 'sd': sd, 'sem': sem, 'half_width': half, 'low': mean - half,
          'high': mean + half, 'positive': sum(d > 0 for d in diffs), 't': test['t'], 'p': test['p']}


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


# --- tests, power and a second level of variance (issue #26) ------------------------------------------
#
# A one-sample t test of a mean of differences (paired seeds) with standard error se on dof degrees of
# freedom: t = d̄ / se, two-sided p = 2 · P(T_dof > |t|). Its power against a true mean δ at level α is
#
#   P(|T'| > t_{1−α/2, dof}),   T' ~ noncentral t(dof, δ / se),
#
# (exact for normal differences). Two levels (pairs within data draws): d_ij = μ + u_j + e_ij for draw
# j = 1..k and seed i = 1..n_j, u_j ~ N(0, τ²) (how much the effect moves with the draw), e_ij ~ N(0, σ²).
# μ is tested on the k draw means d̄_j, t = mean_j d̄_j / (s_b / √k) on k − 1 degrees of freedom (s_b the sd
# of the draw means); for a balanced design this is the mixed model's exact test of μ (REML/ANOVA), since
# Var(d̄_j) = τ² + σ²/n. Its power: se = √((τ² + σ²/n) / k), dof = k − 1. Variance components by ANOVA
# (method of moments): σ̂² = MSW (pooled within draws), τ̂² = max(0, (MSB − MSW) / n₀), with
# MSB = Σ n_j (d̄_j − d̄)² / (k − 1) and n₀ = (N − Σ n_j² / N) / (k − 1) (n₀ = n when balanced).


def t_test(mean: float, se: float, dof: float) -> Dict[str, float]:
  """The two-sided one-sample t test of 0: {'t', 'p', 'dof'} (t = mean / se)."""
  if se <= 0:
    raise ValueError(f'se={se} must be > 0')
  t = mean / se
  return {'t': t, 'p': float(2 * stats.t.sf(abs(t), dof)), 'dof': dof}


def critical_t(alpha: float, dof: float) -> float:
  """The two-sided critical value t_{1 − α/2, dof}."""
  return float(stats.t.ppf(1 - alpha / 2, dof))


def power_t(effect: float, se: float, dof: float, alpha: float = 0.05) -> float:
  """Power of the two-sided level-α t test of mean 0 when the true mean is ``effect`` and the estimate's
  standard error is ``se`` on ``dof`` degrees of freedom (noncentral t; both tails)."""
  crit = critical_t(alpha, dof)
  ncp = abs(effect) / se  # the test is symmetric: power depends on |effect| only
  near = float(stats.nct.sf(crit, dof, ncp))  # rejections on the effect's side
  far = float(stats.nct.cdf(-crit, dof, ncp))  # and on the other side
  if far != far:  # scipy gives nan far out in the tail; it is below P(T' < 0) = Φ(−ncp) there
    far = float(stats.norm.cdf(-ncp))
  return near + far


def power_paired(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
  """Power of the paired t test over n pairs whose differences have sd ``sd``: se sd/√n, n − 1 dof."""
  return power_t(effect, sd / math.sqrt(n), n - 1, alpha)


def power_two_level(effect: float, sd_within: float, sd_between: float, groups: int, per_group: int,
                    alpha: float = 0.05) -> float:
  """Power of the two-level test (``two_level``'s primary test) with k = ``groups`` draws of n =
  ``per_group`` pairs: se = √((τ² + σ²/n) / k) with τ = ``sd_between``, σ = ``sd_within``, k − 1 dof."""
  if groups < 2:
    raise ValueError(f'groups={groups}: the two-level test needs at least 2 draws')
  se = math.sqrt((sd_between ** 2 + sd_within ** 2 / per_group) / groups)
  return power_t(effect, se, groups - 1, alpha)


def sd_upper_limit(sd: float, dof: int, confidence: float = 0.95) -> float:
  """One-sided upper confidence limit of a normal sample's standard deviation: sd · √(dof / χ²_{1−c, dof})
  (a planning sd that the true sd exceeds with probability 1 − c)."""
  return sd * math.sqrt(dof / stats.chi2.ppf(1 - confidence, dof))


def two_level(groups: Mapping[object, Sequence[float]], confidence: float = 0.95) -> Dict[str, object]:
  """Paired differences grouped by data draw (``groups``: draw -> its per-seed differences).

  Returns the draw means and sizes, and
    primary      the test of μ on the k draw means (k − 1 dof): mean, se, t, p, the interval;
    conditional  the draws taken as fixed (a conclusion about these k draws only): the same mean with
                 se √(Σ_j MSW / n_j) / k on N − k dof (N pairs in all);
    components   σ² (within draws), τ² (between draws, ANOVA, clipped at 0), and MSB, MSW, n₀.
  """
  keys = list(groups)
  k = len(keys)
  if k < 2:
    raise ValueError(f'{k} draw(s): the two-level analysis needs at least 2')
  sizes = [len(groups[g]) for g in keys]
  if min(sizes) < 1:
    raise ValueError('a draw has no differences')
  means = [sum(groups[g]) / len(groups[g]) for g in keys]
  grand = sum(means) / k
  s_b = std(means)
  se = s_b / math.sqrt(k)
  q = 0.5 + confidence / 2
  half = stats.t.ppf(q, k - 1) * se
  primary = {'mean': grand, 'se': se, 'half_width': half, 'low': grand - half, 'high': grand + half,
             **(t_test(grand, se, k - 1) if se > 0 else {'t': math.inf, 'p': 0.0, 'dof': k - 1})}
  total = sum(sizes)
  within_dof = total - k
  ssw = sum(sum((v - m) ** 2 for v in groups[g]) for g, m in zip(keys, means))
  msw = ssw / within_dof if within_dof > 0 else float('nan')
  overall = sum(sum(groups[g]) for g in keys) / total
  msb = sum(n * (m - overall) ** 2 for n, m in zip(sizes, means)) / (k - 1)
  n0 = (total - sum(n * n for n in sizes) / total) / (k - 1)
  tau2 = max(0.0, (msb - msw) / n0) if msw == msw else float('nan')
  conditional = None
  if within_dof > 0:
    c_se = math.sqrt(sum(msw / n for n in sizes)) / k
    c_half = stats.t.ppf(q, within_dof) * c_se
    conditional = {'mean': grand, 'se': c_se, 'half_width': c_half, 'low': grand - c_half,
                   'high': grand + c_half, **t_test(grand, c_se, within_dof)}
  return {'k': k, 'n': total, 'sizes': dict(zip(keys, sizes)), 'means': dict(zip(keys, means)),
          'primary': primary, 'conditional': conditional,
          'components': {'sigma2_within': msw, 'tau2_between': tau2, 'msb': msb, 'msw': msw, 'n0': n0}}


def holm(pvalues: Sequence[float]) -> list:
  """Holm's step-down adjusted p-values, in the input order: p_(i) · (m − i + 1) over the ascending p,
  made monotone (running maximum) and capped at 1. Reject H_i at family-wise level α iff adjusted ≤ α."""
  m = len(pvalues)
  order = sorted(range(m), key=lambda i: pvalues[i])
  adjusted = [0.0] * m
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * pvalues[i]))
    adjusted[i] = running
  return adjusted


def one_sample_tests(cells: Mapping[object, Sequence[float]]) -> Dict[object, Dict[str, float]]:
  """The two-sided one-sample t test of 0 in each cell (its values are per-seed: n − 1 dof), and each
  cell's Holm-adjusted p over all the cells (the family of comparisons made): cell -> {'n', 'mean',
  'sem', 't', 'p', 'p_holm'}. A cell with zero spread gets t = ±inf, p = 0 (or nan when its mean is 0)."""
  out = {}
  for key, values in cells.items():
    mean, sem, n = mean_sem(list(values))
    if n < 2:
      raise ValueError(f'cell {key!r} has {n} value(s); a t test needs 2')
    if sem > 0:
      test = t_test(mean, sem, n - 1)
    else:
      test = {'t': math.copysign(math.inf, mean) if mean else float('nan'), 'p': 0.0 if mean else float('nan')}
    out[key] = {'n': n, 'mean': mean, 'sem': sem, 't': test['t'], 'p': test['p']}
  keys = [k for k in out if out[k]['p'] == out[k]['p']]
  for k, adjusted in zip(keys, holm([out[k]['p'] for k in keys])):
    out[k]['p_holm'] = adjusted
  return out


def correlation(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> Dict[str, float]:
  """Pearson's r of paired values and its interval by Fisher's z: tanh(atanh r ± z_{(1+c)/2} / √(n − 3))
  (needs n ≥ 4). Pairing two updaters on a seed shrinks the sd of their difference only when r > 0:
  sd(a − b)² = sd_a² + sd_b² − 2 r sd_a sd_b."""
  n = len(x)
  if n != len(y) or n < 4:
    raise ValueError(f'correlation needs two sequences of the same length >= 4 (got {n}, {len(y)})')
  mx, my = sum(x) / n, sum(y) / n
  sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
  sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
  r = sxy / math.sqrt(sxx * syy)
  z = stats.norm.ppf(0.5 + confidence / 2) / math.sqrt(n - 3)
  center = math.atanh(max(-1 + 1e-15, min(1 - 1e-15, r)))
  return {'n': n, 'r': r, 'low': math.tanh(center - z), 'high': math.tanh(center + z)}
