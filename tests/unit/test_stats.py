"""Statistics of the report against closed forms, hand-worked examples and scipy/statsmodels values.

Each expected number is derived in the comments (or computed here from scipy's distributions),
never taken from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from rtmdet_exp.analysis import stats


def test_stat_of_mean_and_sample_std() -> None:
    # mean (1 + 2 + 6) / 3 = 3; deviations -2, -1, 3 -> sum of squares 14 / (3 - 1) = 7
    stat = stats.stat_of([1.0, 2.0, 6.0, float("nan")])
    assert stat == stats.Stat(n=3, mean=3.0, std=pytest.approx(math.sqrt(7.0)))
    assert stats.stat_of([0.4]) == stats.Stat(1, 0.4, 0.0)
    assert stats.stat_of([]) is None


def test_paired_t_matches_closed_form_and_scipy() -> None:
    a, b = [0.30, 0.34, 0.29], [0.28, 0.31, 0.28]
    # differences 0.02, 0.03, 0.01: mean 0.02, sample sd 0.01, t = 0.02 / (0.01 / sqrt 3) = 2 sqrt 3, df 2.
    # Student t with 2 dof: two-sided p = 1 - t / sqrt(2 + t^2).
    t = 2 * math.sqrt(3)
    result = stats.paired_t(a, b)
    assert result.method == "paired t" and result.n == (3,)
    assert result.delta == pytest.approx(0.02, abs=1e-15)
    assert result.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert result.p == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)
    half = sps.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # t quantile x standard error
    assert (result.low, result.high) == (pytest.approx(0.02 - half, rel=1e-9), pytest.approx(0.02 + half, rel=1e-9))
    assert result.wilcoxon_p is None  # 3 pairs: below WILCOXON_MIN_PAIRS


def test_paired_t_adds_wilcoxon_from_six_pairs() -> None:
    a = [0.31, 0.33, 0.30, 0.36, 0.32, 0.35]
    b = [0.30, 0.30, 0.31, 0.32, 0.27, 0.29]
    # differences 0.01, 0.03, -0.01, 0.04, 0.05, 0.06: |d| ranks 1.5, 3, 1.5, 4, 5, 6 (the two 0.01 tie);
    # the negative one has rank 1.5, so W = 1.5; scipy decides exact vs normal with the tie.
    result = stats.paired_t(a, b)
    assert result.wilcoxon_p == pytest.approx(sps.wilcoxon(a, b).pvalue, rel=1e-12)
    assert 2 / 2**5 > stats.ALPHA  # why WILCOXON_MIN_PAIRS is 6: five pairs cannot reach p < 0.05
    assert 2 / 2**6 < stats.ALPHA and stats.WILCOXON_MIN_PAIRS == 6


def test_paired_t_without_spread_is_exact() -> None:
    result = stats.paired_t([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])  # every difference 0.1 (to rounding)
    assert result.p == 0.0 and result.low == result.high == pytest.approx(0.1)
    assert stats.paired_t([0.5, 0.6], [0.5, 0.6]).p == 1.0
    with pytest.raises(ValueError, match="paired_t"):
        stats.paired_t([0.1, 0.2], [0.1])


def test_welch_matches_closed_form() -> None:
    # Equal std 0.028284 and n=2: t = 0.1 / sqrt(2 * 0.0008 / 2) = 3.5355, Welch df = 2.
    result = stats.welch_t([0.40, 0.44], [0.30, 0.34])
    t = 0.1 / math.sqrt(0.0008)
    assert result.delta == pytest.approx(0.1)
    assert result.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    half = sps.t.ppf(0.975, 2) * math.sqrt(0.0008)
    assert result.low == pytest.approx(0.1 - half, rel=1e-9) and result.high == pytest.approx(0.1 + half, rel=1e-9)


def test_holm_hand_worked() -> None:
    # m = 4 p-values, sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04;
    # the running maximum keeps 0.06 for the last -> in input order 0.03, 0.06, 0.06, 0.02.
    adjusted = stats.holm([0.01, 0.04, 0.03, None, 0.005])
    assert adjusted == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06), None, pytest.approx(0.02)]
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # 2 x 0.5 = 1.0 caps, and the maximum carries
    assert stats.holm([0.04]) == [0.04]


def test_verdict_uses_the_metric_direction() -> None:
    assert stats.verdict(0.02, 0.01) == "better"
    assert stats.verdict(-0.02, 0.01) == "worse"
    assert stats.verdict(0.02, 0.05) == "no significant difference"  # p must be below alpha
    assert stats.verdict(0.5, 0.001, higher_is_better=False) == "worse"  # e.g. latency went up


def test_failed_to_learn_rule() -> None:
    # the small real dataset of issue 15: median 0.250, half 0.125 > 0.063
    assert stats.failed_to_learn([0.063, 0.257, 0.250]) == [True, False, False]
    assert stats.failed_to_learn([0.063, 0.257]) == [False, False]  # 2 runs: no majority
    assert stats.failed_to_learn([0.1, 0.2, 0.3]) == [False, False, False]  # 0.1 is not below 0.5 x 0.2
    assert stats.failed_to_learn([0.0, 0.0, 0.0, 0.2]) == [False] * 4  # median 0: nothing is typical


def test_bootstrap_delta_percentiles_and_p() -> None:
    a, b = np.array([0.0, 2.0, 3.0, 4.0]), np.array([1.0, 1.0, 1.0, 1.0])
    # differences -1, 1, 2, 3: share <= 0 is (1 + 1) / 5, share >= 0 is (3 + 1) / 5 -> p = 2 x 0.4.
    # numpy's linear percentiles: 2.5% at position 0.075 -> -1 + 0.075 x 2; 97.5% at 2.925 -> 2 + 0.925.
    result = stats.bootstrap_delta(a, b, delta=1.5)
    assert result.p == pytest.approx(0.8) and result.delta == 1.5 and result.n == (4,)
    assert result.low == pytest.approx(-0.85) and result.high == pytest.approx(2.925)
    always = stats.bootstrap_delta(np.full(99, 2.0), np.ones(99), delta=1.0)
    assert always.p == pytest.approx(2 / 100)  # never <= 0: (0 + 1) / (99 + 1), doubled


def _power_reference(n: int, effect: float, paired: bool) -> float:
    """Two-sided t-test power from scipy's noncentral t, written out here."""
    df = n - 1 if paired else 2 * n - 2
    nc = effect * math.sqrt(n if paired else n / 2)
    critical = sps.t.ppf(0.975, df)
    return (1 - sps.nct.cdf(critical, df, nc)) + sps.nct.cdf(-critical, df, nc)


@pytest.mark.parametrize("n, effect", [(3, 1.5), (10, 0.8), (34, 0.5)])
def test_power_matches_noncentral_t(n: int, effect: float) -> None:
    assert stats.power_paired(n, effect) == pytest.approx(_power_reference(n, effect, True), rel=1e-9)
    assert stats.power_two_sample(n, effect) == pytest.approx(_power_reference(n, effect, False), rel=1e-9)


def test_seeds_needed_matches_statsmodels() -> None:
    # statsmodels.stats.power: TTestPower().solve_power(effect_size=0.5, alpha=0.05, power=0.8) = 33.37
    # -> 34 pairs; TTestIndPower().solve_power(0.5, alpha=0.05, power=0.8) = 63.77 -> 64 per group
    # (Cohen 1988, table 2.4.1: 64), and effect 0.2 -> 393.41 -> 394 per group.
    diffs = [-0.5, 0.5, 1.5]  # mean 0.5, sample sd 1 -> effect 0.5
    assert stats.seeds_needed_paired(diffs) == 34
    assert _power_reference(33, 0.5, True) < 0.8 <= _power_reference(34, 0.5, True)
    assert stats.seeds_needed_two_sample(0.5, 1.0, 1.0) == 64
    assert stats.seeds_needed_two_sample(-0.02, 0.1, 0.1) == 394  # the sign does not matter
    assert stats.seeds_needed_two_sample(0.1, 0.0, 0.0) is None  # no spread: nothing to scale
    assert stats.seeds_needed_paired([0.1, 0.1, 0.1]) is None
    assert stats.seeds_needed_two_sample(1e-4, 1.0, 1.0) is None  # more than MAX_SEEDS
