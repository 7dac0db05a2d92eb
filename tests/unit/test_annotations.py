"""Reading a COCO annotation file: encodings, broken JSON and layouts each get a message naming the
file and what was expected; the category count of the data.num_classes resolver; COCO defaults;
the entry rules (ids in int64, no bools as numbers, categories) as the dataset check applies them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rtmdet_exp.data.annotations import (
    INT64_MAX, INT64_MIN, AnnotationFileError, count_categories, describe_defaults, fill_coco_defaults, read_coco_json,
)
from rtmdet_exp.data.problems import DatasetError
from rtmdet_exp.data.validate import validate_coco

COCO = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0}],
    "categories": [{"id": 3, "name": "Zürich"}, {"id": 5, "name": "猫"}],
}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "instances.json"


def _error(path: Path) -> AnnotationFileError:
    with pytest.raises(AnnotationFileError) as info:
        read_coco_json(path)
    err = info.value
    assert isinstance(err, DatasetError) and str(err).startswith(f"{path}: ") and err.path == str(path)
    return err


@pytest.mark.parametrize("encoding, bom", [
    ("utf-8", b""), ("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"),
    ("utf-32-le", b"\xff\xfe\x00\x00"), ("utf-32-be", b"\x00\x00\xfe\xff"), ("utf-16-le", b""),
])
def test_unicode_encodings_are_read(path: Path, encoding: str, bom: bytes) -> None:
    path.write_bytes(bom + json.dumps(COCO, ensure_ascii=False).encode(encoding))
    assert read_coco_json(path) == COCO


def test_latin1_bytes_are_located(path: Path) -> None:
    text = json.dumps(COCO, indent=1, ensure_ascii=False)
    path.write_bytes(text.encode("latin-1", errors="replace"))
    line_no = next(i for i, line in enumerate(text.splitlines(), 1) if "Zürich" in line)
    column = text.splitlines()[line_no - 1].index("ü") + 1  # the byte position: all earlier chars are ASCII
    err = _error(path)
    assert err.what.startswith(f"is not UTF-8 text: byte 0xfc at line {line_no}, column {column} ")
    assert err.kind == "not UTF-8"


@pytest.mark.parametrize("data, words", [
    (b"", "annotation file is empty (0 bytes)"),
    (b" \n\t ", "annotation file holds only whitespace"),
    (b'{"images": [', "not valid JSON: Expecting value at line 1, column 13 (the file ends early: is it truncated?)"),
    (b'{"images": []\n "annotations": []}', "is not valid JSON: Expecting ',' delimiter at line 2, column 2"),
    (b"[" * 100_000 + b"]" * 100_000, "nests arrays or objects too deeply"),
    (b'{"area": ' + b"7" * 5000 + b"}", "holds a number that cannot be read"),
    (b'{"images": [{"file_name": "a\\ud800.jpg"}]}', "images[0].file_name holds an unpaired UTF-16 surrogate"),
])
def test_unreadable_content(path: Path, data: bytes, words: str) -> None:
    path.write_bytes(data)
    assert words in _error(path).what


def test_valid_surrogate_pair_is_text(path: Path) -> None:
    coco = json.loads(json.dumps(COCO))
    coco["categories"][0]["name"] = "\U0001f431"  # written as the escape pair \ud83d\udc31
    path.write_text(json.dumps(coco))
    assert "\\ud83d\\udc31" in path.read_text()
    assert read_coco_json(path)["categories"][0]["name"] == "\U0001f431"


@pytest.mark.parametrize("content, words", [
    ([COCO], "the top level is a list of 1, expected an object with 'images', 'annotations' and 'categories'"),
    (None, "the top level is null"),
    (3, "the top level is an int (3)"),
    ({**COCO, "categories": 5}, "'categories' is an int (5), expected a list of category objects"),
    ({**COCO, "images": {"a": 1}}, "'images' is an object with keys ['a'], expected a list of image objects"),
    ({**COCO, "annotations": True}, "'annotations' is a bool (true), expected a list of annotation objects"),
    ({k: v for k, v in COCO.items() if k != "annotations"}, "no 'annotations' list"),
])
def test_not_a_coco_layout(path: Path, content: object, words: str) -> None:
    path.write_text(json.dumps(content))
    err = _error(path)
    assert err.what.startswith("not a COCO instances file: ") and words in err.what and err.kind == "not COCO"


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert _error(tmp_path / "nope.json").what == "annotation file does not exist"
    assert _error(tmp_path).what == "annotation path is not a file"


def test_count_categories(path: Path) -> None:
    path.write_text(json.dumps(COCO))
    assert count_categories(path) == 2


@pytest.mark.parametrize("content, words", [
    ({**COCO, "categories": 5}, "'categories' is an int (5), expected a list of category objects"),
    ({**COCO, "categories": []}, "'categories' is an empty list"),
    ([1, 2], "the top level is a list of 2"),
])
def test_count_categories_names_key_and_file(path: Path, content: object, words: str) -> None:
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError) as info:
        count_categories(path)
    assert str(info.value).startswith(f"data.train_json: {path}: ") and words in str(info.value)


def test_count_categories_missing_file_names_the_options(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data.val_json: file not found: .*nope.json \(set data.val_json=\.\.\. "
                                           r"or data.num_classes=\.\.\.\)"):
        count_categories(tmp_path / "nope.json", key="data.val_json")


def test_count_categories_reads_a_utf16_file(path: Path) -> None:
    """The case of issue 12: a UTF-16 file was refused with a message naming no file."""
    path.write_bytes(json.dumps(COCO).encode("utf-16"))
    assert count_categories(path) == 2


def test_fill_coco_defaults() -> None:
    anns = [
        {"id": 1, "bbox": [0, 0, 3, 5]},
        {"id": 2, "bbox": [1.5, 2, 0.5, 4.0], "iscrowd": 1},
        {"id": 3, "bbox": [0, 0, 3, 5], "area": 7.0},
    ]
    counts = fill_coco_defaults(anns)
    assert counts == {"iscrowd": 2, "area": 2}
    assert [a["iscrowd"] for a in anns] == [0, 1, 0]
    assert [a["area"] for a in anns] == [15.0, 2.0, 7.0]  # 3*5, 0.5*4, kept
    lines = describe_defaults(counts, 3)
    assert lines[0].startswith("2 of 3 annotations have no 'iscrowd': COCO's default 0")
    assert lines[1].startswith("2 of 3 annotations have no 'area': the bbox area w*h is used")
    assert describe_defaults({"iscrowd": 0, "area": 0}, 3) == []


def test_nan_literals_are_values_not_errors(path: Path) -> None:
    """NaN/Infinity literals are read (Python's json accepts them); the entry checks report them."""
    path.write_text(json.dumps({**COCO, "annotations": [{**COCO["annotations"][0], "area": math.nan}]}))
    assert math.isnan(read_coco_json(path)["annotations"][0]["area"])


# ----------------------------------------------------------------------------------------------
# Entry rules (rtmdet_exp.data.coco_checks, through validate_coco without image files)
# ----------------------------------------------------------------------------------------------


def _coco(num_images: int = 2) -> dict:
    """Two 8x8 images with one box each, categories 3 and 5."""
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in range(1, num_images + 1)],
        "annotations": [{"id": 10 + i, "image_id": i, "category_id": 3, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0}
                        for i in range(1, num_images + 1)],
        "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}],
    }


def _problems(path: Path, coco: dict) -> list:
    path.write_text(json.dumps(coco))
    return validate_coco(path, path.parent, check_images=False).problems


def test_ids_at_the_int64_limits_are_valid(path: Path) -> None:
    coco = _coco()
    coco["images"][0]["id"] = coco["annotations"][0]["image_id"] = INT64_MIN
    coco["annotations"][1]["id"] = INT64_MAX
    coco["categories"][1]["id"] = INT64_MAX
    coco["annotations"][1]["category_id"] = INT64_MAX
    assert _problems(path, coco) == []


def test_ids_beyond_int64_are_named(path: Path) -> None:
    coco = _coco()
    coco["images"][0]["id"] = coco["annotations"][0]["image_id"] = 10**30  # used consistently, as in issue 12
    coco["annotations"][1]["id"] = INT64_MAX + 1
    coco["categories"][1]["id"] = INT64_MIN - 1
    by_severity = {p.severity: p for p in _problems(path, coco)}
    assert set(by_severity) == {"file", "image", "annotation"}
    assert str(by_severity["image"]).endswith(f"image id {10**30}: 'id' is beyond the int64 range "
                                              f"[{INT64_MIN}, {INT64_MAX}]; ids must fit 64-bit integers")
    assert by_severity["annotation"].ann_id == INT64_MAX + 1
    assert "'id' is beyond the int64" in str(by_severity["annotation"])
    assert by_severity["file"].what.startswith(f"categories[1]: 'id' {INT64_MIN - 1} is beyond the int64 range")


@pytest.mark.parametrize("where, key, expected", [
    ("images", "id", ("file", "images[0] is not an object with an integer 'id' (got a bool (true))")),
    ("images", "width", ("image", "'width' and 'height' must both be integers in 1..2147483647")),
    ("annotations", "image_id", ("annotation", "'image_id' must be an integer, got a bool (true)")),
    ("annotations", "category_id", ("annotation", "'category_id' must be an integer, got a bool (true)")),
    ("annotations", "area", ("annotation", "'area' must be a finite number >= 0, got a bool (true)")),
    ("categories", "id", ("file", "categories[0] is not an object with an integer 'id' (got a bool (true))")),
])
def test_bools_are_not_numbers(path: Path, where: str, key: str, expected: tuple[str, str]) -> None:
    coco = _coco()
    coco[where][0][key] = True  # (an image or category without a usable id leaves its annotations dangling too)
    problems = _problems(path, coco)
    assert [p for p in problems if p.severity == expected[0] and expected[1] in p.what], problems


def test_boolean_iscrowd_and_bbox_of_bools(path: Path) -> None:
    coco = _coco()
    coco["annotations"][0]["iscrowd"] = True  # true/false mean exactly 1/0: accepted
    coco["annotations"][1]["bbox"] = [True, 1, 2, 2]
    [p] = _problems(path, coco)
    assert p.ann_id == 12 and "'bbox' must be a list of 4 numbers" in p.what


@pytest.mark.parametrize("value, words", [
    (10**30, "width=1000000000000000000000000000000"), (2**31, "width=2147483648"), (8.5, "width=8.5"),
    (math.nan, "width=nan"), (0, "width=0"), ("8", "width='8'"),
])
def test_image_sides(path: Path, value: object, words: str) -> None:
    coco = _coco()
    coco["images"][1]["width"] = value
    [p] = _problems(path, coco)
    assert (p.severity, p.image_id) == ("image", 2) and words in p.what and "'width' and 'height'" in p.what


def test_category_faults_are_file_level(path: Path) -> None:
    coco = _coco()
    coco["categories"][0]["name"] = 7
    coco["categories"].append({"id": 9, "name": "b"})  # "b" twice
    deep: object = "x"
    for _ in range(17):
        deep = [deep]
    coco["categories"].append({"id": 11, "name": "c", "keypoints": deep})  # the category nests 18 levels
    coco["categories"].append({"id": 13, "name": "d", "skeleton": [[1, 2], [2, 3]]})  # shallow extras are fine
    problems = _problems(path, coco)
    assert all(p.severity == "file" for p in problems) and len(problems) == 3
    text = "\n".join(p.what for p in problems)
    assert "categories[0] (id 3): 'name' must be a string, got an int (7)" in text
    assert "categories[3] (id 11) nests lists/objects more than 16 levels deep" in text
    assert "category name 'b' appears 2 times in 'categories'" in text


def test_missing_iscrowd_and_area_are_notes_not_problems(path: Path) -> None:
    coco = _coco(num_images=3)
    for ann in coco["annotations"]:
        del ann["iscrowd"]
    del coco["annotations"][2]["area"]
    path.write_text(json.dumps(coco))
    report = validate_coco(path, path.parent, check_images=False)
    assert report.ok and report.notes == [
        "3 of 3 annotations have no 'iscrowd': COCO's default 0 (not a crowd region) is used",
        "1 of 3 annotations have no 'area': the bbox area w*h is used (COCO evaluation sorts boxes into "
        "small/medium/large by it)",
    ]
    assert report.format().splitlines()[1:] == [f"note: {n}" for n in report.notes]


def test_unreadable_file_report(path: Path) -> None:
    path.write_text('{"images": 1, "annotations": [], "categories": []}')
    report = validate_coco(path, path.parent)
    assert not report.readable and report.count("file") == 1
    assert report.format() == (f"{path} cannot be read as a COCO instances file:\n  {path}: not a COCO instances file: "
                               "'images' is an int (1), expected a list of image objects")
