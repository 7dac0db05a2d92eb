"""Hydra sweeper backed by an Optuna (>= 5) study, with pruning and resume.

One sweep is one Optuna study in a storage (default: SQLite ``<hydra.sweep.dir>/optuna.db``,
study ``<job name>-<sweep dir basename>``), so re-running the same command continues it (give
it a fixed ``hydra.sweep.dir``: Hydra's default contains the start time):

* ``n_trials`` is the total number of finished (COMPLETE or PRUNED) trials the study should
  reach; a run launches only the missing ones. Failed trials do not count, so a re-run retries.
* Trials left RUNNING by a killed sweep are marked FAIL at start. With several workers on one
  study (RDB storage) set ``fail_running_trials=false``: running trials are then left alone and
  each worker offsets its sampler seed by its process id.
* A job that raises, or returns something that is not a finite number, is recorded as FAIL (the
  error is logged) and the sweep goes on, unless ``max_failure_rate`` is exceeded. A job that
  raises ``optuna.TrialPruned`` (``rtmdet_exp.sweep.report`` does) is recorded as PRUNED.
* On a resumed study a sampler seed is offset by the number of trials already in it, so that
  the sampler does not replay the points of the first run.
* Job folders are named by trial number (``initial_job_idx``), so runs never overwrite each other.

The search space is ``params`` plus the command-line task overrides, in the override grammar
of the upstream hydra-optuna-sweeper: ``choice(a,b)`` / ``a,b`` -> categorical, ``range(1,10)``
-> int (or stepped float) distribution over the values Hydra's range yields (stop excluded),
``interval(0,1)`` -> float, ``tag(log, ...)`` -> log scale; any other value is fixed for all
trials (and kept as a trial user attr). A later entry for the same key wins.
Optuna is imported lazily: Hydra imports this module at every start-up, sweep or not.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
STORAGE_FILE = "optuna.db"
RESULTS_FILE = "optimization_results.yaml"


class SearchSpace:
    """Sweep params split into Optuna distributions and values fixed for every trial.

    A plain class, not a dataclass: Hydra's plugin scanner executes this module before it is
    in ``sys.modules``, where ``@dataclass`` cannot resolve postponed annotations.
    """

    def __init__(self) -> None:
        self.distributions: dict[str, BaseDistribution] = {}
        self.fixed_lines: dict[str, str] = {}  # key -> override line as given
        self.fixed_values: dict[str, Any] = {}  # key -> value (trial user attr)
        # key -> encoded choice -> override text, for list/dict choices (stored as strings in Optuna)
        self.choice_texts: dict[str, dict[str, str]] = {}

    def drop(self, key: str) -> None:
        """Forget ``key`` so that a later override of it replaces the earlier one."""
        for table in (self.distributions, self.fixed_lines, self.fixed_values, self.choice_texts):
            table.pop(key, None)


def quote(text: str) -> str:
    """Single-quote ``text`` for Hydra's override grammar so that it parses back unchanged."""
    # Backslashes are literal in a quoted string except a run before a quote or at the end.
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def value_text(value: Any) -> str:
    """Override text of a sampled value: strings quoted, None/bools in YAML spelling."""
    if isinstance(value, str):
        return quote(value)
    return Transformer.str(value)


def param_line(key: str, value: Any) -> str:
    """Override line of a ``params`` entry: strings are grammar (``choice(..)``), the rest literals."""
    if isinstance(value, str):
        return f"{key}={value}"
    return f"{key}={Transformer.str(value)}"


def distribution_from_override(override: Override) -> BaseDistribution:
    """Optuna distribution of a sweep override (choice, range or interval)."""
    import optuna.distributions as od

    sweep = override.value()
    tags = getattr(sweep, "tags", set())
    if override.is_choice_sweep():
        # sweep.list keeps the written order even under shuffle(): a resumed study needs the
        # same choices in the same order
        return od.CategoricalDistribution([Transformer.encode(x) for x in sweep.list])
    if override.is_range_sweep():
        values = list(override.sweep_iterator(transformer=Transformer.identity))
        if not values:
            raise ValueError(f"params: {override.input_line!r} is an empty range")
        if sweep.shuffle:
            return od.CategoricalDistribution(sorted(values))
        low, high, step = min(values), max(values), abs(sweep.step)
        log_scale = "log" in tags
        if log_scale and step != 1:
            raise ValueError(f"params: {override.input_line!r}: a log-scaled range needs step 1")
        if all(isinstance(v, int) for v in values):
            return od.IntDistribution(int(low), int(high), log=log_scale, step=int(step))
        if log_scale:
            raise ValueError(f"params: {override.input_line!r}: a float range cannot be log-scaled")
        return od.FloatDistribution(float(low), float(high), step=float(step))
    if override.is_interval_sweep():
        return od.FloatDistribution(float(sweep.start), float(sweep.end), log="log" in tags)
    raise ValueError(f"params: {override.input_line!r} is not a choice, range or interval sweep")


def parse_search_space(lines: Sequence[str]) -> SearchSpace:
    """Parse override lines (``params`` first, then the command line) into a search space."""
    space = SearchSpace()
    for override in OverridesParser.create().parse_overrides(list(lines)):
        key = override.get_key_element()
        space.drop(key)
        if not override.is_sweep_override():
            space.fixed_lines[key] = override.input_line
            space.fixed_values[key] = (
                None if override.value() is None else override.get_value_element_as_str()
            )
            continue
        space.distributions[key] = distribution_from_override(override)
        if override.is_choice_sweep():
            texts = {
                Transformer.encode(x): Transformer.str(x)
                for x in override.value().list
                if isinstance(x, (list, dict))
            }
            if texts:
                space.choice_texts[key] = texts
    return space


def grid_search_space(distributions: Mapping[str, BaseDistribution]) -> dict[str, list[Any]]:
    """All values of each discrete distribution, for ``optuna.samplers.GridSampler``."""
    import optuna.distributions as od

    grid: dict[str, list[Any]] = {}
    for key, dist in distributions.items():
        if isinstance(dist, od.CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, od.IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, od.FloatDistribution) and dist.step is not None:
            count = int(round((dist.high - dist.low) / dist.step)) + 1
            grid[key] = [dist.low + i * dist.step for i in range(count)]
        else:
            raise ValueError(
                f"params: the grid sampler needs discrete values, {key!r} is continuous "
                "(use choice(...) or range(...))"
            )
    return grid


def objective_values(value: Any, metrics: Sequence[str], n_objectives: int) -> list[float]:
    """The finite objective value(s) of a job's return: dict (read ``metrics``), number or sequence."""
    if isinstance(value, Mapping):
        if len(metrics) != n_objectives:
            raise ValueError(
                f"metric: {n_objectives} objective(s) need as many metric keys, got {list(metrics)}"
            )
        missing = [k for k in metrics if k not in value]
        if missing:
            raise ValueError(
                f"metric: {missing} not in the job's return value (keys: {sorted(map(str, value))})"
            )
        raw = [value[k] for k in metrics]
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        raw = list(value)
    else:
        raw = [value]
    if len(raw) != n_objectives:
        raise ValueError(f"expected {n_objectives} objective value(s), the job returned {value!r}")
    out = []
    for item in raw:
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"objective {item!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"objective {number} is not finite")
        out.append(number)
    return out


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
        fail_running_trials: bool = True,
    ) -> None:
        directions = _str_list("direction", direction)
        if any(d not in DIRECTIONS for d in directions):
            raise ValueError(f"direction: expected one of {DIRECTIONS} or a list of them, got {direction}")
        metrics = _str_list("metric", metric)
        if not isinstance(metric, str) and len(metrics) != len(directions):
            raise ValueError(f"metric: a list needs one key per direction, got {metrics} for {directions}")
        if n_trials < 1:
            raise ValueError(f"n_trials: expected >= 1, got {n_trials}")
        if n_jobs < 1:
            raise ValueError(f"n_jobs: expected >= 1, got {n_jobs}")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"max_failure_rate: expected in [0, 1], got {max_failure_rate}")
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
        self.fail_running_trials = fail_running_trials
        self.config: DictConfig | None = None
        self.launcher: Any = None

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
        storage = self.storage or f"sqlite:///{sweep_dir / STORAGE_FILE}"
        study_name = self.study_name or f"{self.config.hydra.job.name}-{sweep_dir.name}"
        study = self._open_study(storage, study_name, space)

        target = self.n_trials
        if self.is_grid:
            grid_size = math.prod(len(v) for v in grid_search_space(space.distributions).values())
            target = min(target, grid_size)
        done = len(study.get_trials(deepcopy=False, states=_finished_states()))
        to_run = max(0, target - done)
        log.info(f"Study {study_name!r} in {storage}: {done} finished trial(s), running {to_run} more")

        launched = failed = 0
        while launched < to_run:
            batch = min(self.n_jobs, to_run - launched)
            trials = [study.ask(fixed_distributions=space.distributions) for _ in range(batch)]
            overrides = [self._trial_overrides(study, t, space, study_name, storage) for t in trials]
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            except BaseException:  # e.g. an override that does not compose, or Ctrl-C
                for trial in trials:
                    tell(study, trial, _state("FAIL"))
                raise
            for trial, job_return in zip(trials, returns):
                failed += self._tell(study, trial, job_return) == _state("FAIL")
            launched += batch
            self._write_results(study, sweep_dir, final=False)
            if failed / launched > self.max_failure_rate:
                raise RuntimeError(
                    f"max_failure_rate: {failed} of {launched} trials failed "
                    f"(max_failure_rate={self.max_failure_rate}); see the errors logged above"
                )
        self._write_results(study, sweep_dir, final=True)

    def _open_study(self, storage: str, study_name: str, space: SearchSpace) -> optuna.Study:
        """Create or resume the study; fail its stale RUNNING trials; install sampler and pruner."""
        import optuna

        from rtmdet_exp.sweep import PRUNER_ATTR, build_pruner

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
                f"direction: study {study_name!r} in {storage} was created with {stored}, "
                f"not {self.directions}; use another study_name or hydra.sweep.dir"
            )
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for stale in running if self.fail_running_trials else ():
            log.warning(f"Trial {stale.number} was left RUNNING by an earlier sweep: marking it FAIL")
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        study.sampler = self._make_sampler(len(study.trials), space)
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

    def _make_sampler(self, n_existing: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
        """Build the configured sampler; on resume, offset its seed by the trials already run."""
        import optuna

        config = dict(self.sampler_config)
        if config.get("seed") is not None and n_existing:
            config["seed"] = int(config["seed"]) + n_existing
        if config.get("seed") is not None and not self.fail_running_trials:  # one of several workers
            config["seed"] = int(config["seed"]) + os.getpid()
        if self.is_grid:
            config["search_space"] = grid_search_space(space.distributions)
        sampler = instantiate(config, _convert_="all")
        if not isinstance(sampler, optuna.samplers.BaseSampler):
            raise ValueError(f"sampler: {config['_target_']!r} is not an optuna sampler")
        return sampler

    def _trial_overrides(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        space: SearchSpace,
        study_name: str,
        storage: str,
    ) -> list[str]:
        """Overrides of one job: sampled params, fixed params, and the env vars naming its trial."""
        from rtmdet_exp.sweep import ENV_STORAGE, ENV_STUDY, ENV_TRIAL

        try:
            if self.custom_search_space is not None:
                self.custom_search_space(self.config, trial)
            overlap = sorted(trial.params.keys() & space.fixed_lines.keys())
            if overlap:
                raise ValueError(f"params: {overlap} are both fixed and searched (custom_search_space)")
        except Exception:
            tell(study, trial, _state("FAIL"))
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
            f"{env}.{ENV_STUDY}={quote(study_name)}",
            f"{env}.{ENV_STORAGE}={quote(storage)}",
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
                tell(study, trial, _state("PRUNED"))
                log.info(f"Trial {trial.number} pruned: {error}")
                return _state("PRUNED")
            exc_info = error if isinstance(error, BaseException) else None
            log.error(f"Trial {trial.number} failed: {error!r}", exc_info=exc_info)
            tell(study, trial, _state("FAIL"))
            return _state("FAIL")
        try:
            values = objective_values(job_return.return_value, self.metrics, len(self.directions))
        except ValueError as error:
            log.error(f"Trial {trial.number} failed: {error}")
            tell(study, trial, _state("FAIL"))
            return _state("FAIL")
        tell(study, trial, _state("COMPLETE"), values)
        log.info(f"Trial {trial.number} finished: values {values}, params {trial.params}")
        return _state("COMPLETE")

    def _write_results(self, study: optuna.Study, sweep_dir: Path, final: bool) -> None:
        """Write the best trial (or Pareto front) to ``optimization_results.yaml``; log it if final.

        Rewritten after every batch, so that a killed sweep still leaves its results.
        """
        counts: dict[str, int] = {}
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "trials": counts}
        if len(self.directions) == 1:
            finished = study.get_trials(deepcopy=False, states=(_state("COMPLETE"),))
            best = study.best_trial if finished else None
            results.update(
                best_trial=None if best is None else best.number,
                best_params=None if best is None else dict(best.params),
                best_value=None if best is None else best.value,
            )
            if final:
                log.info(
                    f"Best trial: {results['best_trial']}, value {results['best_value']}, "
                    f"params {results['best_params']}"
                )
        else:
            front = study.best_trials
            results["solutions"] = [
                {"number": t.number, "params": dict(t.params), "values": list(t.values)} for t in front
            ]
            if final:
                log.info(f"Pareto front: {len(front)} trial(s)")
                for t in front:
                    log.info(f"    trial {t.number}: values {t.values}, params {t.params}")
        from rtmdet_exp.io import write_text_atomic

        write_text_atomic(sweep_dir / RESULTS_FILE, yaml.safe_dump(results, sort_keys=False))


def tell(
    study: optuna.Study,
    trial: optuna.Trial,
    state: optuna.trial.TrialState,
    values: list[float] | None = None,
) -> None:
    """``study.tell`` that tolerates GridSampler ending the study once its grid is exhausted.

    Optuna stores the trial's state in a ``finally`` after the sampler's ``after_trial`` hook;
    GridSampler's hook calls ``study.stop()``, which raises outside ``study.optimize``.
    """
    try:
        study.tell(trial, values=values, state=state, skip_if_finished=True)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise


def _state(name: str) -> optuna.trial.TrialState:
    """``optuna.trial.TrialState[name]``, importing Optuna lazily."""
    import optuna

    return optuna.trial.TrialState[name]


def _finished_states() -> tuple[optuna.trial.TrialState, ...]:
    """States that count towards ``n_trials``."""
    return (_state("COMPLETE"), _state("PRUNED"))
