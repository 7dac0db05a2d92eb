"""The errors a user can cause, and the tuple the command-line tools turn into a message and exit code 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value or combination that cannot work; the message names the keys and what is valid."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that end a run with their message instead of a traceback (bad input, not a bug)."""
    from rtmdet_exp.data.coco import DataError
    from rtmdet_exp.data.validate import DatasetError
    from rtmdet_exp.engine.checkpoint import CheckpointError
    from rtmdet_exp.engine.loop import NonFiniteLossError, TerminatedError
    from rtmdet_exp.experiment.rundir import RunFolderError

    return (ConfigError, RunFolderError, DataError, DatasetError, CheckpointError, NonFiniteLossError,
            TerminatedError)
