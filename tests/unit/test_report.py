"""Ablation report: run loading, seed statistics, Markdown/PNG output, Optuna studies, the notebook.

Expected numbers are derived by hand in the comments (means, sample std, Welch p-value from the
closed-form t distribution with 2 degrees of freedom, Pareto fronts by inspection).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import yaml

from rtmdet_exp.report import (
    Run,
    load_runs,
    load_studies,
    main,
    param_importances,
    setting_of,
    summarize,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "ablation_analysis.ipynb"


def _write_run(folder: Path, overrides: list[str], metrics: dict | None, epochs_logged: int = 2) -> None:
    """A fake run folder as the trainer writes it; ``metrics=None`` leaves it crashed (no results.json)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("seed=")), 0)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    lines = [json.dumps({"step": 10 * e, "epoch": e, "train/loss": 1.0 / (e + 1)}) for e in range(epochs_logged)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if metrics is not None:
        record = {
            "run_name": folder.name,
            "metrics": metrics,
            "per_class_AP": {"person": metrics["val/mAP"]},
            "config": {"seed": seed, "model": {"backbone": {"kernel_size": 5}}},
        }
        (folder / "results.json").write_text(json.dumps(record))


def _metrics(m_ap: float, params: float, flops: float) -> dict:
    return {
        "val/mAP": m_ap,
        "val/mAP50": m_ap + 0.2,
        "val/mAP75": m_ap - 0.05,
        "val/mAP_s": m_ap - 0.1,
        "val/mAP_m": m_ap,
        "val/mAP_l": m_ap + 0.1,
        "val/mAP_best": m_ap + 0.01,
        "val/best_epoch": 3,
        "perf/params": params,
        "perf/macs": flops / 2,
        "perf/flops": flops,
        "perf/train_time_s": 120.0,
        "epochs": 4,
        "steps": 40,
    }


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """2 settings x 2 seeds (mAP 0.30/0.34 and 0.40/0.44) plus one crashed run of a third setting."""
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    noise = ["trainer.device=cpu", "++hydra.job.env_set.RTMDET_OPTUNA_TRIAL=0", "data.num_workers=0"]
    _write_run(root / "0_kernel=k5", ["kernel=k5", "seed=0", *noise], _metrics(0.30, 4.9e6, 16e9))
    _write_run(root / "1_kernel=k5", ["seed=1", "kernel=k5"], _metrics(0.34, 4.9e6, 16e9))
    _write_run(root / "2_kernel=k7", ["kernel=k7", "seed=0"], _metrics(0.40, 5.1e6, 17e9))
    _write_run(root / "3_kernel=k7", ["kernel=k7", "seed=1", "logger=wandb"], _metrics(0.44, 5.1e6, 17e9))
    _write_run(root / "4_kernel=k3", ["kernel=k3", "seed=0"], None, epochs_logged=4)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"metric": "val/mAP_best"}}}))
    return root


def _run(setting: str, seed: int, m_ap: float) -> Run:
    return Run(
        folder=Path(f"{setting}-{seed}"),
        overrides=[setting, f"seed={seed}"],
        setting=setting,
        seed=seed,
        metrics={"val/mAP": m_ap},
        finished=True,
    )


def test_setting_drops_seed_and_non_experiment_keys() -> None:
    overrides = ["seed=3", "model.stage_blocks=[3,6,6,3]", "kernel=k5", "++hydra.job.env_set.A=1", "logger=wandb"]
    assert setting_of(overrides) == "kernel=k5,model.stage_blocks=[3,6,6,3]"
    assert setting_of(["seed=1", "trainer.device=cuda"]) == "default"


def test_load_runs_lists_finished_and_failed(sweep: Path) -> None:
    runs = load_runs(sweep)
    assert [r.folder.name for r in runs] == ["0_kernel=k5", "1_kernel=k5", "2_kernel=k7", "3_kernel=k7", "4_kernel=k3"]
    assert [r.finished for r in runs] == [True, True, True, True, False]
    assert [r.setting for r in runs] == ["kernel=k5", "kernel=k5", "kernel=k7", "kernel=k7", "kernel=k3"]
    assert [r.seed for r in runs] == [0, 1, 0, 1, 0]
    assert runs[2].metrics["val/mAP"] == 0.40
    assert runs[3].per_class_AP == {"person": 0.44}
    assert runs[0].config["model"]["backbone"]["kernel_size"] == 5
    failed = runs[4]
    assert "no results.json" in failed.reason and "epoch 3" in failed.reason  # epochs 0..3 logged


def test_single_run_folder(sweep: Path) -> None:
    runs = load_runs(sweep / "2_kernel=k7")
    assert len(runs) == 1 and runs[0].finished and runs[0].metrics["val/mAP"] == 0.40


def test_summary_means_std_and_delta(sweep: Path) -> None:
    rows = {r.setting: r for r in summarize(load_runs(sweep), baseline="kernel=k5")}
    k5, k7, k3 = rows["kernel=k5"], rows["kernel=k7"], rows["kernel=k3"]
    # means (0.30+0.34)/2 and (0.40+0.44)/2; sample std sqrt((0.02^2 + 0.02^2) / 1) = 0.0282842712
    assert k5.stats["val/mAP"].mean == pytest.approx(0.32)
    assert k7.stats["val/mAP"].mean == pytest.approx(0.42)
    assert k5.stats["val/mAP"].std == pytest.approx(0.028284271247, rel=1e-9)
    assert k7.stats["val/mAP"].std == pytest.approx(0.028284271247, rel=1e-9)
    assert k5.n == 2 and k5.seeds == [0, 1] and k5.is_baseline and k5.delta is None
    assert k7.delta == pytest.approx(0.10)
    assert k7.within_noise is False
    assert k7.stats["perf/params"].mean == pytest.approx(5.1e6) and k7.stats["perf/params"].std == 0.0
    assert k3.n == 0 and k3.n_failed == 1 and k3.note == "all runs failed"
    # the default baseline is the setting of the first job (no run without overrides here)
    assert [r.setting for r in summarize(load_runs(sweep)) if r.is_baseline] == ["kernel=k5"]


def test_welch_p_value_matches_closed_form(sweep: Path) -> None:
    pytest.importorskip("scipy")
    k7 = next(r for r in summarize(load_runs(sweep), baseline="kernel=k5") if r.setting == "kernel=k7")
    # Equal std 0.028284 and n=2: t = 0.1 / sqrt(2 * 0.0008 / 2) = 3.5355, Welch df = 2.
    # Student t with 2 dof: two-sided p = 1 - t / sqrt(2 + t^2).
    t = 0.1 / math.sqrt(0.0008)
    assert k7.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)


def test_delta_within_seed_spread_is_flagged() -> None:
    runs = [_run("a=1", 0, 0.30), _run("a=1", 1, 0.34), _run("a=2", 0, 0.31), _run("a=2", 1, 0.35)]
    runs += [_run("a=3", 0, 0.50)]
    rows = {r.setting: r for r in summarize(runs, baseline="a=1")}
    assert rows["a=2"].delta == pytest.approx(0.01)
    assert rows["a=2"].within_noise is True  # 0.01 < std 0.0283
    assert "within seed noise" in rows["a=2"].note
    # one seed against the baseline's two: the baseline's spread still judges the delta (0.18 > 0.028)
    assert rows["a=3"].within_noise is False and rows["a=3"].p_value is None
    # a single seed on both sides cannot be judged
    single = summarize([_run("a=1", 0, 0.30), _run("a=2", 0, 0.31)])
    assert single[1].within_noise is None and "n=1" in single[1].note


def test_unknown_baseline_is_a_clear_error(sweep: Path) -> None:
    with pytest.raises(ValueError, match="baseline"):
        summarize(load_runs(sweep), baseline="kernel=k9")


def test_report_markdown_and_png(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = write_report(sweep, out, baseline="kernel=k5")
    text = report.read_text()
    # params 4.9e6 -> 4.90 M, FLOPs 16e9 -> 16.00 G, AP x100
    assert "| kernel=k5 (baseline) | 2 | 4.90 | 16.00 | 32.00 ± 2.83 | — | baseline |" in text
    assert "| kernel=k7 | 2 | 5.10 | 17.00 | **42.00 ± 2.83** | +10.00 | beyond seed spread" in text
    assert "| kernel=k3 | 0 (+1 failed) |" in text
    assert "4_kernel=k3" in text and "FAILED" in text
    assert "## Failed runs" in text and "last logged epoch 3" in text
    png = out / "map_by_setting.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def _make_studies(db: Path) -> str:
    """A single-objective study (4 COMPLETE, 1 FAIL, 1 PRUNED; value = x) and a 2-objective one."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{db}"
    dists = {"x": FloatDistribution(0.0, 1.0), "y": IntDistribution(0, 10)}
    single = optuna.create_study(study_name="single", storage=url, direction="maximize")
    points = [(0.1, 7), (0.9, 2), (0.5, 9), (0.3, 0)]
    for x, y in points:
        single.add_trial(create_trial(params={"x": x, "y": y}, distributions=dists, value=x))
    single.add_trial(create_trial(params={"x": 0.7, "y": 5}, distributions=dists, state=TrialState.FAIL))
    single.add_trial(
        create_trial(
            params={"x": 0.2, "y": 3},
            distributions=dists,
            value=0.15,
            intermediate_values={1: 0.15},
            state=TrialState.PRUNED,
        )
    )
    multi = optuna.create_study(study_name="pareto", storage=url, directions=["maximize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set_metric_names is marked experimental
        multi.set_metric_names(["val/mAP_best", "perf/latency_ms"])
    kernel = {"kernel": CategoricalDistribution(["k3", "k5", "k7", "k9"])}
    # (mAP, latency): #0 (0.30, 1.0) and #1 (0.40, 2.0) are Pareto; #2 is dominated by #1, #3 by #0
    for name, values in zip(["k3", "k5", "k7", "k9"], [(0.30, 1.0), (0.40, 2.0), (0.35, 2.5), (0.25, 1.5)]):
        multi.add_trial(create_trial(params={"kernel": name}, distributions=kernel, values=list(values)))
    return url


def test_optuna_studies(tmp_path: Path) -> None:
    url = _make_studies(tmp_path / "optuna.db")
    studies = {s.name: s for s in load_studies(url)}
    single, pareto = studies["single"], studies["pareto"]
    assert [t.state for t in single.trials] == ["COMPLETE"] * 4 + ["FAIL", "PRUNED"]
    assert single.state_counts() == {"COMPLETE": 4, "FAIL": 1, "PRUNED": 1}
    assert single.trials[1].params == {"x": 0.9, "y": 2} and single.trials[1].values == [0.9]
    assert single.pareto_numbers() == [1]  # best value 0.9
    assert pareto.pareto_numbers() == [0, 1]
    assert pareto.objective_names == ["val/mAP_best", "perf/latency_ms"] and pareto.main_objective == 0
    importances, _ = param_importances(single)
    assert importances is not None and set(importances) == {"x", "y"}
    assert importances["x"] > importances["y"]  # the objective is x itself
    none, reason = param_importances(pareto)
    assert none is None and "1 parameter" in reason


def test_optuna_report_from_sweep_folder_and_url(sweep: Path, tmp_path: Path) -> None:
    _make_studies(sweep / "optuna.db")
    report = write_report(sweep, tmp_path / "both")
    text = report.read_text()
    assert "## Ablation table" in text and "## Optuna study `single`" in text and "## Optuna study `pareto`" in text
    assert "COMPLETE 4, FAIL 1, PRUNED 1" in text
    assert "objectives: val/mAP_best (maximize)\n" in text  # named from multirun.yaml's sweeper metric
    assert "| 4 | FAIL | — |" in text and "| 5 | PRUNED | 0.15 |" in text
    assert "Pareto front (trial numbers): #0, #1" in text
    assert "| x |" in text and "| y |" in text  # importance table rows
    assert "parameter importances omitted: 1 parameter(s)" in text
    for name in ("optuna_single_history", "optuna_single_importance", "optuna_pareto_history", "optuna_pareto_pareto"):
        assert (tmp_path / "both" / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    out = tmp_path / "url"
    main([f"sqlite:///{sweep / 'optuna.db'}", "--out", str(out), "--study", "pareto"])
    text = (out / "report.md").read_text()
    assert "`pareto`" in text and "`single`" not in text and "## Ablation table" not in text
    assert (out / "optuna_pareto_pareto.png").read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(FileNotFoundError):
        load_studies(f"sqlite:///{tmp_path / 'missing.db'}")


def test_notebook_runs_on_fake_sweep(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import find_kernel_specs

    if "python3" not in find_kernel_specs():
        pytest.skip("no 'python3' Jupyter kernel spec: run `python -m ipykernel install --user` in CI")
    _make_studies(sweep / "optuna.db")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    monkeypatch.setenv("RTMDET_SWEEP_DIR", str(sweep))
    monkeypatch.setenv("RTMDET_BASELINE", "kernel=k5")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "32.00 ± 2.83" in markdown and "+10.00" in markdown
    assert "COMPLETE 4, FAIL 1, PRUNED 1" in markdown
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # bars, 2 histories, Pareto (+ importance)
