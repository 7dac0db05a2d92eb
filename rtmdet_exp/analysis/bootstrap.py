"""COCO box AP under a bootstrap over validation images, without re-running the model.

How sure is one run's mAP? The val set is a sample of images; drawing images with replacement
and recomputing COCO AP shows how much the number moves with the sample (Efron's percentile
bootstrap). Every resample uses the run's saved detections (``val_detections.json``).

COCO AP decomposes over images: ``pycocotools.COCOeval.evaluate`` matches detections to ground
truth one image and one category at a time, and only ``accumulate`` pools the images. So the
matching is done once per run (:func:`match_images`), and a resample is a vector of image
multiplicities (an image drawn twice counts twice: its detections and its ground truth are
weighted by 2), which :func:`coco_ap` pools the way ``accumulate`` does. The result equals
pycocotools on the resampled set rebuilt with fresh image ids (tested), up to the order of
detections with exactly equal scores in different images.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtmdet_exp.analysis.runs import Run, read_val_detections
from rtmdet_exp.analysis.stats import CONFIDENCE

# Metric keys a bootstrap can recompute, as the index into the IoU thresholds (None: mean over all).
BOOTSTRAP_METRICS: dict[str, int | None] = {"val/mAP": None, "val/mAP50": 0, "val/mAP75": 5}


@dataclass(frozen=True)
class ImageMatches:
    """Per-image COCO matching of one run, pooled by :func:`coco_ap` for any image multiplicities.

    For category ``k``: ``det_image[k]`` [D] image index of each detection, ``tp[k]`` / ``fp[k]``
    [T, D] true/false positive at each IoU threshold (ignored detections are neither), detections
    in pycocotools' pooled order (score descending, stable over images in id order).
    ``n_gt`` [K, I] non-ignored ground-truth boxes per category and image.
    """

    image_ids: tuple[int, ...]
    category_ids: tuple[int, ...]
    det_image: tuple[np.ndarray, ...]
    tp: tuple[np.ndarray, ...]
    fp: tuple[np.ndarray, ...]
    n_gt: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray


def _quiet_coco(dataset: Mapping[str, Any]) -> COCO:
    """A pycocotools COCO object from an in-memory dataset, without its prints."""
    coco = COCO()
    coco.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load_detections(coco_gt: COCO, detections: Sequence[Mapping[str, Any]]) -> COCO:
    """Detections as a pycocotools results object (``loadRes`` refuses an empty list)."""
    if not detections:
        return _quiet_coco({"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                            "annotations": []})
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes([dict(d) for d in detections])  # loadRes adds keys: copy


def match_images(
    coco_gt: COCO,
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int] | None = None,
    category_ids: Sequence[int] | None = None,
) -> ImageMatches:
    """Match ``detections`` (COCO results) to ``coco_gt`` once, with pycocotools, area range "all".

    ``image_ids`` / ``category_ids`` restrict the evaluation as the trainer's evaluator did
    (default: every image and category of the annotations).
    """
    evaluator = COCOeval(coco_gt, _load_detections(coco_gt, detections), iouType="bbox")
    params = evaluator.params
    if image_ids is not None:
        params.imgIds = sorted(int(i) for i in image_ids)
    if category_ids is not None:
        params.catIds = sorted(int(c) for c in category_ids)
    params.areaRng, params.areaRngLbl = params.areaRng[:1], params.areaRngLbl[:1]  # "all" only
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    params = evaluator.params  # evaluate() sorted and deduplicated the ids
    n_images, n_thresholds = len(params.imgIds), len(params.iouThrs)
    pooled = [_pool_category(evaluator.evalImgs[k * n_images : (k + 1) * n_images], n_thresholds)
              for k in range(len(params.catIds))]  # area "all" is index 0 of each category's block
    return ImageMatches(
        image_ids=tuple(int(i) for i in params.imgIds),
        category_ids=tuple(int(c) for c in params.catIds),
        det_image=tuple(p[0] for p in pooled),
        tp=tuple(p[1] for p in pooled),
        fp=tuple(p[2] for p in pooled),
        n_gt=np.stack([p[3] for p in pooled]) if pooled else np.zeros((0, n_images), np.int64),
        iou_thresholds=np.asarray(params.iouThrs, dtype=np.float64),
        recall_thresholds=np.asarray(params.recThrs, dtype=np.float64),
    )


def _pool_category(
    entries: Sequence[dict[str, Any] | None], n_thresholds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One category's per-image results of ``evaluateImg`` pooled as ``accumulate`` pools them.

    Returns the image index [D], true and false positives [T, D] and non-ignored ground truth
    per image [I]; detections in pycocotools' pooled order (score descending, stable).
    """
    n_gt = np.zeros(len(entries), dtype=np.int64)
    images = [np.zeros(0, np.int64)]
    scores = [np.zeros(0)]
    matched = [np.zeros((n_thresholds, 0), bool)]
    ignored = [np.zeros((n_thresholds, 0), bool)]
    for i, entry in enumerate(entries):
        if entry is None:  # neither ground truth nor detections of this category in image i
            continue
        n_gt[i] = int(np.count_nonzero(np.asarray(entry["gtIgnore"]) == 0))
        images.append(np.full(len(entry["dtScores"]), i, dtype=np.int64))
        scores.append(np.asarray(entry["dtScores"], dtype=np.float64))
        matched.append(np.asarray(entry["dtMatches"]).reshape(n_thresholds, -1) != 0)  # [T, D_i]
        ignored.append(np.asarray(entry["dtIgnore"], dtype=bool).reshape(n_thresholds, -1))  # [T, D_i]
    order = np.argsort(-np.concatenate(scores), kind="mergesort")  # as pycocotools' accumulate
    hit = np.concatenate(matched, axis=1)[:, order]  # [T, D]
    skip = np.concatenate(ignored, axis=1)[:, order]  # [T, D]
    tp, fp = hit & ~skip, ~hit & ~skip
    # Detections after the last true positive (at any IoU threshold) only lower precision at the
    # final recall, below the envelope: dropping them leaves every resample's AP unchanged.
    positives = np.flatnonzero(tp.any(axis=0))
    end = positives[-1] + 1 if positives.size else 0
    return np.concatenate(images)[order][:end], tp[:, :end], fp[:, :end], n_gt


def _category_precision(matches: ImageMatches, k: int, counts: np.ndarray, n_gt: int) -> np.ndarray:
    """Interpolated precision [T, R] of category ``k`` with images weighted by ``counts`` [I]."""
    weight = counts[matches.det_image[k]]  # [D] multiplicity of each detection's image
    keep = weight > 0
    weight = weight[keep].astype(np.float64)
    tp_sum = np.cumsum(matches.tp[k][:, keep] * weight, axis=1)  # [T, D']
    fp_sum = np.cumsum(matches.fp[k][:, keep] * weight, axis=1)  # [T, D']
    n_thr, n_rec = len(matches.iou_thresholds), len(matches.recall_thresholds)
    n_det = tp_sum.shape[1]
    if n_det == 0:
        return np.zeros((n_thr, n_rec))
    recall = tp_sum / n_gt
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # best precision at >= recall
    out = np.zeros((n_thr, n_rec))
    for t in range(n_thr):
        index = np.searchsorted(recall[t], matches.recall_thresholds, side="left")  # [R]
        reached = index < n_det
        out[t, reached] = envelope[t, index[reached]]
    return out


def coco_ap(matches: ImageMatches, counts: np.ndarray | None = None) -> np.ndarray:
    """COCO AP at each IoU threshold [T] with image ``i`` counted ``counts[i]`` times.

    ``counts=None`` is the plain evaluation (every image once). Categories without ground truth
    in the (resampled) set are left out, as pycocotools does; with none left the result is all -1
    (pycocotools' "no value").
    """
    weights = np.ones(len(matches.image_ids), np.int64) if counts is None else np.asarray(counts, np.int64)
    if weights.shape != (len(matches.image_ids),):
        raise ValueError(f"counts: expected shape ({len(matches.image_ids)},), got {weights.shape}")
    n_gt = matches.n_gt @ weights  # [K]
    present = [k for k in range(len(matches.category_ids)) if n_gt[k] > 0]
    if not present:
        return -np.ones(len(matches.iou_thresholds))
    per_category = [_category_precision(matches, k, weights, int(n_gt[k])).mean(axis=1) for k in present]
    return np.mean(per_category, axis=0)


def metric_value(ap_per_threshold: np.ndarray, metric: str) -> float:
    """``val/mAP`` (mean over IoU 0.5:0.95), ``val/mAP50`` or ``val/mAP75`` from AP per threshold."""
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"metric: {metric!r} cannot be bootstrapped; valid values: {list(BOOTSTRAP_METRICS)}")
    if ap_per_threshold[0] < 0:
        return -1.0
    index = BOOTSTRAP_METRICS[metric]
    return float(ap_per_threshold.mean() if index is None else ap_per_threshold[index])


def resample_counts(n_images: int, n_resamples: int, seed: int) -> np.ndarray:
    """Multiplicities [B, I] of ``n_resamples`` draws of ``n_images`` images with replacement.

    The same ``(n_images, seed)`` gives the same draws, so runs on one val set see the same
    resampled sets and their AP differences are paired.
    """
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_images, size=(n_resamples, n_images))  # [B, I] image indices
    flat = drawn + n_images * np.arange(n_resamples)[:, None]  # a separate bin range per resample
    return np.bincount(flat.ravel(), minlength=n_resamples * n_images).reshape(n_resamples, n_images)


def bootstrap_metric(matches: ImageMatches, metric: str, counts: np.ndarray) -> np.ndarray:
    """``metric`` on each resample of ``counts`` [B, I]: [B] values, NaN where no ground truth was drawn."""
    values = np.array([metric_value(coco_ap(matches, row), metric) for row in counts], dtype=np.float64)
    values[values < 0] = np.nan
    return values


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite bootstrap values (NaN, NaN when there are none)."""
    valid = values[np.isfinite(values)]
    if valid.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(valid, [tail, 100 - tail])
    return float(low), float(high)


# ------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunBootstrap:
    """One run's metric on its full val set (``point``) and on each resample (``values`` [B]).

    Runs with the same ``image_ids`` and seed saw the same resampled sets, so their values pair.
    ``logged`` is the value in ``results.json`` (the recomputation should reproduce it).
    """

    point: float
    values: np.ndarray
    low: float
    high: float
    image_ids: tuple[int, ...]
    logged: float | None

    @property
    def n_valid(self) -> int:
        """Resamples with ground truth (the others have no AP and are left out)."""
        return int(np.count_nonzero(np.isfinite(self.values)))

    @property
    def shift(self) -> float:
        """Mean over resamples minus the full-set value: how far AP drifts under resampling.

        AP is not a mean over images, so its resamples need not centre on the full-set value (they
        ran higher in every set measured); a shift large against the interval means a small val set.
        """
        return float(np.nanmean(self.values)) - self.point if self.n_valid else float("nan")

    @property
    def reproduces_logged(self) -> bool:
        """Whether the recomputed full-set value equals the logged one (to 1e-6)."""
        return self.logged is None or abs(self.point - self.logged) <= 1e-6


@dataclass
class Bootstraps:
    """The image bootstrap of every run that kept its val detections, and why the others did not."""

    metric: str
    n_resamples: int
    seed: int
    by_run: dict[Path, RunBootstrap] = field(default_factory=dict)
    skipped: dict[Path, str] = field(default_factory=dict)
    seconds_matching: float = 0.0
    seconds_resampling: float = 0.0

    def seconds_per_resample(self) -> float | None:
        """Mean time of one resample of one run (None before any)."""
        done = len(self.by_run) * self.n_resamples
        return self.seconds_resampling / done if done else None


def _ground_truth(path: str, cache: dict[str, COCO]) -> COCO:
    """The val annotations at ``path``, loaded once per report."""
    if path not in cache:
        if not Path(path).is_file():
            raise ValueError(f"val_annotations: {path} does not exist (results.json names it)")
        with contextlib.redirect_stdout(io.StringIO()):
            cache[path] = COCO(path)
    return cache[path]


def _bootstrap_one(run: Run, metric: str, counts_for: Callable[[int], np.ndarray],
                   cache: dict[str, COCO]) -> tuple[RunBootstrap, float, float]:
    """A run's bootstrap and the seconds spent matching and resampling; ValueError when impossible."""
    if run.val_annotations is None:
        raise ValueError("results.json names no val_annotations")
    if not run.detections.is_file():
        raise ValueError(f"no {run.detections.name} in the run folder")
    coco_gt = _ground_truth(run.val_annotations, cache)
    detections = read_val_detections(run)
    unknown = sorted({d["image_id"] for d in detections} - set(coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"{run.detections}: image_id {unknown[0]} is not in {run.val_annotations}")
    start = time.perf_counter()
    matches = match_images(coco_gt, detections, run.val_image_ids, run.val_category_ids)
    matched = time.perf_counter()
    point = metric_value(coco_ap(matches), metric)
    values = bootstrap_metric(matches, metric, counts_for(len(matches.image_ids)))
    low, high = percentile_interval(values, CONFIDENCE)
    result = RunBootstrap(point, values, low, high, matches.image_ids, run.metrics.get(metric))
    return result, matched - start, time.perf_counter() - matched


def bootstrap_runs(runs: Sequence[Run], metric: str, n_resamples: int, seed: int = 0) -> Bootstraps:
    """Bootstrap ``metric`` over val images for every finished run that kept its detections.

    Each run's image multiplicities come from ``resample_counts(n_images, n_resamples, seed)``,
    so runs on one val set are resampled identically. Runs that cannot be bootstrapped are
    listed in ``skipped`` with the reason (a missing or malformed file names the file).
    """
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"metric: {metric!r} cannot be bootstrapped; valid values: {list(BOOTSTRAP_METRICS)}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    result = Bootstraps(metric, n_resamples, seed)
    counts_cache: dict[int, np.ndarray] = {}
    gt_cache: dict[str, COCO] = {}

    def counts_for(n_images: int) -> np.ndarray:
        if n_images not in counts_cache:
            counts_cache[n_images] = resample_counts(n_images, n_resamples, seed)
        return counts_cache[n_images]

    for run in runs:
        if not run.finished:
            continue
        try:
            boot, matching, resampling = _bootstrap_one(run, metric, counts_for, gt_cache)
        except ValueError as error:
            result.skipped[run.folder] = str(error)
            continue
        result.by_run[run.folder] = boot
        result.seconds_matching += matching
        result.seconds_resampling += resampling
    return result
