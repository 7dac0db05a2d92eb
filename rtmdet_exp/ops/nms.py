"""Greedy NMS on torchvision's compiled operator, without importing torchvision's Python package.

``import torchvision`` runs its whole package (models, datasets, transforms), and its ops import
``torch._dynamo``, for the one operator the platform needs. :func:`nms` loads the compiled library
that package would load (``_C_stable`` or, in older builds, ``_C``) straight into ``torch.ops``
(2 ms) and calls ``torch.ops.torchvision.nms``, the kernel ``torchvision.ops.nms`` calls. Measured
on the 2-core CPU: importing the evaluate and predict tools 6.2 -> 4.4 s; a training run saves
less (~0.7 s), as ``torch.optim`` imports ``torch._dynamo`` anyway. When torchvision is already
imported (a timm backbone, a test), its registration is used as is.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["batched_nms", "nms"]

_LIBRARIES = ("_C_stable", "_C")  # torchvision >= 0.25 ships the first, older builds the second


@functools.cache
def _nms_op() -> Callable[[Tensor, Tensor, float], Tensor]:
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.origin is None:
            raise ImportError("NMS needs torchvision's compiled operators: pip install torchvision")
        folder = Path(spec.origin).parent
        found = [folder / f"{name}{suffix}" for name in _LIBRARIES for suffix in importlib.machinery.EXTENSION_SUFFIXES
                 if (folder / f"{name}{suffix}").is_file()]
        if not found:
            raise ImportError(f"torchvision in {folder} has no compiled operators ({' or '.join(_LIBRARIES)}); "
                              "reinstall the torchvision build that matches torch")
        torch.ops.load_library(str(found[0]))
    return torch.ops.torchvision.nms


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes greedy NMS keeps, by decreasing score (``boxes [N,4]`` xyxy, ``scores [N]``)."""
    return _nms_op()(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS inside each group (boxes of different groups never suppress each other).

    Returns kept indices by decreasing score, the result of ``torchvision.ops.batched_nms``. Small
    inputs run one NMS over boxes shifted apart by group (``group * (max coordinate + 1)``, so no two
    groups overlap); large ones one NMS per group, whose cost grows with each group's size only
    (torchvision switches at the same sizes: more than 1,000 boxes on the CPU, 5,000 on a GPU).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if boxes.shape[0] <= (1000 if boxes.device.type == "cpu" else 5000):
        shift = groups.to(boxes.dtype) * (boxes.max() + 1)
        return nms(boxes + shift[:, None], scores, iou_threshold)
    kept = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for group in torch.unique(groups):
        members = (groups == group).nonzero().squeeze(1)
        kept[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    index = kept.nonzero().squeeze(1)
    return index[scores[index].sort(descending=True, stable=True).indices]  # ties in input order, as the kernel
