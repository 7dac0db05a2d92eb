"""``python -m rtmdet_exp.preview``: see :mod:`rtmdet_exp.cli.preview`."""

from rtmdet_exp.cli.args import run
from rtmdet_exp.cli.preview import main

if __name__ == "__main__":
    run(main)
