"""W&B, offline: a run's best and last checkpoints as artifacts, and the report as W&B Tables in a
study summary run.

What W&B keeps offline is read back from its files, not from W&B's Python objects: an offline run
is a folder ``wandb/offline-run-<time>-<id>/`` whose ``run-<id>.wandb`` holds every record (config,
history, summary, artifacts) as protobuf ``Record`` messages in LevelDB's log format (a 7-byte
W&B header, then 32 KiB blocks of chunks, each with a CRC-32, a length and a FULL/FIRST/MIDDLE/
LAST type); logged tables are JSON files under ``files/media/table/``, and artifact files are
staged under ``$WANDB_DATA_DIR/artifacts/staging`` until ``wandb sync`` uploads them. The reader
below decodes that log with the message classes of the installed wandb. Expected values come
from the run folder (``results.json``, ``metrics.jsonl``, the checkpoint files and their MD5)
and, for the report, from numbers written into hand-made run folders and scipy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import TINY, cli_env, run_cli
from scipy import stats

from rtmdet_exp.experiment import rundir

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_wandb_log(path: Path) -> list[Any]:
    """The ``Record`` messages of a ``.wandb`` file, checking the header and every chunk's CRC-32."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B log"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += -pos % BLOCK
            continue
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"{path}: bad checksum at byte {pos}"
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def offline_run(parent: Path) -> tuple[Path, list[Any]]:
    """The one offline run folder under ``parent/wandb`` and its records."""
    (folder,) = (parent / "wandb").glob("offline-run-*")
    (log,) = folder.glob("run-*.wandb")
    return folder, read_wandb_log(log)


def artifacts(records: list[Any]) -> list[Any]:
    return [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]


def md5_b64(path: Path) -> str:
    """W&B's digest of a file: base64 of its MD5."""
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def wandb_env(tmp_path: Path) -> dict[str, str]:
    """Offline W&B with its staging and cache folders inside the test's folder."""
    return cli_env(WANDB_MODE="offline", WANDB_DATA_DIR=str(tmp_path / "wandb_data"),
                   WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"), WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"))


@pytest.mark.slow
def test_best_and_last_checkpoints_are_artifacts_with_config_and_metrics(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY, "logger=wandb", "trainer.max_epochs=3", "trainer.val_interval=1",
                    f"hydra.run.dir={run_dir}"], env=wandb_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder, records = offline_run(run_dir)
    results = rundir.read_results(run_dir)
    by_alias = {alias: a for a in artifacts(records) for alias in a.aliases}
    best, last = by_alias["best"], by_alias["last"]
    run_id = folder.name.rsplit("-", 1)[1]
    assert best.name == last.name == f"model-{run_id}" and best.type == last.type == "model"

    best_meta, last_meta = json.loads(best.metadata), json.loads(last.metadata)
    for meta in (best_meta, last_meta):  # the run's own flat config
        assert meta["config"]["model.backbone.widen_factor"] == 0.125 and meta["config"]["trainer.max_epochs"] == 3
    best_epoch = results["metrics"]["val/best_epoch"]
    validation = [r for r in rundir.read_metrics(run_dir) if r.get("epoch") == best_epoch and "val/mAP" in r][-1]
    assert best_meta["kind"] == "best" and best_meta["epoch"] == best_epoch
    assert best_meta["metrics"]["val/mAP"] == validation["val/mAP"]
    assert last_meta["kind"] == "last" and last_meta["epoch"] == 3
    assert last_meta["metrics"]["val/mAP_best"] == results["metrics"]["val/mAP_best"]
    assert last_meta["metrics"]["val/mAP"] == results["metrics"]["val/mAP"]

    checkpoints = run_dir / rundir.CHECKPOINTS
    for artifact, file in ((best, checkpoints / rundir.BEST), (last, checkpoints / "epoch_0003.pt")):
        (entry,) = artifact.manifest.contents
        assert entry.path == file.name and entry.digest == md5_b64(file)
        assert Path(entry.local_path).is_file() and md5_b64(Path(entry.local_path)) == entry.digest  # staged copy
        assert str(tmp_path / "wandb_data") in entry.local_path


def write_run(folder: Path, overrides: list[str], metrics: dict[str, float]) -> None:
    """A finished run folder as the report reads it: Hydra's overrides and results.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    rundir.write_results(folder, {"status": rundir.STATUS_FINISHED, "metrics": metrics, "overrides": overrides})


def table_of(folder: Path, records: list[Any], key: str) -> dict[str, Any]:
    """The JSON of the W&B Table logged under ``key`` (its file path is in the history record)."""
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            if list(item.nested_key) == [key, "path"]:
                return json.loads((folder / "files" / json.loads(item.value_json)).read_text())
    raise AssertionError(f"no table {key} in the log")


@pytest.mark.slow
def test_report_tables_and_study_summary_run(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun" / "kernel_size" / "2026-11-29_10-00-00"
    values = {("k5", 0): 0.30, ("k5", 1): 0.34, ("k3", 0): 0.25, ("k3", 1): 0.30}
    for job, ((kernel, seed), value) in enumerate(values.items()):
        write_run(sweep / f"{job}_kernel={kernel},seed={seed}", [f"kernel={kernel}", f"seed={seed}"],
                  {"val/mAP": value, "val/mAP50": value + 0.2, "epochs": 2})
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{sweep / 'optuna.db'}", direction="maximize")
    space = {"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    for lr, value in ((0.01, 0.4), (0.001, 0.2)):
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": lr}, distributions=space, value=value))
    study.add_trial(optuna.trial.create_trial(params={"optim.lr": 1e-4}, distributions=space,
                                              state=optuna.trial.TrialState.PRUNED))

    proc = run_cli([str(sweep), "wandb=true", "bootstrap=0"], env=wandb_env(tmp_path), module="rtmdet_exp.report")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder, records = offline_run(sweep / "report")

    ablation = table_of(folder, records, "report/ablation")
    rows = {row[0]: dict(zip(ablation["columns"], row)) for row in ablation["data"]}
    assert rows["kernel=k5"]["baseline"] is True and rows["kernel=k5"]["val/mAP mean"] == pytest.approx(0.32)
    assert rows["kernel=k5"]["val/mAP std"] == pytest.approx(0.0008 ** 0.5)  # sample std of 0.30, 0.34
    assert rows["kernel=k3"]["val/mAP mean"] == pytest.approx(0.275)
    assert rows["kernel=k3"]["delta"] == pytest.approx(-0.045) and rows["kernel=k3"]["val/mAP50 mean"] == pytest.approx(0.475)
    comparisons = table_of(folder, records, "report/comparisons")
    (row,) = [dict(zip(comparisons["columns"], r)) for r in comparisons["data"]]
    reference = stats.ttest_rel([0.25, 0.30], [0.30, 0.34])  # paired over seeds 0 and 1, one comparison
    assert row["test"] == "paired t" and row["p (Holm)"] == pytest.approx(reference.pvalue)
    seeds = table_of(folder, records, "report/seeds")
    assert sorted((r[0], r[1], r[3]) for r in seeds["data"]) == sorted(
        (f"kernel={k}", s, pytest.approx(v)) for (k, s), v in values.items())
    trials = table_of(folder, records, "optuna/s/trials")
    cells = [dict(zip(trials["columns"], r)) for r in trials["data"]]
    assert [(c["trial"], c["state"]) for c in cells] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED")]
    assert [c["objective 0"] for c in cells[:2]] == pytest.approx([0.4, 0.2]) and cells[2]["objective 0"] is None

    summaries = [r.summary for r in records if r.WhichOneof("record_type") == "summary"]
    last_summary = {"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                    for s in summaries for item in s.update}
    assert last_summary["report/best_setting"] == "kernel=k5" and last_summary["optuna/s/best_trial"] == 0
    (report,) = [a for a in artifacts(records) if a.type == "report"]
    entries = {e.path: e.digest for e in report.manifest.contents}
    assert entries["report.md"] == md5_b64(sweep / "report" / "report.md")
    group = next(r.run.run_group for r in records if r.WhichOneof("record_type") == "run")
    assert group == "kernel_size/2026-11-29_10-00-00"  # the W&B group the sweep's training runs use
