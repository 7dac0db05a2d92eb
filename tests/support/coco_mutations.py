"""Mutations of a small COCO dataset, broken or odd but valid, for the annotation fuzz test.

The fixed catalogue built from them is in tests/integration/test_annotation_fuzz.py. A
:class:`Case` names one mutation of one split (``train`` or ``val``) of a copy of the dataset:
its bytes (encodings, truncation, nesting), its layout, one entry (a field set to a wrong type,
NaN, inf, a negative or huge number, deleted), ids (beyond int64, repeated, dangling) or one image
file (empty, cut short, another size, not an image). Applying it returns an :class:`Expect`: a
clean run, or an error whose message holds every needle (the file name and, where there is one,
the id and the field). Targets are drawn from a generator seeded per case, so the list is the
same on every machine and every run.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from PIL import Image

SPLITS = ("train", "val")
MISSING = "<missing>"  # a field value meaning: delete the key
BIG = 10**30  # an id beyond int64, as in the issue
NAN, INF = math.nan, math.inf


@dataclass(frozen=True)
class Expect:
    """A clean run (``ok``) whose log holds ``needles``, or an error whose message holds them."""

    ok: bool
    needles: tuple[str, ...] = ()


OK = Expect(True)


def jname(split: str) -> str:
    return f"instances_{split}2017.json"


@dataclass
class Work:
    """A case's copy of the dataset: the parsed jsons (mutated in place) and raw bytes that replace them."""

    root: Path
    coco: dict[str, Any]
    raw: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def copy_of(cls, source: Path, root: Path) -> Work:
        (root / "annotations").mkdir(parents=True)
        for split in SPLITS:
            shutil.copytree(source / f"{split}2017", root / f"{split}2017")
        coco = {s: json.loads((source / "annotations" / jname(s)).read_text()) for s in SPLITS}
        return cls(root, coco)

    def image_path(self, split: str, entry: dict) -> Path:
        return self.root / f"{split}2017" / entry["file_name"]

    def write(self) -> None:
        for split in SPLITS:
            data = self.raw.get(split)
            if data is None:
                data = json.dumps(self.coco[split]).encode()
            (self.root / "annotations" / jname(split)).write_bytes(data)


Mutate = Callable[[Work, str, np.random.Generator], Expect]


@dataclass(frozen=True)
class Case:
    """One mutation of one split; ``on_error`` is the run's ``data.on_error``, ``cli`` marks the
    cases that also go through ``python run.py``."""

    name: str
    split: str
    mutate: Mutate
    seed: int
    on_error: str = "raise"
    cli: bool = False

    def apply(self, work: Work) -> Expect:
        expect = self.mutate(work, self.split, np.random.default_rng(self.seed))
        work.write()
        return expect


def _set(entry: dict, key: str, value: Any) -> None:
    if value is MISSING:
        entry.pop(key, None)
    else:
        entry[key] = value


def _pick(items: list, rng: np.random.Generator) -> tuple[int, Any]:
    k = int(rng.integers(len(items)))
    return k, items[k]


# ----------------------------------------------------------------------------------------------
# Whole-file mutations
# ----------------------------------------------------------------------------------------------


def encoded(encoding: str, bom: bytes = b"") -> Mutate:
    """The same json in another Unicode encoding (valid: read as is)."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        w.raw[split] = bom + json.dumps(w.coco[split]).encode(encoding)
        return OK
    return mutate


def latin1_name(name: str, codec: str) -> Mutate:
    """A category name with a non-ASCII letter, the file written in a legacy 8-bit codec."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        w.coco[split]["categories"][0]["name"] = name
        w.raw[split] = json.dumps(w.coco[split], ensure_ascii=False).encode(codec)
        return Expect(False, (jname(split), "not UTF-8", "line"))
    return mutate


def raw(make: Callable[[bytes, np.random.Generator], bytes], *needles: str) -> Mutate:
    """Bytes made from the valid json's bytes; an error naming the file and ``needles``."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        w.raw[split] = make(json.dumps(w.coco[split]).encode(), rng)
        return Expect(False, (jname(split), *needles))
    return mutate


def truncated(fraction: float) -> Mutate:
    return raw(lambda data, rng: data[: int(len(data) * fraction)], "not valid JSON", "line")


def replace_top(value: Any, *needles: str) -> Mutate:
    """Top level replaced by another json value."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        w.coco[split] = value
        return Expect(False, (jname(split), *needles))
    return mutate


def layout(key: str, value: Any, *needles: str) -> Mutate:
    """One of the three lists replaced (or deleted with MISSING)."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        _set(w.coco[split], key, value)
        return Expect(False, (jname(split), *needles))
    return mutate


def big_number(w: Work, split: str, rng: np.random.Generator) -> Expect:
    """An area of 5000 digits: more than Python converts (sys.get_int_max_str_digits)."""
    w.coco[split]["annotations"][0]["area"] = "@BIG@"
    w.raw[split] = json.dumps(w.coco[split]).encode().replace(b'"@BIG@"', b"9" * 5000)
    return Expect(False, (jname(split), "number"))


def lone_surrogate(where: str) -> Mutate:
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        if where == "images":
            k, entry = _pick(w.coco[split]["images"], rng)
            entry["file_name"] = "a\ud800.jpg"
            return Expect(False, (jname(split), f"images[{k}].file_name", "surrogate"))
        w.coco[split]["categories"][1]["name"] = "b\udc00"
        return Expect(False, (jname(split), "categories[1].name", "surrogate"))
    return mutate


def emptied(key: str, *needles: str, ok: bool = False) -> Mutate:
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        w.coco[split][key] = []
        if key == "images":
            w.coco[split]["annotations"] = []
        return OK if ok else Expect(False, (jname(split), *needles))
    return mutate


def non_ascii_names(w: Work, split: str, rng: np.random.Generator) -> Expect:
    """UTF-8 names with accents and CJK in both splits (valid)."""
    for s in SPLITS:
        w.coco[s]["categories"][0]["name"] = "café ☕ 猫"
    return OK


# ----------------------------------------------------------------------------------------------
# Entry mutations
# ----------------------------------------------------------------------------------------------


def ann_field(key: str, value: Any, ok: bool = False, needle: str = "") -> Mutate:
    """One annotation's ``key`` set to ``value`` (or deleted)."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        k, ann = _pick(w.coco[split]["annotations"], rng)
        ann_id = ann["id"]
        _set(ann, key, value)
        if ok:
            return Expect(True, (needle,) if needle else ())
        if key == "id":
            if isinstance(value, int) and not isinstance(value, bool):  # an integer out of range
                return Expect(False, (jname(split), f"annotation id {value}", "'id'", "int64"))
            return Expect(False, (jname(split), f"annotations[{k}]", "'id'"))
        return Expect(False, (jname(split), f"annotation id {ann_id}", f"'{key}'", *([needle] if needle else [])))
    return mutate


def ann_replaced(value: Any) -> Mutate:
    """One annotation replaced by a value that is not an object."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        k, _ = _pick(w.coco[split]["annotations"], rng)
        w.coco[split]["annotations"][k] = value
        return Expect(False, (jname(split), f"annotations[{k}]"))
    return mutate


def all_anns(key: str, value: Any, needle: str) -> Mutate:
    """Every annotation of the split gets ``key`` = ``value`` (or loses it): valid, logged."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        for ann in w.coco[split]["annotations"]:
            _set(ann, key, value)
        return Expect(True, (needle,) if needle else ())
    return mutate


def image_field(key: str, value: Any, ok: bool = False, needle: str = "") -> Mutate:
    """One image entry's ``key`` set to ``value`` (or deleted)."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        k, img = _pick(w.coco[split]["images"], rng)
        image_id, name = img["id"], img["file_name"]
        _set(img, key, value)
        if ok:
            return OK
        if key == "id":
            return Expect(False, (jname(split), f"images[{k}]", "'id'"))
        if needle:  # a problem of the file on disk: its path names it
            return Expect(False, (name if key != "file_name" else str(value), f"image id {image_id}", needle))
        return Expect(False, (jname(split), f"image id {image_id}", f"'{key}'"))
    return mutate


def image_id_everywhere(new_id: int, ok: bool) -> Mutate:
    """An image's id changed in its entry and in its annotations (ids used consistently)."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        _, img = _pick(w.coco[split]["images"], rng)
        old, img["id"] = img["id"], new_id
        for ann in w.coco[split]["annotations"]:
            if ann["image_id"] == old:
                ann["image_id"] = new_id
        return OK if ok else Expect(False, (jname(split), f"image id {new_id}", "'id'", "int64"))
    return mutate


def category_id_everywhere(new_id: int, ok: bool) -> Mutate:
    """A category's id changed in ``categories`` and its annotations; valid ids in both splits."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        k, cat = _pick(w.coco[split]["categories"], rng)
        old = cat["id"]
        for s in SPLITS if ok else (split,):
            w.coco[s]["categories"][k]["id"] = new_id
            for ann in w.coco[s]["annotations"]:
                if ann["category_id"] == old:
                    ann["category_id"] = new_id
        return OK if ok else Expect(False, (jname(split), f"categories[{k}]", "'id'", "int64"))
    return mutate


def duplicate(list_key: str) -> Mutate:
    """Two entries of ``list_key`` with one id."""
    noun = {"images": "image", "annotations": "annotation", "categories": "category"}[list_key]
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        entries = w.coco[split][list_key]
        a, b = (int(i) for i in rng.choice(len(entries), 2, replace=False))
        entries[b]["id"] = entries[a]["id"]
        return Expect(False, (jname(split), f"{noun} id {entries[a]['id']} appears 2 times"))
    return mutate


def cat_field(key: str, value: Any, needle: str = "") -> Mutate:
    """One category's ``key`` set to ``value`` (or deleted); any category fault is file-level."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        k, cat = _pick(w.coco[split]["categories"], rng)
        _set(cat, key, value)
        return Expect(False, (jname(split), f"categories[{k}]", needle or f"'{key}'"))
    return mutate


def cat_replaced(value: Any) -> Mutate:
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        k, _ = _pick(w.coco[split]["categories"], rng)
        w.coco[split]["categories"][k] = value
        return Expect(False, (jname(split), f"categories[{k}]"))
    return mutate


def duplicate_cat_name(w: Work, split: str, rng: np.random.Generator) -> Expect:
    cats = w.coco[split]["categories"]
    cats[2]["name"] = cats[5]["name"]
    return Expect(False, (jname(split), f"category name {cats[5]['name']!r} appears 2 times"))


def both_splits(change: Callable[[dict], None]) -> Mutate:
    """A valid change applied to both splits alike (categories must agree between them)."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        for s in SPLITS:
            change(w.coco[s])
        return OK
    return mutate


def no_sizes(w: Work, split: str, rng: np.random.Generator) -> Expect:
    """An image entry without width and height (valid: the file's size is used)."""
    _, img = _pick(w.coco[split]["images"], rng)
    del img["width"], img["height"]
    return OK


def skipped(mutate: Mutate) -> Mutate:
    """The same fault in a run with data.on_error=skip: the run goes on, and the log says what it skips."""
    def wrapped(w: Work, split: str, rng: np.random.Generator) -> Expect:
        mutate(w, split, rng)
        return Expect(True, ("skipping",))
    return wrapped


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# ----------------------------------------------------------------------------------------------
# Image files
# ----------------------------------------------------------------------------------------------


def image_file(change: Callable[[Path, np.random.Generator], None], needle: str = "", ok: bool = False) -> Mutate:
    """One image file changed on disk; the entry in the json stays as it was."""
    def mutate(w: Work, split: str, rng: np.random.Generator) -> Expect:
        _, img = _pick(w.coco[split]["images"], rng)
        path = w.image_path(split, img)
        change(path, rng)
        return OK if ok else Expect(False, (path.name, f"image id {img['id']}", *([needle] if needle else [])))
    return mutate


def cut(n: int) -> Callable[[Path, np.random.Generator], None]:
    """The file without its last ``n`` bytes (n = 0: without its second half)."""
    def change(path: Path, rng: np.random.Generator) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - n] if n else data[: len(data) // 2])
    return change


def reencode(ext: str, gray: bool = False) -> Callable[[Path, np.random.Generator], None]:
    """The same pixels in another format, under the old name (decoders sniff the content)."""
    def change(path: Path, rng: np.random.Generator) -> None:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
        path.write_bytes(cv2.imencode(ext, img)[1].tobytes())
    return change


def resized(w: int, h: int) -> Callable[[Path, np.random.Generator], None]:
    return lambda p, rng: p.write_bytes(cv2.imencode(".jpg", np.full((h, w, 3), 90, np.uint8))[1].tobytes())


def as_ico(path: Path, rng: np.random.Generator) -> None:
    """An ICO file: PIL reads it, OpenCV (the loader's decoder) does not."""
    Image.open(path).convert("RGB").save(path, format="ICO")


def to_dir(path: Path, rng: np.random.Generator) -> None:
    path.unlink()
    path.mkdir()
