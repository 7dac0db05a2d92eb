"""One optimisation step without a host-device sync, three ways to run it, and the timer of the loop.

:class:`TrainStep` runs forward (bf16 autocast when asked), the named losses, backward, optional
gradient clipping, the optimiser step, the EMA update and the schedule step. A step whose loss or
gradient is not finite is skipped *on the device*: the fused optimisers take a ``found_inf`` flag
(the mechanism ``torch.amp.GradScaler`` uses) and the EMA folds the step in with weight 0, so no
``bool(...)`` of a GPU tensor is needed per step. The flag is returned and read at logging steps.

``mode`` (``trainer.step_mode``) says how the device work is issued:

* ``eager``: op by op from Python (every device; the default).
* ``compile``: the detector's training forward (network, assigner, losses) through ``torch.compile``
  in place, so parameter names stay. The padded GT count ``M`` changes from batch to batch; it is
  padded up to a bucket (:func:`gt_bucket`) so that each bucket compiles once (``dynamic=False``).
  The first step runs uncompiled, so that what the detector builds on first use (its priors) is
  there before tracing and costs no recompilation.
* ``cuda_graph``: forward, assigner, losses, backward, optimiser and EMA recorded in one CUDA graph per
  GT bucket and replayed (:mod:`rtmdet_exp.engine.step_graph`); CUDA only.

Padding GT to a bucket leaves the losses unchanged: padded boxes are masked out of the assignment.

:class:`StepTimer` wraps the batch iterator: it adds up the host time spent waiting for the next
batch and, at each report (a logging step, after a device synchronisation), gives the images per
second, the mean step time and the fraction of it spent waiting for data since the last report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from rtmdet_exp.engine.ema import ModelEMA, unwrap_model
from rtmdet_exp.engine.optim import host_lr, use_device_lr, use_host_lr

TARGET_KEYS = ("boxes", "labels", "mask")
STEP_MODES = ("eager", "compile", "cuda_graph")
MIN_GT_BUCKET = 16  # smallest padded GT count in the compile and cuda_graph modes


def gt_bucket(num_gt: int, minimum: int = MIN_GT_BUCKET) -> int:
    """The padded GT count for ``num_gt`` boxes: the next power of two, at least ``minimum``."""
    return max(minimum, 1 << max(int(num_gt) - 1, 0).bit_length())


def pad_targets(targets: dict[str, Tensor], size: int) -> dict[str, Tensor]:
    """Padded GT ``[B, M, ...]`` extended to ``[B, size, ...]`` the way collate pads (box 0, label -1, mask False)."""
    extra = size - targets["boxes"].shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {targets['boxes'].shape[1]} GT boxes down to {size}")
    if extra == 0:
        return targets
    return {"boxes": F.pad(targets["boxes"], (0, 0, 0, extra)),  # [B, M, 4] -> [B, size, 4]
            "labels": F.pad(targets["labels"], (0, extra), value=-1),
            "mask": F.pad(targets["mask"], (0, extra), value=False)}


class TrainStep:
    """The step of one training iteration over a batch dict (``images`` uint8, ``boxes``, ``labels``, ``mask``).

    Args:
        model: the detector (``model(images, targets) -> {"loss_cls": ..., "loss_bbox": ..., ...}``).
        optimizer: a fused torch optimiser (``found_inf`` support); others fall back to a host check
            (eager mode only).
        scheduler: stepped once per iteration, also when the step is skipped.
        device: where the batch goes.
        bf16: autocast to bfloat16.
        channels_last: batch images in channels-last layout (the model must be converted too).
        grad_clip: max total gradient norm, or None.
        step_model: the module called for the forward pass (the DDP wrapper when distributed).
        ema: the weight average updated after every step (on the device, inside the graph).
        mode: ``eager`` | ``compile`` | ``cuda_graph`` (module docstring).
        compile_backend: ``torch.compile`` backend of the compile mode (tests use a lighter one).
        graph_capture: how the cuda_graph mode records a graph (default: CUDA graphs; tests pass a
            recorder that runs on the CPU, see :class:`~rtmdet_exp.engine.step_graph.GraphedStep`).
        device_lr: keep the learning rate as a device tensor (:func:`use_device_lr`); default: only
            in the cuda_graph mode, which needs it (the other modes keep the float lr of the recipe).
        cudnn_benchmark: cuDNN autotuning of the conv algorithms on a GPU (each conv shape is timed
            once, at its first use); default: on unless deterministic algorithms are asked for.
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
        *,
        ema: ModelEMA | None = None,
        mode: str = "eager",
        compile_backend: str | Callable[..., Any] = "inductor",
        graph_capture: Callable[..., Any] | None = None,
        device_lr: bool | None = None,
        cudnn_benchmark: bool | None = None,
    ) -> None:
        if mode not in STEP_MODES:
            raise ValueError(f"trainer.step_mode must be one of {', '.join(STEP_MODES)}; got {mode!r}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device, self.bf16, self.channels_last, self.grad_clip = device, bf16, channels_last, grad_clip
        self.step_model = step_model or model
        self.ema, self.mode = ema, mode
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.on_device_skip = bool(optimizer.defaults.get("fused"))
        self.names: list[str] = []  # what the packed step values hold, known after the first step
        self._finite: bool | None = None
        self._lr_ready = False
        self.device_lr = mode == "cuda_graph" if device_lr is None else device_lr
        self._eager_first = mode == "compile"  # compile mode: the first step fills the lazy caches uncompiled
        self._graphs: Any = None
        if cudnn_benchmark is None:  # fixed input size: pick the fastest conv algorithms once
            cudnn_benchmark = device.type == "cuda" and not torch.are_deterministic_algorithms_enabled()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = cudnn_benchmark
        if mode == "cuda_graph":
            self._graphs = self._graph_runner(graph_capture)
        elif mode == "compile":
            model.compile(dynamic=False, backend=compile_backend)  # in place: state-dict names unchanged

    def _graph_runner(self, capture: Callable[..., Any] | None) -> Any:
        from rtmdet_exp.engine.step_graph import GraphedStep, RankMax

        if capture is None and (self.device.type != "cuda" or not torch.cuda.is_available()):
            raise ValueError(f"trainer.step_mode=cuda_graph needs a CUDA GPU (the run's device is {self.device}); "
                             f"use trainer.step_mode=eager or compile")
        if not self.on_device_skip:
            raise ValueError(f"trainer.step_mode=cuda_graph needs a fused optimiser; {type(self.optimizer).__name__} "
                             f"here is not fused")
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        return GraphedStep(self._device_step, self.device, self.channels_last, self.params,
                           warmup_steps=11 if distributed else 3, capture=capture,
                           agree=RankMax() if distributed else None)

    def train(self) -> None:
        self.step_model.train()

    def close(self) -> None:
        """Free what the step holds on the device beyond the model: its CUDA graphs (cuda_graph mode)."""
        if self._graphs is not None:
            self._graphs.close()
            self._graphs = None

    def to_device(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Images and padded targets of a batch on the device (non-blocking from pinned memory)."""
        images = batch["images"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = {k: batch[k].to(self.device, non_blocking=True) for k in TARGET_KEYS}
        return images, targets

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One iteration; returns detached losses, the lr used, and the step's finiteness flag."""
        if not self._lr_ready:  # after a checkpoint was loaded: its optimiser state sets the lr kind
            if self.device_lr:
                use_device_lr(self.optimizer, self.scheduler, self.device)
            else:
                use_host_lr(self.optimizer, self.scheduler)
            self._lr_ready = True
        lr = host_lr(self.optimizer, self.scheduler)
        if self._graphs is not None:
            values = self._graphs(batch)
        else:
            images, targets = self.to_device(batch)
            if self.mode == "compile":
                targets = pad_targets(targets, gt_bucket(targets["boxes"].shape[1]))
            stance = torch.compiler.set_stance("force_eager") if self._eager_first else nullcontext()
            with stance:  # built on first use (the detector's priors) would otherwise cost a recompilation
                values = self._device_step(images, targets["boxes"], targets["labels"], targets["mask"])
            self._eager_first = False
        self.scheduler.step()
        return self._unpack(values, lr)

    def _device_step(self, images: Tensor, boxes: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """The device work of a step (what a CUDA graph records); returns the packed values ``[K]``."""
        self.optimizer.zero_grad(set_to_none=True)
        cache = self._graphs is None  # autocast's weight cache cannot live across graph replays
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=cache):
            out = self.step_model(images, {"boxes": boxes, "labels": labels, "mask": mask})
        losses = {k: v for k, v in out.items() if k.startswith("loss_")}
        loss = sum(losses.values())
        loss.backward()
        found_inf, norm = self._check_gradients(loss)
        if self.on_device_skip:
            self.optimizer.found_inf = found_inf  # type: ignore[attr-defined]
            self.optimizer.step()
        else:  # a non-fused optimiser cannot skip on the device: one host sync
            self._finite = not bool(found_inf)
            if self._finite:
                self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, skip=found_inf)
        stats = {k: v for k, v in out.items() if not k.startswith("loss_")}
        named = {"loss": loss, **losses, **stats, "found_inf": found_inf, "grad_norm": norm}
        self.names = list(named)
        return torch.stack([v.detach().float().reshape(()) for v in named.values()])

    def _unpack(self, values: Tensor, lr: float) -> dict[str, Any]:
        """The loop's view of a step's packed values (0-d views: nothing is read from the device)."""
        named = dict(zip(self.names, values.unbind()))
        losses = {k: v for k, v in named.items() if k.startswith("loss_")}
        stats = {k: v for k, v in named.items() if k not in losses and k not in ("loss", "found_inf", "grad_norm")}
        finite = None if self.on_device_skip else self._finite
        return {"losses": losses, "loss": named["loss"], "lr": lr, "found_inf": named["found_inf"],
                "finite": finite, "grad_norm": named["grad_norm"], "stats": stats, "applied": finite is not False}

    def _check_gradients(self, loss: Tensor) -> tuple[Tensor, Tensor]:
        """``found_inf`` (0-d float: 1 when loss or any gradient is not finite) and the gradient norm.

        The norm is one fused pass over the gradients; clipping adds one scaling pass only when
        ``grad_clip`` is set. Neither reads a value on the host.
        """
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
            if self.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.grad_clip, norm, foreach=True)
        else:
            norm = torch.zeros((), device=self.device)
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
        self._lr_ready = False


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
        if self.device.type == "cuda":
            out["perf/gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self._last, self._wait, self._steps, self._images = now, 0.0, 0, 0
        return out
