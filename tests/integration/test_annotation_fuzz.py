"""Fuzz: a fixed list of broken COCO annotation sets goes through the path a run takes.

Every case of :data:`CASES` (tests/support/coco_mutations.py says what each mutation does) ends
in a clean run or in one of the project's documented errors whose message names the file and,
where there is one, the id and the field; any other exception (a traceback) fails the case, and
so does a clean run that was expected to fail or an error that names the wrong thing. In-process
cases take :func:`run_path`; the cases marked ``cli`` also run ``python run.py`` in a subprocess,
which must exit 0, or exit 2 with the names on stderr and no traceback anywhere.
"""

from __future__ import annotations

import copy
import functools
from functools import partial
import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from omegaconf import DictConfig

from rtmdet_exp.data.coco import DataError
from rtmdet_exp.data.validate import DatasetError
from rtmdet_exp.engine.validation import Validator
from rtmdet_exp.experiment import build
from rtmdet_exp.experiment.checks import check_config
from rtmdet_exp.experiment.errors import ConfigError
from rtmdet_exp.models.detector import Detector
from conftest import coco_overrides, compose, run_cli
from tests.support.coco_mutations import (
    BIG, INF, MISSING, NAN, SPLITS, Case, Expect, Work, all_anns, ann_field, ann_replaced, as_ico, big_number,
    both_splits, cat_field, cat_replaced, category_id_everywhere, cut, duplicate, duplicate_cat_name, emptied,
    encoded, image_field, image_file, image_id_everywhere, latin1_name, layout, lone_surrogate, nested,
    no_sizes, non_ascii_names, raw, reencode, replace_top, resized, skipped, to_dir, truncated,
)

pytestmark = pytest.mark.slow

DOCUMENTED = (DatasetError, DataError, ConfigError)  # user errors (the CLI turns them into exit 2)
INT64_MAX = 2**63 - 1


@functools.cache
def base_config() -> DictConfig:
    """The run's config for a COCO-layout dataset (TINY settings, augment=light at 64 px, no workers)."""
    return compose(*coco_overrides(Path("/placeholder")), "augment=light", "data.num_workers=0")


def tiny_detector(num_classes: int) -> Detector:
    """The detector the run builds (TINY: RTMDet-tiny's layout at 1/8 width) for ``num_classes``."""
    cfg = copy.deepcopy(base_config())
    cfg.data.num_classes = num_classes
    return build.build_detector(cfg)


def run_path(root: Path, detector_for: Callable[[int], Detector], on_error: str = "raise") -> dict[str, Any]:
    """What ``python run.py data=coco data.root=<root>`` does with the data, in-process, through the
    run's own code: the config resolves (``data.num_classes`` through its resolver) and passes the
    checks, the data module validates and opens both splits, every training batch of one epoch goes
    through the training pipeline into Detector.loss and backward, and one validation scores the
    detector on the val split. Returns the last loss and the metrics."""
    cfg = copy.deepcopy(base_config())
    cfg.data.root, cfg.data.on_error = str(root), on_error
    check_config(cfg)
    detector = detector_for(int(cfg.data.num_classes))
    data = build.build_data(cfg, build.build_augment(cfg))
    data.setup()
    detector.train()
    for batch in data.train_loader(0, in_process=True):
        losses = detector.loss(batch["images"], batch)
        loss = losses["loss_cls"] + losses["loss_bbox"]
        loss.backward()
    result = Validator(data, torch.device("cpu"))(detector)
    return {"loss": loss.item(), "metrics": result.metrics}


# ----------------------------------------------------------------------------------------------
# The catalogue: (name, mutation, splits). Each entry becomes one case per split.
# ----------------------------------------------------------------------------------------------

BOTH, TRAIN = SPLITS, ("train",)
_NAMED = {BIG: "10**30", 10**400: "10**400", 2**63: "2**63", -(2**63) - 1: "-2**63-1", INT64_MAX: "2**63-1"}


def _label(value: Any) -> str:
    """A short printable name of a json value for case names."""
    if isinstance(value, int) and not isinstance(value, bool) and value in _NAMED:
        return _NAMED[value]
    return repr(value)[:30]


def _drop_names(coco: dict) -> None:
    for cat in coco["categories"]:
        del cat["name"]


def _extra_category(coco: dict) -> None:
    coco["categories"].append({"id": 999, "name": "never_annotated"})


def _markup_name(coco: dict) -> None:
    coco["categories"][0]["name"] = "[/x] [bold]"


FILE_LEVEL = [
    ("utf8-bom", encoded("utf-8-sig"), BOTH), ("utf16-bom", encoded("utf-16"), BOTH),
    ("utf16be-bom", encoded("utf-16-be", b"\xfe\xff"), BOTH), ("utf16le-no-bom", encoded("utf-16-le"), BOTH),
    ("utf32-bom", encoded("utf-32"), BOTH), ("non-ascii-names", non_ascii_names, TRAIN),
    ("latin1", latin1_name("Zürich", "latin-1"), BOTH), ("cp1252", latin1_name("naïve – dash", "cp1252"), BOTH),
    ("bad-utf8-byte", raw(lambda d, r: d.replace(b'"images"', b'"im\xffages"', 1), "not UTF-8", "line 1"), BOTH),
    ("empty", raw(lambda d, r: b"", "empty (0 bytes)"), BOTH),
    ("whitespace", raw(lambda d, r: b" \n\t\r\n", "whitespace"), BOTH),
    ("truncated-10pc", truncated(0.1), BOTH), ("truncated-50pc", truncated(0.5), BOTH),
    ("truncated-90pc", truncated(0.9), BOTH),
    ("truncated-last-byte", raw(lambda d, r: d[:-1], "not valid JSON", "truncated"), BOTH),
    ("garbage", raw(lambda d, r: r.bytes(64)), BOTH),
    ("deep-100k", raw(lambda d, r: b"[" * 100_000 + b"]" * 100_000, "nests"), BOTH),
    ("deep-in-images", raw(lambda d, r: d.replace(b'"images": [', b'"images": [' + b"[" * 50_000 + b"]" * 50_000
                                                  + b", ", 1), "nests"), BOTH),
    ("top-list", replace_top([1, 2, 3], "top level is a list"), BOTH),
    ("top-string", replace_top("coco", "top level is a string"), BOTH),
    ("top-number", replace_top(5, "top level is an int (5)"), BOTH),
    ("top-null", replace_top(None, "top level is null"), BOTH),
    ("top-true", replace_top(True, "top level is a bool (true)"), BOTH),
    ("categories-int", layout("categories", 5, "'categories' is an int (5), expected a list of category"), BOTH),
    ("images-object", layout("images", {"1": "a.jpg"}, "'images' is an object"), BOTH),
    ("annotations-string", layout("annotations", "none", "'annotations' is a string"), BOTH),
    ("images-null", layout("images", None, "'images' is null"), BOTH),
    ("categories-float", layout("categories", 1.5, "'categories' is a float (1.5)"), BOTH),
    ("no-images-key", layout("images", MISSING, "no 'images' list"), BOTH),
    ("no-annotations-key", layout("annotations", MISSING, "no 'annotations' list"), BOTH),
    ("no-categories-key", layout("categories", MISSING, "no 'categories' list"), BOTH),
    ("number-5000-digits", big_number, BOTH),
    ("surrogate-file-name", lone_surrogate("images"), BOTH), ("surrogate-category", lone_surrogate("categories"), BOTH),
    ("images-empty", emptied("images", "no images"), BOTH),
    ("categories-empty", emptied("categories", "categories"), BOTH),
    ("annotations-empty", emptied("annotations", ok=True), BOTH),
]

def _each(prefix: str, make: Any, values: tuple, splits: tuple[str, ...] | None = None) -> list[tuple]:
    """One catalogue entry per value; ``splits`` None alternates train and val."""
    return [(f"{prefix}={_label(v)}", make(v), splits or (SPLITS[i % 2],)) for i, v in enumerate(values)]


BAD_BOXES = (
    MISSING, None, "1,2,3,4", [1, 2, 3], [1, 2, 3, 4, 5], [[1, 2, 3, 4]], ["1", 2, 3, 4], [True, 1, 2, 2], {"x": 1},
    [NAN, 1, 2, 2], [1, INF, 2, 2], [1, 1, -INF, 2], [1, 1, 2, NAN], [1, 1, 10**400, 2], [1, 1, 0, 2], [1, 1, 2, -3],
    [64, 1, 2, 2], [1, 1e12, 2, 2], [-100, 1, 5, 5], [-1e308, -1e308, 1e308, 1e308],
)
VALID_ANN_FIELDS = (
    ("id", 0), ("id", -1), ("id", INT64_MAX), ("bbox", [0, 0, 1e300, 1e300]), ("bbox", [-10, -10, 30, 30]),
    ("bbox", [1, 1, 0.001, 0.001]), ("bbox", [1.5, 2.25, 3, 4]), ("area", 0), ("area", 1e300), ("iscrowd", True),
    ("iscrowd", False), ("iscrowd", 1), ("segmentation", "not a polygon"), ("segmentation", nested(600)), ("ignore", 1),
)

ANNOTATIONS = [
    *_each("ann-image_id", partial(ann_field, "image_id"), (MISSING, "1", 1.0, True, None, 9999), BOTH),
    *_each("ann-category_id", partial(ann_field, "category_id"), (MISSING, "100", True, None, 100.5, 5), BOTH),
    *_each("ann-bbox", partial(ann_field, "bbox"), BAD_BOXES),
    *_each("ann-area", partial(ann_field, "area"), (NAN, -1, "5", True, None, INF, 10**400), BOTH),
    *_each("ann-iscrowd", partial(ann_field, "iscrowd"), (2, -1, "0", 0.5, None, [0], "yes"), BOTH),
    *_each("ann-id", partial(ann_field, "id"), ("5", 5.0, True, None, MISSING, [5], BIG, -(2**63) - 1), BOTH),
    *_each("ann-not-object", ann_replaced, (5, "ann", None, [1, 2])),
    ("ann-duplicate-id", duplicate("annotations"), BOTH),
    *((f"ann-ok-{k}={_label(v)}", ann_field(k, v, ok=True), BOTH) for k, v in VALID_ANN_FIELDS),
    ("ann-ok-no-area", ann_field("area", MISSING, ok=True, needle="have no 'area'"), BOTH),
    ("ann-ok-no-iscrowd", ann_field("iscrowd", MISSING, ok=True, needle="have no 'iscrowd'"), BOTH),
    ("all-no-iscrowd", all_anns("iscrowd", MISSING, "have no 'iscrowd'"), BOTH),
    ("all-no-area", all_anns("area", MISSING, "have no 'area'"), BOTH),
    ("all-crowd", all_anns("iscrowd", 1, ""), BOTH),
]

IMAGES = [
    *_each("image-id", partial(image_field, "id"), ("7", 7.0, True, None, MISSING, [1])),
    *_each("image-file_name", partial(image_field, "file_name"), (MISSING, 7, "", None, ["a.jpg"])),
    ("image-file_name-nonexistent", image_field("file_name", "nope.jpg", needle="does not exist"), BOTH),
    ("image-file_name-nul", image_field("file_name", "a\x00b.jpg"), BOTH),
    ("image-ok-file_name-elsewhere", image_field("file_name", "../train2017/000000.jpg", ok=True), BOTH),
    *_each("image-width", partial(image_field, "width"), (NAN, INF, -64, 0, "64", True, 64.5, BIG, 10**400, None,
                                                           MISSING)),
    *_each("image-height", partial(image_field, "height"), (-1, "64", MISSING, 0.5)),
    ("image-width-wrong", image_field("width", 65, needle="65x64"), BOTH),
    ("image-height-wrong", image_field("height", 80, needle="64x80"), BOTH),
    ("image-duplicate-id", duplicate("images"), BOTH),
    *_each("image-id-everywhere", partial(image_id_everywhere, ok=False), (BIG, -(2**63) - 1, 2**63)),
    *_each("image-ok-id-everywhere", partial(image_id_everywhere, ok=True), (-5, 0, INT64_MAX), BOTH),
    ("image-ok-no-sizes", no_sizes, BOTH), ("image-ok-float-width", image_field("width", 64.0, ok=True), BOTH),
    ("image-ok-extra-keys", image_field("license", {"deep": nested(600)}, ok=True), BOTH),
]

IMAGE_FILES = [
    ("file-zero-bytes", image_file(lambda p, r: p.write_bytes(b""), "empty (0 bytes)"), BOTH),
    ("file-cut-1", image_file(cut(1), "end-of-image"), BOTH), ("file-cut-50", image_file(cut(50)), BOTH),
    ("file-cut-half", image_file(cut(0)), BOTH),
    ("file-random-bytes", image_file(lambda p, r: p.write_bytes(r.bytes(300)), "could not be decoded"), BOTH),
    ("file-html", image_file(lambda p, r: p.write_text("<html>404</html>"), "could not be decoded"), BOTH),
    ("file-missing", image_file(lambda p, r: p.unlink(), "does not exist"), BOTH),
    ("file-other-size", image_file(resized(80, 64), "80x64"), BOTH),
    ("file-other-height", image_file(resized(64, 48), "64x48"), BOTH),
    ("file-ico", image_file(as_ico, "could not be decoded"), BOTH),
    ("file-directory", image_file(to_dir, "not a file"), BOTH),
    ("file-ok-png", image_file(reencode(".png"), ok=True), BOTH),
    ("file-ok-bmp", image_file(reencode(".bmp"), ok=True), BOTH),
    ("file-ok-gray-jpeg", image_file(reencode(".jpg", gray=True), ok=True), BOTH),
]

CATEGORIES = [
    *_each("cat-id", partial(cat_field, "id"), ("100", 100.0, True, None, MISSING)),
    *_each("cat-id-everywhere", partial(category_id_everywhere, ok=False), (BIG, -(2**63) - 1), BOTH),
    ("cat-duplicate-id", duplicate("categories"), BOTH),
    *_each("cat-not-object", cat_replaced, (5, "cat", None)),
    *_each("cat-name", partial(cat_field, "name"), (5, None, ["a"], {"en": "cat"})),
    ("cat-deep-extra", cat_field("keypoints", nested(600), needle="nests"), BOTH),
    ("cat-duplicate-name", duplicate_cat_name, BOTH),
    *_each("cat-ok-id-everywhere", partial(category_id_everywhere, ok=True), (-3, 0, INT64_MAX), TRAIN),
    ("cat-ok-no-names", both_splits(_drop_names), TRAIN),
    ("cat-ok-extra-category", both_splits(_extra_category), TRAIN),
    ("cat-ok-markup-name", both_splits(_markup_name), TRAIN),
]

SKIP_MODE = [  # data.on_error=skip: image- and annotation-level faults are left out; file-level ones still stop
    ("skip-ann-bbox-nan", skipped(ann_field("bbox", [NAN, 1, 2, 2])), BOTH),
    ("skip-ann-id-big", skipped(ann_field("id", BIG)), BOTH),
    ("skip-ann-category-dangling", skipped(ann_field("category_id", 5)), BOTH),
    ("skip-ann-iscrowd-yes", skipped(ann_field("iscrowd", "yes")), BOTH),
    ("skip-ann-duplicate-id", skipped(duplicate("annotations")), BOTH),
    ("skip-image-id-big", skipped(image_id_everywhere(BIG, ok=False)), BOTH),
    ("skip-image-width-wrong", skipped(image_field("width", 65)), BOTH),
    ("skip-file-zero-bytes", skipped(image_file(lambda p, r: p.write_bytes(b""))), BOTH),
    ("skip-still-truncated", truncated(0.5), BOTH),
    ("skip-still-duplicate-category", duplicate("categories"), BOTH),
]

# Through `python run.py` too. File-level faults are put in the val json: the train json is also
# read by the data.num_classes resolver, whose messages are the experiment layer's.
CLI = {
    ("all-no-iscrowd", "val"), ("all-no-area", "train"), ("utf8-bom", "val"), ("utf16-bom", "val"),
    ("ann-ok-id=0", "val"), ("image-ok-no-sizes", "train"), ("skip-image-id-big", "train"),
    ("image-id-everywhere=10**30", "train"), ("categories-int", "val"),
    ("truncated-50pc", "val"), ("latin1", "val"), ("empty", "val"), ("deep-100k", "val"), ("top-list", "val"),
    ("file-zero-bytes", "train"), ("file-cut-50", "val"), ("image-width-wrong", "train"),
    ("ann-id=10**30", "train"), ("ann-bbox=[nan, 1, 2, 2]", "val"),
    ("cat-id-everywhere=10**30", "val"), ("utf8-bom", "train"), ("categories-int", "train"),
    ("truncated-50pc", "train"), ("cat-name=None", "val"),
}


def _cases() -> list[Case]:
    cases = []
    groups = [FILE_LEVEL, ANNOTATIONS, IMAGES, IMAGE_FILES, CATEGORIES, SKIP_MODE]
    for group in groups:
        for name, mutate, splits in group:
            for split in splits:
                on_error = "skip" if group is SKIP_MODE else "raise"
                cases.append(Case(name, split, mutate, seed=len(cases), on_error=on_error,
                                  cli=(name, split) in CLI))
    return cases


CASES = _cases()


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector_for() -> Callable[[int], Detector]:
    """A fresh copy of one tiny detector per class count (built once per count)."""
    built: dict[int, Detector] = {}

    def get(num_classes: int) -> Detector:
        if num_classes not in built:
            torch.manual_seed(0)
            built[num_classes] = tiny_detector(num_classes)
        return copy.deepcopy(built[num_classes])

    return get


def _check_outcome(case: Case, expect: Expect, outcome: dict[str, Any] | Exception, log: str) -> None:
    """A documented error whose message holds every needle, or a clean run with finite numbers whose
    log holds them."""
    if isinstance(outcome, Exception):
        message = str(outcome)
        assert not expect.ok, f"{case.name} ({case.split}): expected a clean run, got {message}"
        missing = [n for n in expect.needles if n not in message]
        assert not missing, f"{case.name} ({case.split}): the message lacks {missing}:\n{message}"
        return
    assert expect.ok, f"{case.name} ({case.split}): expected an error naming {expect.needles}, the run went through"
    assert math.isfinite(outcome["loss"]), f"{case.name}: non-finite loss {outcome['loss']}"
    assert all(math.isfinite(v) for k, v in outcome["metrics"].items() if k != "per_class_AP")
    missing = [n for n in expect.needles if n not in log]
    assert not missing, f"{case.name} ({case.split}): the log lacks {missing}"


def test_catalogue_size_and_names() -> None:
    assert len(CASES) >= 200
    assert len({(c.name, c.split) for c in CASES}) == len(CASES), "case names repeat"
    assert len([c for c in CASES if c.cli]) == len(CLI) >= 20, "a CLI case name does not match the catalogue"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.split}-{c.name}" for c in CASES])
def test_run_path(case: Case, coco_dataset: Path, detector_for: Callable[[int], Detector], tmp_path: Path,
                  caplog: pytest.LogCaptureFixture, one_thread: None) -> None:
    work = Work.copy_of(coco_dataset, tmp_path / "coco")
    expect = case.apply(work)
    caplog.set_level("WARNING")
    try:
        outcome: dict[str, Any] | Exception = run_path(work.root, detector_for, case.on_error)
    except DOCUMENTED as err:
        outcome = err
    _check_outcome(case, expect, outcome, caplog.text)


@pytest.mark.parametrize("case", [c for c in CASES if c.cli], ids=[f"{c.split}-{c.name}" for c in CASES if c.cli])
def test_cli(case: Case, coco_dataset: Path, tmp_path: Path) -> None:
    work = Work.copy_of(coco_dataset, tmp_path / "coco")
    expect = case.apply(work)
    args = [*coco_overrides(work.root), "trainer.max_epochs=1", "trainer.limit_train_batches=1",
            f"data.on_error={case.on_error}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_cli(args, timeout=120)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, f"{case.name} ({case.split}): traceback\n{output[-4000:]}"
    if expect.ok:
        assert proc.returncode == 0, f"{case.name} ({case.split}): exit {proc.returncode}\n{output[-4000:]}"
        missing = [n for n in expect.needles if n not in output]
        assert not missing, f"{case.name} ({case.split}): the output lacks {missing}"
        return
    assert proc.returncode == 2, f"{case.name} ({case.split}): exit {proc.returncode}\n{output[-4000:]}"
    assert "\n\n" not in proc.stderr.strip(), f"{case.name} ({case.split}): not one paragraph\n{proc.stderr}"
    missing = [n for n in expect.needles if n not in proc.stderr]
    assert not missing, f"{case.name} ({case.split}): stderr lacks {missing}\n{proc.stderr[-4000:]}"
