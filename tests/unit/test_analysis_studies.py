"""Optuna studies in the report, and the analysis notebook executed on a fake sweep.

Expected values are set by construction (a study whose objective is its parameter ``x``; Pareto
fronts worked out by inspection in the comments).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from rtmdet_exp.analysis import load_studies, param_importances, write_report
from rtmdet_exp.cli.report import main
from test_analysis_report import sweep  # noqa: F401 (the fixture)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "ablation_analysis.ipynb"


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


@pytest.mark.slow
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
    main([f"sqlite:///{sweep / 'optuna.db'}", f"out={out}", "study=pareto"])
    text = (out / "report.md").read_text()
    assert "`pareto`" in text and "`single`" not in text and "## Ablation table" not in text
    assert (out / "optuna_pareto_pareto.png").read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(FileNotFoundError):
        load_studies(f"sqlite:///{tmp_path / 'missing.db'}")


@pytest.mark.slow
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
    assert "**kernel=k7**: better than the baseline" in markdown  # the comparison in words
    assert "| kernel=k7 | 0: 40.00, 1: 44.00 |" in markdown  # per-seed values
    assert "**Failed to learn**: a run whose val/mAP is below 0.5" in markdown  # the rules
    assert "COMPLETE 4, FAIL 1, PRUNED 1" in markdown
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # bars, 2 histories, Pareto (+ importance)
