"""Grid point priors, one per feature-map cell, as RTMDet's ``MlvlPointGenerator(offset=0)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def grid_priors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Priors ``[N, 4]`` = (x, y, stride_w, stride_h) for levels of size ``(H, W)``.

    Level-major, then row-major inside a level (y major, x minor), matching how the detector
    flattens head outputs. Offset 0: the top-left prior of every level sits at (0, 0), so at 640
    the levels give 80*80 + 40*40 + 20*20 = 8400 priors.
    """
    if len(feature_sizes) != len(strides):
        raise ValueError(f"got {len(feature_sizes)} feature sizes but {len(strides)} strides")
    levels = []
    for (h, w), s in zip(feature_sizes, strides):
        ys = torch.arange(h, device=device, dtype=dtype) * s
        xs = torch.arange(w, device=device, dtype=dtype) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each
        stride = torch.full_like(xx, float(s))
        levels.append(torch.stack((xx, yy, stride, stride), dim=-1).reshape(-1, 4))  # [H*W, 4]
    return torch.cat(levels, dim=0)
