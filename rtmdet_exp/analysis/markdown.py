"""Markdown of the report: ablation table, comparisons in words, seeds, runs, methods, studies.

AP values are shown x100 (AP points, as in the paper); the summary objects keep raw values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rtmdet_exp.analysis import stats
from rtmdet_exp.analysis.bootstrap import Bootstraps
from rtmdet_exp.analysis.plots import scale_of
from rtmdet_exp.analysis.runs import Run
from rtmdet_exp.analysis.studies import StudyResult
from rtmdet_exp.analysis.summary import DEFAULT_METRIC, DETAIL_METRICS, SettingSummary
from rtmdet_exp.experiment import rundir

# Words for the strength of evidence of a Holm-adjusted p-value: (upper bound, words).
EVIDENCE = ((0.001, "very strong evidence"), (0.01, "strong evidence"), (stats.ALPHA, "evidence"),
            (0.1, "weak evidence, not significant"), (1.01, "no evidence of a difference"))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (``|`` in cells escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fmt_stat(stat: stats.Stat | None, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` (scaled), ``mean (n=1)`` for one seed, ``—`` when missing."""
    if stat is None:
        return "—"
    if stat.n == 1:
        return f"{scale * stat.mean:.{digits}f} (n=1)"
    return f"{scale * stat.mean:.{digits}f} ± {scale * stat.std:.{digits}f}"


def _fmt_mean(stat: stats.Stat | None, scale: float, digits: int = 2) -> str:
    return "—" if stat is None else f"{scale * stat.mean:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    return "—" if p is None else f"{p:.3g}"


def _unit(metric: str) -> str:
    return " ×100" if scale_of(metric) == 100 else ""


def evidence(p_adjusted: float) -> str:
    """How sure a comparison is, in words, from its Holm-adjusted p-value (:data:`EVIDENCE`)."""
    return next(words for bound, words in EVIDENCE if p_adjusted < bound)


def summary_markdown(rows: Sequence[SettingSummary], metric: str = DEFAULT_METRIC) -> str:
    """The paper-style ablation table (main metric, delta, verdict) and a detail table."""
    if not rows:
        return "_no runs_\n"
    scale, unit = scale_of(metric), _unit(metric)
    best = max((r.stats[metric].mean for r in rows if metric in r.stats), default=None)
    latency = any("perf/latency_ms" in r.stats for r in rows)
    header = ["setting", "n", "params (M)", "FLOPs (G)", *(["latency (ms)"] if latency else [])]
    header += [f"{metric}{unit} (mean ± std)", "Δ vs baseline", "p (Holm)", "verdict"]
    lines = []
    for row in rows:
        value = _fmt_stat(row.stats.get(metric), scale)
        if best is not None and metric in row.stats and row.stats[metric].mean == best:
            value = f"**{value}**"
        cells = [f"{row.setting} (baseline)" if row.is_baseline else row.setting,
                 f"{row.n}" + (f" (+{row.n_failed} failed)" if row.n_failed else "")]
        cells += [_fmt_mean(row.stats.get("perf/params"), 1e-6), _fmt_mean(row.stats.get("perf/flops"), 1e-9)]
        if latency:
            cells.append(_fmt_mean(row.stats.get("perf/latency_ms"), 1.0))
        comparison = row.comparison
        delta = "—" if row.delta is None else f"{scale * row.delta:+.2f}"
        verdict = comparison.verdict if comparison is not None else row.note
        cells += [value, delta, _fmt_p(None if comparison is None else comparison.p_holm), verdict]
        lines.append(cells)
    detail_header = ["setting", *(k.split("/")[-1] + " ×100" for k in DETAIL_METRICS), "MACs (G)", "train time (min)"]
    detail = [
        [row.setting, *(_fmt_stat(row.stats.get(k)) for k in DETAIL_METRICS)]
        + [_fmt_mean(row.stats.get("perf/macs"), 1e-9), _fmt_stat(row.stats.get("perf/train_time_s"), 1 / 60, 1)]
        for row in rows
    ]
    return table(header, lines) + "\n" + table(detail_header, detail)


def cost_note(runs: Sequence[Run]) -> str:
    """Where the runs' cost numbers come from: latency measured on which GPU(s), or MACs only.

    A run on a GPU measures its own latency (``perf/latency_ms``) and uses it as ``perf/cost``; a
    run without one has no latency and its ``perf/cost`` is GMACs (``perf/cost_kind``).
    """
    finished = [r for r in runs if r.finished]
    if not finished:
        return ""
    measured = [r for r in finished if "perf/latency_ms" in r.metrics]
    if not measured:
        return ("\n> **Cost: MACs only.** No run had a GPU, so none measured its latency; perf/cost is GMACs "
                "at the run's image size (perf/cost_kind = gmacs). Latency needs a run on a GPU.\n")
    devices = sorted({str(r.labels.get("perf/latency_device", "unnamed GPU")) for r in measured})
    text = (f"\n> **Cost: latency** measured by {len(measured)} of {len(finished)} finished runs on their own GPU "
            f"({', '.join(devices)}; fused network, fp16, batch 1, CUDA graph, no NMS).")
    if len(devices) > 1:
        text += " The runs measured on different GPUs: their latencies are not comparable."
    shared = [r.name for r in measured if r.labels.get("perf/latency_shared") is True]
    if shared:
        text += f" {len(shared)} run(s) shared their GPU with other runs while measuring: re-measure before quoting."
    if len(measured) < len(finished):
        text += (f" **{len(finished) - len(measured)} run(s) had no GPU**: no latency, and their perf/cost is "
                 "GMACs, not ms; do not compare perf/cost across the two kinds.")
    return text + "\n"


def _test_sample(row: SettingSummary) -> str:
    """What the comparison's test ran on, in words."""
    comparison = row.comparison
    assert comparison is not None and comparison.test is not None
    n = comparison.test.n
    if comparison.method == "paired t":
        return f"paired t-test over {n[0]} shared seeds ({comparison.note})"
    if comparison.method == "Welch t":
        return f"Welch t-test, {n[0]} vs {n[1]} runs ({comparison.note})"
    return f"paired image bootstrap, {n[0]} resamples ({comparison.note})"


def comparison_sentence(row: SettingSummary, metric: str = DEFAULT_METRIC, n_tests: int = 1) -> str:
    """One comparison in words: verdict, delta, interval, test, p before and after Holm, advice."""
    comparison = row.comparison
    if comparison is None:
        return ""
    if comparison.test is None or comparison.p_holm is None:
        return f"- **{row.setting}**: not tested: {comparison.note}.\n"
    test, scale = comparison.test, scale_of(metric)
    unit = "AP points" if scale == 100 else metric.split("/")[-1]
    head = {stats.BETTER: "better than the baseline", stats.WORSE: "worse than the baseline"}
    verdict = head.get(comparison.verdict, "no significant difference from the baseline")
    text = (f"- **{row.setting}**: {verdict}, {evidence(comparison.p_holm)}: {scale * test.delta:+.2f} {unit} "
            f"(95% interval {scale * test.low:+.2f} to {scale * test.high:+.2f}; {_test_sample(row)}; "
            f"p = {test.p:.3g}, {comparison.p_holm:.3g} after Holm over {n_tests} comparison(s))")
    if test.wilcoxon_p is not None:
        text += f"; Wilcoxon signed-rank p = {test.wilcoxon_p:.3g} (unadjusted)"
    if comparison.advice:
        text += f". {comparison.advice[0].upper()}{comparison.advice[1:]}"
    return text + ".\n"


def comparisons_markdown(rows: Sequence[SettingSummary], metric: str = DEFAULT_METRIC) -> str:
    """Every comparison with the baseline in words, then as a table."""
    compared = [r for r in rows if r.comparison is not None]
    if not compared:
        return "_no comparison: a single setting, or no baseline value_\n"
    n_tests = sum(r.comparison.p_holm is not None for r in compared)  # type: ignore[union-attr]
    words = "".join(comparison_sentence(r, metric, n_tests) for r in compared)
    scale = scale_of(metric)
    header = ["setting", "test", "n", "Δ" + _unit(metric), "95% interval", "p", "p (Holm)",
              "Wilcoxon p", "verdict", "seeds needed"]
    lines = []
    for row in compared:
        c = row.comparison
        assert c is not None
        t = c.test
        interval = "—" if t is None else f"{scale * t.low:+.2f} to {scale * t.high:+.2f}"
        wilcoxon = "—" if t is None or t.wilcoxon_p is None else f"{t.wilcoxon_p:.3g}"
        if c.method == "paired t" and t is not None and t.n[0] < stats.WILCOXON_MIN_PAIRS:
            wilcoxon = f"— (<{stats.WILCOXON_MIN_PAIRS} pairs)"
        needed = "—" if c.verdict != stats.NO_DIFFERENCE else (str(c.seeds_needed) if c.seeds_needed else "see text")
        lines.append([row.setting, c.method, "—" if t is None else " vs ".join(map(str, t.n)),
                      "—" if t is None else f"{scale * t.delta:+.2f}", interval, _fmt_p(None if t is None else t.p),
                      _fmt_p(c.p_holm), wilcoxon, c.verdict, needed])
    return words + "\n" + table(header, lines)


def seeds_markdown(rows: Sequence[SettingSummary], metric: str = DEFAULT_METRIC) -> str:
    """Per-seed values beside mean ± std, naming the runs that failed to learn."""
    scale = scale_of(metric)
    header = ["setting", f"per seed{_unit(metric)} (seed: value)", "mean ± std (all runs)",
              "mean ± std (without failed-to-learn)", "failed to learn"]
    lines = []
    for row in rows:
        values = ", ".join(f"{s.run.seed}: {scale * s.value:.2f}" + (" ✗" if s.failed_to_learn else "")
                           for s in row.per_seed)
        failed = [s.run.name for s in row.per_seed if s.failed_to_learn]
        without = _fmt_stat(row.learned, scale) if failed else "(same: none flagged)"
        failed += [f"{r.name} ({metric} {r.metrics[metric]})" for r in row.diverged]
        lines.append([row.setting, values or "—", _fmt_stat(row.stats.get(metric), scale), without,
                      ", ".join(failed) or "—"])
    return table(header, lines)


def _interval_cell(run: Run, bootstraps: Bootstraps | None, scale: float) -> str:
    if bootstraps is None or run.folder not in bootstraps.by_run:
        return "—"
    boot = bootstraps.by_run[run.folder]
    text = f"{scale * boot.low:.2f} to {scale * boot.high:.2f} (shift {scale * boot.shift:+.2f})"
    if not boot.reproduces_logged:
        text += f" (recomputed {scale * boot.point:.2f} ≠ logged)"
    return text


def runs_markdown(runs: Sequence[Run], metric: str = DEFAULT_METRIC, bootstraps: Bootstraps | None = None) -> str:
    """One line per run: folder, setting, seed, status, its numbers and its image-bootstrap interval."""
    if not runs:
        return "_no runs_\n"
    scale = scale_of(metric)
    header = ["run", "setting", "seed", "status", f"{metric}{_unit(metric)}", "95% interval (val images)",
              "mAP50 ×100", "best epoch", "epochs"]

    def value(run: Run, key: str, factor: float, digits: int) -> str:
        return f"{factor * run.metrics[key]:.{digits}f}" if key in run.metrics else "—"

    rows = [
        [run.name, run.setting, "—" if run.seed is None else run.seed, "finished" if run.finished else "FAILED",
         value(run, metric, scale, 2), _interval_cell(run, bootstraps, scale), value(run, "val/mAP50", 100.0, 2),
         value(run, "val/best_epoch", 1.0, 0), value(run, "epochs", 1.0, 0)]
        for run in runs
    ]
    text = table(header, rows)
    if bootstraps is not None and bootstraps.skipped:
        by_reason: dict[str, list[str]] = {}
        for folder, reason in bootstraps.skipped.items():
            by_reason.setdefault(reason, []).append(f"`{folder.name}`")
        text += "\nNo image bootstrap:\n" + "".join(f"- {reason}: {', '.join(names)}\n"
                                                   for reason, names in by_reason.items())
    return text


def failed_markdown(runs: Sequence[Run]) -> str:
    """Bullet list of runs without results (never silently dropped)."""
    failed = [r for r in runs if not r.finished]
    if not failed:
        return "_none_\n"
    return "".join(f"- `{r.folder}` (setting `{r.setting}`, seed {r.seed}): {r.reason}\n" for r in failed)


def _bootstrap_rules(metric: str, bootstraps: Bootstraps | None) -> str:
    """The bootstrap paragraph of the methods section."""
    if bootstraps is None:
        return (f"- **Image bootstrap**: off (`bootstrap=0`, or {metric} cannot be recomputed from "
                "detections); one-seed comparisons are then not tested.\n")
    per = bootstraps.seconds_per_resample()
    timing = "" if per is None else f" (measured here: {1000 * per:.1f} ms per resample and run)"
    return (f"- **Image bootstrap** (each run's interval, and one-seed comparisons): {bootstraps.n_resamples} "
            f"resamples of the val images with replacement, numpy seed {bootstraps.seed}, the same draws for "
            f"every run on the same val set; an image drawn twice counts twice. {metric} is recomputed by "
            f"COCO's rules (pycocotools matching, all areas, 100 detections per image) from each run's "
            f"`{rundir.VAL_DETECTIONS}`{timing}. Intervals are the 2.5th and 97.5th percentiles; a comparison's "
            "p is twice the smaller share of resampled differences on either side of 0, each counted as "
            "(k + 1) / (B + 1). It covers the sampling of val images only, not seed-to-seed training noise. "
            "*Shift* is the mean over resamples minus the full-set value: AP is not a mean over images, so its "
            "resamples need not centre on the full-set value; a shift that is large against the interval's width "
            "marks a val set too small for the interval to be more than a guide.\n")


def methods_markdown(metric: str = DEFAULT_METRIC, bootstraps: Bootstraps | None = None) -> str:
    """Every rule behind the numbers above, stated."""
    words = "; ".join(f"p < {bound:g}: {text}" for bound, text in EVIDENCE[:-1]) + f"; otherwise: {EVIDENCE[-1][1]}"
    return (
        f"- **Values**: AP values ×100 (AP points); mean ± sample std (ddof=1) over a setting's finished runs. "
        f"A setting is the run's overrides without the seed and keys that do not change the experiment.\n"
        f"- **Failed to learn**: a run whose {metric} is below {stats.FAILED_FRACTION:g} × its setting's median "
        f"(settings with {stats.MIN_RUNS_FOR_FAILED_RULE}+ finished runs; with 2 there is no majority to say which "
        "run is typical). Such runs are named and marked ✗; they stay in the mean, the std and every test "
        "(dropping them after seeing their result would bias the comparison); the mean without them is shown "
        f"beside. A run that finished with a NaN or infinite {metric} (diverged) is listed there too; it has "
        "no value to average or test and is left out of both.\n"
        "- **Test** of each setting against the baseline, the first that applies: a paired t-test over the seeds "
        "both settings ran (2+ shared seeds; a seed is the same data order and initialisation, so pairing removes "
        "that shared noise); Welch's t-test when the seeds are not shared (2+ runs each); the paired image "
        "bootstrap below when one side has a single run; otherwise no test. Where there are "
        f"{stats.WILCOXON_MIN_PAIRS}+ pairs the Wilcoxon signed-rank p is given too (unadjusted; with fewer "
        "pairs it cannot reach 0.05).\n"
        f"- **Multiple comparisons**: p-values are Holm-adjusted over all comparisons of this report; the verdict "
        f"is *better* or *worse* when the adjusted p is below {stats.ALPHA:g}, else *no significant difference*. "
        f"Intervals are {stats.CONFIDENCE:.0%} and not adjusted, so one can exclude 0 while the adjusted p stays "
        f"above {stats.ALPHA:g}. Evidence in words, from the adjusted p: {words}.\n"
        + _bootstrap_rules(metric, bootstraps)
        + f"- **Seeds needed** (for *no significant difference*): the smallest seed count at which a t-test at "
        f"alpha {stats.ALPHA:g} (two-sided, before Holm) has power {stats.POWER:g} against a true difference equal "
        "to the observed one, from the noncentral t distribution. Paired: effect = mean / sd of the per-seed "
        "differences; Welch: delta / root mean of the two variances, equal runs per setting. The observed "
        "difference and spread are themselves uncertain: a rough guide to whether more seeds are worth buying.\n"
    )


def study_markdown(result: StudyResult) -> str:
    """A study's state counts, best trial or Pareto front, and one row per trial."""
    counts = ", ".join(f"{state} {n}" for state, n in sorted(result.state_counts().items()))
    objectives = ", ".join(f"{n} ({d})" for n, d in zip(result.objective_names, result.directions))
    lines = [f"- objectives: {objectives}", f"- trials: {len(result.trials)} ({counts})"]
    front = result.pareto_numbers()
    label = "best trial" if len(result.directions) == 1 else "Pareto front (trial numbers)"
    lines.append(f"- {label}: {', '.join(f'#{n}' for n in front) if front else 'none (no complete trial)'}")
    names = sorted({k for t in result.trials for k in t.params})
    marker = "best" if len(result.directions) == 1 else "Pareto"
    header = ["trial", "state", *result.objective_names, *names, "duration (s)", marker]
    rows = []
    for trial in result.trials:
        values = trial.values or []
        rows.append(
            [
                trial.number,
                trial.state,
                *(f"{values[i]:.4g}" if i < len(values) else "—" for i in range(len(result.directions))),
                *(trial.params.get(k, "—") for k in names),
                "—" if trial.duration_s is None else f"{trial.duration_s:.1f}",
                "✓" if trial.number in front else "",
            ]
        )
    return "\n".join(lines) + "\n\n" + table(header, rows)
