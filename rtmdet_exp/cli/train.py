"""What the Hydra entry (``run.py``) does around :func:`rtmdet_exp.experiment.train.train`: messages, not tracebacks."""

from __future__ import annotations

import logging
import sys
from typing import Any

from omegaconf import DictConfig

from rtmdet_exp.experiment.context import LaunchContext

log = logging.getLogger("rtmdet_exp")


def run_main(cfg: DictConfig) -> dict[str, Any]:
    """Train; a known user error ends a single run with its message and exit code 2.

    In a multirun the error is raised instead, so the sweeper records the trial as failed and
    goes on with the next one. A single run that stops before doing anything (a refused config,
    nothing to resume, a dry run) leaves no run folder behind.
    """
    from rtmdet_exp.engine import startup

    startup.begin()
    startup.mark("launch")  # the interpreter, run.py's imports, Hydra composing the config
    from rtmdet_exp.experiment.errors import user_errors
    from rtmdet_exp.experiment.train import train

    startup.mark("imports")  # torch and everything a run needs
    context = LaunchContext.from_hydra()
    try:
        result = train(cfg, context=context)
    except user_errors() as err:
        if context.multirun:
            raise
        log.error("%s: %s", type(err).__name__, err)
        print(f"error: {err}", file=sys.stderr)
        _clean(context)
        sys.exit(2)
    if cfg.dry_run:
        _clean(context)
    else:
        log.info("run finished %.1f s after its start", startup.elapsed())
    return result


def _clean(context: LaunchContext) -> None:
    from rtmdet_exp.experiment.rundir import remove_if_unused

    if context.run_dir is not None and not context.multirun:
        remove_if_unused(context.run_dir)
