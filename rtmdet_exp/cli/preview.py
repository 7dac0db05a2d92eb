"""Look at what the model trains on: a PNG grid of training batches exactly as training makes them.

    python -m rtmdet_exp.preview augment=rtmdet [n=16] [epoch=0] [start_batch=1] [out=preview.png] [overrides]

The images come from the run's own training loader (same sampler, seeds, Mosaic/MixUp cache lanes
per ``data.num_workers``, and stage switch), made in this process. ``epoch`` picks the stage (e.g. the last epoch for
stage 2); ``start_batch`` starts mid-epoch, where the caches are full as in training (they are
rebuilt exactly, as after a resume). Every other ``key=value`` is a config override.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from rtmdet_exp.cli.args import Option, UsageError, parse
from rtmdet_exp.experiment import build, compose
from rtmdet_exp.vis import draw_boxes

__all__ = ["draw_grid", "main"]

OPTIONS = {
    "n": Option(16, "images in the grid", int),
    "epoch": Option(0, "0-based training epoch to draw (its stage's pipeline)", int),
    "start_batch": Option(1, "first batch of the epoch to draw (0 = the cold-cache first batch)", int),
    "out": Option("preview.png", "PNG file to write"),
}
_GAP = 4  # pixels between cells


def draw_grid(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray],
              class_names: Sequence[str], cols: int | None = None) -> np.ndarray:
    """Tile HxWx3 BGR images, each with its xyxy boxes and class names drawn, into one image."""
    if not images:
        raise ValueError("draw_grid needs at least one image")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    cell_h, cell_w = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    grid = np.full((rows * cell_h + (rows - 1) * _GAP, cols * cell_w + (cols - 1) * _GAP, 3), 255, np.uint8)
    for k, (img, bx, lb) in enumerate(zip(images, boxes, labels)):
        r, c = divmod(k, cols)
        y0, x0 = r * (cell_h + _GAP), c * (cell_w + _GAP)
        drawn = draw_boxes(img, bx, lb, class_names, thickness=1)
        grid[y0 : y0 + cell_h, x0 : x0 + cell_w] = 114
        grid[y0 : y0 + drawn.shape[0], x0 : x0 + drawn.shape[1]] = drawn
    return grid


def main(argv: list[str] | None = None) -> Path:
    args, overrides = parse(sys.argv[1:] if argv is None else argv, "rtmdet_exp.preview", __doc__.splitlines()[0],
                            OPTIONS, overrides=True)
    if args["n"] < 1 or args["epoch"] < 0 or args["start_batch"] < 0:
        raise UsageError(f"need n >= 1, epoch >= 0 and start_batch >= 0; got {args}")
    cfg = compose(overrides)
    data = build.build_data(cfg, build.build_augment(cfg))
    data.setup()
    if args["start_batch"] >= data.steps_per_epoch:
        raise UsageError(f"start_batch={args['start_batch']}: an epoch has {data.steps_per_epoch} batches")
    images, boxes, labels = [], [], []
    for batch in data.train_loader(args["epoch"], start_batch=args["start_batch"], in_process=True):
        for j in range(batch["images"].shape[0]):
            mask = batch["mask"][j].numpy()
            images.append(batch["images"][j].permute(1, 2, 0).numpy())  # [H, W, 3] BGR
            boxes.append(batch["boxes"][j].numpy()[mask])
            labels.append(batch["labels"][j].numpy()[mask])
        if len(images) >= args["n"]:
            break
    out = Path(args["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), draw_grid(images[: args["n"]], boxes, labels, data.class_names)):
        raise OSError(f"could not write {out}")
    stage = 2 if data.switch_epoch is not None and args["epoch"] >= data.switch_epoch else 1
    print(f"wrote {out} ({min(len(images), args['n'])} images, epoch {args['epoch']}, stage {stage}, "
          f"augment={data.augment.name})")
    return out
