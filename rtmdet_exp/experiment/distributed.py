"""Devices and ``torchrun``: which device a process uses, joining and leaving the process group, DDP.

Nothing here is our own distributed machinery: ``torchrun`` starts the processes and sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; this module only reads them. SyncBN needs CUDA, so CPU
(gloo) runs keep plain BatchNorm with a note in the log.
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn

from rtmdet_exp.engine.step_graph import graph_stream
from rtmdet_exp.experiment.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``trainer.device``: auto picks the GPU when there is one (the LOCAL_RANK one under torchrun)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda was asked for but no CUDA GPU is visible; use trainer.device=cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def world_size_from_env() -> int:
    """The number of processes torchrun started (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def setup(device: torch.device) -> tuple[int, int]:
    """Join torchrun's process group (NCCL on GPUs, gloo on the CPU); returns ``(rank, world size)``."""
    if world_size_from_env() > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def teardown() -> None:
    """Leave the process group (every rank, also after an error).

    Garbage is collected first: a CUDA graph that captured NCCL collectives and is only held in a
    reference cycle would make the destroy wait for it forever (pytorch#115388).
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


# DDP settings for a step without per-step host syncs that overlaps the all-reduce with backward:
# 25 MB buckets (a few per model: rtmdet_s has 35 MB of fp32 gradients, so the first buckets are
# reduced while backward still runs); gradients are views into the buckets (no copy in or out, less
# memory); static_graph (the same parameters are used every step: DDP skips its per-step search for
# unused parameters and may reorder buckets after the first step).
DDP_BUCKET_MB = 25


def wrap(model: nn.Module, device: torch.device, graphed: bool = False, sync_bn: bool = True) -> nn.Module:
    """The module the training step calls: ``model`` itself, or DDP around it (SyncBN on CUDA).

    With SyncBN the running statistics are the same on every rank, so buffers are not broadcast at
    each forward; on the CPU (gloo, plain BatchNorm) and with ``sync_bn=False`` (each GPU's own batch
    statistics, ``trainer.sync_bn``) rank 0's buffers are broadcast so the ranks agree.
    ``graphed`` (``trainer.step_mode=cuda_graph``): DDP is built on the stream the step's graphs are
    captured on, as CUDA graph capture of DDP's backward needs (its gradient hooks keep that stream).
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return model
    cuda = device.type == "cuda"
    synced = cuda and sync_bn
    if synced:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif cuda:
        log.info("trainer.sync_bn=false: BatchNorm statistics stay per GPU (rank 0's running statistics are "
                 "broadcast at each step)")
    else:
        log.info("CPU (gloo) processes: BatchNorm statistics stay per process (SyncBN needs CUDA)")
    stream = graph_stream(device) if cuda and graphed else None
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream) if stream is not None else nullcontext():
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None, bucket_cap_mb=DDP_BUCKET_MB,
            gradient_as_bucket_view=True, static_graph=True, broadcast_buffers=not synced,
        )
    if stream is not None:
        torch.cuda.current_stream(device).wait_stream(stream)
    return ddp
