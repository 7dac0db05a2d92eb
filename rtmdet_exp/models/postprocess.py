"""Test-time decoding: scores and boxes of a whole batch to per-image detections.

Follows the RTMDet test config (spec section 6): sigmoid scores, multi-label (one prior may give
several class detections), per-level top-k before NMS, score threshold, class-aware NMS, top
``max_per_img`` by score, then clip to the resized image and map back to original coordinates.

It runs in two halves, split where the first wait for the device happens, so that the deployment
path (:mod:`rtmdet_exp.deploy.fast`) can put the first one in a CUDA graph:

* :func:`dense_candidates`: per-level top-k, clipping and the validity mask; every shape is fixed
  by the input shape and nothing is read back to the host;
* :func:`select_detections`: drop invalid candidates, class-aware NMS (torchvision, which reads a
  mask back to the host), top ``max_per_img`` per image, back to original-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from rtmdet_exp.ops.nms import batched_nms


@dataclass
class PostprocessConfig:
    """Test-time settings; defaults are RTMDet's ``test_cfg`` (spec section 4)."""

    score_thr: float = 0.001  # keep (prior, class) pairs with a score above this
    nms_pre: int = 30000  # at most this many pairs per level enter NMS
    iou_threshold: float = 0.65  # class-aware NMS IoU threshold
    max_per_img: int = 300  # detections kept per image after NMS

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_thr < 1.0:
            raise ValueError(f"score_thr must be in [0, 1), got {self.score_thr}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.nms_pre < 1 or self.max_per_img < 1:
            raise ValueError(f"nms_pre and max_per_img must be >= 1, got {self.nms_pre}, {self.max_per_img}")


def _level_candidates(
    scores: Tensor, boxes: Tensor, level_sizes: list[int], nms_pre: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``nms_pre`` best (prior, class) pairs of each level: scores ``[B,K]``, labels ``[B,K]``, boxes ``[B,K,4]``."""
    batch, _, num_classes = scores.shape
    cand_scores, cand_index = [], []
    start = 0
    for size in level_sizes:
        level = scores[:, start : start + size].reshape(batch, size * num_classes)  # [B, N_l*C]
        top, idx = level.topk(min(nms_pre, size * num_classes), dim=1)  # [B, k]
        cand_scores.append(top)
        cand_index.append(idx + start * num_classes)  # index into the flattened [N*C] axis
        start += size
    flat_index = torch.cat(cand_index, dim=1)  # [B, K]
    prior_index = flat_index // num_classes
    cand_boxes = torch.gather(boxes, 1, prior_index[..., None].expand(-1, -1, 4))  # [B, K, 4]
    return torch.cat(cand_scores, dim=1), flat_index % num_classes, cand_boxes


class Candidates(NamedTuple):
    """The fixed-size candidates of a batch; ``K`` = sum over levels of ``min(nms_pre, N_l * C)``."""

    scores: Tensor  # [B, K] probability of each (prior, class) pair
    boxes: Tensor  # [B, K, 4] xyxy pixels of the letterboxed input, clipped to the resized image
    labels: Tensor  # [B, K] int64 class of the pair
    valid: Tensor  # [B, K] bool: score above score_thr and a box of positive width and height
    num_classes: int  # C (labels are 0..C-1)


def dense_candidates(scores: Tensor, boxes: Tensor, level_sizes: list[int], img_hw: Tensor,
                     cfg: PostprocessConfig) -> Candidates:
    """Per-level top ``nms_pre`` (prior, class) pairs of ``scores [B,N,C]`` with their ``boxes [B,N,4]``.

    ``img_hw [B,2]`` is the (h, w) of each resized, unpadded image; boxes are clipped to it.
    Graph-safe: no output shape depends on the values, and nothing is read back to the host.
    """
    top_scores, labels, cand_boxes = _level_candidates(scores, boxes, level_sizes, cfg.nms_pre)
    # (w, h, w, h) per image without indexing by a Python list (that would copy from the host)
    limits = img_hw.to(device=cand_boxes.device, dtype=cand_boxes.dtype).flip(-1).repeat(1, 2)[:, None]  # [B, 1, 4]
    cand_boxes = torch.minimum(cand_boxes.clamp(min=0), limits)
    valid = (top_scores > cfg.score_thr) & (cand_boxes[..., 2] > cand_boxes[..., 0]) & (
        cand_boxes[..., 3] > cand_boxes[..., 1]
    )
    return Candidates(top_scores, cand_boxes, labels, valid, scores.shape[2])


def select_detections(cand: Candidates, meta: dict[str, Tensor], cfg: PostprocessConfig) -> list[dict[str, Tensor]]:
    """Class-aware NMS over the valid candidates, top ``max_per_img`` per image, original pixels.

    ``meta`` holds ``pad_offset [B,2]`` (left, top) and ``scale_factor [B,2]`` (sx, sy) of the
    letterbox. Returns one dict per image: ``boxes [K,4]`` xyxy, ``scores [K]``, ``labels [K]``.
    """
    batch, num_classes, device = cand.boxes.shape[0], cand.num_classes, cand.boxes.device
    flat = cand.valid.reshape(-1).nonzero().squeeze(1)  # [V] (one host synchronisation)
    v_boxes = cand.boxes.reshape(-1, 4)[flat]
    v_scores = cand.scores.reshape(-1)[flat]
    v_labels = cand.labels.reshape(-1)[flat]
    v_image = flat // cand.labels.shape[1]  # row of the [B, K] layout = image

    # One NMS call for the whole batch: groups are (image, class) pairs.
    keep = batched_nms(v_boxes.float(), v_scores.float(), v_image * num_classes + v_labels, cfg.iou_threshold)
    keep = keep[torch.sort(v_image[keep], stable=True).indices]  # per image, in score order
    kept_image = v_image[keep]
    counts = torch.bincount(kept_image, minlength=batch)
    first = torch.cumsum(counts, 0) - counts  # start offset of each image's run
    rank = torch.arange(keep.numel(), device=device) - first[kept_image]
    keep = keep[rank < cfg.max_per_img]
    kept_image = v_image[keep]

    pad = meta["pad_offset"].to(device=device, dtype=v_boxes.dtype)[kept_image]  # [K, 2]
    scale = meta["scale_factor"].to(device=device, dtype=v_boxes.dtype)[kept_image]
    out_boxes = (v_boxes[keep] - pad.repeat(1, 2)) / scale.repeat(1, 2)
    splits = torch.bincount(kept_image, minlength=batch).tolist()
    return [
        {"boxes": b, "scores": s, "labels": lab}
        for b, s, lab in zip(out_boxes.split(splits), v_scores[keep].split(splits), v_labels[keep].split(splits))
    ]


def postprocess(
    scores: Tensor,
    boxes: Tensor,
    level_sizes: list[int],
    meta: dict[str, Tensor],
    cfg: PostprocessConfig,
) -> list[dict[str, Tensor]]:
    """Turn batched ``scores [B,N,C]`` (probabilities) and ``boxes [B,N,4]`` into detections.

    ``level_sizes`` gives the number of priors per level (they are concatenated level-major).
    ``meta`` holds ``img_shape [B,2]`` (h, w of the resized, unpadded image), ``pad_offset [B,2]``
    (left, top) and ``scale_factor [B,2]`` (sx, sy) of the letterbox transform. Returns one dict per
    image with ``boxes [K,4]`` xyxy in original-image pixels, ``scores [K]`` and ``labels [K]``.
    """
    return select_detections(dense_candidates(scores, boxes, level_sizes, meta["img_shape"], cfg), meta, cfg)
