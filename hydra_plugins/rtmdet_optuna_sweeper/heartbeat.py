"""The sweeper's own heartbeat for the trials it runs through ask and tell.

Optuna beats only inside ``study.optimize``. This sweeper asks and tells, so it keeps one thread
that records a heartbeat (Optuna's heartbeat table, ``RDBStorage.record_heartbeat``) every
``heartbeat_interval`` seconds for each trial it has launched and not yet told. The heartbeat
belongs to the sweeper process, not to the job: a job that trains, waits in a queue or is
requeued by SLURM keeps beating for as long as its sweeper waits for it.

The same thread fails stale trials of every worker (``optuna.storages.fail_stale_trials``, under
the study lock), so a killed worker's trial turns FAIL within ``stale_after + heartbeat_interval``
seconds of its last beat even while every live worker is busy training.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from hydra_plugins.rtmdet_optuna_sweeper.storage import StudyLock

log = logging.getLogger(__name__)


def worker_id() -> str:
    """``<host>:<pid>`` of this sweeper process: stored on each trial it runs, read by operators."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """A thread that beats for this worker's trials and fails the study's stale ones.

    Use as a context manager around the trial loop; ``add`` a trial right after asking for it
    (the first beat is recorded at once) and ``discard`` it once it is told.
    """

    def __init__(self, study: optuna.Study, lock: StudyLock, interval: float) -> None:
        self._study = study
        self._storage = study._storage  # RDBStorage: the heartbeat API lives on the storage
        self._lock = lock
        self._interval = interval
        self._trial_ids: set[int] = set()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtmdet-sweeper-heartbeat", daemon=True)

    def add(self, trial_id: int) -> None:
        """Start beating for ``trial_id`` (one beat now)."""
        self._storage.record_heartbeat(trial_id)
        with self._mutex:
            self._trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        """Stop beating for ``trial_id``."""
        with self._mutex:
            self._trial_ids.discard(trial_id)

    def fail_stale(self) -> None:
        """Fail every RUNNING trial of the study whose last beat is older than the grace period;
        the storage's stale-trial callback queues its retry."""
        import optuna

        with self._lock.hold(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self._study)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=60)  # a beat stuck on an unreachable database must not hang the exit

    def _run(self) -> None:
        """Beat, then look for stale trials, every interval until stopped; errors are logged, never fatal."""
        while not self._stop.wait(self._interval):
            with self._mutex:
                trial_ids = sorted(self._trial_ids)
            try:
                for trial_id in trial_ids:
                    self._storage.record_heartbeat(trial_id)
                self.fail_stale()
            except Exception as err:  # a database hiccup: the next beat tries again
                log.warning(f"Heartbeat of trials {trial_ids} failed: {err!r}")
