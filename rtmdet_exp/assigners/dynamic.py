"""Dynamic label assignment (RTMDet's DynamicSoftLabelAssigner and YOLOX's SimOTA), batched.

RTMDet: arXiv 2212.07784; reference code: mmdet ``dynamic_soft_label_assigner.py`` and
``sim_ota_assigner.py`` (spec sections 2, 2.1, 2.2).

One class covers both assigners and the paper's ablation between them: the classification cost,
the centre prior, the IoU cost and the candidate rule are each switchable. Everything is computed
for the whole padded batch at once, with no Python loop over images or GT boxes; the only loops
walk over *chunks* of images and GTs, so that memory stays bounded (see ``max_pairs_per_chunk``).

Per (prior n, GT g) pair the cost is, in this order (as mmdet adds it):

    cost = cls_weight * C_cls + iou_weight * C_iou + C_center

and each GT takes its dynamic-k lowest-cost candidate priors; a prior taken by several GTs goes
to the argmin of its whole cost row.

Memory. Work is laid out GT-major, ``[b, m, N]`` for a block of ``b`` images and ``m`` GTs, and a
block holds at most ``max_pairs_per_chunk`` (image, GT, prior) pairs. At its peak a block needs about
40 bytes per pair in fp32: the IoU (4) and cost (4) matrices that live for the whole block, the
pair-validity and selection masks (1 + 1), and the transients of the IoU computation (corner
maxima/minima ``[..., 2]``, widths, intersection and union: about 30). The cls cost never builds a
``[b, m, N, C]`` tensor: the sum over classes is ``S(n)`` per prior plus a correction on the GT class
(spec section 2 step 4), so the only ``C``-sized tensors are per prior, ``[b, N, C]``, and blocks are
sized so that these too hold at most ``max_pairs_per_chunk`` entries. Peak memory therefore does not
grow with the number of GTs or images: many GTs cost time, not memory (spec section 7, items 1-3).

The automatic chunk (``max_pairs_per_chunk=None``) is 2**21 pairs on CPU (smaller tensors are reused
by malloc instead of page-faulted afresh, which was faster than larger blocks) and 2**24 on CUDA
(fewer kernel launches). Measured on CPU, one 640x640 image (8400 priors), 80 classes: the peak RSS
rose by about 160 MB with 500, 1000 or 2000 GTs alike (a single block of 8.4M pairs: 330 MB). On an
H100, batch 32 x 200 GTs with 2**24-pair blocks peaked 610 MB above the inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rtmdet_exp.assigners.base import Assigner, AssignResult, check_inputs
from rtmdet_exp.assigners.geometry import center_distance, inside_box, inside_center
from rtmdet_exp.ops.boxes import pairwise_iou

_CLS_COSTS = ("soft", "hard", "none")
_CLS_COST_CLASSES = ("all", "gt")
_CENTER_PRIORS = ("soft", "hard", "off")
_IOU_COSTS = ("log", "linear")
_CANDIDATES = ("inside_box", "box_or_center")

_EPS = 1e-7  # inside -log(IoU + eps), as mmdet
# Default chunk size (pairs) per device type when max_pairs_per_chunk is None. On CPU small chunks
# win: their tensors (8 MB) are reused by malloc instead of being mapped and page-faulted afresh for
# every op. On GPUs larger chunks cut kernel launches, and the caching allocator reuses memory.
_AUTO_PAIRS_PER_CHUNK = {"cpu": 2**21, "cuda": 2**24}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")


class DynamicSoftLabelAssigner(Assigner):
    """RTMDet's dynamic soft label assigner, with SimOTA and the paper's ablations as options.

    Defaults reproduce mmdet's ``DynamicSoftLabelAssigner(topk=13)``. SimOTA is
    ``cls_cost="hard", center_prior="hard", candidates="box_or_center", topk=10``.

    Args:
        cls_cost: ``"soft"``: BCE(logit, IoU-scaled one-hot) * |Y - sigmoid(logit)|^2 (DSLA);
            ``"hard"``: BCE(sigmoid(logit), one-hot) (SimOTA), computed from logits, which equals the
            probability form up to PyTorch's clamp of log at -100; ``"none"``: no cls cost.
        cls_cost_classes: ``"all"``: the cls cost is summed over all classes (mmdet);
            ``"gt"``: only the GT-class channel (mmyolo's batched DSLA).
        cls_weight: weight of the cls cost (1 in both references).
        center_prior: ``"soft"``: 10^(d - soft_center_radius), d = distance from the prior point to
            the GT centre in strides; ``"hard"``: ``hard_prior_cost`` unless the prior point is inside
            the GT box and inside its centre square of +-center_radius*stride; ``"off"``: none.
        iou_cost: ``"log"``: -log(IoU + 1e-7); ``"linear"``: 1 - IoU.
        iou_weight: weight of the IoU cost (3 in both references); 0 disables it.
        topk: at most this many top IoUs are summed into each GT's dynamic k (13 DSLA, 10 SimOTA).
        soft_center_radius: the distance in strides at which the soft centre prior costs 1.
        center_radius: half side, in strides, of the centre square (hard prior and candidates).
        hard_prior_cost: cost added by the hard centre prior (SimOTA's INF = 1e5).
        candidates: ``"inside_box"``: priors strictly inside any GT box (DSLA);
            ``"box_or_center"``: inside any GT box or any GT centre square (SimOTA).
        max_pairs_per_chunk: upper bound on (image, GT, prior) pairs processed at once; bounds peak
            memory at about 40 bytes per pair (module docstring). ``None``: 2**21 on CPU, 2**24 on
            CUDA. Results do not depend on it.
    """

    def __init__(
        self,
        *,
        cls_cost: str = "soft",
        cls_cost_classes: str = "all",
        cls_weight: float = 1.0,
        center_prior: str = "soft",
        iou_cost: str = "log",
        iou_weight: float = 3.0,
        topk: int = 13,
        soft_center_radius: float = 3.0,
        center_radius: float = 2.5,
        hard_prior_cost: float = 1e5,
        candidates: str = "inside_box",
        max_pairs_per_chunk: int | None = None,
    ) -> None:
        super().__init__()
        _check_choice("cls_cost", cls_cost, _CLS_COSTS)
        _check_choice("cls_cost_classes", cls_cost_classes, _CLS_COST_CLASSES)
        _check_choice("center_prior", center_prior, _CENTER_PRIORS)
        _check_choice("iou_cost", iou_cost, _IOU_COSTS)
        _check_choice("candidates", candidates, _CANDIDATES)
        _check_non_negative("cls_weight", cls_weight)
        _check_non_negative("iou_weight", iou_weight)
        _check_non_negative("hard_prior_cost", hard_prior_cost)
        if not (isinstance(topk, int) and not isinstance(topk, bool) and topk >= 1):
            raise ValueError(f"topk must be an int >= 1; got {topk!r}")
        if not (isinstance(soft_center_radius, (int, float)) and math.isfinite(soft_center_radius)):
            raise ValueError(f"soft_center_radius must be a finite number; got {soft_center_radius!r}")
        if not (isinstance(center_radius, (int, float)) and math.isfinite(center_radius) and center_radius > 0):
            raise ValueError(f"center_radius must be a finite number > 0; got {center_radius!r}")
        chunk = max_pairs_per_chunk
        if chunk is not None and not (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1):
            raise ValueError(f"max_pairs_per_chunk must be an int >= 1 or None (auto); got {max_pairs_per_chunk!r}")
        self.cls_cost = cls_cost
        self.cls_cost_classes = cls_cost_classes
        self.cls_weight = float(cls_weight)
        self.center_prior = center_prior
        self.iou_cost = iou_cost
        self.iou_weight = float(iou_weight)
        self.topk = topk
        self.soft_center_radius = float(soft_center_radius)
        self.center_radius = float(center_radius)
        self.hard_prior_cost = float(hard_prior_cost)
        self.candidates = candidates
        self.max_pairs_per_chunk = max_pairs_per_chunk

    def extra_repr(self) -> str:
        return (
            f"cls_cost={self.cls_cost!r}, cls_cost_classes={self.cls_cost_classes!r}, cls_weight={self.cls_weight}, "
            f"center_prior={self.center_prior!r}, iou_cost={self.iou_cost!r}, iou_weight={self.iou_weight}, "
            f"topk={self.topk}, soft_center_radius={self.soft_center_radius}, center_radius={self.center_radius}, "
            f"candidates={self.candidates!r}"
        )

    # ------------------------------------------------------------------ public API

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
        """Assign every prior of every image to a GT or to background (shapes: :class:`Assigner`)."""
        check_inputs(pred_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_mask)
        num_images, num_priors, num_classes = pred_logits.shape
        num_gts = gt_boxes.shape[1]
        device = pred_logits.device
        gt_index = torch.full((num_images, num_priors), -1, dtype=torch.long, device=device)
        work_dtype = torch.promote_types(pred_logits.dtype, torch.float32)  # fp16/bf16 inputs: fp32
        ious = torch.zeros((num_images, num_priors), dtype=work_dtype, device=device)
        if num_images == 0 or num_priors == 0 or num_gts == 0:
            return AssignResult(gt_index=gt_index, labels=gt_index.clone(), ious=ious)

        with torch.autocast(device_type=device.type, enabled=False):
            logits, boxes, priors, gt_boxes, gt_labels, gt_mask = self._prepare(
                pred_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_mask
            )
            max_pairs = self.max_pairs_per_chunk or _AUTO_PAIRS_PER_CHUNK.get(device.type, _AUTO_PAIRS_PER_CHUNK["cpu"])
            # A block of images holds <= max_pairs (GT, prior) pairs and <= max_pairs (prior, class)
            # entries (the per-prior cls sums); an image with more pairs is split over GT chunks.
            images_per_block = max(1, max_pairs // (num_priors * max(num_gts, num_classes)))
            gts_per_chunk = max(1, min(num_gts, max_pairs // num_priors))
            for i0 in range(0, num_images, images_per_block):
                sl = slice(i0, i0 + images_per_block)
                block_index, block_ious = self._assign_block(
                    logits[sl], boxes[sl], priors, gt_boxes[sl], gt_labels[sl], gt_mask[sl], gts_per_chunk
                )
                gt_index[sl] = block_index
                ious[sl] = block_ious

        labels = torch.where(gt_index >= 0, gt_labels.gather(1, gt_index.clamp(min=0)), -1)  # [B, N]
        return AssignResult(gt_index=gt_index, labels=labels, ious=ious)

    @torch.no_grad()
    def cost_matrix(
        self,
        pred_logits: Tensor,
        pred_boxes: Tensor,
        priors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The full matching cost, for inspection and tests (unchunked: ``B*N*M`` memory).

        Returns ``cost [B, N, M]`` (+inf where the prior is no candidate or the GT is padding; real
        costs that overflow are clamped to the dtype's max so they still rank below masked ones),
        ``ious [B, N, M]`` (IoU of each predicted box with each GT) and ``candidates [B, N]`` bool.
        """
        check_inputs(pred_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_mask)
        with torch.autocast(device_type=pred_logits.device.type, enabled=False):
            logits, boxes, priors, gt_boxes, gt_labels, gt_mask = self._prepare(
                pred_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_mask
            )
            candidates = self._candidates(priors, gt_boxes, gt_mask, max(1, gt_boxes.shape[1]))
            per_prior = self._per_prior_cls_cost(logits)
            logits_t = logits.transpose(1, 2).contiguous()  # [B, N, C] -> [B, C, N]
            cost, ious = self._pair_cost(logits_t, per_prior, boxes, priors, gt_boxes, gt_labels, gt_mask, candidates)
        return cost.transpose(1, 2), ious.transpose(1, 2), candidates  # [B, M, N] -> [B, N, M]

    # ------------------------------------------------------------------ internals

    def _prepare(
        self,
        pred_logits: Tensor,
        pred_boxes: Tensor,
        priors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Detach, promote to at least fp32, and neutralise padding GTs (zero box, label 0)."""
        dtype = torch.promote_types(pred_logits.dtype, torch.float32)
        gt_mask = gt_mask.to(torch.bool)
        gt_boxes = gt_boxes.detach().to(dtype).masked_fill(~gt_mask[..., None], 0.0)
        gt_labels = gt_labels.to(torch.long).masked_fill(~gt_mask, 0)
        return (
            pred_logits.detach().to(dtype),
            pred_boxes.detach().to(dtype),
            priors.detach().to(dtype),
            gt_boxes,
            gt_labels,
            gt_mask,
        )

    def _assign_block(
        self,
        logits: Tensor,
        boxes: Tensor,
        priors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
        gts_per_chunk: int,
    ) -> tuple[Tensor, Tensor]:
        """Assign a block of ``b`` images, walking over chunks of GTs; returns ``gt_index, ious [b, N]``.

        Chunks only split the GT axis of independent per-GT work (costs, dynamic k, each GT's k
        picks); what couples GTs (how many picked a prior, its row argmin) is carried as running
        per-prior state, so the result equals the unchunked one exactly.
        """
        num_images, num_priors = boxes.shape[:2]
        num_gts = gt_boxes.shape[1]
        device, dtype = boxes.device, boxes.dtype
        candidates = self._candidates(priors, gt_boxes, gt_mask, gts_per_chunk)  # [b, N]
        per_prior = self._per_prior_cls_cost(logits)  # [b, N] or None
        logits_t = logits.transpose(1, 2).contiguous()  # [b, N, C] -> [b, C, N], for gathers along C
        k_cap = min(self.topk, num_priors)
        rank = torch.arange(k_cap, device=device)[None, None, :]  # [1, 1, k]

        pick_count = torch.zeros((num_images, num_priors), dtype=torch.long, device=device)
        pick_gt = torch.zeros((num_images, num_priors), dtype=torch.long, device=device)
        pick_iou = torch.zeros((num_images, num_priors), dtype=dtype, device=device)
        row_min = torch.full((num_images, num_priors), math.inf, dtype=dtype, device=device)
        row_gt = torch.zeros((num_images, num_priors), dtype=torch.long, device=device)
        row_iou = torch.zeros((num_images, num_priors), dtype=dtype, device=device)

        for g0 in range(0, num_gts, gts_per_chunk):
            sl = slice(g0, g0 + gts_per_chunk)
            cost, ious = self._pair_cost(
                logits_t, per_prior, boxes, priors, gt_boxes[:, sl], gt_labels[:, sl], gt_mask[:, sl], candidates
            )  # [b, m, N] each
            pair_ok = candidates[:, None, :] & gt_mask[:, sl, None]  # [b, m, N]

            # Dynamic k: sum of the top-min(topk, #candidates) IoUs over the image's candidates.
            # Non-candidates count as IoU 0; IoUs are >= 0, so when there are fewer candidates than
            # topk the extra zeros leave the sum unchanged.
            cand_ious = ious.masked_fill(~candidates[:, None, :], 0.0)  # [b, m, N]
            dynamic_k = cand_ious.topk(k_cap, dim=2).values.sum(dim=2).int().clamp(min=1)  # [b, m]
            del cand_ious

            # Each GT picks its dynamic_k lowest-cost priors. k <= #candidates of the image, and
            # masked entries are +inf, above every (clamped, finite) real cost, so picks are
            # candidates; `& pair_ok` only drops picks of padding GTs and GT-less images.
            order = cost.topk(k_cap, dim=2, largest=False).indices  # [b, m, k]
            keep = rank < dynamic_k[:, :, None]  # [b, m, k]
            selected = torch.zeros_like(pair_ok).scatter_(2, order, keep) & pair_ok  # [b, m, N]

            # Running per-prior state: how many GTs picked it and which one (used when exactly one).
            # (min/max with a dim return the first index on ties, as argmin/argmax, and run 5-9x
            # faster than them over this middle axis on the CPU.)
            chunk_count = selected.sum(dim=1)  # [b, N]
            picked = chunk_count > 0
            first = selected.to(torch.uint8).max(dim=1, keepdim=True).indices  # [b, 1, N] first picking GT
            pick_count += chunk_count
            pick_gt = torch.where(picked, first.squeeze(1) + g0, pick_gt)
            pick_iou = torch.where(picked, ious.gather(1, first).squeeze(1), pick_iou)

            # Running row argmin over all GTs (first index wins ties, as torch.argmin).
            low, arg = cost.min(dim=1, keepdim=True)  # [b, 1, N] each
            low = low.squeeze(1)  # [b, N]
            better = low < row_min
            row_min = torch.where(better, low, row_min)
            row_gt = torch.where(better, arg.squeeze(1) + g0, row_gt)
            row_iou = torch.where(better, ious.gather(1, arg).squeeze(1), row_iou)
            del cost, ious, pair_ok, selected

        conflict = pick_count > 1
        single = pick_count == 1
        gt_index = torch.where(conflict, row_gt, torch.where(single, pick_gt, -1))  # [b, N]
        matched_iou = torch.where(conflict, row_iou, torch.where(single, pick_iou, 0.0))  # [b, N]
        return gt_index, matched_iou

    def _candidates(self, priors: Tensor, gt_boxes: Tensor, gt_mask: Tensor, gts_per_chunk: int) -> Tensor:
        """``[b, N]`` bool: priors inside any valid GT box (or, for SimOTA, any valid centre square)."""
        num_images, num_gts = gt_mask.shape
        candidates = torch.zeros((num_images, priors.shape[0]), dtype=torch.bool, device=priors.device)
        for g0 in range(0, num_gts, gts_per_chunk):
            sl = slice(g0, g0 + gts_per_chunk)
            region = inside_box(priors, gt_boxes[:, sl])  # [b, m, N]
            if self.candidates == "box_or_center":
                region |= inside_center(priors, gt_boxes[:, sl], self.center_radius)
            candidates |= (region & gt_mask[:, sl, None]).any(dim=1)
        return candidates

    def _per_prior_cls_cost(self, logits: Tensor) -> Tensor | None:
        """``S(n)``, the cls cost of prior n against an all-zero target summed over classes: ``[b, N]``.

        soft: sum_c BCE(x_c, 0) * sigmoid(x_c)^2; hard: sum_c BCE(x_c, 0). ``None`` when unused.
        BCE(x, 0) with logits is softplus(x).
        """
        if self.cls_cost == "none" or self.cls_cost_classes == "gt":
            return None
        if self.cls_cost == "soft":
            return F.softplus(logits).mul_(torch.sigmoid(logits).square_()).sum(dim=-1)
        return F.softplus(logits).sum(dim=-1)

    def _pair_cost(
        self,
        logits_t: Tensor,
        per_prior: Tensor | None,
        boxes: Tensor,
        priors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
        candidates: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Cost and IoU of every (GT, prior) pair of a chunk of ``m`` GTs: ``[b, m, N]`` each.

        ``logits_t`` is class-major, ``[b, C, N]``; ``per_prior`` is :meth:`_per_prior_cls_cost`.
        """
        ious = pairwise_iou(gt_boxes, boxes)  # [b, m, N]; IoU is symmetric
        # Terms are added in mmdet's order (cls + iou + centre), in place to spare passes over memory.
        if self.cls_cost != "none" and self.cls_weight > 0:
            cost = self._cls_cost(logits_t, per_prior, gt_labels, ious)
            if self.cls_weight != 1.0:
                cost.mul_(self.cls_weight)
        else:
            cost = torch.zeros_like(ious)
        if self.iou_weight > 0:
            if self.iou_cost == "log":
                cost += (ious + _EPS).log_().mul_(-self.iou_weight)  # -log(IoU + eps) * w
            else:
                cost += (1.0 - ious).mul_(self.iou_weight)
        if self.center_prior == "soft":
            distance = center_distance(priors, gt_boxes).sub_(self.soft_center_radius)
            cost += torch.pow(10.0, distance)
        elif self.center_prior == "hard":
            outside = ~(inside_box(priors, gt_boxes) & inside_center(priors, gt_boxes, self.center_radius))
            cost += outside.to(cost.dtype).mul_(self.hard_prior_cost)
        # Real costs may overflow (10^(d-3) beyond d ~ 41.5 strides in fp32): clamp them so that the
        # +inf of masked entries ranks strictly above every real cost.
        cost.clamp_(max=torch.finfo(cost.dtype).max)
        cost.masked_fill_(~(candidates[:, None, :] & gt_mask[:, :, None]), math.inf)
        return cost, ious

    def _cls_cost(self, logits_t: Tensor, per_prior: Tensor | None, gt_labels: Tensor, ious: Tensor) -> Tensor:
        """Cls cost of every (GT, prior) pair, ``[b, m, N]``, without a ``[b, m, N, C]`` tensor.

        With x = the prior's logit for the GT's class and Y = IoU (soft) or 1 (hard):
        all classes: S(n) - BCE(x, 0) * w0(x) + BCE(x, Y) * w(x, Y), where the weights are
        sigmoid(x)^2 and |Y - sigmoid(x)|^2 (soft) or 1 (hard); gt class: BCE(x, Y) * w(x, Y).
        """
        num_images, _, num_priors = logits_t.shape
        num_gts = gt_labels.shape[1]
        index = gt_labels[:, :, None].expand(num_images, num_gts, num_priors)  # [b, m, N]
        x = logits_t.gather(1, index)  # [b, C, N] -> [b, m, N]: the logit of each GT's class
        if self.cls_cost == "soft":
            prob = torch.sigmoid(x)
            cost = F.binary_cross_entropy_with_logits(x, ious, reduction="none").mul_((ious - prob).square_())
            if per_prior is not None:
                cost += per_prior[:, None, :] - F.softplus(x).mul_(prob.square_())
            return cost
        # hard: BCE(x, 1) - BCE(x, 0) = softplus(-x) - softplus(x) = -x
        if per_prior is None:
            return F.softplus(-x)
        return per_prior[:, None, :] - x
