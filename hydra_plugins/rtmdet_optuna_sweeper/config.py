"""Structured-config schema of the ``hydra/sweeper=optuna`` plugin, registered in Hydra's ConfigStore.

The keys mirror the released ``hydra-optuna-sweeper`` (sampler, direction, storage, study_name,
n_trials, n_jobs, max_failure_rate, params, custom_search_space) and add pruning, resume and shared
studies: ``pruner``, ``metric``, ``load_if_exists``, ``heartbeat_interval`` and ``stale_after``.  Samplers live in the group ``hydra/sweeper/sampler``
(tpe, random, cmaes, nsgaii, qmc, grid) and pruners in ``hydra/sweeper/pruner``
(median, hyperband, threshold; default ``null`` = no pruning), so
``hydra/sweeper/sampler=random hydra/sweeper/pruner=median`` switches them from the command line.

Each option's keyword arguments are those of the Optuna class named by its ``_target_``
(https://optuna.readthedocs.io/en/stable/reference/samplers/index.html, .../pruners.html).
This module imports no Optuna: Hydra imports every plugin module at each start-up.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

OPTUNA_SWEEPER_TARGET = "hydra_plugins.rtmdet_optuna_sweeper.optuna_sweeper.OptunaSweeper"


@dataclass
class SamplerConfig:
    """Any ``optuna.samplers.*`` class; the seed is offset by the number of sweeper starts on the
    study before this one, so that workers sharing a study and re-runs draw different points."""

    _target_: str = MISSING  # dotted path of the sampler class
    seed: Optional[int] = None  # RNG seed; None draws a fresh one


@dataclass
class TPESamplerConfig(SamplerConfig):
    """Tree-structured Parzen Estimator, Optuna's default; seeded so that a sweep is reproducible."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = 0  # fixed so that a sweep is reproducible
    n_startup_trials: int = 10  # random trials before the TPE model is used
    n_ei_candidates: int = 24  # candidates scored by expected improvement per suggestion
    multivariate: bool = False  # model the joint distribution of the parameters
    group: bool = False  # split the space by parameter co-occurrence (needs multivariate)
    constant_liar: bool = True  # avoid suggesting the same point to trials running in parallel


@dataclass
class RandomSamplerConfig(SamplerConfig):
    """Independent uniform sampling."""

    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class CmaEsSamplerConfig(SamplerConfig):
    """CMA-ES for numeric params (categorical ones fall back to random sampling)."""

    _target_: str = "optuna.samplers.CmaEsSampler"
    sigma0: Optional[float] = None  # initial step size; None = 1/6 of the search range
    n_startup_trials: int = 1  # independent (random) trials before CMA-ES starts
    restart_strategy: Optional[str] = None  # None, "ipop" or "bipop"
    popsize: Optional[int] = None  # population size; None = CMA-ES default
    use_separable_cma: bool = False  # diagonal covariance only
    with_margin: bool = False  # keep a margin so discrete parameters keep moving
    lr_adapt: bool = False  # learning-rate adaptation for multimodal or noisy objectives


@dataclass
class NSGAIISamplerConfig(SamplerConfig):
    """NSGA-II genetic algorithm, for multi-objective studies."""

    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int = 50  # individuals per generation
    mutation_prob: Optional[float] = None  # per-parameter mutation probability; None = 1/n_params
    crossover_prob: float = 0.9  # probability that a child is made by crossover
    swapping_prob: float = 0.5  # per-parameter swap probability inside uniform crossover


@dataclass
class QMCSamplerConfig(SamplerConfig):
    """Quasi-Monte-Carlo (Sobol or Halton) low-discrepancy sampling."""

    _target_: str = "optuna.samplers.QMCSampler"
    qmc_type: str = "sobol"  # "sobol" or "halton"
    scramble: bool = False  # randomised QMC


@dataclass
class GridSamplerConfig(SamplerConfig):
    """Exhaustive grid over the discrete params (choice/range); the sweeper fills ``search_space``
    and caps ``n_trials`` at the grid size."""

    _target_: str = "optuna.samplers.GridSampler"


@dataclass
class MedianPrunerConfig:
    """Prune a trial whose best intermediate value is worse than the median of earlier trials
    at the same step."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # finished trials before pruning starts
    n_warmup_steps: int = 0  # steps of each trial that are never pruned
    interval_steps: int = 1  # check every k-th reported step
    n_min_trials: int = 1  # trials that must have reported a step before it is compared


@dataclass
class HyperbandPrunerConfig:
    """Hyperband over successive-halving brackets; a resource unit is one reported step."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1  # steps every trial gets before it can be pruned
    max_resource: Any = "auto"  # int, or "auto" = the longest finished trial's step count
    reduction_factor: int = 3  # 1/reduction_factor of the trials survive each rung
    bootstrap_count: int = 0  # trials a rung needs before it prunes


@dataclass
class ThresholdPrunerConfig:
    """Prune a trial whose intermediate value leaves [lower, upper] (or is NaN)."""

    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: Optional[float] = None  # prune below this; None = no lower bound
    upper: Optional[float] = None  # prune above this; None = no upper bound
    n_warmup_steps: int = 0  # steps of each trial that are never pruned
    interval_steps: int = 1  # check every k-th reported step


@dataclass
class OptunaSweeperConf:
    """Schema of ``hydra.sweeper`` for ``hydra/sweeper=optuna``."""

    _target_: str = OPTUNA_SWEEPER_TARGET
    # The sweeper builds sampler and pruner itself (seeding, grid search space, study attrs).
    _recursive_: bool = False
    defaults: List[Any] = field(
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": None}]
    )

    sampler: Any = MISSING  # `_target_` node of an optuna sampler (group hydra/sweeper/sampler)
    direction: Any = "maximize"  # "minimize" | "maximize", or a list of them (multi-objective)
    # Optuna storage URL (sqlite:///..., postgresql://user@host/db); None = <sweep dir>/optuna.db
    storage: Optional[str] = None
    # None = "<job name>-<sweep dir basename>", the same for a re-run of the same command
    study_name: Optional[str] = None
    n_trials: int = 20  # TOTAL finished (complete or pruned) trials the study should reach
    n_jobs: int = 1  # trials asked and launched per batch (parallelism of the launcher)
    # abort once failed / launched-by-this-worker exceeds this; 1.0 = never (but a worker always
    # stops after n_trials failures in a row)
    max_failure_rate: float = 1.0
    # Search space, key -> "choice(a,b)" | "a,b" | "range(1,10)" | "interval(0,1)"
    # | "tag(log, interval(1e-4,1e-1))" | a fixed value; command-line overrides come after and win
    params: Optional[Dict[str, Any]] = None
    # dotted path of fn(cfg: DictConfig, trial: optuna.Trial) -> None that suggests more params
    custom_search_space: Optional[str] = None
    # `_target_` node of an optuna pruner (group hydra/sweeper/pruner); null = never prune
    pruner: Any = None
    # objective key(s) read from a dict returned by the task; a float / sequence return is used as is
    metric: Any = "val/mAP_best"
    load_if_exists: bool = True  # resume a study of the same name; False = fail if it exists
    # Several workers (run.py -m processes, anywhere) may share one study: each records a heartbeat
    # for its running trials every heartbeat_interval seconds; a RUNNING trial without a beat for
    # stale_after seconds (its worker was killed) is marked FAIL by any live worker, within
    # stale_after + heartbeat_interval, and its params run once more (docs/sweeps.md).
    heartbeat_interval: int = 10  # seconds between heartbeats (and stale-trial checks)
    stale_after: int = 60  # seconds without a heartbeat before a RUNNING trial is failed (> heartbeat_interval)


def _register() -> None:
    """Store the sweeper schema and its sampler/pruner options in Hydra's ConfigStore."""
    store = ConfigStore.instance()
    provider = "rtmdet_optuna_sweeper"
    store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider=provider)
    samplers = {
        "tpe": TPESamplerConfig,
        "random": RandomSamplerConfig,
        "cmaes": CmaEsSamplerConfig,
        "nsgaii": NSGAIISamplerConfig,
        "qmc": QMCSamplerConfig,
        "grid": GridSamplerConfig,
    }
    for name, node in samplers.items():
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider=provider)
    pruners = {
        "median": MedianPrunerConfig,
        "hyperband": HyperbandPrunerConfig,
        "threshold": ThresholdPrunerConfig,
    }
    for name, node in pruners.items():
        store.store(group="hydra/sweeper/pruner", name=name, node=node, provider=provider)


_register()
