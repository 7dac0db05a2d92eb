"""Trials kept in flight: with a launcher that takes one job at a time, a new trial starts as soon
as one ends, instead of batch after batch.

Hydra's launchers run batches: the sweeper asks ``n_jobs`` trials, waits for all of them, and
asks again, so a worker idles while the slowest trial of a batch (the one not pruned) finishes.
A launcher with ``submit(overrides, job_num) -> Future[JobReturn]`` and an int ``workers``
(``hydra/launcher=gpu_pool``) lets the sweeper keep ``workers`` trials running: whenever one
ends it is told, and the free slot gets the next trial, asked under the study lock by the same
rule as a batch (finished + running of live workers < ``n_trials``). ``hydra.sweeper.n_jobs``
is then not used: the launcher's ``workers`` is the one number of trials at once.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra_plugins.rtmdet_optuna_sweeper.outcome import tell, trial_state, write_results

if TYPE_CHECKING:
    import optuna

    from hydra_plugins.rtmdet_optuna_sweeper.heartbeat import Heartbeat
    from hydra_plugins.rtmdet_optuna_sweeper.optuna_sweeper import OptunaSweeper
    from hydra_plugins.rtmdet_optuna_sweeper.search_space import SearchSpace
    from hydra_plugins.rtmdet_optuna_sweeper.storage import StudyLock

log = logging.getLogger(__name__)


def keeps_trials_in_flight(launcher: Any) -> bool:
    """Whether ``launcher`` starts jobs one at a time (``submit``) with a fixed number of workers."""
    return callable(getattr(launcher, "submit", None)) and isinstance(getattr(launcher, "workers", None), int)


def run_rolling(sweeper: OptunaSweeper, study: optuna.Study, space: SearchSpace, target: int, lock: StudyLock,
                heartbeat: Heartbeat, sweep_dir: Path, url: str) -> None:
    """Keep ``launcher.workers`` trials running until the study holds ``target`` finished ones."""
    launcher = sweeper.launcher
    slots = launcher.workers
    if sweeper.n_jobs not in (1, slots):
        log.warning(f"hydra.sweeper.n_jobs={sweeper.n_jobs} is not used: the launcher keeps {slots} trials in "
                    "flight (set hydra.launcher.workers to change it)")
    log.info(f"Keeping {slots} trial(s) in flight: a new one starts whenever one ends")
    in_flight: dict[Future, optuna.Trial] = {}
    claimed: list[optuna.Trial] = []
    counts = {"launched": 0, "failed": 0, "streak": 0}
    waiting = False
    try:
        while True:
            trials = sweeper._claim(study, space, target, lock, heartbeat, slots=slots - len(in_flight))
            if trials is None and not in_flight:  # the study holds target finished trials
                return
            claimed = list(trials or [])
            while claimed:
                trial = claimed[0]
                future = launcher.submit(sweeper._trial_overrides(study, trial, space, url), trial.number)
                in_flight[future] = claimed.pop(0)
            if not in_flight:
                if not waiting:
                    log.info("Waiting: the trials other workers run would complete the study; standing by "
                             "in case one of them is lost")
                waiting = True
                time.sleep(sweeper.heartbeat_interval)
                continue
            waiting = False
            done, _ = wait(in_flight, timeout=sweeper.heartbeat_interval, return_when=FIRST_COMPLETED)
            for future in done:
                trial = in_flight.pop(future)
                state = sweeper._tell(study, trial, future.result())
                heartbeat.discard(trial._trial_id)
                failed = state == trial_state("FAIL")
                counts["launched"] += 1
                counts["failed"] += failed
                counts["streak"] = counts["streak"] + 1 if failed else 0
            if done:
                write_results(study, sweeper.directions, sweep_dir, final=False)
                sweeper._check_failures(counts["launched"], counts["failed"], counts["streak"])
    except BaseException:  # an error, or Ctrl-C: stop the jobs and fail their trials
        stop = getattr(launcher, "shutdown", None)
        if callable(stop):
            stop()
        for trial in [*in_flight.values(), *claimed]:
            tell(study, trial, trial_state("FAIL"))
            heartbeat.discard(trial._trial_id)
        raise
