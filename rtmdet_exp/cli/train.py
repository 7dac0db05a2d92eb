"""What the Hydra entry does around :func:`rtmdet_exp.train.train`: readable errors, not tracebacks."""

from __future__ import annotations

import logging
import sys
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger("rtmdet_exp")



def user_errors() -> tuple[type[BaseException], ...]:
    from rtmdet_exp.config import ConfigError
    from rtmdet_exp.data.coco import DataError
    from rtmdet_exp.data.validate import DatasetError
    from rtmdet_exp.engine.checkpoint import CheckpointError
    from rtmdet_exp.engine.trainer import NonFiniteLossError, TerminatedError

    return (ConfigError, DataError, DatasetError, CheckpointError, NonFiniteLossError, TerminatedError)


def is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def run_main(cfg: DictConfig) -> dict[str, Any]:
    """Train; a known user error ends a single run with its message and exit code 2.

    In a multirun the error is raised instead, so the sweeper records the trial as failed and
    goes on with the next one.
    """
    from rtmdet_exp.train import train

    try:
        return train(cfg)
    except user_errors() as err:
        if is_multirun():
            raise
        log.error("%s: %s", type(err).__name__, err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
