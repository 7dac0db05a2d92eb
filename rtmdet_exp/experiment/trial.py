"""Bridge from a training job to the Optuna trial that launched it (``hydra/sweeper=optuna``).

How a job finds its trial: for every trial the sweeper adds the Hydra overrides
``++hydra.job.env_set.RTMDET_OPTUNA_TRIAL=<trial number>``, ``...RTMDET_OPTUNA_STUDY=<study name>``
and ``...RTMDET_OPTUNA_STORAGE=<storage URL>``. Hydra's ``run_job`` sets ``hydra.job.env_set``
in ``os.environ`` around the task function and restores it afterwards; it does so in the
sweeper's process for the basic launcher and in the worker for launchers that run jobs
elsewhere (joblib, submitit), so the same mechanism works for both. The job loads the study from
the storage and rebuilds the live trial with ``optuna.trial.Trial(study, trial_id)``; the pruner
the sweep was configured with is read back from the study's user attr ``PRUNER_ATTR``, which
the sweeper writes at start. The job does not beat for its trial: the sweeper process that
launched it does, for as long as its launcher holds the job (running, queued or requeued), so
a SLURM job waiting to resume is never failed as stale. The overrides (storage URL included) are
saved in each job's ``.hydra/hydra.yaml``: keep database passwords out of the URL (e.g. in ``~/.pgpass`` or
``PGPASSWORD`` for PostgreSQL) if those files are shared.

Outside an Optuna sweep the variables are unset: ``current_trial()`` is None, ``report`` does
nothing, and Optuna is not even imported.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

ENV_TRIAL = "RTMDET_OPTUNA_TRIAL"
ENV_STUDY = "RTMDET_OPTUNA_STUDY"
ENV_STORAGE = "RTMDET_OPTUNA_STORAGE"
PRUNER_ATTR = "rtmdet_sweeper/pruner"


def build_pruner(config: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """Instantiate a ``_target_`` pruner config; None means never prune.

    Optuna itself would fall back to MedianPruner for a missing pruner, hence the explicit
    NopPruner.
    """
    import optuna
    from hydra.utils import instantiate

    if config is None:
        return optuna.pruners.NopPruner()
    pruner = instantiate(dict(config))
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise ValueError(f"pruner: {config.get('_target_')!r} is not an optuna pruner")
    return pruner


def current_trial() -> optuna.Trial | None:
    """The running Optuna trial of this job, or None outside an Optuna sweep."""
    number = os.environ.get(ENV_TRIAL)
    if number is None:
        return None
    study_name = os.environ.get(ENV_STUDY)
    storage_url = os.environ.get(ENV_STORAGE)
    if not study_name or not storage_url:
        raise RuntimeError(
            f"{ENV_TRIAL}={number} is set but {ENV_STUDY} or {ENV_STORAGE} is not; "
            "they are set together by the hydra/sweeper=optuna sweeper"
        )
    return _load_trial(storage_url, study_name, int(number))


@functools.lru_cache(maxsize=4)
def _storage(storage_url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per URL and process: a sweep with the basic launcher runs
    all its trials in the sweeper's process."""
    import optuna

    return optuna.storages.RDBStorage(storage_url)


@functools.lru_cache(maxsize=1)
def _load_trial(storage_url: str, study_name: str, number: int) -> optuna.Trial:
    """Rebuild trial ``number`` of the stored study (cached: one job reports many times)."""
    import optuna

    storage = _storage(storage_url)
    study_id = storage.get_study_id_from_name(study_name)
    pruner = build_pruner(storage.get_study_user_attrs(study_id).get(PRUNER_ATTR))
    # The job never samples (the sweeper did), so a cheap sampler stands in for the real one.
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),
        pruner=pruner,
    )
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    return optuna.trial.Trial(study, trial_id)


def report(value: float, step: int) -> None:
    """Report an intermediate objective value (e.g. ``val/mAP`` after epoch ``step``).

    No-op outside an Optuna sweep and in multi-objective studies (Optuna cannot prune those).
    Raises ``optuna.TrialPruned`` when the sweep's pruner stops this trial; let it propagate:
    the sweeper records the trial as PRUNED with this last reported value.
    """
    trial = current_trial()
    if trial is None:
        return
    if len(trial.study.directions) > 1:
        warnings.warn(
            "rtmdet_exp.experiment.trial.report: multi-objective study, intermediate values are not "
            "reported and trials are never pruned",
            stacklevel=2,
        )
        return
    import optuna

    try:
        trial.report(float(value), int(step))
    except optuna.exceptions.UpdateFinishedTrialError as err:
        # A live worker failed this trial: its sweeper stopped beating for longer than
        # hydra.sweeper.stale_after, and its params now run in a retry elsewhere.
        raise RuntimeError(
            f"trial {trial.number} was already finished by another sweep worker (no heartbeat from this "
            "job's sweeper within hydra.sweeper.stale_after); stopping this job, a retry runs its params"
        ) from err
    if trial.should_prune():
        raise optuna.TrialPruned(f"trial {trial.number} pruned at step {step} (value {value})")
