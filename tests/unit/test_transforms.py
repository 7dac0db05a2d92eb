"""Training transforms and the two-stage pipeline: boxes follow the pixels, stages switch on time.

Images are synthetic: background 0 with solid rectangles of distinct colours. After a transform
each rectangle is found again *by its colour* in the output image (a pixel belongs to colour ``c``
when it is, within rounding, ``t * c`` with ``t >= 0.5``, i.e. at least half the rectangle after
bilinear blending with the background) and its pixel extent is compared with the output box of the
same label. Labels index the colour palette, so every label names one colour.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rtmdet_exp.data.pipelines import Augment, TwoStagePipeline, seed_worker
from rtmdet_exp.experiment import compose
from rtmdet_exp.experiment.build import instantiate, plain
from rtmdet_exp.data.mixing import CachedMixUp, CachedMosaic
from rtmdet_exp.data.transforms import (
    Compose,
    FilterSmallBoxes,
    HSVRandomAug,
    LetterboxResize,
    Pad,
    RandomCrop,
    RandomFlip,
    RandomResize,
    resize_then_crop,
)

# distinct, pairwise non-collinear BGR colours, none grey (the pad colour 114 is grey)
PALETTE = np.array(
    [
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 0),
        (255, 0, 255),
        (0, 255, 255),
        (255, 128, 0),
        (0, 128, 255),
        (128, 0, 255),
        (128, 255, 0),
    ],
    dtype=np.float64,
)
REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


def make_sample(h: int, w: int, rects: list[tuple[int, int, int, int, int]], image_id: int = 0) -> dict:
    """Background 0 plus rectangles ``(x1, y1, x2, y2, colour_index)`` covering pixels [x1, x2) x [y1, y2)."""
    img = np.zeros((h, w, 3), np.uint8)
    for x1, y1, x2, y2, c in rects:
        img[y1:y2, x1:x2] = PALETTE[c].astype(np.uint8)
    boxes = np.array([r[:4] for r in rects], np.float32).reshape(-1, 4)
    labels = np.array([r[4] for r in rects], np.int64)
    return {"img": img, "boxes": boxes, "labels": labels, "image_id": image_id, "ori_shape": (h, w)}


def colour_mask(img: np.ndarray, colour_index: int) -> np.ndarray:
    """Pixels that are ``t * colour`` (within 8 grey levels) with ``t >= 0.5``, plain float64 maths."""
    c = PALETTE[colour_index]
    p = img.astype(np.float64)
    t = (p @ c) / (c @ c)
    residual = np.linalg.norm(p - t[..., None] * c, axis=-1)
    return (t >= 0.5) & (residual <= 8.0)


def extent(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel extent ``(x1, y1, x2, y2)`` (exclusive ends) of a mask, or None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def assert_boxes_follow_pixels(
    img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, tol: float = 1.0, sliver: int = 0
) -> None:
    """Each box encloses its colour's pixels (measured in a window 3 px around it) within ``tol`` px, and
    every pixel of a rectangle colour lies inside some box of that label (none dropped while visible),
    except, with ``sliver > 0``, strips at most ``sliver`` px thick (boxes FilterSmallBoxes drops)."""
    h, w = img.shape[:2]
    assert boxes.dtype == np.float32 and labels.dtype == np.int64
    assert boxes.shape == (len(labels), 4)
    if len(boxes):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    for box, label in zip(boxes, labels):
        x1, y1 = int(max(np.floor(box[0]) - 3, 0)), int(max(np.floor(box[1]) - 3, 0))
        x2, y2 = int(min(np.ceil(box[2]) + 3, w)), int(min(np.ceil(box[3]) + 3, h))
        found = extent(colour_mask(img[y1:y2, x1:x2], int(label)))
        assert found is not None, f"box {box} of label {label} has no pixels of its colour"
        measured = np.array(found, np.float64) + [x1, y1, x1, y1]
        assert np.abs(measured - box).max() <= tol, f"box {box} vs pixels {measured} (label {label})"
    for label in range(len(PALETTE)):
        ys, xs = np.nonzero(colour_mask(img, label))
        if len(xs) == 0:
            continue
        own = boxes[labels == label]
        assert len(own), f"colour {label} is visible but has no box"
        inside = (
            (xs[:, None] + 0.5 >= own[None, :, 0] - tol)
            & (xs[:, None] + 0.5 <= own[None, :, 2] + tol)
            & (ys[:, None] + 0.5 >= own[None, :, 1] - tol)
            & (ys[:, None] + 0.5 <= own[None, :, 3] + tol)
        ).any(axis=1)
        outside = np.zeros(img.shape[:2], np.uint8)
        outside[ys[~inside], xs[~inside]] = 1
        _, _, stats, _ = cv2.connectedComponentsWithStats(outside, connectivity=8)
        thick = [(w_, h_) for _, _, w_, h_, _ in stats[1:] if min(w_, h_) > sliver]
        assert not thick, f"pixels of colour {label} lie outside its boxes in strips (w, h) {thick}"


def seeded(transform, seed: int):
    transform.set_rng(np.random.default_rng(seed))
    return transform


# ------------------------------------------------------------------------------ geometry


def test_letterbox_upscales_long_side_and_records_meta() -> None:
    sample = make_sample(60, 100, [(10, 5, 40, 30, 0), (60, 30, 95, 58, 1)])
    out = LetterboxResize(160)(sample)
    # 100x60 -> long side 160: factor 1.6, 160x96 image padded to 160x160 at the bottom
    assert out["img"].shape == (160, 160, 3)
    assert out["img_shape"] == (96, 160) and out["pad_offset"] == (0, 0)
    assert out["scale_factor"] == pytest.approx((1.6, 1.6))
    np.testing.assert_allclose(out["boxes"], [[16, 8, 64, 48], [96, 48, 152, 92.8]], atol=1e-4)
    assert (out["img"][96:] == 114).all()
    assert_boxes_follow_pixels(out["img"][:96], out["boxes"], out["labels"])
    assert sample["img"].shape == (60, 100, 3), "input must not change"


def test_letterbox_downscales_portrait() -> None:
    sample = make_sample(120, 60, [(4, 10, 50, 40, 2), (10, 70, 30, 115, 3)])
    out = LetterboxResize(64)(sample)
    # 60x120 -> factor 64/120: 32x64, padded on the right
    assert out["img_shape"] == (64, 32)
    assert (out["img"][:, 32:] == 114).all()
    assert_boxes_follow_pixels(out["img"][:, :32], out["boxes"], out["labels"])


@pytest.mark.parametrize("seed", range(6))
def test_random_resize_boxes_follow_pixels(seed: int) -> None:
    sample = make_sample(50, 80, [(5, 5, 30, 25, 0), (40, 20, 75, 45, 4), (20, 30, 35, 48, 6)])
    t = seeded(RandomResize(scale=(64, 64), ratio_range=(0.5, 2.0)), seed)
    out = t(sample)
    h, w = out["img"].shape[:2]
    # keep ratio: 80x50 scaled by r * 64 / 80 with r in [0.5, 2]
    factor = w / 80
    assert 0.5 * 64 / 80 - 0.02 <= factor <= 2.0 * 64 / 80 + 0.02
    assert abs(h - 50 * factor) <= 1
    assert_boxes_follow_pixels(out["img"], out["boxes"], out["labels"])


@pytest.mark.parametrize("seed", range(8))
def test_random_crop_boxes_follow_pixels(seed: int) -> None:
    sample = make_sample(90, 120, [(5, 5, 40, 30, 0), (50, 40, 110, 85, 1), (70, 3, 100, 20, 7)])
    out = seeded(RandomCrop(crop_size=(64, 48)), seed)(sample)
    assert out["img"].shape == (48, 64, 3)
    assert len(out["boxes"]) >= 1
    assert_boxes_follow_pixels(out["img"], out["boxes"], out["labels"])


def textured_sample(seed: int) -> dict:
    """Coloured rectangles on a smooth random texture (blurred noise: no single-pixel edges)."""
    sample = make_sample(96, 128, [(5, 5, 50, 40, 0), (60, 30, 120, 90, 1), (20, 60, 45, 92, 2)])
    noise = np.random.default_rng(100 + seed).integers(0, 256, (96, 128, 3)).astype(np.uint8)
    texture = cv2.GaussianBlur(noise, (0, 0), 2.0)
    sample["img"] = np.where(sample["img"].any(axis=2, keepdims=True), sample["img"], texture // 4)
    return sample


@pytest.mark.parametrize("ratio_range", [(0.1, 2.0), (0.5, 2.0), (1.2, 1.6)])
@pytest.mark.parametrize("seed", range(5))
def test_resize_then_crop_equals_the_two_steps(seed: int, ratio_range: tuple[float, float]) -> None:
    """The fused step draws the same window with the same boxes; its pixels are cv2.resize's then a
    slice, up to bilinear fixed-point rounding."""
    sample = textured_sample(seed)
    steps = (RandomResize(scale=(128, 128), ratio_range=ratio_range), RandomCrop(crop_size=(64, 48)))
    expected = seeded(steps[1], seed)(seeded(steps[0], seed)(sample))
    fused = (RandomResize(scale=(128, 128), ratio_range=ratio_range), RandomCrop(crop_size=(64, 48)))
    got = resize_then_crop(seeded(fused[0], seed), seeded(fused[1], seed), sample)
    np.testing.assert_array_equal(got["boxes"], expected["boxes"])
    np.testing.assert_array_equal(got["labels"], expected["labels"])
    assert got["img"].shape == expected["img"].shape and got["img"].dtype == np.uint8
    diff = np.abs(got["img"].astype(int) - expected["img"].astype(int))
    assert diff.max() <= 2 and diff.mean() <= 0.1, (diff.max(), diff.mean())  # measured: at most 1, mean < 0.07
    assert_boxes_follow_pixels(got["img"], got["boxes"], got["labels"])
    assert sample["img"].shape == (96, 128, 3)  # the input is not touched


def test_resize_then_crop_at_scale_one_is_a_plain_slice() -> None:
    sample = textured_sample(0)
    resize_t = seeded(RandomResize(scale=(128, 128), ratio_range=(1.0, 1.0)), 3)  # 128x96 fits as it is
    got = resize_then_crop(resize_t, seeded(RandomCrop(crop_size=(64, 48)), 3), sample)
    expected = seeded(RandomCrop(crop_size=(64, 48)), 3)(sample)
    np.testing.assert_array_equal(got["img"], expected["img"])
    np.testing.assert_array_equal(got["boxes"], expected["boxes"])


def test_compose_runs_a_resize_and_the_crop_after_it_as_one_step() -> None:
    """Same random streams as the transforms one by one (Compose seeds each transform, fused or not)."""
    sample = textured_sample(1)

    def build() -> Compose:
        return Compose([RandomResize(scale=(128, 128), ratio_range=(0.5, 2.0)), RandomCrop(crop_size=(64, 48)),
                        RandomFlip(prob=0.5)])

    pipelines = [build() for _ in range(3)]
    for pipeline in pipelines:
        pipeline.set_rng(np.random.default_rng(1))
    fused, (resize_t, crop, flip), (resize_2, crop_2, flip_2) = pipelines[0], pipelines[1].transforms, \
        pipelines[2].transforms
    got = fused(sample)
    expected = flip(resize_then_crop(resize_t, crop, sample))
    two_steps = flip_2(crop_2(resize_2(sample)))
    np.testing.assert_array_equal(got["img"], expected["img"])
    np.testing.assert_array_equal(got["boxes"], two_steps["boxes"])
    assert (got["img"] != two_steps["img"]).any()  # this draw rounds differently: the fused step ran
    assert len(fused) == 3 and isinstance(fused.transforms[0], RandomResize)


def test_random_crop_keeps_a_box_unless_negative_crops_are_allowed() -> None:
    sample = make_sample(100, 100, [(2, 2, 8, 8, 5)])  # one small object in a corner
    empty_allowed = 0
    for seed in range(40):
        out = seeded(RandomCrop(crop_size=(30, 30)), seed)(sample)
        assert len(out["boxes"]) == 1
        assert_boxes_follow_pixels(out["img"], out["boxes"], out["labels"])
        neg = seeded(RandomCrop(crop_size=(30, 30), allow_negative_crop=True), seed)(sample)
        assert_boxes_follow_pixels(neg["img"], neg["boxes"], neg["labels"])
        empty_allowed += len(neg["boxes"]) == 0
    assert empty_allowed > 20  # P(window misses the corner) = 1 - (8/71)^2


def test_random_crop_smaller_image_is_whole() -> None:
    sample = make_sample(40, 50, [(5, 5, 20, 20, 0)])
    out = RandomCrop(crop_size=(64, 64))(sample)
    assert out["img"].shape == (40, 50, 3)
    np.testing.assert_array_equal(out["boxes"], sample["boxes"])


def test_random_flip_mirrors_boxes() -> None:
    sample = make_sample(40, 100, [(10, 5, 30, 20, 0), (60, 10, 100, 40, 1)])
    out = RandomFlip(prob=1.0)(sample)
    np.testing.assert_allclose(out["boxes"], [[70, 5, 90, 20], [0, 10, 40, 40]])
    assert_boxes_follow_pixels(out["img"], out["boxes"], out["labels"])
    same = RandomFlip(prob=0.0)(sample)
    np.testing.assert_array_equal(same["img"], sample["img"])
    np.testing.assert_array_equal(same["boxes"], sample["boxes"])


def test_pad_bottom_right() -> None:
    sample = make_sample(30, 50, [(10, 5, 30, 20, 0)])
    out = Pad(size=(64, 48))(sample)
    assert out["img"].shape == (48, 64, 3)
    assert (out["img"][30:] == 114).all() and (out["img"][:, 50:] == 114).all()
    np.testing.assert_array_equal(out["img"][:30, :50], sample["img"])
    np.testing.assert_array_equal(out["boxes"], sample["boxes"])
    with pytest.raises(ValueError, match="size"):
        Pad(size=(32, 32))(sample)


def test_filter_small_boxes() -> None:
    sample = make_sample(50, 50, [(0, 0, 10, 10, 0)])
    sample["boxes"] = np.array([[0, 0, 10, 10], [5, 5, 5.5, 20], [1, 1, 20, 2], [3, 3, 4, 4]], np.float32)
    sample["labels"] = np.array([0, 1, 2, 3], np.int64)
    out = FilterSmallBoxes(min_size=1)(sample)
    # widths 10, 0.5, 19, 1 and heights 10, 15, 1, 1: the 0.5-wide box goes
    np.testing.assert_array_equal(out["labels"], [0, 2, 3])
    out = FilterSmallBoxes(min_size=2)(sample)
    np.testing.assert_array_equal(out["labels"], [0])


# ------------------------------------------------------------------------------ colour


def test_hsv_keeps_geometry() -> None:
    sample = make_sample(40, 60, [(5, 5, 30, 30, 0), (35, 10, 55, 35, 6)])
    for seed in range(5):
        out = seeded(HSVRandomAug(), seed)(sample)
        assert out["img"].shape == sample["img"].shape
        np.testing.assert_array_equal(out["boxes"], sample["boxes"])
        np.testing.assert_array_equal(out["labels"], sample["labels"])


def test_hsv_matches_plain_hsv_arithmetic() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    sample = {"img": img, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "image_id": 0}
    deltas = np.array([5, 30, 30], np.float64)
    changed = 0
    for seed in range(12):
        out = seeded(HSVRandomAug(5, 30, 30), seed)(sample)
        # the YOLOX gain formula, drawn again from a generator with the same seed
        ref = np.random.default_rng(seed)
        gains = (ref.uniform(-1, 1, 3) * deltas * ref.integers(0, 2, 3)).astype(np.int64)
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.int64)
        expected_hsv = np.empty_like(hsv)
        for y in range(hsv.shape[0]):
            for x in range(hsv.shape[1]):
                h, s, v = hsv[y, x]
                expected_hsv[y, x] = (
                    (h + gains[0]) % 180,
                    min(max(s + gains[1], 0), 255),
                    min(max(v + gains[2], 0), 255),
                )
        expected = cv2.cvtColor(expected_hsv.astype(np.uint8), cv2.COLOR_HSV2BGR) if gains.any() else img
        np.testing.assert_array_equal(out["img"], expected)
        changed += bool(gains.any())
    assert 0 < changed < 12


def test_hsv_value_gain_on_grey_is_bounded_and_uniform() -> None:
    sample = {"img": np.full((8, 8, 3), 100, np.uint8), "boxes": np.zeros((0, 4), np.float32),
              "labels": np.zeros(0, np.int64), "image_id": 0}
    shifts = set()
    for seed in range(30):
        out = seeded(HSVRandomAug(hue_delta=0, saturation_delta=0, value_delta=30), seed)(sample)["img"]
        assert (out == out[0, 0, 0]).all()  # grey stays grey, one shift for the whole image
        shift = int(out[0, 0, 0]) - 100
        assert -30 < shift < 30
        shifts.add(shift)
    assert 0 in shifts and len(shifts) > 5  # the value gain is switched on at random


# ------------------------------------------------------------------------------ cached transforms


def mosaic_stream(n: int, seed: int) -> list[dict]:
    """Samples of varied sizes with one or two rectangles (left / right half, >= 4 px from the border),
    colours ``2i`` and ``2i + 1`` for sample ``i``."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        halves = [(4, w // 2 - 2), (w // 2 + 2, w - 4)][: int(rng.integers(1, 3))]
        rects = []
        for j, (lo, hi) in enumerate(halves):
            x1 = int(rng.integers(lo, hi - 6))
            x2 = int(rng.integers(x1 + 5, hi + 1))
            y1 = int(rng.integers(4, h // 2))
            y2 = int(rng.integers(y1 + 5, h - 3))
            rects.append((x1, y1, x2, y2, (2 * i + j) % len(PALETTE)))
        samples.append(make_sample(h, w, rects, image_id=i))
    return samples


@pytest.mark.parametrize("seed", range(4))
def test_cached_mosaic_boxes_follow_pixels_and_stay_inside(seed: int) -> None:
    stream = mosaic_stream(5, seed)  # 5 samples: colours 0..9 are all distinct
    mosaic = seeded(CachedMosaic(img_scale=(64, 64), max_cached_images=5), seed)
    for sample in stream[:4]:
        assert mosaic(sample) is sample  # the cache holds <= 4 items: pass through
    for sample in stream[4:] * 4:
        out = mosaic(sample)
        assert out["img"].shape == (128, 128, 3)
        assert_boxes_follow_pixels(out["img"], out["boxes"], out["labels"])


def test_cached_mosaic_prob_zero_and_cache_bound() -> None:
    stream = mosaic_stream(8, 0)
    mosaic = CachedMosaic(img_scale=(64, 64), max_cached_images=6, prob=0.0)
    for sample in stream:
        assert mosaic(sample) is sample
    assert len(mosaic) == 6
    mosaic.reset()
    assert len(mosaic) == 0


@pytest.mark.parametrize(
    ("seed", "ratio", "base_size"), [(0, 1.0, 64), (1, 1.0, 64), (2, 1.5, 64), (3, 0.7, 48), (4, 1.3, 80)]
)
def test_cached_mixup_boxes_follow_pixels(seed: int, ratio: float, base_size: int) -> None:
    stream = mosaic_stream(5, seed + 10)
    mixup = seeded(CachedMixUp(img_scale=(64, 64), ratio_range=(ratio, ratio), flip_ratio=0.5), seed)
    mixup(Pad(size=(base_size, base_size))(RandomCrop(crop_size=(base_size, base_size))(stream[0])))
    for sample in stream[1:] * 2:
        base = Pad(size=(base_size, base_size))(RandomCrop(crop_size=(base_size, base_size))(sample))
        out = mixup(base)
        assert out["img"].shape == base["img"].shape
        k = len(base["boxes"])
        # the sample's own boxes come first, unchanged
        np.testing.assert_array_equal(out["boxes"][:k], base["boxes"])
        # out = round(0.5 * base + 0.5 * other): recover the mixed-in image and check its boxes there
        other = np.clip(2.0 * out["img"].astype(np.float64) - base["img"], 0, 255)
        assert_boxes_follow_pixels(other, out["boxes"][k:], out["labels"][k:], tol=1.5)


def test_cached_mixup_passes_through_until_two_cached() -> None:
    stream = mosaic_stream(2, 0)
    mixup = CachedMixUp(img_scale=(64, 64))
    assert mixup(stream[0]) is stream[0]
    assert mixup(stream[1]) is not stream[1]


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("make", "arg"),
    [
        (lambda: LetterboxResize(0), "size"),
        (lambda: RandomResize(ratio_range=(2.0, 0.5)), "ratio_range"),
        (lambda: RandomResize(scale=(640,)), "scale"),
        (lambda: RandomCrop(crop_size=(-1, 5)), "crop_size"),
        (lambda: HSVRandomAug(value_delta=-1), "value_delta"),
        (lambda: RandomFlip(prob=1.5), "prob"),
        (lambda: Pad(size=64, pad_value=300), "pad_value"),
        (lambda: CachedMosaic(max_cached_images=3), "max_cached_images"),
        (lambda: CachedMosaic(center_ratio_range=(0.5, 2.5)), "center_ratio_range"),
        (lambda: CachedMixUp(flip_ratio=-0.1), "flip_ratio"),
        (lambda: CachedMixUp(max_iters=0), "max_iters"),
        (lambda: FilterSmallBoxes(min_size=-1), "min_size"),
        (lambda: Compose([1]), "transforms"),
        (lambda: TwoStagePipeline(Compose([]), Compose([]), switch_epoch=-1), "switch_epoch"),
        (lambda: seed_worker(0, -1, 0), "epoch"),
    ],
)
def test_bad_arguments_name_the_argument(make, arg: str) -> None:
    with pytest.raises(ValueError, match=arg):
        make()


# ------------------------------------------------------------------------------ pipelines


def preset(name: str, img_size: int, **overrides) -> dict:
    """A conf/augment preset of the composed project config (RTMDet-s values), as a plain dict."""
    root = compose([f"augment={name}", "model=rtmdet_s", f"data.img_size={img_size}"])
    for key, value in overrides.items():
        OmegaConf.update(root, f"augment.{key}", value, force_add=True)
    return plain(root.augment)


def build_pipelines(cfg: dict, img_size: int, max_epochs: int, seed: int = 0) -> TwoStagePipeline:
    """The preset's Augment, built the way a run builds it, configured for a run."""
    return instantiate(cfg, "augment").configure(img_size, max_epochs, seed=seed)


def test_presets_scale_with_img_size() -> None:
    cfg = preset("rtmdet", 96)
    assert cfg["mosaic"]["img_scale"] == [96, 96]
    assert cfg["random_resize"]["scale"] == [192, 192]  # 2 x img_size: the mosaic canvas
    assert cfg["stage2_resize"]["scale"] == [96, 96]
    assert cfg["crop"]["crop_size"] == [96, 96] and cfg["pad"]["size"] == [96, 96]
    pipe = build_pipelines(cfg, img_size=96, max_epochs=30)
    kinds = [type(t).__name__ for t in pipe.stage1.transforms]
    assert kinds == ["CachedMosaic", "RandomResize", "RandomCrop", "HSVRandomAug", "RandomFlip", "Pad", "CachedMixUp",
                     "FilterSmallBoxes"]
    assert [type(t).__name__ for t in pipe.stage2.transforms] == [
        "RandomResize", "RandomCrop", "HSVRandomAug", "RandomFlip", "Pad", "FilterSmallBoxes"]
    with pytest.raises(ValueError, match="img_size"):
        build_pipelines(cfg, img_size=128, max_epochs=30)


def test_preset_overrides_and_disabling() -> None:
    cfg = preset("rtmdet", 64, **{"mosaic.prob": 0.5, "mixup": None, "stage2_epochs": 5,
                                  "random_resize.ratio_range": [0.1, 2.0]})
    pipe = build_pipelines(cfg, img_size=64, max_epochs=30)
    mosaic = pipe.stage1.transforms[0]
    assert isinstance(mosaic, CachedMosaic) and mosaic.prob == 0.5
    assert not any(isinstance(t, CachedMixUp) for t in pipe.stage1.transforms)
    assert pipe.switch_epoch == 25
    assert pipe.stage2.transforms[0].ratio_range == (0.1, 2.0)  # stage 2 follows the stage-1 jitter
    light = build_pipelines(preset("light", 64), img_size=64, max_epochs=30)
    assert light.stage2 is None and light.switch_epoch is None
    assert not any(isinstance(t, (CachedMosaic, CachedMixUp)) for t in light.stage1.transforms)
    none = build_pipelines(preset("none", 64), img_size=64, max_epochs=30)
    assert [type(t) for t in none.stage1.transforms] == [LetterboxResize]


def test_stage_switch_epoch_and_resume() -> None:
    cfg = preset("rtmdet", 64, stage2_epochs=3)
    pipe = build_pipelines(cfg, img_size=64, max_epochs=10)
    assert pipe.switch_epoch == 7  # 10 - 3
    assert [pipe.stage_at(e) for e in range(10)] == [1] * 7 + [2] * 3
    assert pipe.pipeline_for_epoch(6) is pipe.stage1 and pipe.pipeline_for_epoch(7) is pipe.stage2
    pipe.set_epoch(6)
    assert pipe.active is pipe.stage1
    pipe.set_epoch(7)
    assert pipe.active is pipe.stage2
    # a resumed run rebuilds everything and jumps straight to an epoch past the switch
    resumed = build_pipelines(cfg, img_size=64, max_epochs=10)
    resumed.set_epoch(8)
    assert resumed.stage == 2 and resumed.active is resumed.stage2
    out = resumed(make_sample(50, 70, [(5, 5, 30, 30, 0)]))
    assert out["img"].shape == (64, 64, 3)  # stage 2 (no mosaic canvas, no pass-through)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        short = build_pipelines(cfg, img_size=64, max_epochs=2)
    assert short.switch_epoch == 0 and any("stage2_epochs" in str(w.message) for w in caught)


def test_augment_group_object_interface() -> None:
    cfg = preset("rtmdet", 64, stage2_epochs=4)
    from hydra.utils import instantiate

    aug = instantiate(cfg)
    assert isinstance(aug, Augment)
    with pytest.raises(RuntimeError, match="configure"):
        _ = aug.switch_epoch
    aug.configure(img_size=64, max_epochs=12)
    assert aug.switch_epoch == 8
    assert aug.pipeline_for_epoch(7) is aug.stage1 and aug.pipeline_for_epoch(8) is aug.stage2


class Stamp:
    """Records the stage and a random draw: shows which stage and which stream ran in a worker."""

    def __init__(self, stage: int) -> None:
        self.stage = stage
        self.rng = np.random.default_rng(0)

    def set_rng(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def __call__(self, sample: dict) -> dict:
        return {**sample, "stage": self.stage, "draw": float(self.rng.random())}


class TinyDataset(torch.utils.data.Dataset):
    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        return self.pipeline({"index": index})


def test_stage_switch_reaches_persistent_workers() -> None:
    pipe = TwoStagePipeline(Compose([Stamp(1)]), Compose([Stamp(2)]), switch_epoch=2, seed=3)
    loader = torch.utils.data.DataLoader(
        TinyDataset(pipe), batch_size=1, num_workers=2, persistent_workers=True, collate_fn=lambda b: b[0],
        multiprocessing_context="fork",
    )
    draws = {}
    for epoch in range(4):
        pipe.set_epoch(epoch)
        items = list(loader)
        assert [it["index"] for it in items] == [0, 1, 2, 3]
        assert [it["stage"] for it in items] == [1 if epoch < 2 else 2] * 4, f"epoch {epoch}"
        draws[epoch] = [it["draw"] for it in items]
    # worker w gets indices w, w + 2; it must draw what a pipeline explicitly seeded for (epoch, w) draws
    for epoch in range(4):
        reference = TwoStagePipeline(Compose([Stamp(1)]), Compose([Stamp(2)]), switch_epoch=2, seed=3)
        reference.set_epoch(epoch)
        expected = [0.0] * 4
        for worker in (0, 1):
            reference.reseed(worker_id=worker)
            expected[worker], expected[worker + 2] = (reference({"index": i})["draw"] for i in (worker, worker + 2))
        assert draws[epoch] == expected
    assert len({d for ds in draws.values() for d in ds}) == 16  # no stream repeats across workers/epochs


def run_stream(pipe: TwoStagePipeline, samples: list[dict]) -> list[dict]:
    return [pipe(s) for s in samples]


def test_pipeline_deterministic_per_seed_and_worker() -> None:
    cfg = preset("rtmdet", 64)
    samples = mosaic_stream(8, 5)

    def outputs(seed: int, worker: int, epoch: int = 0) -> list[dict]:
        pipe = build_pipelines(cfg, img_size=64, max_epochs=30, seed=seed)
        pipe.set_epoch(epoch)
        pipe.reseed(worker_id=worker)
        return run_stream(pipe, samples)

    a, b = outputs(1, 0), outputs(1, 0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["img"], y["img"])
        np.testing.assert_array_equal(x["boxes"], y["boxes"])
        np.testing.assert_array_equal(x["labels"], y["labels"])
    for other in (outputs(1, 1), outputs(2, 0), outputs(1, 0, epoch=1)):
        assert any(not np.array_equal(x["img"], y["img"]) for x, y in zip(a, other))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_full_stage1_geometry_boxes_follow_pixels(seed: int) -> None:
    # colour-changing steps off (HSV recolours, MixUp blends); every geometric step of stage 1 stays
    # FilterSmallBoxes drops boxes < 2 px on purpose: their strips of pixels may still show
    cfg = preset("rtmdet", 64, hsv=None, mixup=None, **{"random_resize.ratio_range": [0.3, 2.0], "filter.min_size": 2})
    pipe = build_pipelines(cfg, img_size=64, max_epochs=30, seed=seed)
    for out in run_stream(pipe, mosaic_stream(5, seed) * 3):
        assert out["img"].shape == (64, 64, 3)
        assert_boxes_follow_pixels(out["img"], out["boxes"], out["labels"], tol=1.5, sliver=2)


def test_seed_worker_streams() -> None:
    same = seed_worker(7, 2, 1).random(4), seed_worker(7, 2, 1).random(4)
    np.testing.assert_array_equal(*same)
    assert not np.array_equal(seed_worker(7, 2, 1).random(4), seed_worker(7, 2, 0).random(4))
    assert not np.array_equal(seed_worker(7, 2, 1).random(4), seed_worker(7, 3, 1).random(4))


def test_draw_grid_draws_boxes() -> None:
    from rtmdet_exp.cli.preview import draw_grid

    samples = [make_sample(40, 60, [(5, 5, 30, 30, 0)]), make_sample(40, 60, [(10, 10, 50, 35, 1)])]
    grid = draw_grid([s["img"] for s in samples], [s["boxes"] for s in samples], [s["labels"] for s in samples],
                     class_names=[f"c{i}" for i in range(10)])
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[0] >= 40 and grid.shape[1] >= 120
    assert not np.array_equal(grid[:40, :60], samples[0]["img"])  # a box outline was drawn
