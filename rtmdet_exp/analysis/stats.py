"""Statistics of an ablation: seed summaries, tests, multiple-comparison correction, power.

Pure functions on numbers (no run folders). Every rule the report applies is a named constant
here, so the report's text can state it: the significance level, the failed-to-learn rule, the
minimum pairs for the Wilcoxon test, the target power.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05  # two-sided significance level of every test, after Holm's correction
POWER = 0.8  # target power of the seed-count estimate
CONFIDENCE = 0.95  # level of every interval (not adjusted for multiplicity)
FAILED_FRACTION = 0.5  # a run below this fraction of its setting's median "failed to learn"
MIN_RUNS_FOR_FAILED_RULE = 3  # with 2 runs there is no majority to say which one is typical
WILCOXON_MIN_PAIRS = 6  # below 6 pairs the exact signed-rank test cannot reach p < 0.05 (2 / 2**5)
MAX_SEEDS = 1000  # the seed-count search stops here

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no significant difference"


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1; 0 with a single value) over ``n`` values."""

    n: int
    mean: float
    std: float


def stat_of(values: Sequence[float]) -> Stat | None:
    """Mean and sample std of the finite values, or None when there are none."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return None
    n = len(finite)
    mean = math.fsum(finite) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
    return Stat(n=n, mean=mean, std=std)


def failed_to_learn(values: Sequence[float], fraction: float = FAILED_FRACTION) -> list[bool]:
    """Which values fall below ``fraction`` x the median of all of them (one setting's seeds).

    Needs ``MIN_RUNS_FOR_FAILED_RULE`` finite values and a positive median; otherwise nothing
    is flagged. Per-seed mAP50 0.063 / 0.257 / 0.250 flags the first (0.063 < 0.5 x 0.250).
    """
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < MIN_RUNS_FOR_FAILED_RULE:
        return [False] * len(values)
    middle = statistics.median(finite)
    if middle <= 0:
        return [False] * len(values)
    return [math.isfinite(v) and v < fraction * middle for v in values]


@dataclass(frozen=True)
class TestResult:
    """One comparison of a setting (a) with the baseline (b): ``delta`` = a - b.

    ``low``/``high``: the ``CONFIDENCE`` interval of the delta; ``p``: two-sided, unadjusted.
    ``n``: pairs (paired t), runs per side (Welch) or resamples (bootstrap).
    """

    method: str
    delta: float
    low: float
    high: float
    p: float
    n: tuple[int, ...]
    wilcoxon_p: float | None = None


def _nearly_constant(values: np.ndarray) -> bool:
    """True when the values differ only by rounding (a t statistic would be 0/0 or x/0)."""
    scale = max(1.0, float(np.max(np.abs(values))))
    return float(np.ptp(values)) <= 1e-12 * scale


def _degenerate(method: str, delta: float, n: tuple[int, ...]) -> TestResult:
    """A test without spread: the difference is exact, so p is 0 (a difference) or 1 (none)."""
    return TestResult(method, delta, delta, delta, 0.0 if delta != 0 else 1.0, n)


def paired_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Paired t-test of a - b (one pair per shared seed), with the Wilcoxon signed-rank p-value
    where there are at least ``WILCOXON_MIN_PAIRS`` pairs."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"paired_t needs two equally long samples of 2+ values, got {x.size} and {y.size}")
    diff = x - y
    if _nearly_constant(diff):
        return _degenerate("paired t", float(diff.mean()), (x.size,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sps.ttest_rel(x, y)
        interval = result.confidence_interval(CONFIDENCE)
    wilcoxon = None
    if x.size >= WILCOXON_MIN_PAIRS and np.count_nonzero(diff) > 0:
        wilcoxon = float(sps.wilcoxon(x, y).pvalue)
    return TestResult("paired t", float(diff.mean()), float(interval.low), float(interval.high),
                      float(result.pvalue), (x.size,), wilcoxon)


def welch_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Welch's unequal-variance t-test of mean(a) - mean(b)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.size < 2 or y.size < 2:
        raise ValueError(f"welch_t needs 2+ values on each side, got {x.size} and {y.size}")
    delta = float(x.mean() - y.mean())
    if _nearly_constant(x) and _nearly_constant(y):
        return _degenerate("Welch t", delta, (x.size, y.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sps.ttest_ind(x, y, equal_var=False)
        interval = result.confidence_interval(CONFIDENCE)
    return TestResult("Welch t", delta, float(interval.low), float(interval.high), float(result.pvalue),
                      (x.size, y.size))


def bootstrap_delta(a: np.ndarray, b: np.ndarray, delta: float) -> TestResult:
    """Paired bootstrap of a - b: ``a``/``b`` [B] are the two runs on the same resampled sets.

    Interval: percentiles of the resampled differences. p: twice the smaller tail share of
    differences at or beyond 0, each counted as (k + 1) / (B + 1) so that p is never 0.
    """
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        raise ValueError("bootstrap_delta: no resample has a value on both sides")
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(diff, [tail, 100 - tail])
    below = (np.count_nonzero(diff <= 0) + 1) / (diff.size + 1)
    above = (np.count_nonzero(diff >= 0) + 1) / (diff.size + 1)
    return TestResult("image bootstrap", float(delta), float(low), float(high), min(1.0, 2 * min(below, above)),
                      (int(diff.size),))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None entries are not tests and stay None).

    The k-th smallest of m p-values becomes max over j <= k of min(1, (m - j + 1) p_(j)).
    """
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None and math.isfinite(p))
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p))
        adjusted[index] = running
    return adjusted


def verdict(delta: float, p_adjusted: float, higher_is_better: bool = True, alpha: float = ALPHA) -> str:
    """"better" / "worse" when the adjusted p is below ``alpha``, else "no significant difference"."""
    if not p_adjusted < alpha or delta == 0:
        return NO_DIFFERENCE
    return BETTER if (delta > 0) == higher_is_better else WORSE


def _power(effect: float, n: np.ndarray, paired: bool, alpha: float) -> np.ndarray:
    """Power of the two-sided t-test at standardised ``effect`` for each sample size in ``n``.

    Paired (one-sample on differences): df n - 1, noncentrality effect sqrt(n). Two-sample with
    n per group: df 2n - 2, noncentrality effect sqrt(n / 2). Exact, from the noncentral t.
    """
    n = np.asarray(n, np.float64)
    df = n - 1 if paired else 2 * n - 2
    nc = effect * np.sqrt(n if paired else n / 2)
    critical = sps.t.ppf(1 - alpha / 2, df)
    return sps.nct.sf(critical, df, nc) + sps.nct.cdf(-critical, df, nc)


def power_paired(n: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of a paired t-test with ``n`` pairs and effect = mean difference / sd of differences."""
    return float(_power(effect, np.array([n]), True, alpha)[0])


def power_two_sample(n: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of a two-sample t-test with ``n`` runs per group and effect = delta / pooled sd."""
    return float(_power(effect, np.array([n]), False, alpha)[0])


def _smallest_n(effect: float, paired: bool, power: float, alpha: float) -> int | None:
    """Smallest n in [2, MAX_SEEDS] reaching ``power``; None when the effect is 0 or n > MAX_SEEDS."""
    if not math.isfinite(effect) or effect == 0:
        return None
    sizes = np.arange(2, MAX_SEEDS + 1)
    reached = np.flatnonzero(_power(abs(effect), sizes, paired, alpha) >= power)
    return int(sizes[reached[0]]) if reached.size else None


def seeds_needed_paired(diffs: Sequence[float], power: float = POWER, alpha: float = ALPHA) -> int | None:
    """Shared seeds a paired t-test needs to detect the observed mean difference with ``power``.

    The effect is the observed mean / sample sd (ddof=1) of the per-seed differences. None when
    the differences have no spread or no mean, or more than ``MAX_SEEDS`` would be needed.
    """
    d = np.asarray(diffs, np.float64)
    if d.size < 2 or _nearly_constant(d):
        return None
    return _smallest_n(float(d.mean() / d.std(ddof=1)), True, power, alpha)


def seeds_needed_two_sample(
    delta: float, std_a: float, std_b: float, power: float = POWER, alpha: float = ALPHA
) -> int | None:
    """Runs per setting a two-sample t-test needs to detect ``delta`` with ``power``.

    The spread is the root mean of the two sample variances (equal group sizes assumed).
    """
    pooled = math.sqrt((std_a**2 + std_b**2) / 2)
    if pooled == 0:
        return None
    return _smallest_n(delta / pooled, False, power, alpha)
