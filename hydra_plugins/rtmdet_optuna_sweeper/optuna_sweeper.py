"""Hydra sweeper backed by an Optuna (>= 5) study: pruning, resume, and studies shared by workers.

One sweep is one Optuna study in a storage (default: SQLite ``<hydra.sweep.dir>/optuna.db``,
study ``<job name>-<sweep dir basename>``), so re-running the same command continues it (give
it a fixed ``hydra.sweep.dir``: Hydra's default contains the start time). Any number of workers
(``run.py -m`` processes, on one machine or many) may run the same command against one study in
a shared database (``hydra.sweeper.storage=postgresql://...``):

* ``n_trials`` is the number of finished (COMPLETE or PRUNED) trials the study should hold. Before
  every ask a worker counts, under a lock shared by all workers (``storage.StudyLock``), the
  finished trials and the RUNNING trials of live workers, and asks only for what is missing; when
  nothing is missing but trials are still running it waits, so that a trial lost with its worker
  is taken over. Failed trials do not count.
* Each worker beats for its running trials (``heartbeat.Heartbeat``); a RUNNING trial without a
  beat for ``stale_after`` seconds is marked FAIL by a live worker and its params are queued once
  more (``storage.RetryStaleOnce``): a killed worker costs one retry, never a double completion.
* A job that raises, or returns something that is not a finite number, is recorded as FAIL (the
  error is logged) and the sweep goes on, unless ``max_failure_rate`` is exceeded or ``n_trials``
  trials of this worker failed in a row. A job that raises ``optuna.TrialPruned``
  (``rtmdet_exp.experiment.trial.report`` does) is recorded as PRUNED.
* The sampler seed is offset by the number of sweeper starts on the study before this one, so
  workers and re-runs do not replay each other's points.
* Job folders are named by trial number (``initial_job_idx``), so runs never overwrite each other.
* With a launcher that takes jobs one at a time (``hydra/launcher=gpu_pool``) the worker keeps
  the launcher's ``workers`` trials in flight, starting one whenever one ends (``rolling``).

The search space grammar is in ``search_space``. Optuna is imported lazily: Hydra imports this
module at every start-up, sweep or not.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.rtmdet_optuna_sweeper.heartbeat import Heartbeat, worker_id
from hydra_plugins.rtmdet_optuna_sweeper.outcome import finished_states, objective_values, tell, trial_state, write_results
from hydra_plugins.rtmdet_optuna_sweeper.rolling import keeps_trials_in_flight, run_rolling
from hydra_plugins.rtmdet_optuna_sweeper.search_space import (
    SearchSpace,
    grid_search_space,
    param_line,
    parse_search_space,
    quote,
    value_text,
)
from hydra_plugins.rtmdet_optuna_sweeper.storage import RETRY_OF, WORKER_ATTR, StudyLock, open_storage, public_url

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
STORAGE_FILE = "optuna.db"
STARTS_ATTR = "rtmdet_sweeper:starts"  # study user attr: sweeper starts on this study so far

__all__ = ["OptunaSweeper", "objective_values", "parse_search_space", "quote", "tell"]


def consecutive_runs(trials: Sequence[Any]) -> list[list[Any]]:
    """Split trials into runs of consecutive numbers: one launch per run, since a launcher numbers
    its jobs ``initial_job_idx, +1, ...`` (a retry popped from the queue has an older number)."""
    runs: list[list[Any]] = []
    for trial in trials:
        if runs and trial.number == runs[-1][-1].number + 1:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


def _container(node: Any) -> Any:
    """Plain (resolved) Python value of a config node."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _str_list(name: str, value: Any) -> list[str]:
    """A string or a non-empty list of strings, as a list; ValueError naming ``name`` otherwise."""
    value = _container(value)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name}: expected a string or a non-empty list of strings, got {value!r}")
    return items


def _check_numbers(**values: float) -> None:
    """Range checks of the numeric settings; the error names the key and what is valid."""
    checks = {
        "n_trials": (values["n_trials"] >= 1, "expected >= 1"),
        "n_jobs": (values["n_jobs"] >= 1, "expected >= 1"),
        "max_failure_rate": (0.0 <= values["max_failure_rate"] <= 1.0, "expected in [0, 1]"),
        "heartbeat_interval": (values["heartbeat_interval"] >= 1, "expected >= 1 (seconds)"),
        "stale_after": (values["stale_after"] > values["heartbeat_interval"],
                        "expected more seconds than heartbeat_interval"),
    }
    for key, (ok, expected) in checks.items():
        if not ok:
            raise ValueError(f"hydra.sweeper.{key}: {expected}, got {values[key]}")


class OptunaSweeper(Sweeper):
    """``hydra/sweeper=optuna``: asks an Optuna study for trials, launches them, tells results."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: Any,
        custom_search_space: str | None,
        pruner: Any,
        metric: Any,
        load_if_exists: bool,
        heartbeat_interval: int = 10,
        stale_after: int = 60,
    ) -> None:
        directions = _str_list("direction", direction)
        if any(d not in DIRECTIONS for d in directions):
            raise ValueError(f"direction: expected one of {DIRECTIONS} or a list of them, got {direction}")
        metrics = _str_list("metric", metric)
        if not isinstance(metric, str) and len(metrics) != len(directions):
            raise ValueError(f"metric: a list needs one key per direction, got {metrics} for {directions}")
        _check_numbers(n_trials=n_trials, n_jobs=n_jobs, max_failure_rate=max_failure_rate,
                       heartbeat_interval=heartbeat_interval, stale_after=stale_after)
        sampler = _container(sampler)
        if not isinstance(sampler, Mapping) or "_target_" not in sampler:
            raise ValueError(f"sampler: expected a `_target_` node of an optuna sampler, got {sampler}")
        pruner = _container(pruner)
        if pruner is not None and (not isinstance(pruner, Mapping) or "_target_" not in pruner):
            raise ValueError(f"pruner: expected null or a `_target_` node of a pruner, got {pruner}")

        self.sampler_config: dict[str, Any] = dict(sampler)
        self.pruner_config: dict[str, Any] | None = None if pruner is None else dict(pruner)
        self.directions = directions
        self.metrics = metrics
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params: dict[str, Any] = dict(_container(params) or {})
        self.custom_search_space: Callable[[DictConfig, optuna.Trial], None] | None = (
            get_method(custom_search_space) if custom_search_space else None
        )
        self.load_if_exists = load_if_exists
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.worker = worker_id()
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self._untracked: set[int] = set()  # RUNNING trials without a worker, already warned about

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep the composed config and build the launcher that runs the trials."""
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    @property
    def is_grid(self) -> bool:
        """Whether the sampler is Optuna's GridSampler (search space and n_trials from params)."""
        return str(self.sampler_config["_target_"]).endswith("GridSampler")

    def sweep(self, arguments: list[str]) -> None:
        """Run trials until the study holds ``n_trials`` finished ones, then write the results."""
        assert self.config is not None and self.launcher is not None, "setup() was not called"
        lines = [param_line(str(k), v) for k, v in self.params.items()] + list(arguments)
        space = parse_search_space(lines)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        url = self.storage or f"sqlite:///{sweep_dir / STORAGE_FILE}"
        study_name = self.study_name or f"{self.config.hydra.job.name}-{sweep_dir.name}"
        target = self.n_trials
        if self.is_grid:
            grid_size = math.prod(len(v) for v in grid_search_space(space.distributions).values())
            target = min(target, grid_size)
        storage = open_storage(url, self.heartbeat_interval, self.stale_after)
        lock = StudyLock(url, study_name)
        try:
            with lock.hold():
                study = self._open_study(storage, study_name, space, url)
            log.info(f"Study {study_name!r} in {public_url(url)}: worker {self.worker} runs trials until "
                     f"{target} are finished (heartbeat every {self.heartbeat_interval} s, stale after "
                     f"{self.stale_after} s)")
            with Heartbeat(study, lock, self.heartbeat_interval) as heartbeat:
                heartbeat.fail_stale()
                self._run_trials(study, space, target, lock, heartbeat, sweep_dir, url)
        finally:
            lock.close()
        write_results(study, self.directions, sweep_dir, final=True)

    def _run_trials(self, study: optuna.Study, space: SearchSpace, target: int, lock: StudyLock,
                    heartbeat: Heartbeat, sweep_dir: Path, url: str) -> None:
        """Claim, launch and tell trials until the study holds ``target`` finished ones."""
        if keeps_trials_in_flight(self.launcher):
            run_rolling(self, study, space, target, lock, heartbeat, sweep_dir, url)
            return
        launched = failed = streak = 0
        waiting = False
        while True:
            trials = self._claim(study, space, target, lock, heartbeat)
            if trials is None:
                return
            if not trials:  # other workers' running trials would complete the study: stand by
                if not waiting:
                    log.info("Waiting: the trials other workers run would complete the study; standing by "
                             "in case one of them is lost")
                waiting = True
                time.sleep(self.heartbeat_interval)
                continue
            waiting = False
            for run in consecutive_runs(trials):
                for ended in self._launch(study, run, space, heartbeat, url):
                    launched += 1
                    failed += ended == trial_state("FAIL")
                    streak = streak + 1 if ended == trial_state("FAIL") else 0
            write_results(study, self.directions, sweep_dir, final=False)
            self._check_failures(launched, failed, streak)

    def _check_failures(self, launched: int, failed: int, streak: int) -> None:
        """Stop the sweep when too many of this worker's trials failed (see ``max_failure_rate``)."""
        if failed / max(launched, 1) > self.max_failure_rate or streak >= self.n_trials:
            raise RuntimeError(
                f"{failed} of the {launched} trials this worker launched failed ({streak} in a row; "
                f"max_failure_rate={self.max_failure_rate}, n_trials={self.n_trials}); see the errors above"
            )

    def _claim(self, study: optuna.Study, space: SearchSpace, target: int, lock: StudyLock,
               heartbeat: Heartbeat, slots: int | None = None) -> list[optuna.Trial] | None:
        """Under the study lock: None once ``target`` trials are finished, else the trials this
        worker may start now (up to ``slots``, default ``n_jobs``; none while running trials fill the target)."""
        with lock.hold():
            finished, running = self._count(study)
            if finished >= target:
                return None
            free = min(self.n_jobs if slots is None else slots, target - finished - running)
            return [self._ask(study, space, heartbeat) for _ in range(max(free, 0))]

    def _count(self, study: optuna.Study) -> tuple[int, int]:
        """Finished trials, and RUNNING trials of live workers (those a sweeper beats for)."""
        trials = study.get_trials(deepcopy=False, states=(*finished_states(), trial_state("RUNNING")))
        running = [t for t in trials if t.state == trial_state("RUNNING")]
        untracked = {t.number for t in running if WORKER_ATTR not in t.system_attrs} - self._untracked
        if untracked:
            log.warning(f"Trials {sorted(untracked)} are RUNNING but no sweeper worker runs them (started "
                        "elsewhere, or by a sweeper without heartbeats): not counted; mark them FAIL if "
                        "nothing runs them")
            self._untracked |= untracked
        return len(trials) - len(running), sum(WORKER_ATTR in t.system_attrs for t in running)

    def _ask(self, study: optuna.Study, space: SearchSpace, heartbeat: Heartbeat) -> optuna.Trial:
        """Ask for a trial (a queued retry first), sign it with this worker and start its heartbeat."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask(fixed_distributions=space.distributions)
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, self.worker)
        heartbeat.add(trial._trial_id)
        retry_of = storage.get_trial_system_attrs(trial._trial_id).get(RETRY_OF)
        if retry_of is not None:
            log.info(f"Trial {trial.number} retries the params of trial {retry_of}, lost with its worker")
        return trial

    def _launch(self, study: optuna.Study, trials: list[optuna.Trial], space: SearchSpace,
                heartbeat: Heartbeat, url: str) -> list[optuna.trial.TrialState]:
        """Launch trials of consecutive numbers as one batch; tell and return their states."""
        try:
            overrides = [self._trial_overrides(study, t, space, url) for t in trials]
            returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
        except BaseException:  # e.g. an override that does not compose, or Ctrl-C
            for trial in trials:
                tell(study, trial, trial_state("FAIL"))
                heartbeat.discard(trial._trial_id)
            raise
        states = []
        for trial, job_return in zip(trials, returns):
            states.append(self._tell(study, trial, job_return))
            heartbeat.discard(trial._trial_id)
        return states

    def _open_study(self, storage: optuna.storages.RDBStorage, study_name: str, space: SearchSpace,
                    url: str) -> optuna.Study:
        """Create or load the study (under the study lock); install sampler and pruner."""
        import optuna

        from rtmdet_exp.experiment.trial import PRUNER_ATTR, build_pruner

        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            sampler=optuna.samplers.RandomSampler(),
            pruner=build_pruner(self.pruner_config),
            directions=self.directions,
            load_if_exists=self.load_if_exists,
        )
        stored = [d.name.lower() for d in study.directions]
        if stored != self.directions:
            raise ValueError(
                f"direction: study {study_name!r} in {public_url(url)} was created with {stored}, "
                f"not {self.directions}; use another study_name or hydra.sweep.dir"
            )
        starts = int(study.user_attrs.get(STARTS_ATTR, 0))
        study.set_user_attr(STARTS_ATTR, starts + 1)
        study.sampler = self._make_sampler(starts, space)
        study.set_user_attr(PRUNER_ATTR, self.pruner_config)
        if len(self.metrics) == len(self.directions):  # names the objectives in reports/dashboards
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(self.metrics)
        log.info(
            f"Sampler {type(study.sampler).__name__}, pruner "
            f"{(self.pruner_config or {}).get('_target_', 'none')}, directions {self.directions}"
        )
        return study

    def _make_sampler(self, starts: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
        """Build the configured sampler, its seed offset by the sweeper starts before this one."""
        import optuna

        config = dict(self.sampler_config)
        if config.get("seed") is not None:
            config["seed"] = int(config["seed"]) + starts
        if self.is_grid:
            config["search_space"] = grid_search_space(space.distributions)
        sampler = instantiate(config, _convert_="all")
        if not isinstance(sampler, optuna.samplers.BaseSampler):
            raise ValueError(f"sampler: {config['_target_']!r} is not an optuna sampler")
        return sampler

    def _trial_overrides(self, study: optuna.Study, trial: optuna.Trial, space: SearchSpace,
                         url: str) -> list[str]:
        """Overrides of one job: sampled params, fixed params, and the env vars naming its trial."""
        from rtmdet_exp.experiment.trial import ENV_STORAGE, ENV_STUDY, ENV_TRIAL

        try:
            if self.custom_search_space is not None:
                self.custom_search_space(self.config, trial)
            overlap = sorted(trial.params.keys() & space.fixed_lines.keys())
            if overlap:
                raise ValueError(f"params: {overlap} are both fixed and searched (custom_search_space)")
        except Exception:
            tell(study, trial, trial_state("FAIL"))
            raise
        for key, value in space.fixed_values.items():
            trial.set_user_attr(key, value)
        lines = [
            f"{key}={space.choice_texts.get(key, {}).get(value) or value_text(value)}"
            for key, value in trial.params.items()
        ]
        lines += space.fixed_lines.values()
        env = "++hydra.job.env_set"
        lines += [
            f"{env}.{ENV_TRIAL}={trial.number}",
            f"{env}.{ENV_STUDY}={quote(study.study_name)}",
            f"{env}.{ENV_STORAGE}={quote(url)}",
        ]
        return lines

    def _tell(
        self, study: optuna.Study, trial: optuna.Trial, job_return: JobReturn
    ) -> optuna.trial.TrialState:
        """Record one job's outcome in the study (COMPLETE, PRUNED or FAIL) and return the state."""
        import optuna

        if job_return.status != JobStatus.COMPLETED:
            # JobReturn.return_value would re-raise; the stored exception is what we need.
            error = job_return._return_value
            if isinstance(error, optuna.TrialPruned):
                log.info(f"Trial {trial.number} pruned: {error}")
                return tell(study, trial, trial_state("PRUNED"))
            exc_info = error if isinstance(error, BaseException) else None
            log.error(f"Trial {trial.number} failed: {error!r}", exc_info=exc_info)
            return tell(study, trial, trial_state("FAIL"))
        try:
            values = objective_values(job_return.return_value, self.metrics, len(self.directions))
        except ValueError as error:
            log.error(f"Trial {trial.number} failed: {error}")
            return tell(study, trial, trial_state("FAIL"))
        log.info(f"Trial {trial.number} finished: values {values}, params {trial.params}")
        return tell(study, trial, trial_state("COMPLETE"), values)

