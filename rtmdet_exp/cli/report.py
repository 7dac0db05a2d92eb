"""Ablation report of a sweep: ``python -m rtmdet_exp.report <sweep folder | run folder | storage URL> [key=value ...]``.

Writes report.md and PNG plots (default: ``<folder>/report``); ``wandb=true`` also logs the report's
tables to one W&B summary run per study (docs/sweeps.md).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from rtmdet_exp.analysis.report import DEFAULT_BOOTSTRAP_SEED, DEFAULT_RESAMPLES, write_report
from rtmdet_exp.analysis.summary import DEFAULT_METRIC
from rtmdet_exp.cli.args import Option, UsageError, as_bool, parse

OPTIONS = {
    "path": Option(None, "sweep folder, run folder, optuna.db, or Optuna storage URL (sqlite:///x.db)",
                   required=True),
    "out": Option(None, "output folder (default: <folder>/report, ./report for a URL)"),
    "baseline": Option(None, 'baseline setting, e.g. "kernel=k5" (default: the one without overrides, else the first job\'s)'),
    "study": Option(None, "only this Optuna study (default: every study in the storage)"),
    "metric": Option(DEFAULT_METRIC, "main metric"),
    "bootstrap": Option(DEFAULT_RESAMPLES, "image-bootstrap resamples per run (0: off)", int),
    "bootstrap_seed": Option(DEFAULT_BOOTSTRAP_SEED, "seed of the image draws", int),
    "wandb": Option(False, "also log the tables to a W&B summary run per study", as_bool),
    "wandb_project": Option("rtmdet-exp", "W&B project of the summary run"),
    "wandb_entity": Option(None, "W&B team or user (default: your default entity)"),
    "wandb_mode": Option("offline", "offline (wandb sync later) | online | disabled"),
}


def main(argv: Sequence[str] | None = None) -> Path:
    """Write the report and print where it is."""
    args, _ = parse(list(sys.argv[1:] if argv is None else argv), "rtmdet_exp.report", __doc__.splitlines()[0],
                    OPTIONS, positional="path")
    try:
        report = write_report(args["path"], args["out"], baseline=args["baseline"], metric=args["metric"],
                              study=args["study"], n_resamples=args["bootstrap"], bootstrap_seed=args["bootstrap_seed"])
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from error
    print(report)
    if args["wandb"]:
        from rtmdet_exp.analysis.wandb_export import WandbTarget, export_report

        target = WandbTarget(args["wandb_project"], args["wandb_entity"], args["wandb_mode"])
        for folder in export_report(args["path"], report.parent, target, baseline=args["baseline"],
                                    metric=args["metric"], study=args["study"], n_resamples=args["bootstrap"],
                                    bootstrap_seed=args["bootstrap_seed"]):
            print(f"W&B summary run: {folder}")
    return report
