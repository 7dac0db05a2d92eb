"""Temporary aliases for code written against the old layout (removed when the redesign lands)."""

from rtmdet_exp.experiment.build import build_detector  # noqa: F401
from rtmdet_exp.experiment.train import train  # noqa: F401
