"""Detector entry points, priors, box coding and test-time decoding against hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from rtmdet_exp.experiment import compose as compose_config
from rtmdet_exp.models.postprocess import PostprocessConfig, postprocess
from rtmdet_exp.ops.boxes import bbox2distance, distance2bbox, pairwise_iou
from rtmdet_exp.ops.priors import grid_priors
from rtmdet_exp.experiment.build import build_detector


def test_grid_priors_match_the_reference_layout() -> None:
    priors = grid_priors([(80, 80), (40, 40), (20, 20)], [8, 16, 32])
    assert priors.shape == (8400, 4)
    # offset 0: the first prior of every level sits at (0, 0); row-major inside a level
    assert priors[0].tolist() == [0.0, 0.0, 8.0, 8.0]
    assert priors[1].tolist() == [8.0, 0.0, 8.0, 8.0]
    assert priors[80].tolist() == [0.0, 8.0, 8.0, 8.0]
    assert priors[6400].tolist() == [0.0, 0.0, 16.0, 16.0]
    assert priors[8399].tolist() == [19 * 32.0, 19 * 32.0, 32.0, 32.0]


def test_distance_box_round_trip() -> None:
    gen = torch.Generator().manual_seed(3)
    points = torch.rand(50, 2, generator=gen) * 100
    boxes = torch.cat([points - torch.rand(50, 2, generator=gen) * 30, points + torch.rand(50, 2, generator=gen) * 30], 1)
    ltrb = bbox2distance(points, boxes)
    assert torch.all(ltrb >= 0)
    torch.testing.assert_close(distance2bbox(points, ltrb), boxes)
    # hand case: point (10, 20), ltrb (1, 2, 3, 4) -> box (9, 18, 13, 24)
    assert distance2bbox(torch.tensor([[10.0, 20.0]]), torch.tensor([[1.0, 2.0, 3.0, 4.0]])).tolist() == [
        [9.0, 18.0, 13.0, 24.0]
    ]


def test_pairwise_iou_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    # overlap 1, union 4 + 4 - 1 = 7
    torch.testing.assert_close(pairwise_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))


def _meta(batch: int, h: int = 100, w: int = 100, scale: float = 1.0, pad: tuple[float, float] = (0, 0)) -> dict:
    return {
        "img_shape": torch.tensor([[h, w]] * batch, dtype=torch.float32),
        "pad_offset": torch.tensor([pad] * batch, dtype=torch.float32),
        "scale_factor": torch.tensor([[scale, scale]] * batch, dtype=torch.float32),
    }


def test_postprocess_class_aware_nms_hand_case() -> None:
    # 4 priors in one level, 2 classes. Priors 0 and 1 overlap heavily (IoU 81/119 > 0.65):
    # for class 0 only the higher-scoring prior 0 survives; prior 1's class-1 score is kept
    # because NMS is per class. Prior 2 is far away; prior 3 scores under the threshold.
    boxes = torch.tensor([[[10.0, 10, 20, 20], [11, 11, 21, 21], [50, 50, 70, 70], [80, 80, 90, 90]]])
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.7], [0.6, 0.0], [0.0005, 0.0]]])
    cfg = PostprocessConfig(score_thr=0.001, nms_pre=100, iou_threshold=0.65, max_per_img=10)
    (det,) = postprocess(scores, boxes, [4], _meta(1), cfg)
    got = sorted(zip(det["scores"].tolist(), det["labels"].tolist()), reverse=True)
    assert got == [(pytest.approx(0.9), 0), (pytest.approx(0.7), 1), (pytest.approx(0.6), 0)]
    assert det["scores"].tolist() == sorted(det["scores"].tolist(), reverse=True)


def test_postprocess_keeps_overlaps_under_threshold_and_caps_per_image() -> None:
    # IoU of [0,0,10,10] and [5,0,15,10] is 50/150 = 1/3 < 0.65: both kept.
    boxes = torch.tensor([[[0.0, 0, 10, 10], [5, 0, 15, 10], [30, 30, 40, 40]]]).repeat(2, 1, 1)
    scores = torch.tensor([[[0.9], [0.8], [0.7]], [[0.5], [0.6], [0.4]]])
    cfg = PostprocessConfig(score_thr=0.01, nms_pre=100, iou_threshold=0.65, max_per_img=2)
    first, second = postprocess(scores, boxes, [3], _meta(2), cfg)
    assert first["scores"].tolist() == pytest.approx([0.9, 0.8])
    assert second["scores"].tolist() == pytest.approx([0.6, 0.5])


def test_postprocess_clips_and_maps_back_to_original_pixels() -> None:
    # letterbox: original 200x100 (w x h) image scaled by 0.5 into a 100x50 area, padded below.
    boxes = torch.tensor([[[-5.0, 10, 30, 70]]])  # runs off the left edge and below the image
    scores = torch.tensor([[[0.9]]])
    meta = {
        "img_shape": torch.tensor([[50.0, 100.0]]),
        "pad_offset": torch.tensor([[0.0, 0.0]]),
        "scale_factor": torch.tensor([[0.5, 0.5]]),
    }
    (det,) = postprocess(scores, boxes, [1], meta, PostprocessConfig())
    # clipped to (0, 10, 30, 50) in the resized frame, then divided by 0.5
    assert det["boxes"].tolist() == [[0.0, 20.0, 60.0, 100.0]]
    # centred padding: subtract the pad offset before undoing the scale
    meta["pad_offset"] = torch.tensor([[4.0, 2.0]])
    (det,) = postprocess(torch.tensor([[[0.9]]]), torch.tensor([[[14.0, 12, 24, 22]]]), [1], meta, PostprocessConfig())
    assert det["boxes"].tolist() == [[20.0, 20.0, 40.0, 40.0]]


def test_postprocess_empty_image() -> None:
    scores = torch.zeros(2, 5, 3)
    boxes = torch.rand(2, 5, 4)
    out = postprocess(scores, boxes, [5], _meta(2), PostprocessConfig())
    assert [len(o["boxes"]) for o in out] == [0, 0]


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    cfg = compose_config(["model=rtmdet_tiny", "data.num_classes=3"])
    return build_detector(cfg)


def _batch(gen: torch.Generator, batch: int = 2, size: int = 64) -> tuple[torch.Tensor, dict]:
    images = torch.randint(0, 256, (batch, 3, size, size), generator=gen, dtype=torch.uint8)
    boxes = torch.tensor([[[4.0, 4, 40, 36], [20, 30, 60, 62], [0, 0, 0, 0]], [[10, 8, 30, 50], [0, 0, 0, 0], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 2, -1], [1, -1, -1]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    return images, {"boxes": boxes, "labels": labels, "mask": mask}


def test_detector_loss_names_and_empty_gt(detector) -> None:
    gen = torch.Generator().manual_seed(1)
    images, targets = _batch(gen)
    out = detector.loss(images, targets)
    assert {"loss_cls", "loss_bbox", "num_pos", "avg_factor"} <= set(out)
    assert out["num_pos"] > 0 and math.isfinite(float((out["loss_cls"] + out["loss_bbox"]).detach()))
    # a batch with no GT at all: only the classification (negative) term, no box loss, finite
    empty = {k: v[:, :1] for k, v in targets.items()}
    empty["mask"] = torch.zeros_like(empty["mask"])
    out = detector.loss(images, empty)
    assert int(out["num_pos"]) == 0 and float(out["loss_bbox"].detach()) == 0.0
    cls = float(out["loss_cls"].detach())
    assert math.isfinite(cls) and cls > 0


def test_one_optimisation_step_lowers_the_loss() -> None:
    """Gradient check: with the assignment held fixed, one small SGD step lowers the loss.

    (Without holding it, the dynamic assigner may pick other positives after the step, which
    changes the objective itself; that is training dynamics, not a gradient error.)
    """
    torch.manual_seed(0)
    detector = build_detector(compose_config(["model=rtmdet_tiny", "data.num_classes=3"]))
    images, targets = _batch(torch.Generator().manual_seed(2))
    first = {}
    assign = detector.assigner.forward

    def frozen(*args, **kwargs):
        if "result" not in first:
            first["result"] = assign(*args, **kwargs)
        return first["result"]

    detector.assigner.forward = frozen
    opt = torch.optim.SGD(detector.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        out = detector.loss(images, targets)
        loss = out["loss_cls"] + out["loss_bbox"]
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert int(first["result"].pos_mask.sum()) > 0
    assert losses[1] < losses[0]


def test_predict_returns_per_image_detections_in_original_pixels(detector) -> None:
    gen = torch.Generator().manual_seed(4)
    images, _ = _batch(gen)
    detector.eval()
    meta = _meta(2, h=64, w=64, scale=0.5)
    preds = detector.predict(images, meta)
    assert len(preds) == 2
    for p in preds:
        assert p["boxes"].shape[1] == 4 and p["boxes"].shape[0] == p["scores"].shape[0] == p["labels"].shape[0]
        assert len(p["boxes"]) <= detector.test_cfg.max_per_img
        # boxes were clipped to the 64x64 resized image and then divided by 0.5
        assert float(p["boxes"].max()) <= 128.0 + 1e-4 and float(p["boxes"].min()) >= 0.0
        assert torch.all((p["labels"] >= 0) & (p["labels"] < 3))
