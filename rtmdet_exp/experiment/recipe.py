"""The recipe card: what a run will actually do, resolved, in one screen.

Written to the log and to ``results.json`` at the start of every run (and printed by
``dry_run=true``), so that a command that composes to something other than what its name says is
visible before any GPU hour is spent: experiment, epochs, image size, batch per GPU x GPUs, the
scaled learning rate, warm-up, augmentation stages with the switch epoch, EMA, box coding, assigner
cost terms, losses, initial weights and every key overridden on the command line.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from rtmdet_exp.experiment.build import plain, scaled_lr, total_batch, warmup_iters
from rtmdet_exp.experiment.checks import validation_epochs
from rtmdet_exp.experiment.recipes import PAPER

_ASSIGNER_TERMS = ("cls_cost", "cls_cost_classes", "center_prior", "iou_cost", "iou_weight", "topk", "candidates",
                   "alpha", "beta")


def _short(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1] if target else "none"


def _augmentation(cfg: DictConfig) -> dict[str, Any]:
    aug = plain(cfg.augment)
    max_epochs, stage2_epochs = int(cfg.trainer.max_epochs), int(aug.get("stage2_epochs") or 0)
    enabled = [n for n in aug.get("stage1") or [] if aug.get(n) is not None]
    out: dict[str, Any] = {"preset": aug.get("name"), "stage1": enabled}
    if aug.get("stage2") is not None and stage2_epochs:
        switch = max(max_epochs - stage2_epochs, 0)
        out.update(stage1_epochs=f"1-{switch}" if switch else "none", switch_epoch=switch,
                   stage2=[n for n in aug["stage2"] if aug.get(n) is not None],
                   stage2_epochs=f"{switch + 1}-{max_epochs}")
    return out


def recipe_card(cfg: DictConfig, world_size: int = 1, steps_per_epoch: int | None = None,
                overrides: list[str] | None = None) -> dict[str, Any]:
    """The card as a plain dict (for ``results.json``); ``steps_per_epoch`` when the data is known."""
    t, model = cfg.trainer, plain(cfg.model)
    variant = model.get("variant")
    schedule = plain(cfg.schedule)
    card: dict[str, Any] = {
        "experiment": cfg.get("experiment_name", "none"),
        "model": f"rtmdet_{variant}" if variant else _short(model.get("_target_")),
        "backbone": _short(model.get("backbone", {}).get("_target_")),
        "epochs": int(t.max_epochs),
        "img_size": int(cfg.data.img_size),
        "batch": f"{cfg.data.batch_size} per GPU x {world_size} = {total_batch(cfg, world_size)}",
        "lr": _lr_text(cfg, world_size),
        "optimizer": _optimizer(cfg),
        "schedule": f"{schedule['kind']}, warm-up {_warmup_text(cfg, steps_per_epoch)}, "
                    f"flat {schedule['flat_fraction']:.0%}, min {schedule['min_ratio']}",
        "augmentation": _augmentation(cfg),
        "ema": f"momentum {t.ema.momentum}, gamma {t.ema.gamma}" if t.ema.enabled else "off",
        "precision": plain(t)["precision"],
        "grad_clip": t.grad_clip if t.grad_clip is not None else "off",
        **({"batch_norm": "SyncBN over all GPUs" if t.get("sync_bn", True) else "per GPU (trainer.sync_bn=false)"}
           if world_size > 1 else {}),
        "exp_on_reg": bool(model.get("head", {}).get("exp_on_reg")),
        "assigner": {"type": _short(cfg.assigner.get("_target_")),
                     **{k: v for k, v in plain(cfg.assigner).items() if k in _ASSIGNER_TERMS}},
        "losses": {name: f"{_short(node.get('_target_'))} x {node.get('loss_weight')}"
                   for name, node in plain(cfg.loss).items()},
        "validation_epochs": _validation_text(cfg),
        "init": model.get("init_from") or _init_note(variant),
        "data": f"{cfg.data.name} ({cfg.data.num_classes} classes)",
        "overrides": list(overrides or []),
    }
    return card


def _optimizer(cfg: DictConfig) -> dict[str, Any]:
    node = plain(cfg.optim)
    skip = ("_target_", "lr", "base_batch_size", "scale_lr")
    return {"type": _short(node.get("_target_")), **{k: v for k, v in node.items() if k not in skip}}


def _lr_text(cfg: DictConfig, world_size: int) -> str:
    lr = scaled_lr(cfg, world_size)
    if not cfg.optim.scale_lr:
        return f"{lr:g} (not scaled)"
    return f"{cfg.optim.lr:g} x {total_batch(cfg, world_size)}/{cfg.optim.base_batch_size} = {lr:.4g}"


def _warmup_text(cfg: DictConfig, steps_per_epoch: int | None) -> str:
    if steps_per_epoch is None:
        return f"{cfg.schedule.warmup_iters} iterations (at most {cfg.schedule.warmup_max_fraction:.0%} of the run)"
    total = steps_per_epoch * int(cfg.trainer.max_epochs)
    return f"{warmup_iters(cfg, total)} of {total} iterations"


def _validation_text(cfg: DictConfig) -> str:
    epochs = validation_epochs(cfg)
    text = ", ".join(map(str, epochs)) if len(epochs) <= 12 else f"{len(epochs)} times, last after {epochs[-1]}"
    subset = cfg.trainer.val_subset
    return text + (f" (before the last: the first {subset} val images)" if subset and len(epochs) > 1 else "")


def _init_note(variant: str | None) -> str:
    paper = PAPER.get(variant or "")
    if paper and paper.imagenet_backbone:
        return f"from scratch (the paper starts rtmdet_{variant} from {paper.imagenet_backbone}: model.init_from=<file>)"
    return "from scratch"


def format_card(card: dict[str, Any]) -> str:
    """The card as aligned text lines."""
    width = max(len(k) for k in card)
    lines = ["recipe card"]
    for key, value in card.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = " ".join(map(str, value)) or "-"
        lines.append(f"  {key:<{width}}  {value}")
    return "\n".join(lines)
