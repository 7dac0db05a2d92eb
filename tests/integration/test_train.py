"""End-to-end tests of the training platform: real configs, real runs, tiny sizes.

Each test composes the real ``conf/`` (mostly through the ``debug=fast`` overlay) and runs either
``train(cfg, run_dir)`` in-process or ``python run.py`` as a subprocess, then checks the files a
user relies on: ``metrics.jsonl``, ``results.json``, ``checkpoints/``, W&B offline files and the
output of ``rtmdet_exp.predict``. Expected values come from the inputs (the dataset json, the
step counts the settings imply, an uninterrupted twin run), never from the code under test.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
import torch
import yaml
from conftest import (
    TINY,
    KilledRun,
    assert_same_tensors,
    cli_env,
    coco_overrides,
    compose,
    load_ckpt,
    run_cli,
    train_records,
)

from rtmdet_exp.experiment.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_short_training_lowers_the_loss(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """24 steps on the same 8 images (``debug=overfit``) at 64 px with the default model, assigner
    and losses: the mean loss of the last 3 steps is below 0.7 of the first 3 (it is about 0.5),
    and the run leaves a metrics file and loadable checkpoints, and its log the last epoch's line."""
    cfg = compose("debug=overfit", "data.img_size=64", "trainer.max_epochs=24", "trainer.device=cpu",
                  "model.backbone.widen_factor=0.125")
    with caplog.at_level(logging.INFO, logger="rtmdet_exp.engine.loop"):
        summary = train(cfg, run_dir=tmp_path)
    assert "epoch 24/24 done in " in caplog.text and "(step 24 of 24, " in caplog.text

    records = train_records(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 25))  # 8 images, batch 8: one step per epoch
    first = sum(r["train/loss"] for r in records[:3]) / 3
    last = sum(r["train/loss"] for r in records[-3:]) / 3
    assert last < 0.7 * first, f"loss did not fall: first 3 steps {first:.3f}, last 3 steps {last:.3f}"

    final = load_ckpt(tmp_path / "checkpoints" / "epoch_0024.pt")
    assert final["state"]["epoch"] == 24 and final["state"]["step"] == 24
    assert all(torch.isfinite(t).all() for t in final["model"].values() if t.is_floating_point())
    assert (tmp_path / "checkpoints" / "best.pt").exists()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"]["steps"] == 24 and "val/mAP" in results["metrics"]
    assert summary["val/mAP_best"] == results["metrics"]["val/mAP_best"]


@pytest.mark.slow
def test_resume_after_a_stop_gives_the_weights_of_an_uninterrupted_run(
    uninterrupted_run: Path, killed_run: KilledRun
) -> None:
    """Run B was killed in epoch 3 of 3 and resumed from epoch 2's checkpoint; its final weights,
    EMA weights and optimiser state are bitwise those of run A, which ran the 3 epochs in one go."""
    assert killed_run.kill_returncode == -9 and not killed_run.finished_before_kill
    assert killed_run.resume.returncode == 0, killed_run.resume.stdout[-3000:] + killed_run.resume.stderr[-3000:]
    a = load_ckpt(uninterrupted_run / "checkpoints" / "epoch_0003.pt")
    b = load_ckpt(killed_run.run_dir / "checkpoints" / "epoch_0003.pt")
    assert a["state"]["step"] == b["state"]["step"] == 12
    assert_same_tensors(a["model"], b["model"], "model")
    assert_same_tensors(a["ema"]["module"], b["ema"]["module"], "EMA")
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert_same_tensors(sa, sb, "optimizer state")


def test_bad_config_values_fail_fast_with_a_readable_message(tmp_path: Path) -> None:
    """Three wrong values, each run as a real command (started together): each fails in
    seconds with the key or path named, before any data is touched (the data cache folder is never
    created) and before any checkpoint folder exists."""
    cache = tmp_path / "data_cache_never_created"
    cases = {
        "unknown_model": [*TINY, "model=rtmdet_q"],
        "negative_lr": [*TINY, "optim.lr=-1"],
        "missing_data": coco_overrides(Path("/nonexistent_rtmdet_data")),
    }
    procs = {}
    start = time.monotonic()
    for name, args in cases.items():
        procs[name] = subprocess.Popen(
            [sys.executable, "run.py", *args, f"hydra.run.dir={tmp_path / name}"],
            cwd=Path(__file__).resolve().parents[2], env=cli_env(RTMDET_DATA=str(cache)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    out = {name: proc.communicate(timeout=300) for name, proc in procs.items()}
    elapsed = time.monotonic() - start

    stdout, stderr = out["unknown_model"]
    assert procs["unknown_model"].returncode != 0
    assert "rtmdet_q" in stderr and "rtmdet_tiny" in stderr and "rtmdet_s" in stderr  # Hydra lists the options

    stdout, stderr = out["negative_lr"]
    assert procs["negative_lr"].returncode == 2
    assert "optim.lr" in stderr and "Traceback" not in stderr

    stdout, stderr = out["missing_data"]
    assert procs["missing_data"].returncode == 2, stderr[-3000:]
    assert "/nonexistent_rtmdet_data" in stderr and "Traceback" not in stderr

    assert not cache.exists()
    for name in cases:
        assert not (tmp_path / name / "checkpoints").exists()
        assert not (tmp_path / name / "metrics.jsonl").exists()
    assert elapsed < 120, f"three failing commands took {elapsed:.0f} s"


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    """``python run.py --cfg job`` prints the composed config (with the chosen options) and runs nothing."""
    proc = run_cli(["--cfg", "job", "model=rtmdet_s", "optim.lr=0.001", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["backbone"]["deepen_factor"] == 0.33  # conf/model/rtmdet_s.yaml
    assert cfg["model"]["backbone"]["widen_factor"] == 0.5
    assert cfg["optim"]["lr"] == 0.001
    assert set(cfg) >= {"data", "model", "assigner", "loss", "augment", "optim", "schedule", "trainer", "logger"}
    assert not (tmp_path / "run").exists()


def wandb_history(path: Path) -> dict[int, dict[str, Any]]:
    """History rows (step -> {key: value}) of a W&B offline transaction log ``run-*.wandb``.

    The file is a LevelDB-style log: a 7-byte file header (``:W&B``, magic, version), then 32 KiB
    blocks of chunks, each with a 7-byte header (crc32, little-endian length, type 1 full, 2 first,
    3 middle, 4 last); a block tail shorter than a header is zero padding. A record is a
    ``wandb_internal_pb2.Record`` protobuf; history rows carry their values as JSON text.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, pos, pending, rows = 32768, 7, b"", {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                rows.setdefault(record.history.step.num, {}).update(items)
    return rows


@pytest.mark.slow
def test_wandb_offline_run_holds_the_logged_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``logger=wandb`` offline writes ``wandb/offline-run-*/run-*.wandb`` in the run folder, whose
    history holds every record of metrics.jsonl at the same step with the same values, and the
    validation images at the step of each validation."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "run"
    train(compose(*TINY, "logger=wandb", "run_name=wandb-e2e"), run_dir=run_dir)

    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, sorted(run_dir.rglob("*"))
    history = wandb_history(files[0])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val_steps = [r["step"] for r in records if "val/mAP" in r]
    assert val_steps == [4, 8]  # TINY: 2 epochs of 4 steps, validation after each
    for record in records:
        row = history[record["step"]]
        for key, value in record.items():
            if key != "step":
                assert row[key] == value, f"{key} at step {record['step']}: W&B {row.get(key)}, jsonl {value}"
    for step in val_steps:
        assert history[step]["val/images/count"] == 4  # trainer.num_vis_images
    assert b"wandb-e2e" in files[0].read_bytes()  # the run name


@pytest.fixture(scope="module")
def coco_run(coco_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short run on the COCO-layout copy (category ids 100, 107, ...)."""
    run_dir = tmp_path_factory.mktemp("coco_run")
    torch.set_num_threads(1)
    train(compose(*coco_overrides(coco_dataset), "trainer.max_epochs=1"), run_dir=run_dir)
    return run_dir


@pytest.mark.slow
def test_predict_writes_drawn_images_and_coco_results(coco_run: Path, coco_dataset: Path, tmp_path: Path) -> None:
    """``python -m rtmdet_exp.predict`` on a folder: one drawn image per input, and COCO results
    whose category ids are those of the dataset json and whose image ids match images.json."""
    images = coco_dataset / "val2017"
    out = tmp_path / "pred"
    proc = run_cli([f"checkpoint={coco_run / 'checkpoints' / 'best.pt'}", f"images={images}", f"out={out}",
                    "score_thr=0.0"], module="rtmdet_exp.predict")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    inputs = sorted(p.name for p in images.glob("*.jpg"))
    assert sorted(p.name for p in (out / "vis").iterdir()) == inputs
    for name in inputs:
        assert cv2.imread(str(out / "vis" / name)).shape == cv2.imread(str(images / name)).shape
    table = json.loads((out / "images.json").read_text())
    assert sorted(t["file_name"] for t in table) == inputs
    results = json.loads((out / "predictions.json").read_text())
    assert results, "an untrained model still scores above the test score_thr"
    gt = json.loads((coco_dataset / "annotations" / "instances_val2017.json").read_text())
    valid_ids = {c["id"] for c in gt["categories"]}
    assert {r["category_id"] for r in results} <= valid_ids
    sizes = {t["id"]: (t["width"], t["height"]) for t in table}
    assert {r["image_id"] for r in results} <= sizes.keys()
    for r in results:  # xywh in the pixels of the original image
        x, y, w, h = r["bbox"]
        width, height = sizes[r["image_id"]]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and 0.0 <= r["score"] <= 1.0
        assert x + w <= width + 1e-3 and y + h <= height + 1e-3
