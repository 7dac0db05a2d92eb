"""``python -m rtmdet_exp.report``: the ablation report. The code lives in :mod:`rtmdet_exp.analysis`.

This module keeps the command and the names older scripts import from here; the command line's
``main(argv)`` is :func:`rtmdet_exp.analysis.cli.main`.
"""

from rtmdet_exp.analysis import *  # noqa: F403 (the public API, re-exported)
from rtmdet_exp.analysis import __all__ as _analysis_all
from rtmdet_exp.analysis.cli import main

__all__ = [*_analysis_all, "main"]

if __name__ == "__main__":
    main()
