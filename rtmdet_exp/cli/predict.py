"""Run a trained detector on a folder of images.

    python -m rtmdet_exp.predict checkpoint=outputs/.../checkpoints/best.pt images=path/to/folder \
        [out=predictions] [score_thr=0.3] [batch_size=8] [device=auto] [weights=ema|model]

Writes one image per input with the detections drawn (``out/vis/``), ``out/predictions.json``
(COCO results format: image_id, category_id, bbox as xywh, score) and ``out/images.json``
(image_id -> file name). The model is rebuilt from the config stored in the checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf

from rtmdet_exp.cli.args import Option, UsageError, parse
from rtmdet_exp.data.collate import collate
from rtmdet_exp.data.transforms import LetterboxResize
from rtmdet_exp.atomic import write_json_atomic
from rtmdet_exp.experiment.build import load_detector
from rtmdet_exp.vis import draw_boxes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
OPTIONS = {
    "checkpoint": Option(None, "a checkpoint written by training (e.g. checkpoints/best.pt)", required=True),
    "images": Option(None, "a folder of images", required=True),
    "out": Option("predictions", "output folder"),
    "score_thr": Option(0.3, "draw and keep detections scoring at least this", float),
    "batch_size": Option(8, "images per forward pass", int),
    "device": Option("auto", "auto | cpu | cuda"),
    "weights": Option("ema", "ema | model: which weights of the checkpoint"),
}


def main(argv: list[str] | None = None) -> None:
    args, _ = parse(sys.argv[1:] if argv is None else argv, "rtmdet_exp.predict", __doc__.splitlines()[0], OPTIONS)
    if args["weights"] not in ("ema", "model"):
        raise UsageError(f"weights must be ema or model, got {args['weights']!r}")
    folder = Path(args["images"])
    if not folder.is_dir():
        raise UsageError(f"images: '{folder}' is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"images: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in '{folder}'")
    detector, extra = load_detector(args["checkpoint"], args["weights"])
    device = torch.device("cuda" if args["device"] == "auto" and torch.cuda.is_available() else
                          ("cpu" if args["device"] == "auto" else args["device"]))
    detector.to(device)
    cfg = extra["config"]
    names = list(extra.get("class_names") or [str(i) for i in range(detector.num_classes)])
    cat_ids = list(extra.get("label_to_cat_id") or range(1, detector.num_classes + 1))
    letterbox = LetterboxResize(int(cfg.data.img_size))
    out = Path(args["out"])
    (out / "vis").mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    image_table: list[dict[str, Any]] = []
    for start in range(0, len(files), args["batch_size"]):
        chunk = files[start : start + args["batch_size"]]
        samples, originals = [], []
        for offset, path in enumerate(chunk):
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                print(f"warning: skipping {path}: cannot be decoded as an image", file=sys.stderr)
                continue
            image_id = start + offset
            originals.append((image_id, path, img))
            samples.append(letterbox({"img": img, "boxes": np.zeros((0, 4), np.float32),
                                      "labels": np.zeros(0, np.int64), "image_id": image_id,
                                      "ori_shape": img.shape[:2]}))
        if not samples:
            continue
        batch = collate(samples)
        meta = {k: v.to(device) for k, v in batch["meta"].items()}
        preds = detector.predict(batch["images"].to(device), meta)
        for (image_id, path, img), pred in zip(originals, preds):
            boxes = pred["boxes"].float().cpu().numpy()
            scores = pred["scores"].float().cpu().numpy()
            labels = pred["labels"].cpu().numpy()
            keep = scores >= args["score_thr"]
            cv2.imwrite(str(out / "vis" / path.name), draw_boxes(img, boxes[keep], labels[keep], names, scores[keep]))
            image_table.append({"id": image_id, "file_name": path.name, "height": img.shape[0], "width": img.shape[1]})
            for box, score, label in zip(boxes, scores, labels):
                x1, y1, x2, y2 = (float(v) for v in box)
                results.append({"image_id": image_id, "category_id": int(cat_ids[int(label)]),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    write_json_atomic(out / "predictions.json", results)
    write_json_atomic(out / "images.json", image_table)
    print(f"{len(image_table)} images, {len(results)} detections -> {out}/predictions.json, drawn in {out}/vis/")


if __name__ == "__main__":
    main()
