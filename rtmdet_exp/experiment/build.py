"""Config -> objects: every group of a composed config becomes its object here, and only here.

Each group is a ``_target_`` node; :func:`instantiate` is the one place where Hydra builds objects,
after checking the node's keys against the constructor's signature (so a typo fails before any data
is read, naming the key and the valid ones). Keys a group holds for the experiment layer rather
than the constructor (``model.variant``, ``model.init_from``, ``optim.base_batch_size``, ...) are
taken off here, in the builder of that group.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from typing import Any

import hydra.utils
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from rtmdet_exp.engine.loggers import Logger
from rtmdet_exp.engine.loop import LoopSettings
from rtmdet_exp.engine.optim import scale_lr
from rtmdet_exp.engine.schedule import build_scheduler
from rtmdet_exp.experiment.errors import ConfigError
from rtmdet_exp.models.detector import Detector
from rtmdet_exp.models.postprocess import PostprocessConfig

log = logging.getLogger(__name__)

MODEL_META_KEYS = ("variant", "init_from", "frozen_stages")
OPTIM_META_KEYS = ("base_batch_size", "scale_lr")
SCHEDULE_META_KEYS = ("warmup_max_fraction", "warmup_iters")


def plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (Enums as their names)."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node


def _check_keys(node: dict[str, Any], where: str) -> None:
    """Fail on keys the ``_target_`` constructor does not take, listing the ones it does."""
    target = node.get("_target_")
    if not isinstance(target, str):
        return
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{where}._target_: cannot import '{target}': {err}") from err
    params = inspect.signature(obj).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, child in node.items():
        if str(key).startswith("_"):
            continue
        if not takes_any and key not in params:
            valid = ", ".join(p for p in params if p != "self")
            raise ConfigError(f"{where}.{key}: '{attr}' has no option '{key}'; valid: {valid}")
        if isinstance(child, dict):
            _check_keys(child, f"{where}.{key}")


def instantiate(node: Any, where: str, **kwargs: Any) -> Any:
    """Build an object from a ``_target_`` node: keys checked first, constructor errors named by key.

    ``node`` may be a DictConfig (resolved here) or a plain dict. A ``ValueError``/``TypeError`` raised
    while building is re-raised as :class:`ConfigError` prefixed with the config path ``where``.
    """
    node = plain(node)
    if isinstance(node, dict):
        _check_keys(node, where)
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except ConfigError:
        raise
    except Exception as err:  # hydra wraps constructor errors in InstantiationException
        cause: BaseException = err
        while cause.__cause__ is not None and not isinstance(cause, (ValueError, TypeError)):
            cause = cause.__cause__
        raise ConfigError(f"{where}: {cause}") from err


def build_network(cfg: DictConfig) -> nn.Module:
    """The ``model`` group's network, with ``model.init_from`` weights and frozen stages applied."""
    node = plain(cfg.model)
    meta = {k: node.pop(k, None) for k in MODEL_META_KEYS}
    network = instantiate(node, "model")
    if meta["init_from"]:
        from rtmdet_exp.models.weights import WeightsError, load_weights

        try:
            report = load_weights(network, meta["init_from"])
        except (WeightsError, FileNotFoundError) as err:
            raise ConfigError(f"model.init_from: {err}") from err
        log.info("model.init_from: %s", report.summary())
    if meta["frozen_stages"] is not None and meta["frozen_stages"] != -1:
        from rtmdet_exp.models.freeze import freeze_backbone_stages

        try:
            freeze_backbone_stages(network, meta["frozen_stages"])
        except (ValueError, TypeError) as err:
            raise ConfigError(f"model.frozen_stages={meta['frozen_stages']!r}: {err}") from err
    return network


def build_detector(cfg: DictConfig, network: nn.Module | None = None) -> Detector:
    """Network, assigner, losses and test-time decoding from their groups."""
    network = build_network(cfg) if network is None else network
    assigner = instantiate(cfg.assigner, "assigner")
    cls_loss = instantiate(cfg.loss.cls, "loss.cls")
    box_loss = instantiate(cfg.loss.box, "loss.box")
    try:
        test_cfg = PostprocessConfig(**plain(cfg.test))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"test: {err}") from err
    return Detector(network, assigner, cls_loss, box_loss, test_cfg)


def build_augment(cfg: DictConfig) -> Any:
    """The ``augment`` group, configured for this run's image size, epochs and seed."""
    augment = instantiate(cfg.augment, "augment")
    try:
        augment.configure(int(cfg.data.img_size), int(cfg.trainer.max_epochs), seed=int(cfg.seed))
    except ValueError as err:
        raise ConfigError(f"augment: {err}") from err
    return augment


def build_data(cfg: DictConfig, augment: Any, rank: int = 0, world_size: int = 1) -> Any:
    """The ``data`` group's DataModule (nothing is read until its ``setup()``)."""
    return instantiate(cfg.data, "data", augment=augment, seed=int(cfg.seed), rank=rank, world_size=world_size)


def total_batch(cfg: DictConfig, world_size: int) -> int:
    return int(cfg.data.batch_size) * world_size


def scaled_lr(cfg: DictConfig, world_size: int) -> float:
    """``optim.lr``, linearly scaled to the total batch when ``optim.scale_lr``."""
    lr = float(cfg.optim.lr)
    if cfg.optim.scale_lr:
        lr = scale_lr(lr, int(cfg.optim.base_batch_size), total_batch(cfg, world_size))
    return lr


def build_optimizer(cfg: DictConfig, model: nn.Module, world_size: int = 1) -> torch.optim.Optimizer:
    """The ``optim`` group's optimiser over ``model`` at the scaled learning rate."""
    node = {k: v for k, v in plain(cfg.optim).items() if k not in OPTIM_META_KEYS}
    node["lr"] = scaled_lr(cfg, world_size)
    return instantiate(node, "optim", model=model)


def warmup_iters(cfg: DictConfig, total_iters: int) -> int:
    """``schedule.warmup_iters``, capped at ``warmup_max_fraction`` of the run."""
    return min(int(cfg.schedule.warmup_iters), int(cfg.schedule.warmup_max_fraction * total_iters))


def build_schedule(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """The ``schedule`` group as a per-iteration LambdaLR over ``max_epochs x steps_per_epoch`` steps."""
    total = max(steps_per_epoch * int(cfg.trainer.max_epochs), 1)
    node = {k: v for k, v in plain(cfg.schedule).items() if k not in SCHEDULE_META_KEYS}
    schedule = instantiate({**node, "total_iters": total, "warmup_iters": warmup_iters(cfg, total)}, "schedule")
    return build_scheduler(optimizer, schedule)


def build_logger(cfg: DictConfig) -> Logger:
    return instantiate(cfg.logger, "logger")


def loop_settings(cfg: DictConfig, switch_epoch: int | None) -> LoopSettings:
    """The loop's view of ``trainer``."""
    t = cfg.trainer
    return LoopSettings(
        max_epochs=int(t.max_epochs), val_interval=int(t.val_interval), stage2_val_interval=int(t.stage2_val_interval),
        log_interval=int(t.log_interval), checkpoint_interval=int(t.checkpoint_interval),
        checkpoint_interval_steps=t.checkpoint_interval_steps, max_bad_steps=int(t.max_bad_steps),
        grad_clip=t.grad_clip, limit_train_batches=t.limit_train_batches, switch_epoch=switch_epoch,
        val_subset=t.val_subset,
    )


def step_mode(cfg: DictConfig, device: torch.device) -> str:
    """``trainer.step_mode`` for this process: auto is a whole-step CUDA graph on a GPU (one or several
    under torchrun, where the ranks agree on each step's graph), eager on the CPU."""
    mode = str(plain(cfg.trainer).get("step_mode", "auto"))
    if mode != "auto":
        return mode
    return "cuda_graph" if device.type == "cuda" else "eager"


COMPILE_MIN_STEPS = 10_000  # trainer.compile=null compiles runs at least this long on a GPU


def compile_network(cfg: DictConfig, device: torch.device, total_steps: int, world_size: int = 1) -> bool:
    """Whether to ``torch.compile`` the network (``trainer.compile``; null = auto).

    Auto compiles on one GPU (not under torchrun, where it was not measured) when the run has at
    least :data:`COMPILE_MIN_STEPS` optimiser steps.
    Inductor's fused kernels make rtmdet_s's graphed step at batch 32, 640 px 1.5x faster on an H200
    (bench/NOTES.md), but compiling its training graph takes minutes the first time, which a study's
    short runs would not earn back; a COCO run (300 epochs) does within its first thousands of steps.
    """
    choice = plain(cfg.trainer).get("compile")
    if choice is not None:
        return bool(choice)
    return device.type == "cuda" and world_size == 1 and total_steps >= COMPILE_MIN_STEPS


def cudnn_benchmark(cfg: DictConfig, device: torch.device, total_steps: int) -> bool:
    """Whether cuDNN autotunes the conv algorithms (``trainer.cudnn_benchmark``; null = auto).

    Auto autotunes GPU runs of at least :data:`COMPILE_MIN_STEPS` steps (unless deterministic).
    Shorter runs keep cuDNN's heuristic choice: on the study-sized short run (rtmdet_tiny, 320 px,
    batch 8, 1,200 graphed steps on an H200) autotuning cost ~4 s before the first step and the
    steps it chose were slower, 16.8-21.4 against 12.2 ms (bench/NOTES.md).
    """
    choice = plain(cfg.trainer).get("cudnn_benchmark")
    if choice is not None:
        return bool(choice)
    return device.type == "cuda" and not cfg.trainer.deterministic and total_steps >= COMPILE_MIN_STEPS


def precision_flags(cfg: DictConfig, device: torch.device) -> tuple[bool, bool]:
    """``(bf16, channels_last)`` for this device.

    ``auto``: bf16 autocast and channels_last on a GPU, fp32 on the CPU. ``fast``: bf16 wherever the
    hardware runs it natively, a GPU or a CPU with AMX or AVX512-BF16 (elsewhere a CPU emulates bf16,
    slower than fp32). On a 2-core AMX CPU the default run's step takes 0.43-0.55 s in bf16 against
    0.65-0.72 s in fp32, and over 3 seeds bf16 ended as accurate (bench/recipes.txt); a 2-core AVX2-only
    CPU runs it in fp32 at 1.0-1.1 s.
    """
    precision = plain(cfg.trainer).get("precision")
    bf16 = precision == "bf16" or (precision in ("auto", "fast") and device.type == "cuda") or \
        (precision == "fast" and device.type == "cpu" and cpu_has_native_bf16())
    channels_last = cfg.trainer.channels_last
    return bf16, bool(device.type == "cuda" if channels_last is None else channels_last)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16), as oneDNN uses it."""
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(bool(probe()) for probe in probes if probe is not None)


def finite_or(value: Any, default: float) -> float:
    """``value`` as a float when it is a finite number, else ``default``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def load_detector(checkpoint: str, weights: str = "ema") -> tuple[Detector, dict[str, Any]]:
    """Rebuild the detector from the config stored in a training checkpoint and load its weights.

    Returns the detector in eval mode and the checkpoint's ``extra`` (``config`` as a DictConfig,
    ``class_names``, ``label_to_cat_id``).
    """
    from rtmdet_exp.engine.checkpoint import load_checkpoint
    from rtmdet_exp.experiment import register

    register()
    payload = load_checkpoint(checkpoint)
    extra = payload.get("extra") or {}
    if "config" not in extra:
        raise ConfigError(f"checkpoint {checkpoint} holds no config; it was not written by rtmdet-exp's trainer")
    cfg = OmegaConf.create(extra["config"])
    cfg.model.init_from = None  # the checkpoint's own weights replace any initial ones
    detector = build_detector(cfg)
    state = payload["ema"]["module"] if weights == "ema" and payload.get("ema") else payload["model"]
    detector.load_state_dict(state)
    return detector.eval(), {**extra, "config": cfg}
