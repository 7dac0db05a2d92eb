"""Optuna studies read from their storage: trials, best trial or Pareto front, importances.

Works on any storage URL (SQLite file of a sweep folder, PostgreSQL, ...). Objective names come
from the study's ``metric_names``, else the sweep's ``hydra.sweeper.metric``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import optuna

STORAGE_FILE = "optuna.db"
MIN_TRIALS_FOR_IMPORTANCE = 4


@dataclass
class TrialRow:
    """One Optuna trial: number, state name (COMPLETE/PRUNED/FAIL/RUNNING/WAITING), params, values."""

    number: int
    state: str
    params: dict[str, Any]
    values: list[float] | None
    duration_s: float | None


@dataclass
class StudyResult:
    """One Optuna study as read from its storage, with objective names and the trials."""

    name: str
    directions: list[str]
    objective_names: list[str]
    trials: list[TrialRow]
    study: optuna.Study = field(repr=False)

    @property
    def main_objective(self) -> int:
        """Index of the mAP objective (the first name containing ``mAP``, else 0)."""
        return next((i for i, n in enumerate(self.objective_names) if "map" in n.lower()), 0)

    def state_counts(self) -> dict[str, int]:
        """Number of trials per state."""
        counts: dict[str, int] = {}
        for trial in self.trials:
            counts[trial.state] = counts.get(trial.state, 0) + 1
        return counts

    def pareto_numbers(self) -> list[int]:
        """Trial numbers of the best trial (one objective) or of the Pareto front (several)."""
        complete = [t for t in self.trials if t.state == "COMPLETE"]
        if not complete:
            return []
        if len(self.directions) == 1:
            return [self.study.best_trial.number]
        return sorted(t.number for t in self.study.best_trials)


def sweep_metric_names(folder: Path) -> list[str] | None:
    """``hydra.sweeper.metric`` from a sweep's ``multirun.yaml`` (the objective key(s))."""
    path = folder / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        metric = ((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("sweeper", {}).get("metric")
    except (yaml.YAMLError, AttributeError):
        return None
    if isinstance(metric, str):
        return [metric]
    if isinstance(metric, list) and all(isinstance(m, str) for m in metric):
        return metric
    return None


def storage_url(path: str | Path) -> str | None:
    """The Optuna storage of a URL, an ``optuna.db`` file or a sweep folder holding one; else None."""
    text = str(path)
    if "://" in text:
        return text
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / STORAGE_FILE
    if candidate.is_file() and candidate.suffix == ".db":
        return f"sqlite:///{candidate.resolve()}"
    return None


def load_studies(
    storage: str, study_name: str | None = None, objective_names: Sequence[str] | None = None
) -> list[StudyResult]:
    """Every study in ``storage`` (or only ``study_name``), one ``TrialRow`` per trial.

    Objective names come from the study's ``metric_names``, else ``objective_names`` (e.g. the
    sweep's ``hydra.sweeper.metric``) when the count matches, else ``objective <i>``.
    """
    import optuna

    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).is_file():
        raise FileNotFoundError(f"{storage}: no such SQLite file (Optuna would create an empty one)")
    names = optuna.study.get_all_study_names(storage=storage)
    if study_name is not None:
        if study_name not in names:
            raise ValueError(f"study: {study_name!r} is not in {storage}; valid values: {names}")
        names = [study_name]
    results = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
        directions = [d.name.lower() for d in study.directions]
        metric_names = study.metric_names
        if metric_names is None and objective_names is not None and len(objective_names) == len(directions):
            metric_names = list(objective_names)
        if metric_names is None:
            metric_names = [f"objective {i}" for i in range(len(directions))]
        trials = [
            TrialRow(
                number=t.number,
                state=t.state.name,
                params=dict(t.params),
                values=None if t.values is None else [float(v) for v in t.values],
                duration_s=None if t.duration is None else t.duration.total_seconds(),
            )
            for t in study.get_trials(deepcopy=False)
        ]
        results.append(StudyResult(name, directions, list(metric_names), trials, study))
    return results


def param_importances(result: StudyResult) -> tuple[dict[str, float] | None, str]:
    """Optuna parameter importances of the mAP objective, or None and the reason they are omitted.

    Needs at least ``MIN_TRIALS_FOR_IMPORTANCE`` COMPLETE trials and more than one parameter
    searched in all of them. Uses Optuna's default evaluator (PED-ANOVA in Optuna 5, no sklearn).
    """
    import optuna

    complete = [t for t in result.trials if t.state == "COMPLETE"]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (
            f"parameter importances omitted: {len(complete)} complete trial(s), "
            f"need at least {MIN_TRIALS_FOR_IMPORTANCE}"
        )
    common = set.intersection(*(set(t.params) for t in complete))
    if len(common) < 2:
        return None, f"parameter importances omitted: {len(common)} parameter(s) searched in every trial, need 2+"
    index = result.main_objective
    sign = -1.0 if result.directions[index] == "maximize" else 1.0  # the evaluator rates low targets as good
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            importances = optuna.importance.get_param_importances(
                result.study, target=lambda t: sign * t.values[index]
            )
        except (ValueError, RuntimeError, ImportError) as error:
            return None, f"parameter importances omitted: {error}"
    return dict(importances), f"importances of {result.objective_names[index]} (Optuna default evaluator)"

