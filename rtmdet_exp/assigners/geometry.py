"""Prior-to-box geometry of the dynamic assigner, as ``[b, m, N]`` masks and distances over GT chunks.

Kept apart from :mod:`rtmdet_exp.ops.boxes` because the assigner evaluates these per chunk of GTs
with 1-byte comparisons to bound memory (``[b, m, N]`` instead of stacked ``[..., 4]`` floats).
"""

from __future__ import annotations

from torch import Tensor


def inside_box(priors: Tensor, boxes: Tensor) -> Tensor:
    """``[b, m, N]`` bool: prior point strictly inside each box ``[b, m, 4]``.

    Same answer as ``ops.boxes.points_inside_boxes`` (x > x1 iff x - x1 > 0 in IEEE arithmetic) but
    with 1-byte comparisons instead of a stacked ``[..., 4]`` float tensor, to keep chunks small.
    """
    x = priors[None, None, :, 0]  # [1, 1, N]
    y = priors[None, None, :, 1]
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))  # [b, m, 1] each
    return (x > x1) & (y > y1) & (x < x2) & (y < y2)


def inside_center(priors: Tensor, boxes: Tensor, radius: float) -> Tensor:
    """``[b, m, N]`` bool: prior point strictly inside the square of +-radius*stride around each box centre."""
    x = priors[None, None, :, 0]  # [1, 1, N]
    y = priors[None, None, :, 1]
    rx = priors[None, None, :, 2] * radius
    ry = priors[None, None, :, 3] * radius
    cx = ((boxes[..., 0] + boxes[..., 2]) / 2.0)[..., None]  # [b, m, 1]
    cy = ((boxes[..., 1] + boxes[..., 3]) / 2.0)[..., None]
    return (x > cx - rx) & (y > cy - ry) & (x < cx + rx) & (y < cy + ry)


def center_distance(priors: Tensor, boxes: Tensor) -> Tensor:
    """``[b, m, N]``: distance from each prior point to each box centre, in units of the prior's stride_w."""
    cx = ((boxes[..., 0] + boxes[..., 2]) / 2.0)[..., None]  # [b, m, 1]
    cy = ((boxes[..., 1] + boxes[..., 3]) / 2.0)[..., None]
    dx = priors[None, None, :, 0] - cx  # [b, m, N]
    dy = priors[None, None, :, 1] - cy
    return (dx.square() + dy.square()).sqrt() / priors[None, None, :, 2]
