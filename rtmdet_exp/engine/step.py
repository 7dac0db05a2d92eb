"""One optimisation step without a host-device sync, and the timer that says where a step's time goes.

:class:`TrainStep` runs forward (bf16 autocast when asked), the named losses, backward, optional
gradient clipping, and the optimiser and schedule steps. A step whose loss or gradient is not
finite is skipped *on the device*: the fused optimisers take a ``found_inf`` flag (the mechanism
``torch.amp.GradScaler`` uses), so no ``bool(...)`` of a GPU tensor is needed per step. The flag is
returned and the loop reads it only at logging steps, where it synchronises anyway.

:class:`StepTimer` wraps the batch iterator: it adds up the host time spent waiting for the next
batch and, at each report (a logging step, after a device synchronisation), gives the images per
second, the mean step time and the fraction of it spent waiting for data since the last report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rtmdet_exp.engine.ema import unwrap_model

TARGET_KEYS = ("boxes", "labels", "mask")


class TrainStep:
    """The step of one training iteration over a batch dict (``images`` uint8, ``boxes``, ``labels``, ``mask``).

    Args:
        model: the detector (``model(images, targets) -> {"loss_cls": ..., "loss_bbox": ..., ...}``).
        optimizer: a fused torch optimiser (``found_inf`` support); others fall back to a host check.
        scheduler: stepped once per iteration, also when the step is skipped.
        device: where the batch goes.
        bf16: autocast to bfloat16.
        channels_last: batch images in channels-last layout (the model must be converted too).
        grad_clip: max total gradient norm, or None.
        step_model: the module called for the forward pass (the DDP wrapper when distributed).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        device: torch.device,
        bf16: bool = False,
        channels_last: bool = False,
        grad_clip: float | None = None,
        step_model: nn.Module | None = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device, self.bf16, self.channels_last, self.grad_clip = device, bf16, channels_last, grad_clip
        self.step_model = step_model or model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.on_device_skip = bool(optimizer.defaults.get("fused"))

    def train(self) -> None:
        self.step_model.train()

    def to_device(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Images and padded targets of a batch on the device (non-blocking from pinned memory)."""
        images = batch["images"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = {k: batch[k].to(self.device, non_blocking=True) for k in TARGET_KEYS}
        return images, targets

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One iteration; returns detached losses, the lr used, and the step's finiteness flag."""
        images, targets = self.to_device(batch)
        lr = self.optimizer.param_groups[0]["lr"]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.step_model(images, targets)
        losses = {k: v for k, v in out.items() if k.startswith("loss_")}
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        found_inf, norm = self._check_gradients(loss)
        finite: bool | None = None
        if self.on_device_skip:
            self.optimizer.found_inf = found_inf  # type: ignore[attr-defined]
            self.optimizer.step()
        else:  # a non-fused optimiser cannot skip on the device: one host sync
            finite = not bool(found_inf)
            if finite:
                self.optimizer.step()
        self.scheduler.step()
        stats = {k: v.detach() for k, v in out.items() if not k.startswith("loss_")}
        return {"losses": {k: v.detach() for k, v in losses.items()}, "loss": loss.detach(), "lr": lr,
                "found_inf": found_inf, "finite": finite, "grad_norm": norm, "stats": stats,
                "applied": finite is not False}

    def _check_gradients(self, loss: Tensor) -> tuple[Tensor, Tensor]:
        """``found_inf`` (0-d float: 1 when loss or any gradient is not finite) and the gradient norm."""
        grads = [p.grad for p in self.params if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True) if grads else \
            torch.zeros((), device=self.device)
        found_inf = (~torch.isfinite(norm) | ~torch.isfinite(loss.detach())).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)  # every rank skips together
        return found_inf, norm

    def state_dict(self) -> dict[str, Any]:
        return {"model": unwrap_model(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        unwrap_model(self.model).load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])


class StepTimer:
    """Wall time per step and the share of it spent waiting for the data loader."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.total_s = 0.0  # wall time of the wrapped iteration so far
        self._last = time.perf_counter()
        self._wait = 0.0
        self._steps = 0
        self._images = 0

    def wrap(self, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yield the batches, timing how long each one took to arrive."""
        start = time.perf_counter()
        iterator = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            self._wait += time.perf_counter() - t0
            self._steps += 1
            self._images += int(batch["images"].shape[0])
            yield batch
        self.total_s += time.perf_counter() - start

    def report(self) -> dict[str, float]:
        """Throughput since the last report; synchronises the device so queued work is counted."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        elapsed = max(now - self._last, 1e-9)
        steps = max(self._steps, 1)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        out = {
            "perf/images_per_s": self._images * world / elapsed,
            "perf/step_time_s": elapsed / steps,
            "perf/data_wait_frac": min(self._wait / elapsed, 1.0),
        }
        self._last, self._wait, self._steps, self._images = now, 0.0, 0, 0
        return out
