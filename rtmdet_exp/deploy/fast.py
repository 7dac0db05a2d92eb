"""Fast prediction at a fixed batch and input size: a CUDA graph for the network and decoding, NMS after it.

At batch 1 a detector of a few GMACs is bound by kernel launches, not arithmetic: eager PyTorch
spends most of its time queueing hundreds of small kernels. :class:`CudaGraph` records them once and
replays the whole sequence with one launch. What it records must not wait for the device, so the
detector runs as :class:`~rtmdet_exp.deploy.inference.InferenceModel` (network, sigmoid, box
decoding) followed by :func:`~rtmdet_exp.deploy.decode.dense_candidates` (per-level top-k, clip,
validity mask) and :func:`~rtmdet_exp.deploy.graph_nms.fixed_nms` (NMS as fixed-size matrix work).
After the replay one small read-back (detection counts and the fixed NMS's ``exact`` flag) is the
only wait for the device; when the fixed NMS could not be exact (more valid candidates than its
block) and wherever it is off (by default all but batch 1 under deployment settings), torchvision's
NMS runs on the same candidates in :func:`~rtmdet_exp.deploy.decode.select_detections`, so the
result is the same either way.

:class:`FastPredictor` with ``graph=False`` runs the same halves eagerly, on any device: that is
the fallback, and what the CPU tests check against ``Detector.predict``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from rtmdet_exp.deploy.decode import Candidates, dense_candidates, select_detections
from rtmdet_exp.deploy.graph_nms import FixedDetections, fixed_nms
from rtmdet_exp.deploy.inference import InferenceModel
from rtmdet_exp.models.postprocess import PostprocessConfig

__all__ = ["CudaGraph", "FastPredictor", "require_cuda"]


def require_cuda(tensors: Sequence[Tensor]) -> torch.device:
    """The CUDA device of ``tensors``; RuntimeError when there is no GPU or a tensor is elsewhere."""
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA graphs need an NVIDIA GPU, and torch.cuda.is_available() is False on this machine; "
                           "use the eager path (graph=False) instead")
    devices = {t.device for t in tensors}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        raise RuntimeError(f"CUDA graph inputs must all be on one CUDA device, got {sorted(map(str, devices))}")
    return next(iter(devices))


class CudaGraph:
    """``fn(*inputs)`` captured once for inputs shaped like ``example_inputs``, then replayed.

    Capture follows PyTorch's recipe: static input buffers; a few warm-up calls on a side stream
    (cuDNN picks its algorithms, lazy buffers such as caches are allocated outside the capture);
    one captured call. ``__call__`` copies new inputs into the static buffers and replays; it
    returns the static outputs, which the next call overwrites: consume or copy them first.
    """

    def __init__(self, fn: Callable[..., Any], example_inputs: Sequence[Tensor], warmup: int = 3) -> None:
        device = require_cuda(example_inputs)
        self.static_inputs = [x.detach().clone() for x in example_inputs]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(max(warmup, 1)):
                fn(*self.static_inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (a data loader's pin-memory thread) cannot break the capture
        with torch.no_grad(), torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.static_outputs = fn(*self.static_inputs)
        torch.cuda.current_stream(device).synchronize()

    def __call__(self, *inputs: Tensor) -> Any:
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f"this graph takes {len(self.static_inputs)} inputs, got {len(inputs)}")
        for i, (static, new) in enumerate(zip(self.static_inputs, inputs)):
            if new.shape != static.shape:
                raise ValueError(f"input {i} has shape {tuple(new.shape)}; the graph was captured for "
                                 f"{tuple(static.shape)} (capture another graph for another batch or size)")
            static.copy_(new, non_blocking=True)
        self.graph.replay()
        return self.static_outputs


class FastPredictor:
    """Detections for batches of ``batch_size`` letterboxed images at the model's input size.

    Args:
        model: the :class:`InferenceModel` (fused, in its precision, on its device).
        batch_size: the batch every call gets (the graph's shape; the eager path takes any).
        cfg: decoding settings (e.g. :data:`~rtmdet_exp.deploy.decode.DEPLOYMENT`).
        graph: capture a CUDA graph (default: when the model is on a GPU). True on a machine
            without a GPU raises RuntimeError.
        fixed_nms: run NMS as fixed-size work before the read-back. Default: with the graph at
            batch 1 under deployment-like settings (``score_thr`` >= 0.05), where it was measured
            faster (H200, rtmdet_s bf16: 2.50 vs 2.83 ms end to end). At the paper's 0.001 nearly
            every candidate is valid, and at batch 32 some image overflows the block: the host NMS
            runs then. ``fallbacks`` counts the calls where it could not be exact.
        nms_block: candidates per image the fixed NMS takes (``top`` of :func:`fixed_nms`).
    """

    def __init__(self, model: InferenceModel, batch_size: int, cfg: PostprocessConfig,
                 graph: bool | None = None, fixed_nms: bool | None = None, nms_block: int = 1024) -> None:
        self.model, self.cfg, self.nms_block = model, cfg, nms_block
        self.device = model.priors.device
        use_graph = self.device.type == "cuda" if graph is None else graph
        self.fixed = use_graph and batch_size == 1 and cfg.score_thr >= 0.05 if fixed_nms is None else fixed_nms
        self.fallbacks = 0
        if use_graph:
            h, w = model.img_hw
            images = torch.zeros((batch_size, 3, h, w), dtype=torch.uint8, device=self.device)
            img_hw = torch.tensor([[h, w]] * batch_size, dtype=torch.int64, device=self.device)
            self._dense: Callable[..., tuple[Candidates, FixedDetections | None]] = CudaGraph(self.dense,
                                                                                             [images, img_hw])
        else:
            self._dense = self.dense

    def dense(self, images: Tensor, img_hw: Tensor) -> tuple[Candidates, FixedDetections | None]:
        """The graph-safe half: network, decoding, fixed-size candidates (and the fixed NMS)."""
        scores, boxes = self.model(images)
        cand = dense_candidates(scores, boxes, self.model.level_sizes, img_hw, self.cfg)
        return cand, fixed_nms(cand, self.cfg, top=self.nms_block) if self.fixed else None

    @torch.no_grad()
    def __call__(self, images: Tensor, meta: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Per-image ``boxes [K,4]`` (original pixels), ``scores [K]``, ``labels [K]``, as ``Detector.predict``."""
        cand, fixed = self._dense(images.to(self.device, non_blocking=True), meta["img_shape"].to(self.device))
        if fixed is not None:
            *counts, exact = torch.cat([fixed.count, fixed.exact[None].long()]).tolist()  # the one wait
            if exact:
                return _unpad(fixed, counts, meta)
            self.fallbacks += 1
        return select_detections(cand, meta, self.cfg)


def _unpad(fixed: FixedDetections, counts: list[int], meta: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """Each image's first ``count`` rows, boxes back in original-image pixels (copies: the graph reuses its outputs)."""
    device, dtype = fixed.boxes.device, fixed.boxes.dtype
    pad = meta["pad_offset"].to(device=device, dtype=dtype).repeat(1, 2)[:, None]  # [B, 1, 4]
    scale = meta["scale_factor"].to(device=device, dtype=dtype).repeat(1, 2)[:, None]
    boxes = (fixed.boxes - pad) / scale
    return [{"boxes": boxes[i, :n], "scores": fixed.scores[i, :n].clone(), "labels": fixed.labels[i, :n].clone()}
            for i, n in enumerate(counts)]
