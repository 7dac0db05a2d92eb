"""What a dataset check finds: one :class:`Problem` per fault, gathered in a :class:`ValidationReport`.

Problems have one of three severities:

* ``"file"``: the annotation file or the image folder is unusable as a whole; nothing can be
  skipped around it.
* ``"image"``: one image is unusable; its id goes to ``bad_image_ids``.
* ``"annotation"``: one annotation is bad; its id goes to ``bad_ann_ids``.

Every problem names the file and, where there is one, the image id, the annotation id and the
field, so a line of the report says where to look and what was expected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DatasetError", "Problem", "ValidationReport", "Skipped", "Collector", "SEVERITIES"]

SEVERITIES = ("file", "image", "annotation")


class DatasetError(ValueError):
    """The dataset has problems that stop a run; the message names the file and what is wrong."""


@dataclass
class Problem:
    """One fault in a dataset.

    ``file`` is the image file for faults of the file on disk, the annotation json otherwise;
    ``image_id``/``ann_id`` are None where they do not apply or are unknown; ``severity`` is
    ``"file"``, ``"image"`` or ``"annotation"``; ``kind`` is a short category used for counts
    (e.g. ``"unknown category id"``).
    """

    file: str
    image_id: int | None
    ann_id: int | None
    what: str
    severity: str
    kind: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def __str__(self) -> str:
        where = [self.file]
        ids = []
        if self.image_id is not None:
            ids.append(f"image id {_id_text(self.image_id)}")
        if self.ann_id is not None:
            ids.append(f"annotation id {_id_text(self.ann_id)}")
        if ids:
            where.append(", ".join(ids))
        return ": ".join(where + [self.what])


@dataclass
class ValidationReport:
    """Everything a check found in one annotation file and its images.

    ``num_images``/``num_annotations`` count the json's entries; ``image_ids`` holds the image ids
    of well-formed entries, ``bad_image_ids`` those with image-level problems (to skip),
    ``bad_ann_ids`` the annotations with annotation-level problems (to drop). ``notes`` say which
    COCO defaults fill fields the file leaves out (they are not problems). ``readable`` is False
    when the file could not be read as a COCO instances json at all (then nothing was counted).
    """

    ann_file: str
    img_dir: str
    problems: list[Problem] = field(default_factory=list)
    readable: bool = True
    notes: list[str] = field(default_factory=list)
    num_images: int = 0
    num_annotations: int = 0
    image_ids: set[int] = field(default_factory=set)
    bad_image_ids: set[int] = field(default_factory=set)
    bad_ann_ids: set[int] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def count(self, severity: str) -> int:
        """Number of problems of one severity."""
        return sum(p.severity == severity for p in self.problems)

    def format(self, max_lines: int | None = 200) -> str:
        """A readable report: totals, counts per kind, then one line per problem, then the notes.

        At most ``max_lines`` problem lines are listed (None: all), followed by "... and N more".
        """
        n = len(self.problems)
        notes = [f"note: {note}" for note in self.notes]
        if n == 0:
            head = f"{self.ann_file}: no problems in {self.num_images} images, {self.num_annotations} annotations"
            return "\n".join([head, *notes])
        if not self.readable:
            return "\n".join([f"{self.ann_file} cannot be read as a COCO instances file:"]
                             + [f"  {p}" for p in self.problems])
        per_severity = ", ".join(f"{self.count(s)} {s}-level" for s in SEVERITIES if self.count(s))
        lines = [
            f"{n} problem{'s' if n != 1 else ''} ({per_severity}) in {self.ann_file} "
            f"({self.num_images} images, {self.num_annotations} annotations, images in {self.img_dir}); "
            f"{len(self.bad_image_ids)} bad images, {len(self.bad_ann_ids)} bad annotations",
            "by kind: " + ", ".join(f"{k}: {c}" for k, c in Counter(p.kind for p in self.problems).most_common()),
        ]
        shown = self.problems if max_lines is None else self.problems[:max_lines]
        lines.extend(f"  {p}" for p in shown)
        if len(shown) < n:
            lines.append(f"  ... and {n - len(shown)} more")
        return "\n".join(lines + notes)


@dataclass(frozen=True)
class Skipped:
    """What a split loses in ``data.on_error=skip`` mode: image ids and annotation ids."""

    image_ids: set[int]
    ann_ids: set[int]

    @property
    def count(self) -> int:
        return len(self.image_ids) + len(self.ann_ids)


def _id_text(value: int) -> str:
    """An id as text; one of more than 40 digits is cut (json allows thousands)."""
    text = str(value)
    return text if len(text) <= 40 else f"{text[:12]}...({len(text.lstrip('-'))} digits)"


def _plain_id(value: Any) -> int | None:
    """An id worth printing: a json integer (never a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Collector:
    """Accumulates problems per severity (reported in file, image, annotation order)."""

    def __init__(self, ann_file: str) -> None:
        self.ann_file = ann_file
        self.by_severity: dict[str, list[Problem]] = {s: [] for s in SEVERITIES}

    def add(self, what: str, severity: str, kind: str, image_id: Any = None, ann_id: Any = None,
            file: str | None = None) -> None:
        """Record one problem; ids that are not json integers are left out of the line."""
        self.by_severity[severity].append(
            Problem(file=file or self.ann_file, image_id=_plain_id(image_id), ann_id=_plain_id(ann_id), what=what,
                    severity=severity, kind=kind)
        )

    def all(self) -> list[Problem]:
        return [p for s in SEVERITIES for p in self.by_severity[s]]
