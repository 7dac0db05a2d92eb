"""Figures of the report: metric per setting, Optuna history, Pareto front, importances.

Figures are built on matplotlib's Agg canvas without pyplot, so making them changes no global
backend; a notebook shows them inline with ``display(fig)``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rtmdet_exp.analysis.studies import StudyResult
from rtmdet_exp.analysis.summary import DEFAULT_METRIC, SettingSummary
from rtmdet_exp.atomic import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def save_png(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return write_bytes_atomic(Path(path), buffer.getvalue())


def _figure(width: float, height: float) -> Figure:
    """A pyplot-free figure on the Agg canvas (no global backend change; shows inline in notebooks)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def scale_of(metric: str) -> float:
    """Display factor of a metric: AP values are shown x100 (AP points, as in the paper)."""
    return 100.0 if "map" in metric.lower() or metric.lower().endswith("ap") else 1.0


def plot_setting_bars(rows: Sequence[SettingSummary], metric: str = DEFAULT_METRIC) -> Figure:
    """Mean ``metric`` per setting with sample-std error bars; each seed a dot, failed-to-learn runs a red x."""
    shown = [r for r in rows if metric in r.stats]
    fig = _figure(max(4.0, 1.1 * len(shown) + 2.0), 4.0)
    ax = fig.add_subplot()
    if not shown:
        ax.text(0.5, 0.5, f"no finished run has {metric}", ha="center", va="center", transform=ax.transAxes)
        return fig
    scale = scale_of(metric)
    x = list(range(len(shown)))
    means = [scale * r.stats[metric].mean for r in shown]
    errors = [scale * r.stats[metric].std for r in shown]
    for i, row in enumerate(shown):  # means as squares (not bars: the axis does not start at 0)
        color = "tab:orange" if row.is_baseline else "tab:blue"
        ax.errorbar([i], [means[i]], yerr=[errors[i]], fmt="s", color=color, capsize=5, markersize=8)
        kept = [scale * s.value for s in row.per_seed if not s.failed_to_learn]
        failed = [scale * s.value for s in row.per_seed if s.failed_to_learn]
        ax.plot([i + 0.15] * len(kept), kept, "k.", markersize=6)
        ax.plot([i + 0.15] * len(failed), failed, "rx", markersize=7)
    base = next((r for r in shown if r.is_baseline), None)
    if base is not None:
        ax.axhline(scale * base.stats[metric].mean, color="tab:orange", linestyle="--", linewidth=1)
    ax.set_xticks(x, [f"{r.setting}\n(n={r.n})" for r in shown], rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(shown) - 0.5)
    ax.grid(axis="y", alpha=0.3)
    unit = " ×100" if scale == 100 else ""
    ax.set_ylabel(f"{metric}{unit}")
    ax.set_title(f"{metric} per setting: mean ± sample std over seeds\n"
                 "dots: seeds, red x: failed to learn, orange: baseline", fontsize=9)
    values = [v for m, e in zip(means, errors) for v in (m - e, m + e)]
    values += [scale * s.value for r in shown for s in r.per_seed]
    low, high = min(values), max(values)
    pad = max(0.15 * (high - low), 0.5 if scale == 100 else 1e-9 + 0.05 * abs(high))
    ax.set_ylim(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)
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

