"""Dataset validator: every fault is found and named; check_split raises or skips; a fuzz test."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from rtmdet_exp.data.validate import DatasetError, Problem, ValidationReport, check_split, validate_coco

SIZE = 16  # every test image is SIZE x SIZE
FILES = ("a.jpg", "b.png", "c.jpg", "d.png")  # image ids 1..4
# (ann id, image id, category id, [x, y, w, h]) all inside their 16x16 image, categories 1 and 3.
ANNS = (
    (10, 1, 1, [1.0, 1.0, 5.0, 6.0]),
    (11, 1, 3, [8.0, 2.0, 7.5, 4.0]),
    (12, 2, 1, [0.0, 0.0, 16.0, 16.0]),
    (13, 2, 3, [3.0, 9.0, 2.0, 2.0]),
    (14, 3, 3, [4.5, 4.5, 1.0, 1.0]),
    (15, 3, 1, [10.0, 10.0, 5.0, 5.0]),
    (16, 4, 1, [2.0, 12.0, 9.0, 3.0]),
    (17, 4, 3, [12.0, 0.0, 3.0, 9.0]),
)


def base_coco() -> dict:
    """A valid COCO instances dict over FILES."""
    return {
        "images": [{"id": i + 1, "file_name": f, "width": SIZE, "height": SIZE} for i, f in enumerate(FILES)],
        "annotations": [
            {"id": a, "image_id": i, "category_id": c, "bbox": list(b), "area": b[2] * b[3], "iscrowd": 0}
            for a, i, c, b in ANNS
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
    }


def write_images(img_dir: Path, rng: np.random.Generator) -> None:
    img_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        cv2.imwrite(str(img_dir / name), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def write_json(path: Path, coco: object) -> None:
    path.write_text(json.dumps(coco))  # json.dumps writes NaN/Infinity literals, as broken tools do


@pytest.fixture
def ds(tmp_path: Path) -> tuple[Path, Path]:
    """A valid dataset on disk: (annotation json, image folder)."""
    img_dir = tmp_path / "images"
    write_images(img_dir, np.random.default_rng(0))
    ann = tmp_path / "train.json"
    write_json(ann, base_coco())
    return ann, img_dir


def only(report: ValidationReport) -> Problem:
    assert len(report.problems) == 1, report.format()
    return report.problems[0]


# ----------------------------------------------------------------------------------------------
# One test per fault
# ----------------------------------------------------------------------------------------------


def test_valid_dataset_has_no_problems(ds: tuple[Path, Path]) -> None:
    report = validate_coco(*ds)
    assert report.ok and report.problems == []
    assert (report.num_images, report.num_annotations) == (4, 8)
    assert report.bad_image_ids == set() and report.bad_ann_ids == set() and report.image_ids == {1, 2, 3, 4}


def test_valid_variants_have_no_problems(ds: tuple[Path, Path]) -> None:
    """Boxes partly outside the image (the loader clips them), integral float sizes, missing
    width/height, crowd boxes, a progressive JPEG and a JPEG with restart markers are all fine."""
    ann, img_dir = ds
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    cv2.imwrite(str(img_dir / "a.jpg"), img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    cv2.imwrite(str(img_dir / "c.jpg"), img, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])
    coco = base_coco()
    coco["annotations"][0]["bbox"] = [-3.0, -2.0, 5.0, 4.0]  # x2 = 2 > 0, y2 = 2 > 0
    coco["annotations"][1]["bbox"] = [14.0, 15.0, 10.0, 10.0]  # starts inside, ends outside
    coco["annotations"][2]["iscrowd"] = 1
    coco["images"][1]["width"] = 16.0
    del coco["images"][2]["width"], coco["images"][2]["height"]
    write_json(ann, coco)
    report = validate_coco(ann, img_dir)
    assert report.ok, report.format()


def test_undecodable_image(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    (img_dir / "b.png").write_bytes(np.random.default_rng(2).bytes(300))
    p = only(validate_coco(ann, img_dir))
    assert (p.severity, p.image_id, p.ann_id) == ("image", 2, None)
    assert "b.png" in str(p) and "image id 2" in str(p) and "decoded" in p.what


@pytest.mark.parametrize("name, cut", [("c.jpg", 1), ("c.jpg", 200), ("b.png", 1), ("b.png", 300)])
def test_truncated_image(ds: tuple[Path, Path], name: str, cut: int) -> None:
    """A file cut short is reported, even a JPEG that OpenCV would decode with a grey rest."""
    ann, img_dir = ds
    data = (img_dir / name).read_bytes()
    (img_dir / name).write_bytes(data[: len(data) - cut])
    p = only(validate_coco(ann, img_dir))
    assert (p.severity, p.image_id) == ("image", FILES.index(name) + 1) and name in str(p)


def test_zero_byte_image(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    (img_dir / "c.jpg").write_bytes(b"")
    p = only(validate_coco(ann, img_dir))
    assert (p.severity, p.image_id, p.what) == ("image", 3, "image file is empty (0 bytes)")


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "BMP", "TIFF"])
def test_formats_pil_reads_are_judged_by_opencv(ds: tuple[Path, Path], fmt: str) -> None:
    """PIL reads ICO and TGA, which OpenCV (the loader's decoder) may not: what OpenCV cannot read
    is reported, whatever PIL says."""
    ann, img_dir = ds
    path = img_dir / "b.png"
    Image.fromarray(np.full((SIZE, SIZE, 3), 200, np.uint8)).save(path, format=fmt)
    readable = cv2.imread(str(path), cv2.IMREAD_COLOR) is not None
    report = validate_coco(ann, img_dir)
    assert report.ok == readable, report.format()
    if not readable:
        assert only(report).image_id == 2 and "could not be decoded" in only(report).what


def test_missing_image_file(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    (img_dir / "c.jpg").unlink()
    report = validate_coco(ann, img_dir)
    p = only(report)
    assert (p.severity, p.image_id) == ("image", 3) and "does not exist" in p.what
    assert str(p).startswith(str(img_dir / "c.jpg"))
    assert report.bad_image_ids == {3}


def test_image_size_differs_from_json(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    cv2.imwrite(str(img_dir / "d.png"), np.zeros((SIZE + 8, SIZE, 3), np.uint8))  # 16 wide, 24 high
    p = only(validate_coco(ann, img_dir))
    assert (p.severity, p.image_id) == ("image", 4)
    assert "16x24" in p.what and "16x16" in p.what and "d.png" in str(p)


@pytest.mark.parametrize("bbox", [[1.0, 1.0, 0.0, 3.0], [1.0, 1.0, 3.0, -2.0], [1.0, 1.0, -1.0, -1.0]])
def test_zero_or_negative_box_size(ds: tuple[Path, Path], bbox: list[float]) -> None:
    ann, img_dir = ds
    coco = base_coco()
    coco["annotations"][3]["bbox"] = bbox  # annotation 13 of image 2
    write_json(ann, coco)
    report = validate_coco(ann, img_dir)
    p = only(report)
    assert (p.severity, p.image_id, p.ann_id) == ("annotation", 2, 13)
    assert "image id 2, annotation id 13" in str(p) and "train.json" in str(p) and "negative" in p.what
    assert report.bad_ann_ids == {13} and report.bad_image_ids == set()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("index", [0, 3])
def test_non_finite_coordinates(ds: tuple[Path, Path], value: float, index: int) -> None:
    ann, img_dir = ds
    coco = base_coco()
    coco["annotations"][6]["bbox"][index] = value  # annotation 16
    write_json(ann, coco)
    p = only(validate_coco(ann, img_dir))
    assert (p.severity, p.ann_id) == ("annotation", 16) and "non-finite" in p.what
    assert "annotation id 16" in str(p)


@pytest.mark.parametrize(
    "bbox",
    [
        [16.0, 2.0, 3.0, 3.0],  # starts at the right edge x = W
        [2.0, 20.0, 3.0, 3.0],  # below the image
        [-5.0, 2.0, 5.0, 3.0],  # ends at the left edge x2 = 0
        [2.0, -9.0, 3.0, 4.0],  # ends above the image y2 = -5
        [1e12, 1e12, 1.0, 1.0],
    ],
)
def test_box_outside_image(ds: tuple[Path, Path], bbox: list[float]) -> None:
    ann, img_dir = ds
    coco = base_coco()
    coco["annotations"][4]["bbox"] = bbox  # annotation 14 of image 3
    write_json(ann, coco)
    p = only(validate_coco(ann, img_dir))
    assert (p.severity, p.image_id, p.ann_id) == ("annotation", 3, 14) and "outside the 16x16 image" in p.what


def test_box_outside_image_uses_decoded_size_without_json_size(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    coco = base_coco()
    del coco["images"][0]["width"], coco["images"][0]["height"]
    coco["annotations"][0]["bbox"] = [17.0, 1.0, 2.0, 2.0]
    write_json(ann, coco)
    p = only(validate_coco(ann, img_dir))
    assert p.ann_id == 10 and "outside" in p.what
    assert validate_coco(ann, img_dir, check_images=False).ok  # size unknown: nothing to compare


def test_unknown_category_id(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    coco = base_coco()
    coco["annotations"][7]["category_id"] = 2  # categories are 1 and 3
    write_json(ann, coco)
    p = only(validate_coco(ann, img_dir))
    assert (p.severity, p.image_id, p.ann_id) == ("annotation", 4, 17)
    assert "unknown category id 2" in p.what and "annotation id 17" in str(p)


def test_unknown_image_id_and_missing_keys(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    coco = base_coco()
    coco["annotations"][0]["image_id"] = 99
    del coco["annotations"][1]["bbox"]
    coco["annotations"][2]["area"] = -4.0
    coco["annotations"][3]["bbox"] = [1, 2, 3]
    coco["annotations"][4]["category_id"] = "3"
    del coco["annotations"][5]["image_id"]
    write_json(ann, coco)
    report = validate_coco(ann, img_dir)
    by_ann = {p.ann_id: p.what for p in report.problems}
    assert set(by_ann) == {10, 11, 12, 13, 14, 15} and report.bad_ann_ids == {10, 11, 12, 13, 14, 15}
    assert "'image_id' refers to image id 99" in by_ann[10] and "no 'bbox'" in by_ann[11]
    assert "'area' must be a finite number >= 0, got a float (-4.0)" in by_ann[12]
    assert "[1, 2, 3]" in by_ann[13] and "'category_id' must be an integer, got a string ('3')" in by_ann[14]
    assert "'image_id' must be an integer, got missing" in by_ann[15]
    assert all(p.severity == "annotation" for p in report.problems)


def test_empty_annotation_file(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    ann.write_bytes(b"")
    p = only(validate_coco(ann, img_dir))
    assert (p.severity, p.file) == ("file", str(ann)) and "empty" in p.what and "train.json" in str(p)


def test_missing_annotation_file(tmp_path: Path) -> None:
    p = only(validate_coco(tmp_path / "nope.json", tmp_path))
    assert p.severity == "file" and "nope.json" in str(p) and "does not exist" in p.what


def test_not_json(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    ann.write_text('{"images": [')
    p = only(validate_coco(ann, img_dir))
    assert p.severity == "file" and "not valid JSON" in p.what


@pytest.mark.parametrize(
    "content, words",
    [
        ([1, 2, 3], "the top level is a list of 3, expected an object"),
        ("images", "the top level is a string ('images')"),
        ({"annotations": [], "categories": []}, "no 'images' list"),
        ({"images": {}, "annotations": [], "categories": []}, "'images' is an object with keys [], expected a list"),
        ({"images": [], "annotations": [], "categories": 5}, "'categories' is an int (5), expected a list of category"),
    ],
)
def test_json_that_is_not_coco(ds: tuple[Path, Path], content: object, words: str) -> None:
    ann, img_dir = ds
    write_json(ann, content)
    report = validate_coco(ann, img_dir)
    p = only(report)
    assert p.severity == "file" and words in p.what and "not a COCO instances file" in p.what


def test_no_images(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    coco = base_coco()
    coco["images"], coco["annotations"] = [], []
    write_json(ann, coco)
    p = only(validate_coco(ann, img_dir))
    assert p.severity == "file" and "no images" in p.what


def test_malformed_entries(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    coco = base_coco()
    coco["images"][0]["id"] = "1"  # no usable id: nothing can skip it
    coco["images"][1]["file_name"] = 7
    coco["images"][2]["height"] = -16
    coco["images"].append(dict(coco["images"][3]))  # image id 4 twice
    coco["annotations"][7]["id"] = 16  # annotation id 16 twice
    write_json(ann, coco)
    report = validate_coco(ann, img_dir)
    kinds = {(p.severity, p.image_id, p.ann_id) for p in report.problems}
    assert ("file", None, None) in kinds and "images[0]" in str(report.problems[0])
    assert {("image", 2, None), ("image", 3, None), ("image", 4, None), ("annotation", None, 16)} <= kinds
    assert report.bad_image_ids == {2, 3, 4} and 16 in report.bad_ann_ids
    assert [p.severity for p in report.problems] == sorted(
        (p.severity for p in report.problems), key=["file", "image", "annotation"].index
    )


def test_workers_and_full_decode_agree(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    (img_dir / "a.jpg").write_bytes(b"<html>not found</html>")
    (img_dir / "d.png").unlink()
    serial = [str(p) for p in validate_coco(ann, img_dir).problems]
    assert len(serial) == 2
    assert [str(p) for p in validate_coco(ann, img_dir, workers=3).problems] == serial
    assert [p.image_id for p in validate_coco(ann, img_dir, full_decode=True).problems] == [1, 4]


def test_header_check_agrees_with_opencv_on_byte_flips(tmp_path: Path) -> None:
    """Flip bytes of small JPEG/PNG files: every file that OpenCV (the loader's decoder) cannot
    read at the json's size is reported, in both modes; the only other reports are JPEGs whose
    structure is damaged (no end marker where one should be), and they are rare."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    ann = tmp_path / "one.json"
    for name, params in [("x.jpg", []), ("x.png", []), ("p.jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])]:
        path = img_dir / name
        cv2.imwrite(str(path), img, params)
        data = path.read_bytes()
        coco = base_coco()
        coco["images"], coco["annotations"] = [{"id": 1, "file_name": name, "width": SIZE, "height": SIZE}], []
        write_json(ann, coco)
        missed, extra, flips = [], [], 0
        for k in range(0, len(data), 2):
            flipped = bytearray(data)
            flipped[k] ^= int(rng.integers(1, 256))
            path.write_bytes(bytes(flipped))
            decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
            readable = decoded is not None and decoded.shape[:2] == (SIZE, SIZE)
            for full_decode in (False, True):
                report = validate_coco(ann, img_dir, full_decode=full_decode)
                flips += 1
                if report.ok and not readable:
                    missed.append((k, full_decode))
                elif not report.ok and readable:
                    extra.append(report.problems[0].what)
        assert missed == [], f"{name}: unreadable files not reported at (byte, full_decode) {missed}"
        assert all("end-of-image marker" in what for what in extra), extra
        assert len(extra) <= 0.03 * flips, f"{name}: {len(extra)} of {flips} readable files reported"


# ----------------------------------------------------------------------------------------------
# check_split
# ----------------------------------------------------------------------------------------------


def _two_problems(ann: Path, img_dir: Path) -> None:
    (img_dir / "b.png").unlink()
    coco = base_coco()
    coco["annotations"][0]["category_id"] = 5
    write_json(ann, coco)


def test_check_split_raises_with_the_full_list(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    _two_problems(ann, img_dir)
    with pytest.raises(DatasetError) as err:
        check_split(ann, img_dir, skip=False, split="train")
    msg = str(err.value)
    assert msg.startswith(f"data validation found 2 problems in train split ({ann})")
    assert msg.endswith("fix them, or pass data.on_error=skip to skip the bad images and annotations")
    assert "b.png: image id 2: image file does not exist" in msg
    assert "image id 1, annotation id 10: 'category_id': unknown category id 5 (categories: [1, 3])" in msg


def test_check_split_skip_logs_each_problem_once(ds: tuple[Path, Path], caplog: pytest.LogCaptureFixture,
                                                 tmp_path: Path) -> None:
    ann, img_dir = ds
    _two_problems(ann, img_dir)
    with caplog.at_level(logging.WARNING, logger="rtmdet_exp.data.validate"):
        skipped = check_split(ann, img_dir, skip=True, split="val", report_file=tmp_path / "problems.txt")
    assert skipped.image_ids == {2} and skipped.ann_ids == {10}
    lines = [r.getMessage() for r in caplog.records]
    assert sum("b.png" in m for m in lines) == 1 and sum("annotation id 10" in m for m in lines) == 1
    assert any(re.search(r"2 problems; skipping 1 of 4 images and 1 of 8 annotations", m) for m in lines)
    assert "unknown category id 5" in (tmp_path / "problems.txt").read_text()


def test_check_split_skip_ids_beyond_int64(ds: tuple[Path, Path]) -> None:
    """Issue 12: ids of 10**30 passed validation and crashed the loader; now they are named, and
    skippable."""
    ann, img_dir = ds
    coco = base_coco()
    coco["images"][1]["id"] = 10**30
    for a in coco["annotations"]:
        a["image_id"] = 10**30 if a["image_id"] == 2 else a["image_id"]
    coco["annotations"][0]["id"] = -(2**63) - 1
    write_json(ann, coco)
    with pytest.raises(DatasetError, match=r"image id 1000000000000000000000000000000: 'id' is beyond the int64"):
        check_split(ann, img_dir, skip=False, split="train")
    skipped = check_split(ann, img_dir, skip=True, split="train")
    assert skipped.image_ids == {10**30} and skipped.ann_ids == {-(2**63) - 1}


def test_check_split_clean_returns_nothing(ds: tuple[Path, Path]) -> None:
    assert check_split(*ds, skip=False, split="train").count == 0


@pytest.mark.parametrize("skip", [False, True])
def test_check_split_file_problems_always_raise(ds: tuple[Path, Path], skip: bool) -> None:
    ann, img_dir = ds
    write_json(ann, [])
    with pytest.raises(DatasetError, match=r"data validation found 1 problem in train split") as err:
        check_split(ann, img_dir, skip=skip, split="train")
    assert str(err.value).endswith("data.on_error=skip cannot skip them; fix them")


def test_missing_image_folder_is_one_file_level_problem(ds: tuple[Path, Path], tmp_path: Path) -> None:
    ann, _ = ds
    p = only(validate_coco(ann, tmp_path / "no_such_folder"))
    assert p.severity == "file" and "no_such_folder" in p.what and "does not exist" in p.what
    assert validate_coco(ann, tmp_path / "no_such_folder", check_images=False).ok


def test_check_split_skip_refuses_when_every_image_is_bad(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    for name in FILES:
        (img_dir / name).write_bytes(b"")
    with pytest.raises(DatasetError, match="every image of the train split is bad"):
        check_split(ann, img_dir, skip=True, split="train")


def test_format_caps_the_list(ds: tuple[Path, Path]) -> None:
    ann, img_dir = ds
    coco = base_coco()
    coco["annotations"] = [
        {"id": 100 + k, "image_id": 1, "category_id": 1, "bbox": [1.0, 1.0, 0.0, 1.0], "area": 0.0, "iscrowd": 0}
        for k in range(250)
    ]
    write_json(ann, coco)
    report = validate_coco(ann, img_dir)
    text = report.format(max_lines=200)
    assert len(report.problems) == 250
    assert "annotation id 299:" in text and "annotation id 300:" not in text  # the first 200: ids 100..299
    assert "annotation id 349:" in report.format(max_lines=None)
    assert text.splitlines()[-1].strip() == "... and 50 more"
    assert "non-positive bbox size: 250" in text


# ----------------------------------------------------------------------------------------------
# Fuzz: 200 corrupted datasets, each corruption must be named; clean ones must pass
# ----------------------------------------------------------------------------------------------

# An expectation: (severity, image id or None, annotation id or None, text the problem line must hold).
Expect = tuple[str, "int | None", "int | None", str]


def _odd_value(rng: np.random.Generator) -> object:
    """A json value of the wrong type for an id, a size or a box."""
    choices = ["7", None, True, 1.5, [1], {"a": 1}, -0.5, "", "NaN"]
    return choices[int(rng.integers(len(choices)))]


def _corrupt_json_wide(rng: np.random.Generator, coco: dict, ann: Path) -> Expect:
    """Break the whole annotation file; the json is written here."""
    kind = int(rng.integers(6))
    if kind == 0:  # random bytes
        ann.write_bytes(rng.bytes(int(rng.integers(0, 80))))
    elif kind == 1:  # truncated text: any strict prefix of a json object is invalid
        text = json.dumps(coco)
        ann.write_text(text[: int(rng.integers(0, len(text)))])
    elif kind == 2:
        del coco[("images", "annotations", "categories")[int(rng.integers(3))]]
        write_json(ann, coco)
    elif kind == 3:
        coco[("images", "annotations", "categories")[int(rng.integers(3))]] = _odd_value(rng)
        write_json(ann, coco)
    elif kind == 4:
        write_json(ann, [coco, 1, "x", None, 3.5][int(rng.integers(1, 5))] if rng.random() < 0.8 else [coco])
    else:
        coco["images" if rng.random() < 0.5 else "categories"] = []
        write_json(ann, coco)
    return ("file", None, None, ann.name)


def _corrupt_image_entry(rng: np.random.Generator, coco: dict, pool: list[int]) -> Expect:
    """Break one image entry taken from ``pool`` (a duplicate id takes a second one)."""
    index = pool.pop()
    img = coco["images"][index]
    image_id = img["id"]
    kind = int(rng.integers(6))
    if kind == 0:  # no usable id
        if rng.random() < 0.5:
            del img["id"]
        else:
            img["id"] = _odd_value(rng)
        return ("file", None, None, f"images[{index}]")
    if kind == 1:
        coco["images"][index] = _odd_value(rng)
        return ("file", None, None, f"images[{index}]")
    if kind == 2:
        if rng.random() < 0.5:
            del img["file_name"]
        else:
            img["file_name"] = [3, "", None, ["a.jpg"]][int(rng.integers(4))]
        return ("image", image_id, None, f"image id {image_id}")
    if kind == 3:  # a bad size, or only one of width/height
        key = "width" if rng.random() < 0.5 else "height"
        if rng.random() < 0.3:
            del img[key]
        else:
            img[key] = [0, -SIZE, math.nan, math.inf, "16", 16.5, None, True, 10**400][int(rng.integers(9))]
        return ("image", image_id, None, f"image id {image_id}")
    if kind == 4:  # a plausible but wrong size: the file disagrees
        img["width" if rng.random() < 0.5 else "height"] = int(rng.integers(SIZE + 1, 5000))
        return ("image", image_id, None, img["file_name"])
    if not pool:
        img["width"] = 0
        return ("image", image_id, None, f"image id {image_id}")
    coco["images"][pool.pop()]["id"] = image_id  # two entries with one id
    return ("image", image_id, None, f"image id {image_id}")


def _corrupt_image_file(rng: np.random.Generator, path: Path, image_id: int) -> Expect:
    data = path.read_bytes()
    kind = int(rng.integers(6))
    if kind == 0:
        path.unlink()
    elif kind == 1:  # random bytes instead of an image
        path.write_bytes(rng.bytes(int(rng.integers(0, 400))))
    elif kind == 2:  # random bytes over the signature
        n = int(rng.integers(1, 9))
        head = bytearray(rng.bytes(n))
        head[0] = data[0] ^ int(rng.integers(1, 256))
        path.write_bytes(bytes(head) + data[n:])
    elif kind == 3:  # truncated anywhere
        path.write_bytes(data[: int(rng.integers(0, len(data) - 1))])
    elif kind == 4:  # other dimensions
        h, w = (SIZE, SIZE + int(rng.integers(1, 9))) if rng.random() < 0.5 else (SIZE + int(rng.integers(1, 9)), SIZE)
        path.unlink()
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    else:
        path.write_text("<html><body>404 not found</body></html>")
    return ("image", image_id, None, path.name)


def _corrupt_annotation(rng: np.random.Generator, coco: dict, pool: list[int]) -> Expect:
    """Break one annotation taken from ``pool`` (a duplicate id takes a second one)."""
    index = pool.pop()
    ann = coco["annotations"][index]
    ann_id = ann["id"]
    expect = ("annotation", ann_id, f"annotation id {ann_id}")
    kind = int(rng.integers(12))
    box = ann["bbox"]
    if kind == 0:
        del ann["id"]
        return ("file", None, None, f"annotations[{index}]")
    if kind == 1:
        coco["annotations"][index] = _odd_value(rng)
        return ("file", None, None, f"annotations[{index}]")
    if kind == 2:  # (a missing area or iscrowd is no fault: COCO defaults fill them)
        del ann[("image_id", "category_id", "bbox")[int(rng.integers(3))]]
    elif kind == 3:
        key = ("image_id", "category_id", "bbox", "area", "iscrowd")[int(rng.integers(5))]
        value = _odd_value(rng)
        ann[key] = "7" if key == "iscrowd" and value is True else value  # True is a valid iscrowd
    elif kind == 4:  # malformed box lists
        ann["bbox"] = [box[:3], box + [1.0], box[:2] + ["3", 4.0], [True, 1.0, 2.0, 2.0], [box]][int(rng.integers(5))]
    elif kind == 5:
        box[int(rng.integers(4))] = [math.nan, math.inf, -math.inf][int(rng.integers(3))]
    elif kind == 6:  # zero or negative width/height
        box[2 + int(rng.integers(2))] = -float(rng.uniform(0, 1e6)) if rng.random() < 0.7 else 0.0
    elif kind == 7:  # starts right of / below the image
        box[int(rng.integers(2))] = float(rng.uniform(SIZE, 1e12))
    elif kind == 8:  # ends left of / above the image
        k = int(rng.integers(2))
        box[k] = -box[k + 2] - float(rng.uniform(0, 100))
    elif kind == 9:
        ann["category_id"] = int(rng.choice([0, 2, 4, 99, -1, 10**6]))
    elif kind == 10:
        ann["image_id"] = int(rng.choice([0, 5, 99, -3]))
    elif pool:
        coco["annotations"][pool.pop()]["id"] = ann_id  # two annotations with one id
    else:
        ann["category_id"] = 2
    return (expect[0], None, expect[1], expect[2])


def _found(report: ValidationReport, expect: Expect) -> bool:
    severity, image_id, ann_id, text = expect
    return any(
        p.severity == severity
        and (image_id is None or p.image_id == image_id)
        and (ann_id is None or p.ann_id == ann_id)
        and text in str(p)
        for p in report.problems
    )


def test_fuzz_corrupted_datasets(tmp_path: Path) -> None:
    rng = np.random.default_rng(2024)
    num_corrupted = 0
    case = 0
    while num_corrupted < 200:
        case += 1
        root = tmp_path / f"case{case}"
        img_dir = root / "images"
        write_images(img_dir, rng)
        ann = root / "ann.json"
        coco = base_coco()
        clean = case % 8 == 0
        expects: list[Expect] = []
        if clean:
            write_json(ann, coco)
        elif rng.random() < 0.2:
            expects.append(_corrupt_json_wide(rng, coco, ann))
        else:
            # 1-3 faults on distinct images / annotations, so none can hide another.
            images = [int(i) for i in rng.permutation(len(FILES))]
            anns = [int(i) for i in rng.permutation(len(ANNS))]
            for _ in range(int(rng.integers(1, 4))):
                target = int(rng.integers(3))
                if target == 0 and images:
                    expects.append(_corrupt_image_entry(rng, coco, images))
                elif target == 1 and images:
                    i = images.pop()
                    expects.append(_corrupt_image_file(rng, img_dir / FILES[i], i + 1))
                else:
                    expects.append(_corrupt_annotation(rng, coco, anns))
            write_json(ann, coco)

        report = validate_coco(ann, img_dir)  # must never raise
        text = report.format()
        if clean:
            assert report.ok, f"case {case}: clean dataset reported:\n{text}"
            continue
        num_corrupted += 1
        assert not report.ok and text
        for expect in expects:
            assert _found(report, expect), f"case {case}: expected {expect}, got:\n{report.format(None)}"
        for p in report.problems:
            assert p.severity in ("file", "image", "annotation") and p.what
            assert str(p).startswith(p.file) and Path(p.file).name in str(p)
