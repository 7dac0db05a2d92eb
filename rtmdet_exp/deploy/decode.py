"""Test-time decoding in two halves: a graph-safe one and a host one.

:func:`rtmdet_exp.models.postprocess.postprocess` turns scores and boxes into detections in one go;
its boolean indexing and torchvision's NMS wait for the device, so a CUDA graph cannot hold it.
Here the same computation is split where the first such wait happens:

* :func:`dense_candidates` — per-level top-k, clipping and the validity mask; every shape is fixed
  by the input shape and nothing waits for the device (so it can be captured in a CUDA graph);
* :func:`select_detections` — drop invalid candidates, class-aware NMS, top ``max_per_img`` per
  image, back to original-image pixels (host synchronisation, after the graph).

``select_detections(dense_candidates(...))`` gives exactly what ``postprocess`` gives
(tests/unit/test_deploy_decode.py checks it against ``Detector.predict``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from rtmdet_exp.models.postprocess import PostprocessConfig, level_candidates

__all__ = ["PAPER_TEST", "DEPLOYMENT", "Candidates", "dense_candidates", "select_detections"]

# The paper's test settings (RTMDet test_cfg) and the usual deployment settings.
PAPER_TEST = PostprocessConfig(score_thr=0.001, nms_pre=30000, iou_threshold=0.65, max_per_img=300)
DEPLOYMENT = PostprocessConfig(score_thr=0.25, nms_pre=30000, iou_threshold=0.65, max_per_img=100)


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
    top_scores, labels, cand_boxes = level_candidates(scores, boxes, level_sizes, cfg.nms_pre)
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
