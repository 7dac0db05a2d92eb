"""What a COCO evaluation says beyond its 12 numbers: per-class and per-size AP, PR curves, confusion.

All AP values come from one ``COCOeval`` run (pycocotools' own matching) over the detections as
written to the results JSON, so the numbers shown are the numbers that file scores.

Confusion matrix rule (:func:`confusion_matrix`): within each image, detections scoring at least
``score_thr`` are taken in decreasing score order; each is matched to the not yet matched
ground-truth box (of any class; crowd regions are left out) with which it has the highest IoU, when
that IoU is at least ``iou_thr``. A matched pair counts at (true class, predicted class), an
unmatched detection at (background, predicted class), an unmatched ground-truth box at
(true class, background). Rows are true classes, columns predicted classes; the last row and
column are background.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtmdet_exp.engine.evaluator import STAT_KEYS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["AREAS", "coco_eval", "confusion_matrix", "per_class_ap", "plot_confusion", "plot_pr_curves"]

AREAS = ("all", "small", "medium", "large")  # COCOeval's areaRng order


def coco_eval(coco_gt: COCO, detections: list[dict[str, Any]], img_ids: Sequence[int],
              cat_ids: Sequence[int]) -> tuple[COCOeval, dict[str, float], str]:
    """COCOeval over ``img_ids`` and ``cat_ids``: the evaluated object, its 12 numbers, its summary text."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(detections) if detections else _no_detections(coco_gt)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.params.catIds = sorted(int(c) for c in cat_ids)
        ev.evaluate()
        ev.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    return ev, {k: float(v) for k, v in zip(STAT_KEYS, ev.stats)}, summary.getvalue()


def _no_detections(coco_gt: COCO) -> COCO:
    """An empty results object (``loadRes`` refuses an empty list)."""
    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                   "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def _mean_precision(p: np.ndarray) -> float:
    """Mean of COCOeval precision entries, -1 (no ground truth) left out; nan when nothing is left."""
    p = p[p > -1]
    return float(p.mean()) if p.size else float("nan")


def per_class_ap(ev: COCOeval, class_names: Sequence[str], cat_ids: Sequence[int]) -> dict[str, dict[str, float]]:
    """Per class: AP (IoU .50:.95), AP50, AP75 and AP of small/medium/large objects, and its GT count.

    The same rule as the 12 numbers, restricted to one category: precision averaged over IoU
    thresholds and recall points at 100 detections per image. nan where the class has no ground
    truth of that size.
    """
    precision = ev.eval["precision"]  # [T iou, R recall, K cats, A areas, M maxDets]
    index = {c: k for k, c in enumerate(ev.params.catIds)}
    iou_50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    iou_75 = int(np.argmin(np.abs(ev.params.iouThrs - 0.75)))
    out: dict[str, dict[str, float]] = {}
    for name, cat in zip(class_names, cat_ids):
        k = index[int(cat)]
        row = {"AP": _mean_precision(precision[:, :, k, 0, -1]),
               "AP50": _mean_precision(precision[iou_50, :, k, 0, -1]),
               "AP75": _mean_precision(precision[iou_75, :, k, 0, -1])}
        for a, area in enumerate(AREAS[1:], start=1):
            row[f"AP_{area}"] = _mean_precision(precision[:, :, k, a, -1])
        gt = ev.cocoGt.getAnnIds(imgIds=ev.params.imgIds, catIds=[int(cat)], iscrowd=False)
        row["num_gt"] = float(len(gt))
        out[str(name)] = row
    return out


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_pr_curves(ev: COCOeval, class_names: Sequence[str], max_classes: int = 20) -> Figure:
    """Precision against recall (all areas, 100 detections): the class mean at IoU .50, .75 and
    .50:.95, and each class at IoU .50 when there are at most ``max_classes``."""
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    recall = ev.params.recThrs
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot()
    if len(class_names) <= max_classes:
        for k, name in enumerate(class_names):
            curve = precision[0, :, k, 0, -1]
            if (curve > -1).any():
                ax.plot(recall, np.where(curve > -1, curve, np.nan), linewidth=0.8, alpha=0.6, label=str(name))
    for t_slice, label, style in ((slice(0, 1), "mean, IoU .50", "-"), (slice(5, 6), "mean, IoU .75", "--"),
                                  (slice(None), "mean, IoU .50:.95", ":")):
        block = precision[t_slice, :, :, 0, -1]  # [t, R, K]
        masked = np.where(block > -1, block, np.nan)
        with np.errstate(invalid="ignore"), _quiet_nan_mean():
            mean = np.nanmean(masked, axis=(0, 2))
        ax.plot(recall, mean, "k" + style, linewidth=2, label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall (COCOeval, all areas, 100 detections per image)", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


@contextlib.contextmanager
def _quiet_nan_mean() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a recall level no class reaches: mean of nothing
        yield


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[D, G]`` of xywh boxes ``a [D,4]`` and ``b [G,4]``."""
    a_min, a_max = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b_min, b_max = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    wh = np.clip(np.minimum(a_max, b_max) - np.maximum(a_min, b_min), 0, None)  # [D, G, 2]
    inter = wh[..., 0] * wh[..., 1]
    union = (a[:, None, 2] * a[:, None, 3]) + (b[None, :, 2] * b[None, :, 3]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def confusion_matrix(coco_gt: COCO, detections: Sequence[dict[str, Any]], img_ids: Sequence[int],
                     cat_ids: Sequence[int], score_thr: float, iou_thr: float = 0.5) -> np.ndarray:
    """Counts ``[C+1, C+1]`` (rows true class, columns predicted class, last = background); see the module rule."""
    label = {int(c): i for i, c in enumerate(cat_ids)}
    background = len(cat_ids)
    matrix = np.zeros((background + 1, background + 1), np.int64)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for det in detections:
        if det["score"] >= score_thr and int(det["category_id"]) in label:
            by_image.setdefault(int(det["image_id"]), []).append(det)
    for image_id in img_ids:
        anns = [a for a in coco_gt.imgToAnns.get(int(image_id), [])
                if not a.get("iscrowd", 0) and int(a["category_id"]) in label]
        dets = sorted(by_image.get(int(image_id), []), key=lambda d: -d["score"])
        gt_labels = np.array([label[int(a["category_id"])] for a in anns], np.int64)
        det_labels = np.array([label[int(d["category_id"])] for d in dets], np.int64)
        iou = _iou(np.array([d["bbox"] for d in dets], np.float64).reshape(-1, 4),
                   np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4))  # [D, G]
        taken = np.zeros(len(anns), bool)
        for d in range(len(dets)):  # greedy in score order: one image's detections, not a hot path
            options = np.where(taken | (iou[d] < iou_thr), -1.0, iou[d])
            g = int(options.argmax()) if len(anns) else -1
            if g >= 0 and options[g] >= 0:
                taken[g] = True
                matrix[gt_labels[g], det_labels[d]] += 1
            else:
                matrix[background, det_labels[d]] += 1
        np.add.at(matrix, (gt_labels[~taken], background), 1)
    return matrix


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """The matrix as an image, rows normalised to the true class's count (numbers printed up to 25 classes)."""
    names = [*map(str, class_names), "background"]
    size = max(4.0, 0.35 * len(names) + 2.5)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the row (true class)")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 26:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                        color="white" if shares[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=8)
    return fig
