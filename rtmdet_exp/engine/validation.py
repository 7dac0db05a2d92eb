"""One validation pass: predict on the val loader and score with COCOeval (:mod:`.evaluator`).

:class:`Validator` returns a :class:`ValidationResult`; what happens with it (the run folder's
files, the sweep's intermediate report, images for the loggers) is decided by the callbacks the
experiment layer hands to the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rtmdet_exp.engine.evaluator import CocoEvaluator


@dataclass
class ValidationResult:
    """Namespaced metrics (``val/mAP``...), per-class AP, detections in COCO results format (the
    dataset's image and category ids) and a few drawn-ready images."""

    metrics: dict[str, Any]
    per_class_AP: dict[str, float] = field(default_factory=dict)
    detections: list[dict[str, Any]] = field(default_factory=list)
    visuals: list[dict[str, Any]] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)  # the images scored
    category_ids: list[int] = field(default_factory=list)  # the categories scored (the model's)
    subset: bool = False  # scored on the first images only (an intermediate validation)


class Validator:
    """Callable ``(detector) -> ValidationResult`` over a data module's ``val_loader()``.

    Args:
        data: provides ``val_loader()``, ``val_coco``, ``label_to_cat_id`` and ``class_names``.
        device: where the model runs.
        bf16: autocast to bfloat16.
        channels_last: batch layout (as the model's).
        limit_batches: debug: score only the first N batches (only the images seen are scored).
        num_visuals: images kept with their boxes for the loggers.
    """

    def __init__(self, data: Any, device: torch.device, bf16: bool = False, channels_last: bool = False,
                 limit_batches: int | None = None, num_visuals: int = 0) -> None:
        self.data, self.device, self.bf16, self.channels_last = data, device, bf16, channels_last
        self.limit_batches, self.num_visuals = limit_batches, num_visuals
        self.evaluator = CocoEvaluator(data.val_coco, data.label_to_cat_id, data.class_names)

    @torch.no_grad()
    def __call__(self, detector: nn.Module, max_images: int | None = None) -> ValidationResult:
        """Score ``detector``; with ``max_images``, only the first that many val images (keys ``val_subset/``)."""
        detector.eval()
        self.evaluator.reset()
        shown: list[dict[str, Any]] = []
        for i, batch in enumerate(self.data.val_loader()):
            if self.limit_batches is not None and i >= self.limit_batches:
                break
            if max_images is not None and len(self.evaluator.image_ids) >= max_images:
                break
            images = batch["images"].to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            meta = {k: v.to(self.device) for k, v in batch["meta"].items()}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                preds = detector.predict(images, meta)
            preds = [{k: v.float().cpu().numpy() for k, v in p.items()} for p in preds]
            self.evaluator.update(preds, batch["meta"]["image_id"].tolist())
            if len(shown) < self.num_visuals:
                shown.extend(_visuals(batch, preds)[: self.num_visuals - len(shown)])
        stats = self.evaluator.compute()
        per_class = stats.pop("per_class_AP", {})
        prefix = "val" if max_images is None else "val_subset"
        metrics = {f"{prefix}/{k}": v for k, v in stats.items()}
        return ValidationResult(metrics, per_class, self.evaluator.results(), shown, self.evaluator.image_ids,
                                [int(c) for c in self.evaluator.label_to_cat_id], subset=max_images is not None)


def _visuals(batch: dict[str, Any], preds: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Letterboxed val images with predictions (score > 0.3) and GT in the same pixel frame."""
    out = []
    meta = batch["meta"]
    for j, pred in enumerate(preds):
        img = batch["images"][j].permute(1, 2, 0).numpy()  # [H, W, 3] BGR
        scale = np.tile(meta["scale_factor"][j].numpy(), 2)  # (sx, sy, sx, sy)
        offset = np.tile(meta["pad_offset"][j].numpy(), 2)  # (left, top, left, top)
        keep = pred["scores"] > 0.3
        mask = batch["mask"][j].numpy()
        out.append({
            "img": img,
            "pred": {"boxes": pred["boxes"][keep] * scale + offset, "labels": pred["labels"][keep],
                     "scores": pred["scores"][keep]},
            "gt": {"boxes": batch["boxes"][j].numpy()[mask], "labels": batch["labels"][j].numpy()[mask]},
        })
    return out
