"""Run a trained detector on a folder of images.

    python -m rtmdet_exp.predict checkpoint=outputs/.../checkpoints/best.pt images=path/to/folder \
        [ann=instances_val.json] [out=predictions] [score_thr=0.3] [batch_size=8] [device=auto] [weights=ema|model] \
        [precision=run]

Writes one image per input with the detections above ``score_thr`` drawn (``out/vis/``),
``out/predictions.json`` (every detection of the test-time decoding, in COCO results format:
image_id, category_id, bbox as xywh, score), ``out/images.json``
(image_id -> file name) and ``out/predictions_info.json`` (where the ids come from). The model is
rebuilt from the config stored in the checkpoint and computes in the precision its run validated in
(``precision=fp32`` or ``bf16`` to choose), as ``python -m rtmdet_exp.evaluate`` does.

With ``ann=`` (the COCO json these images belong to), every image gets its id from that json
(matched by file name) and labels map to its categories, so pycocotools can score the results.
Without it, image ids are file indices (0, 1, ... in sorted file-name order), which no dataset's
annotations know: the results can be drawn and read, not scored.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rtmdet_exp.atomic import write_json_atomic
from rtmdet_exp.cli.args import Option, UsageError, parse
from rtmdet_exp.cli.evaluate import (
    check_precision,
    dataset_categories,
    inference_precision,
    predict_batch,
    resolve_device,
)
from rtmdet_exp.data.annotations import AnnotationFileError, read_coco_json
from rtmdet_exp.data.collate import collate
from rtmdet_exp.data.transforms import LetterboxResize
from rtmdet_exp.experiment.build import load_detector
from rtmdet_exp.models.layout import to_channels_last
from rtmdet_exp.vis import draw_boxes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
OPTIONS = {
    "checkpoint": Option(None, "a checkpoint written by training (e.g. checkpoints/best.pt)", required=True),
    "images": Option(None, "a folder of images", required=True),
    "ann": Option(None, "COCO json of these images: results carry its image and category ids"),
    "out": Option("predictions", "output folder"),
    "score_thr": Option(0.3, "draw detections scoring at least this (predictions.json keeps all, to be scored)",
                        float),
    "batch_size": Option(8, "images per forward pass", int),
    "device": Option("auto", "auto | cpu | cuda"),
    "weights": Option("ema", "ema | model: which weights of the checkpoint"),
    "precision": Option("run", "run (the training run's trainer.precision on this device) | fp32 | bf16"),
}


FILE_INDEX_NOTE = ("image ids are file indices (sorted file names, from 0), not a dataset's ids: pass ann=<COCO json> "
                   "to get the dataset's image and category ids")


def find_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"images: '{folder}' is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"images: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in '{folder}'")
    return files


def read_ann(path: Path) -> dict[str, Any]:
    """A COCO json's ``images`` and ``categories`` (an image-info file without annotations will do).

    Read as training reads annotation files, so a broken file gets the same worded error.
    """
    try:
        data = read_coco_json(path, keys=("images", "categories"))
    except AnnotationFileError as err:
        raise UsageError(f"ann: {err}") from None
    ok = all(isinstance(i, dict) and "id" in i and "file_name" in i for i in data["images"]) and all(
        isinstance(c, dict) and "id" in c for c in data["categories"])
    if not ok:
        raise UsageError(f"ann: '{path}' is not a COCO json: it needs 'images' (each with id and file_name) and "
                         f"'categories' (each with id)")
    return data


def ids_from_ann(data: dict[str, Any], files: list[Path], path: Path) -> list[int]:
    """The json's image id of every file, matched by file name (the last part of ``file_name``)."""
    by_name: dict[str, int] = {}
    for image in data["images"]:
        name = Path(str(image["file_name"])).name
        if name in by_name and by_name[name] != image["id"]:
            raise UsageError(f"ann: '{path}' lists the file name {name!r} twice (ids {by_name[name]} and "
                             f"{image['id']}); files cannot be matched by name")
        by_name[name] = int(image["id"])
    unknown = [f.name for f in files if f.name not in by_name]
    if unknown:
        raise UsageError(f"ann: {len(unknown)} of {len(files)} images are not in '{path}' (e.g. "
                         f"{', '.join(unknown[:5])}); predict only that dataset's images, or leave ann= out")
    return [by_name[f.name] for f in files]


def load_batch(chunk: list[tuple[int, Path]], letterbox: LetterboxResize) -> tuple[list, list]:
    """Letterboxed samples and ``(image_id, path, image)`` of the files that decode."""
    samples, originals = [], []
    for image_id, path in chunk:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            print(f"warning: skipping {path}: cannot be decoded as an image", file=sys.stderr)
            continue
        originals.append((image_id, path, img))
        samples.append(letterbox({"img": img, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                                  "image_id": image_id, "ori_shape": img.shape[:2]}))
    return samples, originals


def main(argv: list[str] | None = None) -> None:
    args, _ = parse(sys.argv[1:] if argv is None else argv, "rtmdet_exp.predict", __doc__.splitlines()[0], OPTIONS)
    if args["weights"] not in ("ema", "model"):
        raise UsageError(f"weights must be ema or model, got {args['weights']!r}")
    check_precision(args["precision"])
    files = find_images(Path(args["images"]))
    detector, extra = load_detector(args["checkpoint"], args["weights"])
    device = resolve_device(args["device"])
    bf16, channels_last = inference_precision(extra["config"], device, args["precision"])
    detector.to(device)
    if channels_last:
        to_channels_last(detector, device)
    names = list(extra.get("class_names") or [str(i) for i in range(detector.num_classes)])
    cat_ids = list(extra.get("label_to_cat_id") or range(1, detector.num_classes + 1))
    image_ids = list(range(len(files)))
    if args["ann"]:
        ann = read_ann(Path(args["ann"]))
        image_ids = ids_from_ann(ann, files, Path(args["ann"]))
        cat_ids, names = dataset_categories(ann["categories"], args["ann"], detector.num_classes, names)
    letterbox = LetterboxResize(int(extra["config"].data.img_size))
    out = Path(args["out"])
    (out / "vis").mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    image_table: list[dict[str, Any]] = []
    jobs = list(zip(image_ids, files))
    for start in range(0, len(jobs), args["batch_size"]):
        samples, originals = load_batch(jobs[start : start + args["batch_size"]], letterbox)
        if not samples:
            continue
        batch = collate(samples)
        meta = {k: v.to(device) for k, v in batch["meta"].items()}
        preds = predict_batch(detector, batch["images"].to(device), meta, bf16, channels_last)
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
    source = str(Path(args["ann"]).resolve()) if args["ann"] else "file index"
    write_json_atomic(out / "predictions_info.json", {
        "image_ids": source, "category_ids": source if args["ann"] else "the checkpoint's training categories",
        "note": "" if args["ann"] else FILE_INDEX_NOTE, "checkpoint": str(Path(args["checkpoint"]).resolve())})
    print(f"{len(image_table)} images, {len(results)} detections -> {out}/predictions.json, drawn in {out}/vis/")
    print(f"image ids from {args['ann']}" if args["ann"] else f"note: {FILE_INDEX_NOTE}")


if __name__ == "__main__":
    main()
