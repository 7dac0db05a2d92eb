"""A run folder: every file name in it, where a run lives, resume lookup and results I/O.

Layout of one run (a single run, or one job of a multirun sweep)::

    outputs/<identity>/<launch time>/      single runs (multirun: <sweep dir>/<job number>_<overrides>/)
      .hydra/                 Hydra's record: config.yaml, hydra.yaml, overrides.yaml
      run.log                 the log (Hydra's file handler)
      results.json            status (running | finished | failed), recipe card, final metrics, config
      metrics.jsonl           one JSON record per logged step and per validation
      val_results.json        metrics of the latest validation
      val_detections.json     detections of the latest validation (COCO results, the dataset's image ids)
      checkpoints/            epoch_NNNN.pt, step_NNNNNNNN.pt, interrupt.pt (resumable), best.pt

``<identity>`` names the experiment: ``run_name`` when given, else the defining overrides of the
command plus a hash of the defining config, so "the same command again" finds the same parent
folder and ``resume=true`` can continue its newest unfinished run. Keys that do not define an
experiment (where it runs, how it logs, whether it resumes) are listed once, in
:data:`NON_DEFINING_KEYS`; resume checks, sweep axes, W&B tags and the report all use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from rtmdet_exp.atomic import write_json_atomic

HYDRA_DIR = ".hydra"
OVERRIDES_FILE = f"{HYDRA_DIR}/overrides.yaml"
CONFIG_FILE = f"{HYDRA_DIR}/config.yaml"
RESULTS = "results.json"
METRICS = "metrics.jsonl"
VAL_RESULTS = "val_results.json"
VAL_DETECTIONS = "val_detections.json"
CHECKPOINTS = "checkpoints"
BEST = "best.pt"
INTERRUPT = "interrupt.pt"
OUTPUTS = "outputs"
MULTIRUN = "multirun"

STATUS_RUNNING, STATUS_FINISHED, STATUS_FAILED, STATUS_INTERRUPTED = "running", "finished", "failed", "interrupted"

# Config keys (and their sub-keys) that do not change what is trained. `seed` defines a run but
# not a *setting* (runs that differ only in the seed are grouped): see SETTING_FREE_KEYS.
NON_DEFINING_KEYS: tuple[str, ...] = (
    "hydra",
    "study",
    "resume",
    "run_name",
    "dry_run",
    "tags",
    "logger",
    "trainer.device",
    "trainer.auto_resume",
    "trainer.log_interval",
    "trainer.num_vis_images",
    "trainer.checkpoint_interval",
    "trainer.checkpoint_interval_steps",
    "trainer.compile",
    "trainer.step_mode",
    "trainer.cudnn_benchmark",
    "data.num_workers",
    "data.pin_memory",
    "data.cache_images",
    "data.val_batch_size",
)
SETTING_FREE_KEYS: tuple[str, ...] = (*NON_DEFINING_KEYS, "seed")


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (nothing to resume, unreadable results, ...)."""


# ------------------------------------------------------------------------------------ keys


def override_key(override: str) -> str:
    """The config key of one override line (``++a.b=1`` -> ``a.b``, ``~a`` -> ``a``)."""
    return override.split("=", 1)[0].lstrip("+~").strip()


def is_defining(key: str, free: Sequence[str] = NON_DEFINING_KEYS) -> bool:
    """Whether a dotted config key changes the experiment (``free`` lists the keys that do not)."""
    return not any(key == k or key.startswith(k + ".") for k in free)


def defining_overrides(overrides: Iterable[str], free: Sequence[str] = NON_DEFINING_KEYS) -> list[str]:
    """The overrides that change the experiment, sorted by key (Hydra's ``override_dirname`` order)."""
    kept = [o.strip() for o in overrides if is_defining(override_key(o), free)]
    return sorted(kept, key=lambda o: (override_key(o), o))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{dotted key: leaf}`` (lists are leaves)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Defining dotted keys whose values differ between two (nested) configs."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if is_defining(k))
    return [k for k in keys if a.get(k) != b.get(k)]


def config_hash(config: Mapping[str, Any]) -> str:
    """Eight hex digits identifying the defining part of a config (unresolved values hashed as written)."""
    defining = {k: v for k, v in flatten(config).items() if is_defining(k)}
    text = json.dumps(defining, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def identity(config: Mapping[str, Any], overrides: Sequence[str]) -> str:
    """Folder name of an experiment: ``run_name``, else its defining overrides and config hash."""
    name = config.get("run_name")
    if name:
        return safe_name(str(name))
    slug = ",".join(defining_overrides(overrides)) or str(config.get("experiment_name") or "default")
    return f"{safe_name(slug)[:80]}-{config_hash(config)}"


def safe_name(text: str) -> str:
    """A folder-name-safe version of ``text`` (no separators, no spaces)."""
    return re.sub(r"[^A-Za-z0-9=,.+_-]+", "_", text).strip("._") or "run"


# ------------------------------------------------------------------------------- locations


def launch_time() -> float:
    """Start time of this launch, the same in every ``torchrun`` rank of one machine.

    Under torchrun every rank is a child of one agent process, so its start time is shared;
    elsewhere it is now.
    """
    if "LOCAL_RANK" in os.environ:
        started = _parent_start_time()
        if started is not None:
            return started
    return time.time()


def _parent_start_time() -> float | None:
    """Wall-clock start of the parent process (Linux /proc), None where unavailable."""
    try:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime in clock ticks
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def instance_name(when: float | None = None) -> str:
    """Folder name of one launch: its time, or the elastic run id of a multi-node torchrun."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    multi_node = int(os.environ.get("WORLD_SIZE", 1)) > int(os.environ.get("LOCAL_WORLD_SIZE", 1) or 1)
    if multi_node and run_id not in ("", "none"):
        return safe_name(run_id)
    stamp = launch_time() if when is None else when
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d_%H-%M-%S-%f")[:-4]  # centiseconds


def newest_unfinished(parent: Path) -> Path | None:
    """The newest run folder directly under ``parent`` that has not finished, if any."""
    if not parent.is_dir():
        return None
    candidates = sorted((p for p in parent.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
    return next((p for p in candidates if status(p) != STATUS_FINISHED and has_checkpoint(p)), None)


def newest_folder(parent: Path) -> Path | None:
    """The newest (by name, i.e. launch time) folder directly under ``parent``."""
    if not parent.is_dir():
        return None
    return max((p for p in parent.iterdir() if p.is_dir()), key=lambda p: p.name, default=None)


# ------------------------------------------------------------------------------ checkpoints


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def epoch_checkpoint(run_dir: Path, epoch: int) -> Path:
    """Checkpoint written after ``epoch`` (1-based) epochs."""
    return checkpoint_dir(run_dir) / f"epoch_{epoch:04d}.pt"


def step_checkpoint(run_dir: Path, step: int) -> Path:
    """Checkpoint written after ``step`` optimiser steps (the step-based interval)."""
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def resumable_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints a run can continue from, newest first (by write time, then name)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("*.pt") if p.name != BEST and not p.name.startswith(".")]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)


def has_checkpoint(run_dir: Path) -> bool:
    return bool(resumable_checkpoints(run_dir))


# ---------------------------------------------------------------------------------- results


def results_path(run_dir: Path) -> Path:
    return Path(run_dir) / RESULTS


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """``results.json`` as a dict, None when absent; :class:`RunFolderError` when unreadable."""
    path = results_path(run_dir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path} is unreadable: {err}") from err
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} holds a {type(data).__name__}, expected an object")
    return data


def write_results(run_dir: Path, record: Mapping[str, Any]) -> Path:
    """Atomically (re)write ``results.json``."""
    return write_json_atomic(results_path(run_dir), dict(record))


def status(run_dir: Path) -> str:
    """``finished``, ``failed``, ``running`` (started, not ended: also a killed run) or ``empty``."""
    try:
        record = read_results(run_dir)
    except RunFolderError:
        return STATUS_FAILED
    if record is not None:
        return str(record.get("status", STATUS_FINISHED))  # files of older versions: finished
    started = has_checkpoint(run_dir) or (Path(run_dir) / METRICS).is_file()
    return STATUS_RUNNING if started else "empty"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` in file order; a torn line (a crash mid-write) is skipped."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_overrides(run_dir: Path) -> list[str] | None:
    """The command-line overrides Hydra recorded for the run, None when it has no record."""
    path = Path(run_dir) / OVERRIDES_FILE
    if not path.is_file():
        return None
    loaded = yaml.safe_load(path.read_text())
    return [str(o) for o in loaded] if isinstance(loaded, list) else []


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config: from ``results.json``, else Hydra's ``config.yaml``, else {}."""
    try:
        record = read_results(run_dir) or {}
    except RunFolderError:
        record = {}
    if isinstance(record.get("config"), dict):
        return record["config"]
    path = Path(run_dir) / CONFIG_FILE
    loaded = yaml.safe_load(path.read_text()) if path.is_file() else None
    return loaded if isinstance(loaded, dict) else {}


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is (or was meant to be) a training run."""
    folder = Path(folder)
    return any((folder / name).is_file() for name in (RESULTS, OVERRIDES_FILE, METRICS))


class RunCheckpoints:
    """The checkpoint store the training loop writes through: names, atomic writes and retention.

    ``save(kind, ...)``: ``epoch`` -> ``epoch_NNNN.pt``, ``step`` -> ``step_NNNNNNNN.pt``, ``interrupt``
    -> ``interrupt.pt``, ``best`` -> ``best.pt``. Only the newest ``keep`` epoch/step checkpoints stay;
    an interrupt checkpoint is removed once a newer epoch or step checkpoint exists.
    """

    def __init__(self, run_dir: Path, keep: int = 2) -> None:
        self.run_dir, self.keep = Path(run_dir), max(int(keep), 1)

    def path(self, kind: str, epoch: int, step: int) -> Path:
        names = {"epoch": lambda: epoch_checkpoint(self.run_dir, epoch),
                 "step": lambda: step_checkpoint(self.run_dir, step),
                 "interrupt": lambda: checkpoint_dir(self.run_dir) / INTERRUPT,
                 "best": lambda: checkpoint_dir(self.run_dir) / BEST}
        if kind not in names:
            raise ValueError(f"checkpoint kind must be one of {sorted(names)}, got {kind!r}")
        return names[kind]()

    def save(self, kind: str, payload: dict[str, Any], epoch: int, step: int) -> Path:
        from rtmdet_exp.engine.checkpoint import save_checkpoint

        path = save_checkpoint(payload, self.path(kind, epoch, step))
        if kind in ("epoch", "step"):
            (checkpoint_dir(self.run_dir) / INTERRUPT).unlink(missing_ok=True)
            periodic = [p for p in resumable_checkpoints(self.run_dir) if p.name != INTERRUPT]
            for old in periodic[self.keep:]:
                old.unlink(missing_ok=True)
        return path

    def resumable(self) -> list[Path]:
        return resumable_checkpoints(self.run_dir)


def remove_if_unused(run_dir: Path) -> bool:
    """Delete ``run_dir`` when it holds only what Hydra writes at start (``.hydra/`` and the log).

    Used when a run stops before doing anything (a refused config, a dry run, nothing to resume), so
    that no empty run folder is left behind. Returns whether it was removed.
    """
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    if any(p.name != HYDRA_DIR and p.suffix != ".log" for p in run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent
    if parent.name != OUTPUTS and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
    return True

