"""``rtmdet_exp.predict ann=``: the annotation json is read like a training annotation file, so broken
files get worded errors naming the option and the file; an image-info json (no annotations, as
COCO test-dev ships) is accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtmdet_exp.cli.args import UsageError
from rtmdet_exp.cli.predict import read_ann

INFO = {"images": [{"id": 7, "file_name": "a.jpg", "width": 4, "height": 4}], "categories": [{"id": 3, "name": "x"}]}


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_image_info_file_without_annotations_is_accepted(tmp_path: Path, encoding: str) -> None:
    """UTF-16 with a byte-order mark decodes as training's reader decodes it."""
    path = tmp_path / "image_info.json"
    path.write_bytes(json.dumps(INFO).encode(encoding))
    assert read_ann(path)["images"][0]["id"] == 7


@pytest.mark.parametrize("content, expected", [
    (b"", r"empty \(0 bytes\)"),
    (json.dumps(INFO).encode()[:-9], r"not valid JSON: Unterminated string .* line 1, column 97"),
    (json.dumps(INFO).encode()[:-2], r"not valid JSON: .*\(the file ends early: is it truncated\?\)"),
    (b"\xe9" + json.dumps(INFO).encode(), r"not UTF-8 text: byte 0xe9 at line 1, column 1"),
    (json.dumps([INFO]).encode(), r"top level is a list"),
    (json.dumps({"images": INFO["images"]}).encode(), r"no 'categories' list"),
    (json.dumps({**INFO, "images": [{"id": 1}]}).encode(), r"each with id and file_name"),
])
def test_broken_files_name_the_option_and_the_file(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "ann.json"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=expected) as err:
        read_ann(path)
    assert str(err.value).startswith("ann: ") and str(path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^ann: .*missing.json: annotation file does not exist"):
        read_ann(tmp_path / "missing.json")
