"""COCO AP under an image bootstrap, against pycocotools on every resample rebuilt with fresh ids.

The reference for a resample is built here independently: the drawn images get new ids 1..n
(an image drawn twice becomes two images), their annotations and detections are copied under the
new ids, and pycocotools' COCOeval scores the result.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtmdet_exp.analysis.bootstrap import bootstrap_runs, coco_ap, match_images, metric_value, resample_counts
from rtmdet_exp.analysis.runs import load_runs

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
# Three images: 7 has a cat (found) and a dog (found at IoU 0.6 only); 9 has a cat (missed, a
# false positive elsewhere); 12 has a crowd dog (ignored) and a stray cat detection.
TOY_IMAGES = [{"id": i, "width": 100, "height": 100} for i in (7, 9, 12)]
TOY_ANNOTATIONS = [
    {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
    {"id": 2, "image_id": 7, "category_id": 2, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0},
    {"id": 3, "image_id": 9, "category_id": 1, "bbox": [5, 5, 30, 30], "area": 900, "iscrowd": 0},
    {"id": 4, "image_id": 12, "category_id": 2, "bbox": [0, 0, 60, 60], "area": 3600, "iscrowd": 1},
]
TOY_DETECTIONS = [
    {"image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
    {"image_id": 7, "category_id": 2, "bbox": [50, 50, 40, 25], "score": 0.7},  # IoU 1000/1600 = 0.625
    {"image_id": 9, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.8},
    {"image_id": 12, "category_id": 1, "bbox": [70, 10, 10, 10], "score": 0.95},
    {"image_id": 12, "category_id": 2, "bbox": [5, 5, 30, 30], "score": 0.6},
]


def _quiet(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def toy_ground_truth() -> COCO:
    return _quiet({"images": TOY_IMAGES, "annotations": TOY_ANNOTATIONS, "categories": CATEGORIES})


def pycocotools_on_draw(
    images: list[dict], annotations: list[dict], detections: list[dict], drawn: list[int]
) -> np.ndarray:
    """pycocotools' mAP, mAP50, mAP75 on the images ``drawn`` (indices, repeats allowed), fresh ids."""
    new_images, new_annotations, new_detections = [], [], []
    for new_id, index in enumerate(drawn, start=1):
        old_id = images[index]["id"]
        new_images.append({**images[index], "id": new_id})
        for ann in (a for a in annotations if a["image_id"] == old_id):
            new_annotations.append({**ann, "id": len(new_annotations) + 1, "image_id": new_id})
        new_detections += [{**d, "image_id": new_id} for d in detections if d["image_id"] == old_id]
    gt = _quiet({"images": new_images, "annotations": new_annotations, "categories": CATEGORIES})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(new_detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats[:3])


def ours(ap: np.ndarray) -> np.ndarray:
    return np.array([metric_value(ap, m) for m in ("val/mAP", "val/mAP50", "val/mAP75")])


def test_full_set_by_hand() -> None:
    matches = match_images(toy_ground_truth(), TOY_DETECTIONS)
    # cat: 2 GT (7, 9); detections by score: 12 (FP 0.95), 7 (TP 0.9), 9 (FP 0.8) -> recall 0, 1/2, 1/2,
    # precision 0, 1/2, 1/3; the envelope gives 1/2 at the 51 recall points 0..0.5, 0 above:
    # AP = 25.5 / 101 at every IoU threshold.
    # dog: 1 GT (the crowd one is ignored, and so is the detection matched to it); the image-7 dog is
    # found at IoU 0.625: precision 1 up to recall 1 at thresholds 0.50..0.60 (3 of 10), else 0.
    cat, dog = 25.5 / 101, np.array([1.0] * 3 + [0.0] * 7)
    expected = (cat + dog) / 2
    np.testing.assert_allclose(coco_ap(matches), expected, rtol=1e-12)
    np.testing.assert_allclose(ours(coco_ap(matches)), pycocotools_on_draw(
        TOY_IMAGES, TOY_ANNOTATIONS, TOY_DETECTIONS, [0, 1, 2]), rtol=1e-12)


def test_every_resample_of_three_images_matches_pycocotools() -> None:
    matches = match_images(toy_ground_truth(), TOY_DETECTIONS)
    assert matches.image_ids == (7, 9, 12)
    for drawn in itertools.product(range(3), repeat=3):  # all 27 ordered draws
        counts = np.bincount(drawn, minlength=3)
        reference = pycocotools_on_draw(TOY_IMAGES, TOY_ANNOTATIONS, TOY_DETECTIONS, list(drawn))
        np.testing.assert_allclose(ours(coco_ap(matches, counts)), reference, rtol=1e-12, atol=1e-15,
                                   err_msg=f"draw {drawn}")
    # the draw (12, 12, 12) has no non-crowd ground truth: pycocotools' "no value" is -1
    assert ours(coco_ap(matches, np.array([0, 0, 3]))).tolist() == [-1.0, -1.0, -1.0]


def random_dataset(seed: int, n_images: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Images, annotations and noisy detections (jittered true boxes and strays), distinct scores."""
    rng = np.random.default_rng(seed)
    images = [{"id": 100 + 2 * i, "width": 200, "height": 200} for i in range(n_images)]
    annotations, detections = [], []
    for image in images:
        for _ in range(rng.integers(0, 4)):
            x, y, w, h = *rng.uniform(0, 140, 2), *rng.uniform(4, 60, 2)
            category = int(rng.integers(1, 3))
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if rng.random() < 0.8:
                box = (np.array([x, y, w, h]) + rng.normal(0, 4, 4)).tolist()
                detections.append({"image_id": image["id"], "category_id": category, "bbox": box,
                                   "score": float(rng.random())})
        for _ in range(rng.integers(0, 3)):
            detections.append({"image_id": image["id"], "category_id": int(rng.integers(1, 3)),
                               "bbox": [*rng.uniform(0, 140, 2), *rng.uniform(4, 60, 2)], "score": float(rng.random())})
    return images, annotations, detections


def test_drawn_resamples_match_pycocotools() -> None:
    images, annotations, detections = random_dataset(seed=3, n_images=25)
    gt = _quiet({"images": images, "annotations": annotations, "categories": CATEGORIES})
    matches = match_images(gt, detections)
    counts = resample_counts(len(images), n_resamples=6, seed=11)
    for row in counts:
        drawn = [i for i, c in enumerate(row) for _ in range(c)]  # the order does not change AP
        reference = pycocotools_on_draw(images, annotations, detections, drawn)
        np.testing.assert_allclose(ours(coco_ap(matches, row)), reference, rtol=1e-12, atol=1e-15)


def test_resample_counts_draw_with_replacement() -> None:
    counts = resample_counts(7, n_resamples=500, seed=5)
    assert counts.shape == (500, 7) and (counts.sum(axis=1) == 7).all() and counts.min() >= 0
    assert (counts == resample_counts(7, 500, seed=5)).all() and not (counts == resample_counts(7, 500, 6)).all()
    assert (counts.max(axis=1) >= 2).mean() > 0.9  # 1 - 7!/7^7 = 99.4% of draws repeat an image
    assert counts.mean(axis=0) == pytest.approx(np.ones(7), abs=0.1)  # each image drawn once on average


def write_run(folder: Path, annotations: Path, detections: list[dict] | None, value: float, seed: int = 0) -> Path:
    """A finished run folder with its results.json and, unless None, its val_detections.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
    results = {"status": "finished", "run_name": folder.name, "metrics": {"val/mAP": value, "val/mAP50": value},
               "val_annotations": str(annotations)}
    (folder / "results.json").write_text(json.dumps(results))
    if detections is not None:
        (folder / "val_detections.json").write_text(json.dumps(detections))
    return folder


def test_bootstrap_runs_reads_run_folders(tmp_path: Path) -> None:
    images, annotations, detections = random_dataset(seed=4, n_images=30)
    ann_file = tmp_path / "val.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    full = pycocotools_on_draw(images, annotations, detections, list(range(30)))[0]
    good = write_run(tmp_path / "sweep" / "0_a", ann_file, detections, full)
    write_run(tmp_path / "sweep" / "1_b", ann_file, None, 0.2)
    write_run(tmp_path / "sweep" / "2_c", ann_file, [{"image_id": 100, "category_id": 1, "bbox": [1, 2, 3]}], 0.2)
    write_run(tmp_path / "sweep" / "3_d", ann_file, [{**detections[0], "image_id": 5}], 0.2)
    result = bootstrap_runs(load_runs(tmp_path / "sweep"), "val/mAP", n_resamples=40, seed=0)
    boot = result.by_run[good]
    assert boot.point == pytest.approx(full, rel=1e-12) and boot.reproduces_logged
    assert boot.values.shape == (40,) and boot.low <= full <= boot.high
    assert np.nanpercentile(boot.values, 2.5) == pytest.approx(boot.low)
    skipped = {folder.name: reason for folder, reason in result.skipped.items()}
    assert "no val_detections.json" in skipped["1_b"]
    assert "val_detections.json: entry 0: bbox is [1, 2, 3]" in skipped["2_c"]
    assert "image_id 5 is not in" in skipped["3_d"]
    assert result.seconds_per_resample() is not None
    with pytest.raises(ValueError, match="cannot be bootstrapped"):
        bootstrap_runs([], "val/mAP_s", 10)
