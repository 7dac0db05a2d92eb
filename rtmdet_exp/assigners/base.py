"""The assigner interface every label assigner in rtmdet_exp follows.

An assigner decides, for a whole padded batch at once, which prior learns which GT box and with
what soft target. Inputs are detached predictions; nothing here takes gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class AssignResult:
    """What an assigner returns.

    gt_index: ``[B, N]`` long, index into the padded GT axis ``M``; -1 for background.
    labels:   ``[B, N]`` long, class id of the matched GT; -1 for background.
    ious:     ``[B, N]`` float, IoU of the prior's predicted box with its matched GT (the soft
              target for quality-aware losses and the weight of the box loss); 0 for background.
    """

    gt_index: Tensor
    labels: Tensor
    ious: Tensor

    @classmethod
    def background(cls, batch: int, num_priors: int, like: Tensor) -> AssignResult:
        """Every prior background (no GT or no prior): index and label -1, soft target 0."""
        gt_index = torch.full((batch, num_priors), -1, dtype=torch.long, device=like.device)
        return cls(gt_index, gt_index.clone(), like.new_zeros(batch, num_priors))

    @property
    def pos_mask(self) -> Tensor:
        """``[B, N]`` bool, True where a prior is matched to a GT."""
        return self.gt_index >= 0


class Assigner(nn.Module):
    """Base class: ``forward(pred_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_mask)``.

    Shapes: pred_logits ``[B, N, C]`` raw logits, pred_boxes ``[B, N, 4]`` decoded xyxy pixels,
    priors ``[N, 4]`` (x, y, stride_w, stride_h), gt_boxes ``[B, M, 4]`` xyxy, gt_labels ``[B, M]``
    long, gt_mask ``[B, M]`` bool (False marks padding). Returns an :class:`AssignResult`.
    """

    def forward(  # noqa: D102 - documented on the class
        self,
        pred_logits: Tensor,
        pred_boxes: Tensor,
        priors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> AssignResult:
        raise NotImplementedError


def check_inputs(
    pred_logits: Tensor, pred_boxes: Tensor, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor
) -> None:
    """Raise a ValueError naming the argument whose shape breaks the :class:`Assigner` contract."""
    if pred_logits.dim() != 3:
        raise ValueError(f"pred_logits must be [B, N, C]; got shape {tuple(pred_logits.shape)}")
    num_images, num_priors, _ = pred_logits.shape
    expected = {
        "pred_boxes": (pred_boxes, (num_images, num_priors, 4)),
        "priors": (priors, (num_priors, 4)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}; got {tuple(tensor.shape)}")
    if gt_boxes.dim() != 3 or gt_boxes.shape[0] != num_images or gt_boxes.shape[2] != 4:
        raise ValueError(f"gt_boxes must be [B={num_images}, M, 4]; got {tuple(gt_boxes.shape)}")
    num_gts = gt_boxes.shape[1]
    for name, tensor in (("gt_labels", gt_labels), ("gt_mask", gt_mask)):
        if tuple(tensor.shape) != (num_images, num_gts):
            raise ValueError(f"{name} must have shape {(num_images, num_gts)}; got {tuple(tensor.shape)}")
