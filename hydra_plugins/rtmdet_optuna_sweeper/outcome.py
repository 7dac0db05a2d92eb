"""What a trial ends with: its objective values, its state in the study, and the results file.

``tell`` records a state (COMPLETE, PRUNED or FAIL); ``write_results`` writes the best trial (or
the Pareto front) to ``optimization_results.yaml`` in the sweep folder after every batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


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


def tell(
    study: optuna.Study,
    trial: optuna.Trial,
    state: optuna.trial.TrialState,
    values: list[float] | None = None,
) -> optuna.trial.TrialState:
    """``study.tell`` that returns the stored state and tolerates two things: a trial already
    finished elsewhere (a live worker failed it as stale: the outcome is dropped, with a warning),
    and GridSampler ending the study once its grid is exhausted (Optuna stores the state in a
    ``finally`` after the sampler's ``after_trial`` hook, whose ``study.stop()`` raises outside
    ``study.optimize``)."""
    try:
        stored = study.tell(trial, values=values, state=state, skip_if_finished=True).state
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise
        return state
    if stored != state:
        log.warning(f"Trial {trial.number} is already {stored.name} (its heartbeat went stale): its "
                    f"{state.name} outcome is not recorded; its params run in a retry")
    return stored


def trial_state(name: str) -> optuna.trial.TrialState:
    """``optuna.trial.TrialState[name]``, importing Optuna lazily."""
    import optuna

    return optuna.trial.TrialState[name]


def finished_states() -> tuple[optuna.trial.TrialState, ...]:
    """States that count towards ``n_trials``."""
    return (trial_state("COMPLETE"), trial_state("PRUNED"))


def write_results(study: optuna.Study, directions: Sequence[str], sweep_dir: Path, final: bool) -> None:
    """Write the best trial (or Pareto front) to ``optimization_results.yaml``; log it if final.

    Rewritten after every batch, so that a killed sweep still leaves its results.
    """
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "trials": counts}
    if len(directions) == 1:
        finished = study.get_trials(deepcopy=False, states=(trial_state("COMPLETE"),))
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
    from rtmdet_exp.atomic import write_text_atomic  # lazily: Hydra imports this module at every start-up

    write_text_atomic(sweep_dir / RESULTS_FILE, yaml.safe_dump(results, sort_keys=False))
