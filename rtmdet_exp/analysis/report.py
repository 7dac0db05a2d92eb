"""Write ``report.md`` and its PNG plots for a run folder, a sweep folder or an Optuna storage.

Reads only files (run folders through :mod:`rtmdet_exp.experiment.rundir`, ``optuna.db`` or a
storage URL), so it works offline and never needs W&B. The tables follow the paper's ablation
tables (arXiv 2212.07784, spec section 5): one row per setting with params, FLOPs and AP, plus the
seed statistics and tests a single-seed paper table leaves out.
"""

from __future__ import annotations

import re
from pathlib import Path

from rtmdet_exp.analysis import markdown as md
from rtmdet_exp.analysis.bootstrap import BOOTSTRAP_METRICS, Bootstraps, bootstrap_runs
from rtmdet_exp.analysis.plots import plot_history, plot_importances, plot_pareto, plot_setting_bars, save_png
from rtmdet_exp.analysis.runs import Run, load_runs
from rtmdet_exp.analysis.studies import (
    STORAGE_FILE,
    StudyResult,
    load_studies,
    param_importances,
    storage_url,
    sweep_metric_names,
)
from rtmdet_exp.analysis.summary import DEFAULT_METRIC, SettingSummary, summarize
from rtmdet_exp.atomic import write_text_atomic

DEFAULT_RESAMPLES = 1000  # image-bootstrap resamples per run
DEFAULT_BOOTSTRAP_SEED = 0


def default_out_dir(path: str | Path) -> Path:
    """``<folder>/report`` for a run or sweep folder, ``./report`` for a storage URL."""
    if "://" in str(path):
        return Path("report")
    folder = Path(path)
    return (folder.parent if folder.is_file() else folder) / "report"


def find_latest_sweep(*roots: str | Path) -> Path | None:
    """The most recently changed sweep folder two levels under any of ``roots``, or None.

    Sweep folders are ``<root>/<study>/<date>_<time>`` or ``<root>/<date>/<time>``; a sweep's folder
    changes whenever a job folder is added. Default roots: ``multirun`` and ``../multirun`` (a
    notebook's working folder is ``notebooks/``).
    """
    candidates = []
    for base in map(Path, roots or ("multirun", "../multirun")):
        if base.is_dir():
            candidates += [p for group in base.iterdir() if group.is_dir() for p in group.iterdir() if p.is_dir()]
    return max(candidates, key=lambda p: (p.stat().st_mtime, str(p)), default=None)


def analyse(
    runs: list[Run],
    baseline: str | None = None,
    metric: str = DEFAULT_METRIC,
    n_resamples: int = DEFAULT_RESAMPLES,
    bootstrap_seed: int = DEFAULT_BOOTSTRAP_SEED,
) -> tuple[list[SettingSummary], Bootstraps | None]:
    """The ablation rows and the image bootstrap behind them (None when off or not applicable)."""
    bootstraps = None
    if n_resamples > 0 and metric in BOOTSTRAP_METRICS:
        bootstraps = bootstrap_runs(runs, metric, n_resamples, bootstrap_seed)
    return summarize(runs, baseline, metric, bootstraps), bootstraps


def _runs_section(path: str | Path, out: Path, baseline: str | None, metric: str,
                  n_resamples: int, bootstrap_seed: int) -> list[str]:
    """The Markdown parts about the folder's runs, with the bar plot written to ``out``."""
    runs = load_runs(path)
    rows, bootstraps = analyse(runs, baseline, metric, n_resamples, bootstrap_seed)
    n_done = sum(r.finished for r in runs)
    parts = [
        f"{len(runs)} run(s): {n_done} finished, {len(runs) - n_done} did not finish; {len(rows)} setting(s). "
        "How sure each comparison is, and every rule used, is stated under "
        "[How these numbers were computed](#how-these-numbers-were-computed).\n",
        "## Ablation table\n",
        md.summary_markdown(rows, metric),
        md.cost_note(runs),
    ]
    if rows:
        save_png(plot_setting_bars(rows, metric), out / "map_by_setting.png")
        parts.append("\n![metric per setting](map_by_setting.png)\n")
    parts += ["## Comparisons with the baseline\n", md.comparisons_markdown(rows, metric)]
    parts += ["\n## Seeds\n", md.seeds_markdown(rows, metric)]
    parts += ["\n## Runs\n", md.runs_markdown(runs, metric, bootstraps), "\n## Failed runs\n", md.failed_markdown(runs)]
    parts += ["\n## How these numbers were computed\n", md.methods_markdown(metric, bootstraps)]
    return parts


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "study"


def _study_section(result: StudyResult, out: Path, runs: list[Run] | None = None) -> str:
    """Markdown of one study with its history, Pareto and importance plots written to ``out``;
    ``runs`` (the study's run folders, when known) say what a ``perf/cost`` objective measured."""
    stem = f"optuna_{_safe_name(result.name)}"
    parts = [f"\n## Optuna study `{result.name}`\n", md.study_markdown(result)]
    if "perf/cost" in result.objective_names:
        parts.append(md.cost_note(runs) if runs else "\n> perf/cost is latency in ms for runs that had a GPU and "
                     "GMACs for runs that had none; report on the sweep folder to see which.\n")
    save_png(plot_history(result), out / f"{stem}_history.png")
    parts.append(f"\n![optimisation history]({stem}_history.png)\n")
    if len(result.directions) == 2:
        save_png(plot_pareto(result), out / f"{stem}_pareto.png")
        parts.append(f"\n![Pareto front]({stem}_pareto.png)\n")
    elif len(result.directions) > 2:
        parts.append(f"\nPareto plot omitted: {len(result.directions)} objectives (drawn for 2).\n")
    importances, note = param_importances(result)
    parts.append(f"\n### Parameter importances\n\n{note}\n")
    if importances is not None:
        parts.append("\n" + md.table(["param", "importance"], [[k, f"{v:.3f}"] for k, v in importances.items()]))
        save_png(plot_importances(importances, note), out / f"{stem}_importance.png")
        parts.append(f"\n![parameter importances]({stem}_importance.png)\n")
    return "".join(parts)


def write_report(
    path: str | Path,
    out_dir: str | Path | None = None,
    baseline: str | None = None,
    metric: str = DEFAULT_METRIC,
    study: str | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    bootstrap_seed: int = DEFAULT_BOOTSTRAP_SEED,
) -> Path:
    """Write ``report.md`` and its PNG plots; returns the path of ``report.md``.

    ``path`` may be a folder (its runs are tabulated; its ``optuna.db``, if any, is reported as
    well), an ``optuna.db`` file, or a storage URL. ``n_resamples=0`` turns the image bootstrap off.
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir(path)
    is_folder = "://" not in str(path) and Path(path).is_dir()
    storage = storage_url(path)
    if not is_folder and storage is None:
        raise FileNotFoundError(f"{path}: not a run or sweep folder, an {STORAGE_FILE} file or a storage URL")
    if n_resamples < 0:
        raise ValueError(f"--bootstrap (n_resamples): must be >= 0 (0 turns the bootstrap off), got {n_resamples}")
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# Ablation report: `{path}`\n"]
    if is_folder:
        parts += _runs_section(path, out, baseline, metric, n_resamples, bootstrap_seed)
    if storage is not None:
        names = sweep_metric_names(Path(path)) if is_folder else None
        runs = load_runs(path) if is_folder else None
        for result in load_studies(storage, study, names):
            parts.append(_study_section(result, out, runs))
    elif study is not None:
        raise ValueError(f"study: {study!r} given but {path} holds no Optuna storage ({STORAGE_FILE})")
    return write_text_atomic(out / "report.md", "\n".join(parts))
