"""ONNX export of a detector: dynamic batch, decoding in the graph, NMS optional.

Input ``images``: uint8 ``[B,3,H,W]`` BGR, already letterboxed to the export size (normalisation is
inside the graph). Outputs without NMS: ``boxes [B,N,4]`` (xyxy input pixels, unclipped) and
``scores [B,N,C]`` (sigmoid class probabilities), equal to ``Detector.forward_flat``'s.

With NMS the graph also does what ``Detector.predict`` does after the network, in input pixels:
per-level top ``nms_pre``, clipping to the input, ``score_thr``, class-aware NMS (ONNX
``NonMaxSuppression``, :mod:`.nms_op`) and the best ``max_per_img`` per image. Outputs have a fixed
size: ``num_dets [B]`` int64, ``det_boxes [B,M,4]``, ``det_scores [B,M]``, ``det_labels [B,M]``
(``M = max_per_img``; the first ``num_dets`` rows of each image are detections in score order, the
rest are zeros with label -1). Mapping boxes back through the letterbox is the caller's job.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rtmdet_exp.deploy import nms_op  # noqa: F401  (registers torch.ops.rtmdet_exp.multiclass_nms)
from rtmdet_exp.deploy.inference import InferenceModel
from rtmdet_exp.models.postprocess import PostprocessConfig

__all__ = ["ExportModel", "detection_difference", "export_onnx", "onnxruntime_outputs", "output_names"]

log = logging.getLogger(__name__)


def output_names(nms: bool) -> list[str]:
    return ["num_dets", "det_boxes", "det_scores", "det_labels"] if nms else ["boxes", "scores"]


class ExportModel(nn.Module):
    """:class:`InferenceModel` plus, when ``nms`` is a :class:`PostprocessConfig`, the in-graph selection."""

    def __init__(self, model: InferenceModel, nms: PostprocessConfig | None) -> None:
        super().__init__()
        self.model, self.cfg = model, nms

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        scores, boxes = self.model(images)  # [B, N, C], [B, N, 4]
        if self.cfg is None:
            return boxes, scores
        return self.select(scores, boxes)

    def _top_per_level(self, scores: Tensor) -> Tensor:
        """``scores`` with every pair outside its level's top ``nms_pre`` set to 0 (``[B,N,C]``)."""
        batch, _, classes = scores.shape
        levels, start = [], 0
        for size in self.model.level_sizes:
            level = scores[:, start : start + size].reshape(batch, size * classes)  # [B, N_l*C]
            if self.cfg.nms_pre < size * classes:  # a static choice: sizes are fixed at export
                top, idx = level.topk(self.cfg.nms_pre, dim=1)
                level = torch.zeros_like(level).scatter(1, idx, top)
            levels.append(level.reshape(batch, size, classes))
            start += size
        return torch.cat(levels, dim=1)

    def select(self, scores: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cfg = self.cfg
        batch, num_priors, classes = scores.shape
        h, w = self.model.img_hw
        limits = boxes.new_tensor([w, h, w, h])
        boxes = torch.minimum(boxes.clamp(min=0), limits)  # clipped to the input, as predict clips
        proper = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])  # [B, N]
        scores = self._top_per_level(scores) * proper[..., None]
        per_class = scores.transpose(1, 2).contiguous()  # [B, C, N]
        kept = torch.ops.rtmdet_exp.multiclass_nms(boxes, per_class, cfg.iou_threshold, cfg.score_thr)  # [K, 3]
        index = (kept[:, 0], kept[:, 1], kept[:, 2])
        survivors = torch.zeros_like(per_class).index_put(index, per_class[index])  # [B, C, N]
        top, flat = survivors.reshape(batch, classes * num_priors).topk(min(cfg.max_per_img, classes * num_priors), 1)
        labels, prior = flat // num_priors, flat % num_priors  # [B, M] each
        det_boxes = torch.gather(boxes, 1, prior[..., None].expand(-1, -1, 4))  # [B, M, 4]
        valid = top > cfg.score_thr
        num_dets = valid.sum(dim=1)
        det_boxes = torch.where(valid[..., None], det_boxes, torch.zeros_like(det_boxes))
        return num_dets, det_boxes, torch.where(valid, top, torch.zeros_like(top)), torch.where(
            valid, labels, torch.full_like(labels, -1))


def export_onnx(model: InferenceModel, path: str | Path, nms: PostprocessConfig | None,
                metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` (fp32, on the CPU) as ONNX with a dynamic batch dimension; returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportModel(model, nms).eval()
    h, w = model.img_hw
    example = (torch.zeros((2, 3, h, w), dtype=torch.uint8),)
    table = nms_op.onnx_translation() if nms is not None else None
    with contextlib.redirect_stdout(io.StringIO()) as chatter:  # the exporter prints its progress
        program = torch.onnx.export(
            wrapper, example, dynamo=True, input_names=["images"], output_names=output_names(nms is not None),
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
            custom_translation_table=table, external_data=False,
        )
    log.debug("%s", chatter.getvalue())
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, str(tmp))
    tmp.replace(path)
    return path


def onnxruntime_outputs(path: str | Path, images: Tensor) -> list[Any]:
    """The exported graph's outputs for ``images`` (uint8 ``[B,3,H,W]``) in ONNX Runtime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.cpu().numpy()})


def detection_difference(got: list[Any], want: tuple[Tensor, ...]) -> float:
    """How far two sets of NMS outputs are apart, order within an image ignored (``inf``: other counts).

    Detections of nearly equal score may come out in either order (the runtimes round differently),
    so each detection is compared with the closest one of the same label on the other side: the
    result is the largest such box or score difference, in both directions.
    """
    worst = 0.0
    for image in range(len(want[0])):
        n = int(want[0][image])
        if int(got[0][image]) != n:
            return float("inf")
        if n == 0:
            continue
        rows = [torch.as_tensor(g[image][:n]).double() for g in got[1:]]  # boxes, scores, labels
        cols = [w[image][:n].double() for w in want[1:]]
        gap = torch.maximum((rows[0][:, None] - cols[0][None]).abs().amax(-1),
                            (rows[1][:, None] - cols[1][None]).abs())  # [n, n]
        gap = torch.where(rows[2][:, None] == cols[2][None], gap, torch.full_like(gap, float("inf")))
        worst = max(worst, float(gap.amin(1).max()), float(gap.amin(0).max()))
    return worst
