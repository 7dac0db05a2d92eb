"""COCO-format detection dataset producing the data-sample contract of rtmdet_exp.

A sample is a dict: ``img`` uint8 HxWx3 **BGR** (OpenCV order, which the preprocessor stats
expect), ``boxes`` float32 ``[K, 4]`` xyxy pixels, ``labels`` int64 ``[K]`` contiguous 0..C-1,
``image_id`` int, ``ori_shape`` (h, w) of the file. The pipeline, a callable ``sample -> sample``,
is applied last.

Annotations are parsed once at construction, from the json as
:func:`~rtmdet_exp.data.annotations.read_coco_json` reads it, and checked with the dataset check's
entry rules (:mod:`rtmdet_exp.data.coco_checks`): an entry the loader cannot use (a wrong type,
an id beyond int64, a repeated id, an unknown image or category) raises :class:`DataError`
naming the file, the ids and the field, whether or not the run validated the data first. Box
values are repaired instead: crowd regions are dropped (they are neither positives nor negatives
we train on), boxes are clipped to the image, and degenerate ones (non-finite, or zero
width/height after clipping) are dropped and counted in ``num_dropped_boxes``; non-finite ones
leave the evaluator's ground truth too (pycocotools cannot compare them). Annotations
without ``iscrowd`` or ``area`` get COCO's defaults (0, and the bbox area), with one warning per
file, so that the index handed to the evaluator (``coco``) holds every field pycocotools reads.
Category ids, which in COCO are not contiguous, are mapped to labels 0..C-1 in ascending id
order; ``label_to_cat_id`` maps back for evaluation.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from rtmdet_exp.data.annotations import as_float, describe_defaults, fill_coco_defaults, is_int, read_coco_json
from rtmdet_exp.data.coco_checks import BOX_VALUE_KINDS, check_coco
from rtmdet_exp.data.problems import Collector, DatasetError, ValidationReport

__all__ = ["CocoDetection", "DataError"]

log = logging.getLogger(__name__)

# Decode in stored pixel order: COCO boxes refer to the raw pixels, not the EXIF-rotated view.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
# Problems the loader works around: box values (clipped or dropped), and a split without images.
_TOLERATED_KINDS = BOX_VALUE_KINDS | {"no images"}
_MAX_LISTED = 20


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent with its annotations."""


def _listed(entry: Any, key: str, ids: set[int]) -> bool:
    """True when ``entry`` is a dict whose integer ``key`` is one of ``ids``."""
    return isinstance(entry, dict) and is_int(entry.get(key)) and entry[key] in ids


def _check_loadable(ann_file: Path, data: dict) -> None:
    """Raise :class:`DataError` listing the entries the loader cannot use (see the module docstring)."""
    report = ValidationReport(ann_file=str(ann_file), img_dir="")
    check_coco(data, report, Collector(str(ann_file)))
    fatal = [p for p in report.problems if p.kind not in _TOLERATED_KINDS]
    if fatal:
        n = len(fatal)
        lines = [f"  {p}" for p in fatal[:_MAX_LISTED]]
        if n > _MAX_LISTED:
            lines.append(f"  ... and {n - _MAX_LISTED} more")
        raise DataError(f"{ann_file}: {n} problem{'s' if n != 1 else ''} in the annotations that the loader cannot "
                        "work around (the dataset check, data.validate=true, lists them before training):\n"
                        + "\n".join(lines))


def _free_zero_id(annotations: list[dict]) -> None:
    """Give an annotation of id 0 the next free id.

    COCOeval records a match as the matched ground truth's id and reads 0 as "no match", so a
    detection matching an annotation of id 0 would count as a false positive. Ids are unique
    here (the checks refuse repeats), so at most one annotation has id 0.
    """
    for ann in annotations:
        if ann["id"] == 0:
            ann["id"] = max(a["id"] for a in annotations) + 1
            return


def _finite_boxes(annotations: list[dict]) -> np.ndarray:
    """``[n]`` True where an annotation's bbox has finite coordinates (ints beyond float range are not)."""
    try:
        xywh = np.array([a["bbox"] for a in annotations], np.float64).reshape(-1, 4)  # [n, 4]
    except OverflowError:
        xywh = np.array([[as_float(v) for v in a["bbox"]] for a in annotations], np.float64).reshape(-1, 4)  # [n, 4]
    return np.isfinite(xywh).all(axis=1)


def _load_coco(ann_file: Path, skip_images: set[int], skip_anns: set[int]) -> tuple[COCO, int]:
    """A pycocotools index of ``ann_file`` without the skipped images and annotations, and the
    number of boxes with non-finite coordinates left out of it.

    Skipped entries (found by :mod:`rtmdet_exp.data.validate` in ``on_error=skip`` mode) are
    removed before indexing, so neither training nor the evaluator's ground truth sees them; so
    are non-finite boxes (only there without validation), which pycocotools cannot compare.
    """
    try:
        data = read_coco_json(ann_file)
    except DatasetError as err:
        raise DataError(str(err)) from None
    if skip_images or skip_anns:
        data["images"] = [im for im in data["images"] if not _listed(im, "id", skip_images)]
        data["annotations"] = [
            a for a in data["annotations"] if not (_listed(a, "id", skip_anns) or _listed(a, "image_id", skip_images))
        ]
    _check_loadable(ann_file, data)
    finite = _finite_boxes(data["annotations"])
    num_non_finite = int((~finite).sum())
    if num_non_finite:
        data["annotations"] = [a for a, keep in zip(data["annotations"], finite.tolist()) if keep]
    anns = data["annotations"]
    for line in describe_defaults(fill_coco_defaults(anns), len(anns)):
        log.warning("%s: %s", ann_file, line)
    _free_zero_id(anns)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco, num_non_finite


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else None (not checked)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


class CocoDetection(Dataset):
    """Images and boxes of a COCO json, one sample dict per image.

    Args:
        img_dir: folder that ``file_name`` entries of the json are relative to.
        ann_file: COCO instances json.
        pipeline: transform applied to each sample (``sample -> sample``), or None.
        filter_empty: drop images left without boxes (after removing crowd and degenerate
            boxes), as for training on COCO; keep them (the default) for evaluation.
        exclude_ids: image ids to leave out (e.g. files a dataset check found broken).
    """

    def __init__(
        self,
        img_dir: str | Path,
        ann_file: str | Path,
        pipeline: Callable[[dict], dict] | None = None,
        filter_empty: bool = False,
        exclude_ids: Iterable[int] = (),
        exclude_ann_ids: Iterable[int] = (),
    ) -> None:
        self.img_dir = Path(img_dir)
        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            raise DataError(f"annotation file {str(self.ann_file)!r} does not exist")
        if pipeline is not None and not callable(pipeline):
            raise ValueError(f"pipeline must be a callable sample -> sample or None, got {type(pipeline).__name__}")
        self.pipeline = pipeline
        self.filter_empty = bool(filter_empty)
        excluded = {int(i) for i in exclude_ids}
        self.coco, num_non_finite = _load_coco(self.ann_file, excluded, {int(i) for i in exclude_ann_ids})

        cat_ids = sorted(int(c) for c in self.coco.cats)
        self.label_to_cat_id: list[int] = cat_ids
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(cat_ids)}
        self.class_names: list[str] = [str(self.coco.cats[c].get("name", c)) for c in cat_ids]

        all_img_ids = sorted(int(i) for i in self.coco.imgs)
        per_image, num_degenerate = self._parse_annotations(all_img_ids)
        self.num_dropped_boxes = num_non_finite + num_degenerate
        if self.num_dropped_boxes:
            log.warning(
                "%s: dropped %d degenerate boxes (non-finite, or zero width/height after clipping to the image)",
                self.ann_file.name,
                self.num_dropped_boxes,
            )
        self.img_ids: list[int] = [
            i for i in all_img_ids if i not in excluded and not (self.filter_empty and len(per_image[i][1]) == 0)
        ]
        self._anns = per_image
        self._images: list[np.ndarray] | None = None  # decoded images, when cache_images() was called

    def _parse_annotations(self, img_ids: list[int]) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], int]:
        """Vectorised parse of all annotations into per-image ``(boxes [K,4] xyxy, labels [K])``."""
        anns = self.coco.dataset["annotations"]
        n = len(anns)
        image_id = np.fromiter((a["image_id"] for a in anns), np.int64, n)
        cat_id = np.fromiter((a["category_id"] for a in anns), np.int64, n)
        crowd = np.fromiter((bool(a["iscrowd"]) for a in anns), bool, n)
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(n, 4)  # [n, 4], all finite

        # Image sizes per annotation, inf where the json does not give them (then no clipping).
        imgs = self.coco.imgs
        size_of = {i: (imgs[i].get("width", np.inf), imgs[i].get("height", np.inf)) for i in img_ids}
        wh_img = np.array([size_of[i] for i in image_id.tolist()], np.float64).reshape(n, 2)  # [n, 2]

        xyxy = np.concatenate((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), axis=1)  # [n, 4]
        finite = np.isfinite(xyxy).all(axis=1)
        xyxy = np.clip(np.nan_to_num(xyxy), 0.0, np.concatenate((wh_img, wh_img), axis=1))
        valid = finite & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        keep = ~crowd & valid
        num_dropped = int((~crowd & ~valid).sum())

        labels = np.searchsorted(np.array(self.label_to_cat_id, np.int64), cat_id)  # [n] contiguous
        image_id, xyxy, labels = image_id[keep], xyxy[keep].astype(np.float32), labels[keep].astype(np.int64)
        order = np.argsort(image_id, kind="stable")  # group by image, keeping file order within one
        image_id, xyxy, labels = image_id[order], xyxy[order], labels[order]
        ids, starts = np.unique(image_id, return_index=True)
        bounds = np.append(starts, len(image_id))
        per_image = {i: (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)) for i in img_ids}
        for k, i in enumerate(ids.tolist()):
            per_image[i] = (xyxy[bounds[k] : bounds[k + 1]], labels[bounds[k] : bounds[k + 1]])
        return per_image, num_dropped

    @property
    def num_classes(self) -> int:
        """Number of categories C in the json (labels are 0..C-1)."""
        return len(self.label_to_cat_id)

    def __len__(self) -> int:
        return len(self.img_ids)

    def image_path(self, index: int) -> Path:
        """Path of the image file of sample ``index``."""
        return self.img_dir / self.coco.imgs[self.img_ids[index]]["file_name"]

    def get_ann(self, index: int) -> dict:
        """Annotations of sample ``index`` without reading the image.

        Returns ``{"boxes": float32 [K,4] xyxy, "labels": int64 [K], "image_id": int,
        "ori_shape": (h, w) from the json, or None if the json lacks it}``; arrays are copies.
        """
        image_id = self.img_ids[index]
        boxes, labels = self._anns[image_id]
        info = self.coco.imgs[image_id]
        shape = (int(info["height"]), int(info["width"])) if "height" in info and "width" in info else None
        return {"boxes": boxes.copy(), "labels": labels.copy(), "image_id": image_id, "ori_shape": shape}

    def cache_images(self, option: str = "data.cache_images", threads: int | None = None) -> float:
        """Decode every image once into memory, so that :meth:`load_image` no longer decodes (Ultralytics'
        ``cache=ram``); returns the seconds it took.

        JPEG decoding is the largest single cost of the training pipeline (~4 ms of ~10 ms per 640 px
        sample on one CPU core). Done in threads (OpenCV releases the GIL) before the loader's workers
        start: they are forked and share the decoded arrays. Refused with :class:`DataError`, naming
        ``option``, when the images (H x W x 3 bytes each, from the json's sizes) would not fit in half of
        the memory the system has available.
        """
        started = time.perf_counter()
        infos = [self.coco.imgs[i] for i in self.img_ids]
        need = sum(int(info.get("height", 0)) * int(info.get("width", 0)) * 3 for info in infos)
        available = available_memory_bytes()
        if available is not None and need > available // 2:
            raise DataError(f"{option}=true: the {len(infos)} images of {self.ann_file.name} need {need / 2**30:.1f} "
                            f"GiB decoded, more than half of the {available / 2**30:.1f} GiB available; set "
                            f"{option}=false (images are then decoded at every use)")
        with ThreadPoolExecutor(max_workers=threads or min(32, os.cpu_count() or 1)) as pool:
            self._images = list(pool.map(self._decode, range(len(self.img_ids))))
        return time.perf_counter() - started

    def load_image(self, index: int) -> np.ndarray:
        """The image of sample ``index`` as uint8 HxWx3 BGR (from memory after :meth:`cache_images`).

        Raises :class:`DataError` if it cannot be read. A cached array is shared: callers never write
        into it (no transform writes into its input).
        """
        if self._images is not None:
            return self._images[index]
        return self._decode(index)

    def _decode(self, index: int) -> np.ndarray:
        """Decode the image of sample ``index``; raise :class:`DataError` if impossible."""
        image_id = self.img_ids[index]
        path = self.image_path(index)
        if not path.is_file():
            raise DataError(f"image file {str(path)!r} (image_id {image_id}) does not exist")
        img = cv2.imread(str(path), _IMREAD_FLAGS)
        if img is None:
            raise DataError(f"image file {str(path)!r} (image_id {image_id}) could not be decoded")
        info = self.coco.imgs[image_id]
        if "height" in info and "width" in info and img.shape[:2] != (int(info["height"]), int(info["width"])):
            raise DataError(
                f"image file {str(path)!r} (image_id {image_id}) is {img.shape[1]}x{img.shape[0]} "
                f"but the json says {info['width']}x{info['height']}"
            )
        return img

    def load_sample(self, index: int) -> dict:
        """The raw sample of ``index`` (image and annotations), before the pipeline."""
        img = self.load_image(index)
        ann = self.get_ann(index)
        ann["img"] = img
        ann["ori_shape"] = (int(img.shape[0]), int(img.shape[1]))
        return ann

    def __getitem__(self, index: int) -> dict:
        sample = self.load_sample(index)
        return self.pipeline(sample) if self.pipeline is not None else sample
