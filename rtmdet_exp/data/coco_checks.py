"""Checks of the entries of a parsed COCO instances json: everything knowable without the images.

A category needs an int64 ``id`` (unique), a string ``name`` (unique) if it has one, and no
deep nesting (pycocotools deep-copies categories; a few hundred levels overflow Python's stack).
An image needs an int64 ``id`` (unique), a non-empty string ``file_name``, and either both or
neither of ``width``/``height`` as positive integers. An annotation needs an int64 ``id``
(unique), the int ``image_id`` and ``category_id`` of listed entries, a ``bbox`` of 4 numbers,
finite, with positive width and height and not entirely outside its image, ``iscrowd`` (if
present) 0, 1, true or false, and ``area`` (if present) a finite number >= 0. Ids must fit int64
because the loader, the collate and the evaluator hold them in int64 arrays; bools are never
numbers. A missing ``iscrowd`` or ``area`` is no problem: the loader fills COCO's defaults
(:func:`rtmdet_exp.data.annotations.fill_coco_defaults`) and the report's notes say so.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from typing import Any, Callable

import numpy as np

from rtmdet_exp.data.annotations import (
    INT64_MAX, INT64_MIN, as_float, describe_defaults, describe_value, is_int, is_int64, is_number, short,
)
from rtmdet_exp.data.image_probe import ImageEntry
from rtmdet_exp.data.problems import Collector, ValidationReport

__all__ = ["check_coco", "BOX_VALUE_KINDS"]

# Problems of box values only: the loader can drop such boxes itself (it clips and filters).
BOX_VALUE_KINDS = frozenset({"non-finite bbox", "non-positive bbox size", "bbox outside image"})
_MAX_CATEGORY_DEPTH = 16
_MAX_SIDE = 2**31 - 1  # OpenCV's limit on an image side
_FLOAT_MAX = sys.float_info.max
_BEYOND_INT64 = f"is beyond the int64 range [{INT64_MIN}, {INT64_MAX}]; ids must fit 64-bit integers"

Sizes = dict[int, tuple[int, int]]


def _as_size(v: Any) -> int | None:
    """An image side: a json number in 1.._MAX_SIDE with an integral value (640 or 640.0), else None."""
    if is_int(v):
        return v if 0 < v <= _MAX_SIDE else None
    if not is_number(v) or not math.isfinite(v) or not v.is_integer():
        return None
    return int(v) if 0 < v <= _MAX_SIDE else None


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a json value (a scalar is 0), counted up to ``limit + 1``."""
    deepest, stack = 0, [(value, 0)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def check_categories(categories: list, out: Collector) -> set[int]:
    """Integer category ids (valid or not, so that annotations are not blamed twice); every fault
    of a category is file-level: labels follow the categories, so none can be skipped."""
    ids: list[int] = []
    names: list[str] = []
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
            got = describe_value(cat.get("id")) if isinstance(cat, dict) else describe_value(cat)
            out.add(f"categories[{i}] is not an object with an integer 'id' (got {got})", "file", "malformed category")
            continue
        ids.append(cat["id"])
        if not is_int64(cat["id"]):
            out.add(f"categories[{i}]: 'id' {short(cat['id'])} {_BEYOND_INT64}", "file", "malformed category")
        where = f"categories[{i}] (id {short(cat['id'])})"
        if "name" in cat and not isinstance(cat["name"], str):
            out.add(f"{where}: 'name' must be a string, got {describe_value(cat['name'])}", "file",
                    "malformed category")
        elif "name" in cat:
            names.append(cat["name"])
        if _depth(cat, _MAX_CATEGORY_DEPTH) > _MAX_CATEGORY_DEPTH:
            out.add(f"{where} nests lists/objects more than {_MAX_CATEGORY_DEPTH} levels deep; a category holds 'id', "
                    "'name' and flat extras", "file", "malformed category")
    for cat_id, n in Counter(ids).items():
        if n > 1:
            out.add(f"category id {short(cat_id)} appears {n} times in 'categories'", "file", "duplicate category id")
    for name, n in Counter(names).items():
        if n > 1:
            out.add(f"category name {short(name)} appears {n} times in 'categories' (per-class results are keyed "
                    "by name)", "file", "duplicate category name")
    if not categories:
        out.add("annotation file lists no categories", "file", "no categories")
    return set(ids)


def check_image_entries(images: list, out: Collector, bad_images: set[int]) -> list[ImageEntry]:
    """``(id, file_name, json size or None)`` of the usable image entries; faults recorded."""
    entries: list[ImageEntry] = []
    id_counts: Counter[int] = Counter()
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not is_int(img.get("id")):
            got = describe_value(img.get("id")) if isinstance(img, dict) else describe_value(img)
            out.add(f"images[{i}] is not an object with an integer 'id' (got {got})", "file", "malformed image entry")
            continue
        image_id = img["id"]
        id_counts[image_id] += 1
        if not is_int64(image_id):
            out.add(f"'id' {_BEYOND_INT64}", "image", "id beyond int64", image_id=image_id)
            bad_images.add(image_id)
            continue
        name = img.get("file_name")
        if not isinstance(name, str) or not name or "\x00" in name:
            got = "no 'file_name'" if "file_name" not in img else f"got {describe_value(name)}"
            out.add(f"'file_name' must be a non-empty string without NUL characters, {got}", "image",
                    "malformed image entry", image_id=image_id)
            bad_images.add(image_id)
            continue
        has_w, has_h = "width" in img, "height" in img
        w, h = _as_size(img.get("width")), _as_size(img.get("height"))
        if (has_w or has_h) and (w is None or h is None):
            out.add(f"{short(name)}: 'width' and 'height' must both be integers in 1..{_MAX_SIDE} (or both left "
                    f"out), got width={short(img.get('width'))}, height={short(img.get('height'))}", "image",
                    "malformed image entry", image_id=image_id)
            bad_images.add(image_id)
        entries.append((image_id, name, (w, h) if w is not None and h is not None else None))
    for image_id, n in id_counts.items():
        if n > 1:
            out.add(f"image id {short(image_id)} appears {n} times in 'images'", "image", "duplicate image id",
                    image_id=image_id)
            bad_images.add(image_id)
    return entries


def _annotation_faults(ann: dict, image_ids: set[int], cat_ids: set[int]) -> tuple[list[tuple[str, str]], bool]:
    """``(what, kind)`` of every fault of one annotation entry, and whether its bbox is 4 numbers."""
    faults = []
    if not is_int64(ann["id"]):
        faults.append((f"'id' {_BEYOND_INT64}", "id beyond int64"))
    image_id = ann.get("image_id")
    if not is_int(image_id):
        got = "missing" if "image_id" not in ann else describe_value(image_id)
        faults.append((f"'image_id' must be an integer, got {got}", "malformed annotation"))
    elif image_id not in image_ids:
        faults.append((f"'image_id' refers to image id {short(image_id)}, which is not in 'images'",
                       "unknown image id"))
    cat = ann.get("category_id")
    if not is_int(cat):
        got = "missing" if "category_id" not in ann else describe_value(cat)
        faults.append((f"'category_id' must be an integer, got {got}", "malformed annotation"))
    elif cat not in cat_ids:
        faults.append((f"'category_id': unknown category id {short(cat)} (categories: {sorted(cat_ids)[:20]})",
                       "unknown category id"))
    crowd = ann.get("iscrowd", 0)
    if not (is_int(crowd) or isinstance(crowd, bool)) or crowd not in (0, 1):
        faults.append((f"'iscrowd' must be 0 or 1, got {describe_value(crowd)}", "malformed annotation"))
    area = ann.get("area", 0.0)
    if not is_number(area) or not math.isfinite(as_float(area)) or area < 0:
        faults.append((f"'area' must be a finite number >= 0, got {describe_value(area)}", "bad area"))
    box = ann.get("bbox")
    box_ok = isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)
    if not box_ok:
        what = "no 'bbox'" if "bbox" not in ann else (
            f"'bbox' must be a list of 4 numbers [x, y, w, h], got {describe_value(box)}: {short(box)}")
        faults.append((what, "malformed bbox"))
    return faults, box_ok


class _Boxes:
    """Well-formed boxes gathered for the vectorised checks: annotation id, image id, [x, y, w, h]."""

    def __init__(self) -> None:
        self.ann_ids: list[int] = []
        self.image_ids: list[int | None] = []
        self.boxes: list[list[Any]] = []

    def add(self, ann_id: int, image_id: int | None, box: list[Any]) -> None:
        self.ann_ids.append(ann_id)
        self.image_ids.append(image_id)
        self.boxes.append(box)


def _check_entries(anns: list, image_ids: set[int], cat_ids: set[int], out: Collector, bad_anns: set[int]) -> _Boxes:
    """Entry checks per annotation; returns the boxes that are 4 numbers.

    Entries pass a quick inline test first (exact json types, known ids; 1-2 s for COCO's 860k
    annotations); only those failing it get the detailed check that words each fault.
    """
    rows = _Boxes()
    id_counts: Counter[int] = Counter()
    num, crowd_types = (int, float), (int, bool)
    for i, ann in enumerate(anns):
        ann_id = ann.get("id") if type(ann) is dict else None
        if type(ann_id) is not int:
            got = describe_value(ann.get("id")) if isinstance(ann, dict) else describe_value(ann)
            out.add(f"annotations[{i}] is not an object with an integer 'id' (got {got})", "file",
                    "malformed annotation entry")
            continue
        id_counts[ann_id] += 1
        image_id, cat, box = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
        area, crowd = ann.get("area", 0.0), ann.get("iscrowd", 0)
        if (
            INT64_MIN <= ann_id <= INT64_MAX
            and type(image_id) is int and image_id in image_ids
            and type(cat) is int and cat in cat_ids
            and type(area) in num and 0 <= area <= _FLOAT_MAX
            and type(crowd) in crowd_types and crowd in (0, 1)
            and type(box) is list and len(box) == 4
            and type(box[0]) in num and type(box[1]) in num and type(box[2]) in num and type(box[3]) in num
        ):
            rows.add(ann_id, image_id, box)
            continue
        faults, box_ok = _annotation_faults(ann, image_ids, cat_ids)
        for what, kind in faults:
            out.add(what, "annotation", kind, image_id=image_id, ann_id=ann_id)
            bad_anns.add(ann_id)
        if box_ok:
            rows.add(ann_id, image_id if is_int(image_id) else None, box)
    for ann_id, n in id_counts.items():
        if n > 1:
            out.add(f"annotation id {short(ann_id)} appears {n} times in 'annotations'", "annotation",
                    "duplicate annotation id", ann_id=ann_id)
            bad_anns.add(ann_id)
    return rows


def _outside(xywh: np.ndarray, wh: np.ndarray) -> np.ndarray:
    """``[n]`` True where an ``[n, 4]`` xywh box keeps no area after clipping to its ``[n, 2]`` image
    size. A box ending left of or above 0 is outside whatever the size; NaN sizes (unknown) match
    nothing else."""
    with np.errstate(all="ignore"):  # inf - inf, overflow of x + w
        x2 = xywh[:, 0] + xywh[:, 2]
        y2 = xywh[:, 1] + xywh[:, 3]
        return (x2 <= 0) | (y2 <= 0) | (xywh[:, 0] >= wh[:, 0]) | (xywh[:, 1] >= wh[:, 1])


def _check_boxes(rows: _Boxes, json_sizes: Sizes, file_sizes: Sizes, out: Collector, bad_anns: set[int]) -> None:
    """Vectorised box checks: finite, positive size, not entirely outside the json's image size or,
    where the file's differs, the file's."""
    if not rows.boxes:
        return
    unknown = (math.nan, math.nan)
    try:
        xywh = np.asarray(rows.boxes, np.float64).reshape(-1, 4)  # [n, 4]
    except OverflowError:  # an int beyond float range
        xywh = np.asarray([[as_float(v) for v in box] for box in rows.boxes], np.float64).reshape(-1, 4)  # [n, 4]
    wh_json = np.array([json_sizes.get(i, unknown) for i in rows.image_ids], np.float64).reshape(-1, 2)  # [n, 2]
    wh_file = np.array([file_sizes.get(i, unknown) for i in rows.image_ids], np.float64).reshape(-1, 2)  # [n, 2]
    finite = np.isfinite(xywh).all(axis=1)
    non_positive = finite & ((xywh[:, 2] <= 0) | (xywh[:, 3] <= 0))
    checked = finite & ~non_positive
    out_json = checked & _outside(xywh, wh_json)
    out_file = checked & ~out_json & _outside(xywh, wh_file)

    def bad(k: int, what: str, kind: str) -> None:
        out.add(what, "annotation", kind, image_id=rows.image_ids[k], ann_id=rows.ann_ids[k])
        bad_anns.add(rows.ann_ids[k])

    for k in np.flatnonzero(~finite).tolist():
        bad(k, f"'bbox' has non-finite coordinates {short(rows.boxes[k])}", "non-finite bbox")
    for k in np.flatnonzero(non_positive).tolist():
        bad(k, f"'bbox' {short(rows.boxes[k])} has zero or negative width/height", "non-positive bbox size")
    for k in np.flatnonzero(out_json | out_file).tolist():
        w, h = wh_json[k] if out_json[k] else wh_file[k]
        size = f" {int(w)}x{int(h)}" if np.isfinite([w, h]).all() else ""
        source = " (size of the file)" if out_file[k] else ""
        bad(k, f"'bbox' {short(rows.boxes[k])} lies entirely outside the{size} image{source}", "bbox outside image")


def check_coco(coco: dict, report: ValidationReport, out: Collector,
               probe_files: Callable[[list[ImageEntry]], Sizes] | None = None) -> None:
    """Check every entry of ``coco`` (as :func:`~rtmdet_exp.data.annotations.read_coco_json` returns
    it) into ``report``; ``probe_files`` checks the image files and returns their sizes.

    Fills the report's counts, id sets, notes and problems.
    """
    images, anns = coco["images"], coco["annotations"]
    report.num_images, report.num_annotations = len(images), len(anns)
    if not images:
        out.add("annotation file lists no images", "file", "no images")
    cat_ids = check_categories(coco["categories"], out)
    entries = check_image_entries(images, out, report.bad_image_ids)
    report.image_ids = {img["id"] for img in images if isinstance(img, dict) and is_int(img.get("id"))}
    file_sizes = probe_files(entries) if probe_files is not None and entries else {}
    json_sizes = {image_id: wh for image_id, _, wh in entries if wh is not None}
    rows = _check_entries(anns, report.image_ids, cat_ids, out, report.bad_ann_ids)
    _check_boxes(rows, json_sizes, file_sizes, out, report.bad_ann_ids)
    dicts = [a for a in anns if isinstance(a, dict)]
    missing = {key: sum(key not in a for a in dicts) for key in ("iscrowd", "area")}
    report.notes = describe_defaults(missing, len(anns))
    report.problems = out.all()
