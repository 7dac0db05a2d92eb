"""rtmdet_exp.ops.nms: torchvision's NMS rule without importing torchvision's package; and
rtmdet_exp.models.postprocess.select_detections, whose NMS over score-ordered prefixes equals full NMS."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter

import pytest
import torch
import torchvision.ops

from rtmdet_exp.models import postprocess
from rtmdet_exp.models.postprocess import (
    Candidates,
    PostprocessConfig,
    select_detections,
)
from rtmdet_exp.ops.nms import batched_nms, nms


def random_boxes(n: int, groups: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = 5 + torch.rand(n, 2, generator=g) * 60
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g), torch.randint(0, groups, (n,), generator=g)


def test_a_hand_made_case() -> None:
    """A and B overlap with IoU 81/119 = 0.68; C is far away. Same group: B goes; other groups: all stay."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5).tolist() == [0, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 1]), 0.5).tolist() == [0, 1, 2]
    assert batched_nms(boxes[:0], scores[:0], torch.zeros(0, dtype=torch.int64), 0.5).tolist() == []


@pytest.mark.parametrize("n", [300, 2500])  # one shifted NMS, and one NMS per group (> 1,000 boxes)
def test_batched_nms_equals_torchvision(n: int) -> None:
    boxes, scores, groups = random_boxes(n, 12, seed=n)
    want = torchvision.ops.batched_nms(boxes, scores, groups, 0.6)
    got = batched_nms(boxes, scores, groups, 0.6)
    assert 0 < got.numel() < n
    assert torch.equal(got, want)
    assert torch.equal(nms(boxes, scores, 0.6), torchvision.ops.nms(boxes, scores, 0.6))


@pytest.mark.parametrize("n", [300, 2500])
def test_batched_nms_orders_tied_scores_by_input_index(n: int) -> None:
    """Far-apart boxes (all kept) with scores on 5 levels: the kept indices come by decreasing score, and
    tied ones in input order, on both paths (the per-group path used to order ties by an unstable sort)."""
    corner = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2) * 20
    boxes = torch.cat([corner, corner + 10], 1)
    g = torch.Generator().manual_seed(n)
    scores = torch.randint(1, 6, (n,), generator=g).float() / 5
    groups = torch.randint(0, 12, (n,), generator=g)
    want = sorted(range(n), key=lambda i: (-scores[i].item(), i))
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == want


def test_no_torchvision_package_is_imported() -> None:
    """The training entry point and an NMS call leave torchvision's package (and torch._dynamo) unimported;
    importing torchvision afterwards still works."""
    code = textwrap.dedent("""
        import sys, torch
        import rtmdet_exp.experiment.train
        from rtmdet_exp.ops.nms import nms
        keep = nms(torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]]), torch.tensor([0.9, 0.8]), 0.5)
        print(keep.tolist(), "torchvision" in sys.modules, "torch._dynamo" in sys.modules)
        import torchvision.ops  # loads the same library a second time: both keep working
        print(torchvision.ops.nms(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0.8, 0.9]), 0.5).tolist())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split("\n")[-3:-1] == ["[0] False False", "[1, 0]"]


# select_detections runs NMS over score-ordered prefixes of each image's candidates, growing those
# whose prefix kept too few: checked against full class-aware NMS over all valid candidates.


def candidate_batch(images: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], num_classes: int) -> Candidates:
    """Stack per-image (boxes [n,4], scores [n], labels [n]) into a batch, padded with invalid candidates."""
    size = max(max(len(s) for _, s, _ in images), 1)
    boxes = torch.zeros(len(images), size, 4)
    scores, labels = torch.zeros(len(images), size), torch.zeros(len(images), size, dtype=torch.int64)
    valid = torch.zeros(len(images), size, dtype=torch.bool)
    for i, (b, s, lab) in enumerate(images):
        boxes[i, : len(s)], scores[i, : len(s)], labels[i, : len(s)], valid[i, : len(s)] = b, s, lab, True
    boxes[~valid] = torch.tensor([0.0, 0.0, 30.0, 30.0])  # invalid candidates that would win if they took part
    scores[~valid] = 0.99
    return Candidates(scores, boxes, labels, valid, num_classes)


def spread(n: int, num_classes: int, seed: int, levels: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random boxes over a 400 px square (some overlap); ``levels`` > 0 rounds the scores to that many values."""
    boxes, scores, labels = random_boxes(n, num_classes, seed)
    boxes = boxes * 2
    return boxes, (scores * levels).ceil() / levels if levels else scores, labels


def clusters(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` far-apart clusters of ``size`` near-identical class-0 boxes each; cluster c holds the
    scores of ranks c*size .. (c+1)*size - 1, so a prefix of p candidates keeps about p / size boxes."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.arange(count).repeat_interleave(size)[:, None] * 40.0 + torch.rand(count * size, 2, generator=g)
    scores = torch.linspace(0.9, 0.1, count * size)
    return torch.cat([corner, corner + 20], 1), scores, torch.zeros(count * size, dtype=torch.int64)


def reference(cand: Candidates, iou: float) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every detection class-aware NMS keeps per image (torchvision, all valid candidates), by decreasing score."""
    out = []
    for boxes, scores, labels, valid in zip(cand.boxes, cand.scores, cand.labels, cand.valid):
        keep = torchvision.ops.batched_nms(boxes[valid], scores[valid], labels[valid], iou)
        out.append((boxes[valid][keep], scores[valid][keep], labels[valid][keep]))
    return out


def as_rows(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> Counter:
    """Detections as a multiset of (box, score, label) rows."""
    return Counter(zip(map(tuple, boxes.tolist()), scores.tolist(), labels.tolist()))


def check_detections(cand: Candidates, cfg: PostprocessConfig, exact_order: bool) -> list[dict[str, torch.Tensor]]:
    """select_detections gives the top ``max_per_img`` of full NMS per image. With tied scores the top
    may be any of the tied ones: then the scores must be the reference's and every row one it keeps."""
    meta = {"pad_offset": torch.zeros(len(cand.scores), 2), "scale_factor": torch.ones(len(cand.scores), 2)}
    got = select_detections(cand, meta, cfg)
    for g, (boxes, scores, labels) in zip(got, reference(cand, cfg.iou_threshold), strict=True):
        g = {k: v.cpu() for k, v in g.items()}
        top = slice(0, cfg.max_per_img)
        assert torch.equal(g["scores"], scores[top].cpu())
        assert not as_rows(g["boxes"], g["scores"], g["labels"]) - as_rows(boxes.cpu(), scores.cpu(), labels.cpu())
        if exact_order:
            assert torch.equal(g["boxes"], boxes[top].cpu()) and torch.equal(g["labels"], labels[top].cpu())
    return got


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The images each NMS call of select_detections covers, one list per call (= per round)."""
    calls: list[list[int]] = []

    def counting(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
        calls.append(sorted(set((groups // num_classes).tolist())))
        return batched_nms(boxes, scores, groups, iou)

    num_classes = 4  # every batch below has 4 classes
    monkeypatch.setattr(postprocess, "batched_nms", counting)
    return calls


@pytest.mark.parametrize("max_per_img", [5, 300])
def test_prefix_nms_equals_full_nms(rounds: list[list[int]], max_per_img: int) -> None:
    """(a) an image the first prefix settles, (b) one that needs three rounds (its prefixes keep a box
    per cluster only), (c) one with fewer candidates than a prefix, (d) one with none."""
    cfg = PostprocessConfig(iou_threshold=0.6, max_per_img=max_per_img)
    start, growth = postprocess.PREFIX_START, postprocess.PREFIX_GROWTH
    # prefixes of start, start * growth and start * growth**2 times max_per_img keep 1/8, 1/2 and 2 times it
    crowded = clusters(count=2 * max_per_img, size=2 * start * growth, seed=1)
    few = spread(start * max_per_img // 3, 4, seed=2)
    empty = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    cand = candidate_batch([spread(20 * max_per_img, 4, seed=3), crowded, few, empty], num_classes=4)
    got = check_detections(cand, cfg, exact_order=True)
    assert [len(g["scores"]) for g in got] == [max_per_img, max_per_img, min(len(few[1]), max_per_img), 0]
    assert rounds == [[0, 1, 2], [1], [1]]


@pytest.mark.parametrize("max_per_img", [5, 300])
def test_prefix_nms_with_tied_scores(max_per_img: int) -> None:
    """(e) Scores on 10 levels, so ties straddle the first prefix's boundary, and an image whose candidates
    all tie (a prefix bounded with ``>`` would be empty); tied boxes of a class suppress each other."""
    cfg = PostprocessConfig(iou_threshold=0.5, max_per_img=max_per_img)
    levels = spread(8 * max_per_img, 4, seed=6, levels=10)
    ranked = levels[1].sort(descending=True).values
    first = postprocess.PREFIX_START * max_per_img
    assert ranked[first - 1] == ranked[first]
    boxes, _, labels = spread(8 * max_per_img, 4, seed=4)
    tied = (boxes, torch.full((len(labels),), 0.5), labels)
    check_detections(candidate_batch([levels, tied], num_classes=4), cfg, exact_order=False)
