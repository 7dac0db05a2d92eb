"""Temporary aliases for code written against the old layout (removed when the redesign lands)."""

from rtmdet_exp.experiment import CONF_DIR, register  # noqa: F401
from rtmdet_exp.experiment.build import instantiate  # noqa: F401
from rtmdet_exp.experiment.errors import ConfigError  # noqa: F401
