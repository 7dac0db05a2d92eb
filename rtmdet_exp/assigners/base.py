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
