"""The detector: network + label assigner + losses + test-time decoding behind two entry points.

``Detector.loss(images, targets)`` returns named losses for training and
``Detector.predict(images, meta)`` returns per-image detections in original-image pixels.
Nothing here knows about Hydra, files or logging: every part is passed in as a built object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rtmdet_exp.assigners.base import Assigner
from rtmdet_exp.models.postprocess import PostprocessConfig, postprocess
from rtmdet_exp.ops.boxes import distance2bbox
from rtmdet_exp.ops.priors import grid_priors

# Normalisation of the released models: images stay in OpenCV BGR order (spec section 1.7).
BGR_MEAN = (103.53, 116.28, 123.675)
BGR_STD = (57.375, 57.12, 58.395)


@dataclass(frozen=True)
class InputSpec:
    """The input a network's (pretrained) weights expect.

    Images reach the detector as 0..255 values in OpenCV BGR order. ``rgb`` asks for the channels
    to be reversed first; ``mean`` and ``std`` are on the 0..255 scale, in the network's channel order.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rgb: bool


# CSPNeXt / mmdetection RTMDet: BGR with mmdet's statistics.
MMDET_INPUT = InputSpec(mean=BGR_MEAN, std=BGR_STD, rgb=False)


def network_input_spec(network: nn.Module) -> InputSpec:
    """``input_spec`` of the network, else of its backbone (timm models give theirs), else mmdet's BGR one."""
    for owner in (network, getattr(network, "backbone", None)):
        spec = getattr(owner, "input_spec", None)
        if spec is not None:
            return spec
    return MMDET_INPUT


def reduce_mean(value: Tensor) -> Tensor:
    """Mean of ``value`` over DDP ranks (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    value = value.clone()
    dist.all_reduce(value.div_(dist.get_world_size()))
    return value


class Detector(nn.Module):
    """An RTMDet-style dense detector.

    Args:
        network: maps normalised images ``[B,3,H,W]`` to ``(cls_scores, bbox_dists)`` per level
            (logits ``[B,C,H_l,W_l]`` and ltrb pixel distances ``[B,4,H_l,W_l]``); it must expose
            ``num_classes`` and ``strides`` (on itself or its ``head``).
        assigner: a label assigner (see :mod:`rtmdet_exp.assigners.base`).
        cls_loss: classification loss, ``(logits, labels, targets, avg_factor) -> scalar``.
        box_loss: box regression loss, ``(pred, target, weight, avg_factor) -> scalar``.
        test_cfg: test-time decoding settings.
        mean, std: per-channel normalisation of the BGR images, overriding the network's own
            :class:`InputSpec` (the backbone's ``input_spec``; CSPNeXt: mmdet's BGR statistics).
    """

    def __init__(
        self,
        network: nn.Module,
        assigner: Assigner,
        cls_loss: nn.Module,
        box_loss: nn.Module,
        test_cfg: PostprocessConfig | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.assigner = assigner
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.test_cfg = test_cfg or PostprocessConfig()
        head = getattr(network, "head", network)
        self.num_classes: int = int(head.num_classes)
        self.strides: tuple[int, ...] = tuple(int(s) for s in head.strides)
        spec = network_input_spec(network)
        if mean is not None or std is not None:
            spec = InputSpec(tuple(mean or BGR_MEAN), tuple(std or BGR_STD), rgb=False)
        self.input_spec: InputSpec = spec
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self._prior_cache: dict[tuple, Tensor] = {}

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 or float BGR images ``[B,3,H,W]`` in 0..255 to the network's normalised input.

        The channels are reversed to RGB first when the network's :class:`InputSpec` asks for it.
        """
        images = images.float()
        if self.input_spec.rgb:
            images = images.flip(1)  # [B, 3, H, W] BGR -> RGB
        return (images - self.mean) / self.std

    def priors(self, sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
        """Grid priors ``[N,4]`` for the given per-level feature sizes, cached per shape."""
        key = (tuple(sizes), str(device))
        if key not in self._prior_cache:
            self._prior_cache[key] = grid_priors(sizes, self.strides, device=device)
        return self._prior_cache[key]

    def forward_flat(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """Run the network and flatten levels: logits ``[B,N,C]``, boxes ``[B,N,4]``, priors, level sizes."""
        cls_scores, bbox_dists = self.network(self.normalize(images))
        sizes = [(c.shape[-2], c.shape[-1]) for c in cls_scores]
        batch = images.shape[0]
        # [B,C,H,W] -> [B,H*W,C] per level, levels concatenated (level-major, row-major inside).
        logits = torch.cat([c.permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes) for c in cls_scores], 1)
        dists = torch.cat([d.permute(0, 2, 3, 1).reshape(batch, -1, 4) for d in bbox_dists], 1)
        priors = self.priors(sizes, images.device)
        boxes = distance2bbox(priors[None, :, :2], dists.float())  # [B, N, 4] xyxy pixels
        return logits, boxes, priors, [h * w for h, w in sizes]

    def loss(self, images: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named losses for a batch.

        ``targets`` holds padded GT: ``boxes [B,M,4]`` xyxy pixels, ``labels [B,M]`` long and
        ``mask [B,M]`` bool (False = padding). Returns ``loss_cls`` and ``loss_bbox`` (their sum is
        the training objective) and, as detached statistics, ``num_pos`` and ``avg_factor``.
        The step has no host-device synchronisation: the box loss runs on every prior with
        weight 0 for background instead of indexing out the positives.
        """
        logits, boxes, priors, _ = self.forward_flat(images)
        gt_boxes = targets["boxes"].to(boxes.dtype)
        gt_labels, gt_mask = targets["labels"], targets["mask"]
        with torch.no_grad():
            assign = self.assigner(logits.detach().float(), boxes.detach(), priors, gt_boxes, gt_labels, gt_mask)
        pos = assign.pos_mask  # [B, N]
        weight = torch.where(pos, assign.ious, torch.zeros_like(assign.ious))
        avg_factor = reduce_mean(weight.sum()).clamp(min=1.0)

        loss_cls = self.cls_loss(logits, assign.labels, weight, avg_factor)
        # Matched GT box per prior; background priors regress onto their own (detached) box with
        # weight 0, which keeps the per-box loss finite without selecting positives on the host.
        index = assign.gt_index.clamp(min=0)[..., None].expand(-1, -1, 4)  # [B, N, 4]
        matched = torch.gather(gt_boxes, 1, index)
        target = torch.where(pos[..., None], matched, boxes.detach())
        loss_bbox = self.box_loss(boxes.reshape(-1, 4), target.reshape(-1, 4), weight.reshape(-1), avg_factor)
        return {
            "loss_cls": loss_cls,
            "loss_bbox": loss_bbox,
            "num_pos": pos.sum().detach(),
            "avg_factor": avg_factor.detach(),
        }

    def forward(self, images: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training forward (what DDP wraps): the same as :meth:`loss`."""
        return self.loss(images, targets)

    @torch.no_grad()
    def predict(self, images: Tensor, meta: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Per-image detections (``boxes [K,4]`` original pixels, ``scores [K]``, ``labels [K]``).

        ``meta`` describes the letterbox transform per image: ``img_shape [B,2]`` (h, w after resize,
        before padding), ``pad_offset [B,2]`` (left, top) and ``scale_factor [B,2]`` (sx, sy).
        """
        logits, boxes, _, level_sizes = self.forward_flat(images)
        return postprocess(logits.float().sigmoid(), boxes, level_sizes, meta, self.test_cfg)
