"""Small pieces the transforms share: argument checks, and resize / box arithmetic on samples.

A sample is a dict with ``img`` uint8 ``HxWx3`` BGR, ``boxes`` float32 ``[K, 4]`` xyxy in pixels and
``labels`` int64 ``[K]`` (the contract of :mod:`rtmdet_exp.data.transforms`). Nothing here mutates
its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

Sample = dict[str, Any]


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def size_pair(value: Any, name: str) -> tuple[int, int]:
    """A ``(width, height)`` pair of positive ints; a single int means a square."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        side = positive_int(value, name)
        return side, side
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"{name} must be an int or a (width, height) pair of ints, got {value!r}")
    return positive_int(value[0], f"{name}[0]"), positive_int(value[1], f"{name}[1]")


def range_pair(value: Any, name: str, low: float = 0.0, strict_low: bool = True) -> tuple[float, float]:
    """A ``(lo, hi)`` float pair with ``low < lo <= hi`` (``low <= lo`` when not ``strict_low``)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    too_low = lo <= low if strict_low else lo < low
    if too_low or hi < lo or not math.isfinite(hi):
        bound = ">" if strict_low else ">="
        raise ValueError(f"{name} must satisfy {bound} {low} and low <= high, got {value!r}")
    return lo, hi


def probability(value: Any, name: str) -> float:
    """A float in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def pad_colour(value: Any, name: str) -> tuple[int, int, int]:
    """Padding colour: an int in [0, 255] (grey) or a BGR triple of such ints."""
    values = [value] * 3 if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != 3:
        raise ValueError(f"{name} must be an int in [0, 255] or a BGR triple, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 255 for v in values):
        raise ValueError(f"{name} values must be ints in [0, 255], got {value!r}")
    return int(values[0]), int(values[1]), int(values[2])


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize (mmcv's default); returns the input itself when the size is unchanged."""
    if img.shape[1] == width and img.shape[0] == height:
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def blank_canvas(height: int, width: int, colour: tuple[int, int, int]) -> np.ndarray:
    """A new ``height x width x 3`` uint8 image filled with ``colour`` (np.full is ~40x faster than
    assigning a BGR tuple, so grey fills take that path)."""
    if colour[0] == colour[1] == colour[2]:
        return np.full((height, width, 3), colour[0], dtype=np.uint8)
    return cv2.copyMakeBorder(
        np.empty((0, 0, 3), dtype=np.uint8), 0, height, 0, width, cv2.BORDER_CONSTANT, value=colour
    )


def scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """``[K, 4]`` xyxy boxes scaled by ``sx`` along x and ``sy`` along y (a new float32 array)."""
    return (boxes * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32, copy=False)


def shift_boxes(boxes: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``[K, 4]`` xyxy boxes translated by ``(dx, dy)`` (a new float32 array)."""
    return (boxes + np.array([dx, dy, dx, dy], dtype=np.float32)).astype(np.float32, copy=False)


def clip_and_keep(boxes: np.ndarray, labels: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to ``[0, width] x [0, height]`` and drop those left without area, with their labels."""
    clipped = np.empty_like(boxes)
    np.clip(boxes[:, 0::2], 0, width, out=clipped[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=clipped[:, 1::2])
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])  # [K]
    return clipped[keep], labels[keep]


def with_changes(sample: Sample, **changes: Any) -> Sample:
    """A shallow copy of ``sample`` with ``changes`` applied (the input dict stays untouched)."""
    out = dict(sample)
    out.update(changes)
    return out


def boxes_of(sample: Sample) -> np.ndarray:
    """The sample's boxes as float32 ``[K, 4]`` (an empty ``[0, 4]`` when absent)."""
    boxes = sample.get("boxes")
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # [K, 4]


def labels_of(sample: Sample) -> np.ndarray:
    """The sample's labels as int64 ``[K]``."""
    labels = sample.get("labels")
    if labels is None:
        return np.zeros((0,), dtype=np.int64)
    return np.asarray(labels, dtype=np.int64).reshape(-1)  # [K]
