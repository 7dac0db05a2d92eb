"""Export a checkpoint's detector for deployment (ONNX).

    python -m rtmdet_exp.export checkpoint=outputs/.../checkpoints/best.pt [format=onnx] [out=model.onnx] \
        [nms=true] [img_size=640] [weights=ema|model] [score_thr=...] [iou_threshold=...] [max_per_img=...] \
        [nms_pre=...] [check=true]

The graph takes ``images``: uint8 ``[B,3,H,W]`` BGR, letterboxed to ``img_size`` (pad value 114,
as :class:`rtmdet_exp.data.transforms.LetterboxResize`), with a dynamic batch ``B``; normalisation,
the conv+BN fused network and box decoding are inside. ``nms=false`` outputs ``boxes [B,N,4]``
(xyxy input pixels) and ``scores [B,N,C]``; ``nms=true`` (default) adds the test-time selection
with ONNX ``NonMaxSuppression`` and outputs ``num_dets [B]``, ``det_boxes [B,M,4]``,
``det_scores [B,M]``, ``det_labels [B,M]`` (see :mod:`rtmdet_exp.deploy.onnx`). Decoding settings
default to the checkpoint's ``test`` config. ``check=true`` runs the file in ONNX Runtime on random
images and prints its largest difference from PyTorch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from rtmdet_exp.cli.args import Option, UsageError, as_bool, parse
from rtmdet_exp.deploy.inference import InferenceModel
from rtmdet_exp.experiment.build import load_detector
from rtmdet_exp.models.postprocess import PostprocessConfig

FORMATS = ("onnx",)
OPTIONS = {
    "checkpoint": Option(None, "a checkpoint written by training (e.g. checkpoints/best.pt)", required=True),
    "format": Option("onnx", f"export format: {' | '.join(FORMATS)}"),
    "out": Option(None, "output file (default <run folder>/export/<checkpoint name>_<size>[_nms].onnx)"),
    "nms": Option(True, "class-aware NMS and top max_per_img inside the graph", as_bool),
    "img_size": Option(None, "input size in pixels, a multiple of 32 (default: the checkpoint's data.img_size)", int),
    "weights": Option("ema", "ema | model: which weights of the checkpoint"),
    "score_thr": Option(None, "nms=true: keep detections scoring above this (default: the checkpoint's)", float),
    "iou_threshold": Option(None, "nms=true: NMS IoU threshold (default: the checkpoint's)", float),
    "max_per_img": Option(None, "nms=true: detections per image, the output size M (default: the checkpoint's)", int),
    "nms_pre": Option(None, "nms=true: candidates per level before NMS (default: the checkpoint's)", int),
    "check": Option(True, "compare ONNX Runtime with PyTorch on random images after writing", as_bool),
}


def default_out(checkpoint: Path, img_size: int, nms: bool) -> Path:
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run / "export" / f"{checkpoint.stem}_{img_size}{'_nms' if nms else ''}.onnx"


def decoding(args: dict[str, Any], stored: PostprocessConfig) -> PostprocessConfig:
    """The checkpoint's test settings with the options given on the command line."""
    given = {k: args[k] for k in ("score_thr", "iou_threshold", "max_per_img", "nms_pre") if args[k] is not None}
    try:
        return PostprocessConfig(**{**vars(stored), **given})
    except ValueError as err:
        raise UsageError(str(err)) from None


def check_against_torch(path: Path, model: InferenceModel, nms: PostprocessConfig | None) -> float:
    """Largest difference between ONNX Runtime and PyTorch outputs for 3 random images (detections
    compared as sets per image with NMS, see :func:`~rtmdet_exp.deploy.onnx.detection_difference`)."""
    from rtmdet_exp.deploy.onnx import ExportModel, detection_difference, onnxruntime_outputs

    h, w = model.img_hw
    images = torch.randint(0, 256, (3, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ExportModel(model, nms)(images)
    got = onnxruntime_outputs(path, images)
    if nms is not None:
        return detection_difference(got, want)
    return max(float((torch.from_numpy(g).double() - t.double()).abs().max()) if t.numel() else 0.0
               for g, t in zip(got, want))


def main(argv: list[str] | None = None) -> Path:
    args, _ = parse(sys.argv[1:] if argv is None else argv, "rtmdet_exp.export", __doc__.splitlines()[0], OPTIONS)
    if args["format"] not in FORMATS:
        raise UsageError(f"format: {args['format']!r} is not supported; valid: {', '.join(FORMATS)}")
    if args["weights"] not in ("ema", "model"):
        raise UsageError(f"weights must be ema or model, got {args['weights']!r}")
    try:
        from rtmdet_exp.deploy.onnx import export_onnx
    except ImportError as err:
        raise UsageError(f"format=onnx needs onnx and onnxscript (pip install onnx onnxscript onnxruntime): {err}") \
            from None
    checkpoint = Path(args["checkpoint"])
    detector, extra = load_detector(str(checkpoint), args["weights"])
    size = args["img_size"] or int(extra["config"].data.img_size)
    if size < 32 or size % 32:
        raise UsageError(f"img_size must be a positive multiple of 32, got {size}")
    nms = decoding(args, detector.test_cfg) if args["nms"] else None
    model = InferenceModel(detector.cpu(), size, fuse=True)
    names = list(extra.get("class_names") or [])
    cat_ids = list(extra.get("label_to_cat_id") or [])
    metadata = {"class_names": json.dumps(names), "label_to_cat_id": json.dumps(cat_ids),
                "img_size": str(size), "input": "uint8 [B,3,H,W] BGR, letterboxed (pad 114), 0..255",
                "decoding": json.dumps(vars(nms)) if nms else "none (raw boxes and scores)"}
    out = Path(args["out"]) if args["out"] else default_out(checkpoint, size, nms is not None)
    export_onnx(model, out, nms, metadata)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): input images uint8 [B,3,{size},{size}] BGR, outputs "
          + (f"num_dets, det_boxes, det_scores, det_labels (NMS in the graph: {vars(nms)})" if nms else
             "boxes [B,N,4] xyxy input pixels, scores [B,N,C] (no NMS)"))
    if args["check"]:
        try:
            diff = check_against_torch(out, model, nms)
        except ImportError:
            print("check skipped: onnxruntime is not installed (pip install onnxruntime)")
        else:
            print(f"check: ONNX Runtime vs PyTorch on 3 random images, largest difference {diff:.2e}")
    return out
