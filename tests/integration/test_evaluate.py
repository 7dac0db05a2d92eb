"""``python -m rtmdet_exp.evaluate`` and ``rtmdet_exp.predict ann=`` on a trained checkpoint.

The dataset is the COCO-layout copy of the built-in data (category ids 100, 107, ...), evaluated
through a val json whose image ids are renumbered 1000, 1007, ... so that a file index or a label
written in place of a dataset id is caught. Expected numbers come from pycocotools run on the
written files, and from the training run's own last validation.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import coco_overrides, compose, run_cli
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtmdet_exp.cli import evaluate
from rtmdet_exp.experiment.errors import ConfigError
from rtmdet_exp.experiment.train import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

EPOCHS = 3
SCORE_THR = 0.01  # confusion matrix threshold: a model of 12 steps scores low


@pytest.fixture(scope="module")
def trained(coco_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 3 epochs (12 steps) on the COCO-layout copy; its folder."""
    run_dir = tmp_path_factory.mktemp("eval_run")
    torch.set_num_threads(1)
    train(compose(*coco_overrides(coco_dataset), f"trainer.max_epochs={EPOCHS}"), run_dir=run_dir)
    return run_dir


@pytest.fixture(scope="module")
def renumbered(coco_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The val json with image ids 1000 + 7 * i (the images themselves unchanged)."""
    data = json.loads((coco_dataset / "annotations" / "instances_val2017.json").read_text())
    new_id = {img["id"]: 1000 + 7 * i for i, img in enumerate(data["images"])}
    for img in data["images"]:
        img["id"] = new_id[img["id"]]
    for ann in data["annotations"]:
        ann["image_id"] = new_id[ann["image_id"]]
    path = tmp_path_factory.mktemp("renumbered") / "val.json"
    path.write_text(json.dumps(data))
    return path


def cocoeval(ann_file: Path, results: Path | list, cat_ids: list[int] | None = None) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(str(results) if isinstance(results, Path) else results), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.fixture(scope="module")
def evaluated(trained: Path, renumbered: Path, coco_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval_out")
    proc = run_cli([f"checkpoint={trained / 'checkpoints' / f'epoch_{EPOCHS:04d}.pt'}", "data=coco",
                    f"data.val_json={renumbered}", f"data.val_images={coco_dataset / 'val2017'}", f"out={out}",
                    "workers=0", f"score_thr={SCORE_THR}"], module="rtmdet_exp.evaluate")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "per-class AP" in proc.stdout
    return out


def test_results_json_carries_dataset_ids_and_scores_the_printed_map(evaluated: Path, renumbered: Path) -> None:
    record = json.loads((evaluated / "metrics.json").read_text())
    detections = json.loads((evaluated / "detections.json").read_text())
    gt = json.loads(renumbered.read_text())
    assert detections and {d["image_id"] for d in detections} <= {img["id"] for img in gt["images"]}
    assert {d["category_id"] for d in detections} <= {c["id"] for c in gt["categories"]}
    assert record["num_images"] == len(gt["images"]) == 4
    ev = cocoeval(renumbered, evaluated / "detections.json")
    keys = ("mAP", "mAP50", "mAP75", "mAP_s", "mAP_m", "mAP_l", "AR1", "AR10", "AR100", "AR_s", "AR_m", "AR_l")
    assert [record["metrics"][k] for k in keys] == pytest.approx(list(ev.stats), abs=1e-12)
    assert record["per_size"] == {"small": ev.stats[3], "medium": ev.stats[4], "large": ev.stats[5]}


def test_map_equals_the_training_runs_own_validation(evaluated: Path, trained: Path) -> None:
    """The last checkpoint (EMA weights) scored alone gives the run's last val/mAP."""
    results = json.loads((trained / "results.json").read_text())
    record = json.loads((evaluated / "metrics.json").read_text())
    assert results["metrics"]["val/mAP"] > 0, "the run should have learnt something in 12 steps"
    assert record["metrics"]["mAP"] == pytest.approx(results["metrics"]["val/mAP"], abs=1e-9)
    assert record["metrics"]["mAP50"] == pytest.approx(results["metrics"]["val/mAP50"], abs=1e-9)
    # final_summary's cost on a machine without a GPU: GMACs, no latency
    metrics = results["metrics"]
    assert metrics["perf/cost"] == pytest.approx(metrics["perf/macs"] / 1e9) and metrics["perf/cost_kind"] == "gmacs"
    assert "perf/latency_ms" not in metrics


def test_per_class_ap_and_confusion_counts(evaluated: Path, renumbered: Path) -> None:
    record = json.loads((evaluated / "metrics.json").read_text())
    gt = json.loads(renumbered.read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    for cat_id, name in names.items():  # each class scored alone by pycocotools
        ev = cocoeval(renumbered, evaluated / "detections.json", [cat_id])
        want = ev.stats[0]
        got = record["per_class"][name]["AP"]
        assert (got == "nan" and want == -1) or got == pytest.approx(want, abs=1e-12), name
    confusion = json.loads((evaluated / "confusion_matrix.json").read_text())
    matrix = confusion["matrix"]
    assert confusion["classes"] == [*(names[c] for c in sorted(names)), "background"]
    per_class_gt = [sum(a["category_id"] == c and not a.get("iscrowd", 0) for a in gt["annotations"])
                    for c in sorted(names)]
    assert [sum(row) for row in matrix[:-1]] == per_class_gt  # every box counted once: found or missed
    detections = json.loads((evaluated / "detections.json").read_text())
    shown = sum(d["score"] >= SCORE_THR for d in detections)
    missed = sum(row[-1] for row in matrix[:-1])
    assert shown > 0 and sum(map(sum, matrix)) - missed == shown  # every detection above score_thr counted once
    assert f"score >= {SCORE_THR}" in confusion["rule"] and "IoU >= 0.5" in confusion["rule"]
    for png in ("pr_curves.png", "confusion_matrix.png"):
        assert (evaluated / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fused_evaluation_gives_the_same_metrics(trained: Path, renumbered: Path, coco_dataset: Path,
                                                 tmp_path: Path) -> None:
    """Folding BatchNorm into the convs keeps the metrics. In fp32: this 12-step model scores nearly every
    candidate alike, and in bf16 its scores take 2 values, so which tied boxes fill each image's top 10
    (AR10) or 300 follows the boxes' last bits, which folding changes; in fp32 the scores stay distinct."""
    args = [f"checkpoint={trained / 'checkpoints' / f'epoch_{EPOCHS:04d}.pt'}", "data=coco", "precision=fp32",
            f"data.val_json={renumbered}", f"data.val_images={coco_dataset / 'val2017'}", "workers=0"]
    unfused = evaluate.main([*args, f"out={tmp_path / 'unfused'}"])
    fused = evaluate.main([*args, "fuse=true", f"out={tmp_path / 'fused'}"])
    assert fused["fused"] is True and unfused["fused"] is False and fused["precision"] == "fp32"
    assert unfused["metrics"]["mAP"] > 0
    for key, value in unfused["metrics"].items():
        assert fused["metrics"][key] == pytest.approx(value, abs=1e-4), key


def test_without_overrides_the_stored_val_split_is_used(trained: Path, coco_dataset: Path) -> None:
    """No data overrides: the split the run validated on, results in <run>/eval/<checkpoint name>/."""
    record = evaluate.main([f"checkpoint={trained / 'checkpoints' / f'epoch_{EPOCHS:04d}.pt'}", "workers=0"])
    out = trained / "eval" / f"epoch_{EPOCHS:04d}"
    assert record["val_json"] == str((coco_dataset / "annotations" / "instances_val2017.json").resolve())
    assert json.loads((out / "metrics.json").read_text())["metrics"] == record["metrics"]
    results = json.loads((trained / "results.json").read_text())
    assert record["metrics"]["mAP"] == pytest.approx(results["metrics"]["val/mAP"], abs=1e-9)


def test_other_class_count_is_refused(trained: Path, renumbered: Path, coco_dataset: Path, tmp_path: Path) -> None:
    data = json.loads(renumbered.read_text())
    dropped = data["categories"].pop()
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != dropped["id"]]
    fewer = tmp_path / "fewer.json"
    fewer.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        evaluate.main([f"checkpoint={trained / 'checkpoints' / 'best.pt'}", f"data.val_json={fewer}",
                       f"data.val_images={coco_dataset / 'val2017'}", f"out={tmp_path / 'out'}", "workers=0"])
    message = str(err.value)
    assert str(fewer) in message and f"{len(data['categories'])} categories" in message
    assert f"{len(data['categories']) + 1} classes" in message
    assert not (tmp_path / "out").exists()


def predict(trained: Path, images: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    proc = run_cli([f"checkpoint={trained / 'checkpoints' / f'epoch_{EPOCHS:04d}.pt'}", f"images={images}",
                    f"out={out}", *extra], module="rtmdet_exp.predict")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "predictions.json").read_text())


def test_predict_with_ann_writes_scorable_results(trained: Path, evaluated: Path, renumbered: Path,
                                                  coco_dataset: Path, tmp_path: Path) -> None:
    """With ann=, image ids follow the json by file name and the results score what evaluate printed;
    without it, ids are file indices and the files say so."""
    results = predict(trained, coco_dataset / "val2017", tmp_path / "with", f"ann={renumbered}")
    gt = json.loads(renumbered.read_text())
    id_of = {img["file_name"]: img["id"] for img in gt["images"]}
    table = json.loads((tmp_path / "with" / "images.json").read_text())
    assert {t["file_name"]: t["id"] for t in table} == id_of
    ev = cocoeval(renumbered, results)
    assert ev.stats[0] == pytest.approx(json.loads((evaluated / "metrics.json").read_text())["metrics"]["mAP"],
                                        abs=1e-9)

    plain = predict(trained, coco_dataset / "val2017", tmp_path / "without")
    assert {r["image_id"] for r in plain} <= set(range(len(id_of)))
    info = json.loads((tmp_path / "without" / "predictions_info.json").read_text())
    assert info["image_ids"] == "file index" and "ann=" in info["note"]
