"""The ablation table: runs grouped into settings, each compared with the baseline setting.

* **Baseline**: the ``baseline`` argument if given (``key=value,key=value`` in any order), else the
  ``default`` setting if some run has no overrides, else the setting of the first job.
* **Per seed**: every finished run's value is listed; a run below ``FAILED_FRACTION`` of its
  setting's median (3+ runs) is named "failed to learn". Means and tests use all finished runs
  (dropping a run after seeing its result would bias them); the mean of the others is shown beside.
* **Test** of the main metric against the baseline, chosen in this order: paired t-test over the
  seeds both settings ran (2+ shared seeds); Welch's t-test (2+ runs each, seeds not shared);
  paired image bootstrap of one run per side (same seed, or one run each) when both kept their
  val detections; otherwise no test. p-values are Holm-adjusted over all comparisons of the table.
* **Seeds needed**: where the verdict is "no significant difference", the seeds per setting that
  would detect a true difference of the observed size (power 0.8, alpha 0.05, noncentral t).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rtmdet_exp.analysis import stats
from rtmdet_exp.analysis.bootstrap import Bootstraps
from rtmdet_exp.analysis.runs import DEFAULT_SETTING, Run, setting_of, setting_overrides, split_overrides

DEFAULT_METRIC = "val/mAP"
DETAIL_METRICS = ("val/mAP50", "val/mAP75", "val/mAP_s", "val/mAP_m", "val/mAP_l")
COST_METRICS = ("perf/params", "perf/flops", "perf/macs", "perf/latency_ms", "perf/train_time_s")


def higher_is_better(metric: str) -> bool:
    """AP-like metrics are better high; costs (``perf/...``), losses and times are better low."""
    name = metric.lower()
    return not (name.startswith("perf/") or "loss" in name or "time" in name or "latency" in name)


@dataclass
class Comparison:
    """A setting's main metric against the baseline's (``delta`` = setting - baseline)."""

    method: str  # "paired t", "Welch t", "image bootstrap" or "none"
    test: stats.TestResult | None = None
    p_holm: float | None = None
    verdict: str = "not tested"
    seeds_needed: int | None = None
    advice: str = ""  # for "no significant difference": how many seeds would resolve it
    note: str = ""  # what was compared, and why not when there is no test

    @property
    def delta(self) -> float | None:
        return None if self.test is None else self.test.delta


@dataclass
class SeedValue:
    """One finished run's main metric, as listed beside its setting's mean."""

    run: Run
    value: float
    failed_to_learn: bool


@dataclass
class SettingSummary:
    """One row of the ablation table: a setting aggregated over its seeds."""

    setting: str
    overrides: list[str]
    n: int
    n_failed: int  # runs that did not finish (crashed, killed, failed)
    seeds: list[int | None]
    stats: dict[str, stats.Stat]
    per_seed: list[SeedValue] = field(default_factory=list)
    learned: stats.Stat | None = None  # the main metric without failed-to-learn runs (when any)
    diverged: list[Run] = field(default_factory=list)  # finished with a NaN/inf main metric: no value
    is_baseline: bool = False
    delta: float | None = None  # mean - the baseline's mean, main metric (the test's own delta: comparison)
    comparison: Comparison | None = None
    note: str = ""

    def mean(self, key: str) -> float | None:
        """Mean of metric ``key`` over seeds, None if no run has it."""
        stat = self.stats.get(key)
        return None if stat is None else stat.mean


def _resolve_baseline(settings: Sequence[str], baseline: str | None) -> str | None:
    if not settings:
        return None
    if baseline is None:
        return DEFAULT_SETTING if DEFAULT_SETTING in settings else settings[0]
    wanted = baseline.strip()
    if wanted in settings:
        return wanted
    normalised = setting_of(split_overrides(wanted))
    if normalised in settings:
        return normalised
    raise ValueError(f"baseline: {baseline!r} is not a setting of these runs; valid values: {list(settings)}")


def _row(setting: str, group: list[Run], metric: str) -> SettingSummary:
    """Statistics of one setting's runs (no comparison yet)."""
    done = [r for r in group if r.finished]
    keys = (metric, *(k for k in (*DETAIL_METRICS, *COST_METRICS) if k != metric))
    table = {}
    for key in keys:
        stat = stats.stat_of([r.metrics[key] for r in done if key in r.metrics])
        if stat is not None:
            table[key] = stat
    scored = [r for r in done if math.isfinite(r.metrics.get(metric, math.nan))]
    flags = stats.failed_to_learn([r.metrics[metric] for r in scored])
    per_seed = [SeedValue(r, r.metrics[metric], flag) for r, flag in zip(scored, flags)]
    learned = stats.stat_of([s.value for s in per_seed if not s.failed_to_learn]) if any(flags) else None
    return SettingSummary(
        setting=setting,
        overrides=setting_overrides(group[0].overrides),
        n=len(done),
        n_failed=len(group) - len(done),
        seeds=[r.seed for r in done],
        stats=table,
        per_seed=per_seed,
        learned=learned,
        diverged=[r for r in done if metric in r.metrics and not math.isfinite(r.metrics[metric])],
    )


def summarize(
    runs: Sequence[Run],
    baseline: str | None = None,
    metric: str = DEFAULT_METRIC,
    bootstraps: Bootstraps | None = None,
) -> list[SettingSummary]:
    """One row per setting (in order of first appearance), compared with the baseline row.

    Holm's correction runs over the comparisons of all rows. Raises ValueError when
    ``baseline`` names no setting of ``runs``.
    """
    order: list[str] = []
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.setting not in groups:
            order.append(run.setting)
            groups[run.setting] = []
        groups[run.setting].append(run)
    base_setting = _resolve_baseline(order, baseline)
    rows = [_row(setting, groups[setting], metric) for setting in order]
    base = next((r for r in rows if r.setting == base_setting), None)
    for row in rows:
        row.is_baseline = row is base
        if metric not in row.stats:
            row.note = "all runs failed" if row.n_failed else f"no {metric} in results"
        elif row.is_baseline:
            row.note = "baseline"
        elif base is None or metric not in base.stats:
            row.note = "no baseline value"
        else:
            row.delta = row.stats[metric].mean - base.stats[metric].mean
            row.comparison = compare(row, base, bootstraps)
    _adjust(rows, higher_is_better(metric))
    return rows


def _by_seed(row: SettingSummary) -> dict[int, SeedValue] | None:
    """The row's runs keyed by seed; None when a seed is unknown or repeated (pairing ambiguous)."""
    seeds = [s.run.seed for s in row.per_seed]
    if any(seed is None for seed in seeds) or len(set(seeds)) != len(seeds):
        return None
    return {s.run.seed: s for s in row.per_seed}  # type: ignore[misc]


def compare(row: SettingSummary, base: SettingSummary, bootstraps: Bootstraps | None = None) -> Comparison:
    """Test ``row``'s main metric against ``base``'s (the first applicable test of the module doc)."""
    own, ref = _by_seed(row), _by_seed(base)
    shared = sorted(set(own) & set(ref)) if own is not None and ref is not None else []
    if len(shared) >= 2:
        a = [own[s].value for s in shared]  # type: ignore[index]
        b = [ref[s].value for s in shared]  # type: ignore[index]
        left_out = len(row.per_seed) + len(base.per_seed) - 2 * len(shared)
        note = f"seeds {', '.join(map(str, shared))}"
        if left_out:
            note += f"; {left_out} unpaired run(s) not in the test"
        return Comparison("paired t", stats.paired_t(a, b), note=note)
    if len(row.per_seed) >= 2 and len(base.per_seed) >= 2:
        a, b = [s.value for s in row.per_seed], [s.value for s in base.per_seed]
        return Comparison("Welch t", stats.welch_t(a, b), note="seeds not shared")
    return _bootstrap_comparison(row, base, bootstraps, shared_seed=shared[0] if shared else None)


def _bootstrap_comparison(
    row: SettingSummary, base: SettingSummary, bootstraps: Bootstraps | None, shared_seed: int | None
) -> Comparison:
    """One run per side compared on the same resampled val images, or no test (with the reason)."""
    if shared_seed is not None:
        pair = [next(s for s in r.per_seed if s.run.seed == shared_seed) for r in (row, base)]
    elif len(row.per_seed) == 1 and len(base.per_seed) == 1:
        pair = [row.per_seed[0], base.per_seed[0]]
    else:
        return Comparison("none", note=f"{len(row.per_seed)} vs {len(base.per_seed)} run(s) without a shared "
                                       "seed: no test; run the same seeds in both settings")
    if bootstraps is None:
        return Comparison("none", note="one run per side and no image bootstrap: no test")
    own, ref = (bootstraps.by_run.get(s.run.folder) for s in pair)
    if own is None or ref is None:
        missing = ", ".join(s.run.name for s in pair if s.run.folder not in bootstraps.by_run)
        return Comparison("none", note=f"one run per side; no image bootstrap for {missing}: no test")
    if own.image_ids != ref.image_ids:
        return Comparison("none", note="one run per side, scored on different val images: no test")
    note = f"{pair[0].run.name} vs {pair[1].run.name}; val-image sampling only, not seed noise"
    if not (own.reproduces_logged and ref.reproduces_logged):
        note += "; recomputed from the detections, which differs from results.json"
    test = stats.bootstrap_delta(own.values, ref.values, own.point - ref.point)
    return Comparison("image bootstrap", test, note=note)


def _adjust(rows: Sequence[SettingSummary], better_high: bool) -> None:
    """Holm-adjust the rows' p-values together, then fill verdicts and seed-count advice."""
    compared = [r for r in rows if r.comparison is not None and r.comparison.test is not None]
    adjusted = stats.holm([r.comparison.test.p for r in compared])  # type: ignore[union-attr]
    base = next((r for r in rows if r.is_baseline), None)
    for row, p_holm in zip(compared, adjusted):
        comparison = row.comparison
        assert comparison is not None and comparison.test is not None and p_holm is not None and base is not None
        comparison.p_holm = p_holm
        comparison.verdict = stats.verdict(comparison.test.delta, p_holm, better_high)
        if comparison.verdict == stats.NO_DIFFERENCE:
            comparison.seeds_needed, comparison.advice = _seeds_needed(row, base, comparison)


def _seeds_needed(row: SettingSummary, base: SettingSummary, comparison: Comparison) -> tuple[int | None, str]:
    """Seeds per setting that would resolve the observed delta, and the sentence that says so."""
    kind, assumption = "seeds per setting (two-sample t)", ""
    if comparison.method == "paired t":
        own, ref = _by_seed(row), _by_seed(base)
        assert own is not None and ref is not None
        diffs = np.asarray([own[s].value - ref[s].value for s in sorted(set(own) & set(ref))])
        needed, spread, kind = stats.seeds_needed_paired(diffs), float(diffs.std(ddof=1)), "shared seeds (paired t)"
    elif comparison.method == "Welch t":
        a, b = (stats.stat_of([s.value for s in r.per_seed]) for r in (row, base))
        assert a is not None and b is not None
        needed, spread = stats.seeds_needed_two_sample(a.mean - b.mean, a.std, b.std), max(a.std, b.std)
    else:  # one run on at least one side: borrow the other side's seed spread, if it has one
        spreads = [stats.stat_of([s.value for s in r.per_seed]) for r in (row, base) if len(r.per_seed) >= 2]
        if not spreads or spreads[0] is None or row.delta is None:
            return None, "one run per setting: the seed-to-seed spread is unknown; run 3+ seeds per setting"
        spread, assumption = spreads[0].std, ", assuming both settings spread like the one with several seeds"
        needed = stats.seeds_needed_two_sample(row.delta, spread, spread)
    if needed is not None:
        return needed, (f"about {needed} {kind} would detect a true difference of this size "
                        f"(power {stats.POWER:g}, alpha {stats.ALPHA:g}{assumption})")
    if comparison.test is None or comparison.test.delta == 0 or spread == 0:
        return None, "no difference or no spread to scale a seed count from"
    return None, (f"more than {stats.MAX_SEEDS} {kind}: the difference is negligible against the spread; "
                  "more seeds will not resolve it")
