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
