"""Latency of a callable on a device, and the numbers a run records about its own speed.

:func:`cost_metrics` is what ``final_summary`` adds at the end of a run:

* ``perf/latency_ms``, ``perf/latency_device`` and ``perf/latency_shared`` (whether other runs of a
  pool shared the device meanwhile; runs on a GPU only): :func:`run_latency`, the
  fused network in fp16 at batch 1 and the run's image size, replayed as a CUDA graph, including
  normalisation and box decoding but not NMS (NMS time depends on how well the model is trained,
  not on its design; the paper's latency is also taken without NMS). About a second of GPU time;
* ``perf/cost`` and ``perf/cost_kind``: the objective of accuracy-versus-cost studies, the
  latency in ms where it was measured (``cost_kind`` ``latency_ms``), else the GMACs at the run's
  image size (``cost_kind`` ``gmacs``). A study mixes the two only when some of its trials ran
  without a GPU; the report says so.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from rtmdet_exp.deploy.fast import CudaGraph
from rtmdet_exp.deploy.inference import InferenceModel

__all__ = ["LATENCY_SETTING", "cost_metrics", "run_latency", "time_call"]

log = logging.getLogger(__name__)

LATENCY_SETTING = "fused network + box decoding, fp16, batch 1, CUDA graph, no NMS"
# Set to "1" by the GPU pool launcher when other runs share this run's device (docs/sweeps.md).
SHARED_ENV = "RTMDET_GPU_SHARED"


def time_call(fn: Callable[[], Any], device: torch.device, iters: int = 100, warmup: int = 10) -> list[float]:
    """Wall time in ms of each of ``iters`` calls of ``fn``, each waited for (device synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


@torch.no_grad()
def run_latency(detector: Any, img_size: int, device: torch.device, iters: int = 100) -> dict[str, Any]:
    """``perf/latency_ms`` (median, :data:`LATENCY_SETTING`) and ``perf/latency_device`` (the GPU's name).

    Empty on a device other than a GPU, and when the measurement fails (logged, never raised: a
    finished run must not fail over its latency).
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return {}
    try:
        model = InferenceModel(detector, img_size, fuse=True, dtype=torch.float16, channels_last=True).to(device)
        images = torch.randint(0, 256, (1, 3, img_size, img_size), dtype=torch.uint8, device=device)
        graph = CudaGraph(model, [images])
        median = statistics.median(time_call(lambda: graph(images), device, iters=iters))
    except (RuntimeError, ValueError) as err:  # CUDA errors are RuntimeErrors
        log.warning("latency not measured (%s): the study falls back to MACs for this run", err)
        return {}
    return {"perf/latency_ms": median, "perf/latency_device": torch.cuda.get_device_name(device)}


def cost_metrics(detector: Any, img_size: int, device: torch.device, macs: float) -> dict[str, Any]:
    """``perf/latency_*`` where measurable, and ``perf/cost`` / ``perf/cost_kind`` always."""
    metrics = run_latency(detector, img_size, device)
    if "perf/latency_ms" in metrics:
        shared = os.environ.get(SHARED_ENV) == "1"
        return {**metrics, "perf/latency_shared": shared, "perf/cost": metrics["perf/latency_ms"],
                "perf/cost_kind": "latency_ms"}
    return {"perf/cost": macs / 1e9, "perf/cost_kind": "gmacs"}
