"""ATSS: Adaptive Training Sample Selection, as a baseline assigner for point priors.

Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via Adaptive
Training Sample Selection", CVPR 2020, https://arxiv.org/abs/1912.02424 (mmdet
``task_modules/assigners/atss_assigner.py``). RTMDet compares against it in its assigner ablation
(spec section 2.2: ATSS 39.2 AP against 41.3 for the dynamic soft-label assigner).

RTMDet priors are points, so each prior ``p = (x, y, s_w, s_h)`` gets a virtual square anchor
``A_p`` of side ``anchor_scale * stride`` centred on the point (mmdet's ATSS uses one anchor per
location with ``octave_base_scale=8, scales_per_octave=1``, hence ``anchor_scale=8``).

Per image and per GT ``g`` (centre ``c_g``):

1. Candidates ``C_g``: on every feature level ``l``, the ``k_l = min(topk, N_l)`` priors whose
   points are nearest to ``c_g`` in L2 distance. A level is the set of priors sharing one
   ``stride_w`` (``priors[:, 2]``); ``N_l`` is counted, never passed in.
2. ``IoU_pg = IoU(A_p, g)`` for ``p`` in ``C_g``; threshold
   ``thr_g = mean_{p in C_g} IoU_pg + std_{p in C_g} IoU_pg`` with the unbiased std
   (``torch.std`` default, as mmdet), so with a single candidate overall it is NaN and the GT
   gets no positives, as in mmdet.
3. Positives of ``g``: ``p in C_g`` with ``IoU_pg >= thr_g`` and, when
   ``center_sampling_only_inside``, the point of ``p`` strictly inside ``g`` (all of l, t, r,
   b > 0; mmdet uses a 0.01 px margin, we use the shared strict test ``points_inside_boxes``).
4. A prior that is a positive of several GTs goes to the one with the highest ``IoU_pg``
   (anchor IoU; the first GT on an exact tie).

Outputs (:class:`~rtmdet_exp.assigners.base.AssignResult`): ``gt_index`` and ``labels`` of the
matched GT, and ``ious = IoU(pred_box_p, g)``, the IoU of the prior's *predicted* (detached) box
with its matched GT, 0 for background. That is the quantity RTMDet's loss consumes from any
assigner (its head reads ``max_overlaps`` as the QFL soft target and the GIoU weight, and sums it
for the normaliser, spec section 3), and the quality target GFL computes for QFL on top of ATSS.
It is *not* the anchor IoU of step 2, which only selects samples. ATSS ignores ``pred_logits``
and selects samples from geometry alone; ``pred_boxes`` only enter the soft target.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rtmdet_exp.assigners.base import AssignResult, Assigner
from rtmdet_exp.ops.boxes import aligned_iou, pairwise_iou, points_inside_boxes


class ATSSAssigner(Assigner):
    """ATSS over a padded batch; see the module docstring for the formulas.

    Args:
        topk: candidates kept per feature level and GT (nearest points), ``int >= 1``.
        anchor_scale: side of the virtual square anchor in strides, ``float > 0``.
        center_sampling_only_inside: keep only positives whose point lies strictly inside the GT.
    """

    def __init__(
        self, *, topk: int = 9, anchor_scale: float = 8.0, center_sampling_only_inside: bool = True
    ) -> None:
        super().__init__()
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be an int >= 1, got {topk!r}")
        if isinstance(anchor_scale, bool) or not isinstance(anchor_scale, (int, float)) or not anchor_scale > 0:
            raise ValueError(f"anchor_scale must be a float > 0, got {anchor_scale!r}")
        if not isinstance(center_sampling_only_inside, bool):
            raise ValueError(
                f"center_sampling_only_inside must be True or False, got {center_sampling_only_inside!r}"
            )
        self.topk = topk
        self.anchor_scale = float(anchor_scale)
        self.center_sampling_only_inside = center_sampling_only_inside

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
        """Assign every prior of every image; ``pred_logits`` is accepted for the interface only."""
        batch, num_priors = pred_boxes.shape[:2]
        num_gt = gt_boxes.shape[1]
        gt_index = torch.full((batch, num_priors), -1, dtype=torch.long, device=pred_boxes.device)
        if num_priors == 0 or num_gt == 0:
            return AssignResult.background(batch, num_priors, pred_boxes)

        points = priors[:, :2]  # [N, 2]
        half_side = priors[:, 2:4] * (self.anchor_scale / 2)  # [N, 2]
        anchors = torch.cat((points - half_side, points + half_side), dim=-1)  # [N, 4]
        anchor_iou = pairwise_iou(anchors[None], gt_boxes)  # [B, N, M]

        gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # [B, M, 2]
        # squared distance ranks the same as L2 and skips the sqrt
        sq_dist = (points[None, :, None, :] - gt_centres[:, None, :, :]).pow(2).sum(-1)  # [B, N, M]

        level_candidates = []
        for stride in torch.unique(priors[:, 2]).tolist():
            level_idx = torch.nonzero(priors[:, 2] == stride).squeeze(1)  # [N_l] indices into N
            k = min(self.topk, level_idx.numel())
            nearest = sq_dist[:, level_idx].topk(k, dim=1, largest=False).indices  # [B, k, M] into N_l
            level_candidates.append(level_idx[nearest])  # [B, k, M] into N
        candidate_idx = torch.cat(level_candidates, dim=1)  # [B, K, M], K = sum of k over levels

        candidate_iou = anchor_iou.gather(1, candidate_idx)  # [B, K, M]
        threshold = candidate_iou.mean(dim=1, keepdim=True) + candidate_iou.std(dim=1, keepdim=True)  # [B, 1, M]
        candidate_pos = candidate_iou >= threshold  # [B, K, M]
        if self.center_sampling_only_inside:
            inside = points_inside_boxes(priors, gt_boxes)  # [B, N, M]
            candidate_pos &= inside.gather(1, candidate_idx)
        # candidate indices are distinct within a (image, GT) column, so the scatter has no collisions
        is_pos = torch.zeros_like(anchor_iou, dtype=torch.bool).scatter_(1, candidate_idx, candidate_pos)
        is_pos &= gt_mask[:, None, :]  # [B, N, M], padding GTs never claim a prior

        claim_iou = torch.where(is_pos, anchor_iou, torch.full_like(anchor_iou, -torch.inf))  # [B, N, M]
        best_gt = claim_iou.argmax(dim=2)  # [B, N], first GT on ties
        pos = is_pos.any(dim=2)  # [B, N]
        gt_index = torch.where(pos, best_gt, gt_index)
        labels = torch.where(pos, gt_labels.gather(1, best_gt), -1)  # [B, N]
        matched_boxes = gt_boxes.gather(1, best_gt[..., None].expand(-1, -1, 4))  # [B, N, 4]
        pred_iou = aligned_iou(pred_boxes.detach(), matched_boxes)  # [B, N]
        ious = torch.where(pos, pred_iou, torch.zeros_like(pred_iou))
        return AssignResult(gt_index=gt_index, labels=labels, ious=ious)
