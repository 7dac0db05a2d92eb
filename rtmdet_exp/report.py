"""``python -m rtmdet_exp.report``: see :mod:`rtmdet_exp.cli.report` (the code is in :mod:`rtmdet_exp.analysis`)."""

from rtmdet_exp.cli.args import run
from rtmdet_exp.cli.report import main

if __name__ == "__main__":
    run(main)
