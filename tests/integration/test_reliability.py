"""Fault handling, one test per fault, each fault injected for real into a tiny training run.

Kills and signals go to real ``python run.py`` processes; faults inside the process (a NaN loss,
a full disk, a failing rename, a W&B without credentials) are injected into in-process
``train(cfg, run_dir)`` calls with ``monkeypatch``. What a recovered run must reach is taken from
an uninterrupted twin run (bitwise, in deterministic CPU mode) or from the settings themselves
(steps per epoch, images left after skipping), never from the code under test.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    REPRO,
    TINY,
    KilledRun,
    assert_same_tensors,
    coco_overrides,
    compose,
    load_ckpt,
    run_cli,
    start_cli,
    train_records,
    wait_for,
)

from rtmdet_exp.experiment.errors import ConfigError
from rtmdet_exp.engine import checkpoint as ckpt_module
from rtmdet_exp.engine.checkpoint import CheckpointError
from rtmdet_exp.engine.loop import NonFiniteLossError
from rtmdet_exp.models.detector import Detector
from rtmdet_exp.experiment.rundir import RunFolderError
from rtmdet_exp.experiment.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS_PER_EPOCH = 4  # TINY: 16 training images in batches of 4


def val_metrics(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    return {k: v for k, v in metrics.items() if k.startswith("val/")}


def final_weights_equal(a: Path, b: Path, epoch: int = 3) -> None:
    """The last epoch checkpoints of two runs hold bitwise-equal model and EMA weights."""
    ca = load_ckpt(a / "checkpoints" / f"epoch_{epoch:04d}.pt")
    cb = load_ckpt(b / "checkpoints" / f"epoch_{epoch:04d}.pt")
    assert_same_tensors(ca["model"], cb["model"], "model")
    assert_same_tensors(ca["ema"]["module"], cb["ema"]["module"], "EMA")


def step_records(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, train/loss, train/lr) of every training record, in file order."""
    return [(r["step"], r["train/loss"], r["train/lr"]) for r in train_records(run_dir)]


def nan_loss_on_calls(monkeypatch: pytest.MonkeyPatch, first: int, last: int | None = None) -> None:
    """From the ``first``-th training forward (1-based) to the ``last``-th, ``Detector.loss``
    returns ``loss_cls * NaN``: a NaN that flows through backward like a real blow-up."""
    original = Detector.loss
    calls = [0]

    def loss(self: Detector, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = original(self, images, targets)
        calls[0] += 1
        if calls[0] >= first and (last is None or calls[0] <= last):
            out["loss_cls"] = out["loss_cls"] * float("nan")
        return out

    monkeypatch.setattr(Detector, "loss", loss)


# ------------------------------------------------------------------------------ process kills
@pytest.mark.slow
def test_kill9_then_resume_ends_like_an_uninterrupted_run(uninterrupted_run: Path, killed_run: KilledRun) -> None:
    """``kill -9`` in epoch 3, then the same command with resume=true: it goes on from epoch 2's
    checkpoint and ends with the weights, training records and val numbers of run A."""
    assert killed_run.kill_returncode == -signal.SIGKILL, "the run had already finished when killed"
    assert not killed_run.finished_before_kill
    assert max(r["step"] for r in killed_run.records_before_resume) > 2 * STEPS_PER_EPOCH  # records to drop
    resume = killed_run.resume
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    assert f"resumed from {killed_run.run_dir / 'checkpoints' / 'epoch_0002.pt'}" in resume.stdout + resume.stderr

    final_weights_equal(uninterrupted_run, killed_run.run_dir)
    # every step once (records written after the kill point were dropped on resume), same losses and lr
    assert step_records(killed_run.run_dir) == step_records(uninterrupted_run)
    assert [r["step"] for r in train_records(killed_run.run_dir)] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    assert val_metrics(killed_run.run_dir) == val_metrics(uninterrupted_run)
    a = json.loads((uninterrupted_run / "results.json").read_text())
    b = json.loads((killed_run.run_dir / "results.json").read_text())
    assert a["per_class_AP"] == b["per_class_AP"]
    assert a["metrics"]["steps"] == b["metrics"]["steps"] == 3 * STEPS_PER_EPOCH


@pytest.mark.slow
def test_sigterm_saves_an_interrupt_checkpoint_and_resume_continues_from_it(
    uninterrupted_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM mid-epoch to the run's whole process group (as SLURM or ``timeout`` send it, so the
    two loader workers get it too): the run saves ``checkpoints/interrupt.pt`` and exits non-zero
    with a message; resume=true (in-process, no workers) continues mid-epoch from it and ends
    bitwise equal to run A."""
    run_dir = tmp_path / "run"
    log_file = tmp_path / "terminated.log"
    proc = start_cli([*REPRO, "data.num_workers=2", f"hydra.run.dir={run_dir}"], log_file, new_session=True)

    def trained_a_step() -> bool:
        path = run_dir / "metrics.jsonl"
        return path.exists() and '"train/loss"' in path.read_text()

    wait_for(trained_a_step, proc, what="the first training record")
    os.killpg(proc.pid, signal.SIGTERM)
    code = proc.wait(timeout=120)
    output = log_file.read_text()
    interrupt = run_dir / "checkpoints" / "interrupt.pt"
    assert code == 2, output[-3000:]
    assert "SIGTERM" in output and "resume=true" in output and str(interrupt) in output
    state = load_ckpt(interrupt)["state"]
    assert 1 <= state["batch_in_epoch"] <= STEPS_PER_EPOCH and state["step"] < 3 * STEPS_PER_EPOCH
    assert state["step"] == state["epoch"] * STEPS_PER_EPOCH + state["batch_in_epoch"]
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"

    caplog.set_level(logging.INFO, logger="rtmdet_exp")
    train(compose(*REPRO, "resume=true"), run_dir=run_dir)
    assert f"resumed from {interrupt}" in caplog.text
    assert not interrupt.exists()  # consumed once the epoch it interrupted is complete
    final_weights_equal(uninterrupted_run, run_dir)
    assert step_records(run_dir) == step_records(uninterrupted_run)


def test_a_metrics_line_cut_short_by_a_crash_is_dropped_on_resume(uninterrupted_run: Path, tmp_path: Path) -> None:
    """A crash in the middle of writing metrics.jsonl leaves a partial last line; resume drops it
    (with the records past the resumed step) instead of failing, and the file is valid JSONL again."""
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted_run, run_dir)
    (run_dir / "results.json").unlink()  # died after the last checkpoint, before the final record
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 13, "train/loss_cls": 0.01')
    train(compose(*REPRO, "resume=true"), run_dir=run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert step_records(run_dir) == step_records(uninterrupted_run)
    assert (run_dir / "results.json").exists()


# ------------------------------------------------------------------------------ checkpoints
@pytest.mark.slow
def test_truncated_checkpoint_is_detected_and_the_previous_one_used(
    uninterrupted_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The newest epoch checkpoint cut in half: resume warns naming it and the one used instead,
    goes on from epoch 2, and retrains epoch 3 to the same weights as run A."""
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted_run, run_dir)
    (run_dir / "results.json").unlink()  # the run died after writing epoch 3 (e.g. during the final eval)
    newest, previous = run_dir / "checkpoints" / "epoch_0003.pt", run_dir / "checkpoints" / "epoch_0002.pt"
    with newest.open("r+b") as f:
        f.truncate(newest.stat().st_size // 2)

    caplog.set_level(logging.INFO, logger="rtmdet_exp")
    summary = train(compose(*REPRO, "resume=true"), run_dir=run_dir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(newest) in m and str(previous) in m for m in warnings), warnings
    assert f"resumed from {previous}" in caplog.text
    assert summary["steps"] == 3 * STEPS_PER_EPOCH
    final_weights_equal(uninterrupted_run, run_dir)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the file being written")
def test_full_disk_during_a_checkpoint_keeps_the_previous_one_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC half-way through writing epoch 2's checkpoint: the run stops with a message naming the
    file and the cause, epoch 1's checkpoint is intact and loadable, no partial file is left."""
    real_write = ckpt_module._write_all

    def write_until_full(fd: int, data: memoryview) -> None:
        if "epoch_0002" in os.readlink(f"/proc/self/fd/{fd}"):
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(fd, data)

    monkeypatch.setattr(ckpt_module, "_write_all", write_until_full)
    run_dir = tmp_path / "run"
    with pytest.raises(CheckpointError) as err:
        train(compose(*TINY, "trainer.max_epochs=3"), run_dir=run_dir)
    message = str(err.value)
    assert "epoch_0002.pt" in message and "No space left on device" in message and "ENOSPC" in message
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "epoch_0001.pt"]  # no temp file left
    state = load_ckpt(ckpts / "epoch_0001.pt")["state"]
    assert (state["epoch"], state["step"]) == (1, STEPS_PER_EPOCH)
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "failed" and "ENOSPC" in record["error"]


# ------------------------------------------------------------------------------ non-finite loss
def test_nan_loss_stops_after_max_bad_steps_naming_step_terms_and_lr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN from step 6 on with max_bad_steps=3: steps 6 and 7 are skipped, step 8 (the third in a row)
    stops the run with NonFiniteLossError naming the step, the loss terms and the lr; epoch 1's
    checkpoint (the last good one) is intact, loadable and finite."""
    nan_loss_on_calls(monkeypatch, first=6)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        train(compose(*TINY, "trainer.max_epochs=3", "trainer.max_bad_steps=3"), run_dir=run_dir)
    message = str(err.value)
    records = {r["step"]: r for r in train_records(run_dir)}
    assert sorted(records) == [1, 2, 3, 4, 5, 6, 7, 8]  # debug=fast logs every step; step 8's record, then the stop
    assert all(records[s]["train/loss"] == "nan" for s in (6, 7, 8))
    assert "step 8" in message and "loss_cls=nan" in message and "loss_bbox=" in message
    assert f"lr {records[8]['train/lr']:.4g}" in message

    ckpts = run_dir / "checkpoints"
    assert not (ckpts / "epoch_0002.pt").exists()
    good = load_ckpt(ckpts / "epoch_0001.pt")
    assert good["state"]["step"] == STEPS_PER_EPOCH and good["state"]["skipped_steps"] == 0
    assert all(torch.isfinite(t).all() for t in good["model"].values() if t.is_floating_point())
    assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"


def test_an_isolated_nan_step_is_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One NaN step (step 6 of 12) is skipped with a warning, the run finishes with finite weights,
    and results.json counts it in perf/skipped_steps."""
    nan_loss_on_calls(monkeypatch, first=6, last=6)
    run_dir = tmp_path / "run"
    train(compose(*TINY, "trainer.max_epochs=3"), run_dir=run_dir)
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert metrics["perf/skipped_steps"] == 1 and metrics["steps"] == 3 * STEPS_PER_EPOCH
    assert any("skipped, the last at step 6" in r.getMessage() for r in caplog.records)
    final = load_ckpt(run_dir / "checkpoints" / "epoch_0003.pt")
    assert all(torch.isfinite(t).all() for t in final["model"].values() if t.is_floating_point())


# ------------------------------------------------------------------------------ bad data
def broken_copy(coco_dataset: Path, dest: Path) -> tuple[str, str]:
    """Copy the COCO-layout dataset, cut one training JPEG short and delete another."""
    shutil.copytree(coco_dataset, dest)
    images = sorted((dest / "train2017").glob("*.jpg"))
    truncated, missing = images[3], images[5]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    missing.unlink()
    return truncated.name, missing.name


def test_bad_images_stop_the_run_before_training_with_a_report(coco_dataset: Path, tmp_path: Path) -> None:
    """A truncated JPEG and a missing file: ``python run.py`` stops (exit 2) before training, and the
    report names both files."""
    root = tmp_path / "coco"
    truncated, missing = broken_copy(coco_dataset, root)
    run_dir = tmp_path / "run"
    proc = run_cli([*coco_overrides(root), f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert truncated in proc.stderr and missing in proc.stderr and "Traceback" not in proc.stderr
    assert "on_error=skip" in proc.stderr  # the report says how to go on
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()


def test_bad_images_are_skipped_and_counted_with_on_error_skip(
    coco_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With data.on_error=skip the run trains on the 14 good images (3 whole batches of 4 per
    epoch, so 6 steps in 2 epochs) and reports that 2 of the 16 were skipped."""
    root = tmp_path / "coco"
    truncated, missing = broken_copy(coco_dataset, root)
    run_dir = tmp_path / "run"
    summary = train(compose(*coco_overrides(root), "data.on_error=skip"), run_dir=run_dir)
    assert summary["steps"] == 2 * (14 // 4)
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "skipping 2 of 16 images" in text and truncated in text and missing in text


# ------------------------------------------------------------------------------ loggers, files
def test_misconfigured_wandb_warns_once_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``logger=wandb logger.mode=online`` with no API key anywhere (a real W&B misconfiguration,
    refused by wandb at once, without network): one warning, and the run finishes with its local
    metrics.jsonl and results.json."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no ~/.config/wandb
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb_config"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    run_dir = tmp_path / "run"
    start = time.monotonic()
    summary = train(compose(*TINY, "logger=wandb", "logger.mode=online", "trainer.max_epochs=1"), run_dir=run_dir)
    elapsed = time.monotonic() - start

    warned = [r.getMessage() for r in caplog.records if r.name == "rtmdet_exp.engine.loggers"
              and r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "W&B" in warned[0] and "local logging" in warned[0], warned
    assert summary["steps"] == STEPS_PER_EPOCH
    assert [r["step"] for r in train_records(run_dir)] == list(range(1, STEPS_PER_EPOCH + 1))
    assert (run_dir / "results.json").exists()
    assert elapsed < 60, f"a misconfigured W&B held the run for {elapsed:.0f} s"


def test_a_new_run_never_writes_into_the_folder_of_another_run(uninterrupted_run: Path, tmp_path: Path) -> None:
    """Without resume=true, starting a run in a folder that holds a finished run (results.json),
    with the same or other settings, or an unfinished run with other settings, fails naming the
    folder and leaves every file as it was. The same command in its own unfinished folder goes on
    (auto-resume of a preempted job)."""
    def snapshot(folder: Path) -> dict[Path, tuple[bytes, int]]:
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}

    finished = tmp_path / "finished"
    shutil.copytree(uninterrupted_run, finished)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(uninterrupted_run, unfinished)
    (unfinished / "results.json").unlink()  # killed after its last checkpoint
    cases = [(finished, REPRO), (finished, (*REPRO, "optim.lr=0.01")), (unfinished, (*REPRO, "optim.lr=0.01"))]
    for run_dir, overrides in cases:
        before = snapshot(run_dir)
        with pytest.raises((ConfigError, RunFolderError)) as err:
            train(compose(*overrides), run_dir=run_dir)
        assert str(run_dir) in str(err.value) and "resume=true" in str(err.value)
        assert snapshot(run_dir) == before
    assert "optim.lr" in str(err.value)  # the unfinished case names what differs

    summary = train(compose(*REPRO), run_dir=unfinished)
    assert summary["steps"] == 3 * STEPS_PER_EPOCH and (unfinished / "results.json").exists()


def test_results_json_is_written_atomically(
    uninterrupted_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename that publishes results.json fails: a fresh run leaves no results.json at all,
    and a re-evaluated finished run keeps its old results.json byte for byte; no temp file stays."""
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(dst).name == "results.json":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)

    fresh = tmp_path / "fresh"
    with pytest.raises(OSError):
        train(compose(*TINY, "trainer.max_epochs=1"), run_dir=fresh)
    assert not [p.name for p in fresh.iterdir() if p.name.startswith((".results", "results"))]

    finished = tmp_path / "finished"
    shutil.copytree(uninterrupted_run, finished)
    old = (finished / "results.json").read_bytes()
    with pytest.raises(OSError):  # a finished run extended by one epoch: results.json is rewritten at its start
        train(compose(*REPRO, "resume=true", "trainer.max_epochs=4"), run_dir=finished)
    assert (finished / "results.json").read_bytes() == old
    assert [p.name for p in finished.iterdir() if p.name.startswith((".results", "results"))] == ["results.json"]


# ------------------------------------------------------------------------ failures after an epoch
def test_every_checkpoint_invalid_stops_resume_naming_each_file(uninterrupted_run: Path, tmp_path: Path) -> None:
    """resume=true on a run whose checkpoints are all corrupt stops (no silent fresh start), listing
    every file with why it is invalid and naming the option that starts over; nothing is written."""
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted_run, run_dir)
    (run_dir / "results.json").unlink()  # an unfinished run
    ckpts = sorted((run_dir / "checkpoints").glob("epoch_*.pt"))
    assert len(ckpts) == 2
    ckpts[0].write_bytes(ckpts[0].read_bytes()[:100])  # truncated
    data = bytearray(ckpts[1].read_bytes())
    data[-10] ^= 0xFF  # one flipped byte: the checksum fails
    ckpts[1].write_bytes(bytes(data))
    with pytest.raises(RunFolderError) as err:
        train(compose(*REPRO, "resume=true"), run_dir=run_dir)
    message = str(err.value)
    assert all(p.name in message for p in ckpts) and "truncated" in message and "checksum" in message
    assert "resume=false" in message
    assert not (run_dir / "results.json").exists()


def test_a_crash_in_validation_keeps_the_epoch_and_resume_redoes_it(
    uninterrupted_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation raises after epoch 2: its checkpoint is already on disk, the error says to resume,
    and resume=true validates epoch 2 again, then finishes like run A (one record per validation)."""
    from rtmdet_exp.engine.loop import ValidationFailedError
    from rtmdet_exp.engine.validation import Validator

    real = Validator.__call__
    calls = [0]

    def failing_second(self: Validator, detector: Any, max_images: Any = None) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise KeyError("iscrowd")
        return real(self, detector, max_images)

    run_dir = tmp_path / "run"
    monkeypatch.setattr(Validator, "__call__", failing_second)
    with pytest.raises(ValidationFailedError, match="epoch 2.*resume=true"):
        train(compose(*REPRO), run_dir=run_dir)
    assert (run_dir / "checkpoints" / "epoch_0002.pt").exists()
    monkeypatch.setattr(Validator, "__call__", real)
    train(compose(*REPRO, "resume=true"), run_dir=run_dir)
    final_weights_equal(uninterrupted_run, run_dir)
    val_epochs = [r["epoch"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                  if "val/mAP" in r]
    assert val_epochs == [1, 2, 3]


def test_a_failing_logger_is_switched_off_and_the_run_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rtmdet_exp.engine.loggers import NullLogger

    def broken(self: NullLogger, metrics: dict, step: int) -> None:
        raise OSError("the logging service went away")

    monkeypatch.setattr(NullLogger, "log_metrics", broken)
    summary = train(compose(*TINY, "trainer.max_epochs=1"), run_dir=tmp_path / "run")
    assert summary["steps"] == STEPS_PER_EPOCH
    warnings = [r.getMessage() for r in caplog.records if "switched off" in r.getMessage()]
    assert len(warnings) == 1 and "NullLogger failed in log_metrics (OSError" in warnings[0], warnings
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("train/loss") >= 1  # local logging went on
