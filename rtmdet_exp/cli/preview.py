"""Look at what the model trains on: a PNG grid of augmented training images with their boxes.

    python -m rtmdet_exp.data.preview augment=rtmdet n=16 [epoch=0] [warmup=8] [out=preview.png] [data.* ...]

``n``, ``epoch`` (which stage: e.g. ``epoch=39`` for the last epoch of a 40-epoch run), ``warmup``
(samples run first and not shown, so the Mosaic/MixUp caches are full as in mid-training) and ``out``
are this tool's options; every other ``key=value`` is a Hydra override of the project config
(``conf/config.yaml``). Images are drawn in a random order seeded by ``seed``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["draw_grid", "main"]

_OWN_OPTIONS = {"n": int, "epoch": int, "warmup": int, "out": str}
_GAP = 4  # pixels between cells


def _class_colour(label: int) -> tuple[int, int, int]:
    """A saturated BGR colour per class, spread around the hue circle (golden-ratio steps)."""
    hue = int((label * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 220, 255]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _draw_sample(sample: dict[str, Any], class_names: Sequence[str]) -> np.ndarray:
    """A copy of the sample's image with every box outlined and labelled with its class name."""
    img = np.ascontiguousarray(sample["img"]).copy()
    boxes = np.asarray(sample.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)  # [K, 4]
    labels = np.asarray(sample.get("labels", np.zeros(0)), dtype=np.int64).reshape(-1)  # [K]
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1
    for (x1, y1, x2, y2), label in zip(np.round(boxes).astype(int).tolist(), labels.tolist()):
        colour = _class_colour(label)
        cv2.rectangle(img, (x1, y1), (max(x2 - 1, x1), max(y2 - 1, y1)), colour, 1)
        text = class_names[label] if 0 <= label < len(class_names) else str(label)
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y1 + th + 2, img.shape[0] - base)
        cv2.rectangle(img, (x1, ty - th - 1), (x1 + tw + 1, ty + base - 1), colour, -1)
        cv2.putText(img, text, (x1 + 1, ty - 1), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return img


def draw_grid(samples: Sequence[dict[str, Any]], class_names: Sequence[str], cols: int | None = None) -> np.ndarray:
    """Tile the samples (each drawn with its boxes and class names) into one BGR uint8 image.

    Cells are as large as the largest sample; smaller images sit at the top-left on grey (114).
    ``cols`` defaults to ``ceil(sqrt(len(samples)))``.
    """
    if not samples:
        raise ValueError("samples must hold at least one sample dict")
    cols = cols or math.ceil(math.sqrt(len(samples)))
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    rows = math.ceil(len(samples) / cols)
    cell_h = max(int(s["img"].shape[0]) for s in samples)
    cell_w = max(int(s["img"].shape[1]) for s in samples)
    grid = np.full((rows * cell_h + (rows - 1) * _GAP, cols * cell_w + (cols - 1) * _GAP, 3), 255, np.uint8)
    for i, sample in enumerate(samples):
        r, c = divmod(i, cols)
        y0, x0 = r * (cell_h + _GAP), c * (cell_w + _GAP)
        drawn = _draw_sample(sample, class_names)
        grid[y0 : y0 + cell_h, x0 : x0 + cell_w] = 114
        grid[y0 : y0 + drawn.shape[0], x0 : x0 + drawn.shape[1]] = drawn
    return grid


def _split_args(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """This tool's own ``key=value`` options and the Hydra overrides (everything else)."""
    own: dict[str, Any] = {"n": 16, "epoch": 0, "warmup": 8, "out": "preview.png"}
    overrides = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in _OWN_OPTIONS:
            try:
                own[key] = _OWN_OPTIONS[key](value)
            except ValueError as err:
                raise ValueError(f"{key} must be {_OWN_OPTIONS[key].__name__}, got {value!r}") from err
        else:
            overrides.append(arg)
    if own["n"] < 1 or own["epoch"] < 0 or own["warmup"] < 0:
        raise ValueError(f"need n >= 1, epoch >= 0, warmup >= 0; got {own}")
    return own, overrides


def _train_split(data_cfg: Any) -> tuple[str, str]:
    """``(train_images, train_json)`` of the configured dataset, generating the built-in one if needed."""
    if data_cfg.get("synthetic") is not None:
        from rtmdet_exp.data.synthetic import ensure_synthetic_dataset

        gen = data_cfg.synthetic
        made = ensure_synthetic_dataset(
            data_cfg.root,
            num_train=int(gen.num_train),
            num_val=int(gen.num_val),
            img_size=int(gen.get("image_size") or data_cfg.img_size),
            seed=int(gen.seed),
            num_classes=int(data_cfg.num_classes),
        )
        return str(made["train_images"]), str(made["train_json"])
    if not data_cfg.get("train_json") or not data_cfg.get("train_images"):
        raise ValueError("data.train_json and data.train_images must be set (or use data=synthetic)")
    return str(data_cfg.train_images), str(data_cfg.train_json)


def main(argv: Sequence[str] | None = None) -> Path:
    """Compose the project config with the overrides in ``argv``, augment ``n`` images, save the grid."""
    from hydra import compose, initialize_config_dir

    from rtmdet_exp.config import CONF_DIR, instantiate, register
    from rtmdet_exp.data.coco import CocoDetection
    from rtmdet_exp.data.pipelines import register_resolvers

    own, overrides = _split_args(sys.argv[1:] if argv is None else argv)
    register()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    augment = instantiate(cfg.augment, "augment")
    pipeline = augment.configure(int(cfg.data.img_size), int(cfg.trainer.max_epochs), seed=int(cfg.seed))
    pipeline.set_epoch(own["epoch"])
    images, ann = _train_split(cfg.data)
    dataset = CocoDetection(images, ann)
    order = np.random.default_rng(int(cfg.seed)).permutation(len(dataset))
    total = own["warmup"] + own["n"]
    picks = np.resize(order, total)  # repeats the order when the dataset is smaller than needed
    samples = [pipeline(dataset[int(i)]) for i in picks][own["warmup"] :]
    grid = draw_grid(samples, dataset.class_names)
    out = Path(own["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), grid):
        raise OSError(f"could not write {out}")
    print(f"wrote {out} ({len(samples)} images, stage {pipeline.stage}, augment={augment.name})")
    return out


if __name__ == "__main__":
    main()
