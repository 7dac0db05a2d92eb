"""Collate-style training batches with a chosen GT count per image, for step-level unit tests."""

from __future__ import annotations

import torch


def make_batch(seed: int, counts: list[int], size: int = 64, num_classes: int = 10) -> dict[str, torch.Tensor]:
    """A collate-style batch: image i has ``counts[i]`` boxes, padded to the largest count (label -1)."""
    g = torch.Generator().manual_seed(seed)
    b, m = len(counts), max(max(counts), 1)
    images = torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)
    wh = 8 + torch.rand(b, m, 2, generator=g) * (size / 2)
    xy = torch.rand(b, m, 2, generator=g) * (size - wh)
    mask = torch.arange(m)[None, :] < torch.tensor(counts)[:, None]
    boxes = torch.cat([xy, xy + wh], dim=-1) * mask[..., None]
    labels = torch.where(mask, torch.randint(0, num_classes, (b, m), generator=g), -1)
    return {"images": images, "boxes": boxes, "labels": labels, "mask": mask}
