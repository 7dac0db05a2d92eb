"""SIGKILL at five seeded moments of one run, each followed by the same command with ``resume=true``,
ends with bitwise the weights of the same command run without interruption.

The run uses Mosaic + MixUp (whose caches hold earlier images), a step-based checkpoint interval
and a validation after every epoch, so the kills land mid-epoch, inside a checkpoint write (the file
half on disk), inside a validation, in stage 2 and right after a resume's replay. The reference is
an uninterrupted run of the same command in another folder: nothing is compared with values the
code computed for itself.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, assert_same_tensors, cli_env, load_ckpt

pytestmark = pytest.mark.slow

ARGS = (*TINY, "augment=rtmdet", "augment.stage2_epochs=1", "trainer.max_epochs=3", "trainer.deterministic=true",
        "trainer.checkpoint_interval_steps=2", "trainer.val_interval=1", "data.num_workers=0")
STEPS = 12  # 16 images in batches of 4, 3 epochs
PAUSED_RUN = REPO / "tests" / "support" / "paused_run.py"


def start(cwd: Path, extra: tuple[str, ...] = (), pause: str | None = None) -> subprocess.Popen:
    env = cli_env(RTMDET_PAUSE_MARKER=str(cwd / "paused"))
    if pause:
        env["RTMDET_PAUSE_AT"] = pause
    return subprocess.Popen([sys.executable, str(PAUSED_RUN), *ARGS, *extra], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=(cwd / "log.txt").open("a"))


def run_folder(cwd: Path) -> Path:
    (identity,) = list((cwd / "outputs").iterdir())
    (folder,) = list(identity.iterdir())  # one folder: every resume continued it
    return folder


def last_step(cwd: Path) -> int:
    try:
        metrics = run_folder(cwd) / "metrics.jsonl"
        steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.endswith("}")]
    except (ValueError, OSError):
        return 0
    return max(steps, default=0)


def has_checkpoint(cwd: Path) -> bool:
    try:
        return any((run_folder(cwd) / "checkpoints").glob("step_*.pt"))
    except (ValueError, OSError):
        return False


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 240) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended (code {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def test_five_kills_then_resume_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir(), killed.mkdir()
    ref = start(reference)
    rng = random.Random(2026)
    marker = killed / "paused"
    first, stage2 = rng.randint(3, 4), rng.randint(9, 10)
    moments = [  # the first kill waits for a checkpoint: before one, there is nothing to resume (and it says so)
        ("a step of epoch 1", None, lambda: last_step(killed) >= first and has_checkpoint(killed)),
        ("a checkpoint write", "checkpoint", marker.exists),
        ("a validation", "validation", marker.exists),
        ("a step of stage 2", None, lambda: last_step(killed) >= stage2),
        ("the first step after a resume", None, lambda: last_step(killed) >= 11),
    ]
    for i, (what, pause, ready) in enumerate(moments):
        marker.unlink(missing_ok=True)
        proc = start(killed, ("resume=true",) if i else (), pause)
        kill_when(proc, ready, what)
    final = start(killed, ("resume=true",))
    assert final.wait(timeout=300) == 0, (killed / "log.txt").read_text()[-3000:]
    assert ref.wait(timeout=300) == 0, (reference / "log.txt").read_text()[-3000:]

    a, b = run_folder(reference), run_folder(killed)
    assert a.parent.name == b.parent.name  # the same command, the same identity
    ca, cb = load_ckpt(a / "checkpoints" / "epoch_0003.pt"), load_ckpt(b / "checkpoints" / "epoch_0003.pt")
    assert ca["state"]["step"] == cb["state"]["step"] == STEPS
    assert_same_tensors(ca["model"], cb["model"], "model")
    assert_same_tensors(ca["ema"]["module"], cb["ema"]["module"], "EMA")
    ra, rb = (json.loads((f / "results.json").read_text()) for f in (a, b))
    assert rb["status"] == "finished" and ra["metrics"]["val/mAP"] == rb["metrics"]["val/mAP"]
    steps = [json.loads(line)["step"] for line in (b / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == list(range(1, STEPS + 1))  # every step logged once, none twice
    assert not list((b / "checkpoints").glob(".*.tmp"))  # the killed write's temp file was cleared
