"""Box geometry shared by the assigners, the losses and decoding.

Conventions (everywhere in rtmdet_exp):
- boxes are ``xyxy`` in input-image pixels, float tensors of shape ``[..., 4]``;
- distances are ``ltrb``: left, top, right, bottom from a prior point to the box sides, in pixels;
- a prior is ``(x, y, stride_w, stride_h)`` (see :mod:`rtmdet_exp.ops.priors`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[..., 4]`` xyxy boxes; degenerate boxes give 0, never a negative area."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def pairwise_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of every box in ``boxes1 [..., N, 4]`` with every box in ``boxes2 [..., M, 4]``.

    Leading dimensions broadcast (a batch ``B``), so the result is ``[..., N, M]``.
    """
    area1 = box_area(boxes1)  # [..., N]
    area2 = box_area(boxes2)  # [..., M]
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # [..., N, M, 2]
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])  # [..., N, M, 2]
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # [..., N, M]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union.clamp(min=eps)


def aligned_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of matching pairs: ``boxes1[..., i]`` with ``boxes2[..., i]``, shape ``[...]``."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union.clamp(min=eps)


def distance2bbox(points: Tensor, distances: Tensor) -> Tensor:
    """Decode ``ltrb`` distances from points ``[..., 2+]`` (x, y first) into xyxy boxes.

    No clamping: training decodes raw (the spec, section 3); test-time clipping is the caller's job.
    """
    x, y = points[..., 0], points[..., 1]
    return torch.stack(
        (x - distances[..., 0], y - distances[..., 1], x + distances[..., 2], y + distances[..., 3]), dim=-1
    )


def bbox2distance(points: Tensor, boxes: Tensor) -> Tensor:
    """Encode xyxy boxes as ``ltrb`` distances from points; the inverse of :func:`distance2bbox`."""
    x, y = points[..., 0], points[..., 1]
    return torch.stack((x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y), dim=-1)


def points_inside_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """Whether each point ``[N, 2+]`` lies strictly inside each box ``[..., M, 4]``: ``[..., N, M]`` bool."""
    x = points[:, 0, None]  # [N, 1]
    y = points[:, 1, None]
    left = x - boxes[..., None, :, 0]  # [..., N, M]
    top = y - boxes[..., None, :, 1]
    right = boxes[..., None, :, 2] - x
    bottom = boxes[..., None, :, 3] - y
    return torch.stack((left, top, right, bottom), dim=-1).amin(dim=-1) > 0
