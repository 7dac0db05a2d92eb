"""``python -m rtmdet_exp.evaluate``: see :mod:`rtmdet_exp.cli.evaluate`."""

from rtmdet_exp.cli.args import run
from rtmdet_exp.cli.evaluate import main

if __name__ == "__main__":
    run(main)
