"""Tests of the synthetic dataset generator, COCO loading (and what it hands the evaluator) and collation."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtmdet_exp.data.collate import collate
from rtmdet_exp.data.coco import CocoDetection, DataError
from rtmdet_exp.data.synthetic import CLASS_NAMES, _render_image, ensure_synthetic_dataset
from rtmdet_exp.engine.evaluator import CocoEvaluator

SMALL = {"num_train": 8, "num_val": 4, "img_size": 128, "seed": 3}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("syn_small"), **SMALL)


@pytest.fixture(scope="module")
def moderate_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("syn_mod"), num_train=100, num_val=0, img_size=192)


def _tree_bytes(root: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ generator


def test_generator_is_deterministic_and_cached(tmp_path: Path, small_dataset: dict) -> None:
    other = ensure_synthetic_dataset(tmp_path / "again", **SMALL)
    a, b = _tree_bytes(small_dataset["root"]), _tree_bytes(other["root"])
    assert sorted(a) == sorted(b)
    assert len([k for k in a if k.endswith(".jpg")]) == SMALL["num_train"] + SMALL["num_val"]
    for name in a:
        assert a[name] == b[name], name

    # val is a different seed stream from train, and another seed gives other images
    assert a["images/train/000000.jpg"] != a["images/val/000000.jpg"]
    reseeded = ensure_synthetic_dataset(tmp_path / "seed4", **{**SMALL, "seed": 4, "num_val": 0})
    assert Path(reseeded["train_json"]).read_bytes() != a["annotations/instances_train.json"]

    # a finished cache is reused untouched; a missing marker or other parameters regenerate
    jpg = Path(other["train_images"]) / "000000.jpg"
    stamp = jpg.stat().st_mtime_ns
    ensure_synthetic_dataset(tmp_path / "again", **SMALL)
    assert jpg.stat().st_mtime_ns == stamp
    (tmp_path / "again" / "done.json").unlink()
    ensure_synthetic_dataset(tmp_path / "again", **SMALL)
    assert jpg.stat().st_mtime_ns != stamp
    ensure_synthetic_dataset(tmp_path / "again", **{**SMALL, "num_train": 3})
    assert json.loads((tmp_path / "again" / "done.json").read_text())["num_train"] == 3
    assert len(list(Path(other["train_images"]).glob("*.jpg"))) == 3


def test_parallel_generation_matches_serial(tmp_path: Path) -> None:
    args = {"num_train": 20, "num_val": 0, "img_size": 64, "seed": 1}  # 2 chunks of work
    serial = ensure_synthetic_dataset(tmp_path / "serial", num_workers=1, **args)
    parallel = ensure_synthetic_dataset(tmp_path / "parallel", num_workers=2, **args)
    assert _tree_bytes(serial["root"]) == _tree_bytes(parallel["root"])


def test_generator_refuses_foreign_folder_and_bad_args(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match="root"):
        ensure_synthetic_dataset(tmp_path, num_train=1, num_val=0, img_size=64)
    assert (tmp_path / "mine.txt").read_text() == "user data"
    with pytest.raises(ValueError, match="num_classes"):
        ensure_synthetic_dataset(tmp_path / "x", num_classes=11)
    with pytest.raises(ValueError, match="img_size"):
        ensure_synthetic_dataset(tmp_path / "x", img_size=8)


def test_annotations_match_pixels(small_dataset: dict) -> None:
    coco = json.loads(Path(small_dataset["train_json"]).read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
    checked_objects = 0
    for image in coco["images"]:
        index = image["id"] - 1
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        r = _render_image(SMALL["seed"], "train", index, SMALL["img_size"], 10, debug=True)
        assert len(anns) == len(r.masks)
        jpeg = cv2.imread(str(Path(small_dataset["train_images"]) / image["file_name"])).astype(np.float64)
        assert np.abs(jpeg - r.img).mean() < 5.0  # the file is the re-rendered image up to JPEG loss
        bg = r.background.astype(np.float64)
        untouched = (r.img == r.background).all(axis=-1)  # pixels no object or occluder covers
        assert np.abs(jpeg - bg)[untouched].mean() < 5.0
        for ann, mask, visible in zip(anns, r.masks, r.visible):
            ys, xs = np.nonzero(mask)
            tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == [int(v) for v in tight]
            assert ann["area"] == len(xs)
            assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 10
            assert not (visible & ~mask).any()
            assert visible.sum() >= 0.3 * mask.sum()  # kept objects are at most 70% hidden in-image
            if visible.sum() >= 40:
                # where the object shows, the file differs clearly from the scene without it
                change = np.abs(jpeg - bg)[visible].sum(axis=-1).mean()
                assert change > 20.0, (image["file_name"], ann)
                checked_objects += 1
    assert checked_objects >= 10


def test_dataset_statistics(moderate_dataset: dict) -> None:
    ds = CocoDetection(moderate_dataset["train_images"], moderate_dataset["train_json"])
    size = 192
    assert len(ds) == 100 and ds.num_classes == 10
    counts, sides, labels, overlapping = [], [], set(), 0
    for i in range(len(ds)):
        ann = ds.get_ann(i)
        boxes = ann["boxes"].astype(np.float64)
        counts.append(len(boxes))
        labels.update(ann["labels"].tolist())
        sides.extend(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).tolist())
        for j in range(len(boxes)):
            for k in range(j + 1, len(boxes)):
                iw = min(boxes[j, 2], boxes[k, 2]) - max(boxes[j, 0], boxes[k, 0])
                ih = min(boxes[j, 3], boxes[k, 3]) - max(boxes[j, 1], boxes[k, 1])
                overlapping += iw > 0 and ih > 0
    assert labels == set(range(10))
    assert min(sides) < 12 and max(sides) > 0.5 * size
    assert min(counts) == 0 and max(counts) >= 30
    assert overlapping > 0
    assert 5 < np.mean(counts) < 25


# ------------------------------------------------------------------------------------------ COCO


def _write_coco(tmp_path: Path, images: list[dict], annotations: list[dict]) -> Path:
    categories = [{"id": 42, "name": "c42"}, {"id": 3, "name": "c3"}, {"id": 7, "name": "c7"}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def coco_files(tmp_path: Path) -> Path:
    blue = np.zeros((30, 40, 3), np.uint8)
    blue[..., 0] = 255  # BGR: pure blue
    cv2.imwrite(str(tmp_path / "a.png"), blue)
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((20, 10, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "c.png"), np.zeros((20, 10, 3), np.uint8))
    images = [
        {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 11, "file_name": "b.png", "width": 10, "height": 20},
        {"id": 12, "file_name": "c.png", "width": 10, "height": 20},
    ]
    nan = float("nan")
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [5, 6, 10, 8], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 20, 20], "iscrowd": 1},  # crowd
        {"id": 3, "image_id": 10, "category_id": 42, "bbox": [35, 20, 10, 20], "iscrowd": 0},  # clipped
        {"id": 4, "image_id": 10, "category_id": 3, "bbox": [1, 1, 0, 5], "iscrowd": 0},  # zero width
        {"id": 5, "image_id": 10, "category_id": 3, "bbox": [1, nan, 4, 5], "iscrowd": 0},  # NaN
        {"id": 6, "image_id": 10, "category_id": 42, "bbox": [50, 2, 5, 5], "iscrowd": 0},  # outside
        {"id": 7, "image_id": 12, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1},  # only crowd
        {"id": 8, "image_id": 10, "category_id": 3, "bbox": [2.5, 3.5, 1.5, 2.0], "iscrowd": 0},
    ]
    return _write_coco(tmp_path, images, annotations)


def test_coco_loading_edge_cases(coco_files: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(coco_files.parent, coco_files)
    assert ds.num_dropped_boxes == 3
    assert len([r for r in caplog.records if "dropped 3" in r.getMessage()]) == 1
    assert ds.num_classes == 3
    assert ds.label_to_cat_id == [3, 7, 42]
    assert ds.cat_id_to_label == {3: 0, 7: 1, 42: 2}
    assert ds.class_names == ["c3", "c7", "c42"]
    assert len(ds) == 3  # the empty image and the crowd-only image are kept

    s = ds[0]
    assert s["image_id"] == 10 and s["ori_shape"] == (30, 40)
    assert s["img"].dtype == np.uint8 and s["img"].shape == (30, 40, 3)
    assert (s["img"][..., 0] == 255).all() and (s["img"][..., 1:] == 0).all()  # BGR order kept
    expected = np.array([[5, 6, 15, 14], [35, 20, 40, 30], [2.5, 3.5, 4.0, 5.5]], np.float32)
    assert s["boxes"].dtype == np.float32 and s["labels"].dtype == np.int64
    np.testing.assert_array_equal(s["boxes"], expected)
    np.testing.assert_array_equal(s["labels"], [1, 2, 0])

    for i in (1, 2):
        ann = ds.get_ann(i)
        assert ann["boxes"].shape == (0, 4) and ann["labels"].shape == (0,)
    assert ds.get_ann(1)["ori_shape"] == (20, 10)

    filtered = CocoDetection(coco_files.parent, coco_files, filter_empty=True)
    assert [filtered.get_ann(i)["image_id"] for i in range(len(filtered))] == [10]
    excluded = CocoDetection(coco_files.parent, coco_files, exclude_ids={10, 12})
    assert [excluded.get_ann(i)["image_id"] for i in range(len(excluded))] == [11]


def test_coco_pipeline_is_applied(coco_files: Path) -> None:
    def pipeline(sample: dict) -> dict:
        return {**sample, "boxes": sample["boxes"] * 2, "seen": True}

    ds = CocoDetection(coco_files.parent, coco_files, pipeline=pipeline)
    s = ds[0]
    assert s["seen"]
    np.testing.assert_array_equal(s["boxes"][0], [10, 12, 30, 28])
    np.testing.assert_array_equal(ds.get_ann(0)["boxes"][0], [5, 6, 15, 14])  # the cache is untouched


def test_cached_images_are_the_decoded_files(small_dataset: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = CocoDetection(small_dataset["train_images"], small_dataset["train_json"])
    files = [cv2.imread(str(ds.image_path(i)), cv2.IMREAD_COLOR) for i in range(len(ds))]
    ds.cache_images(threads=2)
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: None)  # any decode from here on would fail
    for i, img in enumerate(files):
        assert np.array_equal(ds.load_image(i), img), i
        assert np.array_equal(ds[i]["img"], img)


def test_caching_images_that_do_not_fit_in_memory_is_refused(small_dataset: dict,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import rtmdet_exp.data.coco as coco_module

    ds = CocoDetection(small_dataset["train_images"], small_dataset["train_json"])
    need = 8 * 128 * 128 * 3  # SMALL: 8 training images of 128 x 128
    monkeypatch.setattr(coco_module, "available_memory_bytes", lambda: 2 * need - 2)
    with pytest.raises(DataError, match=r"data\.cache_images=true: the 8 images .* set data\.cache_images=false"):
        ds.cache_images()
    monkeypatch.setattr(coco_module, "available_memory_bytes", lambda: 2 * need)
    ds.cache_images()  # exactly half of the available memory still fits


def test_coco_missing_or_broken_image_raises(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    images = [
        {"id": 5, "file_name": "missing.jpg", "width": 8, "height": 8},
        {"id": 6, "file_name": "broken.jpg", "width": 8, "height": 8},
    ]
    ds = CocoDetection(tmp_path, _write_coco(tmp_path, images, []))
    with pytest.raises(DataError, match=r"missing\.jpg.*image_id 5"):
        ds[0]
    with pytest.raises(DataError, match=r"broken\.jpg.*image_id 6"):
        ds[1]
    assert issubclass(DataError, ValueError)
    assert ds.get_ann(0)["boxes"].shape == (0, 4)  # annotations need no image file


def test_coco_unknown_category_raises(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}]
    bad = [{"id": 1, "image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2], "iscrowd": 0}]
    with pytest.raises(DataError, match="99"):
        CocoDetection(tmp_path, _write_coco(tmp_path, images, bad))


# ------------------------------------------------------------------------------------------ collate


def test_collate_pads_by_hand() -> None:
    img_a = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    img_b = 200 - img_a
    a = {
        "img": img_a,
        "boxes": np.array([[1, 2, 3, 4], [0, 0, 5, 4]], np.float32),
        "labels": np.array([3, 0], np.int64),
        "image_id": 7,
        "ori_shape": (40, 50),
    }
    b = {
        "img": img_b,
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros((0,), np.int64),
        "image_id": 9,
        "ori_shape": (8, 10),
        "img_shape": (2, 5),
        "scale_factor": (0.5, 0.25),
        "pad_offset": (0, 1),
    }
    batch = collate([a, b])
    img = batch["images"]
    assert img.dtype == torch.uint8 and img.shape == (2, 3, 4, 5)
    for y in range(4):
        for x in range(5):
            for c in range(3):
                assert img[0, c, y, x] == img_a[y, x, c] and img[1, c, y, x] == img_b[y, x, c]
    assert batch["boxes"].dtype == torch.float32 and batch["boxes"].shape == (2, 2, 4)
    assert batch["boxes"].tolist() == [[[1, 2, 3, 4], [0, 0, 5, 4]], [[0, 0, 0, 0], [0, 0, 0, 0]]]
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [[3, 0], [-1, -1]]
    assert batch["mask"].dtype == torch.bool and batch["mask"].tolist() == [[True, True], [False, False]]
    meta = batch["meta"]
    assert meta["image_id"].tolist() == [7, 9]
    assert meta["ori_shape"].tolist() == [[40, 50], [8, 10]]
    assert meta["img_shape"].tolist() == [[4, 5], [2, 5]]  # identity: the image's own shape
    assert meta["scale_factor"].tolist() == [[1.0, 1.0], [0.5, 0.25]]
    assert meta["pad_offset"].tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_collate_all_empty_and_errors() -> None:
    empty = {"img": np.zeros((4, 4, 3), np.uint8), "boxes": np.zeros((0, 4)), "labels": [], "image_id": 1}
    batch = collate([empty, empty])
    assert batch["boxes"].shape == (2, 1, 4) and batch["labels"].tolist() == [[-1], [-1]]
    assert not batch["mask"].any()
    other = {**empty, "img": np.zeros((4, 6, 3), np.uint8)}
    with pytest.raises(ValueError, match="one size"):
        collate([empty, other])
    with pytest.raises(ValueError, match="image_id"):
        collate([{k: v for k, v in empty.items() if k != "image_id"}])
    with pytest.raises(ValueError, match="empty"):
        collate([])


# ------------------------------------------------------------------------------------------ loader vs. issue 12


def _one_image_coco(tmp_path: Path, annotations: list[dict], name: str = "ann.json") -> Path:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 40, 3), np.uint8))
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 40}], "annotations": annotations,
            "categories": [{"id": 7, "name": "c7"}]}
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return path


def _perfect_map(ds: CocoDetection) -> float:
    """COCO mAP of detections equal to the ground truth boxes (score 0.9); 1.0 by definition."""
    evaluator = CocoEvaluator(ds.coco, ds.label_to_cat_id, ds.class_names)
    ann = ds.get_ann(0)
    evaluator.update([{"boxes": ann["boxes"], "scores": np.full(len(ann["labels"]), 0.9), "labels": ann["labels"]}],
                     [ann["image_id"]])
    return evaluator.compute()["mAP"]


def test_loader_fills_what_the_evaluator_reads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without iscrowd and area, pycocotools' COCOeval raised KeyError: 'iscrowd' after an epoch."""
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 6]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20, 20, 8, 8], "area": 50.0}]
    with caplog.at_level(logging.WARNING, logger="rtmdet_exp.data.coco"):
        ds = CocoDetection(tmp_path, _one_image_coco(tmp_path, anns))
    assert [(a["iscrowd"], a["area"]) for a in ds.coco.dataset["annotations"]] == [(0, 60.0), (0, 50.0)]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "2 of 2 annotations have no 'iscrowd'" in warnings[0]
    assert "1 of 2 annotations have no 'area'" in warnings[1]
    assert _perfect_map(ds) == pytest.approx(1.0)


def test_loader_annotation_id_zero_still_matches(tmp_path: Path) -> None:
    """COCOeval counts a match with ground truth id 0 as a miss (its match table uses 0 for "none"):
    a perfect detection of annotation 0 scores 0 in plain pycocotools; through the loader, 1."""
    anns = [{"id": 0, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 6], "area": 60, "iscrowd": 0}]
    path = _one_image_coco(tmp_path, anns)
    raw = COCO()
    raw.dataset = json.loads(path.read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        raw.createIndex()
        dt = raw.loadRes([{"image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 6], "score": 0.9}])
        plain = COCOeval(raw, dt, "bbox")
        plain.evaluate(), plain.accumulate(), plain.summarize()
    assert plain.stats[0] == 0.0
    ds = CocoDetection(tmp_path, path)
    assert [a["id"] for a in ds.coco.dataset["annotations"]] == [1]
    assert _perfect_map(ds) == pytest.approx(1.0)


@pytest.mark.parametrize("change, words", [
    ({"image_id": 10**30}, "annotation id 1: 'image_id' refers to image id 1000000000000000000000000000000"),
    ({"id": 10**30}, "annotation id 1000000000000000000000000000000: 'id' is beyond the int64 range"),
    ({"bbox": "1 2 3 4"}, "annotation id 1: 'bbox' must be a list of 4 numbers"),
    ({"iscrowd": "yes"}, "annotation id 1: 'iscrowd' must be 0 or 1, got a string ('yes')"),
    ({"category_id": 7.0}, "annotation id 1: 'category_id' must be an integer, got a float (7.0)"),
])
def test_loader_names_entries_it_cannot_use(tmp_path: Path, change: dict, words: str) -> None:
    """With data.validate=false the loader still checks the entries, and names them (no OverflowError,
    KeyError or TypeError from deep inside)."""
    ann = {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 6], "area": 60, "iscrowd": 0, **change}
    path = _one_image_coco(tmp_path, [ann])
    with pytest.raises(DataError) as err:
        CocoDetection(tmp_path, path)
    assert str(err.value).startswith(f"{path}: 1 problem in the annotations that the loader cannot work around")
    assert words in str(err.value)


def test_loader_image_ids_beyond_int64(tmp_path: Path) -> None:
    path = _one_image_coco(tmp_path, [{"id": 1, "image_id": 10**30, "category_id": 7, "bbox": [2, 3, 10, 6]}])
    coco = json.loads(path.read_text())
    coco["images"][0]["id"] = 10**30
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"image id 1000000000000000000000000000000: 'id' is beyond the int64 range"):
        CocoDetection(tmp_path, path)
    assert len(CocoDetection(tmp_path, path, exclude_ids={10**30})) == 0  # on_error=skip leaves it out


def test_loader_reads_any_unicode_encoding_and_repairs_box_values(tmp_path: Path) -> None:
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 6]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10**400, 6]},  # beyond float: inf, dropped
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [50, 3, 10, 6]}]  # outside: dropped
    path = _one_image_coco(tmp_path, anns)
    path.write_bytes(path.read_text().encode("utf-16"))
    ds = CocoDetection(tmp_path, path)
    assert ds.num_dropped_boxes == 2
    np.testing.assert_array_equal(ds.get_ann(0)["boxes"], [[2, 3, 12, 9]])
