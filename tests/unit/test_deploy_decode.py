"""The deployment path on the CPU: InferenceModel, decoding split into graph-safe and host halves,
and the eager fallback of the fast predictor, against Detector.predict (the reference) and hand cases.

The CUDA-graph capture itself needs a GPU; bench/latency.py checks there that graph replay gives
the eager path's detections before it times anything.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose

from rtmdet_exp.deploy.decode import DEPLOYMENT, dense_candidates
from rtmdet_exp.deploy.fast import CudaGraph, FastPredictor
from rtmdet_exp.deploy.inference import InferenceModel
from rtmdet_exp.deploy.onnx import ExportModel, detection_difference
from rtmdet_exp.experiment.build import build_detector
from rtmdet_exp.models.postprocess import PostprocessConfig, postprocess
from tests.support.random_state import randomise

SIZE = 64


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    """The TINY network with random weights and random BN statistics (so that fusion is not trivial)."""
    det = build_detector(compose(*TINY))
    randomise(det.network, 0)
    return det.eval()


def letterbox_meta(batch: int) -> dict[str, torch.Tensor]:
    """Per-image letterbox parameters that differ between images (unpadded sizes, offsets, scales)."""
    return {
        "img_shape": torch.tensor([[64, 64], [48, 64], [64, 40]][:batch]),
        "pad_offset": torch.tensor([[0.0, 0.0], [0.0, 8.0], [12.0, 0.0]][:batch]),
        "scale_factor": torch.tensor([[1.0, 1.0], [0.5, 0.5], [2.0, 2.0]][:batch]),
    }


def assert_same_detections(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["labels"].tolist() == w["labels"].tolist()
        torch.testing.assert_close(g["scores"], w["scores"], rtol=0, atol=0)
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=0, atol=0)


def test_inference_model_equals_the_detector(detector: torch.nn.Module) -> None:
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, boxes, _, sizes = detector.forward_flat(images)
        scores, got_boxes = InferenceModel(detector, SIZE, fuse=False)(images)
        fused_scores, fused_boxes = InferenceModel(detector, SIZE, fuse=True)(images)
    assert scores.shape == (2, 64 + 16 + 4, detector.num_classes)
    torch.testing.assert_close(scores, logits.sigmoid(), rtol=0, atol=0)
    torch.testing.assert_close(got_boxes, boxes, rtol=0, atol=0)
    torch.testing.assert_close(fused_scores, scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused_boxes, boxes, rtol=1e-4, atol=1e-4)


def test_inference_model_compile_wraps_its_own_copy(detector: torch.nn.Module) -> None:
    """compile=True compiles the model's network copy (not the detector's) with a static shape; run here
    with Dynamo's eager stance, since Inductor's C++ build takes a minute on this CPU (its speed and
    outputs are bench/latency.py's compiled row on a GPU)."""
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    model = InferenceModel(detector, SIZE, fuse=True, compile=True)
    assert model.network._compiled_call_impl is not None
    assert getattr(detector.network, "_compiled_call_impl", None) is None
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        got = model(images)
        want = InferenceModel(detector, SIZE, fuse=True)(images)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_inference_model_refuses_another_input_size(detector: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"built for \(64, 64\)"):
        InferenceModel(detector, SIZE)(torch.zeros(1, 3, 96, 96, dtype=torch.uint8))


@pytest.mark.parametrize("cfg", [PostprocessConfig(), DEPLOYMENT, PostprocessConfig(score_thr=0.0, nms_pre=7,
                                                                                     max_per_img=5)])
def test_eager_fast_predictor_equals_detector_predict(detector: torch.nn.Module, cfg: PostprocessConfig) -> None:
    """Same detections as Detector.predict (unfused: the same arithmetic), under the paper's test
    settings, deployment settings, and settings where nms_pre and max_per_img bind."""
    images = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    meta = letterbox_meta(3)
    detector.test_cfg = cfg
    want = detector.predict(images, meta)
    got = FastPredictor(InferenceModel(detector, SIZE, fuse=False), 3, cfg, graph=False)(images, meta)
    assert sum(len(w["scores"]) for w in want) > 0
    assert_same_detections(got, want)


def reference_decode(scores: torch.Tensor, boxes: torch.Tensor, sizes: list[int], meta: dict,
                     cfg: PostprocessConfig) -> list[dict]:
    """RTMDet's test-time rule written plainly, one image and one class at a time (spec section 6):
    per level the nms_pre best (prior, class) pairs, clip to the image, keep score > score_thr and
    positive size, greedy NMS per class (torchvision.ops.nms), best max_per_img, undo the letterbox."""
    from torchvision.ops import nms

    out = []
    for b in range(scores.shape[0]):
        h, w = meta["img_shape"][b].tolist()
        picked, start = [], 0
        for size in sizes:
            flat = scores[b, start:start + size].reshape(-1)
            top, idx = flat.topk(min(cfg.nms_pre, flat.numel()))
            for score, i in zip(top.tolist(), idx.tolist()):
                prior, label = start + i // scores.shape[2], i % scores.shape[2]
                x1, y1, x2, y2 = boxes[b, prior].tolist()
                box = [min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)]
                if score > cfg.score_thr and box[2] > box[0] and box[3] > box[1]:
                    picked.append((score, label, box))
            start += size
        kept = []
        for label in sorted({p[1] for p in picked}):
            mine = [p for p in picked if p[1] == label]
            keep = nms(torch.tensor([p[2] for p in mine]), torch.tensor([p[0] for p in mine]), cfg.iou_threshold)
            kept += [mine[k] for k in keep.tolist()]
        kept = sorted(kept, key=lambda p: -p[0])[:cfg.max_per_img]
        (left, top_), (sx, sy) = meta["pad_offset"][b].tolist(), meta["scale_factor"][b].tolist()
        out.append({"scores": torch.tensor([p[0] for p in kept]), "labels": torch.tensor([p[1] for p in kept]),
                    "boxes": torch.tensor([[(p[2][0] - left) / sx, (p[2][1] - top_) / sy, (p[2][2] - left) / sx,
                                            (p[2][3] - top_) / sy] for p in kept])})
    return out


def crowded(seed: int, sizes: list[int], classes: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Two images of random, heavily overlapping boxes with random class scores, and different letterboxes."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    scores = torch.rand(2, n, classes, generator=gen)
    xy = torch.rand(2, n, 2, generator=gen) * 40
    boxes = torch.cat([xy - 5, xy + torch.rand(2, n, 2, generator=gen) * 20], dim=-1)
    meta = {"img_shape": torch.tensor([[48, 48], [40, 48]]), "pad_offset": torch.tensor([[0.0, 0.0], [0.0, 4.0]]),
            "scale_factor": torch.tensor([[1.0, 1.0], [0.8, 0.8]])}
    return scores, boxes, meta


def test_decoding_equals_a_plain_reference_on_crowded_scores() -> None:
    """Many overlapping boxes, several classes per prior, nms_pre binding on the first level,
    max_per_img binding: postprocess (= the two halves the fast path splits) against the rule
    written one image and one class at a time."""
    sizes = [36, 9]
    scores, boxes, meta = crowded(seed=4, sizes=sizes, classes=4)
    cfg = PostprocessConfig(score_thr=0.2, nms_pre=50, iou_threshold=0.5, max_per_img=20)
    want = reference_decode(scores, boxes, sizes, meta, cfg)
    got = postprocess(scores, boxes, sizes, meta, cfg)
    assert [len(w["scores"]) for w in want] == [20, 20]
    for g, w in zip(got, want):
        assert g["labels"].tolist() == w["labels"].tolist()
        torch.testing.assert_close(g["scores"], w["scores"])
        torch.testing.assert_close(g["boxes"], w["boxes"])


def test_dense_candidates_by_hand() -> None:
    """One level of 2 priors x 2 classes, nms_pre 3: the 3 best pairs, their boxes clipped to the image."""
    scores = torch.tensor([[[0.9, 0.1], [0.5, 0.3]]])  # [1, 2 priors, 2 classes]
    boxes = torch.tensor([[[-4.0, 2.0, 10.0, 8.0], [20.0, 20.0, 30.0, 40.0]]])  # prior 1 is outside a 32x24 image
    cfg = PostprocessConfig(score_thr=0.2, nms_pre=3)
    cand = dense_candidates(scores, boxes, [2], torch.tensor([[24, 32]]), cfg)  # (h, w) = (24, 32)
    assert cand.scores.tolist() == [[pytest.approx(0.9), pytest.approx(0.5), pytest.approx(0.3)]]
    assert cand.labels.tolist() == [[0, 0, 1]]
    assert cand.boxes.tolist() == [[[0.0, 2.0, 10.0, 8.0], [20.0, 20.0, 30.0, 24.0], [20.0, 20.0, 30.0, 24.0]]]
    assert cand.valid.tolist() == [[True, True, True]]
    cand = dense_candidates(scores, boxes, [2], torch.tensor([[16, 32]]), cfg)  # prior 1 clipped to zero height
    assert cand.valid.tolist() == [[True, False, False]]


def test_graph_path_fails_loudly_without_a_gpu(detector: torch.nn.Module) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the error path is for CPU-only machines (bench/latency.py covers the GPU)")
    model = InferenceModel(detector, SIZE)
    with pytest.raises(RuntimeError, match="CUDA graphs need an NVIDIA GPU"):
        FastPredictor(model, 1, DEPLOYMENT, graph=True)
    with pytest.raises(RuntimeError, match="graph=False"):
        CudaGraph(model, [torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8)])


@pytest.mark.parametrize("cfg", [PostprocessConfig(), PostprocessConfig(score_thr=0.3, nms_pre=20, max_per_img=7)])
def test_export_selection_equals_detector_predict(detector: torch.nn.Module, cfg: PostprocessConfig) -> None:
    """The selection exported into the ONNX graph, run in PyTorch, finds Detector.predict's boxes
    (in input pixels: identity letterbox); only the order of equal-score detections may differ."""
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    meta = {"img_shape": torch.tensor([[SIZE, SIZE]] * 2), "pad_offset": torch.zeros(2, 2),
            "scale_factor": torch.ones(2, 2)}
    detector.test_cfg = cfg
    want = detector.predict(images, meta)
    with torch.no_grad():
        num_dets, boxes, scores, labels = ExportModel(InferenceModel(detector, SIZE, fuse=False), cfg)(images)
    assert num_dets.tolist() == [len(w["scores"]) for w in want] and num_dets.sum() > 0
    for image, w in enumerate(want):
        n = int(num_dets[image])
        got = sorted(zip(labels[image, :n].tolist(), scores[image, :n].tolist(), boxes[image, :n].tolist()))
        ref = sorted(zip(w["labels"].tolist(), w["scores"].tolist(), w["boxes"].tolist()))
        assert got == ref
        assert (labels[image, n:] == -1).all() and (scores[image, n:] == 0).all()


def test_detection_difference_ignores_order_not_content() -> None:
    want = (torch.tensor([2]), torch.tensor([[[0.0, 0, 4, 4], [5, 5, 9, 9]]]), torch.tensor([[0.9, 0.8]]),
            torch.tensor([[1, 3]]))
    swapped = [t.numpy() for t in (want[0], want[1].flip(1), want[2].flip(1), want[3].flip(1))]
    assert detection_difference(swapped, want) == 0.0
    moved = [t.numpy().copy() for t in want]
    moved[1][0, 1, 0] += 0.5
    assert detection_difference(moved, want) == pytest.approx(0.5)
    relabelled = [t.numpy().copy() for t in want]
    relabelled[3][0, 0] = 2
    assert detection_difference(relabelled, want) == float("inf")
    fewer = [t.numpy().copy() for t in want]
    fewer[0][0] = 1
    assert detection_difference(fewer, want) == float("inf")
