"""A run's life in its folder: start fresh, resume or return a finished result; record start, end, failure.

The rules (README "Runs and resume"):

* ``resume=true``: a finished run returns its recorded metrics; a run with checkpoints continues from
  the newest valid one; if every checkpoint is invalid the run stops and lists each file and why.
  With nothing to resume, a single run stops and says where it looked (never a silent fresh start);
  a job of a resumed sweep that never started simply starts.
* ``resume=false``: a folder holding a finished run is refused; one holding an unfinished run of the
  same config is continued when ``trainer.auto_resume`` (a preempted job run again), refused if its
  defining config changed; an empty folder starts fresh.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rtmdet_exp.engine.checkpoint import CheckpointError, load_checkpoint
from rtmdet_exp.engine.validation import ValidationResult
from rtmdet_exp.experiment import rundir
from rtmdet_exp.experiment.errors import ConfigError
from rtmdet_exp.experiment.rundir import RunFolderError
from rtmdet_exp.atomic import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

FRESH, RESUME, FINISHED = "fresh", "resume", "finished"


class RunSession:
    """The run folder of one run, as the training entry point uses it (only rank 0 writes)."""

    def __init__(self, run_dir: Path, cfg: DictConfig, overrides: list[str], multirun: bool = False,
                 main: bool = True) -> None:
        self.run_dir, self.cfg, self.overrides = Path(run_dir), cfg, overrides
        self.multirun, self.main = multirun, main
        self.record: dict[str, Any] = {}
        self.last_validation: ValidationResult | None = None

    # ------------------------------------------------------------------------------ decisions
    def decide(self) -> str:
        """``fresh``, ``resume`` or ``finished`` (see the module docstring); raises when refused."""
        state = rundir.status(self.run_dir)
        has_ckpt = rundir.has_checkpoint(self.run_dir)
        if self.cfg.resume:
            if state == rundir.STATUS_FINISHED:
                changed = self._changed_since_finished()
                if not (changed and has_ckpt):
                    return FINISHED
                log.info("continuing a finished run with changed settings: %s", ", ".join(changed[:8]))
                return RESUME
            if has_ckpt:
                return RESUME
            if self.multirun:
                log.info("resume=true: job folder %s holds no checkpoint (never started): starting it", self.run_dir)
                return FRESH
            raise RunFolderError(self._nothing_to_resume())
        if state == rundir.STATUS_FINISHED:
            raise RunFolderError(
                f"{self.run_dir} already holds a finished run; pass resume=true to read its results, or leave "
                f"hydra.run.dir unset so that the run gets a new folder"
            )
        if has_ckpt:
            if not self.cfg.trainer.auto_resume:
                raise RunFolderError(f"{self.run_dir} holds a started run (checkpoints/); pass resume=true to "
                                     f"continue it, or choose another hydra.run.dir")
            return RESUME
        return FRESH

    def _changed_since_finished(self) -> list[str]:
        record = rundir.read_results(self.run_dir) or {}
        saved = record.get("config")
        return rundir.changed_keys(saved, self.record_config()) if isinstance(saved, dict) else []

    def _nothing_to_resume(self) -> str:
        parent = self.run_dir.parent
        others = sorted((p for p in parent.iterdir() if p.is_dir() and p != self.run_dir), reverse=True) \
            if parent.is_dir() else []
        finished = [p for p in others if rundir.status(p) == rundir.STATUS_FINISHED]
        seen = f"; its newest finished run is {finished[0]}" if finished else ""
        return (f"resume=true: nothing to resume for this command: {parent} holds no unfinished run with a "
                f"checkpoint{seen}. Run the same command without resume=true to start a new run.")

    def load_checkpoint(self) -> tuple[Path, dict[str, Any]]:
        """The newest valid checkpoint; every invalid one is listed with its reason when none is valid."""
        for stale in rundir.checkpoint_dir(self.run_dir).glob(".*.tmp"):  # a write cut short by a kill
            log.info("removing %s, a checkpoint write that never finished", stale)
            stale.unlink(missing_ok=True)
        problems = []
        for path in rundir.resumable_checkpoints(self.run_dir):
            try:
                payload = load_checkpoint(path)
            except CheckpointError as err:
                log.warning("skipping invalid checkpoint %s: %s", path, err)
                problems.append((path, err))
                continue
            if problems:
                log.warning("falling back to checkpoint %s (skipped invalid: %s)", path,
                            ", ".join(str(p) for p, _ in problems))
            self._check_same_config(payload)
            return path, payload
        listing = "\n".join(f"  {p}: {err}" for p, err in problems)
        raise RunFolderError(
            f"cannot resume {self.run_dir}: every checkpoint is invalid:\n{listing}\nStart the run over with "
            f"resume=false (the same command gets a new run folder), or restore a checkpoint from a copy."
        )

    def _check_same_config(self, payload: dict[str, Any]) -> None:
        """An automatic resume continues only the same experiment; ``resume=true`` may change keys."""
        saved = (payload.get("extra") or {}).get("config")
        if saved is None:
            return
        changed = rundir.changed_keys(saved, OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True))
        if changed and not self.cfg.resume:
            raise ConfigError(
                f"{self.run_dir} holds an unfinished run with other settings ({', '.join(changed[:8])}); pass "
                f"resume=true to continue it with these settings, or choose another hydra.run.dir"
            )
        if changed:
            log.warning("resuming with changed settings: %s", ", ".join(changed[:8]))

    def finished_summary(self) -> dict[str, Any]:
        record = rundir.read_results(self.run_dir) or {}
        log.info("%s finished earlier: returning its recorded metrics", self.run_dir)
        return dict(record.get("metrics") or {})

    # --------------------------------------------------------------------------------- records
    def record_config(self) -> dict[str, Any]:
        """The resolved config as plain data (stored in results.json and in every checkpoint)."""
        return OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True)

    def start(self, card: dict[str, Any], val_annotations: str | None) -> None:
        """``results.json`` with status running, the recipe card and the resolved config."""
        self.record = {
            "status": rundir.STATUS_RUNNING,
            "run_name": self.cfg.get("run_name") or ",".join(rundir.defining_overrides(self.overrides)) or "default",
            "experiment": card.get("experiment"),
            "recipe": card,
            "overrides": self.overrides,
            "val_annotations": val_annotations,
            "config": self.record_config(),
        }
        self._write()

    def finish(self, summary: dict[str, Any], per_class: dict[str, float]) -> None:
        self.record.update(status=rundir.STATUS_FINISHED, metrics=summary, per_class_AP=per_class)
        if self.last_validation is not None:  # what val_detections.json was scored on
            self.record.update(val_image_ids=self.last_validation.image_ids,
                               val_category_ids=self.last_validation.category_ids)
        self.record.pop("error", None)
        self._write()

    def fail(self, error: BaseException, status: str = rundir.STATUS_FAILED) -> None:
        if self.record:
            self.record.update(status=status, error=f"{type(error).__name__}: {error}")
            self._write()

    def _write(self) -> None:
        if self.main:
            rundir.write_results(self.run_dir, self.record)

    def on_validation(self, result: ValidationResult, epoch: int, step: int) -> None:
        """The latest validation's metrics and detections (COCO results, dataset ids) in the run folder."""
        self.last_validation = result
        if not self.main:
            return
        write_json_atomic(self.run_dir / rundir.VAL_RESULTS,
                          {"epoch": epoch, "step": step, **result.metrics, "val/per_class_AP": result.per_class_AP})
        write_text_atomic(self.run_dir / rundir.VAL_DETECTIONS, json.dumps(result.detections))
