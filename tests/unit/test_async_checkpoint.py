"""Checkpoints written in the background: same file as a foreground write, kill-safe, errors not lost.

The loop snapshots the state (a host copy) and hands it to :class:`BackgroundWriter`; training then
changes the live tensors in place while the file is written. The kill test runs a real process,
slows its write down so that SIGKILL lands in the middle of it, and reads the file afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from rtmdet_exp.engine.checkpoint import (
    BackgroundWriter,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    snapshot,
)
from rtmdet_exp.engine.optim import adamw


def training_state() -> dict:
    """A model (one conv used twice: tied weights), its AdamW state after a step, and an RNG state."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    model = nn.Sequential(conv, nn.BatchNorm2d(4), conv.__class__(4, 4, 1), nn.ModuleList([conv]))
    optimizer = adamw(model, lr=0.01)
    model[:3](torch.randn(2, 3, 8, 8)).square().mean().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
            "state": {"epoch": 3, "best_map": 0.25}, "extra": {"names": ["a", "b"]}}


def test_background_write_is_the_same_file_as_a_foreground_write(tmp_path: Path) -> None:
    state = training_state()
    foreground = save_checkpoint(state, tmp_path / "foreground.pt")
    copy = snapshot(state)
    with torch.no_grad():  # training goes on: the live tensors change while the file is written
        for tensor in state["model"].values():
            tensor.add_(1)
    writer = BackgroundWriter()
    writer.submit(lambda: save_checkpoint(copy, tmp_path / "background.pt"))
    background = writer.wait()
    writer.close()
    assert background.read_bytes() == foreground.read_bytes()
    loaded = load_checkpoint(background)
    assert loaded["state"] == {"epoch": 3, "best_map": 0.25}
    assert loaded["model"]["0.weight"].data_ptr() == loaded["model"]["3.0.weight"].data_ptr()  # still tied


def test_snapshot_copies_and_keeps_views() -> None:
    base = torch.arange(10.0)
    state = {"view": base[2:6], "whole": base, "step": torch.tensor(4), "n": 7, "pair": (base[::3], "x")}
    copy = snapshot(state)
    base.zero_()
    assert copy["view"].tolist() == [2.0, 3.0, 4.0, 5.0] and copy["pair"][0].tolist() == [0.0, 3.0, 6.0, 9.0]
    assert copy["view"].untyped_storage().data_ptr() == copy["whole"].untyped_storage().data_ptr()
    assert copy["n"] == 7 and copy["pair"][1] == "x" and copy["step"].item() == 4


def test_a_failed_background_write_is_raised_on_the_next_call(tmp_path: Path) -> None:
    writer = BackgroundWriter()

    def fail() -> Path:
        raise CheckpointError("could not write checkpoint x.pt: No space left on device (ENOSPC)")

    writer.submit(fail)
    deadline = time.monotonic() + 10
    while not writer._pending.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(CheckpointError, match="ENOSPC"):
        writer.raise_if_failed()
    writer.raise_if_failed()  # raised once
    writer.submit(fail)
    with pytest.raises(CheckpointError, match="x.pt"):
        writer.submit(lambda: save_checkpoint({"a": 1}, tmp_path / "next.pt"))  # the previous error first
    assert not (tmp_path / "next.pt").exists()
    writer.close()


def test_writes_run_one_at_a_time_in_order(tmp_path: Path) -> None:
    order: list[int] = []
    gate = threading.Event()
    writer = BackgroundWriter()

    def first() -> Path:
        gate.wait(5)
        order.append(1)
        return tmp_path

    writer.submit(first)
    timer = threading.Timer(0.2, gate.set)
    timer.start()
    writer.submit(lambda: order.append(2) or tmp_path)  # waits for the first write before queuing
    writer.wait()
    writer.close()
    assert order == [1, 2]


KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    import torch
    from rtmdet_exp.engine import checkpoint as ckpt

    path, marker = sys.argv[1], sys.argv[2]
    ckpt.save_checkpoint({"version": 1, "w": torch.zeros(1000)}, path)
    real_write = ckpt._write_all

    def slow_write(fd, data):  # write in 1 MB pieces, say when half is out, then crawl
        for start in range(0, len(data), 1 << 20):
            real_write(fd, data[start:start + (1 << 20)])
            if start >= len(data) // 2:
                open(marker, "w").close()
                time.sleep(0.5)

    ckpt._write_all = slow_write
    writer = ckpt.BackgroundWriter()
    state = ckpt.snapshot({"version": 2, "w": torch.ones(8 << 20)})  # 32 MB
    writer.submit(lambda: ckpt.save_checkpoint(state, path))
    while True:  # the main thread trains on
        time.sleep(0.05)
""")


@pytest.mark.slow
def test_sigkill_during_a_background_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path, marker = tmp_path / "epoch_0002.pt", tmp_path / "half_written"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(marker)])
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, "the writer process ended before the write was half done"
        assert time.monotonic() < deadline, "timed out waiting for the background write"
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=30)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".epoch_0002.pt.")]
    assert leftovers, "the kill should have landed during the write (a temporary file left behind)"
    state = load_checkpoint(path)
    assert state["version"] == 1 and torch.equal(state["w"], torch.zeros(1000))
