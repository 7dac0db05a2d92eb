"""Ablation report: run loading through rundir, settings, comparisons, Markdown/PNG output, CLI.

Expected numbers are derived by hand in the comments or computed here with scipy / pycocotools,
never read back from the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from rtmdet_exp.analysis.bootstrap import resample_counts
from rtmdet_exp.analysis.markdown import seeds_markdown
from rtmdet_exp.analysis import Run, load_runs, setting_of, summarize, write_report
from rtmdet_exp.cli.args import UsageError
from rtmdet_exp.cli.args import run as run_tool
from rtmdet_exp.cli.report import main
from test_analysis_bootstrap import CATEGORIES, pycocotools_on_draw, random_dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(folder: Path, overrides: list[str], metrics: dict | None, epochs_logged: int = 2, **extra) -> None:
    """A fake run folder as the trainer writes it; ``metrics=None`` leaves it crashed (no results.json)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("seed=")), 0)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    lines = [json.dumps({"step": 10 * e, "epoch": e, "train/loss": 1.0 / (e + 1)}) for e in range(epochs_logged)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if metrics is not None:
        record = {"run_name": folder.name, "metrics": metrics, "per_class_AP": {"person": metrics.get("val/mAP")},
                  "config": {"seed": seed, "model": {"backbone": {"kernel_size": 5}}}, **extra}
        (folder / "results.json").write_text(json.dumps(record))


def metrics_of(m_ap: float, params: float = 4.9e6, flops: float = 16e9) -> dict:
    return {"val/mAP": m_ap, "val/mAP50": m_ap + 0.2, "val/mAP75": m_ap - 0.05, "val/mAP_s": m_ap - 0.1,
            "val/mAP_m": m_ap, "val/mAP_l": m_ap + 0.1, "val/mAP_best": m_ap + 0.01, "val/best_epoch": 3,
            "perf/params": params, "perf/macs": flops / 2, "perf/flops": flops, "perf/train_time_s": 120.0,
            "epochs": 4, "steps": 40}


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """2 settings x 2 seeds (mAP 0.30/0.34 and 0.40/0.44) plus one crashed run of a third setting."""
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    noise = ["trainer.device=cpu", "++hydra.job.env_set.RTMDET_OPTUNA_TRIAL=0", "data.num_workers=0"]
    write_run(root / "0_kernel=k5", ["kernel=k5", "seed=0", *noise], metrics_of(0.30))
    write_run(root / "1_kernel=k5", ["seed=1", "kernel=k5"], metrics_of(0.34))
    write_run(root / "2_kernel=k7", ["kernel=k7", "seed=0"], metrics_of(0.40, 5.1e6, 17e9))
    write_run(root / "3_kernel=k7", ["kernel=k7", "seed=1", "logger=wandb"], metrics_of(0.44, 5.1e6, 17e9))
    write_run(root / "4_kernel=k3", ["kernel=k3", "seed=0"], None, epochs_logged=4)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"metric": "val/mAP_best"}}}))
    return root


def run(setting: str, seed: int, m_ap: float) -> Run:
    return Run(folder=Path(f"{setting}-{seed}"), overrides=[setting, f"seed={seed}"], setting=setting, seed=seed,
               metrics={"val/mAP": m_ap})


def test_setting_drops_seed_and_non_experiment_keys() -> None:
    overrides = ["seed=3", "model.stage_blocks=[3,6,6,3]", "kernel=k5", "++hydra.job.env_set.A=1", "logger=wandb"]
    assert setting_of(overrides) == "kernel=k5,model.stage_blocks=[3,6,6,3]"
    assert setting_of(["seed=1", "trainer.device=cuda", "+study=kernel_size", "resume=true"]) == "default"


def test_load_runs_lists_finished_and_failed(sweep: Path) -> None:
    runs = load_runs(sweep)
    assert [r.name for r in runs] == ["0_kernel=k5", "1_kernel=k5", "2_kernel=k7", "3_kernel=k7", "4_kernel=k3"]
    assert [r.finished for r in runs] == [True, True, True, True, False]
    assert [r.setting for r in runs] == ["kernel=k5", "kernel=k5", "kernel=k7", "kernel=k7", "kernel=k3"]
    assert [r.seed for r in runs] == [0, 1, 0, 1, 0]
    assert runs[2].metrics["val/mAP"] == 0.40 and runs[3].per_class_AP == {"person": 0.44}
    assert runs[0].config["model"]["backbone"]["kernel_size"] == 5
    assert "no results.json" in runs[4].reason and "epoch 3" in runs[4].reason  # epochs 0..3 logged
    assert len(load_runs(sweep / "2_kernel=k7")) == 1  # a single run folder


def test_run_status_from_results(tmp_path: Path) -> None:
    write_run(tmp_path / "0_a", ["a=1"], {}, status="failed", error="CUDA out of memory")
    write_run(tmp_path / "1_a", ["a=1"], metrics_of(0.3), status="running")
    write_run(tmp_path / "2_a", ["a=1"], metrics_of(0.3))  # an older file without "status": finished
    (tmp_path / "3_a" / ".hydra").mkdir(parents=True)
    (tmp_path / "3_a" / "results.json").write_text("{not json")
    runs = load_runs(tmp_path)
    assert [r.finished for r in runs] == [False, False, True, False]
    assert runs[0].reason == "failed: CUDA out of memory"
    assert "status 'running'" in runs[1].reason and "last logged epoch 1" in runs[1].reason
    assert "unreadable" in runs[3].reason and "3_a" in runs[3].reason


def test_summary_means_std_and_paired_test(sweep: Path) -> None:
    rows = {r.setting: r for r in summarize(load_runs(sweep), baseline="kernel=k5")}
    k5, k7, k3 = rows["kernel=k5"], rows["kernel=k7"], rows["kernel=k3"]
    # means (0.30+0.34)/2 and (0.40+0.44)/2; sample std sqrt((0.02^2 + 0.02^2) / 1) = 0.0282842712
    assert k5.stats["val/mAP"].mean == pytest.approx(0.32) and k7.stats["val/mAP"].mean == pytest.approx(0.42)
    assert k5.stats["val/mAP"].std == pytest.approx(0.028284271247, rel=1e-9)
    assert k5.n == 2 and k5.seeds == [0, 1] and k5.is_baseline and k5.delta is None
    assert k7.stats["perf/params"].mean == pytest.approx(5.1e6) and k7.stats["perf/params"].std == 0.0
    # seeds 0 and 1 in both: paired; both differences are 0.10, so the difference is exact (p = 0)
    assert k7.comparison.method == "paired t" and k7.delta == pytest.approx(0.10)
    assert k7.comparison.test.p == 0.0 and k7.comparison.verdict == "better"
    assert k3.n == 0 and k3.n_failed == 1 and k3.note == "all runs failed" and k3.comparison is None
    assert [r.setting for r in summarize(load_runs(sweep)) if r.is_baseline] == ["kernel=k5"]  # first job
    with pytest.raises(ValueError, match="baseline: 'kernel=k9' is not a setting"):
        summarize(load_runs(sweep), baseline="kernel=k9")


def test_paired_welch_and_holm() -> None:
    base = [run("a=1", s, v) for s, v in zip((0, 1, 2), (0.30, 0.34, 0.29))]
    paired = [run("a=2", s, v) for s, v in zip((0, 1, 2), (0.33, 0.38, 0.31))]
    welch = [run("a=3", s, v) for s, v in zip((5, 6), (0.36, 0.38))]
    rows = {r.setting: r for r in summarize(base + paired + welch)}
    p_paired = sps.ttest_rel([0.33, 0.38, 0.31], [0.30, 0.34, 0.29]).pvalue
    p_welch = sps.ttest_ind([0.36, 0.38], [0.30, 0.34, 0.29], equal_var=False).pvalue
    assert rows["a=2"].comparison.method == "paired t" and rows["a=2"].comparison.test.p == pytest.approx(p_paired)
    assert rows["a=3"].comparison.method == "Welch t" and rows["a=3"].comparison.test.p == pytest.approx(p_welch)
    # Holm over two tests: the smaller p doubled, the larger kept (at least the first's adjusted value)
    low, high = sorted([p_paired, p_welch])
    adjusted = {p_paired: None, p_welch: None}
    adjusted[low] = min(1.0, 2 * low)
    adjusted[high] = max(adjusted[low], high)
    assert rows["a=2"].comparison.p_holm == pytest.approx(adjusted[p_paired])
    assert rows["a=3"].comparison.p_holm == pytest.approx(adjusted[p_welch])


def test_untestable_comparisons_say_why() -> None:
    base = [run("a=1", s, v) for s, v in zip((0, 1, 2), (0.30, 0.34, 0.29))]
    lone = [run("a=2", 7, 0.40)]  # one run, a seed the baseline did not run
    paired_lone = [run("a=3", 1, 0.40)]  # one run sharing seed 1, but no bootstrap was computed
    rows = {r.setting: r for r in summarize(base + lone + paired_lone)}
    assert rows["a=2"].comparison.method == "none" and rows["a=2"].comparison.verdict == "not tested"
    assert "1 vs 3 run(s) without a shared seed" in rows["a=2"].comparison.note
    assert "no image bootstrap" in rows["a=3"].comparison.note
    assert rows["a=2"].delta == pytest.approx(0.40 - 0.31)  # the table's delta is a difference of means


def test_lower_is_better_metrics() -> None:
    runs = [Run(Path(f"{s}-{i}"), [s, f"seed={i}"], s, i, metrics={"perf/latency_ms": v})
            for s, values in (("a=1", (1.00, 1.10, 1.05)), ("a=2", (2.00, 2.12, 2.03))) for i, v in enumerate(values)]
    row = summarize(runs, metric="perf/latency_ms")[1]
    assert row.comparison.test.delta > 0 and row.comparison.verdict == "worse"  # slower by ~1 ms, every seed


def test_failed_to_learn_is_named_and_kept_in_the_mean(tmp_path: Path) -> None:
    runs = [run("a=1", s, v) for s, v in zip((0, 1, 2), (0.063, 0.257, 0.250))]
    runs += [run("a=2", s, v) for s, v in zip((0, 1, 2), (0.26, 0.25, 0.27))]
    runs.append(run("a=1", 3, float("nan")))  # diverged: listed, not averaged
    row = summarize(runs)[0]
    assert [s.failed_to_learn for s in row.per_seed] == [True, False, False]  # 0.063 < 0.5 x median 0.250
    assert [r.seed for r in row.diverged] == [3]
    assert row.stats["val/mAP"].mean == pytest.approx((0.063 + 0.257 + 0.250) / 3)  # all runs
    assert row.learned.mean == pytest.approx((0.257 + 0.250) / 2) and row.learned.n == 2
    assert summarize(runs)[1].comparison.method == "paired t"  # seeds 0, 1, 2 pair; seed 3 has no value
    # mean (6.3 + 25.7 + 25) / 3 = 19, std 11.004; without the first: 25.35, std 0.495
    row_text = "| a=1 | 0: 6.30 ✗, 1: 25.70, 2: 25.00 | 19.00 ± 11.00 | 25.35 ± 0.49 | a=1-0, a=1-3 (val/mAP nan) |"
    assert row_text in seeds_markdown(summarize(runs))


def _smallest_paired_n(effect: float) -> int:
    """Smallest pair count with power >= 0.8 at alpha 0.05, by scanning scipy's noncentral t."""
    for n in range(2, 1001):
        critical, nc = sps.t.ppf(0.975, n - 1), effect * math.sqrt(n)
        power = sps.nct.sf(critical, n - 1, nc) + sps.nct.cdf(-critical, n - 1, nc)
        if power >= 0.8:
            return n
    raise AssertionError("no n up to 1000")


def test_unresolved_difference_says_how_many_seeds_would_resolve_it() -> None:
    base = [run("a=1", s, v) for s, v in zip((0, 1, 2), (0.30, 0.34, 0.29))]
    other = [run("a=2", s, v) for s, v in zip((0, 1, 2), (0.32, 0.33, 0.30))]
    row = summarize(base + other)[1]
    diffs = np.array([0.02, -0.01, 0.01])  # mean 0.00667, sd 0.01528
    assert row.comparison.verdict == "no significant difference"
    assert row.comparison.seeds_needed == _smallest_paired_n(diffs.mean() / diffs.std(ddof=1))
    assert f"about {row.comparison.seeds_needed} shared seeds" in row.comparison.advice


def test_one_seed_each_is_compared_on_resampled_images(tmp_path: Path) -> None:
    images, annotations, detections = random_dataset(seed=8, n_images=20)
    ann_file = tmp_path / "val.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    worse = [d for i, d in enumerate(detections) if i % 3]  # drops a third of the detections
    values = {}
    for name, dets in (("0_a=1", detections), ("1_a=2", worse)):
        values[name] = pycocotools_on_draw(images, annotations, dets, list(range(20)))[0]
        write_run(tmp_path / "sweep" / name, [name[2:], "seed=0"], metrics_of(values[name]),
                  val_annotations=str(ann_file))
        (tmp_path / "sweep" / name / "val_detections.json").write_text(json.dumps(dets))
    from rtmdet_exp.analysis import analyse

    rows, boots = analyse(load_runs(tmp_path / "sweep"), n_resamples=30, bootstrap_seed=2)
    comparison = rows[1].comparison
    assert comparison.method == "image bootstrap" and boots.n_resamples == 30
    # the reference: pycocotools on the same 30 draws (image multiplicities) for both runs
    deltas = []
    for row in resample_counts(20, 30, seed=2):
        drawn = [i for i, c in enumerate(row) for _ in range(c)]
        a = pycocotools_on_draw(images, annotations, worse, drawn)[0]
        b = pycocotools_on_draw(images, annotations, detections, drawn)[0]
        deltas.append(a - b)
    deltas = np.array(deltas)
    low, high = np.percentile(deltas, [2.5, 97.5])
    p = min(1.0, 2 * min((np.sum(deltas <= 0) + 1) / 31, (np.sum(deltas >= 0) + 1) / 31))
    assert comparison.test.delta == pytest.approx(values["1_a=2"] - values["0_a=1"])
    assert (comparison.test.low, comparison.test.high) == (pytest.approx(low), pytest.approx(high))
    assert comparison.test.p == pytest.approx(p) and comparison.p_holm == pytest.approx(p)  # one test
    assert "seed spread is unknown" in comparison.advice or comparison.verdict != "no significant difference"


def test_report_markdown_and_png(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    text = write_report(sweep, out, baseline="kernel=k5").read_text()
    # params 4.9e6 -> 4.90 M, FLOPs 16e9 -> 16.00 G, AP x100
    assert "| kernel=k5 (baseline) | 2 | 4.90 | 16.00 | 32.00 ± 2.83 | — | — | baseline |" in text
    assert "| kernel=k7 | 2 | 5.10 | 17.00 | **42.00 ± 2.83** | +10.00 | 0 | better |" in text
    assert "| kernel=k3 | 0 (+1 failed) |" in text
    assert "- **kernel=k7**: better than the baseline, very strong evidence: +10.00 AP points" in text
    assert "paired t-test over 2 shared seeds (seeds 0, 1)" in text
    assert "| kernel=k5 | 0: 30.00, 1: 34.00 | 32.00 ± 2.83 | (same: none flagged) | — |" in text
    assert "4_kernel=k3" in text and "FAILED" in text and "last logged epoch 3" in text
    assert "no val_detections.json" not in text  # no val_annotations: the reason is that instead
    assert "results.json names no val_annotations" in text
    for rule in ("below 0.5 × its setting's median", "Holm-adjusted", "1000 resamples", "numpy seed 0",
                 "noncentral t", "power 0.8"):
        assert rule in text, rule
    assert (out / "map_by_setting.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_cli_options_and_errors(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = main([str(sweep), f"out={tmp_path / 'cli'}", "bootstrap=0", "metric=val/mAP50"])
    text = report.read_text()
    assert "val/mAP50 ×100 (mean ± std)" in text and "**Image bootstrap**: off" in text
    with pytest.raises(SystemExit) as exit_info:  # what `python -m rtmdet_exp.report` does with a bad path
        run_tool(lambda: main([str(tmp_path / "missing")]))
    assert exit_info.value.code == 2 and "not a run or sweep folder" in capsys.readouterr().err
    with pytest.raises(UsageError, match="baseline: 'kernel=k9' is not a setting of these runs; valid values"):
        main([str(sweep), "baseline=kernel=k9", f"out={tmp_path / 'x'}"])
