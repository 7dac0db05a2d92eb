"""Class-aware NMS as one operator that exports to ONNX's ``NonMaxSuppression``.

``torch.ops.rtmdet_exp.multiclass_nms(boxes [B,N,4], scores [B,C,N], iou_threshold, score_threshold)``
returns the kept ``(batch, class, box)`` triples ``[K,3]`` int64, exactly the output of ONNX's
``NonMaxSuppression`` (opset 10+) with an unlimited ``max_output_boxes_per_class``: per image and
class, boxes scoring above ``score_threshold`` are kept greedily unless their IoU with a kept box
exceeds ``iou_threshold``. In PyTorch it runs :func:`rtmdet_exp.ops.nms.batched_nms` (the rule of
:func:`rtmdet_exp.models.postprocess.postprocess`); at export :func:`onnx_translation` maps it to the
ONNX operator, so that the exported graph holds the NMS instead of leaving it to the caller.
Triples come out in PyTorch by decreasing score, in ONNX Runtime by image and class: callers must
not depend on the order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rtmdet_exp.ops.nms import batched_nms

__all__ = ["multiclass_nms", "onnx_translation"]


@torch.library.custom_op("rtmdet_exp::multiclass_nms", mutates_args=())
def multiclass_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    """Kept ``(batch, class, box)`` index triples ``[K,3]`` for ``boxes [B,N,4]`` xyxy, ``scores [B,C,N]``."""
    num_classes = scores.shape[1]
    b, c, n = (scores > score_threshold).nonzero(as_tuple=True)  # each [P]
    keep = batched_nms(boxes[b, n].float(), scores[b, c, n].float(), b * num_classes + c, iou_threshold)
    return torch.stack((b[keep], c[keep], n[keep]), dim=1)


@multiclass_nms.register_fake
def _multiclass_nms_shape(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    kept = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty((kept, 3), dtype=torch.int64)


def onnx_translation() -> dict[Callable[..., Any], Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export``: the operator as ONNX ``NonMaxSuppression``.

    ONNX reads boxes as ``[y1, x1, y2, x2]`` by default; IoU does not change when x and y swap
    roles, so xyxy boxes give the same result.
    """
    from onnxscript import opset18 as op  # the exporter's dependency: only needed at export

    def nms(boxes: Any, scores: Any, iou_threshold: float, score_threshold: float) -> Any:
        unlimited = op.Constant(value_int=2**31 - 1)
        iou = op.Constant(value_float=iou_threshold)
        score = op.Constant(value_float=score_threshold)
        return op.NonMaxSuppression(boxes, scores, unlimited, iou, score, center_point_box=0)

    return {torch.ops.rtmdet_exp.multiclass_nms.default: nms}
