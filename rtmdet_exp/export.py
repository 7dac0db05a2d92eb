"""``python -m rtmdet_exp.export``: see :mod:`rtmdet_exp.cli.export`."""

from rtmdet_exp.cli.args import run
from rtmdet_exp.cli.export import main

if __name__ == "__main__":
    run(main)
