"""Ablation report: tables and plots from finished runs, Hydra multirun sweeps and Optuna studies.

Reads only files (``results.json``, ``metrics.jsonl``, ``.hydra/overrides.yaml``, ``optuna.db``),
so it works offline and never needs W&B. The tables follow the paper's ablation tables
(arXiv 2212.07784, spec section 5): one row per *setting* with params, FLOPs and AP, plus the
seed statistics a single-seed paper table leaves out.

* A **setting** is a run's command-line overrides minus the seed and minus keys that do not change
  the experiment (``IGNORED_KEYS``, ``IGNORED_PREFIXES``), sorted by key and joined with ``,``
  (Hydra's ``override_dirname`` format); a run without such overrides has the setting ``default``.
  Runs of one setting with different seeds are grouped.
* **Baseline** (the row deltas are taken against): the ``baseline`` argument if given (the same
  ``key=value,key=value`` text, in any order), else the ``default`` setting if some run has no
  overrides, else the setting of the first job in the sweep. Pass the paper-default setting
  explicitly (e.g. ``--baseline kernel=k5``) when every job of the sweep overrides that axis.
* **Seed noise**: a delta is flagged "within seed noise" when ``|delta|`` is smaller than the larger
  sample standard deviation (ddof=1) of the two settings. With two or more seeds on both sides a
  Welch t-test p-value is added when scipy is installed (informative only: with 2 seeds it is weak).
* AP values are shown ×100 (AP points, as in the paper); the summary objects keep raw values.

CLI::

    python -m rtmdet_exp.report <sweep folder | run folder | sqlite:///path/optuna.db>
        [--out DIR] [--baseline "kernel=k5"] [--study NAME] [--metric val/mAP]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rtmdet_exp.io import write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

DEFAULT_METRIC = "val/mAP"
DEFAULT_SETTING = "default"
# Override keys that do not change the experiment (besides the seed, which is grouped over).
IGNORED_KEYS = frozenset({"seed", "study", "trainer.device", "data.num_workers", "resume", "run_name"})
IGNORED_PREFIXES = ("hydra.", "logger")
# Summary columns: namespaced metric keys aggregated per setting (the main metric is added).
DETAIL_METRICS = ("val/mAP50", "val/mAP75", "val/mAP_s", "val/mAP_m", "val/mAP_l")
COST_METRICS = ("perf/params", "perf/flops", "perf/macs", "perf/latency_ms", "perf/train_time_s")
STORAGE_FILE = "optuna.db"
MIN_TRIALS_FOR_IMPORTANCE = 4
_SKIP_DIRS = {".hydra", "checkpoints", "wandb", "report", "__pycache__"}


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One training run folder: its overrides, grouping keys and final metrics.

    ``finished`` is False for a run without ``results.json`` (crashed, killed or still running);
    ``reason`` then says what is known about it.
    """

    folder: Path
    overrides: list[str]
    setting: str
    seed: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    per_class_AP: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    reason: str = ""
    job: int | None = None


def split_overrides(text: str) -> list[str]:
    """Split ``a=1,b=[3,6]`` at top-level commas (not inside brackets, braces or quotes)."""
    parts: list[str] = []
    depth, quote, current = 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def override_key(override: str) -> str:
    """The config key of one override line (``++a.b=1`` -> ``a.b``, ``~a`` -> ``a``)."""
    return override.split("=", 1)[0].lstrip("+~").strip()


def _changes_experiment(override: str) -> bool:
    key = override_key(override)
    return key not in IGNORED_KEYS and key != "hydra" and not key.startswith(IGNORED_PREFIXES)


def setting_of(overrides: Sequence[str]) -> str:
    """The grouping key of a run: experiment-changing overrides sorted by key, or ``default``."""
    kept = sorted((o.strip() for o in overrides if _changes_experiment(o)), key=lambda o: (override_key(o), o))
    return ",".join(kept) if kept else DEFAULT_SETTING


def _seed_of(overrides: Sequence[str], config: dict[str, Any]) -> int | None:
    for line in overrides:
        if override_key(line) == "seed" and "=" in line:
            try:
                return int(line.split("=", 1)[1])
            except ValueError:
                return None
    seed = config.get("seed")
    return int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None


def _number(value: Any) -> float | None:
    """A metric as float (NaN/inf are stored as strings by ``write_json_atomic``); None if not numeric."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _is_run_folder(folder: Path) -> bool:
    return (
        (folder / "results.json").is_file()
        or (folder / ".hydra" / "overrides.yaml").is_file()
        or (folder / "metrics.jsonl").is_file()
    )


def _job_number(folder: Path) -> int | None:
    match = re.match(r"(\d+)(?:_|$)", folder.name)
    return int(match.group(1)) if match else None


def _last_epoch(metrics_file: Path) -> int | None:
    """Last ``epoch`` logged in ``metrics.jsonl`` (for a failed run's reason), tolerating a torn last line."""
    if not metrics_file.is_file():
        return None
    epoch = None
    for line in metrics_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), (int, float)):
            epoch = int(record["epoch"])
    return epoch


def _read_run(folder: Path) -> Run:
    overrides_file = folder / ".hydra" / "overrides.yaml"
    results_file = folder / "results.json"
    results: dict[str, Any] = {}
    reason = ""
    if results_file.is_file():
        try:
            results = json.loads(results_file.read_text())
        except json.JSONDecodeError as error:
            reason = f"unreadable results.json ({error})"
    else:
        epoch = _last_epoch(folder / "metrics.jsonl")
        where = "nothing logged" if epoch is None else f"last logged epoch {epoch}"
        reason = f"no results.json: crashed, killed or still running ({where})"
    if overrides_file.is_file():
        overrides = [str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])]
    elif "=" in str(results.get("run_name", "")):
        overrides = split_overrides(str(results["run_name"]))
    else:
        overrides = []
    config = results.get("config")
    if not isinstance(config, dict):
        hydra_config = folder / ".hydra" / "config.yaml"
        loaded = yaml.safe_load(hydra_config.read_text()) if hydra_config.is_file() else None
        config = loaded if isinstance(loaded, dict) else {}
    metrics = {k: n for k, v in (results.get("metrics") or {}).items() if (n := _number(v)) is not None}
    per_class = {k: n for k, v in (results.get("per_class_AP") or {}).items() if (n := _number(v)) is not None}
    return Run(
        folder=folder,
        overrides=overrides,
        setting=setting_of(overrides),
        seed=_seed_of(overrides, config),
        metrics=metrics,
        per_class_AP=per_class,
        config=config,
        finished=bool(results) and not reason,
        reason=reason,
        job=_job_number(folder),
    )


def _find_run_folders(root: Path, depth: int = 3) -> list[Path]:
    if _is_run_folder(root):
        return [root]
    if depth == 0:
        return []
    found: list[Path] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if child.name in _SKIP_DIRS or child.name.startswith("."):
            continue
        found.extend(_find_run_folders(child, depth - 1))
    return found


def load_runs(path: str | Path) -> list[Run]:
    """All runs under a run folder or a (multirun) sweep folder, failed ones included.

    Sorted by job number (the ``<num>_`` prefix Hydra gives job folders), then by folder name.
    Runs without ``results.json`` come back with ``finished=False`` and a ``reason``.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder (expected a run or a sweep folder)")
    runs = [_read_run(folder) for folder in _find_run_folders(root)]
    return sorted(runs, key=lambda r: (r.job is None, r.job or 0, str(r.folder)))


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1; 0 with a single value) over ``n`` seeds."""

    n: int
    mean: float
    std: float


def stat_of(values: Sequence[float]) -> Stat | None:
    """Mean and sample std of the finite values, or None when there are none."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return None
    n = len(finite)
    mean = math.fsum(finite) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
    return Stat(n=n, mean=mean, std=std)


@dataclass
class SettingSummary:
    """One row of the ablation table: a setting aggregated over its seeds."""

    setting: str
    overrides: list[str]
    n: int
    n_failed: int
    seeds: list[int | None]
    stats: dict[str, Stat]
    is_baseline: bool = False
    delta: float | None = None
    within_noise: bool | None = None
    p_value: float | None = None
    note: str = ""

    def mean(self, key: str) -> float | None:
        """Mean of metric ``key`` over seeds, None if no run has it."""
        stat = self.stats.get(key)
        return None if stat is None else stat.mean


def _welch_p(a: Stat, b: Stat) -> float | None:
    """Two-sided Welch t-test p-value from summary statistics, None without scipy or spread."""
    if a.n < 2 or b.n < 2 or (a.std == 0 and b.std == 0):
        return None
    try:
        from scipy import stats
    except ImportError:
        return None
    result = stats.ttest_ind_from_stats(a.mean, a.std, a.n, b.mean, b.std, b.n, equal_var=False)
    return float(result.pvalue)


def _resolve_baseline(settings: Sequence[str], baseline: str | None) -> str | None:
    if not settings:
        return None
    if baseline is None:
        return DEFAULT_SETTING if DEFAULT_SETTING in settings else settings[0]
    wanted = baseline.strip()
    if wanted in settings:
        return wanted
    normalised = setting_of(split_overrides(wanted))
    if normalised in settings:
        return normalised
    raise ValueError(f"baseline: {baseline!r} is not a setting of these runs; valid values: {list(settings)}")


def summarize(runs: Sequence[Run], baseline: str | None = None, metric: str = DEFAULT_METRIC) -> list[SettingSummary]:
    """One row per setting (in order of first appearance): seed statistics and delta vs the baseline.

    ``metric`` is the main metric (its stats, delta and noise note); the detail and cost metrics
    are aggregated too. Raises ValueError when ``baseline`` names no setting of ``runs``.
    """
    order: list[str] = []
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.setting not in groups:
            order.append(run.setting)
            groups[run.setting] = []
        groups[run.setting].append(run)
    base_setting = _resolve_baseline(order, baseline)
    keys = (metric, *(k for k in (*DETAIL_METRICS, *COST_METRICS) if k != metric))
    rows = []
    for setting in order:
        done = [r for r in groups[setting] if r.finished]
        stats = {}
        for key in keys:
            stat = stat_of([r.metrics[key] for r in done if key in r.metrics])
            if stat is not None:
                stats[key] = stat
        rows.append(
            SettingSummary(
                setting=setting,
                overrides=[o for o in groups[setting][0].overrides if _changes_experiment(o)],
                n=len(done),
                n_failed=len(groups[setting]) - len(done),
                seeds=[r.seed for r in done],
                stats=stats,
                is_baseline=setting == base_setting,
            )
        )
    base = next((r for r in rows if r.is_baseline), None)
    for row in rows:
        _compare(row, base, metric)
    return rows


def _compare(row: SettingSummary, base: SettingSummary | None, metric: str) -> None:
    """Fill delta, noise flag, p-value and note of ``row`` against the baseline row."""
    own = row.stats.get(metric)
    if own is None:
        row.note = "all runs failed" if row.n_failed else f"no {metric} in results"
        return
    if row.is_baseline:
        row.note = "baseline"
        return
    ref = None if base is None else base.stats.get(metric)
    if ref is None:
        row.note = "no baseline value"
        return
    row.delta = own.mean - ref.mean
    spread = max(s.std for s in (own, ref))
    if own.n < 2 and ref.n < 2:
        row.note = "n=1 on both sides: no seed spread to judge the delta"
        return
    row.within_noise = abs(row.delta) < spread
    row.p_value = _welch_p(own, ref)
    verdict = "within seed noise" if row.within_noise else "beyond seed spread"
    row.note = f"{verdict} (|Δ| {100 * abs(row.delta):.2f} vs std {100 * spread:.2f})"
    if row.p_value is not None:
        row.note += f", Welch p={row.p_value:.3g}"


# --------------------------------------------------------------------------- Optuna studies


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
    import warnings

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


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Figure:
    """A pyplot-free figure on the Agg canvas (no global backend change; shows inline in notebooks)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_setting_bars(rows: Sequence[SettingSummary], runs: Sequence[Run] = (), metric: str = DEFAULT_METRIC) -> Figure:
    """Bar chart of the mean ``metric`` (×100) per setting, error bars = sample std, seeds as dots."""
    shown = [r for r in rows if metric in r.stats]
    fig = _figure(max(4.0, 1.1 * len(shown) + 2.0), 4.0)
    ax = fig.add_subplot()
    if not shown:
        ax.text(0.5, 0.5, f"no finished run has {metric}", ha="center", va="center", transform=ax.transAxes)
        return fig
    x = list(range(len(shown)))
    means = [100 * r.stats[metric].mean for r in shown]
    errors = [100 * r.stats[metric].std if r.stats[metric].n > 1 else 0.0 for r in shown]
    colors = ["tab:orange" if r.is_baseline else "tab:blue" for r in shown]
    ax.bar(x, means, yerr=errors, capsize=4, color=colors, alpha=0.8)
    by_setting: dict[str, list[float]] = {}
    for run in runs:
        if run.finished and metric in run.metrics:
            by_setting.setdefault(run.setting, []).append(100 * run.metrics[metric])
    for i, row in enumerate(shown):
        values = by_setting.get(row.setting, [])
        ax.plot([i] * len(values), values, "k.", markersize=5)
    base = next((r for r in shown if r.is_baseline), None)
    if base is not None:
        ax.axhline(100 * base.stats[metric].mean, color="tab:orange", linestyle="--", linewidth=1)
    ax.set_xticks(x, [f"{r.setting}\n(n={r.n})" for r in shown], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} ×100")
    ax.set_title(f"{metric} per setting\nmean ± sample std over seeds, dots: seeds, orange: baseline", fontsize=9)
    low = min(m - e for m, e in zip(means, errors))
    high = max(m + e for m, e in zip(means, errors))
    pad = max(0.5, 0.15 * (high - low))
    ax.set_ylim(max(0.0, low - pad), high + pad)
    return fig


def plot_history(result: StudyResult) -> Figure:
    """Objective value(s) per trial number; best-so-far line for a single objective."""
    n_obj = len(result.directions)
    fig = _figure(6.0, 3.0 * n_obj)
    axes = fig.subplots(n_obj, 1, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        for state, color in (("COMPLETE", "tab:blue"), ("PRUNED", "tab:gray")):
            points = [(t.number, t.values[i]) for t in result.trials if t.state == state and t.values]
            if points:
                ax.scatter(*zip(*points), color=color, s=20, label=state.lower())
        complete = sorted((t.number, t.values[i]) for t in result.trials if t.state == "COMPLETE" and t.values)
        if n_obj == 1 and complete:
            pick = max if result.directions[i] == "maximize" else min
            best, line = None, []
            for number, value in complete:
                best = value if best is None else pick(best, value)
                line.append((number, best))
            line.append((max(t.number for t in result.trials), best))
            ax.step(*zip(*line), where="post", color="tab:red", label="best so far")
        failed = [t.number for t in result.trials if t.state == "FAIL"]
        for number in failed:
            ax.axvline(number, color="tab:red", alpha=0.2, linewidth=3)
        ax.set_ylabel(f"{result.objective_names[i]} ({result.directions[i]})", fontsize=8)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("trial number (red bands: failed trials)")
    axes[0].set_title(f"optimisation history: {result.name}", fontsize=9)
    return fig


def plot_pareto(result: StudyResult) -> Figure:
    """mAP objective against the other objective of a 2-objective study; Pareto trials highlighted."""
    if len(result.directions) != 2:
        raise ValueError(f"plot_pareto: study {result.name!r} has {len(result.directions)} objectives, needs 2")
    y_index = result.main_objective
    x_index = 1 - y_index
    fig = _figure(5.5, 4.0)
    ax = fig.add_subplot()
    front = set(result.pareto_numbers())
    complete = [t for t in result.trials if t.state == "COMPLETE" and t.values]
    others = [(t.values[x_index], t.values[y_index]) for t in complete if t.number not in front]
    if others:
        ax.scatter(*zip(*others), color="tab:gray", alpha=0.6, s=20, label="trial")
    best = sorted((t.values[x_index], t.values[y_index], t.number) for t in complete if t.number in front)
    if best:
        ax.scatter([b[0] for b in best], [b[1] for b in best], color="tab:red", s=40, zorder=3, label="Pareto front")
        for x, y, number in best:
            ax.annotate(f"#{number}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{result.objective_names[x_index]} ({result.directions[x_index]})")
    ax.set_ylabel(f"{result.objective_names[y_index]} ({result.directions[y_index]})")
    ax.set_title(f"Pareto front: {result.name}", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def plot_importances(importances: dict[str, float], title: str = "parameter importances") -> Figure:
    """Horizontal bars of (normalised) parameter importances, largest on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = _figure(5.5, 0.5 * len(items) + 1.5)
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:green")
    ax.set_xlabel("importance (sums to 1)")
    ax.set_title(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------- Markdown


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fmt_stat(stat: Stat | None, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` (scaled), ``mean (n=1)`` for one seed, ``—`` when missing."""
    if stat is None:
        return "—"
    if stat.n == 1:
        return f"{scale * stat.mean:.{digits}f} (n=1)"
    return f"{scale * stat.mean:.{digits}f} ± {scale * stat.std:.{digits}f}"


def _fmt_mean(stat: Stat | None, scale: float, digits: int = 2) -> str:
    return "—" if stat is None else f"{scale * stat.mean:.{digits}f}"


def summary_markdown(rows: Sequence[SettingSummary], metric: str = DEFAULT_METRIC) -> str:
    """The paper-style ablation table (main metric ×100) and a detail table (AP50/75, s/m/l, time)."""
    if not rows:
        return "_no runs_\n"
    best = max((r.stats[metric].mean for r in rows if metric in r.stats), default=None)
    latency = any("perf/latency_ms" in r.stats for r in rows)
    header = ["setting", "n", "params (M)", "FLOPs (G)", *(["latency (ms)"] if latency else [])]
    header += [f"{metric} ×100 (mean ± std)", "Δ vs baseline", "note"]
    lines = []
    for row in rows:
        name = f"{row.setting} (baseline)" if row.is_baseline else row.setting
        value = _fmt_stat(row.stats.get(metric))
        if best is not None and metric in row.stats and row.stats[metric].mean == best:
            value = f"**{value}**"
        cells = [name, f"{row.n}" + (f" (+{row.n_failed} failed)" if row.n_failed else "")]
        cells += [_fmt_mean(row.stats.get("perf/params"), 1e-6), _fmt_mean(row.stats.get("perf/flops"), 1e-9)]
        if latency:
            cells.append(_fmt_mean(row.stats.get("perf/latency_ms"), 1.0))
        delta = "—" if row.delta is None else f"{100 * row.delta:+.2f}"
        cells += [value, delta, row.note]
        lines.append(cells)
    text = _table(header, lines)
    detail_header = ["setting", *(k.split("/")[-1] + " ×100" for k in DETAIL_METRICS), "MACs (G)", "train time (min)"]
    detail = [
        [row.setting, *(_fmt_stat(row.stats.get(k)) for k in DETAIL_METRICS)]
        + [_fmt_mean(row.stats.get("perf/macs"), 1e-9), _fmt_stat(row.stats.get("perf/train_time_s"), 1 / 60, 1)]
        for row in rows
    ]
    return text + "\n" + _table(detail_header, detail)


def _run_value(run: Run, key: str, scale: float, digits: int) -> str:
    return f"{scale * run.metrics[key]:.{digits}f}" if key in run.metrics else "—"


def runs_markdown(runs: Sequence[Run], metric: str = DEFAULT_METRIC) -> str:
    """One line per run: folder, setting, seed, status and its main numbers."""
    if not runs:
        return "_no runs_\n"
    header = ["run", "setting", "seed", "status", f"{metric} ×100", "mAP50 ×100", "best epoch", "epochs"]
    rows = [
        [
            run.folder.name,
            run.setting,
            "—" if run.seed is None else run.seed,
            "finished" if run.finished else "FAILED",
            _run_value(run, metric, 100.0, 2),
            _run_value(run, "val/mAP50", 100.0, 2),
            _run_value(run, "val/best_epoch", 1.0, 0),
            _run_value(run, "epochs", 1.0, 0),
        ]
        for run in runs
    ]
    return _table(header, rows)


def failed_markdown(runs: Sequence[Run]) -> str:
    """Bullet list of runs without results (never silently dropped)."""
    failed = [r for r in runs if not r.finished]
    if not failed:
        return "_none_\n"
    return "".join(f"- `{r.folder}` (setting `{r.setting}`, seed {r.seed}): {r.reason}\n" for r in failed)


def study_markdown(result: StudyResult) -> str:
    """A study's state counts, best trial or Pareto front, and one row per trial."""
    counts = ", ".join(f"{state} {n}" for state, n in sorted(result.state_counts().items()))
    objectives = ", ".join(f"{n} ({d})" for n, d in zip(result.objective_names, result.directions))
    lines = [f"- objectives: {objectives}", f"- trials: {len(result.trials)} ({counts})"]
    front = result.pareto_numbers()
    label = "best trial" if len(result.directions) == 1 else "Pareto front (trial numbers)"
    lines.append(f"- {label}: {', '.join(f'#{n}' for n in front) if front else 'none (no complete trial)'}")
    names = sorted({k for t in result.trials for k in t.params})
    marker = "best" if len(result.directions) == 1 else "Pareto"
    header = ["trial", "state", *result.objective_names, *names, "duration (s)", marker]
    rows = []
    for trial in result.trials:
        values = trial.values or []
        rows.append(
            [
                trial.number,
                trial.state,
                *(f"{values[i]:.4g}" if i < len(values) else "—" for i in range(len(result.directions))),
                *(trial.params.get(k, "—") for k in names),
                "—" if trial.duration_s is None else f"{trial.duration_s:.1f}",
                "✓" if trial.number in front else "",
            ]
        )
    return "\n".join(lines) + "\n\n" + _table(header, rows)


# --------------------------------------------------------------------------- report


def save_png(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return write_bytes_atomic(Path(path), buffer.getvalue())


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "study"


def default_out_dir(path: str | Path) -> Path:
    """``<folder>/report`` for a run or sweep folder, ``./report`` for a storage URL."""
    if "://" in str(path):
        return Path("report")
    folder = Path(path)
    return (folder.parent if folder.is_file() else folder) / "report"


def write_report(
    path: str | Path,
    out_dir: str | Path | None = None,
    baseline: str | None = None,
    metric: str = DEFAULT_METRIC,
    study: str | None = None,
) -> Path:
    """Write ``report.md`` and its PNG plots for a run folder, a sweep folder or an Optuna storage.

    ``path`` may be a folder (its runs are tabulated; its ``optuna.db``, if any, is reported as
    well), an ``optuna.db`` file, or a storage URL. Returns the path of ``report.md``.
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir(path)
    out.mkdir(parents=True, exist_ok=True)
    is_folder = "://" not in str(path) and Path(path).is_dir()
    parts = [f"# Ablation report: `{path}`\n"]
    if is_folder:
        runs = load_runs(path)
        rows = summarize(runs, baseline, metric)
        n_done = sum(r.finished for r in runs)
        parts.append(
            f"{len(runs)} run(s): {n_done} finished, {len(runs) - n_done} failed; {len(rows)} setting(s). "
            f"AP values ×100; mean ± sample std (ddof=1) over seeds; Δ against the baseline setting; "
            f"'within seed noise' means |Δ| is below the larger std of the two settings.\n"
        )
        parts += ["## Ablation table\n", summary_markdown(rows, metric)]
        if rows:
            save_png(plot_setting_bars(rows, runs, metric), out / "map_by_setting.png")
            parts.append("\n![mean mAP per setting](map_by_setting.png)\n")
        parts += ["## Runs\n", runs_markdown(runs, metric), "\n## Failed runs\n", failed_markdown(runs)]
    storage = storage_url(path)
    if storage is not None:
        names = sweep_metric_names(Path(path)) if is_folder else None
        for result in load_studies(storage, study, names):
            parts.append(_study_section(result, out))
    elif study is not None:
        raise ValueError(f"study: {study!r} given but {path} holds no Optuna storage ({STORAGE_FILE})")
    return write_text_atomic(out / "report.md", "\n".join(parts))


def _study_section(result: StudyResult, out: Path) -> str:
    """Markdown of one study with its history, Pareto and importance plots written to ``out``."""
    stem = f"optuna_{_safe_name(result.name)}"
    parts = [f"\n## Optuna study `{result.name}`\n", study_markdown(result)]
    save_png(plot_history(result), out / f"{stem}_history.png")
    parts.append(f"\n![optimisation history]({stem}_history.png)\n")
    if len(result.directions) == 2:
        save_png(plot_pareto(result), out / f"{stem}_pareto.png")
        parts.append(f"\n![Pareto front]({stem}_pareto.png)\n")
    elif len(result.directions) > 2:
        parts.append(f"\nPareto plot omitted: {len(result.directions)} objectives (drawn for 2).\n")
    importances, note = param_importances(result)
    parts.append(f"\n### Parameter importances\n\n{note}\n")
    if importances is not None:
        parts.append("\n" + _table(["param", "importance"], [[k, f"{v:.3f}"] for k, v in importances.items()]))
        save_png(plot_importances(importances, note), out / f"{stem}_importance.png")
        parts.append(f"\n![parameter importances]({stem}_importance.png)\n")
    return "".join(parts)


def find_latest_sweep(*roots: str | Path) -> Path | None:
    """The newest ``<root>/<date>/<time>`` Hydra sweep folder under any of ``roots``, or None.

    Default roots: ``multirun`` and ``../multirun`` (a notebook's working folder is ``notebooks/``).
    """
    candidates = []
    for base in map(Path, roots or ("multirun", "../multirun")):
        if base.is_dir():
            candidates += [p for day in base.iterdir() if day.is_dir() for p in day.iterdir() if p.is_dir()]
    return max(candidates, key=lambda p: (p.parent.name, p.name), default=None)


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI entry: write the report and print where it is."""
    parser = argparse.ArgumentParser(prog="python -m rtmdet_exp.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="sweep folder, run folder, optuna.db, or Optuna storage URL (sqlite:///x.db)")
    parser.add_argument("--out", default=None, help="output folder (default: <folder>/report, ./report for a URL)")
    parser.add_argument("--baseline", default=None, help='baseline setting, e.g. "kernel=k5" (default: see module doc)')
    parser.add_argument("--study", default=None, help="only this Optuna study (default: every study in the storage)")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"main metric (default {DEFAULT_METRIC})")
    args = parser.parse_args(argv)
    report = write_report(args.path, args.out, baseline=args.baseline, metric=args.metric, study=args.study)
    print(report)
    return report


if __name__ == "__main__":
    main()
