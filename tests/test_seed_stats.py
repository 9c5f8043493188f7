"""rsam/training/seed_stats.py on closed forms."""
import math

import pytest

from rsam.training import seed_stats as S


def test_mean_sem_std():
  assert S.mean_sem([1.0, 3.0]) == (2.0, pytest.approx(1.0), 2)  # std √2, s.e.m. √2/√2
  assert S.mean_sem([5.0]) == (5.0, 0.0, 1)
  assert math.isnan(S.std([1.0]))
  assert S.std([2.0, 4.0, 6.0]) == pytest.approx(2.0)


def test_paired_interval_uses_t():
  p = S.paired([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.3027
  assert (p['n'], p['mean'], p['sd'], p['positive']) == (3, 2.0, 1.0, 3)
  assert p['half_width'] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
  assert p['low'] == pytest.approx(2.0 - p['half_width']) and p['high'] == pytest.approx(2.0 + p['half_width'])
  assert S.t_half_width(1.0, 1) == math.inf


def test_seeds_needed_is_the_smallest_n():
  for sd, h in ((1.0, 0.5), (2.0, 0.5), (3.3, 0.5), (0.4, 0.5)):
    n = S.seeds_needed(sd, h)
    assert S.t_half_width(sd, n) <= h < S.t_half_width(sd, n - 1) or n == 2
  # large n: close to the normal approximation (1.96 sd / h)^2 = 61.5 for sd 2, h 0.5 -> 64 with t
  assert S.seeds_needed(2.0, 0.5) == 64
  assert S.seeds_needed(0.0, 0.5) == 2
  with pytest.raises(ValueError):
    S.seeds_needed(1.0, 0.0)


def test_pooled_sd_and_accuracy():
  assert S.pooled_sd([[1.0, 3.0], [10.0, 12.0, 14.0], [7.0]]) == pytest.approx(math.sqrt((2 + 8) / 3))
  assert S.pooled_sd([[1.0]]) is None
  assert S.pooled_accuracy({'a': 0.5, 'b': 1.0}, {'a': 1, 'b': 3, 'c': 100}) == pytest.approx(0.875)


def test_t_test_p_is_the_closed_form_at_two_degrees_of_freedom():
  # t with 2 dof has F(t) = 1/2 + t / (2 √(2 + t²)), so the two-sided p is 1 − t / √(2 + t²).
  p = S.paired([1.0, 2.0, 3.0])  # t = 2 / (1/√3) = 2√3
  t = 2 * math.sqrt(3)
  assert p['t'] == pytest.approx(t) and p['p'] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
  assert S.t_test(-2.0, 1.0, 2)['p'] == pytest.approx(1 - 2 / math.sqrt(6), rel=1e-9)
  assert S.critical_t(0.05, 2) == pytest.approx(4.302653, rel=1e-6)  # Fig. 1's 3 seeds, not 3 s.e.m.
  assert S.critical_t(0.05, 2) == pytest.approx(0.95 * math.sqrt(2 / (0.05 * 1.95)), rel=1e-9)  # closed form
  with pytest.raises(ValueError):
    S.t_test(1.0, 0.0, 3)


def test_power_is_alpha_at_no_effect_and_the_normal_power_at_many_dof():
  for alpha in (0.05, 0.025):
    assert S.power_t(0.0, 1.0, 7, alpha) == pytest.approx(alpha, rel=1e-9)
  # dof → ∞: power = Φ(δ/se − z) + Φ(−δ/se − z), z = z_{1−α/2}
  z = S.stats.norm.ppf(0.975)
  for ncp in (1.0, 2.8, 4.0):
    normal = S.stats.norm.cdf(ncp - z) + S.stats.norm.cdf(-ncp - z)
    assert S.power_t(ncp, 1.0, 1e7) == pytest.approx(normal, abs=1e-5)
  assert S.power_t(-2.0, 1.0, 10) == pytest.approx(S.power_t(2.0, 1.0, 10))  # two-sided: symmetric
  assert S.power_paired(0.0, 1.0, 3) == pytest.approx(0.05, rel=1e-9)
  assert 0.999 < S.power_t(40.0, 1.0, 15) <= 1.0  # far tail: no nan
  # the classic planning rule: n = ((z_{0.975} + z_{0.8}) sd / δ)² pairs give about 80% power
  n = math.ceil(((z + S.stats.norm.ppf(0.8)) * 2.0 / 0.5) ** 2)  # 126
  assert 0.79 < S.power_paired(0.5, 2.0, n) < 0.81


def test_power_two_level_is_the_t_test_on_the_draw_means():
  # k draws of n pairs: se = √((τ² + σ²/n) / k) on k − 1 dof
  assert S.power_two_level(0.8, 2.0, 0.5, 16, 8, 0.025) == pytest.approx(
      S.power_t(0.8, math.sqrt((0.25 + 4.0 / 8) / 16), 15, 0.025))
  # τ = 0 and one pair per draw: the paired test's se with k − 1 dof
  assert S.power_two_level(1.0, 2.0, 0.0, 10, 1) == pytest.approx(S.power_paired(1.0, 2.0, 10))
  # more variance between draws: less power; more draws at the same total: more
  assert S.power_two_level(0.8, 2.0, 0.5, 16, 8) < S.power_two_level(0.8, 2.0, 0.0, 16, 8)
  assert S.power_two_level(0.8, 2.0, 0.0, 4, 32) < S.power_two_level(0.8, 2.0, 0.0, 16, 8)
  with pytest.raises(ValueError):
    S.power_two_level(1.0, 1.0, 0.0, 1, 10)


def test_sd_upper_limit_is_the_chi_square_bound():
  # χ²_{0.05, 2} = −2 ln 0.95 (the χ² with 2 dof is exponential with mean 2)
  assert S.sd_upper_limit(1.5, 2) == pytest.approx(1.5 * math.sqrt(2 / (-2 * math.log(0.95))), rel=1e-9)
  assert 1.75 < S.sd_upper_limit(1.75, 79) < 1.75 * 1.2


def test_two_level_by_hand():
  # draw means 2, 6, 4: grand 4, s_b 2, se 2/√3, t 2√3 on 2 dof; MSW = 2 (each draw's variance),
  # MSB = n · var(means) = 2 · 4 = 8, τ² = (MSB − MSW) / n = 3
  r = S.two_level({'a': [1.0, 3.0], 'b': [5.0, 7.0], 'c': [3.0, 5.0]})
  p = r['primary']
  assert (r['k'], r['n'], r['means']) == (3, 6, {'a': 2.0, 'b': 6.0, 'c': 4.0})
  assert p['mean'] == 4.0 and p['se'] == pytest.approx(2 / math.sqrt(3)) and p['dof'] == 2
  t = 2 * math.sqrt(3)
  assert p['t'] == pytest.approx(t) and p['p'] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
  assert p['half_width'] == pytest.approx(4.302653 * 2 / math.sqrt(3), rel=1e-6)
  c = r['components']
  assert (c['msw'], c['msb'], c['n0']) == (pytest.approx(2.0), pytest.approx(8.0), pytest.approx(2.0))
  assert c['tau2_between'] == pytest.approx(3.0) and c['sigma2_within'] == pytest.approx(2.0)
  # draws fixed: se √(Σ MSW/n_j) / k = √(3 · 2/2) / 3 on N − k = 3 dof
  cond = r['conditional']
  assert cond['se'] == pytest.approx(math.sqrt(3.0) / 3) and cond['dof'] == 3
  # draws that agree more than their seeds: τ² clipped at 0
  flat = S.two_level({1: [0.0, 4.0], 2: [1.0, 3.0]})
  assert flat['components']['tau2_between'] == 0.0 and flat['primary']['se'] == 0.0
  # unbalanced: n₀ = (N − Σ n_j²/N) / (k − 1) = (5 − 13/5) / 1 = 2.4
  assert S.two_level({1: [0.0, 1.0, 2.0], 2: [5.0, 7.0]})['components']['n0'] == pytest.approx(2.4)
  with pytest.raises(ValueError):
    S.two_level({1: [1.0, 2.0]})


def test_holm_by_hand():
  # ascending 0.01, 0.03, 0.04: × 3, × 2, × 1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
  assert S.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
  assert S.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
  assert S.holm([0.02]) == [0.02]
  assert S.holm([]) == []


def test_one_sample_tests_per_cell_with_holm_over_the_cells():
  r = S.one_sample_tests({'a': [1.0, 2.0, 3.0], 'b': [-1.0, -2.0, -3.0], 'c': [0.0, 1.0, -1.0]})
  t = 2 * math.sqrt(3)
  p = 1 - t / math.sqrt(2 + t * t)  # 2 dof, closed form: 0.0742
  assert r['a']['t'] == pytest.approx(t) and r['b']['t'] == pytest.approx(-t)
  assert r['a']['p'] == pytest.approx(p, rel=1e-9) and r['c']['p'] == pytest.approx(1.0)
  # Holm over 3 cells: the two smallest p (equal) × 3 then × 2 -> both 3p; c: max(3p, 1 · 1) = 1
  assert r['a']['p_holm'] == pytest.approx(3 * p) and r['b']['p_holm'] == pytest.approx(3 * p)
  assert r['c']['p_holm'] == pytest.approx(1.0)
  flat = S.one_sample_tests({'x': [2.0, 2.0], 'y': [1.0, 3.0]})
  assert flat['x']['p'] == 0.0 and flat['x']['t'] == math.inf
  with pytest.raises(ValueError, match='a t test needs 2'):
    S.one_sample_tests({'z': [1.0]})


def test_correlation_and_its_fisher_interval():
  c = S.correlation([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0])
  # sxy = 8, sxx = syy = 10: r = 0.8; Fisher: tanh(atanh 0.8 ± 1.959964 / √2)
  assert c['r'] == pytest.approx(0.8)
  z = S.stats.norm.ppf(0.975) / math.sqrt(2)
  assert c['low'] == pytest.approx(math.tanh(math.atanh(0.8) - z)) and c['high'] == pytest.approx(math.tanh(math.atanh(0.8) + z))
  assert S.correlation([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0])['r'] == pytest.approx(-1.0)
  with pytest.raises(ValueError):
    S.correlation([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
