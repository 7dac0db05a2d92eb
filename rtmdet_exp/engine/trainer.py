"""The training loop: steps, evaluation, checkpoints and resume, with loggers as subscribers.

It knows nothing of Hydra: :func:`rtmdet_exp.train.train` builds every object from the config and
hands them in. The loop guards against the faults a week-long sweep meets: non-finite steps are
skipped and counted (the run stops after ``max_bad_steps`` in a row), SIGTERM saves a resumable
checkpoint before exiting, and checkpoints are atomic so a kill never leaves a half-written one.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from rtmdet_exp import sweep
from rtmdet_exp.config import TrainerConfig
from rtmdet_exp.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    latest_valid_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from rtmdet_exp.engine.ema import ModelEMA, unwrap_model
from rtmdet_exp.engine.loggers import Logger
from rtmdet_exp.engine.progress import EpochProgress

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive steps with a NaN/inf loss or gradient."""


class TerminatedError(RuntimeError):
    """Raised after SIGTERM once a resumable checkpoint is on disk."""


@dataclass
class FitState:
    """What a checkpoint must carry to continue a run exactly."""

    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already trained
    step: int = 0  # optimiser steps so far
    bad_steps: int = 0  # consecutive non-finite steps
    skipped_steps: int = 0  # non-finite steps skipped in total
    best_map: float = -1.0  # best val/mAP so far
    best_epoch: int = -1  # epoch (1-based) of best_map
    train_time_s: float = 0.0  # training wall time so far, resumes included


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class Trainer:
    """Runs ``fit()`` over a :class:`~rtmdet_exp.data.datamodule.DataModule`-like object.

    ``data`` must provide ``train_loader(epoch, start_batch)``, ``steps_per_epoch``,
    ``val_loader()``, ``stage_of(epoch)`` and ``switch_epoch``; ``evaluate(detector, epochs_done,
    step=global_step)`` runs a detector over the validation loader and returns namespaced metrics
    (``val/mAP``...).
    """

    def __init__(
        self,
        detector: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        data: Any,
        evaluate: Callable[[nn.Module, int], dict[str, Any]],
        cfg: TrainerConfig,
        run_dir: Path,
        loggers: Sequence[Logger],
        device: torch.device,
        bf16: bool,
        channels_last: bool,
        model_for_step: nn.Module | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.detector = detector
        self.step_model = model_for_step or detector  # DDP wrapper when distributed
        self.optimizer, self.scheduler = optimizer, scheduler
        self.data, self.evaluate_fn, self.cfg = data, evaluate, cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.loggers = list(loggers)
        self.device, self.bf16, self.channels_last = device, bf16, channels_last
        self.ema = ModelEMA(detector, cfg.ema.momentum, cfg.ema.gamma) if cfg.ema.enabled else None
        self.state = FitState()
        self._terminate = False
        self.params = [p for p in detector.parameters() if p.requires_grad]
        self.extra = extra or {}  # plain data saved in every checkpoint (config, class names)
        self.resumed_extra: dict[str, Any] = {}  # the ``extra`` of the checkpoint resume() loaded

    # ----------------------------------------------------------------------------- checkpoints
    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "model": unwrap_model(self.detector).state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": vars(self.state).copy(),
            "rng": capture_rng_state(),
            "extra": self.extra,
        }

    def save(self, name: str) -> Path:
        """Atomically write ``checkpoints/<name>.pt``; keep the newest two epoch checkpoints."""
        path = self.ckpt_dir / f"{name}.pt"
        if is_main_process():
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.checkpoint_payload(), path)
            epochs = sorted(self.ckpt_dir.glob("epoch_*.pt"))
            for old in epochs[:-2]:
                old.unlink(missing_ok=True)
        return path

    def checkpoints(self) -> list[Path]:
        """Resumable checkpoints, newest first (``interrupt`` ones are mid-epoch)."""
        found = list(self.ckpt_dir.glob("epoch_*.pt")) + list(self.ckpt_dir.glob("interrupt.pt"))
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    def resume(self) -> bool:
        """Load the newest valid checkpoint (a corrupt one is skipped with a warning)."""
        found = latest_valid_checkpoint(self.checkpoints())
        if found is None:
            return False
        path, payload = found
        unwrap_model(self.detector).load_state_dict(payload["model"])
        if self.ema and payload.get("ema"):
            self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.state = FitState(**payload["state"])
        self.resumed_extra = payload.get("extra") or {}
        restore_rng_state(payload["rng"])
        log.info("resumed from %s at epoch %d, step %d", path, self.state.epoch, self.state.step)
        return True

    # ----------------------------------------------------------------------------- the loop
    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: saving a checkpoint after this step, then stopping")
        self._terminate = True

    def fit(self) -> dict[str, Any]:
        """Train to ``max_epochs`` (or from a resumed state) and return the final metrics."""
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _in_main_thread() else None
        try:
            return self._fit()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _fit(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        max_epochs = self.cfg.max_epochs
        while self.state.epoch < max_epochs:
            epoch = self.state.epoch
            t0 = time.perf_counter()
            self._train_epoch(epoch)
            self.state.train_time_s += time.perf_counter() - t0
            self.state.epoch, self.state.batch_in_epoch = epoch + 1, 0
            if self._should_validate(epoch + 1):
                metrics = self._validate(epoch + 1)
            if (epoch + 1) % self.cfg.checkpoint_interval == 0 or epoch + 1 == max_epochs:
                self.save(f"epoch_{epoch + 1:04d}")
            (self.ckpt_dir / "interrupt.pt").unlink(missing_ok=True)
        return metrics

    def _should_validate(self, epochs_done: int) -> bool:
        if epochs_done == self.cfg.max_epochs:
            return True
        stage2 = self.data.switch_epoch is not None and epochs_done > self.data.switch_epoch
        interval = self.cfg.stage2_val_interval if stage2 else self.cfg.val_interval
        return interval > 0 and epochs_done % interval == 0

    def _batches(self, epoch: int) -> Iterable[dict[str, Any]]:
        loader = self.data.train_loader(epoch, start_batch=self.state.batch_in_epoch)
        limit = self.cfg.limit_train_batches
        for i, batch in enumerate(loader, start=self.state.batch_in_epoch):
            if limit is not None and i >= limit:
                break
            yield batch

    def _train_epoch(self, epoch: int) -> None:
        self.step_model.train()
        total = self.data.steps_per_epoch
        if self.cfg.limit_train_batches is not None:
            total = min(total, self.cfg.limit_train_batches)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with EpochProgress(epoch, self.cfg.max_epochs, total, enabled=is_main_process()) as progress:
            progress.advance(self.state.batch_in_epoch)
            for batch in self._batches(epoch):
                images = batch["images"].to(self.device, non_blocking=True)
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = {k: batch[k].to(self.device, non_blocking=True) for k in ("boxes", "labels", "mask")}
                with autocast:
                    out = self.step_model(images, targets)
                losses = {k: v for k, v in out.items() if k.startswith("loss_")}
                loss = sum(losses.values())
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (logged with it)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                ok = self._step_is_finite(loss, losses)
                if ok:
                    self.optimizer.step()
                    self.scheduler.step()
                    if self.ema:
                        self.ema.update(self.detector)
                self.state.step += 1
                self.state.batch_in_epoch += 1
                if self.state.step % self.cfg.log_interval == 0 or self.state.batch_in_epoch == total:
                    record = {f"train/{k}": float(v.detach()) for k, v in out.items()}
                    record.update({"train/loss": float(loss.detach()), "train/lr": lr})
                    record["epoch"] = epoch + self.state.batch_in_epoch / max(total, 1)
                    self._log(record)
                    progress.update(loss=record["train/loss"], lr=lr)
                progress.advance(1)
                if self._terminate:
                    path = self.save("interrupt")
                    raise TerminatedError(f"stopped by SIGTERM in epoch {epoch + 1} after step {self.state.step}; "
                                          f"saved {path}; resume with the same command and resume=true")

    def _step_is_finite(self, loss: Tensor, losses: dict[str, Tensor]) -> bool:
        """Clip gradients and check loss and gradient norm are finite (one host sync per step)."""
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        finite = torch.isfinite(loss.detach()) & torch.isfinite(norm)
        if dist.is_available() and dist.is_initialized():
            flag = finite.float()
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag > 0
        if bool(finite):
            self.state.bad_steps = 0
            return True
        self.optimizer.zero_grad(set_to_none=True)
        self.state.bad_steps += 1
        self.state.skipped_steps += 1
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        lr = self.optimizer.param_groups[0]["lr"]
        step = self.state.step + 1  # 1-based, as the step numbers of metrics.jsonl
        log.warning("non-finite step %d skipped (%s, grad norm %.4g, lr %.4g)", step, terms, float(norm), lr)
        if self.state.bad_steps >= self.cfg.max_bad_steps:
            raise NonFiniteLossError(
                f"{self.state.bad_steps} consecutive non-finite steps, last at step {step} "
                f"(epoch {self.state.epoch + 1}): {terms}, grad norm {float(norm):.4g}, lr {lr:.4g}. "
                f"The last good checkpoint is kept in {self.ckpt_dir}; lower optim.lr or set trainer.grad_clip."
            )
        return False

    def _validate(self, epochs_done: int) -> dict[str, Any]:
        model = self.ema.module if self.ema else unwrap_model(self.detector)
        metrics = self.evaluate_fn(model, epochs_done, step=self.state.step) if is_main_process() else {}
        if dist.is_available() and dist.is_initialized():
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        current = float(metrics.get("val/mAP", float("nan")))
        if is_main_process() and math.isfinite(current) and current > self.state.best_map:
            self.state.best_map, self.state.best_epoch = current, epochs_done
            self.save("best")
        metrics["val/mAP_best"] = max(self.state.best_map, 0.0)
        metrics["epoch"] = epochs_done
        self._log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        sweep.report(current if math.isfinite(current) else 0.0, epochs_done)
        return metrics

    def _log(self, record: dict[str, Any]) -> None:
        if not is_main_process():
            return
        for logger in self.loggers:
            logger.log_metrics(record, self.state.step)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; optionally force deterministic torch algorithms."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


__all__ = ["Trainer", "FitState", "NonFiniteLossError", "TerminatedError", "CheckpointError", "seed_everything"]
