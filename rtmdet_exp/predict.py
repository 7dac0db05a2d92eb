"""``python -m rtmdet_exp.predict``: see :mod:`rtmdet_exp.cli.predict`."""

from rtmdet_exp.cli.args import run
from rtmdet_exp.cli.predict import main

if __name__ == "__main__":
    run(main)
