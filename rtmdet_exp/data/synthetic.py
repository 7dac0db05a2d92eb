"""A deterministic procedural detection dataset, written once in COCO format and then reused.

Why: experiments and tests need a detection task that runs anywhere without downloads, yet is
hard enough that ablations move the metric. Each class is a (shape, texture) pair, for example a
checkered triangle; colours are jittered identically for every class, so neither colour nor
texture nor shape alone is enough. Objects range from ~8 px to most of the image, overlap and
occlude each other (a later object hides an earlier one), and sit on cluttered backgrounds with
lines, textures and irregular distractor blobs that belong to no class.

Every image is rendered from its own ``numpy.random.Generator`` seeded by ``(seed, split,
index)``, so generation is deterministic and can run in parallel processes. A label map is
rendered alongside the pixels: an object whose visible fraction (visible pixels over its
full mask, truncation by the image border included) falls below ``MIN_VISIBLE_FRACTION`` is not
annotated. The annotated ``bbox`` is the tight box of the object's whole in-image mask (its
full extent, including the occluded part), and ``area`` is that mask's pixel count. Images are
JPEG quality 95 without chroma subsampling, after mild sensor noise and sometimes a slight blur.

Layout under ``root``::

    images/train/000000.jpg ...        images/val/000000.jpg ...
    annotations/instances_train.json   annotations/instances_val.json
    done.json                          (generation parameters; written last)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Iterator

import cv2

from rtmdet_exp.data.synthetic_render import (  # noqa: F401  (_render_image: tests draw single images)
    CLASS_NAMES,
    MIN_VISIBLE_FRACTION,
    _class_count_ok,
    _render_image,
)

__all__ = ["CLASS_NAMES", "MIN_VISIBLE_FRACTION", "ensure_synthetic_dataset"]

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when rendering changes, so stale caches are regenerated
JPEG_QUALITY = 95
# 4:4:4 (no chroma subsampling): with the default 4:2:0 the colours of 8 px objects and thin
# stripes smear into their surroundings (mean error ~10 instead of ~3 grey levels).
_JPEG_PARAMS = [
    cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
    cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
]  # fmt: skip
_MARKER = "done.json"
_IN_PROGRESS = ".generating"  # present while a generation runs (or if one was interrupted)
_OWNER = ".synthetic_cache"  # written once, never removed: this folder is ours to overwrite
_OWNED = ("images", "annotations", _MARKER, _IN_PROGRESS, _OWNER, ".lock")


# ----------------------------------------------------------------------------------------------
# Writing the cache
# ----------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_chunk(args: tuple[int, str, list[int], int, int, str]) -> list[tuple[int, list[dict]]]:
    """Render, encode and write a list of images; return ``(index, annotations)`` per image."""
    seed, split, indices, img_size, num_classes, out_dir = args
    cv2.setNumThreads(1)
    results = []
    for index in indices:
        r = _render_image(seed, split, index, img_size, num_classes)
        ok, buf = cv2.imencode(".jpg", r.img, _JPEG_PARAMS)
        if not ok:
            raise RuntimeError(f"OpenCV failed to encode synthetic image {split}/{index}")
        _atomic_write(Path(out_dir) / _file_name(index), buf.tobytes())
        anns = [
            {
                "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
                "area": int(a),
                "category_id": int(c) + 1,
                "iscrowd": 0,
            }
            for (x0, y0, x1, y1), a, c in zip(r.boxes.tolist(), r.areas.tolist(), r.labels.tolist())
        ]
        results.append((index, anns))
    return results


def _file_name(index: int) -> str:
    return f"{index:06d}.jpg"


def _generate_split(
    root: Path, split: str, count: int, img_size: int, seed: int, num_classes: int, num_workers: int
) -> None:
    """Write the JPEGs and the COCO json of one split."""
    out_dir = root / "images" / split
    out_dir.mkdir(parents=True, exist_ok=True)
    chunk = 16
    jobs = [
        (seed, split, list(range(i, min(i + chunk, count))), img_size, num_classes, str(out_dir))
        for i in range(0, count, chunk)
    ]
    results: list[list[tuple[int, list[dict]]]] | None
    results = None
    if num_workers > 1 and len(jobs) > 1:
        # fork: workers need nothing from __main__, so scripts without a main guard work too
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        try:
            with ProcessPoolExecutor(num_workers, mp_context=get_context(method)) as pool:
                results = list(pool.map(_write_chunk, jobs))
        except BrokenProcessPool as err:  # images are written atomically and deterministically: redo serially
            log.warning("synthetic data: worker pool failed (%s); generating serially", err)
    if results is None:
        results = [_write_chunk(job) for job in jobs]
    images, annotations = [], []
    for part in results:
        for index, anns in part:
            image_id = index + 1
            images.append({"id": image_id, "file_name": _file_name(index), "width": img_size, "height": img_size})
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    categories = [{"id": i + 1, "name": CLASS_NAMES[i], "supercategory": "shape"} for i in range(num_classes)]
    coco = {
        "info": {"description": f"rtmdet_exp synthetic shapes, split {split}", "version": str(GENERATOR_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    _atomic_write(root / "annotations" / f"instances_{split}.json", json.dumps(coco).encode())


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root`` so concurrent callers (e.g. several ranks) don't collide."""
    try:
        import fcntl
    except ImportError:  # non-POSIX: no locking, atomic writes still keep the cache consistent
        yield
        return
    with open(root / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _paths(root: Path, num_classes: int) -> dict:
    return {
        "root": str(root),
        "train_json": str(root / "annotations" / "instances_train.json"),
        "val_json": str(root / "annotations" / "instances_val.json"),
        "train_images": str(root / "images" / "train"),
        "val_images": str(root / "images" / "val"),
        "num_classes": num_classes,
        "class_names": list(CLASS_NAMES[:num_classes]),
    }


def _default_workers(total: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, 8) if total >= 200 else 1


def ensure_synthetic_dataset(
    root: str | Path,
    num_train: int = 800,
    num_val: int = 200,
    img_size: int = 320,
    seed: int = 0,
    num_classes: int = 10,
    *,
    num_workers: int | None = None,
) -> dict:
    """Generate the synthetic COCO dataset under ``root`` unless an identical one is already there.

    The cache is reused only if ``done.json`` exists and records the same parameters (and
    generator version); it is written last, so an interrupted run is never mistaken for a
    finished one. ``num_workers`` (processes; ``None`` = automatic) does not change the output.
    Returns the paths ``root, train_json, val_json, train_images, val_images`` (strings) plus
    ``num_classes`` and ``class_names``. Refuses a non-empty ``root`` that it did not create.
    """
    _class_count_ok(num_classes)
    for name, value, low in (("num_train", num_train, 0), ("num_val", num_val, 0), ("img_size", img_size, 32)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    root = Path(root).expanduser().resolve()
    params = {
        "version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "img_size": int(img_size),
        "seed": int(seed),
        "num_classes": int(num_classes),
    }
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        marker = root / _MARKER
        if marker.is_file():
            with contextlib.suppress(ValueError, OSError):
                if json.loads(marker.read_text()) == params:
                    return _paths(root, num_classes)
        ours = any((root / name).exists() for name in (_OWNER, _MARKER, _IN_PROGRESS))
        foreign = sorted(p.name for p in root.iterdir() if p.name not in _OWNED)
        if foreign or (not ours and any((root / d).exists() for d in ("images", "annotations"))):
            raise ValueError(
                f"root={str(root)!r} holds files not written by ensure_synthetic_dataset "
                f"({foreign[:5] or ['images/', 'annotations/']}); pass an empty or new folder"
            )
        (root / _OWNER).touch()
        (root / _IN_PROGRESS).write_text(json.dumps(params))
        marker.unlink(missing_ok=True)
        for d in ("images", "annotations"):
            shutil.rmtree(root / d, ignore_errors=True)
        workers = _default_workers(num_train + num_val) if num_workers is None else max(1, int(num_workers))
        for split, count in (("train", num_train), ("val", num_val)):
            _generate_split(root, split, int(count), int(img_size), int(seed), int(num_classes), workers)
        _atomic_write(marker, json.dumps(params, indent=1).encode())
        (root / _IN_PROGRESS).unlink()
    return _paths(root, num_classes)
