"""Evaluate a checkpoint on a COCO-format val split, alone.

    python -m rtmdet_exp.evaluate checkpoint=outputs/.../checkpoints/best.pt \
        [data=coco data.root=/data/coco | data.val_json=... data.val_images=...] \
        [out=...] [weights=ema|model] [device=auto] [precision=run] [batch_size=8] [fuse=false] \
        [score_thr=0.3] [iou_thr=0.5]

The detector is rebuilt from the config stored in the checkpoint. Without data overrides it is
scored on the val split it was trained with; ``data=...`` / ``data.<key>=...`` describe another
dataset (composed on the project's config, at the checkpoint's image size unless ``data.img_size``
is given), whose category count must equal the model's class count. By default it computes in the
precision the run validated in (its ``trainer.precision`` on this device: bf16 autocast on a GPU, and
with ``fast`` on a CPU with AMX), so a checkpoint scores what its run logged. Writes into ``out`` (default
``<run folder>/eval/<checkpoint name>/``):

* ``metrics.json`` — the 12 COCO numbers, per-class AP (AP, AP50, AP75, small/medium/large) and
  the settings; ``summary.txt`` — pycocotools' summary;
* ``detections.json`` — COCO results with the dataset's image and category ids (pycocotools
  ``loadRes`` scores it to the numbers printed);
* ``pr_curves.png``; ``confusion_matrix.png`` and ``confusion_matrix.json`` (the matching rule is in
  the JSON and in :mod:`rtmdet_exp.deploy.breakdown`).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch.utils.data import DataLoader

from rtmdet_exp.analysis.plots import save_png
from rtmdet_exp.atomic import write_json_atomic, write_text_atomic
from rtmdet_exp.cli.args import Option, UsageError, as_bool, parse
from rtmdet_exp.data.coco import CocoDetection
from rtmdet_exp.data.collate import collate
from rtmdet_exp.data.transforms import LetterboxResize
from rtmdet_exp.deploy import breakdown
from rtmdet_exp.engine.evaluator import CocoEvaluator
from rtmdet_exp.experiment.build import load_detector, precision_flags
from rtmdet_exp.experiment.errors import ConfigError
from rtmdet_exp.models.fuse import fuse_conv_bn
from rtmdet_exp.models.layout import to_channels_last

log = logging.getLogger(__name__)

OPTIONS = {
    "checkpoint": Option(None, "a checkpoint written by training (e.g. checkpoints/best.pt)", required=True),
    "out": Option(None, "output folder (default <run folder>/eval/<checkpoint name>)"),
    "weights": Option("ema", "ema | model: which weights of the checkpoint"),
    "device": Option("auto", "auto | cpu | cuda | cuda:N"),
    "precision": Option("run", "run (the training run's trainer.precision on this device) | fp32 | bf16"),
    "batch_size": Option(8, "images per forward pass", int),
    "workers": Option(2, "image-decoding worker processes (0: in this process)", int),
    "fuse": Option(False, "fold BatchNorm into the convs first (same metrics within float rounding)", as_bool),
    "score_thr": Option(0.3, "confusion matrix: detections scoring at least this", float),
    "iou_thr": Option(0.5, "confusion matrix: a detection matches a ground-truth box at this IoU or more", float),
}


@dataclass
class ValSplit:
    """Where the val split is, and the size its images are letterboxed to."""

    val_json: str
    val_images: str
    img_size: int


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when there is one; anything else as torch reads it (a clear error if not)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"device: {err}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={name}: no CUDA device on this machine; use device=cpu")
    return device


def default_out(checkpoint: Path) -> Path:
    """``<run folder>/eval/<checkpoint stem>``; the run folder holds ``checkpoints/``."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run / "eval" / checkpoint.stem


def val_split(stored: DictConfig, overrides: list[str]) -> ValSplit:
    """The checkpoint's own val split, or the dataset that ``data`` overrides describe."""
    from rtmdet_exp.data.synthetic import ensure_synthetic_dataset
    from rtmdet_exp.experiment import compose

    bad = [o for o in overrides if not (o.startswith("data=") or o.startswith("data."))]
    if bad:
        raise UsageError(f"evaluate takes data overrides only (data=..., data.<key>=...), got {bad}")
    node = stored.data
    if overrides:
        kind = next((o.split("=", 1)[1] for o in overrides if o.startswith("data=")),
                    "synthetic" if "synthetic" in stored.data else "coco")
        rest = [o for o in overrides if not o.startswith("data=")]
        if not any(o.startswith("data.img_size=") for o in rest):
            rest.append(f"data.img_size={int(stored.data.img_size)}")
        node = compose([f"data={kind}", *rest]).data
    try:
        val_json, val_images, img_size = node.get("val_json"), node.get("val_images"), int(node.img_size)
    except OmegaConfBaseException as err:
        raise ConfigError(f"data: {err}; pass data.root=... (COCO layout), or data.val_json=... and "
                          f"data.val_images=...") from None
    if (val_json is None or val_images is None) and node.get("synthetic") is not None:
        gen = node.synthetic
        made = ensure_synthetic_dataset(node.root, num_train=int(gen.num_train), num_val=int(gen.num_val),
                                        img_size=int(gen.image_size or img_size), seed=int(gen.seed),
                                        num_classes=int(node.num_classes))
        val_json, val_images = val_json or str(made["val_json"]), val_images or str(made["val_images"])
    if val_json is None or val_images is None:
        raise ConfigError("data.val_json and data.val_images are not set; pass data.root=... or both paths")
    for key, value in (("data.val_json", val_json), ("data.val_images", val_images)):
        if not Path(value).exists():
            raise ConfigError(f"{key}: '{value}' does not exist")
    return ValSplit(str(val_json), str(val_images), img_size)


def dataset_categories(categories: list[dict[str, Any]], where: str, num_classes: int,
                       trained_names: list[str] | None) -> tuple[list[int], list[str]]:
    """The dataset's category ids (ascending: label i is the i-th) and names, checked against the model.

    ``categories`` is the json's ``categories`` list. A different count is refused; different names
    with the same count are allowed with a warning (labels are read as the categories in id order).
    """
    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    cat_ids = sorted(by_id)
    names = [by_id[c] for c in cat_ids]
    if len(cat_ids) != num_classes:
        raise ConfigError(f"{where} has {len(cat_ids)} categories ({', '.join(names[:10])}"
                          f"{', ...' if len(names) > 10 else ''}) but the checkpoint's model has {num_classes} "
                          f"classes ({', '.join((trained_names or [])[:10])}); evaluate on a dataset with the same "
                          f"classes, or fine-tune first with model.init_from=<checkpoint>")
    if trained_names and list(trained_names) != names:
        log.warning("%s names its categories %s; the model was trained on %s: label i is read as the i-th "
                    "category by id", where, names, list(trained_names))
    return cat_ids, names


def check_precision(choice: str) -> None:
    """The ``precision`` option of evaluate and predict: run, fp32 or bf16."""
    if choice not in ("run", "fp32", "bf16"):
        raise UsageError(f"precision must be run, fp32 or bf16, got {choice!r}")


def inference_precision(config: DictConfig, device: torch.device, choice: str) -> tuple[bool, bool]:
    """``(bf16, channels_last)`` for inference: the run's own (``choice`` run), or fp32 / bf16 as asked."""
    bf16, channels_last = precision_flags(config, device)
    return (bf16 if choice == "run" else choice == "bf16"), channels_last


def predict_batch(detector: Any, images: torch.Tensor, meta: dict[str, torch.Tensor], bf16: bool,
                  channels_last: bool) -> list[dict[str, torch.Tensor]]:
    """``detector.predict`` as the training run's validation calls it: bf16 autocast and batch layout as given."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        return detector.predict(images.contiguous(memory_format=layout), meta)


@torch.no_grad()
def predict_split(detector: Any, dataset: CocoDetection, cat_ids: list[int], names: list[str],
                  device: torch.device, batch_size: int, workers: int = 0, bf16: bool = False,
                  channels_last: bool = False) -> CocoEvaluator:
    """Detections for every image of ``dataset``, collected with their true image ids."""
    evaluator = CocoEvaluator(dataset.coco, cat_ids, names)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    for batch in loader:
        meta = {k: v.to(device) for k, v in batch["meta"].items()}
        preds = predict_batch(detector, batch["images"].to(device), meta, bf16, channels_last)
        preds = [{k: v.float().cpu() for k, v in p.items()} for p in preds]
        evaluator.update(preds, batch["meta"]["image_id"].tolist())
    return evaluator


def print_tables(metrics: dict[str, float], per_class: dict[str, dict[str, float]]) -> None:
    console = Console(width=max(Console().width, 110))
    table = Table(title="COCO bbox metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    classes = Table(title="per-class AP")
    for column in ("class", "AP", "AP50", "AP75", "small", "medium", "large", "GT"):
        classes.add_column(column, justify="left" if column == "class" else "right", no_wrap=True)
    for name, row in per_class.items():
        values = (row[k] for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"))
        classes.add_row(escape(name), *(f"{v:.4f}" for v in values), str(int(row["num_gt"])))
    console.print(classes)


def check_args(args: dict[str, Any]) -> None:
    if args["weights"] not in ("ema", "model"):
        raise UsageError(f"weights must be ema or model, got {args['weights']!r}")
    check_precision(args["precision"])
    if args["batch_size"] < 1 or args["workers"] < 0:
        raise UsageError(f"batch_size must be >= 1 and workers >= 0, got {args['batch_size']} and {args['workers']}")
    for key in ("score_thr", "iou_thr"):
        if not 0 <= args[key] <= 1:
            raise UsageError(f"{key} must be in [0, 1], got {args[key]}")


def matching_rule(score_thr: float, iou_thr: float) -> str:
    return (f"greedy by score within each image: a detection with score >= {score_thr} matches the unmatched "
            f"ground-truth box (any class, crowd left out) of highest IoU if that IoU >= {iou_thr}; rows true "
            f"class, columns predicted class, last row/column background (unmatched detections / missed boxes)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, overrides = parse(sys.argv[1:] if argv is None else argv, "rtmdet_exp.evaluate",
                            __doc__.splitlines()[0], OPTIONS, overrides=True)
    check_args(args)
    checkpoint = Path(args["checkpoint"])
    device = resolve_device(args["device"])
    detector, extra = load_detector(str(checkpoint), args["weights"])
    split = val_split(extra["config"], overrides)
    dataset = CocoDetection(split.val_images, split.val_json, pipeline=LetterboxResize(split.img_size))
    cat_ids, names = dataset_categories(list(dataset.coco.cats.values()), split.val_json, detector.num_classes,
                                        extra.get("class_names"))
    if args["fuse"]:
        detector.network = fuse_conv_bn(detector.network)
    bf16, channels_last = inference_precision(extra["config"], device, args["precision"])
    detector.to(device)
    if channels_last:
        to_channels_last(detector, device)
    evaluator = predict_split(detector, dataset, cat_ids, names, device, args["batch_size"], args["workers"],
                              bf16, channels_last)
    detections, image_ids = evaluator.results(), evaluator.image_ids
    ev, metrics, summary = breakdown.coco_eval(dataset.coco, detections, image_ids, cat_ids)
    per_class = breakdown.per_class_ap(ev, names, cat_ids)
    matrix = breakdown.confusion_matrix(dataset.coco, detections, image_ids, cat_ids, args["score_thr"],
                                        args["iou_thr"])
    out = Path(args["out"]) if args["out"] else default_out(checkpoint)
    record = {
        "checkpoint": str(checkpoint.resolve()), "weights": args["weights"], "fused": args["fuse"],
        "val_json": str(Path(split.val_json).resolve()), "val_images": str(Path(split.val_images).resolve()),
        "img_size": split.img_size, "test_cfg": vars(detector.test_cfg), "device": str(device),
        "precision": "bf16" if bf16 else "fp32",
        "num_images": len(image_ids), "num_detections": len(detections), "metrics": metrics,
        "per_size": {"small": metrics["mAP_s"], "medium": metrics["mAP_m"], "large": metrics["mAP_l"]},
        "per_class": per_class,
    }
    write_json_atomic(out / "metrics.json", record)
    write_text_atomic(out / "summary.txt", summary)
    write_text_atomic(out / "detections.json", json.dumps(detections))  # compact: COCO val has ~1.5 M entries
    write_json_atomic(out / "confusion_matrix.json", {"classes": [*names, "background"], "matrix": matrix.tolist(),
                                                      "rule": matching_rule(args["score_thr"], args["iou_thr"])})
    save_png(breakdown.plot_pr_curves(ev, names), out / "pr_curves.png")
    title = f"confusion (score >= {args['score_thr']}, IoU >= {args['iou_thr']})"
    save_png(breakdown.plot_confusion(matrix, names, title), out / "confusion_matrix.png")
    print_tables(metrics, per_class)
    print(f"{len(image_ids)} images, {len(detections)} detections{' (fused conv+BN)' if args['fuse'] else ''}: "
          f"mAP {metrics['mAP']:.4f} -> {out}/ (metrics.json, detections.json, pr_curves.png, confusion_matrix.*)")
    return record
