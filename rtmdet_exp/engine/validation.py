"""One validation pass: predict on the val loader, score with COCOeval, log and save the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rtmdet_exp.config import TrainerConfig
from rtmdet_exp.engine.evaluator import CocoEvaluator
from rtmdet_exp.engine.loggers import Logger
from rtmdet_exp.io import write_json_atomic


class Evaluation:
    """Callable ``(detector, epoch, step=None) -> metrics`` used by the trainer after chosen epochs.

    Metrics come namespaced (``val/mAP``, ``val/mAP50``, ..., ``val/per_class_AP``); the full
    result of the latest pass is also written atomically to ``val_results.json``.
    """

    def __init__(
        self,
        data: Any,
        device: torch.device,
        bf16: bool,
        channels_last: bool,
        cfg: TrainerConfig,
        run_dir: Path,
        logger: Logger | None = None,
    ) -> None:
        self.data, self.device, self.bf16, self.channels_last = data, device, bf16, channels_last
        self.cfg, self.run_dir, self.logger = cfg, Path(run_dir), logger
        self.evaluator = CocoEvaluator(data.val_coco, data.label_to_cat_id, data.class_names)

    @torch.no_grad()
    def __call__(self, detector: nn.Module, epoch: int, step: int | None = None) -> dict[str, Any]:
        """Evaluate after ``epoch`` epochs; validation images go to the logger at the global ``step``
        (W&B drops records whose step is below its current one, so an epoch number would be lost)."""
        detector.eval()
        self.evaluator.reset()
        shown: list[dict[str, Any]] = []
        for i, batch in enumerate(self.data.val_loader()):
            if self.cfg.limit_val_batches is not None and i >= self.cfg.limit_val_batches:
                break
            images = batch["images"].to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            meta = {k: v.to(self.device) for k, v in batch["meta"].items()}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                preds = detector.predict(images, meta)
            preds = [{k: v.float().cpu().numpy() for k, v in p.items()} for p in preds]
            self.evaluator.update(preds, batch["meta"]["image_id"].tolist())
            if len(shown) < self.cfg.num_vis_images:
                shown.extend(self._visuals(batch, preds)[: self.cfg.num_vis_images - len(shown)])
        stats = self.evaluator.compute()
        metrics: dict[str, Any] = {f"val/{k}": v for k, v in stats.items() if k != "per_class_AP"}
        metrics["val/per_class_AP"] = stats.get("per_class_AP", {})
        write_json_atomic(self.run_dir / "val_results.json", {"epoch": epoch, **metrics})
        if self.logger is not None and shown:
            self.logger.log_images(shown, self.data.class_names, step=epoch if step is None else step)
        return metrics

    def _visuals(self, batch: dict[str, Any], preds: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        """Letterboxed val images with predictions (score > 0.3) and GT in the same pixel frame."""
        out = []
        meta = batch["meta"]
        for j, pred in enumerate(preds):
            img = batch["images"][j].permute(1, 2, 0).numpy()  # [H, W, 3] BGR
            scale = np.tile(meta["scale_factor"][j].numpy(), 2)  # (sx, sy, sx, sy)
            offset = np.tile(meta["pad_offset"][j].numpy(), 2)  # (left, top, left, top)
            keep = pred["scores"] > 0.3
            mask = batch["mask"][j].numpy()
            out.append(
                {
                    "img": img,
                    "pred": {
                        "boxes": pred["boxes"][keep] * scale + offset,
                        "labels": pred["labels"][keep],
                        "scores": pred["scores"][keep],
                    },
                    "gt": {"boxes": batch["boxes"][j].numpy()[mask], "labels": batch["labels"][j].numpy()[mask]},
                }
            )
        return out
