"""The training loop: epochs of steps, checkpoints, validation and resume, with loggers as subscribers.

It knows nothing of configs, files names or Optuna: the experiment layer hands in built objects,
a :class:`LoopSettings`, a checkpoint store (where and under which names checkpoints go) and
callbacks (what happens with a validation's result). Faults a long sweep meets are handled here:
non-finite steps are skipped and counted (the run stops after ``max_bad_steps`` in a row), SIGTERM
saves a resumable checkpoint before exiting, an epoch's checkpoint is written *before* its
validation so that a crash there loses no training (a failing logger is switched off by its
:class:`~rtmdet_exp.engine.loggers.Guarded` wrapper instead of ending the run).

Throughput: the step (:class:`~rtmdet_exp.engine.step.TrainStep`, which also updates the EMA) needs no
host sync; the loop reads device values only at logging steps, and checkpoints are copied to host
memory and written by a background thread (:class:`~rtmdet_exp.engine.checkpoint.BackgroundWriter`),
so training goes on while the file is serialised and fsynced. The log carries ``perf/startup_s``
(process start to the end of the first step, with its phases: :mod:`rtmdet_exp.engine.startup`) and
``perf/val_time_s`` (each validation's wall time).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from rtmdet_exp.engine import startup
from rtmdet_exp.engine.checkpoint import (
    BackgroundWriter,
    capture_rng_state,
    restore_rng_state,
    snapshot,
)
from rtmdet_exp.engine.ema import ModelEMA, unwrap_model
from rtmdet_exp.engine.loggers import Logger
from rtmdet_exp.engine.progress import EpochProgress, RunClock
from rtmdet_exp.engine.step import StepTimer, TrainStep
from rtmdet_exp.engine.validation import ValidationResult

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive steps with a NaN/inf loss or gradient."""


class TerminatedError(RuntimeError):
    """Raised after SIGTERM once a resumable checkpoint is on disk."""


class ValidationFailedError(RuntimeError):
    """Validation raised after the epoch's checkpoint was written; the message says how to resume."""


@dataclass
class LoopSettings:
    """What the loop needs to know about the run (built from the config by the experiment layer)."""

    max_epochs: int
    val_interval: int = 10
    stage2_val_interval: int = 1
    log_interval: int = 10
    checkpoint_interval: int = 1
    checkpoint_interval_steps: int | None = None
    max_bad_steps: int = 5
    grad_clip: float | None = None
    limit_train_batches: int | None = None
    switch_epoch: int | None = None  # first 0-based epoch of the weak-augmentation stage
    val_subset: int | None = None  # intermediate validations score only the first N val images


@dataclass
class FitState:
    """What a checkpoint must carry to continue a run exactly."""

    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # batches of the current epoch already trained
    step: int = 0  # optimiser steps so far
    bad_steps: int = 0  # consecutive non-finite steps
    skipped_steps: int = 0  # non-finite steps skipped in total
    best_map: float = -1.0  # best val/mAP so far
    best_epoch: int = -1  # epoch (1-based) of best_map
    train_time_s: float = 0.0  # training wall time so far, resumes included
    images_seen: int = 0  # training images so far (all ranks)
    pending_validation: bool = False  # the checkpointed epoch's validation had not finished
    val_time_s: float = 0.0  # wall time spent in validation so far


class CheckpointStore(Protocol):
    """Where checkpoints go: ``save(kind, payload, epoch, step)`` with kind epoch|step|interrupt|best."""

    def save(self, kind: str, payload: dict[str, Any], epoch: int, step: int) -> Path: ...

    def resumable(self) -> list[Path]: ...


ValidationCallback = Callable[[ValidationResult, int, int], None]  # (result, epochs done, step)


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@dataclass
class Trainer:
    """Runs :meth:`fit` over a data module (``train_loader(epoch, start_batch, end_epoch=, max_batches=)``,
    ``steps_per_epoch``).

    ``validate(model) -> ValidationResult`` scores a model on the validation set (rank 0 only);
    ``on_validation`` callbacks receive each result (files, sweep reports, images for loggers).
    """

    step: TrainStep
    data: Any
    validate: Callable[..., ValidationResult]  # (model, max_images=None) -> result
    settings: LoopSettings
    checkpoints: CheckpointStore
    ema: ModelEMA | None = None
    loggers: Sequence[Logger] = ()
    on_validation: Sequence[ValidationCallback] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # plain data saved in every checkpoint
    state: FitState = field(default_factory=FitState)
    resumed_extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._terminate = False
        self._bad: torch.Tensor | None = None  # on-device skip counters, see _track_bad_steps
        self.resumed_from: Path | None = None
        self._writer = BackgroundWriter()
        self._startup: dict[str, float] | None = None  # measured at the first step, logged with the next record
        self.startup_s: float | None = None  # process (or run) start to the end of the first step
        self._first_step_done = False
        self._stream: Iterator[dict[str, Any]] | None = None  # training batches, across epochs
        self._stream_at: tuple[int, int] | None = None  # (epoch, batch) the stream yields next
        self._clock: RunClock | None = None  # the run's remaining training time, for the log

    # ------------------------------------------------------------------------------ checkpoints
    def payload(self) -> dict[str, Any]:
        return {
            **self.step.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "state": vars(self.state).copy(),
            "rng": capture_rng_state(),
            "extra": self.extra,
        }

    def save(self, kind: str, wait: bool = False) -> Path | None:
        """Write a checkpoint from rank 0: the state is copied now, the file written in the background.

        ``wait`` returns only once the file is on disk (and returns its path).
        """
        if not is_main_process():
            return None
        payload, epoch, step = snapshot(self.payload()), self.state.epoch, self.state.step
        self._writer.submit(lambda: self.checkpoints.save(kind, payload, epoch, step))
        return self._writer.wait() if wait else None

    def load(self, path: Path, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint ``payload`` (read and verified by the caller from ``path``)."""
        self.step.load_state_dict(payload)
        if self.ema and payload.get("ema"):
            self.ema.load_state_dict(payload["ema"])
        known = set(vars(FitState()))
        self.state = FitState(**{k: v for k, v in payload["state"].items() if k in known})
        self.resumed_extra = payload.get("extra") or {}
        restore_rng_state(payload["rng"])
        self.resumed_from = path
        log.info("resumed from %s at epoch %d, step %d", path, self.state.epoch, self.state.step)

    # ------------------------------------------------------------------------------------ fit
    def fit(self) -> ValidationResult | None:
        """Train to ``max_epochs`` (or on from a resumed state); the last validation's result."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            result = self._fit()
            self._writer.wait()  # the last checkpoint is on disk (or its error raised) before fit returns
            return result
        finally:
            self._flush_writer()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _flush_writer(self) -> None:
        """After an error elsewhere: let a queued checkpoint finish; its own error is only logged."""
        try:
            self._writer.wait()
        except Exception as err:  # noqa: BLE001 - the error that ended the run is the one raised
            log.error("a background checkpoint write failed as well: %s", err)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: saving a checkpoint after this step, then stopping")
        self._terminate = True

    def _fit(self) -> ValidationResult | None:
        result = None
        if self.state.pending_validation:  # resumed from a checkpoint whose validation never finished
            result = self._validate()
        self._clock = RunClock(self.settings.max_epochs * self.epoch_length())
        while self.state.epoch < self.settings.max_epochs:
            trained_s = self.state.train_time_s
            self._train_epoch(self.state.epoch)
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
            line = self._clock.epoch_end(self.state.epoch, self.settings.max_epochs, self.state.step,
                                         self.state.train_time_s - trained_s)
            if line and is_main_process():
                log.info("%s", line)
            due = self._validation_due(self.state.epoch)
            self.state.pending_validation = due
            if due or self.state.epoch % self.settings.checkpoint_interval == 0 or self._last_epoch():
                self.save("epoch")
            if due:
                result = self._validate()
        return result

    def _last_epoch(self) -> bool:
        return self.state.epoch >= self.settings.max_epochs

    def _validation_due(self, epochs_done: int) -> bool:
        if epochs_done >= self.settings.max_epochs:
            return True
        switch = self.settings.switch_epoch
        interval = self.settings.stage2_val_interval if switch is not None and epochs_done > switch else \
            self.settings.val_interval
        return interval > 0 and epochs_done % interval == 0

    def _batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        """This epoch's remaining batches, taken from one loader iterator that runs across epochs.

        The iterator is made once (and again after anything broke its order): the workers prepare
        the next epoch's first batches while this one is checkpointed and validated.
        """
        here = (epoch, self.state.batch_in_epoch)
        if self._stream is None or self._stream_at != here:  # first epoch, resume, or an interrupted epoch
            loader = self.data.train_loader(epoch, start_batch=here[1], end_epoch=self.settings.max_epochs,
                                            max_batches=self.settings.limit_train_batches)
            self._stream, self._stream_at = iter(loader), here
        total = self.epoch_length()
        for i in range(here[1], total):
            self._stream_at = None  # unknown until the batch is in hand
            batch = next(self._stream)
            self._stream_at = (epoch, i + 1) if i + 1 < total else (epoch + 1, 0)
            yield batch

    def epoch_length(self) -> int:
        total = self.data.steps_per_epoch
        limit = self.settings.limit_train_batches
        return total if limit is None else min(total, limit)

    def _train_epoch(self, epoch: int) -> None:
        total = self.epoch_length()
        self.step.train()
        timer = StepTimer(self.step.device)
        with EpochProgress(epoch, self.settings.max_epochs, total, enabled=is_main_process()) as progress:
            progress.advance(self.state.batch_in_epoch)
            batches = timer.wrap(self._batches(epoch))
            for batch in batches:
                if not self._first_step_done:
                    startup.mark("first_batch")
                out = self.step(batch)
                self._after_step(out, batch, timer, epoch, total, progress)
                if self._terminate:
                    path = self.save("interrupt", wait=True)
                    raise TerminatedError(f"stopped by SIGTERM in epoch {epoch + 1} after step {self.state.step}; "
                                          f"saved {path}; resume with the same command and resume=true")
        self.state.train_time_s += timer.total_s

    def _after_step(self, out: dict[str, Any], batch: dict[str, Any], timer: StepTimer, epoch: int, total: int,
                    progress: EpochProgress) -> None:
        self.state.step += 1
        self.state.batch_in_epoch += 1
        self.state.images_seen += int(batch["images"].shape[0]) * _world_size()
        self._track_bad_steps(out["found_inf"])
        self._writer.raise_if_failed()
        if not self._first_step_done:
            self._first_step_done = True
            self._startup = startup.finish(self.step.device)
            self.startup_s = self._startup["perf/startup_s"]
            if is_main_process():
                log.info("%s", startup.describe(self._startup))
            if self._clock is not None:
                self._clock.start(self.state.step)
        elif self._clock is not None and is_main_process():
            line = self._clock.early(self.state.step)
            if line:
                log.info("%s", line)
        at_log = self.state.step % self.settings.log_interval == 0 or self.state.batch_in_epoch == total
        if at_log:
            record = {f"train/{k}": float(v) for k, v in out["losses"].items()}
            record.update({"train/loss": float(out["loss"]), "train/lr": out["lr"], **timer.report()})
            if self._startup is not None:
                record.update(self._startup)
                self._startup = None
            record["epoch"] = epoch + self.state.batch_in_epoch / max(total, 1)
            self._log(record)
            progress.update(loss=record["train/loss"], lr=out["lr"])
        if at_log or out["finite"] is False:
            self._check_bad_steps(out)
        progress.advance(1)
        every = self.settings.checkpoint_interval_steps
        if every and self.state.step % every == 0 and self.state.batch_in_epoch < total:
            self.save("step")

    def _track_bad_steps(self, found_inf: torch.Tensor) -> None:
        """Count skipped steps on the device: [consecutive, total, last bad step] (read at log steps)."""
        if self._bad is None:
            self._bad = torch.tensor([self.state.bad_steps, self.state.skipped_steps, 0.0], device=found_inf.device)
        bad, step = self._bad, float(self.state.step)
        consecutive = (bad[0] + 1) * found_inf
        self._bad = torch.stack((consecutive, bad[1] + found_inf, torch.where(found_inf > 0, step, bad[2])))

    def _check_bad_steps(self, out: dict[str, Any]) -> None:
        """Read the skip counters (one sync, at a logging step); stop after ``max_bad_steps`` in a row."""
        consecutive, total, last = (int(v) for v in self._bad.tolist())
        new = total - self.state.skipped_steps
        self.state.skipped_steps, self.state.bad_steps = total, consecutive
        if new <= 0:
            return
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in out["losses"].items())
        what = f"step {last} (epoch {self.state.epoch + 1}): {terms}, grad norm {float(out['grad_norm']):.4g}, " \
               f"lr {out['lr']:.4g}"
        log.warning("%d non-finite step(s) skipped, the last at %s", new, what)
        if consecutive >= self.settings.max_bad_steps:
            raise NonFiniteLossError(
                f"{consecutive} consecutive non-finite steps, the last at {what}. The last good checkpoint is "
                f"kept; lower optim.lr or set trainer.grad_clip."
            )

    # ------------------------------------------------------------------------------ validation
    def _validate(self) -> ValidationResult | None:
        epochs_done, model = self.state.epoch, self.ema.module if self.ema else unwrap_model(self.step.model)
        subset = None if self._last_epoch() else self.settings.val_subset
        result = None
        if is_main_process():
            started = time.perf_counter()
            try:
                result = self.validate(model, max_images=subset)
            except Exception as err:  # noqa: BLE001 - the checkpoint of this epoch is on disk already
                raise ValidationFailedError(
                    f"validation after epoch {epochs_done} failed ({type(err).__name__}: {err}); the epoch's "
                    f"checkpoint is saved: fix the cause and continue with the same command and resume=true"
                ) from err
            val_time = time.perf_counter() - started
            self.state.val_time_s += val_time
            current = float(result.metrics.get("val/mAP", float("nan")))  # absent for a subset validation
            if math.isfinite(current) and current > self.state.best_map:
                self.state.best_map, self.state.best_epoch = current, epochs_done
                self.save("best")
            if not result.subset:
                result.metrics["val/mAP_best"] = max(self.state.best_map, 0.0)
            self._log({**{k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
                       "perf/val_time_s": val_time, "epoch": epochs_done})
            for callback in self.on_validation:
                callback(result, epochs_done, self.state.step)
        self.state.pending_validation = False
        _broadcast_state(self.state)
        return result

    def _log(self, record: dict[str, Any]) -> None:
        if is_main_process():
            for logger in self.loggers:
                logger.log_metrics(record, self.state.step)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _broadcast_state(state: FitState) -> None:
    """Rank 0's best mAP and epoch to every rank (only rank 0 validates)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    box = [(state.best_map, state.best_epoch)]
    dist.broadcast_object_list(box, src=0)
    state.best_map, state.best_epoch = box[0]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; optionally force deterministic torch algorithms."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def autocast_for(device: torch.device, bf16: bool) -> Any:
    """bf16 autocast on ``device`` when asked, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
