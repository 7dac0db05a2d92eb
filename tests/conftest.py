"""Shared pieces of the end-to-end tests: a per-session data cache, tiny run settings, CLI helpers
and the few real training runs that several tests inspect.

Every run composes the real ``conf/`` with the ``debug=fast`` overlay plus a narrower network, so
a run takes seconds on one CPU thread. The built-in dataset is generated once per session into a
temporary ``RTMDET_DATA`` folder (never into the repository's ``data_cache/``).

Every test in ``tests/integration`` (trainings, sweeps, kills, resumes) is marked ``slow``, so that
``python -m pytest -q -m "not slow"`` is the quick loop: the unit layer without its heaviest checks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parent.parent
INTEGRATION = REPO / "tests" / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.slow)


# 16 training images of 64 px in batches of 4 (4 steps per epoch), 4 validation images, a network
# of 0.55 M parameters: about 0.1 s per step on one CPU thread.
TINY: tuple[str, ...] = (
    "debug=fast",
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=4",
    "trainer.limit_train_batches=null",
    "model.backbone.widen_factor=0.125",
    "trainer.device=cpu",
)
# Bitwise-reproducible runs of 3 epochs (12 steps), compared by the resume tests.
REPRO: tuple[str, ...] = (*TINY, "trainer.max_epochs=3", "trainer.deterministic=true")


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``RTMDET_DATA`` points at one temporary folder for the whole session (config and subprocesses)."""
    folder = tmp_path_factory.mktemp("rtmdet_data")
    wandb_home = tmp_path_factory.mktemp("wandb_home")  # W&B's staging and cache stay out of the home folder
    values = {"RTMDET_DATA": str(folder), "WANDB_DATA_DIR": str(wandb_home / "data"),
              "WANDB_CACHE_DIR": str(wandb_home / "cache"), "WANDB_CONFIG_DIR": str(wandb_home / "config")}
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield folder
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def one_thread() -> Iterator[None]:
    """In-process runs use one torch thread, as the subprocesses do (fast on a shared CPU, and
    the same arithmetic as the subprocess runs they are compared with)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose(*overrides: str) -> DictConfig:
    """The project's real config with command-line style overrides."""
    from rtmdet_exp.experiment import compose as compose_config

    return compose_config(list(overrides))


def cli_env(**extra: str) -> dict[str, str]:
    """Environment of a ``run.py`` subprocess: one thread, the session's data cache, no W&B."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"})
    env.update(extra)
    return env


def run_cli(args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 300,
            module: str | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` (or ``python -m MODULE ARGS``) in the repository (or ``cwd`` for a module);
    output captured."""
    cmd = [sys.executable, "-m", module] if module else [sys.executable, str(REPO / "run.py")]
    return subprocess.run([*cmd, *args], cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_cli(args: Sequence[str], log_file: Path, new_session: bool = False) -> subprocess.Popen:
    """Start ``python run.py ARGS`` in the background, stdout and stderr into ``log_file``
    (a file, not a pipe, so a chatty run never blocks on a full pipe while the test waits);
    ``new_session`` makes it lead its own process group (to signal it with its loader workers)."""
    with log_file.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env=cli_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=new_session)


def wait_for(predicate: Any, proc: subprocess.Popen, timeout: float = 240, what: str = "") -> None:
    """Poll ``predicate()`` every 10 ms until true; fail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"run exited with code {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def train_records(run_dir: Path) -> list[dict[str, Any]]:
    """The training records (those with ``train/loss``) of a run's metrics.jsonl, in file order."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [rec for rec in map(json.loads, lines) if "train/loss" in rec]


def load_ckpt(path: Path) -> dict[str, Any]:
    from rtmdet_exp.engine.checkpoint import load_checkpoint

    return load_checkpoint(path)


def assert_same_tensors(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    """Two state dicts hold the same keys and bitwise-equal tensors."""
    assert a.keys() == b.keys(), f"{what}: different keys"
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: tensor '{key}' differs"


@dataclass
class KilledRun:
    """A run killed with SIGKILL after its epoch-2 checkpoint, then resumed with resume=true."""

    run_dir: Path
    kill_returncode: int  # return code of the killed process (-SIGKILL when it was still running)
    finished_before_kill: bool  # results.json existed when the process was killed
    records_before_resume: list[dict[str, Any]]  # training records written before the kill
    resume: subprocess.CompletedProcess  # the resumed invocation


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reference run: 3 epochs in one go, deterministic (run A of the resume tests)."""
    run_dir = tmp_path_factory.mktemp("run_a") / "run"
    proc = run_cli([*REPRO, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> KilledRun:
    """The same command as :func:`uninterrupted_run`, ``kill -9`` in epoch 3, once ``epoch_0002.pt``
    is on disk (checkpoints are renamed into place, so the file is complete when it appears) and a
    step of epoch 3 is in metrics.jsonl; then the same command again with ``resume=true`` (run B
    of the resume tests)."""
    base = tmp_path_factory.mktemp("run_b")
    run_dir = base / "run"
    args = [*REPRO, f"hydra.run.dir={run_dir}"]
    proc = start_cli(args, base / "killed.log")
    ckpt = run_dir / "checkpoints" / "epoch_0002.pt"

    def in_epoch_3() -> bool:
        return ckpt.exists() and '"step": 9,' in (run_dir / "metrics.jsonl").read_text()

    wait_for(in_epoch_3, proc, what=f"{ckpt} and a record of step 9")
    proc.send_signal(signal.SIGKILL)
    code = proc.wait(timeout=60)
    finished = '"status": "finished"' in (run_dir / "results.json").read_text()
    before = train_records(run_dir)
    resumed = run_cli([*args, "resume=true"])
    return KilledRun(run_dir, code, finished, before, resumed)


@pytest.fixture(scope="session")
def coco_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny COCO-layout copy of the built-in data (``annotations/instances_{train,val}2017.json``,
    ``train2017/``, ``val2017/``) whose category ids are remapped to 100, 107, 114, ... so that a
    label used in place of a category id is caught."""
    from rtmdet_exp.data.synthetic import ensure_synthetic_dataset

    base = tmp_path_factory.mktemp("coco_src")
    made = ensure_synthetic_dataset(base / "synthetic", num_train=16, num_val=4, img_size=64, seed=0)
    root = base / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copytree(made[f"{split}_images"], root / f"{split}2017")
        coco = json.loads(Path(made[f"{split}_json"]).read_text())
        remap = {cat["id"]: 100 + 7 * i for i, cat in enumerate(coco["categories"])}
        for cat in coco["categories"]:
            cat["id"] = remap[cat["id"]]
        for ann in coco["annotations"]:
            ann["category_id"] = remap[ann["category_id"]]
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    return root


def coco_overrides(root: Path) -> list[str]:
    """TINY settings on a COCO-layout dataset at ``root``."""
    return [o for o in TINY if not o.startswith("data.synthetic")] + ["data=coco", f"data.root={root}",
                                                                      "data.img_size=64"]
