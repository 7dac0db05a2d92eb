"""Dense classification losses for one-stage detectors, computed on a whole padded batch at once.

Every loss here follows one contract::

    loss(logits [B, N, C], labels [B, N] long, targets [B, N] float, avg_factor) -> scalar

- ``logits`` are raw per-class scores (sigmoid, one binary problem per class; no background class);
- ``labels`` is the assigned class id of each prior, ``-1`` for background;
- ``targets`` is the soft target of each prior (the assigned IoU for positives, 0 for background);
  losses with hard targets ignore it;
- the per-element loss is summed over priors and classes, divided by ``avg_factor`` (the caller
  passes the spec's clamped sum of positive IoUs) and multiplied by ``loss_weight``.

Values are computed in fp32 whatever the autocast state, because the focal factors
(``sigmoid(x) ** beta`` of tiny probabilities) lose everything in bf16.

References: Quality Focal Loss, Li et al. 2020, https://arxiv.org/abs/2006.04388 (RTMDet's default,
spec section 3); Focal Loss, Lin et al. 2017, https://arxiv.org/abs/1708.02002; Varifocal Loss,
Zhang et al. 2021, https://arxiv.org/abs/2008.13367.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_inputs(logits: Tensor, labels: Tensor, targets: Tensor | None, avg_factor: Tensor | float) -> None:
    """Shape checks (no device sync): the contract is easy to break with a transposed [B, C, N]."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, N, C], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must be [B, N] = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
    if targets is not None and targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must be [B, N] = {tuple(logits.shape[:2])}, got {tuple(targets.shape)}")
    if not isinstance(avg_factor, Tensor) and avg_factor <= 0:
        raise ValueError(f"avg_factor must be > 0, got {avg_factor}")


def _scatter_on_class(labels: Tensor, values: Tensor, num_classes: int) -> Tensor:
    """Put ``values [B, N]`` at each positive prior's class, zeros elsewhere: ``[B, N, C]``.

    One scatter over all priors with the value masked to 0 on background: a background prior writes
    0 into class 0 of an all-zero row, a no-op, so only positives change the result (no nonzero(),
    hence no host sync).
    """
    pos = labels >= 0  # [B, N]
    src = torch.where(pos, values, torch.zeros_like(values)).unsqueeze(-1)  # [B, N, 1]
    index = labels.clamp(min=0).unsqueeze(-1)  # [B, N, 1]
    out = values.new_zeros((*labels.shape, num_classes))  # [B, N, C]
    return out.scatter_(-1, index, src)


def _positive_mask(labels: Tensor, num_classes: int) -> Tensor:
    """``[B, N, C]`` bool, True only at (positive prior, its class)."""
    ones = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    return _scatter_on_class(labels, ones, num_classes) > 0


def _reduce(loss: Tensor, avg_factor: Tensor | float, loss_weight: float) -> Tensor:
    """Sum everything, divide by ``avg_factor``, scale by ``loss_weight``."""
    return loss.sum() / avg_factor * loss_weight


class QualityFocalLoss(nn.Module):
    """Quality Focal Loss (GFL / RTMDet, spec section 3), sigmoid form.

    With ``p = sigmoid(x)`` and soft target ``s`` (the IoU of the prior's predicted box with its GT):

    - every (prior, class) pair starts with the negative term ``BCE(x, 0) * p ** beta``;
    - on the GT class of a positive prior it is replaced by ``BCE(x, s) * |s - p| ** beta``;
    - the other classes of a positive prior keep their negative term.

    ``targets`` is detached: the soft target is a label, not something to push.
    """

    def __init__(self, beta: float = 2.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        _check_non_negative("beta", beta)
        _check_non_negative("loss_weight", loss_weight)
        self.beta = float(beta)
        self.loss_weight = float(loss_weight)

    def forward(self, logits: Tensor, labels: Tensor, targets: Tensor, avg_factor: Tensor | float = 1.0) -> Tensor:
        """Loss for ``logits [B, N, C]``, ``labels [B, N]`` (-1 = bg), ``targets [B, N]`` soft IoU targets."""
        _check_inputs(logits, labels, targets, avg_factor)
        num_classes = logits.shape[-1]
        with torch.autocast(device_type=logits.device.type, enabled=False):
            x = logits.float()
            p = x.sigmoid()
            soft = _scatter_on_class(labels, targets.detach().float(), num_classes)  # [B, N, C]
            is_pos = _positive_mask(labels, num_classes)  # [B, N, C]
            neg = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none") * p.pow(self.beta)
            pos = F.binary_cross_entropy_with_logits(x, soft, reduction="none") * (soft - p).abs().pow(self.beta)
            loss = torch.where(is_pos, pos, neg)
            return _reduce(loss, avg_factor, self.loss_weight)

    def extra_repr(self) -> str:  # noqa: D102
        return f"beta={self.beta}, loss_weight={self.loss_weight}"


class FocalLoss(nn.Module):
    """Sigmoid focal loss (RetinaNet) on hard one-hot targets; ``targets`` is ignored.

    Per element, with ``t`` the one-hot target and ``p = sigmoid(x)``:
    ``BCE(x, t) * (alpha * t + (1 - alpha) * (1 - t)) * (t * (1 - p) + (1 - t) * p) ** gamma``.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        _check_unit_interval("alpha", alpha)
        _check_non_negative("gamma", gamma)
        _check_non_negative("loss_weight", loss_weight)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.loss_weight = float(loss_weight)

    def forward(
        self, logits: Tensor, labels: Tensor, targets: Tensor | None = None, avg_factor: Tensor | float = 1.0
    ) -> Tensor:
        """Loss for ``logits [B, N, C]`` and ``labels [B, N]`` (-1 = bg)."""
        _check_inputs(logits, labels, targets, avg_factor)
        num_classes = logits.shape[-1]
        with torch.autocast(device_type=logits.device.type, enabled=False):
            x = logits.float()
            p = x.sigmoid()
            t = _positive_mask(labels, num_classes).float()  # [B, N, C] one-hot, all zero for bg
            bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            alpha_t = self.alpha * t + (1.0 - self.alpha) * (1.0 - t)
            p_miss = t * (1.0 - p) + (1.0 - t) * p  # probability given to the wrong answer
            loss = bce * alpha_t * p_miss.pow(self.gamma)
            return _reduce(loss, avg_factor, self.loss_weight)

    def extra_repr(self) -> str:  # noqa: D102
        return f"alpha={self.alpha}, gamma={self.gamma}, loss_weight={self.loss_weight}"


class VarifocalLoss(nn.Module):
    """Varifocal loss (VFNet), sigmoid form.

    The target ``q`` is the soft target (IoU) on the GT class of a positive prior and 0 everywhere
    else. Per element ``BCE(x, q) * w`` with ``w = q`` (or 1 without ``iou_weighted``) where
    ``q > 0`` and ``w = alpha * p ** gamma`` where ``q = 0``. As in VFNet, an element counts as
    positive by ``q > 0``, so a positive prior whose IoU is exactly 0 is treated as a negative.
    ``targets`` is detached.
    """

    def __init__(
        self, alpha: float = 0.75, gamma: float = 2.0, iou_weighted: bool = True, loss_weight: float = 1.0
    ) -> None:
        super().__init__()
        _check_unit_interval("alpha", alpha)
        _check_non_negative("gamma", gamma)
        _check_non_negative("loss_weight", loss_weight)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.iou_weighted = bool(iou_weighted)
        self.loss_weight = float(loss_weight)

    def forward(self, logits: Tensor, labels: Tensor, targets: Tensor, avg_factor: Tensor | float = 1.0) -> Tensor:
        """Loss for ``logits [B, N, C]``, ``labels [B, N]`` (-1 = bg), ``targets [B, N]`` soft IoU targets."""
        _check_inputs(logits, labels, targets, avg_factor)
        num_classes = logits.shape[-1]
        with torch.autocast(device_type=logits.device.type, enabled=False):
            x = logits.float()
            p = x.sigmoid()
            q = _scatter_on_class(labels, targets.detach().float(), num_classes)  # [B, N, C]
            is_pos = q > 0
            pos_weight = q if self.iou_weighted else torch.ones_like(q)
            weight = torch.where(is_pos, pos_weight, self.alpha * p.pow(self.gamma))
            loss = F.binary_cross_entropy_with_logits(x, q, reduction="none") * weight
            return _reduce(loss, avg_factor, self.loss_weight)

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}, "
            f"loss_weight={self.loss_weight}"
        )


class BCELoss(nn.Module):
    """Plain binary cross-entropy with logits on hard one-hot targets; ``targets`` is ignored."""

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        _check_non_negative("loss_weight", loss_weight)
        self.loss_weight = float(loss_weight)

    def forward(
        self, logits: Tensor, labels: Tensor, targets: Tensor | None = None, avg_factor: Tensor | float = 1.0
    ) -> Tensor:
        """Loss for ``logits [B, N, C]`` and ``labels [B, N]`` (-1 = bg)."""
        _check_inputs(logits, labels, targets, avg_factor)
        num_classes = logits.shape[-1]
        with torch.autocast(device_type=logits.device.type, enabled=False):
            x = logits.float()
            t = _positive_mask(labels, num_classes).float()  # [B, N, C] one-hot, all zero for bg
            loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            return _reduce(loss, avg_factor, self.loss_weight)

    def extra_repr(self) -> str:  # noqa: D102
        return f"loss_weight={self.loss_weight}"
