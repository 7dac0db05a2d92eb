"""``python -m rtmdet_exp.info``: see :mod:`rtmdet_exp.cli.info`."""

from rtmdet_exp.cli.args import run
from rtmdet_exp.cli.info import main

if __name__ == "__main__":
    run(main)

