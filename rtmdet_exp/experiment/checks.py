"""Checks of a composed config that types alone cannot express, run before any data is read.

Types, Enums and unknown keys are refused by the schema at compose time; :func:`check_config`
refuses values out of range and combinations that cannot do what they say: Mosaic that can never
run, a pruner that can never receive an intermediate value, evaluation settings that skip the
last epoch. Every error names the keys involved and what would be valid.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from rtmdet_exp.experiment.errors import ConfigError

_POSITIVE = (
    "trainer.max_epochs", "trainer.log_interval", "trainer.checkpoint_interval", "trainer.max_bad_steps",
    "trainer.keep_checkpoints", "data.batch_size", "data.img_size", "optim.lr", "optim.base_batch_size",
)
_AT_LEAST_ZERO = ("trainer.val_interval", "trainer.stage2_val_interval", "data.num_workers", "optim.weight_decay",
                  "schedule.warmup_iters")
_OPTIONAL_POSITIVE = ("trainer.grad_clip", "trainer.checkpoint_interval_steps", "trainer.limit_train_batches",
                      "trainer.limit_val_batches", "trainer.val_subset", "data.val_batch_size")


def check_config(cfg: DictConfig, sweeper: Any = None) -> None:
    """Raise :class:`ConfigError` for the first problem found; ``sweeper`` is Hydra's sweeper node."""
    resolve_all(cfg)
    _check_ranges(cfg)
    _check_device(cfg)
    _check_augmentation(cfg)
    if sweeper is not None:
        _check_pruner(cfg, sweeper)


def resolve_all(cfg: DictConfig) -> None:
    """Resolve every interpolation once, so that a failing one (a missing annotation file behind
    ``data.num_classes``, an unknown ``${paper:...}`` key) is reported as its own message and key."""
    from rtmdet_exp.experiment.errors import user_errors

    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except InterpolationResolutionError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, user_errors()):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from err
        raise ConfigError(f"{err.full_key}: {err.msg}") from err
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} must be set (it has no default): e.g. {err.full_key}=...") from err


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def _check_ranges(cfg: DictConfig) -> None:
    for key in _POSITIVE:
        if _value(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {_value(cfg, key)}")
    for key in _AT_LEAST_ZERO:
        if _value(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {_value(cfg, key)}")
    for key in _OPTIONAL_POSITIVE:
        value = _value(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be > 0 or null, got {value}")
    if cfg.data.img_size % 32:
        raise ConfigError(f"data.img_size must be a multiple of 32 (the largest stride), got {cfg.data.img_size}")
    if not 0.0 <= cfg.schedule.warmup_max_fraction <= 1.0:
        raise ConfigError(f"schedule.warmup_max_fraction must be in [0, 1], got {cfg.schedule.warmup_max_fraction}")
    if cfg.optim.backbone_lr_mult <= 0:
        raise ConfigError(f"optim.backbone_lr_mult must be > 0, got {cfg.optim.backbone_lr_mult}")


def _check_device(cfg: DictConfig) -> None:
    """A whole-step CUDA graph needs a GPU: refuse it before the data is read."""
    import torch

    mode = str(OmegaConf.select(cfg, "trainer.step_mode", default="eager")).rsplit(".", 1)[-1]
    device = str(cfg.trainer.device).rsplit(".", 1)[-1]
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if mode == "cuda_graph" and not on_gpu:
        raise ConfigError("trainer.step_mode=cuda_graph needs a CUDA GPU (this run is on the CPU); "
                          "use trainer.step_mode=eager or compile")


def _stage_lists(cfg: DictConfig) -> tuple[list[str], list[str] | None]:
    node = cfg.augment
    stage2 = node.get("stage2")
    return list(node.get("stage1") or []), None if stage2 is None else list(stage2)


def _check_augmentation(cfg: DictConfig) -> None:
    """Stage 1 must get at least one epoch when stage 2 exists and stage 1 holds transforms stage 2 lacks."""
    stage1, stage2 = _stage_lists(cfg)
    stage2_epochs = int(cfg.augment.get("stage2_epochs", 0) or 0)
    max_epochs = int(cfg.trainer.max_epochs)
    if stage2 is None or stage2_epochs == 0 or stage2_epochs < max_epochs:
        return
    only_stage1 = [n for n in stage1 if n not in stage2 and cfg.augment.get(n) is not None]
    if only_stage1:
        raise ConfigError(
            f"augment.stage2_epochs={stage2_epochs} >= trainer.max_epochs={max_epochs}: every epoch is in stage 2, "
            f"so {', '.join(only_stage1)} would never run. Lower augment.stage2_epochs below trainer.max_epochs "
            f"(the paper: 20 of 300), raise trainer.max_epochs, or choose augment=light / augment=none"
        )


def validation_epochs(cfg: DictConfig) -> list[int]:
    """The epochs (1-based) after which the run validates, the last one included."""
    t = cfg.trainer
    max_epochs, stage2_epochs = int(t.max_epochs), int(cfg.augment.get("stage2_epochs", 0) or 0)
    switch = max_epochs - stage2_epochs if cfg.augment.get("stage2") is not None and stage2_epochs else None
    out = []
    for epoch in range(1, max_epochs + 1):
        interval = t.stage2_val_interval if switch is not None and epoch > switch else t.val_interval
        if epoch == max_epochs or (interval > 0 and epoch % interval == 0):
            out.append(epoch)
    return out


def _check_pruner(cfg: DictConfig, sweeper: Any) -> None:
    """A pruner needs intermediate values: at least one validation before the last epoch, after warm-up."""
    pruner = sweeper.get("pruner") if hasattr(sweeper, "get") else None
    if not pruner:
        return
    epochs = validation_epochs(cfg)
    warmup = int(pruner.get("n_warmup_steps", 0) or 0) if hasattr(pruner, "get") else 0
    usable = [e for e in epochs[:-1] if e >= warmup]
    if not usable:
        raise ConfigError(
            f"hydra.sweeper.pruner ({pruner.get('_target_', pruner)}) can never act: the run validates after "
            f"epochs {epochs} (trainer.val_interval={cfg.trainer.val_interval}, trainer.max_epochs="
            f"{cfg.trainer.max_epochs}) and the pruner ignores steps before n_warmup_steps={warmup}. Lower "
            f"trainer.val_interval so that an evaluation falls before the last epoch (and at or after "
            f"hydra.sweeper.pruner.n_warmup_steps), or set hydra/sweeper/pruner=null"
        )
