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
- Box arithmetic is vectorised over boxes. The multi-image transforms (cached Mosaic and MixUp) are in
  :mod:`rtmdet_exp.data.mixing`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from rtmdet_exp.data.sample_ops import (
    Sample,
    boxes_of,
    clip_and_keep,
    labels_of,
    pad_colour,
    positive_int,
    probability,
    range_pair,
    resize,
    scale_boxes,
    shift_boxes,
    size_pair,
    with_changes,
)

__all__ = [
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
        self._steps = _fuse_resize_crop(self.transforms)

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
        for step in self._steps:
            sample = step(sample)
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
        self.size = positive_int(size, "size")
        self.pad_value = pad_colour(pad_value, "pad_value")

    def __call__(self, sample: Sample) -> Sample:
        img = sample["img"]
        h, w = img.shape[:2]
        scale = self.size / max(h, w)
        new_w = min(self.size, max(1, int(round(w * scale))))
        new_h = min(self.size, max(1, int(round(h * scale))))
        resized = resize(img, new_w, new_h)
        padded = cv2.copyMakeBorder(
            resized, 0, self.size - new_h, 0, self.size - new_w, cv2.BORDER_CONSTANT, value=self.pad_value
        )
        sx, sy = new_w / w, new_h / h
        boxes, labels = clip_and_keep(scale_boxes(boxes_of(sample), sx, sy), labels_of(sample), new_w, new_h)
        return with_changes(
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
        self.size = size_pair(size, "size")
        self.pad_value = pad_colour(pad_value, "pad_value")

    def __call__(self, sample: Sample) -> Sample:
        img = sample["img"]
        h, w = img.shape[:2]
        width, height = self.size
        if h > height or w > width:
            raise ValueError(f"size={self.size} (w, h) is smaller than the image ({w}, {h}); crop before Pad")
        if (h, w) == (height, width):
            return with_changes(sample)
        padded = cv2.copyMakeBorder(img, 0, height - h, 0, width - w, cv2.BORDER_CONSTANT, value=self.pad_value)
        return with_changes(sample, img=padded)

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
        boxes, labels = boxes_of(sample), labels_of(sample)
        wh = boxes[:, 2:] - boxes[:, :2]  # [K, 2]
        keep = (wh >= self.min_size).all(axis=1) & (wh > 0).all(axis=1)  # [K]
        return with_changes(sample, boxes=boxes[keep], labels=labels[keep])

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
        self.scale = size_pair(scale, "scale")
        self.ratio_range = range_pair(ratio_range, "ratio_range")
        if not isinstance(keep_ratio, bool):
            raise ValueError(f"keep_ratio must be a bool, got {keep_ratio!r}")
        self.keep_ratio = keep_ratio

    def draw_size(self, h: int, w: int) -> tuple[int, int]:
        """The ``(new_w, new_h)`` of an ``h x w`` image (one draw from ``self.rng``)."""
        ratio = self.rng.uniform(*self.ratio_range)
        target_w, target_h = self.scale[0] * ratio, self.scale[1] * ratio
        if self.keep_ratio:
            factor = min(max(target_w, target_h) / max(h, w), min(target_w, target_h) / min(h, w))
            return max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))
        return max(1, int(target_w + 0.5)), max(1, int(target_h + 0.5))

    def __call__(self, sample: Sample) -> Sample:
        img = sample["img"]
        h, w = img.shape[:2]
        new_w, new_h = self.draw_size(h, w)
        boxes = scale_boxes(boxes_of(sample), new_w / w, new_h / h)
        boxes, labels = clip_and_keep(boxes, labels_of(sample), new_w, new_h)
        return with_changes(sample, img=resize(img, new_w, new_h), boxes=boxes, labels=labels)


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
        self.crop_size = size_pair(crop_size, "crop_size")
        if not isinstance(allow_negative_crop, bool):
            raise ValueError(f"allow_negative_crop must be a bool, got {allow_negative_crop!r}")
        self.allow_negative_crop = allow_negative_crop

    @staticmethod
    def _crop_boxes(boxes: np.ndarray, x0: int, y0: int, cw: int, ch: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes in window coordinates, clipped, and the mask of those with area left."""
        shifted = shift_boxes(boxes, -x0, -y0)
        np.clip(shifted[:, 0::2], 0, cw, out=shifted[:, 0::2])
        np.clip(shifted[:, 1::2], 0, ch, out=shifted[:, 1::2])
        keep = (shifted[:, 2] > shifted[:, 0]) & (shifted[:, 3] > shifted[:, 1])  # [K]
        return shifted, keep

    def __call__(self, sample: Sample) -> Sample:
        img = sample["img"]
        h, w = img.shape[:2]
        boxes, labels = clip_and_keep(boxes_of(sample), labels_of(sample), w, h)
        x0, y0, cw, ch, shifted, keep = self.draw_window(boxes, w, h)
        cropped = img[y0 : y0 + ch, x0 : x0 + cw]
        return with_changes(sample, img=np.ascontiguousarray(cropped), boxes=shifted[keep], labels=labels[keep])

    def draw_window(self, boxes: np.ndarray, w: int, h: int) -> tuple[int, int, int, int, np.ndarray, np.ndarray]:
        """The window ``(x0, y0, cw, ch)`` of a ``w x h`` image with (clipped) ``boxes`` [K, 4], the boxes in
        window coordinates and the mask of those kept (draws from ``self.rng``)."""
        cw, ch = min(self.crop_size[0], w), min(self.crop_size[1], h)
        margin_x, margin_y = w - cw, h - ch
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
        return x0, y0, cw, ch, shifted, keep


def resize_then_crop(resize_t: RandomResize, crop: RandomCrop, sample: Sample) -> Sample:
    """``crop(resize_t(sample))`` computing only the crop window's pixels (:class:`Compose` uses it).

    The same random draws, boxes and labels as the two steps. The window comes from one
    ``cv2.warpAffine`` of the source with ``cv2.resize``'s pixel map (source = (dest + 0.5) / scale
    - 0.5) instead of resizing the whole image first: RTMDet's stage 1 scales a 2x Mosaic canvas by
    U(0.5, 2) for tiny, U(0.1, 2) for the others (at U(0.5, 2) on average ~7x the pixels of the window
    it keeps). Pixels agree with the two steps within bilinear fixed-point rounding (warpAffine places
    samples to 1/32 px: at most 1 grey level in the tests; none where the scale is 1).
    """
    img = sample["img"]
    h, w = img.shape[:2]
    new_w, new_h = resize_t.draw_size(h, w)
    sx, sy = new_w / w, new_h / h
    boxes, labels = clip_and_keep(scale_boxes(boxes_of(sample), sx, sy), labels_of(sample), new_w, new_h)
    x0, y0, cw, ch, shifted, keep = crop.draw_window(boxes, new_w, new_h)
    if (new_w, new_h) == (w, h):
        window = np.ascontiguousarray(img[y0 : y0 + ch, x0 : x0 + cw])
    else:
        source_of_dest = np.array([[1 / sx, 0, (x0 + 0.5) / sx - 0.5], [0, 1 / sy, (y0 + 0.5) / sy - 0.5]])
        window = cv2.warpAffine(img, source_of_dest, (cw, ch), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
    return with_changes(sample, img=window, boxes=shifted[keep], labels=labels[keep])


def _fuse_resize_crop(transforms: Sequence[Callable[[Sample], Sample]]) -> list[Callable[[Sample], Sample]]:
    """The steps of a :class:`Compose`: each RandomResize directly followed by a RandomCrop as one step."""
    steps: list[Callable[[Sample], Sample]] = []
    i = 0
    while i < len(transforms):
        first = transforms[i]
        second = transforms[i + 1] if i + 1 < len(transforms) else None
        if isinstance(first, RandomResize) and isinstance(second, RandomCrop):
            steps.append(functools.partial(resize_then_crop, first, second))
            i += 2
        else:
            steps.append(first)
            i += 1
    return steps


class HSVRandomAug(RandomTransform):
    """YOLOX-style colour jitter in HSV (mmdet ``YOLOXHSVRandomAug``); geometry and boxes are unchanged.

    Gains ``g = U(-1, 1) * (hue_delta, saturation_delta, value_delta)``, each switched on with probability
    0.5 and truncated to ints; then H <- (H + g_h) mod 180, S <- clip(S + g_s), V <- clip(V + g_v) in
    OpenCV's 8-bit HSV. Applied through one lookup table per channel, all three in one pass
    (splitting the channels and merging them back took 3x as long).
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
            return with_changes(sample)
        hsv = cv2.cvtColor(sample["img"], cv2.COLOR_BGR2HSV)
        x = np.arange(256, dtype=np.int64)
        lut_h = ((x + gains[0]) % 180).astype(np.uint8)
        lut_s = np.clip(x + gains[1], 0, 255).astype(np.uint8)
        lut_v = np.clip(x + gains[2], 0, 255).astype(np.uint8)
        table = np.stack((lut_h, lut_s, lut_v), axis=-1).reshape(256, 1, 3)  # one table per channel, one pass
        return with_changes(sample, img=cv2.cvtColor(cv2.LUT(hsv, table), cv2.COLOR_HSV2BGR))


class RandomFlip(RandomTransform):
    """Horizontal flip with probability ``prob``: x -> width - x for the pixels and the boxes."""

    def __init__(self, prob: float = 0.5) -> None:
        super().__init__()
        self.prob = probability(prob, "prob")

    def __call__(self, sample: Sample) -> Sample:
        if not self.rng.random() < self.prob:
            return with_changes(sample)
        img = sample["img"]
        w = img.shape[1]
        boxes = boxes_of(sample)
        flipped = np.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), axis=1)  # [K, 4]
        return with_changes(sample, img=cv2.flip(img, 1), boxes=flipped.astype(np.float32), labels=labels_of(sample))
