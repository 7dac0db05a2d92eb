"""Check a COCO detection dataset before training, so bad data fails early and by name.

:func:`validate_coco` reads an instances json (:func:`~rtmdet_exp.data.annotations.read_coco_json`),
checks its entries (:mod:`rtmdet_exp.data.coco_checks`) and, optionally, every image it lists
(:mod:`rtmdet_exp.data.image_probe`), and returns a :class:`ValidationReport` with one
:class:`Problem` per fault: the file, the image id, the annotation id, the field and what was
expected. It never raises on bad content. :func:`check_split` is what a run calls: it raises
:class:`DatasetError` with the report, or, with ``data.on_error=skip``, logs every problem once
and returns the ids of the images and annotations to leave out.

Severities (see :mod:`rtmdet_exp.data.problems`): ``"file"`` problems (the json is unreadable or
not a COCO instances file, an entry without a usable id, any category fault, a missing image
folder) always stop a run; ``"image"`` and ``"annotation"`` problems name an id that
``on_error=skip`` can leave out. Missing ``iscrowd``/``area`` are not problems: the loader fills
COCO's defaults and says so (the report's ``notes`` too).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rtmdet_exp.data.annotations import AnnotationFileError, read_coco_json
from rtmdet_exp.data.coco_checks import check_coco
from rtmdet_exp.data.image_probe import check_image_files, quiet_native_stderr
from rtmdet_exp.data.problems import Collector, DatasetError, Problem, Skipped, ValidationReport

__all__ = ["DatasetError", "Problem", "Skipped", "ValidationReport", "check_split", "validate_coco"]

log = logging.getLogger(__name__)


def validate_coco(
    ann_file: str | os.PathLike,
    img_dir: str | os.PathLike,
    check_images: bool = True,
    workers: int = 0,
    full_decode: bool = False,
) -> ValidationReport:
    """Validate a COCO instances json and, with ``check_images``, the image files it names.

    Args:
        ann_file: the COCO json.
        img_dir: folder that the images' ``file_name`` entries are relative to.
        check_images: open every image file (size and structure; see :mod:`rtmdet_exp.data.image_probe`).
        workers: threads for the image checks (0: in this thread).
        full_decode: decode every image with OpenCV instead of reading headers only.

    Returns a :class:`ValidationReport`; bad content never raises.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    ann_path, img_path = Path(ann_file), Path(img_dir)
    out = Collector(str(ann_path))
    report = ValidationReport(ann_file=str(ann_path), img_dir=str(img_path))
    try:
        coco = read_coco_json(ann_path)
    except AnnotationFileError as err:
        out.add(err.what, "file", err.kind)
        report.problems, report.readable = out.all(), False
        return report

    def probe(entries: list) -> dict[int, tuple[int, int]]:
        return check_image_files(entries, img_path, full_decode, workers, out, report.bad_image_ids)

    check_coco(coco, report, out, probe if check_images else None)
    return report


def _save(report: ValidationReport, report_file: str | os.PathLike | None) -> str:
    """Write the full problem list; a sentence for the message saying where (or why not)."""
    if report_file is None:
        return ""
    try:
        Path(report_file).write_text(report.format(max_lines=None) + "\n", encoding="utf-8", errors="backslashreplace")
        return f"\nfull list written to {report_file}"
    except OSError as e:
        return f"\n(could not write the full list to {report_file}: {e})"


def check_split(
    ann_file: str | os.PathLike,
    img_dir: str | os.PathLike,
    skip: bool,
    split: str,
    workers: int | None = None,
    report_file: str | os.PathLike | None = None,
) -> Skipped:
    """Validate one split before training; raise on problems, or log them and return what to skip.

    File-level problems always raise :class:`DatasetError` (nothing can be skipped around a broken
    json); so does a split whose every image is bad. Otherwise, with ``skip`` False any problem
    raises; with ``skip`` True each problem is logged once, then a summary, and the ids of the
    unusable images and of the bad annotations are returned for the loader to leave out.
    ``report_file``, if given, receives the full problem list whenever there is one.
    ``workers`` threads check images (default: up to 8).
    """
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    with quiet_native_stderr():
        report = validate_coco(ann_file, img_dir, check_images=True, workers=workers)
    if report.ok:
        log.info("%s split: %d images, %d annotations, no problems", split, report.num_images,
                 report.num_annotations)
        return Skipped(set(), set())
    n = len(report.problems)
    head = f"data validation found {n} problem{'s' if n != 1 else ''} in {split} split ({ann_file})"
    saved = _save(report, report_file)
    if report.count("file"):
        raise DatasetError(f"{head}\n{report.format()}{saved}\nthe file-level problems concern the whole split "
                           "(annotation file or image folder) and data.on_error=skip cannot skip them; fix them")
    if not skip:
        raise DatasetError(f"{head}\n{report.format()}{saved}\n"
                           "fix them, or pass data.on_error=skip to skip the bad images and annotations")
    if report.image_ids <= report.bad_image_ids:
        raise DatasetError(f"{head}\n{report.format()}{saved}\nevery image of the {split} split is bad; "
                           "nothing is left to skip to")
    for p in report.problems:
        log.warning("%s split: skipping: %s", split, p)
    log.warning("%s split: %d problems; skipping %d of %d images and %d of %d annotations%s", split, n,
                len(report.bad_image_ids), report.num_images, len(report.bad_ann_ids), report.num_annotations,
                f" (full list in {report_file})" if saved.startswith("\nfull") else "")
    return Skipped(set(report.bad_image_ids), set(report.bad_ann_ids))
