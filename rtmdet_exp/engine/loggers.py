"""Training-event subscribers: local JSONL metrics, Weights & Biases, and a no-op logger.

The trainer calls the same four events on every subscriber: ``start``, ``log_metrics``,
``log_images`` and ``finish``. A subscriber that fails (W&B misconfigured, no network, a custom
logger's bug) warns once and is switched off (:class:`Guarded`): logging never stops a training run. The W&B logger also sends the run's
best and last checkpoints as artifacts when a run finishes (read from the run folder it was
started with), so the trainer needs no checkpoint event.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class Logger:
    """Base subscriber; every event is optional."""

    def start(
        self, run_dir: Path, config: dict[str, Any], run_name: str, tags: Sequence[str], group: str | None = None
    ) -> None:
        """Called once before the first step with the flat, resolved config.

        ``group`` names the sweep a run belongs to and ``tags`` the axes the sweep varies.
        """

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Namespaced scalars (``train/loss_cls``, ``val/mAP``...) at a global step."""

    def log_images(self, images: list[dict[str, Any]], class_names: Sequence[str], step: int) -> None:
        """Validation images: dicts with ``img`` (HxWx3 BGR uint8), ``pred`` and ``gt`` box dicts."""

    def finish(self, summary: dict[str, Any], failed: bool = False) -> None:
        """Called once at the end, also after a crash (``failed=True``)."""


class NullLogger(Logger):
    """No external logger: the run folder's metrics.jsonl and results.json are the record."""


class Guarded(Logger):
    """A subscriber whose first failure, in any event, warns once and switches it off for the rest of
    the run (the run's own record is the checkpoints and results.json, not the logger)."""

    def __init__(self, logger: Logger) -> None:
        self.logger, self.alive = logger, True

    def _call(self, event: str, *args: Any, **kwargs: Any) -> None:
        if not self.alive:
            return
        try:
            getattr(self.logger, event)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - a logger never ends a run
            self.alive = False
            log.warning("logger %s failed in %s (%s: %s); it is switched off for the rest of the run",
                        type(self.logger).__name__, event, type(err).__name__, err)

    def start(
        self, run_dir: Path, config: dict[str, Any], run_name: str, tags: Sequence[str], group: str | None = None
    ) -> None:
        self._call("start", run_dir, config, run_name, tags, group)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call("log_metrics", metrics, step)

    def log_images(self, images: list[dict[str, Any]], class_names: Sequence[str], step: int) -> None:
        self._call("log_images", images, class_names, step)

    def finish(self, summary: dict[str, Any], failed: bool = False) -> None:
        self._call("finish", summary, failed)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


class JsonlLogger(Logger):
    """Appends one JSON object per ``log_metrics`` call to a ``.jsonl`` file (the run's metrics.jsonl).

    Each line is flushed and fsynced, so a killed run keeps every record written before the kill.
    On resume, records after the resumed step are dropped first (and the resumed step's validation
    records too when that validation is run again), so the file never holds a step twice; a line cut
    short by a crash or a full disk is dropped as well.
    """

    def __init__(self, path: Path, resume_step: int | None = None, redo_validation: bool = False) -> None:
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = [line for line, record in _records(self.path)
                    if record.get("step", 0) < resume_step
                    or (record.get("step", 0) == resume_step and not (redo_validation and _is_validation(record)))]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        self._file = self.path.open("a")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self, summary: dict[str, Any], failed: bool = False) -> None:
        self._file.close()


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) pairs of a jsonl file; damaged lines are dropped with a warning."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: dropping a damaged line (cut short by a crash?): %.80s", path, line)
            continue
        if isinstance(record, dict):
            out.append((line, record))
    return out


def _is_validation(record: dict[str, Any]) -> bool:
    return any(str(k).startswith("val/") for k in record)


class WandbLogger(Logger):
    """Weights & Biases subscriber, offline by default (no account or network needed).

    Sends the resolved flat config, every logged scalar, validation images with predicted and
    true boxes, and a summary with the best mAP and its epoch. When the run finishes, its
    ``best.pt`` and its newest epoch checkpoint go to the model artifact ``model-<run id>``
    (aliases ``best`` and ``last``; metadata: the flat config and the metrics of that checkpoint).
    ``mode=online`` needs a login and network; offline runs are uploaded later with ``wandb sync``.
    """

    def __init__(
        self,
        project: str = "rtmdet-exp",
        entity: str | None = None,
        mode: str = "offline",
        group: str | None = None,
        tags: Sequence[str] = (),
        log_images: bool = True,
        log_checkpoints: bool = True,
    ) -> None:
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline, online or disabled, got '{mode}'")
        self.project, self.entity, self.mode = project, entity, mode
        self.group, self.tags, self.images = group, list(tags), log_images
        self.checkpoints = log_checkpoints
        self.run: Any = None
        self.run_dir: Path | None = None
        self.config: dict[str, Any] = {}

    def _fail(self, what: str, err: BaseException) -> None:
        log.warning("W&B %s failed (%s: %s); training continues with local logging only", what, type(err).__name__, err)
        self.run = None

    def start(
        self, run_dir: Path, config: dict[str, Any], run_name: str, tags: Sequence[str], group: str | None = None
    ) -> None:
        self.run_dir, self.config = Path(run_dir), dict(config)
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=self.project,
                entity=self.entity,
                mode=self.mode,
                group=self.group or group,
                tags=list(dict.fromkeys([*self.tags, *tags])),
                name=run_name,
                dir=str(run_dir),
                config=config,
                resume="allow",
                id=_run_id(run_dir),
                settings=wandb.Settings(init_timeout=30, console="off"),
            )
        except Exception as err:  # noqa: BLE001 - any failure degrades to local logging
            self._fail("init", err)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as err:  # noqa: BLE001
            self._fail("log", err)

    def log_images(self, images: list[dict[str, Any]], class_names: Sequence[str], step: int) -> None:
        if self.run is None or not self.images or not images:
            return
        try:
            import wandb

            labels = {i: name for i, name in enumerate(class_names)}
            shown = [
                wandb.Image(
                    np.ascontiguousarray(item["img"][..., ::-1]),
                    boxes={
                        "predictions": {"box_data": _box_data(item["pred"], class_names, True), "class_labels": labels},
                        "ground_truth": {"box_data": _box_data(item["gt"], class_names, False), "class_labels": labels},
                    },
                )
                for item in images
            ]
            self.run.log({"val/images": shown}, step=step)
        except Exception as err:  # noqa: BLE001
            self._fail("image logging", err)

    def finish(self, summary: dict[str, Any], failed: bool = False) -> None:
        if self.run is None:
            return
        if self.checkpoints and not failed:
            try:
                self.log_checkpoints(summary)
            except Exception as err:  # noqa: BLE001 - the summary and the run's end still go out
                log.warning("W&B checkpoint artifacts failed (%s: %s)", type(err).__name__, err)
        try:
            for key, value in summary.items():
                self.run.summary[key] = value
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as err:  # noqa: BLE001
            self._fail("finish", err)

    def log_checkpoints(self, summary: dict[str, Any]) -> None:
        """``best.pt`` (alias ``best``) and the newest epoch checkpoint (alias ``last``) as versions of
        the artifact ``model-<run id>``, each with the flat config and its own metrics as metadata."""
        import wandb

        from rtmdet_exp.experiment import rundir

        assert self.run_dir is not None
        best_epoch = summary.get("val/best_epoch")
        best_metrics = next((r for r in reversed(rundir.read_metrics(self.run_dir))
                             if r.get("epoch") == best_epoch and "val/mAP" in r), {})
        newest = rundir.resumable_checkpoints(self.run_dir)
        entries = [("best", rundir.checkpoint_dir(self.run_dir) / rundir.BEST, best_epoch, best_metrics),
                   ("last", newest[0] if newest else None, summary.get("epochs"), summary)]
        for kind, path, epoch, metrics in entries:
            if path is None or not path.is_file():
                continue
            metadata = {"kind": kind, "file": path.name, "epoch": epoch, "run_dir": str(self.run_dir),
                        "metrics": {k: _jsonable(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                        "config": {k: _jsonable(v) for k, v in self.config.items()}}
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata=metadata)
            artifact.add_file(str(path), name=path.name)
            self.run.log_artifact(artifact, aliases=[kind])


def _run_id(run_dir: Path) -> str:
    """A stable W&B run id per run folder, so a resumed run continues the same W&B run."""
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def _box_data(boxes: dict[str, Any], class_names: Sequence[str], with_scores: bool) -> list[dict[str, Any]]:
    """W&B ``box_data`` entries (pixel coordinates) from a dict of numpy boxes/labels/scores."""
    out = []
    scores = boxes.get("scores")
    for i, (box, label) in enumerate(zip(boxes["boxes"], boxes["labels"])):
        entry: dict[str, Any] = {
            "position": {"minX": float(box[0]), "minY": float(box[1]), "maxX": float(box[2]), "maxY": float(box[3])},
            "domain": "pixel",
            "class_id": int(label),
            "box_caption": class_names[int(label)] if int(label) < len(class_names) else str(int(label)),
        }
        if with_scores and scores is not None:
            entry["scores"] = {"score": float(scores[i])}
        out.append(entry)
    return out
