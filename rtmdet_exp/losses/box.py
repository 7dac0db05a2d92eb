"""Box regression losses on matched pairs of decoded boxes, computed for all positives at once.

Every loss here follows one contract::

    loss(pred [P, 4], target [P, 4], weight [P], avg_factor) -> scalar
        = sum(weight * per_box_loss) / avg_factor * loss_weight

Boxes are xyxy in input-image pixels (see :mod:`rtmdet_exp.ops.boxes`). RTMDet weights each positive
by its assigned IoU and divides by the clamped sum of those IoUs (spec section 3). With no positives
(``P = 0``) the loss is a zero that is still connected to ``pred``, so backward works on empty batches.
Values are computed in fp32 whatever the autocast state.

References: GIoU, Rezatofighi et al. 2019, https://arxiv.org/abs/1902.09630; DIoU and CIoU,
Zheng et al. 2020, https://arxiv.org/abs/1911.08287.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rtmdet_exp.ops.boxes import aligned_iou, box_area

_IOU_MODES = ("linear", "square", "log")


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _overlap(pred: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Intersection and union (clamped to ``eps``) of matching pairs, each ``[P]``."""
    lt = torch.maximum(pred[:, :2], target[:, :2])  # [P, 2]
    rb = torch.minimum(pred[:, 2:], target[:, 2:])  # [P, 2]
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = (box_area(pred) + box_area(target) - inter).clamp(min=eps)
    return inter, union


def _enclosing_wh(pred: Tensor, target: Tensor) -> Tensor:
    """Width and height ``[P, 2]`` of the smallest box enclosing each pair."""
    lt = torch.minimum(pred[:, :2], target[:, :2])  # [P, 2]
    rb = torch.maximum(pred[:, 2:], target[:, 2:])  # [P, 2]
    return (rb - lt).clamp(min=0)


def _centre_distance_sq(pred: Tensor, target: Tensor) -> Tensor:
    """Squared distance ``[P]`` between the centres of each pair."""
    centre_p = (pred[:, :2] + pred[:, 2:]) / 2  # [P, 2]
    centre_t = (target[:, :2] + target[:, 2:]) / 2  # [P, 2]
    return (centre_p - centre_t).pow(2).sum(dim=-1)


class _BoxLoss(nn.Module):
    """Shared contract: checks, fp32, empty-P handling, weighting and normalisation.

    Subclasses implement :meth:`per_box` on fp32 ``[P, 4]`` boxes with ``P > 0``.
    """

    def __init__(self, loss_weight: float) -> None:
        super().__init__()
        _check_non_negative("loss_weight", loss_weight)
        self.loss_weight = float(loss_weight)

    def per_box(self, pred: Tensor, target: Tensor) -> Tensor:
        """Unweighted loss of each pair, ``[P]``."""
        raise NotImplementedError

    def forward(
        self, pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor: Tensor | float = 1.0
    ) -> Tensor:
        """``sum(weight * per_box(pred, target)) / avg_factor * loss_weight``; ``weight`` defaults to ones."""
        if pred.dim() != 2 or pred.shape[-1] != 4 or target.shape != pred.shape:
            raise ValueError(
                f"pred and target must both be [P, 4], got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if weight is not None and weight.shape != pred.shape[:1]:
            raise ValueError(f"weight must be [P] = [{pred.shape[0]}], got {tuple(weight.shape)}")
        if not isinstance(avg_factor, Tensor) and avg_factor <= 0:
            raise ValueError(f"avg_factor must be > 0, got {avg_factor}")
        if pred.shape[0] == 0:
            return pred.float().sum() * 0.0
        with torch.autocast(device_type=pred.device.type, enabled=False):
            loss = self.per_box(pred.float(), target.float())  # [P]
            if weight is not None:
                loss = loss * weight.float()
            return loss.sum() / avg_factor * self.loss_weight

    def extra_repr(self) -> str:  # noqa: D102
        return f"loss_weight={self.loss_weight}"


class IoULoss(_BoxLoss):
    """IoU loss: ``1 - IoU`` (``linear``), ``1 - IoU ** 2`` (``square``) or ``-log(IoU)`` (``log``).

    The IoU is clamped to ``eps`` from below so ``log`` stays finite for disjoint boxes; note that
    disjoint boxes give no gradient in any mode (GIoU/DIoU fix that).
    """

    def __init__(self, loss_weight: float = 1.0, eps: float = 1e-6, mode: str = "linear") -> None:
        super().__init__(loss_weight)
        _check_positive("eps", eps)
        if mode not in _IOU_MODES:
            raise ValueError(f"mode must be one of {_IOU_MODES}, got {mode!r}")
        self.eps = float(eps)
        self.mode = mode

    def per_box(self, pred: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        iou = aligned_iou(pred, target, eps=self.eps).clamp(min=self.eps)
        if self.mode == "linear":
            return 1.0 - iou
        if self.mode == "square":
            return 1.0 - iou.pow(2)
        return -iou.log()

    def extra_repr(self) -> str:  # noqa: D102
        return f"loss_weight={self.loss_weight}, eps={self.eps}, mode={self.mode!r}"


class GIoULoss(_BoxLoss):
    """Generalised IoU loss ``1 - GIoU``, ``GIoU = IoU - (enclosing area - union) / enclosing area``.

    RTMDet's box loss (weight 2.0, spec section 3).
    """

    def __init__(self, loss_weight: float = 2.0, eps: float = 1e-6) -> None:
        super().__init__(loss_weight)
        _check_positive("eps", eps)
        self.eps = float(eps)

    def per_box(self, pred: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        inter, union = _overlap(pred, target, self.eps)
        enclose_wh = _enclosing_wh(pred, target)  # [P, 2]
        enclose = (enclose_wh[:, 0] * enclose_wh[:, 1]).clamp(min=self.eps)
        giou = inter / union - (enclose - union) / enclose
        return 1.0 - giou

    def extra_repr(self) -> str:  # noqa: D102
        return f"loss_weight={self.loss_weight}, eps={self.eps}"


class DIoULoss(_BoxLoss):
    """Distance IoU loss ``1 - IoU + rho^2 / c^2``.

    ``rho`` is the distance between the box centres and ``c`` the diagonal of the enclosing box.
    """

    def __init__(self, loss_weight: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__(loss_weight)
        _check_positive("eps", eps)
        self.eps = float(eps)

    def penalised_iou(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """IoU ``[P]`` and the DIoU centre-distance penalty ``rho^2 / c^2`` ``[P]``."""
        inter, union = _overlap(pred, target, self.eps)
        enclose_wh = _enclosing_wh(pred, target)  # [P, 2]
        diag_sq = enclose_wh.pow(2).sum(dim=-1) + self.eps
        return inter / union, _centre_distance_sq(pred, target) / diag_sq

    def per_box(self, pred: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        iou, penalty = self.penalised_iou(pred, target)
        return 1.0 - iou + penalty

    def extra_repr(self) -> str:  # noqa: D102
        return f"loss_weight={self.loss_weight}, eps={self.eps}"


class CIoULoss(DIoULoss):
    """Complete IoU loss ``1 - IoU + rho^2 / c^2 + a * v``.

    ``v = 4 / pi^2 * (atan(w_t / h_t) - atan(w_p / h_p))^2`` measures aspect-ratio mismatch and the
    trade-off ``a = v / (1 - IoU + v)`` is treated as a constant in backward, as in the paper.
    """

    def per_box(self, pred: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        iou, penalty = self.penalised_iou(pred, target)
        w_p = pred[:, 2] - pred[:, 0]
        h_p = pred[:, 3] - pred[:, 1] + self.eps
        w_t = target[:, 2] - target[:, 0]
        h_t = target[:, 3] - target[:, 1] + self.eps
        v = (4.0 / math.pi**2) * (torch.atan(w_t / h_t) - torch.atan(w_p / h_p)).pow(2)
        with torch.no_grad():
            trade_off = v / (1.0 - iou + v + self.eps)
        return 1.0 - iou + penalty + trade_off * v


class L1Loss(_BoxLoss):
    """L1 distance between xyxy coordinates, summed over the 4 coordinates of each pair.

    In pixels, so on real images it is tens to hundreds per box: give it a small ``loss_weight``.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)

    def per_box(self, pred: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        return (pred - target).abs().sum(dim=-1)
