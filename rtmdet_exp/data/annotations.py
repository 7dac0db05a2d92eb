"""Reading a COCO instances json, the one way every part of rtmdet-exp reads it.

:func:`read_coco_json` returns the parsed dict or raises :class:`AnnotationFileError` (a
:class:`~rtmdet_exp.data.problems.DatasetError`) whose message names the file and says what was
expected: a missing or empty file, bytes that are not text (JSON is UTF-8; a UTF-8, UTF-16 or
UTF-32 byte-order mark is accepted), JSON cut short (with its line and column), nesting too deep
for the parser, an integer longer than Python converts, an unpaired UTF-16 surrogate escape
(``"\\ud800"``, which is no character and breaks any later print of it), or a top level that is
not an object holding ``images``, ``annotations`` and ``categories`` lists.

:func:`count_categories` is what the ``data.num_classes`` resolver calls. :func:`fill_coco_defaults`
gives annotations without ``iscrowd`` or ``area`` the values COCO tools assume (0, and the bbox
area w*h), so that the evaluator's ground truth has every field pycocotools reads.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from rtmdet_exp.data.problems import DatasetError

__all__ = [
    "AnnotationFileError", "read_coco_json", "count_categories", "fill_coco_defaults", "describe_defaults",
    "is_int", "is_int64", "is_number", "as_float", "short", "describe_value", "INT64_MIN", "INT64_MAX",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LISTS = {"images": "image", "annotations": "annotation", "categories": "category"}
# A JSON string escape of a UTF-16 surrogate; json.loads joins valid pairs, lone ones stay.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class AnnotationFileError(DatasetError):
    """An annotation file that cannot be read as a COCO instances json; ``what`` says why and
    ``kind`` is a short category for report counts."""

    def __init__(self, path: str | os.PathLike, what: str, kind: str = "unreadable annotation file") -> None:
        self.path, self.what, self.kind = str(path), what, kind
        super().__init__(f"{self.path}: {what}")

    def __reduce__(self) -> tuple:  # picklable (e.g. across processes) despite the extra arguments
        return type(self), (self.path, self.what, self.kind)


# ----------------------------------------------------------------------------------------------
# JSON values (a json can hold anything where a number is expected: bools, strings, huge ints, NaN)
# ----------------------------------------------------------------------------------------------


def is_int(v: Any) -> bool:
    """A json integer (``true``/``false`` are bools in json, never ids or counts)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_int64(v: Any) -> bool:
    """A json integer that fits int64, as ids must (tensors and numpy arrays hold them)."""
    return is_int(v) and INT64_MIN <= v <= INT64_MAX


def is_number(v: Any) -> bool:
    """A json number (int or float, NaN and infinities included; not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def as_float(v: Any) -> float:
    """A json number as float; ints too large for a float become inf."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def short(v: Any, limit: int = 60) -> str:
    """repr of a json value, cut so that one bad value cannot flood a report.

    Integers too long for ``repr`` (over Python's digit limit) are shown by their size.
    """
    if is_int(v) and abs(v) >= 10**60:
        return f"{'-' if v < 0 else ''}an integer of about 10**{v.bit_length() * math.log10(2):.0f}"
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_value(v: Any) -> str:
    """A json value's type and (short) content, e.g. ``an int (5)``, ``an object``, ``null``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a bool ({str(v).lower()})"
    if isinstance(v, dict):
        return f"an object with keys {short(sorted(map(str, v))[:5])}"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    name = {int: "an int", float: "a float", str: "a string"}.get(type(v), type(v).__name__)
    return f"{name} ({short(v)})"


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def _decode(path: Path, data: bytes) -> str:
    """The file's text: UTF-8, or UTF-16/32 when a byte-order mark or the NUL pattern says so."""
    encoding = json.detect_encoding(data)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        if not encoding.startswith("utf-8"):
            what = (f"looks like {encoding.upper()} text but does not decode as it ({err.reason} at byte "
                    f"{err.start}); save it as UTF-8")
            raise AnnotationFileError(path, what, "not text") from None
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        what = (f"is not UTF-8 text: byte 0x{data[err.start]:02x} at line {line}, column {column} is not valid UTF-8 "
                "(JSON files must be UTF-8; was it saved as Latin-1 or Windows-1252?)")
        raise AnnotationFileError(path, what, "not UTF-8") from None


def _parse(path: Path, text: str) -> Any:
    """``json.loads`` with its failures worded: where the JSON breaks, too deep, too long a number."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        cut = " (the file ends early: is it truncated?)" if not text[err.pos:].strip() else ""
        what = f"is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}{cut}"
    except RecursionError:
        what = (f"nests arrays or objects too deeply for the JSON parser (about {sys.getrecursionlimit()} levels); "
                "a COCO file nests a few levels")
    except ValueError as err:  # an integer longer than sys.get_int_max_str_digits()
        what = f"holds a number that cannot be read ({err})"
    raise AnnotationFileError(path, what, "not JSON")


def _lone_surrogate(obj: Any) -> str | None:
    """JSON path of the first string (or key) holding an unpaired UTF-16 surrogate, else None."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((f"{where}.{key}" if where else str(key), key))
                stack.append((f"{where}.{key}" if where else str(key), item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "the top level"
    return None


def _check_layout(path: Path, coco: Any, keys: tuple[str, ...]) -> None:
    """A COCO file: an object holding a list under each of ``keys`` (of ``images``, ``annotations``, ``categories``)."""
    lists = ", ".join(f"'{k}'" for k in keys[:-1]) + f" and '{keys[-1]}'"
    if not isinstance(coco, dict):
        what = f"the top level is {describe_value(coco)}, expected an object with {lists} lists"
        raise AnnotationFileError(path, f"not a COCO instances file: {what}", "not COCO")
    for key, noun in ((k, LISTS[k]) for k in keys):
        if key not in coco:
            what = f"no '{key}' list (a COCO instances file holds {lists})"
        elif not isinstance(coco[key], list):
            what = f"'{key}' is {describe_value(coco[key])}, expected a list of {noun} objects"
        else:
            continue
        raise AnnotationFileError(path, f"not a COCO instances file: {what}", "not COCO")


def read_coco_json(path: str | os.PathLike, keys: tuple[str, ...] = tuple(LISTS)) -> dict:
    """The parsed COCO instances json at ``path``; :class:`AnnotationFileError` if it is not one.

    Only the file's layout is checked here (an object with a list under each of ``keys``: images,
    annotations and categories by default; an image-info file for inference has no annotations);
    the entries are checked by :mod:`rtmdet_exp.data.coco_checks`.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise AnnotationFileError(path, "annotation file does not exist", "annotation file missing")
        if not path.is_file():
            raise AnnotationFileError(path, "annotation path is not a file", "annotation file missing")
        data = path.read_bytes()
    except OSError as err:
        raise AnnotationFileError(path, f"annotation file could not be read ({err.strerror or err})") from None
    if not data.strip():
        raise AnnotationFileError(path, "annotation file is empty (0 bytes)" if not data else
                                  "annotation file holds only whitespace", "empty annotation file")
    text = _decode(path, data)
    coco = _parse(path, text)
    if _SURROGATE_ESCAPE.search(text):
        where = _lone_surrogate(coco)
        if where is not None:
            raise AnnotationFileError(path, f"{where} holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), "
                                            "which is not a character; fix the tool that wrote it", "not text")
    _check_layout(path, coco, keys)
    return coco


def count_categories(path: str | os.PathLike, key: str = "data.train_json") -> int:
    """Number of categories in the COCO json at ``path`` (the ``data.num_classes`` resolver).

    Raises :class:`DatasetError` naming the config ``key``, the file and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{key}: file not found: {path} (set {key}=... or data.num_classes=...)")
    try:
        coco = read_coco_json(path)
    except AnnotationFileError as err:
        raise DatasetError(f"{key}: {err}") from None
    if not coco["categories"]:
        raise DatasetError(f"{key}: {path}: 'categories' is an empty list; list the dataset's categories "
                           "as objects with an integer 'id' and a 'name'")
    return len(coco["categories"])


# ----------------------------------------------------------------------------------------------
# COCO defaults
# ----------------------------------------------------------------------------------------------


def fill_coco_defaults(annotations: list[dict]) -> dict[str, int]:
    """Fill what COCO tools assume when a field is left out, in place; return the counts.

    ``iscrowd`` defaults to 0 (an ordinary object, as pycocotools' ``loadRes`` sets for results);
    ``area`` to the bbox's w*h (the area of a box-only annotation). ``annotations`` must have
    passed the entry checks (dicts with a 4-number ``bbox``).
    """
    counts = {"iscrowd": 0, "area": 0}
    for ann in annotations:
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
            counts["iscrowd"] += 1
        if "area" not in ann:
            box = ann["bbox"]
            ann["area"] = float(box[2]) * float(box[3])
            counts["area"] += 1
    return counts


def describe_defaults(counts: dict[str, int], total: int) -> list[str]:
    """Sentences saying which defaults :func:`fill_coco_defaults` used and how often."""
    lines = []
    if counts.get("iscrowd"):
        lines.append(f"{counts['iscrowd']} of {total} annotations have no 'iscrowd': COCO's default 0 "
                     "(not a crowd region) is used")
    if counts.get("area"):
        lines.append(f"{counts['area']} of {total} annotations have no 'area': the bbox area w*h is used "
                     "(COCO evaluation sorts boxes into small/medium/large by it)")
    return lines
