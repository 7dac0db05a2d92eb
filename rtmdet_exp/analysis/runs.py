"""Run records of a sweep or run folder, read through :mod:`rtmdet_exp.experiment.rundir`.

A **setting** is a run's defining overrides without the seed (``rundir.SETTING_FREE_KEYS``),
sorted by key and joined with ``,`` (Hydra's ``override_dirname`` format); a run without such
overrides has the setting ``default``. Runs of one setting with different seeds are grouped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtmdet_exp.experiment import rundir

DEFAULT_SETTING = "default"
_SKIP_DIRS = {rundir.HYDRA_DIR, rundir.CHECKPOINTS, "wandb", "report", "__pycache__"}
SEARCH_DEPTH = 3  # sweep/<worker>/<job> (docs/sweeps.md: "up to three folders deep")


@dataclass
class Run:
    """One training run folder: its overrides, grouping keys, final metrics and val files.

    ``status`` is rundir's (``finished``, ``failed``, ``running``: also a killed run, ``empty``);
    ``reason`` says what is known about a run that did not finish.
    """

    folder: Path
    overrides: list[str]
    setting: str
    seed: int | None
    status: str = rundir.STATUS_FINISHED
    metrics: dict[str, float] = field(default_factory=dict)
    per_class_AP: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    job: int | None = None
    val_annotations: str | None = None  # the val COCO json the run was scored on
    val_image_ids: list[int] | None = None  # images scored (None: all of val_annotations)
    val_category_ids: list[int] | None = None  # categories scored (None: all)
    labels: dict[str, Any] = field(default_factory=dict)  # non-numeric final metrics (perf/cost_kind, ...)

    @property
    def finished(self) -> bool:
        """Whether the run ended normally and has its final metrics."""
        return self.status == rundir.STATUS_FINISHED and not self.reason

    @property
    def name(self) -> str:
        """The run's folder name (job number and overrides in a multirun)."""
        return self.folder.name

    @property
    def detections(self) -> Path:
        """Where the run keeps the detections of its final validation (COCO results)."""
        return self.folder / rundir.VAL_DETECTIONS


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


def setting_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that define a setting: defining ones without the seed, sorted by key."""
    return rundir.defining_overrides(overrides, rundir.SETTING_FREE_KEYS)


def setting_of(overrides: Sequence[str]) -> str:
    """The grouping key of a run: its setting overrides joined with ``,``, or ``default``."""
    return ",".join(setting_overrides(overrides)) or DEFAULT_SETTING


def _seed_of(overrides: Sequence[str], config: dict[str, Any]) -> int | None:
    """The seed from the command line, else from the resolved config."""
    for line in overrides:
        if rundir.override_key(line) == "seed" and "=" in line:
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


def _numbers(mapping: Any) -> dict[str, float]:
    """The numeric entries of a mapping (anything else: empty)."""
    if not isinstance(mapping, dict):
        return {}
    return {str(k): n for k, v in mapping.items() if (n := _number(v)) is not None}


def _labels(mapping: Any) -> dict[str, Any]:
    """The text and true/false entries of a mapping (``perf/cost_kind``, ``perf/latency_device``, ...)."""
    if not isinstance(mapping, dict):
        return {}
    return {str(k): v for k, v in mapping.items()
            if isinstance(v, bool) or (isinstance(v, str) and _number(v) is None)}  # "nan" is a number


def _ids(value: Any) -> list[int] | None:
    """A list of integer ids, None when absent or not such a list."""
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    return None


def _job_number(folder: Path) -> int | None:
    match = re.match(r"(\d+)(?:_|$)", folder.name)
    return int(match.group(1)) if match else None


def _last_epoch(folder: Path) -> str:
    """Where a run stopped, from ``metrics.jsonl``: ``last logged epoch N`` or ``nothing logged``."""
    epochs = [r["epoch"] for r in rundir.read_metrics(folder) if isinstance(r.get("epoch"), (int, float))]
    return f"last logged epoch {int(epochs[-1])}" if epochs else "nothing logged"


def _results_and_reason(folder: Path) -> tuple[dict[str, Any], str, str]:
    """``results.json`` (or {}), the run's status and, for a run that did not finish, why."""
    try:
        results = rundir.read_results(folder)
    except rundir.RunFolderError as error:
        return {}, rundir.STATUS_FAILED, str(error)
    state = rundir.status(folder)
    if results is None:
        return {}, state, f"no results.json: crashed, killed or still running ({_last_epoch(folder)})"
    if state == rundir.STATUS_FAILED:
        return results, state, f"failed: {results.get('error') or 'no error recorded'}"
    if state != rundir.STATUS_FINISHED:
        return results, state, f"status {state!r} in results.json: still running or killed ({_last_epoch(folder)})"
    if not _numbers(results.get("metrics")):
        return results, state, "results.json has no metrics"
    return results, state, ""


def read_run(folder: Path) -> Run:
    """One run folder as a :class:`Run` (never raises for a broken run: ``reason`` says why)."""
    folder = Path(folder)
    results, state, reason = _results_and_reason(folder)
    overrides = rundir.read_overrides(folder)
    if overrides is None:
        name = str(results.get("run_name", ""))
        overrides = results.get("overrides") if isinstance(results.get("overrides"), list) else None
        overrides = [str(o) for o in overrides] if overrides else (split_overrides(name) if "=" in name else [])
    config = rundir.read_config(folder)
    annotations = results.get("val_annotations")
    return Run(
        folder=folder,
        overrides=overrides,
        setting=setting_of(overrides),
        seed=_seed_of(overrides, config),
        status=state,
        metrics=_numbers(results.get("metrics")),
        per_class_AP=_numbers(results.get("per_class_AP")),
        config=config,
        reason=reason,
        job=_job_number(folder),
        val_annotations=str(annotations) if isinstance(annotations, str) and annotations else None,
        val_image_ids=_ids(results.get("val_image_ids")),
        val_category_ids=_ids(results.get("val_category_ids")),
        labels=_labels(results.get("metrics")),
    )


def find_run_folders(root: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Run folders at or under ``root``, at most ``depth`` levels down."""
    if rundir.is_run_folder(root):
        return [root]
    if depth == 0:
        return []
    found: list[Path] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if child.name in _SKIP_DIRS or child.name.startswith("."):
            continue
        found.extend(find_run_folders(child, depth - 1))
    return found


def load_runs(path: str | Path) -> list[Run]:
    """All runs under a run folder or a (multirun) sweep folder, failed ones included.

    Sorted by job number (the ``<num>_`` prefix Hydra gives job folders), then by folder path.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder (expected a run or a sweep folder)")
    runs = [read_run(folder) for folder in find_run_folders(root)]
    return sorted(runs, key=lambda r: (r.job is None, r.job or 0, str(r.folder)))


def read_val_detections(run: Run) -> list[dict[str, Any]]:
    """The run's ``val_detections.json``, checked: a list of {image_id, category_id, bbox, score}.

    Raises ValueError naming the file, the entry and the field when the file is malformed.
    """
    path = run.detections
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (the run kept no val detections)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is unreadable: {error}") from error
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of detections, got a {type(data).__name__}")
    for index, entry in enumerate(data):
        problem = _detection_problem(entry)
        if problem:
            raise ValueError(f"{path}: entry {index}: {problem}; expected image_id, category_id (int), "
                             "bbox [x, y, w, h] and score (numbers)")
    return data


def _detection_problem(entry: Any) -> str:
    """What is wrong with one COCO detection record ('' when nothing)."""
    if not isinstance(entry, dict):
        return f"not an object ({type(entry).__name__})"
    for key in ("image_id", "category_id"):
        if not isinstance(entry.get(key), int) or isinstance(entry.get(key), bool):
            return f"{key} is {entry.get(key)!r}"
    box = entry.get("bbox")
    if not isinstance(box, list) or len(box) != 4 or any(_number(v) is None for v in box):
        return f"bbox is {box!r}"
    score = _number(entry.get("score"))
    if score is None or not math.isfinite(score):
        return f"score is {entry.get('score')!r}"
    return ""
