"""Detection transforms on numpy samples: the RTMDet training augmentations and the eval letterbox.

Sample contract (see the brief): a dict with ``img`` uint8 ``HxWx3`` BGR, ``boxes`` float32 ``[K, 4]``
xyxy in pixels, ``labels`` int64 ``[K]``, ``image_id`` and ``ori_shape``; other keys pass through.

Rules every transform here follows:

- **Boxes follow the pixels.** A geometric change to ``img`` applies the same map to ``boxes`` with the
  *actual* factors of the resized array (``new_w / w``), not the requested ones, so rounding never drifts a
  box off its object. Boxes cut by an image border are clipped; boxes left with no area are dropped with
  their labels.
- **Inputs are never mutated.** A transform returns a new dict with new arrays; the cached transforms
  keep references to earlier samples, so an in-place change downstream would corrupt their caches.
- **Randomness** comes only from ``self.rng`` (a :class:`numpy.random.Generator`). It starts seeded with 0
  so a transform used alone is reproducible; :class:`Compose.set_rng` (called by the two-stage pipeline
  with a per (seed, epoch, worker) generator) gives every transform its own child stream.
- Sizes are ``(width, height)`` as in mmdet's ``img_scale`` / ``crop_size`` / ``Pad(size=...)``.
- Box arithmetic is vectorised over boxes; the only Python loops are over the 4 mosaic tiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

Sample = dict[str, Any]

__all__ = [
    "CachedMixUp",
    "CachedMosaic",
    "Compose",
    "FilterSmallBoxes",
    "HSVRandomAug",
    "LetterboxResize",
    "Pad",
    "RandomCrop",
    "RandomFlip",
    "RandomResize",
    "RandomTransform",
]


# ----------------------------------------------------------------------------------------------
# argument validation and small array helpers


def _positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _size_pair(value: Any, name: str) -> tuple[int, int]:
    """A ``(width, height)`` pair of positive ints; a single int means a square."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        side = _positive_int(value, name)
        return side, side
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"{name} must be an int or a (width, height) pair of ints, got {value!r}")
    return _positive_int(value[0], f"{name}[0]"), _positive_int(value[1], f"{name}[1]")


def _range_pair(value: Any, name: str, low: float = 0.0, strict_low: bool = True) -> tuple[float, float]:
    """A ``(lo, hi)`` float pair with ``low < lo <= hi`` (``low <= lo`` when not ``strict_low``)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    too_low = lo <= low if strict_low else lo < low
    if too_low or hi < lo or not math.isfinite(hi):
        bound = ">" if strict_low else ">="
        raise ValueError(f"{name} must satisfy {bound} {low} and low <= high, got {value!r}")
    return lo, hi


def _probability(value: Any, name: str) -> float:
    """A float in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def _pad_colour(value: Any, name: str) -> tuple[int, int, int]:
    """Padding colour: an int in [0, 255] (grey) or a BGR triple of such ints."""
    values = [value] * 3 if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != 3:
        raise ValueError(f"{name} must be an int in [0, 255] or a BGR triple, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 255 for v in values):
        raise ValueError(f"{name} values must be ints in [0, 255], got {value!r}")
    return int(values[0]), int(values[1]), int(values[2])


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize (mmcv's default); returns the input itself when the size is unchanged."""
    if img.shape[1] == width and img.shape[0] == height:
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def _canvas(height: int, width: int, colour: tuple[int, int, int]) -> np.ndarray:
    """A new ``height x width x 3`` uint8 image filled with ``colour`` (np.full is ~40x faster than
    assigning a BGR tuple, so grey fills take that path)."""
    if colour[0] == colour[1] == colour[2]:
        return np.full((height, width, 3), colour[0], dtype=np.uint8)
    return cv2.copyMakeBorder(
        np.empty((0, 0, 3), dtype=np.uint8), 0, height, 0, width, cv2.BORDER_CONSTANT, value=colour
    )


def _scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """``[K, 4]`` xyxy boxes scaled by ``sx`` along x and ``sy`` along y (a new float32 array)."""
    return (boxes * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32, copy=False)


def _shift_boxes(boxes: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``[K, 4]`` xyxy boxes translated by ``(dx, dy)`` (a new float32 array)."""
    return (boxes + np.array([dx, dy, dx, dy], dtype=np.float32)).astype(np.float32, copy=False)


def _clip_and_keep(boxes: np.ndarray, labels: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to ``[0, width] x [0, height]`` and drop those left without area, with their labels."""
    clipped = np.empty_like(boxes)
    np.clip(boxes[:, 0::2], 0, width, out=clipped[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=clipped[:, 1::2])
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])  # [K]
    return clipped[keep], labels[keep]


def _with(sample: Sample, **changes: Any) -> Sample:
    """A shallow copy of ``sample`` with ``changes`` applied (the input dict stays untouched)."""
    out = dict(sample)
    out.update(changes)
    return out


def _boxes_of(sample: Sample) -> np.ndarray:
    """The sample's boxes as float32 ``[K, 4]`` (an empty ``[0, 4]`` when absent)."""
    boxes = sample.get("boxes")
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # [K, 4]


def _labels_of(sample: Sample) -> np.ndarray:
    """The sample's labels as int64 ``[K]``."""
    labels = sample.get("labels")
    if labels is None:
        return np.zeros((0,), dtype=np.int64)
    return np.asarray(labels, dtype=np.int64).reshape(-1)  # [K]


# ----------------------------------------------------------------------------------------------
# base classes


class RandomTransform:
    """Base of the random transforms: they draw only from ``self.rng``.

    ``set_rng`` replaces the generator (the pipeline does this per worker and epoch); ``reset`` clears any
    state kept between samples (the caches), so that a re-seeded pipeline replays exactly.
    """

    def __init__(self) -> None:
        self.rng: np.random.Generator = np.random.default_rng(0)

    def set_rng(self, rng: np.random.Generator) -> None:
        """Use ``rng`` for every later random draw."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.rng = rng

    def reset(self) -> None:
        """Forget state carried between samples (nothing for stateless transforms)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "rng" and not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose:
    """Apply ``transforms`` in order; ``set_rng`` hands each random transform its own child generator.

    Child streams are spawned from the given generator (``rng.spawn``), so turning one transform off
    (``prob=0``) does not change the random draws of the others.
    """

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence):
            raise ValueError(f"transforms must be a sequence of callables, got {type(transforms).__name__}")
        for i, t in enumerate(transforms):
            if not callable(t):
                raise ValueError(f"transforms[{i}] must be callable, got {type(t).__name__}")
        self.transforms: list[Callable[[Sample], Sample]] = list(transforms)

    def set_rng(self, rng: np.random.Generator) -> None:
        """Seed every transform that has ``set_rng`` from an independent child of ``rng``."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        for t, child in zip(self.transforms, rng.spawn(len(self.transforms)), strict=True):
            if hasattr(t, "set_rng"):
                t.set_rng(child)

    def reset(self) -> None:
        """Clear the state (caches) of every transform that keeps some."""
        for t in self.transforms:
            if hasattr(t, "reset"):
                t.reset()

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


# ----------------------------------------------------------------------------------------------
# deterministic transforms


class LetterboxResize:
    """Eval resize: keep the aspect ratio so the long side becomes ``size`` (upscaling included), then
    pad bottom/right with ``pad_value`` to ``size x size`` (mmdet's test pipeline, spec section 4).

    Adds ``scale_factor`` (sx, sy) = resized / original size per axis, ``pad_offset`` (0, 0) and
    ``img_shape`` (h, w) of the resized, unpadded image, so predictions map back with ``/ scale_factor``.
    """

    def __init__(self, size: int, pad_value: int | Sequence[int] = 114) -> None:
        self.size = _positive_int(size, "size")
        self.pad_value = _pad_colour(pad_value, "pad_value")

    def __call__(self, sample: Sample) -> Sample:
        img = sample["img"]
        h, w = img.shape[:2]
        scale = self.size / max(h, w)
        new_w = min(self.size, max(1, int(round(w * scale))))
        new_h = min(self.size, max(1, int(round(h * scale))))
        resized = _resize(img, new_w, new_h)
        padded = cv2.copyMakeBorder(
            resized, 0, self.size - new_h, 0, self.size - new_w, cv2.BORDER_CONSTANT, value=self.pad_value
        )
        sx, sy = new_w / w, new_h / h
        boxes, labels = _clip_and_keep(_scale_boxes(_boxes_of(sample), sx, sy), _labels_of(sample), new_w, new_h)
        return _with(
            sample,
            img=padded,
            boxes=boxes,
            labels=labels,
            scale_factor=(sx, sy),
            pad_offset=(0, 0),
            img_shape=(new_h, new_w),
        )

    def __repr__(self) -> str:
        return f"LetterboxResize(size={self.size}, pad_value={self.pad_value})"


class Pad:
    """Pad bottom/right with ``pad_value`` to ``size`` (width, height); boxes are unchanged.

    The image must not be larger than ``size`` (a RandomCrop of the same size comes first).
    """

    def __init__(self, size: int | Sequence[int], pad_value: int | Sequence[int] = 114) -> None:
        self.size = _size_pair(size, "size")
        self.pad_value = _pad_colour(pad_value, "pad_value")

    def __call__(self, sample: Sample) -> Sample:
        img = sample["img"]
        h, w = img.shape[:2]
        width, height = self.size
        if h > height or w > width:
            raise ValueError(f"size={self.size} (w, h) is smaller than the image ({w}, {h}); crop before Pad")
        if (h, w) == (height, width):
            return _with(sample)
        padded = cv2.copyMakeBorder(img, 0, height - h, 0, width - w, cv2.BORDER_CONSTANT, value=self.pad_value)
        return _with(sample, img=padded)

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, pad_value={self.pad_value})"


class FilterSmallBoxes:
    """Drop boxes whose width or height is below ``min_size`` pixels, with their labels.

    Crops and mosaics leave slivers of objects at the borders; boxes of a pixel or less teach nothing.
    """

    def __init__(self, min_size: float = 1) -> None:
        if isinstance(min_size, bool) or not isinstance(min_size, (int, float)) or min_size < 0:
            raise ValueError(f"min_size must be a number >= 0, got {min_size!r}")
        self.min_size = float(min_size)

    def __call__(self, sample: Sample) -> Sample:
        boxes, labels = _boxes_of(sample), _labels_of(sample)
        wh = boxes[:, 2:] - boxes[:, :2]  # [K, 2]
        keep = (wh >= self.min_size).all(axis=1) & (wh > 0).all(axis=1)  # [K]
        return _with(sample, boxes=boxes[keep], labels=labels[keep])

    def __repr__(self) -> str:
        return f"FilterSmallBoxes(min_size={self.min_size})"


# ----------------------------------------------------------------------------------------------
# random single-image transforms


class RandomResize(RandomTransform):
    """Resize by a random ratio of ``scale`` (width, height): mmdet's ``RandomResize`` (large scale jitter).

    A ratio ``r ~ U(ratio_range)`` gives the target ``scale * r``. With ``keep_ratio`` the image is scaled by
    ``min(long_target / long_side, short_target / short_side)`` (mmcv's rescale rule, orientation-free), so it
    fits in the target; otherwise it is stretched to the target exactly.
    """

    def __init__(
        self,
        scale: int | Sequence[int] = (640, 640),
        ratio_range: Sequence[float] = (0.5, 2.0),
        keep_ratio: bool = True,
    ) -> None:
        super().__init__()
        self.scale = _size_pair(scale, "scale")
        self.ratio_range = _range_pair(ratio_range, "ratio_range")
        if not isinstance(keep_ratio, bool):
            raise ValueError(f"keep_ratio must be a bool, got {keep_ratio!r}")
        self.keep_ratio = keep_ratio

    def __call__(self, sample: Sample) -> Sample:
        img = sample["img"]
        h, w = img.shape[:2]
        ratio = self.rng.uniform(*self.ratio_range)
        target_w, target_h = self.scale[0] * ratio, self.scale[1] * ratio
        if self.keep_ratio:
            factor = min(max(target_w, target_h) / max(h, w), min(target_w, target_h) / min(h, w))
            new_w, new_h = max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))
        else:
            new_w, new_h = max(1, int(target_w + 0.5)), max(1, int(target_h + 0.5))
        resized = _resize(img, new_w, new_h)
        boxes = _scale_boxes(_boxes_of(sample), new_w / w, new_h / h)
        boxes, labels = _clip_and_keep(boxes, _labels_of(sample), new_w, new_h)
        return _with(sample, img=resized, boxes=boxes, labels=labels)


class RandomCrop(RandomTransform):
    """Crop a random ``crop_size`` (width, height) window (the whole side when the image is smaller).

    Boxes are shifted, clipped to the window and dropped when nothing is left. With
    ``allow_negative_crop=False`` a crop that would lose *every* box of a sample that had boxes is redrawn
    once, uniformly among the windows that overlap a randomly chosen box, so it always keeps at least
    that box. mmdet instead returns None and refetches another image; redrawing keeps this a pure
    ``sample -> sample`` callable and never fails. A sample with no boxes to begin with is cropped as is.
    """

    def __init__(self, crop_size: int | Sequence[int] = (640, 640), allow_negative_crop: bool = False) -> None:
        super().__init__()
        self.crop_size = _size_pair(crop_size, "crop_size")
        if not isinstance(allow_negative_crop, bool):
            raise ValueError(f"allow_negative_crop must be a bool, got {allow_negative_crop!r}")
        self.allow_negative_crop = allow_negative_crop

    @staticmethod
    def _crop_boxes(boxes: np.ndarray, x0: int, y0: int, cw: int, ch: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes in window coordinates, clipped, and the mask of those with area left."""
        shifted = _shift_boxes(boxes, -x0, -y0)
        np.clip(shifted[:, 0::2], 0, cw, out=shifted[:, 0::2])
        np.clip(shifted[:, 1::2], 0, ch, out=shifted[:, 1::2])
        keep = (shifted[:, 2] > shifted[:, 0]) & (shifted[:, 3] > shifted[:, 1])  # [K]
        return shifted, keep

    def __call__(self, sample: Sample) -> Sample:
        img = sample["img"]
        h, w = img.shape[:2]
        cw, ch = min(self.crop_size[0], w), min(self.crop_size[1], h)
        margin_x, margin_y = w - cw, h - ch
        boxes, labels = _clip_and_keep(_boxes_of(sample), _labels_of(sample), w, h)
        x0 = int(self.rng.integers(0, margin_x + 1))
        y0 = int(self.rng.integers(0, margin_y + 1))
        shifted, keep = self._crop_boxes(boxes, x0, y0, cw, ch)
        if not keep.any() and len(boxes) and not self.allow_negative_crop:
            # every window with x0 in (x1 - cw, x2) and y0 in (y1 - ch, y2) overlaps box j with positive area
            j = int(self.rng.integers(0, len(boxes)))
            bx1, by1, bx2, by2 = (float(v) for v in boxes[j])
            lo_x, hi_x = max(0, math.floor(bx1 - cw) + 1), min(margin_x, math.ceil(bx2) - 1)
            lo_y, hi_y = max(0, math.floor(by1 - ch) + 1), min(margin_y, math.ceil(by2) - 1)
            x0 = int(self.rng.integers(lo_x, hi_x + 1))
            y0 = int(self.rng.integers(lo_y, hi_y + 1))
            shifted, keep = self._crop_boxes(boxes, x0, y0, cw, ch)
        cropped = img[y0 : y0 + ch, x0 : x0 + cw]
        return _with(sample, img=np.ascontiguousarray(cropped), boxes=shifted[keep], labels=labels[keep])


class HSVRandomAug(RandomTransform):
    """YOLOX-style colour jitter in HSV (mmdet ``YOLOXHSVRandomAug``); geometry and boxes are unchanged.

    Gains ``g = U(-1, 1) * (hue_delta, saturation_delta, value_delta)``, each switched on with probability
    0.5 and truncated to ints; then H <- (H + g_h) mod 180, S <- clip(S + g_s), V <- clip(V + g_v) in
    OpenCV's 8-bit HSV. Applied through one lookup table per channel (as fast as a copy).
    """

    def __init__(self, hue_delta: int = 5, saturation_delta: int = 30, value_delta: int = 30) -> None:
        super().__init__()
        named = (("hue_delta", hue_delta), ("saturation_delta", saturation_delta), ("value_delta", value_delta))
        for name, value in named:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        self.hue_delta = int(hue_delta)
        self.saturation_delta = int(saturation_delta)
        self.value_delta = int(value_delta)

    def draw_gains(self) -> np.ndarray:
        """Draw the int gains (hue, saturation, value) for one image."""
        deltas = np.array([self.hue_delta, self.saturation_delta, self.value_delta], dtype=np.float64)
        gains = self.rng.uniform(-1.0, 1.0, 3) * deltas * self.rng.integers(0, 2, 3)
        return gains.astype(np.int64)  # truncation toward zero, as YOLOX

    def __call__(self, sample: Sample) -> Sample:
        gains = self.draw_gains()
        if not gains.any():
            return _with(sample)
        hsv = cv2.cvtColor(sample["img"], cv2.COLOR_BGR2HSV)
        x = np.arange(256, dtype=np.int64)
        lut_h = ((x + gains[0]) % 180).astype(np.uint8)
        lut_s = np.clip(x + gains[1], 0, 255).astype(np.uint8)
        lut_v = np.clip(x + gains[2], 0, 255).astype(np.uint8)
        h, s, v = cv2.split(hsv)
        hsv = cv2.merge((cv2.LUT(h, lut_h), cv2.LUT(s, lut_s), cv2.LUT(v, lut_v)))
        return _with(sample, img=cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))


class RandomFlip(RandomTransform):
    """Horizontal flip with probability ``prob``: x -> width - x for the pixels and the boxes."""

    def __init__(self, prob: float = 0.5) -> None:
        super().__init__()
        self.prob = _probability(prob, "prob")

    def __call__(self, sample: Sample) -> Sample:
        if not self.rng.random() < self.prob:
            return _with(sample)
        img = sample["img"]
        w = img.shape[1]
        boxes = _boxes_of(sample)
        flipped = np.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), axis=1)  # [K, 4]
        return _with(sample, img=cv2.flip(img, 1), boxes=flipped.astype(np.float32), labels=_labels_of(sample))


# ----------------------------------------------------------------------------------------------
# cached multi-image transforms


class _SampleCache(RandomTransform):
    """A bounded cache of earlier samples shared by the cached Mosaic and MixUp (mmdet semantics).

    Every sample is pushed before it is transformed; past ``max_cached_images`` one item is evicted, at a
    random position with ``random_pop`` (so old images can stay) or the oldest otherwise (FIFO).
    The cache stores references, which is safe because transforms never mutate their inputs.
    """

    def __init__(self, max_cached_images: int, random_pop: bool, prob: float, min_items: int) -> None:
        super().__init__()
        self.max_cached_images = _positive_int(max_cached_images, "max_cached_images")
        if self.max_cached_images < min_items:
            raise ValueError(f"max_cached_images must be >= {min_items}, got {max_cached_images!r}")
        if not isinstance(random_pop, bool):
            raise ValueError(f"random_pop must be a bool, got {random_pop!r}")
        self.random_pop = random_pop
        self.prob = _probability(prob, "prob")
        self._cache: list[Sample] = []

    def reset(self) -> None:
        """Empty the cache."""
        self._cache.clear()

    def _push(self, sample: Sample) -> None:
        self._cache.append(sample)
        if len(self._cache) > self.max_cached_images:
            index = int(self.rng.integers(0, len(self._cache))) if self.random_pop else 0
            self._cache.pop(index)

    def __len__(self) -> int:
        return len(self._cache)


class CachedMosaic(_SampleCache):
    """Cached Mosaic (mmdet ``CachedMosaic``): the sample and 3 cached ones tiled on a 2x ``img_scale`` canvas.

    Until the cache holds more than 4 samples (and with probability ``1 - prob``) the sample passes
    through. Otherwise each tile is resized so it fits in ``img_scale`` (keep ratio) and placed with a
    corner on a random centre ``U(center_ratio_range) * img_scale``: the sample top-left, then top-right,
    bottom-left and bottom-right. Tiles only reach past the canvas edge, so clipping boxes to the canvas
    is exact; boxes left without area are dropped. Tiles are drawn with replacement (the sample itself may
    be drawn), as mmdet does.
    """

    def __init__(
        self,
        img_scale: int | Sequence[int] = (640, 640),
        center_ratio_range: Sequence[float] = (0.5, 1.5),
        max_cached_images: int = 40,
        random_pop: bool = True,
        prob: float = 1.0,
        pad_value: int | Sequence[int] = 114,
    ) -> None:
        super().__init__(max_cached_images, random_pop, prob, min_items=4)
        self.img_scale = _size_pair(img_scale, "img_scale")
        self.center_ratio_range = _range_pair(center_ratio_range, "center_ratio_range", low=0.0, strict_low=False)
        if self.center_ratio_range[1] > 2.0:
            raise ValueError(f"center_ratio_range must lie in [0, 2], got {center_ratio_range!r}")
        self.pad_value = _pad_colour(pad_value, "pad_value")

    def __call__(self, sample: Sample) -> Sample:
        self._push(sample)
        if len(self._cache) <= 4 or self.rng.random() >= self.prob:
            return sample
        others = self.rng.integers(0, len(self._cache), 3)
        return self.tile(sample, [self._cache[int(i)] for i in others])

    def tile(self, sample: Sample, others: Sequence[Sample]) -> Sample:
        """The mosaic of ``sample`` (top-left) and three ``others``; a non-cached Mosaic loads the
        three from disk for every sample and calls this (the benchmark's uncached baseline)."""
        if len(others) != 3:
            raise ValueError(f"others must hold 3 samples, got {len(others)}")
        tiles = [sample, *others]
        scale_w, scale_h = self.img_scale
        canvas_w, canvas_h = 2 * scale_w, 2 * scale_h
        canvas = _canvas(canvas_h, canvas_w, self.pad_value)
        cx = int(self.rng.uniform(*self.center_ratio_range) * scale_w)
        cy = int(self.rng.uniform(*self.center_ratio_range) * scale_h)
        all_boxes, all_labels = [], []
        for corner, tile in enumerate(tiles):
            img = tile["img"]
            h, w = img.shape[:2]
            factor = min(scale_w / w, scale_h / h)
            tw, th = max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))
            resized = _resize(img, tw, th)
            # paste window on the canvas; the tile's corner that touches the centre is kept
            left = corner in (0, 2)
            top = corner in (0, 1)
            px1, px2 = (max(cx - tw, 0), cx) if left else (cx, min(cx + tw, canvas_w))
            py1, py2 = (max(cy - th, 0), cy) if top else (cy, min(cy + th, canvas_h))
            cx1 = tw - (px2 - px1) if left else 0
            cy1 = th - (py2 - py1) if top else 0
            canvas[py1:py2, px1:px2] = resized[cy1 : cy1 + (py2 - py1), cx1 : cx1 + (px2 - px1)]
            boxes = _scale_boxes(_boxes_of(tile), tw / w, th / h)
            all_boxes.append(_shift_boxes(boxes, px1 - cx1, py1 - cy1))
            all_labels.append(_labels_of(tile))
        boxes, labels = _clip_and_keep(np.concatenate(all_boxes), np.concatenate(all_labels), canvas_w, canvas_h)
        return _with(sample, img=canvas, boxes=boxes, labels=labels)


class CachedMixUp(_SampleCache):
    """Cached MixUp (mmdet ``CachedMixUp``): blend the sample 0.5/0.5 with a cached one; boxes concatenated.

    Until the cache holds more than 1 sample (and with probability ``1 - prob``) the sample passes
    through. A cached sample (up to ``max_iters`` draws to find one with boxes) is resized to fit in
    ``img_scale`` (keep ratio, padded bottom/right), scaled by ``U(ratio_range)``, flipped horizontally
    with probability ``flip_ratio``, padded to at least the sample's size and cropped at a random offset
    to it. In the RTMDet pipeline the cache holds already mosaicked, padded samples, so two mosaics mix.
    Note ``flip_ratio`` is the flip probability here (mmdet flips when ``U(0, 1) > flip_ratio``; the
    same at the default 0.5).
    """

    def __init__(
        self,
        img_scale: int | Sequence[int] = (640, 640),
        ratio_range: Sequence[float] = (1.0, 1.0),
        max_cached_images: int = 20,
        random_pop: bool = True,
        prob: float = 1.0,
        flip_ratio: float = 0.5,
        pad_value: int | Sequence[int] = 114,
        max_iters: int = 15,
    ) -> None:
        super().__init__(max_cached_images, random_pop, prob, min_items=2)
        self.img_scale = _size_pair(img_scale, "img_scale")
        self.ratio_range = _range_pair(ratio_range, "ratio_range")
        self.flip_ratio = _probability(flip_ratio, "flip_ratio")
        self.pad_value = _pad_colour(pad_value, "pad_value")
        self.max_iters = _positive_int(max_iters, "max_iters")

    def __call__(self, sample: Sample) -> Sample:
        self._push(sample)
        if len(self._cache) <= 1 or self.rng.random() >= self.prob:
            return sample
        for _ in range(self.max_iters):
            other = self._cache[int(self.rng.integers(0, len(self._cache)))]
            if len(_boxes_of(other)):
                break
        return self.blend(sample, other)

    def blend(self, sample: Sample, other: Sample) -> Sample:
        """Mix ``other`` into ``sample`` (jitter, flip, offset drawn from ``self.rng``); a non-cached
        MixUp loads ``other`` from disk for every sample and calls this."""
        jitter = self.rng.uniform(*self.ratio_range)
        flip = bool(self.rng.random() < self.flip_ratio)

        # the other image, fitted into img_scale and padded bottom/right, then jittered and flipped
        scale_w, scale_h = self.img_scale
        img = other["img"]
        h, w = img.shape[:2]
        factor = min(scale_w / w, scale_h / h)
        fw, fh = max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))
        fitted = _canvas(scale_h, scale_w, self.pad_value)
        fitted[:fh, :fw] = _resize(img, fw, fh)
        jw, jh = max(1, int(scale_w * jitter + 0.5)), max(1, int(scale_h * jitter + 0.5))
        fitted = _resize(fitted, jw, jh)
        boxes = _scale_boxes(_boxes_of(other), fw / w * jw / scale_w, fh / h * jh / scale_h)
        if flip:
            fitted = cv2.flip(fitted, 1)
            boxes = np.stack((jw - boxes[:, 2], boxes[:, 1], jw - boxes[:, 0], boxes[:, 3]), axis=1)  # [K, 4]

        # place it on a canvas at least the sample's size and cut the sample's size at a random offset
        base = sample["img"]
        bh, bw = base.shape[:2]
        canvas_h, canvas_w = max(jh, bh), max(jw, bw)
        if (canvas_h, canvas_w) != (jh, jw):
            canvas = _canvas(canvas_h, canvas_w, self.pad_value)
            canvas[:jh, :jw] = fitted
        else:
            canvas = fitted
        x0 = int(self.rng.integers(0, canvas_w - bw + 1))
        y0 = int(self.rng.integers(0, canvas_h - bh + 1))
        window = canvas[y0 : y0 + bh, x0 : x0 + bw]
        mixed = cv2.addWeighted(base, 0.5, window, 0.5, 0.0)
        boxes = _shift_boxes(boxes, -x0, -y0)
        all_boxes = np.concatenate((_boxes_of(sample), boxes))
        all_labels = np.concatenate((_labels_of(sample), _labels_of(other)))
        all_boxes, all_labels = _clip_and_keep(all_boxes, all_labels, bw, bh)
        return _with(sample, img=mixed, boxes=all_boxes, labels=all_labels)
