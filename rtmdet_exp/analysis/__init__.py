"""Analysis of finished runs and studies: the ablation report's API (notebook and command line).

Modules: :mod:`runs` (run records read through ``rundir``), :mod:`stats` (tests, Holm, power),
:mod:`bootstrap` (COCO AP over resampled val images), :mod:`summary` (settings compared with the
baseline), :mod:`studies` (Optuna), :mod:`plots`, :mod:`markdown`, :mod:`report` (``report.md``)
and :mod:`cli` (``python -m rtmdet_exp.report``).
"""

from rtmdet_exp.analysis.bootstrap import Bootstraps, RunBootstrap, bootstrap_runs
from rtmdet_exp.analysis.markdown import (
    comparisons_markdown,
    failed_markdown,
    methods_markdown,
    runs_markdown,
    seeds_markdown,
    study_markdown,
    summary_markdown,
)
from rtmdet_exp.analysis.plots import plot_history, plot_importances, plot_pareto, plot_setting_bars, save_png
from rtmdet_exp.analysis.report import (
    DEFAULT_RESAMPLES,
    analyse,
    default_out_dir,
    find_latest_sweep,
    write_report,
)
from rtmdet_exp.analysis.runs import DEFAULT_SETTING, Run, load_runs, setting_of, split_overrides
from rtmdet_exp.analysis.studies import (
    StudyResult,
    TrialRow,
    load_studies,
    param_importances,
    storage_url,
    sweep_metric_names,
)
from rtmdet_exp.analysis.summary import DEFAULT_METRIC, Comparison, SettingSummary, summarize

__all__ = [
    "DEFAULT_METRIC",
    "DEFAULT_RESAMPLES",
    "DEFAULT_SETTING",
    "Bootstraps",
    "Comparison",
    "Run",
    "RunBootstrap",
    "SettingSummary",
    "StudyResult",
    "TrialRow",
    "analyse",
    "bootstrap_runs",
    "comparisons_markdown",
    "default_out_dir",
    "failed_markdown",
    "find_latest_sweep",
    "load_runs",
    "load_studies",
    "methods_markdown",
    "param_importances",
    "plot_history",
    "plot_importances",
    "plot_pareto",
    "plot_setting_bars",
    "runs_markdown",
    "save_png",
    "seeds_markdown",
    "setting_of",
    "split_overrides",
    "storage_url",
    "study_markdown",
    "summarize",
    "summary_markdown",
    "sweep_metric_names",
    "write_report",
]
