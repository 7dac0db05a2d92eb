"""The report in Weights & Biases: its tables as W&B Tables, in one summary run per study.

``python -m rtmdet_exp.report <sweep folder> wandb=true`` writes ``report.md`` as usual, then starts a
W&B run of its own (job type ``study-summary``, in the W&B group of the sweep's training runs:
the last two parts of the sweep folder, as the runs' loggers name it) that logs

* the tables ``report/ablation``, ``report/comparisons``, ``report/seeds`` and ``report/runs``
  (one row per setting, comparison, seed and run; values as in ``results.json``: AP as a fraction,
  not x100) and ``optuna/<study>/trials`` for each Optuna study of the folder;
* the summary keys ``report/...`` (runs, settings, the best setting and its mean) and the best
  trial of each study;
* ``report.md`` and its plots as the artifact ``report-<group>`` (type ``report``).

A storage URL (no run folder) gets one summary run per Optuna study in it. The run is offline by
default (``wandb sync <folder>/report/wandb/offline-run-*`` uploads it); its id is derived from the
folder, so reporting the same sweep again continues the same W&B run.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtmdet_exp.analysis.bootstrap import Bootstraps
from rtmdet_exp.analysis.report import analyse
from rtmdet_exp.analysis.runs import Run, load_runs
from rtmdet_exp.analysis.studies import StudyResult, load_studies, storage_url, sweep_metric_names
from rtmdet_exp.analysis.summary import COST_METRICS, DETAIL_METRICS, SettingSummary

Table = tuple[list[str], list[list[Any]]]  # (columns, rows)
MODES = ("offline", "online", "disabled")


@dataclass
class WandbTarget:
    """Where the summary runs go (``wandb_project=``, ``wandb_entity=``, ``wandb_mode=``)."""

    project: str = "rtmdet-exp"
    entity: str | None = None
    mode: str = "offline"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"wandb_mode=: expected one of {', '.join(MODES)}, got {self.mode!r}")


def _num(value: float | None) -> float | None:
    """A finite float for a table cell, None otherwise (W&B columns keep one type)."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def ablation_table(rows: Sequence[SettingSummary], metric: str) -> Table:
    """One row per setting: runs, main metric mean and std, delta, Holm p, verdict, details and costs."""
    extra = [k for k in (*DETAIL_METRICS, *COST_METRICS) if k != metric]
    columns = ["setting", "baseline", "runs", "failed runs", f"{metric} mean", f"{metric} std", "delta",
               "p (Holm)", "verdict", *(f"{k} mean" for k in extra)]
    data = []
    for row in rows:
        main = row.stats.get(metric)
        comparison = row.comparison
        data.append([row.setting, row.is_baseline, row.n, row.n_failed, _num(main and main.mean),
                     _num(main.std if main is not None and main.n > 1 else None), _num(row.delta),
                     _num(comparison and comparison.p_holm), comparison.verdict if comparison else row.note,
                     *(_num(row.mean(k)) for k in extra)])
    return columns, data


def comparisons_table(rows: Sequence[SettingSummary]) -> Table:
    """One row per comparison with the baseline: the test, delta, interval, p before and after Holm."""
    columns = ["setting", "test", "delta", "interval low", "interval high", "p", "p (Holm)", "Wilcoxon p",
               "verdict", "seeds needed", "note"]
    data = []
    for row in rows:
        c = row.comparison
        if c is None:
            continue
        t = c.test
        data.append([row.setting, c.method, _num(t and t.delta), _num(t and t.low), _num(t and t.high),
                     _num(t and t.p), _num(c.p_holm), _num(t and t.wilcoxon_p), c.verdict,
                     c.seeds_needed, c.note])
    return columns, data


def seeds_table(rows: Sequence[SettingSummary], metric: str) -> Table:
    """One row per finished run with a value: its setting, seed, value and failed-to-learn flag."""
    columns = ["setting", "seed", "run", metric, "failed to learn"]
    data = [[row.setting, s.run.seed, s.run.name, _num(s.value), s.failed_to_learn]
            for row in rows for s in row.per_seed]
    return columns, data


def runs_table(runs: Sequence[Run], metric: str, bootstraps: Bootstraps | None) -> Table:
    """One row per run folder, failed ones included, with its image-bootstrap interval when computed."""
    columns = ["run", "setting", "seed", "status", metric, "interval low", "interval high", "best epoch",
               "epochs", "reason"]
    data = []
    for run in runs:
        boot = bootstraps.by_run.get(run.folder) if bootstraps is not None else None
        data.append([run.name, run.setting, run.seed, "finished" if run.finished else "failed",
                     _num(run.metrics.get(metric)), _num(boot and boot.low), _num(boot and boot.high),
                     _num(run.metrics.get("val/best_epoch")), _num(run.metrics.get("epochs")), run.reason])
    return columns, data


def trials_table(result: StudyResult) -> Table:
    """One row per Optuna trial: number, state, objective values, params (as text) and duration."""
    names = sorted({k for t in result.trials for k in t.params})
    columns = ["trial", "state", *result.objective_names, *names, "duration (s)"]
    data = []
    for trial in result.trials:
        values = list(trial.values or [])
        data.append([trial.number, trial.state,
                     *(_num(values[i]) if i < len(values) else None for i in range(len(result.directions))),
                     *(None if k not in trial.params else str(trial.params[k]) for k in names),
                     _num(trial.duration_s)])
    return columns, data


def _study_summary(result: StudyResult) -> dict[str, Any]:
    prefix = f"optuna/{result.name}"
    out: dict[str, Any] = {f"{prefix}/trials": len(result.trials)}
    for state, count in result.state_counts().items():
        out[f"{prefix}/{state.lower()}"] = count
    front = result.pareto_numbers()
    if len(result.directions) == 1 and front:
        best = next(t for t in result.trials if t.number == front[0])
        out.update({f"{prefix}/best_trial": best.number, f"{prefix}/best_value": (best.values or [None])[0],
                    f"{prefix}/best_params": {k: str(v) for k, v in best.params.items()}})
    return out


def _runs_summary(rows: Sequence[SettingSummary], runs: Sequence[Run], metric: str) -> dict[str, Any]:
    scored = [r for r in rows if metric in r.stats]
    out: dict[str, Any] = {"report/runs": len(runs), "report/finished": sum(r.finished for r in runs),
                           "report/settings": len(rows)}
    if scored:
        best = max(scored, key=lambda r: r.stats[metric].mean)
        out.update({"report/best_setting": best.setting, f"report/best {metric} mean": best.stats[metric].mean})
    return out


def _run_id(key: str) -> str:
    """A stable W&B run id for one study's summary (the same report command continues the same run)."""
    return "summary-" + hashlib.sha1(key.encode()).hexdigest()[:12]


def _publish(target: WandbTarget, out_dir: Path, group: str, key: str, tables: dict[str, Table],
             summary: dict[str, Any], config: dict[str, Any], files: Sequence[Path]) -> Path:
    """One summary run: tables, summary keys and the report artifact; returns the run's local folder."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    out_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=target.project, entity=target.entity, mode=target.mode, group=group,
                     job_type="study-summary", name=f"summary {group}", id=_run_id(key), resume="allow",
                     dir=str(out_dir), config=config, settings=wandb.Settings(console="off", init_timeout=60))
    try:
        run.log({name: wandb.Table(columns=columns, data=data) for name, (columns, data) in tables.items()})
        if files:
            artifact = wandb.Artifact(f"report-{_run_id(key)}", type="report", metadata={"group": group, **summary})
            for path in files:
                artifact.add_file(str(path), name=path.name)
            run.log_artifact(artifact, aliases=["latest"])
        for name, value in summary.items():
            run.summary[name] = value
        return Path(run.dir).parent
    finally:
        run.finish()


def export_report(path: str | Path, out_dir: str | Path, target: WandbTarget, baseline: str | None = None,
                  metric: str = "val/mAP", study: str | None = None, n_resamples: int = 0,
                  bootstrap_seed: int = 0) -> list[Path]:
    """Log the report of ``path`` (a sweep or run folder, or a storage URL) to W&B; the local run
    folders written. The analysis is the report's own (:func:`rtmdet_exp.analysis.report.analyse`)."""
    out = Path(out_dir)
    storage = storage_url(path)
    is_folder = "://" not in str(path) and Path(path).is_dir()
    names = sweep_metric_names(Path(path)) if is_folder else None
    studies = load_studies(storage, study, names) if storage is not None else []
    files = [p for p in sorted(out.glob("*")) if p.suffix in (".md", ".png")]
    if not is_folder:
        return [_publish(target, out, s.name, f"{path}#{s.name}", {f"optuna/{s.name}/trials": trials_table(s)},
                         _study_summary(s), {"storage": str(path), "study": s.name}, files) for s in studies]
    folder = Path(path).resolve()
    runs = load_runs(folder)
    rows, bootstraps = analyse(runs, baseline, metric, n_resamples, bootstrap_seed)
    tables = {"report/ablation": ablation_table(rows, metric), "report/comparisons": comparisons_table(rows),
              "report/seeds": seeds_table(rows, metric), "report/runs": runs_table(runs, metric, bootstraps)}
    summary = _runs_summary(rows, runs, metric)
    for result in studies:
        tables[f"optuna/{result.name}/trials"] = trials_table(result)
        summary.update(_study_summary(result))
    config = {"sweep": str(folder), "metric": metric, "baseline": baseline, "bootstrap_resamples": n_resamples}
    group = "/".join(folder.parts[-2:])
    return [_publish(target, out, group, str(folder), tables, summary, config, files)]
