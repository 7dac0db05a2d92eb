"""The fixed-shape NMS of the CUDA-graph path: a hand-derived suppression chain, the fallback flags,
and equality with torchvision's NMS (through ``postprocess`` and ``Detector.predict``) on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from test_deploy_decode import SIZE, assert_same_detections, crowded, detector, letterbox_meta  # noqa: F401 - fixture

from rtmdet_exp.deploy.decode import DEPLOYMENT, PAPER_TEST, Candidates, dense_candidates
from rtmdet_exp.deploy.fast import FastPredictor, _unpad
from rtmdet_exp.deploy.graph_nms import fixed_nms
from rtmdet_exp.deploy.inference import InferenceModel
from rtmdet_exp.models.postprocess import PostprocessConfig, postprocess


def chain() -> Candidates:
    """A (0.9) suppresses B (0.8, IoU 100/120 = 0.83); B would suppress C (0.7, IoU 100/140 = 0.71);
    A and C overlap by 80/140 = 0.57 only; D is A's box in another class. Greedy NMS at 0.65 keeps
    A, D and C (B is suppressed, so it suppresses nothing). An invalid E sits on top of C."""
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [0.0, 2.0, 10.0, 14.0],
                           [0.0, 0.0, 10.0, 10.0], [0.0, 2.0, 10.0, 14.0]]])
    return Candidates(scores=torch.tensor([[0.9, 0.8, 0.7, 0.85, 0.95]]), boxes=boxes,
                      labels=torch.tensor([[0, 0, 0, 1, 0]]), valid=torch.tensor([[True, True, True, True, False]]),
                      num_classes=2)


def test_suppression_chain_by_hand() -> None:
    cfg = PostprocessConfig(score_thr=0.1, iou_threshold=0.65, max_per_img=10)
    out = fixed_nms(chain(), cfg, rounds=2)
    assert bool(out.exact) and out.count.tolist() == [3]
    assert out.scores[0, :3].tolist() == pytest.approx([0.9, 0.85, 0.7])
    assert out.labels[0, :3].tolist() == [0, 1, 0]
    assert out.boxes[0, 2].tolist() == [0.0, 2.0, 10.0, 14.0]


def test_unsettled_rounds_and_overflow_are_reported() -> None:
    """One round keeps A and D only (C still looks suppressed by B): not settled, so not exact.
    A block of 2 cannot hold the 4 valid candidates: not exact either."""
    cfg = PostprocessConfig(score_thr=0.1, iou_threshold=0.65, max_per_img=10)
    one = fixed_nms(chain(), cfg, rounds=1)
    assert not bool(one.exact) and one.count.tolist() == [2]
    assert not bool(fixed_nms(chain(), cfg, top=2).exact)
    assert fixed_nms(chain(), PostprocessConfig(score_thr=0.1, iou_threshold=0.65, max_per_img=2),
                     rounds=2).count.tolist() == [2]


@pytest.mark.parametrize("cfg", [PostprocessConfig(score_thr=0.2, nms_pre=50, iou_threshold=0.5, max_per_img=20),
                                 PostprocessConfig(score_thr=0.6, nms_pre=200, iou_threshold=0.3, max_per_img=100)])
def test_equals_torchvision_nms_on_crowded_scores(cfg: PostprocessConfig) -> None:
    """Random overlapping boxes, several classes per prior, two images with different letterboxes:
    with rounds enough to settle, the detections are exactly postprocess's (torchvision batched_nms)."""
    sizes = [60, 15]
    scores, boxes, meta = crowded(seed=5, sizes=sizes, classes=3)
    want = postprocess(scores, boxes, sizes, meta, cfg)
    out = fixed_nms(dense_candidates(scores, boxes, sizes, meta["img_shape"], cfg), cfg, rounds=64)
    assert bool(out.exact)
    assert all(len(w["scores"]) > 3 for w in want)
    assert_same_detections(_unpad(out, out.count.tolist(), meta), want)


def predictions(detector: torch.nn.Module, cfg: PostprocessConfig, nms_block: int) -> tuple[list, list, FastPredictor]:
    """Detector.predict's detections and the fixed-NMS predictor's (run eagerly) on the same 3 images."""
    images = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    meta = letterbox_meta(3)
    detector.test_cfg = cfg
    fast = FastPredictor(InferenceModel(detector, SIZE, fuse=False), 3, cfg, graph=False, fixed_nms=True,
                         nms_block=nms_block)
    return detector.predict(images, meta), fast(images, meta), fast


@pytest.mark.parametrize("cfg", [DEPLOYMENT, PAPER_TEST])
def test_fast_predictor_with_fixed_nms_equals_detector_predict(detector: torch.nn.Module,
                                                               cfg: PostprocessConfig) -> None:
    """The graph path's arithmetic, run eagerly, gives Detector.predict's detections."""
    want, got, fast = predictions(detector, cfg, nms_block=4096)
    assert_same_detections(got, want)
    assert fast.fallbacks == 0 and sum(len(w["scores"]) for w in want) > 0


def test_block_too_small_falls_back_to_host_nms(detector: torch.nn.Module) -> None:
    """At score_thr 0.001 nearly all (prior, class) pairs are valid: far more than a block of 8."""
    want, got, fast = predictions(detector, PAPER_TEST, nms_block=8)
    assert_same_detections(got, want)
    assert fast.fallbacks == 1 and min(len(w["scores"]) for w in want) > 8
