"""Baseline assigners (ATSS, TOOD task-aligned): hand-worked cases, batching, and a plain reference.

The references at the bottom are written from the papers' definitions with Python floats and
explicit loops over images, GTs and priors; they share no code with the modules.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rtmdet_exp.assigners.atss import ATSSAssigner
from rtmdet_exp.assigners.base import AssignResult
from rtmdet_exp.assigners.task_aligned import TaskAlignedAssigner
from rtmdet_exp.ops.priors import grid_priors

CONF = Path(__file__).resolve().parents[2] / "conf" / "assigner"
LN3, LN9 = math.log(3.0), math.log(9.0)


def _priors(points: list[tuple[float, float, float]]) -> torch.Tensor:
    """``[N, 4]`` priors from (x, y, stride) triples."""
    return torch.tensor([(x, y, s, s) for x, y, s in points], dtype=torch.float64)


def _run(assigner, logits, boxes, priors, gt_boxes, gt_labels, gt_mask=None) -> AssignResult:
    """Run one image (no batch axis in the arguments) through an assigner."""
    gt_boxes = torch.tensor(gt_boxes, dtype=torch.float64)[None]
    gt_labels = torch.tensor(gt_labels, dtype=torch.long)[None]
    if gt_mask is None:
        gt_mask = torch.ones_like(gt_labels, dtype=torch.bool)
    return assigner(logits[None], boxes[None], priors, gt_boxes, gt_labels, gt_mask)


# ----------------------------------------------------------------------------------------- ATSS
# Both hand cases use anchor_scale=2 and topk=3: stride-4 priors get 8x8 anchors, stride-8 priors
# 16x16 anchors, each centred on the prior point; 2 levels x 3 nearest = 6 candidates per GT.
# With 6 candidates of which two have IoU a and four IoU 0: mean = a/3, unbiased
# var = (2 (2a/3)^2 + 4 (a/3)^2) / 5 = 4a^2 / 15, so thr = a/3 + 2a/sqrt(15) = 0.8497 a < a: both pass.

# Case A: one GT (8, 8, 24, 16), 16 x 8, area 128, centre (16, 12).
#   stride 4: P0 (16,12) d2=0   anchor (12,8,20,16) inside the GT   IoU 64/128  = 1/2, point inside
#             P1 (0,0)   d2=400 anchor (-4,-4,4,4)                   IoU 0
#             P2 (32,32) d2=656 anchor (28,28,36,36)                 IoU 0
#             P3 (48,48) d2=2320  -> 4th nearest, not a candidate
#   stride 8: P4 (16,16) d2=16  anchor (8,8,24,24) contains the GT   IoU 128/256 = 1/2,
#                               point on the bottom edge y=16: NOT strictly inside
#             P5 (0,24)  d2=400 anchor (-8,16,8,32) touches at y=16  IoU 0
#             P6 (40,0)  d2=720 anchor (32,-8,48,8)                  IoU 0
#             P7 (64,64) d2=5008  -> not a candidate
#   IoUs [1/2, 0, 0, 1/2, 0, 0]: mean 1/6, std sqrt(1/15) = 0.2582, thr 0.4249.
#   P0 and P4 pass the threshold; P4's point is on the edge, so only P0 is positive.
#   Without the inside test, P4 is positive too.
#   Predicted boxes: P0 (8,8,24,12) -> IoU with GT 64/128 = 0.5; P4 (8,8,24,16) = GT -> 1.0; the
#   rest predict the GT exactly, which must not matter (background soft target is 0).
CASE_A_PRIORS = [(16, 12, 4), (0, 0, 4), (32, 32, 4), (48, 48, 4), (16, 16, 8), (0, 24, 8), (40, 0, 8), (64, 64, 8)]
CASE_A_GT = [(8.0, 8.0, 24.0, 16.0)]


def _case_a_boxes() -> torch.Tensor:
    boxes = torch.tensor(CASE_A_GT, dtype=torch.float64).repeat(8, 1)  # [8, 4]
    boxes[0] = torch.tensor([8.0, 8.0, 24.0, 12.0], dtype=torch.float64)
    return boxes


def test_atss_hand_case_threshold_and_inside_filter() -> None:
    priors = _priors(CASE_A_PRIORS)
    logits = torch.zeros(8, 2, dtype=torch.float64)
    res = _run(ATSSAssigner(topk=3, anchor_scale=2.0), logits, _case_a_boxes(), priors, CASE_A_GT, [1])
    assert res.gt_index[0].tolist() == [0, -1, -1, -1, -1, -1, -1, -1]
    assert res.labels[0].tolist() == [1, -1, -1, -1, -1, -1, -1, -1]
    torch.testing.assert_close(res.ious[0], torch.tensor([0.5, 0, 0, 0, 0, 0, 0, 0], dtype=torch.float64))


def test_atss_hand_case_without_inside_filter() -> None:
    priors = _priors(CASE_A_PRIORS)
    logits = torch.zeros(8, 2, dtype=torch.float64)
    assigner = ATSSAssigner(topk=3, anchor_scale=2.0, center_sampling_only_inside=False)
    res = _run(assigner, logits, _case_a_boxes(), priors, CASE_A_GT, [1])
    assert res.gt_index[0].tolist() == [0, -1, -1, -1, 0, -1, -1, -1]
    torch.testing.assert_close(res.ious[0], torch.tensor([0.5, 0, 0, 0, 1.0, 0, 0, 0], dtype=torch.float64))


def test_atss_hand_case_topk_changes_threshold() -> None:
    # topk=4 adds P3 and P7 (IoU 0): 8 candidates [1/2, 0, 0, 0, 1/2, 0, 0, 0], mean 1/8,
    # var = (2 (3/8)^2 + 6 (1/8)^2) / 7 = 24/448, std 0.2315, thr 0.3565: P0 still the only positive.
    # topk=1 keeps P0 and P4 only: [1/2, 1/2], std 0, thr 1/2, both pass; P4 fails the inside test.
    priors = _priors(CASE_A_PRIORS)
    logits = torch.zeros(8, 2, dtype=torch.float64)
    for topk in (1, 4):
        res = _run(ATSSAssigner(topk=topk, anchor_scale=2.0), logits, _case_a_boxes(), priors, CASE_A_GT, [1])
        assert res.gt_index[0].tolist() == [0, -1, -1, -1, -1, -1, -1, -1], topk
    # topk=2 gives [1/2, 0 | 1/2, 0]: mean 1/4, std sqrt(1/12) = 0.2887, thr 0.5387 > 1/2, so the
    # threshold rejects every candidate and the GT has no positive at all.
    res = _run(ATSSAssigner(topk=2, anchor_scale=2.0), logits, _case_a_boxes(), priors, CASE_A_GT, [1])
    assert res.gt_index[0].tolist() == [-1] * 8


# Case B: two overlapping GTs.  GT0 (0,0,16,8) label 2, area 128, centre (8,4);
#                               GT1 (8,0,28,8) label 0, area 160, centre (18,4).
#   stride 4 (8x8 anchors):            IoU GT0   IoU GT1   d2 GT0  d2 GT1
#     Q0 (4,4)   anchor (0,0,8,8)       64/128    0         16      196
#     Q1 (12,4)  anchor (8,0,16,8)      64/128    64/160    16      36
#     Q2 (20,4)  anchor (16,0,24,8)     0         64/160    144     4
#     Q3 (48,48)                                            3536    2836   (never a candidate)
#   stride 8 (16x16 anchors), all IoU 0 with both GTs:
#     Q4 (8,24)  anchor (0,16,16,32)                        400     500
#     Q5 (40,0)  anchor (32,-8,48,8)                        1040    500
#     Q6 (0,40)  anchor (-8,32,8,48)                        1360    1620
#     Q7 (64,64)                                            6736    5716   (never a candidate)
#   GT0: candidates Q0 Q1 Q2 Q4 Q5 Q6, IoUs [1/2, 1/2, 0, 0, 0, 0], thr = 0.4249 -> Q0, Q1 (both inside).
#   GT1: same candidates, IoUs [0, 2/5, 2/5, 0, 0, 0], mean 2/15, var 48/1125, thr 0.3399
#        -> Q1, Q2 (both inside GT1: 8 < x < 28).
#   Q1 is claimed by both: anchor IoU 1/2 with GT0 > 2/5 with GT1, so Q1 -> GT0.
#   Soft targets from predicted boxes: Q0 (0,0,16,8) = GT0 -> 1; Q1 (0,0,8,8) -> 64/128 = 0.5 with
#   GT0 (it would be 0 with GT1); Q2 (13,0,28,8) -> 120/160 = 0.75 with GT1.
CASE_B_PRIORS = [(4, 4, 4), (12, 4, 4), (20, 4, 4), (48, 48, 4), (8, 24, 8), (40, 0, 8), (0, 40, 8), (64, 64, 8)]
CASE_B_GT = [(0.0, 0.0, 16.0, 8.0), (8.0, 0.0, 28.0, 8.0)]


def _case_b_boxes() -> torch.Tensor:
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0]], dtype=torch.float64).repeat(8, 1)  # [8, 4]
    boxes[0] = torch.tensor([0.0, 0.0, 16.0, 8.0])
    boxes[1] = torch.tensor([0.0, 0.0, 8.0, 8.0])
    boxes[2] = torch.tensor([13.0, 0.0, 28.0, 8.0])
    return boxes


def test_atss_hand_case_conflict_goes_to_highest_anchor_iou() -> None:
    priors = _priors(CASE_B_PRIORS)
    logits = torch.zeros(8, 3, dtype=torch.float64)
    assigner = ATSSAssigner(topk=3, anchor_scale=2.0)
    res = _run(assigner, logits, _case_b_boxes(), priors, CASE_B_GT, [2, 0])
    assert res.gt_index[0].tolist() == [0, 0, 1, -1, -1, -1, -1, -1]
    assert res.labels[0].tolist() == [2, 2, 0, -1, -1, -1, -1, -1]
    torch.testing.assert_close(res.ious[0], torch.tensor([1.0, 0.5, 0.75, 0, 0, 0, 0, 0], dtype=torch.float64))
    assert res.pos_mask[0].tolist() == [True, True, True] + [False] * 5
    # Listing the GTs the other way round must not change who wins Q1 (IoU decides, not order).
    swapped = _run(assigner, logits, _case_b_boxes(), priors, CASE_B_GT[::-1], [0, 2])
    assert swapped.gt_index[0].tolist() == [1, 1, 0, -1, -1, -1, -1, -1]
    assert swapped.labels[0].tolist() == [2, 2, 0, -1, -1, -1, -1, -1]


def test_atss_level_from_stride_column_not_order() -> None:
    # Shuffling the priors (a non level-major order) must permute the result and nothing else.
    priors = _priors(CASE_B_PRIORS)
    perm = torch.tensor([5, 2, 7, 0, 4, 1, 6, 3])
    logits = torch.zeros(8, 3, dtype=torch.float64)
    assigner = ATSSAssigner(topk=3, anchor_scale=2.0)
    ref = _run(assigner, logits, _case_b_boxes(), priors, CASE_B_GT, [2, 0])
    got = _run(assigner, logits, _case_b_boxes()[perm], priors[perm], CASE_B_GT, [2, 0])
    assert got.gt_index[0].tolist() == ref.gt_index[0][perm].tolist()
    torch.testing.assert_close(got.ious[0], ref.ious[0][perm])


# ---------------------------------------------------------------------------------- task-aligned
# One image, C = 2. GT0 (0,0,20,20) label 1; GT1 (10,0,30,20) label 0 (both area 400).
# Strides do not matter to this assigner.   inside GT0 (0<x<20)   inside GT1 (10<x<30)
#   p0 (5,10)                                   yes                 no
#   p1 (12,10)                                  yes                 yes
#   p2 (15,10)                                  yes                 yes
#   p3 (25,10)                                  no                  yes
#   p4 (40,10)                                  no                  no
# Predicted boxes and IoUs u:        u with GT0                       u with GT1
#   p0 (0,0,20,20)                   1                                200/600 = 1/3
#   p1 (0,0,10,20)                   200/400 = 1/2                    0 (touches x=10)
#   p2 (6,0,26,20)                   280/520 = 7/13                   320/480 = 2/3
#   p3 (10,0,30,20)                  1/3                              1
#   p4 (10,0,30,20)                  1/3                              1 (but outside: never positive)
# Logits [class 0, class 1] and the score s of each GT's class (GT0 -> class 1, GT1 -> class 0):
#   p0 [0, -ln3] s0=1/4    p1 [0, 0] s0=s1=1/2    p2 [ln3, ln9] s(GT0)=0.9, s(GT1)=3/4
#   p3 [0, 0]    s1=1/2    p4 [ln9, ln9] 0.9
# alpha=1, beta=2: t(GT0): p0 1/4*1 = 0.25, p1 1/2*1/4 = 0.125, p2 0.9*49/169 = 0.26095
#                  t(GT1): p1 1/2*0 = 0 (never positive), p2 3/4*4/9 = 1/3, p3 1/2*1 = 0.5
TAL_PRIORS = [(5, 10, 4), (12, 10, 4), (15, 10, 8), (25, 10, 8), (40, 10, 8)]
TAL_GT = [(0.0, 0.0, 20.0, 20.0), (10.0, 0.0, 30.0, 20.0)]


def _tal_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes = torch.tensor(
        [[0, 0, 20, 20], [0, 0, 10, 20], [6, 0, 26, 20], [10, 0, 30, 20], [10, 0, 30, 20]], dtype=torch.float64
    )
    logits = torch.tensor([[0, -LN3], [0, 0], [LN3, LN9], [0, 0], [LN9, LN9]], dtype=torch.float64)
    return logits, boxes, _priors(TAL_PRIORS)


def test_task_aligned_hand_case_topk3_conflict_and_normalisation() -> None:
    # topk=3: GT0 keeps p0, p1, p2 (all t > 0); GT1 keeps p2, p3 (p1 has t = 0).
    # p2 is claimed by both: u 7/13 with GT0 < 2/3 with GT1 -> GT1.
    # Normalisation over the positives each GT ends up with:
    #   GT0 {p0, p1}: max t = 0.25 (p2's 0.261 no longer counts), max u = 1
    #       p0 -> 0.25 * 1 / 0.25 = 1, p1 -> 0.125 / 0.25 = 0.5
    #   GT1 {p2, p3}: max t = 0.5, max u = 1: p2 -> (1/3) / 0.5 = 2/3, p3 -> 1
    logits, boxes, priors = _tal_inputs()
    res = _run(TaskAlignedAssigner(topk=3, alpha=1.0, beta=2.0), logits, boxes, priors, TAL_GT, [1, 0])
    assert res.gt_index[0].tolist() == [0, 0, 1, 1, -1]
    assert res.labels[0].tolist() == [1, 1, 0, 0, -1]
    torch.testing.assert_close(res.ious[0], torch.tensor([1.0, 0.5, 2 / 3, 1.0, 0.0], dtype=torch.float64))


def test_task_aligned_hand_case_topk2_loser_is_not_refilled() -> None:
    # topk=2: GT0 keeps p2 (0.261) and p0 (0.25), not p1; GT1 keeps p3 and p2. p2 -> GT1 as above,
    # and GT0 is left with p0 alone (p1 is not promoted). Targets: p0 -> 1, p2 -> 2/3, p3 -> 1.
    logits, boxes, priors = _tal_inputs()
    res = _run(TaskAlignedAssigner(topk=2, alpha=1.0, beta=2.0), logits, boxes, priors, TAL_GT, [1, 0])
    assert res.gt_index[0].tolist() == [0, -1, 1, 1, -1]
    torch.testing.assert_close(res.ious[0], torch.tensor([1.0, 0.0, 2 / 3, 1.0, 0.0], dtype=torch.float64))


def test_task_aligned_hand_case_defaults_topk1() -> None:
    # alpha=1, beta=6: t(GT0) p0 0.25, p1 0.5/64 = 0.0078, p2 0.9*(7/13)^6 = 0.0219 -> top-1 p0;
    # t(GT1) p2 0.75*(2/3)^6 = 0.0658, p3 0.5 -> top-1 p3. No conflict; each target = its GT's max u = 1.
    logits, boxes, priors = _tal_inputs()
    res = _run(TaskAlignedAssigner(topk=1), logits, boxes, priors, TAL_GT, [1, 0])
    assert res.gt_index[0].tolist() == [0, -1, -1, 1, -1]
    assert res.labels[0].tolist() == [1, -1, -1, 0, -1]
    torch.testing.assert_close(res.ious[0], torch.tensor([1.0, 0, 0, 1.0, 0], dtype=torch.float64))


def test_task_aligned_zero_metric_candidate_is_not_positive() -> None:
    # One GT (0,0,20,20), one prior (5,10) inside it whose predicted box (30,30,40,40) misses it:
    # u = 0, so t = s * 0 = 0 and the only candidate is rejected (mmdet's "metric > 0").
    priors = _priors([(5, 10, 8)])
    boxes = torch.tensor([[30.0, 30.0, 40.0, 40.0]], dtype=torch.float64)
    logits = torch.tensor([[5.0]], dtype=torch.float64)
    res = _run(TaskAlignedAssigner(topk=3, beta=1.0), logits, boxes, priors, [(0.0, 0.0, 20.0, 20.0)], [0])
    assert res.gt_index[0].tolist() == [-1]
    assert res.ious[0].tolist() == [0.0]


# --------------------------------------------------------------------------- shared: batches etc.
ASSIGNERS = {
    "atss": lambda: ATSSAssigner(),
    "atss_no_inside": lambda: ATSSAssigner(topk=5, anchor_scale=4.0, center_sampling_only_inside=False),
    "task_aligned": lambda: TaskAlignedAssigner(),
    "task_aligned_b2": lambda: TaskAlignedAssigner(topk=5, alpha=0.5, beta=2.0),
}
NUM_CLASSES = 4


def _random_images(seed: int, gt_counts: list[int]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Priors of a 96 px image (strides 8, 16, 32) and per-image random predictions and GTs (float64)."""
    gen = torch.Generator().manual_seed(seed)
    priors = grid_priors([(12, 12), (6, 6), (3, 3)], [8, 16, 32], dtype=torch.float64)  # [189, 4]
    images = []
    for count in gt_counts:
        centre = 8 + 80 * torch.rand(count, 2, generator=gen, dtype=torch.float64)
        size = 12 + 48 * torch.rand(count, 2, generator=gen, dtype=torch.float64)
        gt_boxes = torch.cat((centre - size / 2, centre + size / 2), dim=1)  # [count, 4]
        ltrb = 4 + 36 * torch.rand(len(priors), 4, generator=gen, dtype=torch.float64)
        pred_boxes = torch.cat((priors[:, :2] - ltrb[:, :2], priors[:, :2] + ltrb[:, 2:]), dim=1)  # [N, 4]
        # a fifth of the predictions miss every GT (IoU 0), so some candidates have a zero metric
        pred_boxes[torch.rand(len(priors), generator=gen) < 0.2, 0::2] += 200.0
        images.append(
            {
                "logits": 2 * torch.randn(len(priors), NUM_CLASSES, generator=gen, dtype=torch.float64),
                "pred_boxes": pred_boxes,
                "gt_boxes": gt_boxes,
                "gt_labels": torch.randint(0, NUM_CLASSES, (count,), generator=gen),
            }
        )
    return priors, images


def _pad(images: list[dict[str, torch.Tensor]], num_slots: int) -> tuple[torch.Tensor, ...]:
    """Stack images into a padded batch. Padding slots get an attractive box and an invalid label."""
    batch = len(images)
    gt_boxes = torch.tensor([0.0, 0.0, 96.0, 96.0], dtype=torch.float64).repeat(batch, num_slots, 1)
    gt_labels = torch.full((batch, num_slots), 99, dtype=torch.long)
    gt_mask = torch.zeros(batch, num_slots, dtype=torch.bool)
    for i, img in enumerate(images):
        count = len(img["gt_labels"])
        gt_boxes[i, :count] = img["gt_boxes"]
        gt_labels[i, :count] = img["gt_labels"]
        gt_mask[i, :count] = True
    logits = torch.stack([img["logits"] for img in images])
    pred_boxes = torch.stack([img["pred_boxes"] for img in images])
    return logits, pred_boxes, gt_boxes, gt_labels, gt_mask


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_padded_batch_equals_per_image_and_padding_never_matched(name: str) -> None:
    assigner = ASSIGNERS[name]()
    priors, images = _random_images(seed=1, gt_counts=[3, 0, 5, 1])
    batched = assigner(*_pad(images, 7)[:2], priors, *_pad(images, 7)[2:])
    for i, img in enumerate(images):
        count = len(img["gt_labels"])
        # padding slots (index >= count) are never anyone's GT
        assert int(batched.gt_index[i].max()) < count
        single = assigner(*_pad([img], count)[:2], priors, *_pad([img], count)[2:])
        assert torch.equal(batched.gt_index[i], single.gt_index[0])
        assert torch.equal(batched.labels[i], single.labels[0])
        torch.testing.assert_close(batched.ious[i], single.ious[0], rtol=0, atol=1e-12)
    # the image with no GT is all background, and the others do get positives
    assert not batched.pos_mask[1].any() and float(batched.ious[1].abs().sum()) == 0.0
    assert all(batched.pos_mask[i].any() for i in (0, 2, 3))


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_zero_gt_axis_gives_all_background(name: str) -> None:
    assigner = ASSIGNERS[name]()
    priors, images = _random_images(seed=2, gt_counts=[0, 0])
    logits, pred_boxes, gt_boxes, gt_labels, gt_mask = _pad(images, 0)  # M = 0
    res = assigner(logits, pred_boxes, priors, gt_boxes, gt_labels, gt_mask)
    assert res.gt_index.shape == res.labels.shape == res.ious.shape == (2, len(priors))
    assert res.gt_index.dtype == res.labels.dtype == torch.long
    assert (res.gt_index == -1).all() and (res.labels == -1).all() and (res.ious == 0).all()


def test_config_files_instantiate_with_documented_defaults() -> None:
    atss = instantiate(OmegaConf.load(CONF / "atss.yaml"))
    assert isinstance(atss, ATSSAssigner)
    assert (atss.topk, atss.anchor_scale, atss.center_sampling_only_inside) == (9, 8.0, True)
    tal = instantiate(OmegaConf.load(CONF / "task_aligned.yaml"))
    assert isinstance(tal, TaskAlignedAssigner)
    assert (tal.topk, tal.alpha, tal.beta, tal.eps) == (13, 1.0, 6.0, 1e-9)


@pytest.mark.parametrize(
    ("factory", "kwargs", "name"),
    [
        (ATSSAssigner, {"topk": 0}, "topk"),
        (ATSSAssigner, {"topk": 2.5}, "topk"),
        (ATSSAssigner, {"topk": True}, "topk"),
        (ATSSAssigner, {"anchor_scale": 0.0}, "anchor_scale"),
        (ATSSAssigner, {"anchor_scale": -8}, "anchor_scale"),
        (ATSSAssigner, {"center_sampling_only_inside": "yes"}, "center_sampling_only_inside"),
        (TaskAlignedAssigner, {"topk": 0}, "topk"),
        (TaskAlignedAssigner, {"alpha": -1.0}, "alpha"),
        (TaskAlignedAssigner, {"beta": -0.5}, "beta"),
        (TaskAlignedAssigner, {"beta": "6"}, "beta"),
        (TaskAlignedAssigner, {"eps": 0.0}, "eps"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(factory, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


# ------------------------------------------------------------------ plain per-image references
def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _strictly_inside(x: float, y: float, box: list[float]) -> bool:
    return box[0] < x < box[2] and box[1] < y < box[3]


def _resolve(claims: dict[int, list[int]], rank: dict[tuple[int, int], float]) -> dict[int, int]:
    """Each claimed prior goes to the claiming GT with the largest rank value (earliest GT on ties)."""
    owner = {}
    for p, gts in claims.items():
        best = None
        for g in sorted(gts):
            if best is None or rank[p, g] > rank[p, best]:
                best = g
        owner[p] = best
    return owner


def _atss_reference(img, priors, topk, anchor_scale, inside_only):
    pts = priors.tolist()
    gts = img["gt_boxes"].tolist()
    preds = img["pred_boxes"].tolist()
    strides = sorted({p[2] for p in pts})
    claims, anchor_iou = {}, {}
    for g, box in enumerate(gts):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        candidates = []
        for s in strides:
            level = [i for i, p in enumerate(pts) if p[2] == s]
            level.sort(key=lambda i: math.hypot(pts[i][0] - cx, pts[i][1] - cy))
            candidates += level[:topk]
        values = []
        for i in candidates:
            x, y, sw, sh = pts[i]
            half_w, half_h = anchor_scale * sw / 2, anchor_scale * sh / 2
            anchor = [x - half_w, y - half_h, x + half_w, y + half_h]
            anchor_iou[i, g] = _iou(anchor, box)
            values.append(anchor_iou[i, g])
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        for i in candidates:
            if anchor_iou[i, g] >= mean + std and (not inside_only or _strictly_inside(pts[i][0], pts[i][1], box)):
                claims.setdefault(i, []).append(g)
    owner = _resolve(claims, anchor_iou)
    labels = img["gt_labels"].tolist()
    gt_index = [owner.get(i, -1) for i in range(len(pts))]
    return gt_index, [labels[g] if g >= 0 else -1 for g in gt_index], [
        _iou(preds[i], gts[g]) if g >= 0 else 0.0 for i, g in enumerate(gt_index)
    ], claims


def _tal_reference(img, priors, topk, alpha, beta, eps):
    pts = priors.tolist()
    gts = img["gt_boxes"].tolist()
    preds = img["pred_boxes"].tolist()
    logits = img["logits"].tolist()
    labels = img["gt_labels"].tolist()
    claims, metric, iou = {}, {}, {}
    for g, box in enumerate(gts):
        scored = []
        for i, (x, y, _, _) in enumerate(pts):
            iou[i, g] = _iou(preds[i], box)
            score = 1.0 / (1.0 + math.exp(-logits[i][labels[g]]))
            metric[i, g] = score**alpha * iou[i, g] ** beta
            if _strictly_inside(x, y, box) and metric[i, g] > 0:
                scored.append(i)
        scored.sort(key=lambda i: -metric[i, g])
        for i in scored[:topk]:
            claims.setdefault(i, []).append(g)
    owner = _resolve(claims, iou)
    gt_index = [owner.get(i, -1) for i in range(len(pts))]
    targets = []
    for i, g in enumerate(gt_index):
        if g < 0:
            targets.append(0.0)
            continue
        mine = [j for j, h in enumerate(gt_index) if h == g]
        max_t = max(metric[j, g] for j in mine)
        max_u = max(iou[j, g] for j in mine)
        targets.append(metric[i, g] * max_u / (max_t + eps))
    return gt_index, [labels[g] if g >= 0 else -1 for g in gt_index], targets, claims


REFERENCE_CASES = {
    "atss": (ATSSAssigner(), lambda img, pr: _atss_reference(img, pr, 9, 8.0, True)),
    "atss_small": (
        ATSSAssigner(topk=4, anchor_scale=3.0, center_sampling_only_inside=False),
        lambda img, pr: _atss_reference(img, pr, 4, 3.0, False),
    ),
    "task_aligned": (TaskAlignedAssigner(), lambda img, pr: _tal_reference(img, pr, 13, 1.0, 6.0, 1e-9)),
    "task_aligned_small": (
        TaskAlignedAssigner(topk=4, alpha=0.5, beta=2.0, eps=1e-3),
        lambda img, pr: _tal_reference(img, pr, 4, 0.5, 2.0, 1e-3),
    ),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_CASES))
def test_matches_plain_per_image_reference(name: str) -> None:
    assigner, reference = REFERENCE_CASES[name]
    priors, images = _random_images(seed=8, gt_counts=[5, 4, 6])
    res = assigner(*_pad(images, 6)[:2], priors, *_pad(images, 6)[2:])
    contested = 0
    for i, img in enumerate(images):
        gt_index, labels, targets, claims = reference(img, priors)
        contested += sum(len(gts) > 1 for gts in claims.values())
        assert res.gt_index[i].tolist() == gt_index
        assert res.labels[i].tolist() == labels
        torch.testing.assert_close(res.ious[i], torch.tensor(targets, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    # the random data must exercise conflict resolution, or this test proves less than it claims
    assert contested > 0
