"""The cached multi-image transforms of RTMDet's stage-1 pipeline: Mosaic and MixUp (spec section 4).

Each keeps a bounded cache of earlier samples (mmdet's CachedMosaic / CachedMixUp semantics) instead
of loading partner images, which is what makes them cheap (paper 5(f): 87 -> 24 ms and 19 -> 12 ms
per 100 images). What a cache holds depends on the samples seen before: the training loader keeps
that exact across workers and resumes (:mod:`rtmdet_exp.data.sampling`). The sample contract and
the rules every transform follows are in :mod:`rtmdet_exp.data.transforms`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from rtmdet_exp.data.sample_ops import (
    Sample,
    boxes_of,
    blank_canvas,
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
from rtmdet_exp.data.transforms import RandomTransform

__all__ = ["CachedMixUp", "CachedMosaic"]


class _SampleCache(RandomTransform):
    """A bounded cache of earlier samples shared by the cached Mosaic and MixUp (mmdet semantics).

    Every sample is pushed before it is transformed; past ``max_cached_images`` one item is evicted, at a
    random position with ``random_pop`` (so old images can stay) or the oldest otherwise (FIFO).
    The cache stores references, which is safe because transforms never mutate their inputs.
    """

    def __init__(self, max_cached_images: int, random_pop: bool, prob: float, min_items: int) -> None:
        super().__init__()
        self.max_cached_images = positive_int(max_cached_images, "max_cached_images")
        if self.max_cached_images < min_items:
            raise ValueError(f"max_cached_images must be >= {min_items}, got {max_cached_images!r}")
        if not isinstance(random_pop, bool):
            raise ValueError(f"random_pop must be a bool, got {random_pop!r}")
        self.random_pop = random_pop
        self.prob = probability(prob, "prob")
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
        self.img_scale = size_pair(img_scale, "img_scale")
        self.center_ratio_range = range_pair(center_ratio_range, "center_ratio_range", low=0.0, strict_low=False)
        if self.center_ratio_range[1] > 2.0:
            raise ValueError(f"center_ratio_range must lie in [0, 2], got {center_ratio_range!r}")
        self.pad_value = pad_colour(pad_value, "pad_value")

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
        canvas = blank_canvas(canvas_h, canvas_w, self.pad_value)
        cx = int(self.rng.uniform(*self.center_ratio_range) * scale_w)
        cy = int(self.rng.uniform(*self.center_ratio_range) * scale_h)
        all_boxes, all_labels = [], []
        for corner, tile in enumerate(tiles):
            img = tile["img"]
            h, w = img.shape[:2]
            factor = min(scale_w / w, scale_h / h)
            tw, th = max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))
            resized = resize(img, tw, th)
            # paste window on the canvas; the tile's corner that touches the centre is kept
            left = corner in (0, 2)
            top = corner in (0, 1)
            px1, px2 = (max(cx - tw, 0), cx) if left else (cx, min(cx + tw, canvas_w))
            py1, py2 = (max(cy - th, 0), cy) if top else (cy, min(cy + th, canvas_h))
            cx1 = tw - (px2 - px1) if left else 0
            cy1 = th - (py2 - py1) if top else 0
            canvas[py1:py2, px1:px2] = resized[cy1 : cy1 + (py2 - py1), cx1 : cx1 + (px2 - px1)]
            boxes = scale_boxes(boxes_of(tile), tw / w, th / h)
            all_boxes.append(shift_boxes(boxes, px1 - cx1, py1 - cy1))
            all_labels.append(labels_of(tile))
        boxes, labels = clip_and_keep(np.concatenate(all_boxes), np.concatenate(all_labels), canvas_w, canvas_h)
        return with_changes(sample, img=canvas, boxes=boxes, labels=labels)


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
        self.img_scale = size_pair(img_scale, "img_scale")
        self.ratio_range = range_pair(ratio_range, "ratio_range")
        self.flip_ratio = probability(flip_ratio, "flip_ratio")
        self.pad_value = pad_colour(pad_value, "pad_value")
        self.max_iters = positive_int(max_iters, "max_iters")

    def __call__(self, sample: Sample) -> Sample:
        self._push(sample)
        if len(self._cache) <= 1 or self.rng.random() >= self.prob:
            return sample
        for _ in range(self.max_iters):
            other = self._cache[int(self.rng.integers(0, len(self._cache)))]
            if len(boxes_of(other)):
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
        fitted = blank_canvas(scale_h, scale_w, self.pad_value)
        fitted[:fh, :fw] = resize(img, fw, fh)
        jw, jh = max(1, int(scale_w * jitter + 0.5)), max(1, int(scale_h * jitter + 0.5))
        fitted = resize(fitted, jw, jh)
        boxes = scale_boxes(boxes_of(other), fw / w * jw / scale_w, fh / h * jh / scale_h)
        if flip:
            fitted = cv2.flip(fitted, 1)
            boxes = np.stack((jw - boxes[:, 2], boxes[:, 1], jw - boxes[:, 0], boxes[:, 3]), axis=1)  # [K, 4]

        # place it on a canvas at least the sample's size and cut the sample's size at a random offset
        base = sample["img"]
        bh, bw = base.shape[:2]
        canvas_h, canvas_w = max(jh, bh), max(jw, bw)
        if (canvas_h, canvas_w) != (jh, jw):
            canvas = blank_canvas(canvas_h, canvas_w, self.pad_value)
            canvas[:jh, :jw] = fitted
        else:
            canvas = fitted
        x0 = int(self.rng.integers(0, canvas_w - bw + 1))
        y0 = int(self.rng.integers(0, canvas_h - bh + 1))
        window = canvas[y0 : y0 + bh, x0 : x0 + bw]
        mixed = cv2.addWeighted(base, 0.5, window, 0.5, 0.0)
        boxes = shift_boxes(boxes, -x0, -y0)
        all_boxes = np.concatenate((boxes_of(sample), boxes))
        all_labels = np.concatenate((labels_of(sample), labels_of(other)))
        all_boxes, all_labels = clip_and_keep(all_boxes, all_labels, bw, bh)
        return with_changes(sample, img=mixed, boxes=all_boxes, labels=all_labels)
