"""OmegaConf resolvers used by ``conf/``: run and sweep folders, per-variant recipe values, arithmetic.

* ``${rtmdet.run_dir:}`` (``hydra.run.dir``): ``outputs/<identity>/<launch time>``; with
  ``resume=true`` the newest unfinished run of the same identity (see :mod:`.rundir`).
* ``${rtmdet.sweep_dir:<name>}`` (``hydra.sweep.dir``): ``multirun/<name>/<launch time>``, or with
  ``resume=true`` the newest sweep folder of that name; an empty name means the command's identity.
* ``${rtmdet.non_defining:}``: the keys that do not define an experiment (Hydra's override_dirname
  leaves them out of job folder names).
* ``${paper:<key>}``: the paper's value of ``<key>`` for ``model.variant`` (:mod:`.recipes`).
* ``${coco_num_classes:<json>}``: the number of categories of a COCO annotation file.
* ``${rtmdet.mul:a,b}``: ``round(a * b)``, e.g. the 2x Mosaic canvas.

Folders are computed once per process (Hydra may resolve ``hydra.run.dir`` more than once).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rtmdet_exp.experiment import rundir
from rtmdet_exp.experiment.recipes import paper_value

_folders: dict[tuple[str, bool], str] = {}


def _task_overrides(root: DictConfig) -> list[str]:
    """The command-line task overrides (from Hydra's node, when the root has one)."""
    hydra = root.get("hydra") if isinstance(root, DictConfig) else None
    if hydra is None:
        return []
    return [str(o) for o in OmegaConf.select(hydra, "overrides.task", default=[]) or []]


def _identity(root: DictConfig) -> str:
    config = {k: v for k, v in OmegaConf.to_container(root, resolve=False).items() if k != "hydra"}
    return rundir.identity(config, _task_overrides(root))


def _folder(parent: Path, resume: bool, find: Callable[[Path], Path | None]) -> str:
    """A new ``parent/<launch time>`` folder, or with ``resume`` the one ``find`` picks; once per process."""
    key = (str(parent), resume)
    if key not in _folders:
        found = find(parent) if resume else None
        _folders[key] = str(found or parent / rundir.instance_name())
    return _folders[key]


def run_dir(*, _root_: DictConfig) -> str:
    """``hydra.run.dir`` of a single run: resume continues the newest unfinished run of the same identity."""
    parent = Path(rundir.OUTPUTS) / _identity(_root_)
    return _folder(parent, bool(_root_.get("resume", False)), rundir.newest_unfinished)


def sweep_dir(name: str = "", *, _root_: DictConfig) -> str:
    """``hydra.sweep.dir`` of a multirun: resume continues the newest sweep folder of that name."""
    parent = Path(rundir.MULTIRUN) / (rundir.safe_name(name) if name else _identity(_root_))
    return _folder(parent, bool(_root_.get("resume", False)), rundir.newest_folder)


def paper(key: str, *, _root_: DictConfig) -> Any:
    """The paper's per-variant value of ``key`` for this config's ``model.variant``."""
    return paper_value(OmegaConf.select(_root_, "model.variant", default=None), key)


def coco_num_classes(ann_file: str) -> int:
    """Number of categories in a COCO annotation file; errors name ``data.train_json`` and the file."""
    from rtmdet_exp.data.annotations import count_categories

    return count_categories(ann_file)


def register_resolvers() -> None:
    """Register every resolver above (idempotent)."""
    table = {
        "rtmdet.run_dir": run_dir,
        "rtmdet.sweep_dir": sweep_dir,
        "rtmdet.non_defining": lambda: list(rundir.NON_DEFINING_KEYS),
        "paper": paper,
        "coco_num_classes": coco_num_classes,
        "rtmdet.mul": lambda a, b: int(round(float(a) * float(b))),
    }
    for name, fn in table.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
