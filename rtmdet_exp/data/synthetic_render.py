"""Rendering one image of the built-in dataset: shapes, textures, backgrounds, occluders and noise.

Every image comes from its own ``numpy.random.Generator`` seeded by ``(seed, split, index)``; the
order of the draws is part of the dataset's definition (``GENERATOR_VERSION`` in
:mod:`rtmdet_exp.data.synthetic` must be bumped when it changes). See that module for what the
dataset is and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

MIN_VISIBLE_FRACTION = 0.3  # objects more than 70% hidden (occluded or cut by the border) are dropped
MIN_OBJECT_SIZE = 8.0  # smallest nominal object size in pixels

_SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "hexagon", "ellipse", "diamond", "crescent")
_TEXTURES = (
    "solid", "stripes", "checker", "dots", "gradient", "crosshatch", "concentric", "waves", "radial", "speckle",
)  # fmt: skip
CLASS_NAMES = (
    "solid_circle",
    "striped_square",
    "checkered_triangle",
    "dotted_star",
    "gradient_ring",
    "hatched_cross",
    "concentric_hexagon",
    "wavy_ellipse",
    "radial_diamond",
    "speckled_crescent",
)
_DISTRACTOR_TEXTURES = ("flat", "blotch", "marble")  # fills no class uses, so blobs can't pass for objects
_SPLITS = {"train": 0, "val": 1}  # the split id enters the seed, so val is a different stream
_SUPERSAMPLE_SHIFT = 4  # cv2 fixed-point bits: polygon vertices at 1/16 pixel

# Rotation range (degrees, symmetric) per shape: squares stay squares and diamonds stay upright-ish.
_ROTATION = {"square": 20.0, "diamond": 25.0}


def _class_count_ok(num_classes: int) -> None:
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in 1..{len(CLASS_NAMES)}, got {num_classes}")


# ----------------------------------------------------------------------------------------------
# Geometry: each shape is a list of (polygon in unit coordinates, fill value) drawn in order.
# Unit coordinates: the unrotated shape fits in [-0.5, 0.5]^2; it is rotated, then scaled by the
# nominal size in pixels.
# ----------------------------------------------------------------------------------------------


def _circle(radius: float, n: int, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack((cx + radius * np.cos(t), cy + radius * np.sin(t)), axis=1)


def _shape_polygons(shape: str, size: float, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Polygons (unit coordinates, ``[P, 2]``) and fill values that together draw ``shape``."""
    n_round = int(min(max(size * 0.8, 12), 72))  # vertices on round outlines, more for big objects
    if shape == "circle":
        return [(_circle(0.5, n_round), 1)]
    if shape == "square":
        return [(np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]), 1)]
    if shape == "triangle":
        apex = rng.uniform(-0.15, 0.15)
        return [(np.array([[apex, -0.5], [0.5, 0.42], [-0.5, 0.42]]), 1)]
    if shape == "star":
        inner = rng.uniform(0.18, 0.25)
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 0.5, inner)
        return [(np.stack((r * np.cos(t), r * np.sin(t)), axis=1), 1)]
    if shape == "ring":
        return [(_circle(0.5, n_round), 1), (_circle(rng.uniform(0.26, 0.33), n_round), 0)]
    if shape == "cross":
        a = rng.uniform(0.14, 0.19)  # half arm width
        p = np.array([[-a, -0.5], [a, -0.5], [a, -a], [0.5, -a], [0.5, a], [a, a], [a, 0.5], [-a, 0.5],
                      [-a, a], [-0.5, a], [-0.5, -a], [-a, -a]])  # fmt: skip
        return [(p, 1)]
    if shape == "hexagon":
        return [(_circle(0.5, 6), 1)]
    if shape == "ellipse":
        aspect = rng.uniform(1.7, 2.6)
        poly = _circle(0.5, n_round)
        poly[:, 1] /= aspect
        return [(poly, 1)]
    if shape == "diamond":
        half_w = rng.uniform(0.27, 0.34)
        return [(np.array([[0.0, -0.5], [half_w, 0.0], [0.0, 0.5], [-half_w, 0.0]]), 1)]
    if shape == "crescent":
        return [(_circle(0.5, n_round), 1), (_circle(0.42, n_round, cx=rng.uniform(0.2, 0.28)), 0)]
    raise ValueError(f"unknown shape {shape!r}; valid: {_SHAPES}")


def _blob_polygon(rng: np.random.Generator) -> np.ndarray:
    """An irregular jagged polygon in unit coordinates: a distractor that matches no class."""
    n = int(rng.integers(8, 16))
    t = np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
    r = 0.5 * rng.uniform(0.25, 1.0, n)
    return np.stack((r * np.cos(t), r * np.sin(t)), axis=1)


@dataclass
class _Patch:
    """A rasterised mask ``mask [h, w] bool`` whose top-left pixel is at image ``(x0, y0)``.

    The patch is the in-image part; ``full_area`` counts the pixels of the whole shape,
    including those cut off by the image border.
    """

    x0: int
    y0: int
    mask: np.ndarray
    full_area: int


def _rasterise(
    polygons: list[tuple[np.ndarray, int]], cx: float, cy: float, size: float, angle: float, img_hw: tuple[int, int]
) -> _Patch | None:
    """Rotate, scale and place unit polygons at ``(cx, cy)`` and draw them into an in-image patch."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    placed = [(poly @ rot.T * size + (cx, cy), value) for poly, value in polygons]  # [P, 2] each
    allpts = np.concatenate([p for p, _ in placed], axis=0)
    x0, y0 = np.floor(allpts.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(allpts.max(axis=0)).astype(int) + 2
    full = np.zeros((y1 - y0, x1 - x0), np.uint8)
    scale = 1 << _SUPERSAMPLE_SHIFT
    for pts, value in placed:
        fixed = np.round((pts - (x0, y0)) * scale).astype(np.int32)
        cv2.fillPoly(full, [fixed], value, cv2.LINE_8, _SUPERSAMPLE_SHIFT)
    full_area = int(np.count_nonzero(full))
    h, w = img_hw
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if full_area == 0 or ix1 <= ix0 or iy1 <= iy0:
        return None
    mask = full[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0].astype(bool)
    if not mask.any():
        return None
    return _Patch(ix0, iy0, mask, full_area)


# ----------------------------------------------------------------------------------------------
# Textures: a blend weight t in [0, 1] between two colours, in the object's own rotated frame
# (u, v in units of the object size), so the pattern turns with the object.
# ----------------------------------------------------------------------------------------------


def _texture_weight(
    texture: str, u: np.ndarray, v: np.ndarray, size: float, rng: np.random.Generator
) -> np.ndarray:
    """Blend weight ``[h, w]`` of the second colour for ``texture`` at local coordinates ``u, v``."""
    period = max(rng.uniform(0.16, 0.3), 3.0 / size)  # at least 3 px per period
    if texture in ("solid", "flat"):
        return np.zeros_like(u)
    if texture in ("blotch", "marble"):
        h, w = u.shape
        coarse = rng.random((4, 4), dtype=np.float32)
        smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        return (smooth > 0.5).astype(np.float32) if texture == "blotch" else smooth
    if texture == "stripes":
        return ((v / period) % 1.0 < 0.5).astype(np.float32)
    if texture == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if texture == "dots":
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        return (du * du + dv * dv < 0.09).astype(np.float32)
    if texture == "gradient":
        return np.minimum(np.maximum(u + 0.5, 0.0), 1.0)
    if texture == "crosshatch":
        a = np.abs((u + v) / period % 1.0 - 0.5) < 0.14
        b = np.abs((u - v) / period % 1.0 - 0.5) < 0.14
        return (a | b).astype(np.float32)
    if texture == "concentric":
        return (np.hypot(u, v) / period % 1.0 < 0.5).astype(np.float32)
    if texture == "waves":
        phase = v / period + 0.35 * np.sin(2.0 * np.pi * u / (1.7 * period))
        return (0.5 + 0.5 * np.sin(2.0 * np.pi * phase)).astype(np.float32)
    if texture == "radial":
        return np.minimum(np.hypot(u, v) * 2.0, 1.0)
    if texture == "speckle":
        block = max(1, round(size * 0.05))
        h, w = u.shape
        coarse = rng.random((h // block + 1, w // block + 1)) < 0.5
        return np.repeat(np.repeat(coarse, block, 0), block, 1)[:h, :w].astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}; valid: {_TEXTURES + _DISTRACTOR_TEXTURES}")


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random BGR colours at least ~80 apart, drawn the same way for every class."""
    c1 = rng.uniform(0.0, 255.0, 3)
    candidates = rng.uniform(0.0, 255.0, (8, 3))
    dist = np.linalg.norm(candidates - c1, axis=1)
    ok = np.flatnonzero(dist >= 80.0)
    c2 = candidates[ok[0]] if ok.size else candidates[np.argmax(dist)]
    return c1.astype(np.float32), c2.astype(np.float32)


def _paint(
    canvas: np.ndarray, patch: _Patch, texture: str, cx: float, cy: float, size: float, angle: float,
    rng: np.random.Generator,
) -> None:  # fmt: skip
    """Fill the patch's mask pixels of ``canvas`` (float32 HxWx3) with a shaded textured fill."""
    h, w = patch.mask.shape
    xs = np.arange(patch.x0, patch.x0 + w, dtype=np.float32) - cx
    ys = np.arange(patch.y0, patch.y0 + h, dtype=np.float32) - cy
    c, s = math.cos(angle), math.sin(angle)
    u = (xs[None, :] * c + ys[:, None] * s) / size  # [h, w] object frame, units of size
    v = (-xs[None, :] * s + ys[:, None] * c) / size
    t = _texture_weight(texture, u, v, size, rng)[..., None]  # [h, w, 1]
    c1, c2 = _two_colours(rng)
    light_dir = rng.uniform(0.0, 2.0 * math.pi)
    light = 1.0 + rng.uniform(0.0, 0.3) * (u * math.cos(light_dir) + v * math.sin(light_dir))  # [h, w]
    fill = (c1 + (c2 - c1) * t) * light[..., None]  # [h, w, 3]
    region = canvas[patch.y0 : patch.y0 + h, patch.x0 : patch.x0 + w]
    np.copyto(region, fill, where=patch.mask[..., None])


# ----------------------------------------------------------------------------------------------
# Scene
# ----------------------------------------------------------------------------------------------


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Cluttered float32 ``[size, size, 3]`` background: gradient, low-frequency noise, a faint
    pattern, random lines and textured distractor blobs."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5  # [S] in [-0.5, 0.5]
    theta = rng.uniform(0.0, 2.0 * np.pi)
    ramp = coords[None, :] * np.float32(np.cos(theta)) + coords[:, None] * np.float32(np.sin(theta))  # [S, S]
    c1, c2 = _two_colours(rng)
    img = c1 + (c2 - c1) * cv2.min(cv2.max(ramp + 0.5, 0.0), 1.0)[..., None]  # [S, S, 3]
    grid = int(rng.integers(3, 9))
    low = rng.standard_normal((grid, grid, 3), dtype=np.float32) * np.float32(rng.uniform(10.0, 40.0))
    img += cv2.resize(low, (size, size), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        texture = _TEXTURES[int(rng.integers(1, len(_TEXTURES)))]
        u, v = np.broadcast_to(coords[None, :], (size, size)), np.broadcast_to(coords[:, None], (size, size))
        t = _texture_weight(texture, u, v, float(size) * rng.uniform(0.5, 2.0), rng)
        tint = rng.uniform(0.0, 255.0, 3).astype(np.float32)
        img += (np.float32(rng.uniform(0.1, 0.35)) * t)[..., None] * (tint - img)
    for _ in range(int(rng.integers(0, 25))):
        p0 = tuple(int(q) for q in rng.integers(-size // 4, size + size // 4, 2))
        p1 = tuple(int(q) for q in rng.integers(-size // 4, size + size // 4, 2))
        colour = tuple(float(q) for q in rng.uniform(0.0, 255.0, 3))
        cv2.line(img, p0, p1, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 9))):
        _distractor(img, None, size, rng)
    return img


def _distractor(img: np.ndarray, label_map: np.ndarray | None, size: int, rng: np.random.Generator) -> None:
    """Draw an irregular textured blob (no class) into ``img``; mark it as background in ``label_map``."""
    blob_size = float(np.exp(rng.uniform(np.log(MIN_OBJECT_SIZE), np.log(0.35 * size))))
    cx, cy = rng.uniform(0.0, size, 2)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    patch = _rasterise([(_blob_polygon(rng), 1)], cx, cy, blob_size, angle, (size, size))
    if patch is None:
        return
    texture = _DISTRACTOR_TEXTURES[int(rng.integers(0, len(_DISTRACTOR_TEXTURES)))]
    _paint(img, patch, texture, cx, cy, blob_size, angle, rng)
    if label_map is not None:
        h, w = patch.mask.shape
        label_map[patch.y0 : patch.y0 + h, patch.x0 : patch.x0 + w][patch.mask] = -1


def _object_count(rng: np.random.Generator) -> int:
    """Objects placed in one image: some empty, most a handful, some crowded (30+ survive)."""
    band = rng.choice(5, p=[0.06, 0.32, 0.30, 0.17, 0.15])
    low, high = [(0, 0), (1, 5), (6, 15), (16, 30), (31, 48)][band]
    return int(rng.integers(low, high + 1))


@dataclass
class _Rendered:
    """One rendered image and its annotations.

    img ``[S, S, 3]`` uint8 BGR; boxes ``[K, 4]`` int64 tight xyxy with exclusive max
    (``x1 = last column + 1``); labels ``[K]`` int64 in 0..C-1; areas ``[K]`` int64 pixel counts.
    With ``debug``: masks ``[K, S, S]`` bool full in-image extents, visible ``[K, S, S]`` bool, and
    ``background`` uint8: the same scene without objects or occluders, through the same noise/blur.
    """

    img: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    masks: np.ndarray | None = None
    visible: np.ndarray | None = None
    background: np.ndarray | None = None


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLITS[split], index])


def _place_objects(img: np.ndarray, label_map: np.ndarray, num_classes: int,
                   rng: np.random.Generator) -> tuple[list[_Patch], list[int]]:
    """Paint the image's objects into ``img`` (later ones on top) and mark them in ``label_map``."""
    img_size = img.shape[0]
    n = _object_count(rng)
    max_size = min(0.9 * img_size, max(32.0, 2.0 * img_size / np.sqrt(max(n, 1))))
    max_size = max(max_size, MIN_OBJECT_SIZE * 1.5)
    sizes = np.exp(rng.uniform(np.log(MIN_OBJECT_SIZE), np.log(max_size), n))
    if rng.random() < 0.5:
        sizes = np.sort(sizes)[::-1]  # big first: a layered scene where small things stay visible
    classes = rng.integers(0, num_classes, n)
    patches: list[_Patch] = []
    kept_classes: list[int] = []
    for size, cls in zip(sizes, classes):
        shape, texture = _SHAPES[cls], _TEXTURES[cls]
        rot = _ROTATION.get(shape, 180.0)
        angle = math.radians(rng.uniform(-rot, rot))
        cx, cy = rng.uniform(0.0, img_size, 2)
        patch = _rasterise(_shape_polygons(shape, size, rng), cx, cy, size, angle, (img_size, img_size))
        if patch is None:
            continue
        _paint(img, patch, texture, cx, cy, size, angle, rng)
        h, w = patch.mask.shape
        label_map[patch.y0 : patch.y0 + h, patch.x0 : patch.x0 + w][patch.mask] = len(patches)
        patches.append(patch)
        kept_classes.append(int(cls))
    return patches, kept_classes


def _sensor(shape: tuple[int, ...], rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """Draw this image's sensor noise and blur; returns what turns a canvas into the final uint8 image."""
    sigma = rng.uniform(0.0, 6.0)
    # Triangular sensor noise with std ``sigma``: a difference of two uniform byte fields (the std of
    # that difference is 255 / sqrt(6)); several times cheaper than drawing Gaussians.
    size = int(np.prod(shape))
    u1 = np.frombuffer(rng.bytes(size), np.uint8).reshape(shape)
    u2 = np.frombuffer(rng.bytes(size), np.uint8).reshape(shape)
    noise = cv2.subtract(u1, u2, dtype=cv2.CV_32F) * np.float32(sigma * math.sqrt(6.0) / 255.0)
    blur = rng.random() < 0.25
    blur_sigma = rng.uniform(0.5, 1.0)

    def finish(canvas: np.ndarray) -> np.ndarray:
        out = canvas + noise
        if blur:
            out = cv2.GaussianBlur(out, (0, 0), blur_sigma)
        return cv2.convertScaleAbs(cv2.max(out, 0.0))  # rounds and saturates to uint8

    return finish


def _tight_boxes(patches: list[_Patch]) -> tuple[np.ndarray, np.ndarray]:
    """Tight xyxy boxes ``[K, 4]`` (exclusive max) of each patch's in-image mask, and its pixel count ``[K]``."""
    boxes, areas = [], []
    for p in patches:
        rows = np.flatnonzero(p.mask.any(axis=1))
        cols = np.flatnonzero(p.mask.any(axis=0))
        boxes.append((p.x0 + cols[0], p.y0 + rows[0], p.x0 + cols[-1] + 1, p.y0 + rows[-1] + 1))
        areas.append(int(np.count_nonzero(p.mask)))
    return np.array(boxes, np.int64).reshape(-1, 4), np.array(areas, np.int64)


def _render_image(
    seed: int, split: str, index: int, img_size: int, num_classes: int, debug: bool = False
) -> _Rendered:
    """Render image ``index`` of ``split`` deterministically from ``(seed, split, index)``."""
    rng = _image_rng(seed, split, index)
    img = _background(img_size, rng)
    bg = img.copy() if debug else None
    label_map = np.full((img_size, img_size), -1, np.int32)  # index of the object on top, -1 = none
    patches, kept_classes = _place_objects(img, label_map, num_classes, rng)
    for _ in range(int(rng.integers(0, 4))):
        _distractor(img, label_map, img_size, rng)  # occluders in front of the objects
    visible_px = np.bincount(label_map[label_map >= 0], minlength=len(patches))
    full_area = np.array([p.full_area for p in patches], np.int64)
    idx = np.flatnonzero(visible_px >= MIN_VISIBLE_FRACTION * np.maximum(full_area, 1))
    finish = _sensor(img.shape, rng)
    boxes, areas = _tight_boxes(patches)
    out = _Rendered(img=finish(img), boxes=boxes[idx], labels=np.array(kept_classes, np.int64)[idx], areas=areas[idx])
    if debug:
        masks = np.zeros((len(idx), img_size, img_size), bool)
        for k, i in enumerate(idx):
            p = patches[i]
            h, w = p.mask.shape
            masks[k, p.y0 : p.y0 + h, p.x0 : p.x0 + w] = p.mask
        out.masks = masks
        out.visible = label_map[None] == idx[:, None, None]  # [K, S, S]
        out.background = finish(bg)
    return out
