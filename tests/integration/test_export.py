"""``python -m rtmdet_exp.export``: the ONNX file in ONNX Runtime against the PyTorch detector.

A checkpoint trained for 40 steps on the built-in data (scores from 0.001 to 0.3, not uniform) is
exported; ONNX Runtime runs it on real val images at another batch size than the export example
(the batch is dynamic). Raw outputs must be within 1e-4 of the unfused PyTorch detector's (scores
absolute, boxes as the ltrb distances they decode, relative), and with
NMS in the graph the detections must be those of ``Detector.predict``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY, compose, run_cli

from rtmdet_exp.cli import export
from rtmdet_exp.cli.args import UsageError
from rtmdet_exp.data.coco import CocoDetection
from rtmdet_exp.data.collate import collate
from rtmdet_exp.data.transforms import LetterboxResize
from rtmdet_exp.deploy.onnx import onnxruntime_outputs
from rtmdet_exp.experiment.build import load_detector
from rtmdet_exp.experiment.train import train
from rtmdet_exp.ops.boxes import bbox2distance

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("export_run")
    torch.set_num_threads(1)
    train(compose(*TINY, "trainer.max_epochs=10", "optim.lr=0.01"), run_dir=run_dir)
    return run_dir / "checkpoints" / "epoch_0010.pt"


@pytest.fixture(scope="module")
def val_batch(checkpoint: Path) -> dict:
    """The 4 val images of the run's data, letterboxed as evaluation does, with identity meta
    (boxes stay in input pixels, as the exported graph gives them)."""
    data = load_detector(str(checkpoint))[1]["config"].data
    root = Path(data.root)
    dataset = CocoDetection(root / "images" / "val", root / "annotations" / "instances_val.json",
                            pipeline=LetterboxResize(SIZE))
    batch = collate([dataset[i] for i in range(len(dataset))])
    batch["meta"] = {"img_shape": torch.tensor([[SIZE, SIZE]] * len(dataset)),
                     "pad_offset": torch.zeros(len(dataset), 2), "scale_factor": torch.ones(len(dataset), 2)}
    return batch


def test_raw_outputs_match_pytorch(checkpoint: Path, val_batch: dict, tmp_path: Path) -> None:
    path = export.main([f"checkpoint={checkpoint}", "nms=false", f"out={tmp_path / 'raw.onnx'}", "check=false"])
    graph_input = onnx.load(str(path)).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "images" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]

    detector, _ = load_detector(str(checkpoint))
    for images in (val_batch["images"], val_batch["images"][:1]):  # batch 4 and 1; the export example had 2
        with torch.no_grad():
            logits, boxes, priors, _ = detector.forward_flat(images)
        got_boxes, got_scores = onnxruntime_outputs(path, images)
        scores = logits.sigmoid()
        assert scores.std() > 0.01, "the trained model's scores should spread (else NMS compares near-ties)"
        np.testing.assert_allclose(got_scores, scores.numpy(), atol=1e-4, rtol=0)
        # Boxes as the distances they decode (relative): a barely trained head predicts some distances
        # as exp(large), up to 3.6e4 px, where float32 rounding alone is 1e-2 px.
        got_dists = bbox2distance(priors[None], torch.from_numpy(got_boxes))
        np.testing.assert_allclose(got_dists, bbox2distance(priors[None], boxes), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("settings", [(), ("score_thr=0.1", "max_per_img=20")], ids=["test_cfg", "deployment"])
def test_nms_in_the_graph_gives_predicts_detections(checkpoint: Path, val_batch: dict, tmp_path: Path,
                                                    settings: tuple[str, ...]) -> None:
    """The checkpoint's test settings (score_thr 0.001, 300 per image) and a deployment-like pair."""
    out = tmp_path / "nms.onnx"
    if settings:  # in-process, to save a second interpreter start
        export.main([f"checkpoint={checkpoint}", f"out={out}", "check=false", *settings])
    else:  # the command a user runs, with its self-check
        proc = run_cli([f"checkpoint={checkpoint}", f"out={out}"], module="rtmdet_exp.export")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "check: ONNX Runtime vs PyTorch" in proc.stdout

    detector, _ = load_detector(str(checkpoint))
    for option in settings:
        key, value = option.split("=")
        setattr(detector.test_cfg, key, type(getattr(detector.test_cfg, key))(value))
    want = detector.predict(val_batch["images"], val_batch["meta"])
    num_dets, boxes, scores, labels = onnxruntime_outputs(out, val_batch["images"])
    assert num_dets.tolist() == [len(w["scores"]) for w in want]
    assert sum(num_dets) > 0
    limit = detector.test_cfg.max_per_img
    assert boxes.shape == (len(want), limit, 4) and (labels[:, :][np.arange(limit) >= num_dets[:, None]] == -1).all()
    for image, w in enumerate(want):
        n = int(num_dets[image])
        got = sorted(zip(labels[image, :n].tolist(), scores[image, :n].tolist(), boxes[image, :n].tolist()))
        ref = sorted(zip(w["labels"].tolist(), w["scores"].tolist(), w["boxes"].tolist()))
        for (g_label, g_score, g_box), (r_label, r_score, r_box) in zip(got, ref):
            assert g_label == r_label
            assert g_score == pytest.approx(r_score, abs=1e-5)
            assert g_box == pytest.approx(r_box, abs=1e-3)  # px; fused vs unfused rounding is ~1e-4


def test_bad_options_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="valid: onnx"):
        export.main([f"checkpoint={checkpoint}", "format=tensorrt", f"out={tmp_path / 'x'}"])
    with pytest.raises(UsageError, match="multiple of 32"):
        export.main([f"checkpoint={checkpoint}", "img_size=100", f"out={tmp_path / 'x'}"])
    assert not list(tmp_path.iterdir())
