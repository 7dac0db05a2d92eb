"""Task-aligned assigner (TOOD) as a baseline assigner.

Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021,
https://arxiv.org/abs/2108.07755 (mmdet ``task_modules/assigners/task_aligned_assigner.py`` and
``dense_heads/tood_head.py``). RTMDet compares against it in its assigner ablation (spec section
2.2: TOOD without the task-aligned head 40.7 AP against 41.3 for the dynamic soft-label assigner).

Per image, for prior ``p`` and GT ``g`` of class ``c_g``:

1. Alignment metric ``t_pg = s_pg ** alpha * u_pg ** beta`` with ``s_pg = sigmoid(logit_p[c_g])``
   and ``u_pg = IoU(pred_box_p, g)`` (both detached).
2. Candidates of ``g``: priors whose point lies strictly inside ``g``. Among them ``g`` keeps the
   ``topk`` largest ``t_pg`` that are ``> 0`` (mmdet's ``candidate_metrics > 0``: a candidate whose
   predicted box misses ``g`` has ``t = 0`` and a soft target of 0, so it is no positive).
   The inside test comes before top-k here, as in the TOOD paper and the batched versions
   (mmyolo, PP-YOLOE, YOLOv8); mmdet's per-image assigner takes top-k over all priors and filters
   afterwards, which can leave fewer than ``topk`` positives.
3. A prior kept by several GTs goes to the one with the highest ``u_pg`` (as mmdet and TOOD; the
   first GT on an exact tie).
4. Soft target, TOOD's normalised alignment metric, over ``P_g`` = the positives finally assigned
   to ``g``: ``ious_p = t_pg * max_{q in P_g} u_qg / (max_{q in P_g} t_qg + eps)``, so the best
   aligned positive of each GT gets that GT's best IoU. 0 for background.

``ious`` therefore holds the normalised alignment target, not the raw IoU that
:class:`~rtmdet_exp.assigners.base.AssignResult` describes for RTMDet's assigner: it is what a
quality focal loss takes as soft target under TOOD, and what TOOD weights its box loss with and
sums for the normaliser, so RTMDet's loss consumes it unchanged (spec section 3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rtmdet_exp.assigners.base import AssignResult, Assigner
from rtmdet_exp.ops.boxes import pairwise_iou, points_inside_boxes


def _check_non_negative(name: str, value: float) -> float:
    """Return ``value`` as float, or raise a ValueError naming ``name`` unless it is a number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a float >= 0, got {value!r}")
    return float(value)


class TaskAlignedAssigner(Assigner):
    """TOOD's task-aligned assigner over a padded batch; see the module docstring for the formulas.

    Args:
        topk: positives kept per GT at most (largest alignment metric), ``int >= 1``.
        alpha: exponent of the classification score in the metric, ``float >= 0``.
        beta: exponent of the IoU in the metric, ``float >= 0``.
        eps: added to the per-GT max metric in the normalisation, ``float > 0``.
    """

    def __init__(self, *, topk: int = 13, alpha: float = 1.0, beta: float = 6.0, eps: float = 1e-9) -> None:
        super().__init__()
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be an int >= 1, got {topk!r}")
        self.topk = topk
        self.alpha = _check_non_negative("alpha", alpha)
        self.beta = _check_non_negative("beta", beta)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a float > 0, got {eps!r}")
        self.eps = float(eps)

    @torch.no_grad()
    def forward(
        self,
        pred_logits: Tensor,
        pred_boxes: Tensor,
        priors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> AssignResult:
        """Assign every prior of every image from detached scores and decoded boxes."""
        batch, num_priors = pred_boxes.shape[:2]
        num_gt = gt_boxes.shape[1]
        gt_index = torch.full((batch, num_priors), -1, dtype=torch.long, device=pred_boxes.device)
        if num_priors == 0 or num_gt == 0:
            return AssignResult.background(batch, num_priors, pred_boxes)

        iou = pairwise_iou(pred_boxes.detach(), gt_boxes)  # [B, N, M]
        class_idx = torch.where(gt_mask, gt_labels, 0)  # [B, M], padding labels may be anything
        class_idx = class_idx[:, None, :].expand(-1, num_priors, -1)  # [B, N, M]
        score = pred_logits.detach().gather(2, class_idx).sigmoid()  # [B, N, M]
        metric = score.pow(self.alpha) * iou.pow(self.beta)  # [B, N, M]

        candidates = points_inside_boxes(priors, gt_boxes) & gt_mask[:, None, :]  # [B, N, M]
        # non-candidates rank below every real metric (>= 0) and fail the "> 0" test below
        ranked = torch.where(candidates, metric, torch.full_like(metric, -1.0))
        top_metric, top_idx = ranked.topk(min(self.topk, num_priors), dim=1)  # [B, k, M]
        is_pos = torch.zeros_like(candidates).scatter_(1, top_idx, top_metric > 0)  # [B, N, M]

        claim_iou = torch.where(is_pos, iou, torch.full_like(iou, -torch.inf))  # [B, N, M]
        best_gt = claim_iou.argmax(dim=2)  # [B, N], first GT on ties
        pos = is_pos.any(dim=2)  # [B, N]
        gt_range = torch.arange(num_gt, device=best_gt.device)
        assigned = pos[..., None] & (best_gt[..., None] == gt_range)  # [B, N, M], one-hot on positives

        zero = torch.zeros_like(metric)
        gt_max_metric = torch.where(assigned, metric, zero).amax(dim=1)  # [B, M]
        gt_max_iou = torch.where(assigned, iou, zero).amax(dim=1)  # [B, M]
        gt_scale = gt_max_iou / (gt_max_metric + self.eps)  # [B, M]
        matched_metric = metric.gather(2, best_gt[..., None]).squeeze(2)  # [B, N]
        target = matched_metric * gt_scale.gather(1, best_gt)  # [B, N]

        gt_index = torch.where(pos, best_gt, gt_index)
        labels = torch.where(pos, gt_labels.gather(1, best_gt), -1)  # [B, N]
        ious = torch.where(pos, target, torch.zeros_like(target))
        return AssignResult(gt_index=gt_index, labels=labels, ious=ious)
