"""``python -m rtmdet_exp.report``: the report's command line (one ``main(argv)``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rtmdet_exp.analysis.report import DEFAULT_BOOTSTRAP_SEED, DEFAULT_RESAMPLES, write_report
from rtmdet_exp.analysis.summary import DEFAULT_METRIC


def build_parser() -> argparse.ArgumentParser:
    """The report's arguments (``--help`` lists them with their defaults)."""
    parser = argparse.ArgumentParser(
        prog="python -m rtmdet_exp.report",
        description="Ablation report (report.md + PNG plots) of a sweep folder, a run folder or an Optuna storage.",
    )
    parser.add_argument("path", help="sweep folder, run folder, optuna.db, or Optuna storage URL (sqlite:///x.db)")
    parser.add_argument("--out", default=None, help="output folder (default: <folder>/report, ./report for a URL)")
    parser.add_argument("--baseline", default=None,
                        help='baseline setting, e.g. "kernel=k5" (default: the setting without overrides, '
                        "else the first job's)")
    parser.add_argument("--study", default=None, help="only this Optuna study (default: every study in the storage)")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"main metric (default {DEFAULT_METRIC})")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                        help=f"image-bootstrap resamples per run (default {DEFAULT_RESAMPLES}; 0: off)")
    parser.add_argument("--bootstrap-seed", type=int, default=DEFAULT_BOOTSTRAP_SEED, metavar="S",
                        help=f"seed of the image draws (default {DEFAULT_BOOTSTRAP_SEED})")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Write the report and print where it is; bad input exits with a one-line error (status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        report = write_report(args.path, args.out, baseline=args.baseline, metric=args.metric, study=args.study,
                              n_resamples=args.bootstrap, bootstrap_seed=args.bootstrap_seed)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(report)
    return report
