"""Evaluation breakdown: the confusion matrix on hand-made cases, per-class AP against pycocotools
run on one category at a time, and the plots."""

from __future__ import annotations

import contextlib
import io

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtmdet_exp.analysis.plots import save_png
from rtmdet_exp.deploy.breakdown import coco_eval, confusion_matrix, per_class_ap, plot_confusion, plot_pr_curves

CATS = [10, 20, 30]  # labels 0, 1, 2; background = 3


def make_coco(anns: list[tuple[int, int, list[float], int]]) -> COCO:
    """Two 100x100 images (ids 5 and 9); ``anns`` are (image_id, category_id, xywh, iscrowd)."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 5, "width": 100, "height": 100}, {"id": 9, "width": 100, "height": 100}],
        "categories": [{"id": c, "name": f"c{c}"} for c in CATS],
        "annotations": [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": crowd} for i, (img, cat, box, crowd) in enumerate(anns)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def det(image_id: int, cat: int, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}


def test_confusion_matrix_by_hand() -> None:
    gt = make_coco([
        (5, 10, [0, 0, 20, 20], 0),    # A: found by a right-class detection, and a weaker duplicate
        (5, 20, [50, 50, 20, 20], 0),  # B: found by a class-30 detection
        (5, 30, [0, 60, 10, 10], 0),   # C: missed (its detection overlaps only IoU 0.25)
        (9, 20, [10, 10, 40, 40], 0),  # D: a weak detection below score_thr only
        (9, 10, [60, 60, 30, 30], 1),  # crowd: neither a target nor counted
    ])
    dets = [
        det(5, 10, [0, 0, 20, 20], 0.9),    # A, class 10 -> (10, 10)
        det(5, 10, [1, 1, 20, 20], 0.8),    # A again, already taken -> (background, 10)
        det(5, 30, [52, 50, 20, 20], 0.7),  # B (IoU 18*20 / (2*400 - 360) = 0.82) -> (20, 30)
        det(5, 30, [0, 60, 5, 5], 0.6),     # C: IoU 25/100 = 0.25 < 0.5 -> (background, 30)
        det(9, 20, [10, 10, 40, 40], 0.2),  # below score_thr 0.3: ignored
        det(9, 10, [60, 60, 30, 30], 0.95), # on the crowd region: a false positive here -> (background, 10)
    ]
    matrix = confusion_matrix(gt, dets, [5, 9], CATS, score_thr=0.3, iou_thr=0.5)
    want = np.zeros((4, 4), np.int64)
    want[0, 0] = 1  # A
    want[3, 0] = 2  # duplicate of A, crowd-region detection
    want[1, 2] = 1  # B predicted as class 30
    want[3, 2] = 1  # C's poor box
    want[2, 3] = 1  # C missed
    want[1, 3] = 1  # D missed (its detection is below score_thr)
    np.testing.assert_array_equal(matrix, want)


def test_confusion_matrix_prefers_the_highest_iou_box() -> None:
    """One detection between two ground-truth boxes goes to the one it overlaps more."""
    gt = make_coco([(5, 10, [0, 0, 20, 20], 0), (5, 20, [4, 0, 20, 20], 0)])
    matrix = confusion_matrix(gt, [det(5, 30, [3, 0, 20, 20], 0.9)], [5, 9], CATS, score_thr=0.3)
    assert matrix[1, 2] == 1 and matrix[0, 3] == 1 and matrix.sum() == 2  # IoU 0.905 with B beats 0.739 with A


@pytest.fixture(scope="module")
def scored() -> tuple[COCO, list[dict]]:
    """Boxes of three sizes and detections of varied quality (small < 32^2 <= medium < 96^2 <= large)."""
    rng = np.random.default_rng(0)
    anns, dets = [], []
    for image in (5, 9):
        for cat, side in ((10, 20), (20, 50), (30, 100), (10, 60), (20, 15)):
            x, y = rng.uniform(0, 100 - min(side, 99), 2)
            box = [float(x), float(y), float(side), float(side)]
            anns.append((image, cat, box, 0))
            shift = rng.uniform(-0.3, 0.3) * side
            dets.append(det(image, cat, [box[0] + shift, box[1], box[2], box[3]], float(rng.uniform(0.3, 1))))
            dets.append(det(image, CATS[(CATS.index(cat) + 1) % 3], box, float(rng.uniform(0, 0.5))))
    return make_coco(anns), dets


def test_per_class_ap_equals_cocoeval_on_that_class_alone(scored: tuple[COCO, list[dict]]) -> None:
    gt, dets = scored
    ev, metrics, summary = coco_eval(gt, dets, [5, 9], CATS)
    table = per_class_ap(ev, ["a", "b", "c"], CATS)
    for name, cat in zip("abc", CATS):
        with contextlib.redirect_stdout(io.StringIO()):
            alone = COCOeval(gt, gt.loadRes(dets), "bbox")
            alone.params.catIds = [cat]
            alone.evaluate()
            alone.accumulate()
            alone.summarize()
        row = table[name]
        for key, index in (("AP", 0), ("AP50", 1), ("AP75", 2), ("AP_small", 3), ("AP_medium", 4), ("AP_large", 5)):
            want = alone.stats[index]
            assert (np.isnan(row[key]) and want == -1) or row[key] == pytest.approx(want, abs=1e-12), (name, key)
        assert row["num_gt"] == len(gt.getAnnIds(catIds=[cat]))
    assert metrics["mAP"] == pytest.approx(np.mean([table[n]["AP"] for n in "abc"]), abs=1e-12)
    assert "Average Precision" in summary


def test_plots_render(scored: tuple[COCO, list[dict]], tmp_path) -> None:
    gt, dets = scored
    ev, _, _ = coco_eval(gt, dets, [5, 9], CATS)
    matrix = confusion_matrix(gt, dets, [5, 9], CATS, score_thr=0.3)
    for name, fig in (("pr.png", plot_pr_curves(ev, ["a", "b", "c"])),
                      ("cm.png", plot_confusion(matrix, ["a", "b", "c"], "confusion"))):
        image = cv2.imread(str(save_png(fig, tmp_path / name)))
        assert image is not None and image.shape[0] > 200 and image.std() > 5  # drawn, not blank
