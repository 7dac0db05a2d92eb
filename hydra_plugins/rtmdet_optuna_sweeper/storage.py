"""The study's database as several sweep workers share it: storage with heartbeats, and a lock.

``open_storage`` builds Optuna's ``RDBStorage`` with its heartbeat switched on: the sweeper records
a heartbeat for each trial it has launched and not yet told (``heartbeat.Heartbeat``), any worker
fails a RUNNING trial whose heartbeat is older than ``stale_after`` seconds, and
``RetryStaleOnce`` queues that trial's parameters once more. Heartbeat times come from the
database server's clock, so workers on machines with skewed clocks agree on what is stale.

``StudyLock`` serialises "count the study, then ask" across workers, so that concurrent workers
never launch more trials than ``n_trials`` needs, and trial numbers asked together are
consecutive. PostgreSQL: an advisory lock keyed by the study name; SQLite: ``flock`` on a file
beside the database; any other database: no lock (a few extra trials are then possible).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

WORKER_ATTR = "rtmdet_sweeper:worker"  # trial system attr: "<host>:<pid>" of the worker that runs it
RETRY_OF = "failed_trial"  # system attr Optuna's retry callback sets: number of the trial retried
MAX_RETRIES = 1  # a stale trial's parameters run again at most once


def public_url(url: str) -> str:
    """``url`` with its password masked, for logs and error messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


class RetryStaleOnce:
    """Heartbeat-stale callback: log the stale trial and queue its parameters once more.

    The retry is a WAITING trial with the same params, carrying the system attrs ``failed_trial``
    (the first trial of these params) and ``retry_history``; the next ``study.ask`` of any
    worker takes it. A retry that goes stale in turn is not retried again.
    """

    def __init__(self) -> None:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retried = len(trial.system_attrs.get("retry_history", [])) < MAX_RETRIES
        self._retry(study, trial)
        worker = trial.system_attrs.get(WORKER_ATTR, "an unknown worker")
        what = "its params are queued to run once more" if retried else "already a retry: not retried again"
        log.warning(f"Trial {trial.number} of {worker} has no heartbeat any more: marked FAIL; {what}")


def open_storage(url: str, heartbeat_interval: int, stale_after: int) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url`` with heartbeats every ``heartbeat_interval`` s and a grace
    period of ``stale_after`` s; a missing driver or a bad URL is a ValueError naming the fix."""
    import optuna
    from sqlalchemy.exc import ArgumentError, OperationalError

    shown = public_url(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_interval,
                grace_period=stale_after,
                heartbeat_stale_trial_callback=RetryStaleOnce(),
            )
    except ModuleNotFoundError as err:
        raise ValueError(
            f"hydra.sweeper.storage: {shown} needs the database driver module {err.name!r}; for "
            "PostgreSQL `pip install \"psycopg[binary]\"` (or psycopg2-binary with postgresql+psycopg2://)"
        ) from err
    except (ArgumentError, OperationalError) as err:
        raise ValueError(f"hydra.sweeper.storage: cannot open {shown}: {err}") from err


class StudyLock:
    """A lock shared by every worker of one study (usable from several threads of one worker)."""

    def __init__(self, url: str, study_name: str) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self._engine: Any = None
        self._path: Path | None = None
        self._key = int.from_bytes(hashlib.sha256(f"rtmdet_sweeper:{study_name}".encode()).digest()[:8], "big",
                                   signed=True)
        if parsed.get_backend_name() == "postgresql":
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self._engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        elif parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            self._path = Path(f"{parsed.database}.lock")
        else:
            log.warning(f"No lock for {parsed.get_backend_name()} storages: concurrent workers may run a few "
                        "trials more than n_trials")

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the duration of the ``with`` block (blocking until it is free)."""
        if self._engine is not None:
            yield from self._hold_advisory()
        elif self._path is not None:
            yield from self._hold_flock()
        else:
            yield

    def _hold_advisory(self) -> Iterator[None]:
        import sqlalchemy

        # A session-level advisory lock: released on unlock, or by the server when the
        # connection dies with a killed worker.
        with self._engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})

    def _hold_flock(self) -> Iterator[None]:
        import fcntl

        assert self._path is not None
        with self._path.open("a") as handle:  # an own open file per holder: flock excludes threads too
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release the database engine (PostgreSQL)."""
        if self._engine is not None:
            self._engine.dispose()
