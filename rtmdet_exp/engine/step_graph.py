"""The whole training step as CUDA graphs: static input buffers, one graph per GT bucket, lazy capture.

A CUDA graph replays a recorded sequence of kernels with one launch, which removes the Python and
launch overhead of the many small kernels of a detector step (forward, assigner, losses, backward,
clipping, fused optimiser, EMA). What makes that possible here:

* the step has no host sync (see :mod:`rtmdet_exp.engine.step`), so it can be recorded at all;
* its inputs live in static buffers: each batch is copied into them (images, and the padded GT
  padded further to its bucket, :func:`~rtmdet_exp.engine.step.gt_bucket`), so the recorded kernels
  read the new batch. Each bucket has its own buffers and graph, captured the second time that
  bucket is seen (the first time runs eagerly, which fills the lazily built caches: priors,
  cuDNN algorithms, optimiser state);
* what changes between steps without a new capture is on the device: the learning rate
  (:func:`~rtmdet_exp.engine.optim.use_device_lr`), the non-finite flag ``found_inf`` and the
  EMA's update count and weight (:class:`~rtmdet_exp.engine.ema.ModelEMA`);
* the first ``warmup_steps`` steps run eagerly on a side stream before any capture (11 under DDP,
  which needs that many eager iterations before its collectives can be recorded).

Under DDP the gradient all-reduce (DDP's backward hooks), the loss normaliser's ``reduce_mean`` and
the ``found_inf`` all-reduce are recorded *inside* the graph (NCCL collectives are capturable). NCCL
asks that capturing and replaying a collective be collective too: every rank must capture, and then
replay, the same graph at the same step. Each rank's batch has its own GT count, so the ranks agree
on the bucket first (:class:`RankMax`: the largest count over ranks, one tiny all-reduce on the
host through a gloo group, no device sync), and DDP is built on the capture stream
(:func:`graph_stream`), so that its gradient-accumulation nodes live on the stream that is recorded.

All graphs share one memory pool, which is safe because they are replayed one at a time on one
stream, each step's outputs are copied out (:meth:`GraphedStep.__call__` returns a clone) before the
next replay, and each graph's gradients are kept referenced so no other capture reuses their memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from rtmdet_exp.engine.step import gt_bucket

StepFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (images, boxes, labels, mask) -> values [K]
Capture = Callable[[StepFn, tuple[Tensor, ...]], tuple[Callable[[], None], Tensor]]


@cache
def graph_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream that graphs of ``device`` are warmed up and captured on (one per device)."""
    return torch.cuda.Stream(device)


class RankMax:
    """The largest of an integer over the ranks of the default process group, computed on the host.

    Built by every rank at the same point (it creates a gloo group, a collective call); each call is
    one all-reduce of one integer between the processes, which waits for the other ranks' loaders but
    never for a GPU.
    """

    def __init__(self) -> None:
        self.group = dist.new_group(backend="gloo")

    def __call__(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return int(t[0])


@dataclass
class _Slot:
    """Static inputs of one GT bucket and, once captured, its graph's replay and output."""

    images: Tensor  # [B, 3, H, W] uint8
    boxes: Tensor  # [B, bucket, 4]
    labels: Tensor  # [B, bucket], -1 = padding
    mask: Tensor  # [B, bucket]
    warmed: bool = False
    replay: Callable[[], None] | None = None
    output: Tensor | None = None
    keep: Sequence[Tensor | None] = ()  # the graph's gradient buffers, held so no capture reuses them

    @property
    def inputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.images, self.boxes, self.labels, self.mask

    def load(self, batch: dict[str, Any], device: torch.device) -> None:
        """Copy a batch into the static buffers (all on the device, queued without a host sync)."""
        if batch["images"].shape != self.images.shape:
            raise ValueError(f"trainer.step_mode=cuda_graph needs one batch shape; got images "
                             f"{tuple(batch['images'].shape)} after {tuple(self.images.shape)} (keep drop_last)")
        m = batch["boxes"].shape[1]
        self.images.copy_(batch["images"].to(device, non_blocking=True))
        self.boxes.zero_()
        self.labels.fill_(-1)
        self.mask.zero_()
        self.boxes[:, :m].copy_(batch["boxes"].to(device, non_blocking=True))
        self.labels[:, :m].copy_(batch["labels"].to(device, non_blocking=True))
        self.mask[:, :m].copy_(batch["mask"].to(device, non_blocking=True))


class GraphedStep:
    """Runs ``step_fn`` on static buffers: eagerly while warming up, then by replaying its CUDA graph.

    Args:
        step_fn: the device work of one step (``TrainStep._device_step``); no host sync inside.
        device: the CUDA device.
        channels_last: the image buffers' layout.
        params: the trained parameters (their gradients are kept per graph).
        warmup_steps: eager steps before the first capture.
        capture: how a graph is recorded, ``(fn, inputs) -> (replay, output)``; default CUDA graphs
            (tests substitute a recorder that runs on the CPU).
        agree: under DDP, maps this rank's GT count to the one all ranks use (:class:`RankMax`), so
            that they capture and replay the same bucket's graph at the same step.
    """

    def __init__(self, step_fn: StepFn, device: torch.device, channels_last: bool, params: Sequence[Tensor],
                 warmup_steps: int = 3, capture: Capture | None = None,
                 agree: Callable[[int], int] | None = None) -> None:
        self.fn, self.device, self.channels_last, self.params = step_fn, device, channels_last, list(params)
        self.eager_left = int(warmup_steps)
        self.captures = 0  # graphs recorded so far
        self.replays = 0  # steps run by replaying a graph
        self.bucket: int | None = None  # the last step's GT bucket
        self._slots: dict[int, _Slot] = {}
        self._capture = capture or self._cuda_capture
        self._agree = agree
        self._stream = graph_stream(device) if device.type == "cuda" else None
        self._pool: Any = None

    def __call__(self, batch: dict[str, Any]) -> Tensor:
        """One step on ``batch`` (host tensors from the loader); returns a copy of its packed values."""
        count = batch["boxes"].shape[1]
        bucket = gt_bucket(self._agree(count) if self._agree is not None else count)
        self.bucket = bucket
        slot = self._slots.get(bucket) or self._new_slot(bucket, batch)
        slot.load(batch, self.device)
        if self.eager_left > 0 or not slot.warmed:
            self.eager_left = max(self.eager_left - 1, 0)
            slot.warmed = True
            return self._eager(slot).clone()
        if slot.replay is None:
            self.optimizer_grads_to_none()
            slot.replay, slot.output = self._capture(self.fn, slot.inputs)
            slot.keep = [p.grad for p in self.params]
            self.captures += 1
        slot.replay()
        self.replays += 1
        return slot.output.clone()

    def close(self) -> None:
        """Free the graphs. Under DDP this must happen before the process group is destroyed: NCCL waits
        for the graphs that captured its collectives, so destroying it first hangs (pytorch#115388)."""
        if self._stream is not None:
            torch.cuda.synchronize(self.device)
        self._slots.clear()
        self._pool = None

    def optimizer_grads_to_none(self) -> None:
        """Gradients are allocated inside the capture, from the graph's pool."""
        for p in self.params:
            p.grad = None

    def _new_slot(self, bucket: int, batch: dict[str, Any]) -> _Slot:
        images = batch["images"]
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        batch_size = images.shape[0]
        slot = _Slot(
            images=torch.empty(images.shape, dtype=images.dtype, device=self.device, memory_format=layout),
            boxes=torch.zeros((batch_size, bucket, 4), dtype=batch["boxes"].dtype, device=self.device),
            labels=torch.full((batch_size, bucket), -1, dtype=batch["labels"].dtype, device=self.device),
            mask=torch.zeros((batch_size, bucket), dtype=torch.bool, device=self.device),
        )
        self._slots[bucket] = slot
        return slot

    def _eager(self, slot: _Slot) -> Tensor:
        """Run the step eagerly (on a side stream on CUDA, as capture warm-up should)."""
        if self._stream is None:
            return self.fn(*slot.inputs)
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            out = self.fn(*slot.inputs)
        current.wait_stream(self._stream)
        return out

    def _cuda_capture(self, fn: StepFn, inputs: tuple[Tensor, ...]) -> tuple[Callable[[], None], Tensor]:
        """Record ``fn(*inputs)`` into a new CUDA graph sharing the pool of the earlier ones."""
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's pin-memory thread and the checkpoint writer may call CUDA meanwhile
        context = torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local")
        with context if self._stream is not None else nullcontext():
            output = fn(*inputs)
        if self._pool is None:
            self._pool = graph.pool()
        return graph.replay, output
