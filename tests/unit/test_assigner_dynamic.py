"""Tests of the batched dynamic assigners (DSLA and SimOTA) against hand-worked cases and a plain
float64 re-implementation of mmdet's per-image algorithm (loops over GTs, full [N, M, C] tensor)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rtmdet_exp.assigners.base import Assigner, AssignResult
from rtmdet_exp.assigners.dynamic import DynamicSoftLabelAssigner
from rtmdet_exp.ops.priors import grid_priors

LN2 = math.log(2.0)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "assigner"

SIMOTA = dict(cls_cost="hard", center_prior="hard", candidates="box_or_center", topk=10)


# ---------------------------------------------------------------------------- plain references


def _iou(a: list[float], b: list[float]) -> float:
    """IoU of two xyxy boxes with scalar arithmetic (union clamped at 1e-6 as mmdet)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    return inter / max(area_a + area_b - inter, 1e-6)


def reference_assign(
    logits: torch.Tensor,
    pred: torch.Tensor,
    priors: torch.Tensor,
    gt: torch.Tensor,
    labels: torch.Tensor,
    *,
    cls_cost: str = "soft",
    cls_cost_classes: str = "all",
    center_prior: str = "soft",
    iou_cost: str = "log",
    iou_weight: float = 3.0,
    topk: int = 13,
    soft_center_radius: float = 3.0,
    center_radius: float = 2.5,
    hard_prior_cost: float = 1e5,
    candidates: str = "inside_box",
) -> tuple[list[int], list[float]]:
    """mmdet's per-image DSLA / SimOTA in float64: one image, only its real GTs, loops over GTs."""
    logits, pred, priors, gt = logits.double(), pred.double(), priors.double(), gt.double()
    num_priors, num_classes = logits.shape
    num_gts = gt.shape[0]
    gt_index, out_ious = [-1] * num_priors, [0.0] * num_priors
    if num_gts == 0:
        return gt_index, out_ious
    inside = torch.zeros(num_priors, num_gts, dtype=torch.bool)
    in_center = torch.zeros(num_priors, num_gts, dtype=torch.bool)
    px, py, sw, sh = priors.unbind(1)
    for g in range(num_gts):
        x1, y1, x2, y2 = gt[g].tolist()
        inside[:, g] = (px - x1 > 0) & (py - y1 > 0) & (x2 - px > 0) & (y2 - py > 0)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        in_center[:, g] = (
            (px - (cx - center_radius * sw) > 0)
            & (py - (cy - center_radius * sh) > 0)
            & ((cx + center_radius * sw) - px > 0)
            & ((cy + center_radius * sh) - py > 0)
        )
    cand = inside.any(1) | (in_center.any(1) if candidates == "box_or_center" else False)
    idx = cand.nonzero().squeeze(1)
    if idx.numel() == 0:
        return gt_index, out_ious
    k_cand = idx.numel()
    iou = torch.tensor([[_iou(pred[n].tolist(), gt[g].tolist()) for g in range(num_gts)] for n in idx.tolist()])

    x = logits[idx][:, None, :].expand(k_cand, num_gts, num_classes)  # [K, M, C]
    onehot = F.one_hot(labels.long(), num_classes).double()[None].expand(k_cand, num_gts, num_classes)
    if cls_cost == "soft":
        target = onehot * iou[..., None]
        full = F.binary_cross_entropy_with_logits(x, target, reduction="none") * (target - x.sigmoid()).abs() ** 2
    elif cls_cost == "hard":
        full = F.binary_cross_entropy(x.sigmoid(), onehot, reduction="none")
    else:
        full = torch.zeros_like(x)
    cls = full.sum(-1) if cls_cost_classes == "all" else (full * onehot).sum(-1)  # [K, M]
    reg = -torch.log(iou + 1e-7) if iou_cost == "log" else 1 - iou
    cost = cls + reg * iou_weight
    if center_prior == "soft":
        centers = (gt[:, :2] + gt[:, 2:]) / 2
        dist = ((priors[idx, None, :2] - centers[None]) ** 2).sum(-1).sqrt() / priors[idx, None, 2]
        cost = cost + 10 ** (dist - soft_center_radius)
    elif center_prior == "hard":
        cost = cost + (~(inside[idx] & in_center[idx])).double() * hard_prior_cost

    dynamic_k = torch.topk(iou, min(topk, k_cand), dim=0).values.sum(0).int().clamp(min=1)
    matching = torch.zeros(k_cand, num_gts, dtype=torch.long)
    for g in range(num_gts):
        pos = torch.topk(cost[:, g], k=int(dynamic_k[g]), largest=False).indices
        matching[pos, g] = 1
    for j in range(k_cand):
        if matching[j].sum() > 1:
            matching[j] = 0
            matching[j, int(cost[j].argmin())] = 1
    for j, n in enumerate(idx.tolist()):
        if matching[j].sum() == 1:
            g = int(matching[j].argmax())
            gt_index[n], out_ious[n] = g, float(iou[j, g])
    return gt_index, out_ious


def random_batch(
    seed: int,
    num_gts: list[int],
    *,
    image_size: int = 96,
    num_classes: int = 7,
    pad_to: int | None = None,
    garbage_padding: bool = True,
) -> dict[str, torch.Tensor]:
    """A padded batch: GT boxes anywhere in the image, predictions jittered around random GTs."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [(math.ceil(image_size / s), math.ceil(image_size / s)) for s in (8, 16, 32)]
    priors = grid_priors(sizes, (8, 16, 32))  # [N, 4]
    num_priors, num_images = priors.shape[0], len(num_gts)
    width = max(pad_to or 0, max(num_gts), 1)
    gt_boxes = torch.zeros(num_images, width, 4)
    gt_labels = torch.full((num_images, width), -1, dtype=torch.long)
    gt_mask = torch.zeros(num_images, width, dtype=torch.bool)
    if garbage_padding:  # padding that would swallow every prior and every prediction if it counted
        gt_boxes[:] = torch.tensor([-50.0, -50.0, image_size + 50.0, image_size + 50.0])
        gt_labels[:] = 0
    pred = torch.empty(num_images, num_priors, 4)
    for b, m in enumerate(num_gts):
        wh = 6 + torch.rand(m, 2, generator=gen) * (image_size * 0.5)
        xy = torch.rand(m, 2, generator=gen) * (image_size - wh)
        gt_boxes[b, :m] = torch.cat((xy, xy + wh), 1)
        gt_labels[b, :m] = torch.randint(0, num_classes, (m,), generator=gen)
        gt_mask[b, :m] = True
        source = gt_boxes[b, torch.randint(0, max(m, 1), (num_priors,), generator=gen)] if m else gt_boxes[b, :1]
        size = (source[:, 2:] - source[:, :2]).clamp(min=4)
        jitter = torch.randn(num_priors, 4, generator=gen) * size.repeat(1, 2) * 0.25
        pred[b] = source.expand(num_priors, 4) + jitter
    pred = torch.cat((torch.minimum(pred[..., :2], pred[..., 2:]), torch.maximum(pred[..., :2], pred[..., 2:])), -1)
    logits = torch.randn(num_images, num_priors, num_classes, generator=gen) * 3
    return dict(
        pred_logits=logits, pred_boxes=pred, priors=priors, gt_boxes=gt_boxes, gt_labels=gt_labels, gt_mask=gt_mask
    )


def _as(batch: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


# ---------------------------------------------------------------------------- hand-worked cases


def _hand_case() -> dict[str, torch.Tensor]:
    """Six stride-8 priors, two GTs and one padding GT; all logits 0, 2 classes.

    Priors: p0..p4 at x = 8, 16, 24, 32, 40 (y = 8), p5 at (100, 100).
    GT A = [0, 0, 32, 16] label 0, centre (16, 8); GT B = [16, 0, 48, 16] label 1, centre (32, 8).
    Strictly inside A: p0, p1, p2; inside B: p2, p3, p4 (x = 16 is on B's edge). Candidates p0..p4.
    Predicted boxes and IoUs (with A, with B):
      p0 [8, 0, 40, 16]   0.6 (384/640),   0.6
      p1 = A              1,               1/3 (256/768)
      p2 [12, 0, 44, 16]  5/11 (320/704),  7/9 (448/576)
      p3 = B              1/3,             1
      p4 [4, 0, 36, 16]   7/9,             5/11
      p5 = A              not a candidate: its IoU 1 must count nowhere.
    The padding slot holds a box covering everything (it would make p5 a candidate if it counted).
    """
    priors = torch.tensor([[x, y, 8.0, 8.0] for x, y in [(8, 8), (16, 8), (24, 8), (32, 8), (40, 8), (100, 100)]])
    box_a, box_b = [0.0, 0.0, 32.0, 16.0], [16.0, 0.0, 48.0, 16.0]
    pred = torch.tensor([[8.0, 0, 40, 16], box_a, [12.0, 0, 44, 16], box_b, [4.0, 0, 36, 16], box_a])[None]
    return dict(
        pred_logits=torch.zeros(1, 6, 2),
        pred_boxes=pred,
        priors=priors,
        gt_boxes=torch.tensor([[box_a, box_b, [-1e3, -1e3, 1e3, 1e3]]]),
        gt_labels=torch.tensor([[0, 1, 1]]),
        gt_mask=torch.tensor([[True, True, False]]),
    )


def test_hand_case_soft_costs_and_assignment() -> None:
    """The reference DSLA on the hand case.

    With logit 0: sigmoid = 0.5 and BCE(0, y) = ln 2 for any y, so over the 2 classes
    C_cls = ln2 * 0.25 (other class) + ln2 * (IoU - 0.5)^2 (GT class):
      IoU 1: 0.346574   IoU 7/9: 0.226771   IoU 0.6: 0.180218   IoU 5/11: 0.174719   IoU 1/3: 0.192541
    3 * -log(IoU + 1e-7): IoU 1: ~0, 7/9: 0.753943, 0.6: 1.532477, 5/11: 2.365372, 1/3: 3.295837.
    Centre prior 10^(d - 3), d in strides: A (x=16): d = 1, 0, 1, 2, 3 -> 0.01, 0.001, 0.01, 0.1, 1
                                           B (x=32): d = 3, 2, 1, 0, 1 -> 1, 0.1, 0.01, 0.001, 0.01
    Costs     A                          B
      p0   0.180218+1.532477+0.01 = 1.722695   0.180218+1.532477+1 = 2.712695
      p1   0.346574+0+0.001       = 0.347574   0.192541+3.295837+0.1 = 3.588378
      p2   0.174719+2.365372+0.01 = 2.550091   0.226771+0.753943+0.01 = 0.990714
      p3   0.192541+3.295837+0.1  = 3.588378   0.346574+0+0.001 = 0.347574
      p4   0.226771+0.753943+1    = 1.980714   0.174719+2.365372+0.01 = 2.550091
    dynamic k (over all 5 candidates, p5 excluded): A: 0.6+1+5/11+1/3+7/9 = 3.166 -> 3;
      B: 0.6+1/3+7/9+1+5/11 = 3.166 -> 3. (Counting p5 would give A k=4; counting only the
      priors inside A would give 0.6+1+5/11 = 2.05 -> k=2: both change the result.)
    Picks: A -> p1, p0, p4 (p4 lies outside A: mmdet has no per-pair mask); B -> p3, p2, p4.
    Conflict at p4: row argmin = A (1.980714 < 2.550091). Result p0 A, p1 A, p2 B, p3 B, p4 A, p5 bg;
    soft targets = IoU with the matched GT: 0.6, 1, 7/9, 1, 7/9, 0.
    """
    case = _hand_case()
    assigner = DynamicSoftLabelAssigner()
    cost, ious, cand = assigner.cost_matrix(**case)
    expected_cost = torch.tensor(
        [[1.722695, 2.712695], [0.347574, 3.588378], [2.550091, 0.990714], [3.588378, 0.347574], [1.980714, 2.550091]]
    )
    torch.testing.assert_close(cost[0, :5, :2], expected_cost, atol=2e-6, rtol=0)
    assert torch.isinf(cost[0, 5]).all() and torch.isinf(cost[0, :, 2]).all()
    assert cand.tolist() == [[True] * 5 + [False]]
    torch.testing.assert_close(ious[0, :5, 1], torch.tensor([0.6, 1 / 3, 7 / 9, 1.0, 5 / 11]))

    result = assigner(**case)
    assert isinstance(result, AssignResult)
    assert result.gt_index.tolist() == [[0, 0, 1, 1, 0, -1]]
    assert result.labels.tolist() == [[0, 0, 1, 1, 0, -1]]
    torch.testing.assert_close(result.ious, torch.tensor([[0.6, 1.0, 7 / 9, 1.0, 7 / 9, 0.0]]))
    assert result.pos_mask.tolist() == [[True] * 5 + [False]]


def test_hand_case_topk_caps_dynamic_k() -> None:
    """topk=2: A sums its top-2 IoUs 1 + 7/9 = 1.78 -> k=1 and picks p1 (0.347574); B likewise
    1 + 7/9 -> k=1 and picks p3 (0.347574). No conflict: only p1 and p3 are positive."""
    result = DynamicSoftLabelAssigner(topk=2)(**_hand_case())
    assert result.gt_index.tolist() == [[-1, 0, -1, 1, -1, -1]]
    torch.testing.assert_close(result.ious, torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]]))


def test_hand_case_variants_change_the_cost() -> None:
    """Linear IoU cost, GT-class-only cls cost and no centre prior, on pair (p2, B), IoU 7/9:
    cls (gt class only) = ln2 * (7/9 - 1/2)^2 = 0.053484; 3 * (1 - 7/9) = 0.666667; total 0.720151."""
    assigner = DynamicSoftLabelAssigner(cls_cost_classes="gt", iou_cost="linear", center_prior="off")
    cost, _, _ = assigner.cost_matrix(**_hand_case())
    expected = LN2 * (7 / 9 - 0.5) ** 2 + 3 * (1 - 7 / 9)
    assert cost[0, 2, 1].item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.720151, abs=1e-6)


def test_hand_case_simota() -> None:
    """SimOTA (hard cls, hard centre prior 1e5, box-or-centre candidates, topk 10).

    Priors p0..p5 at x = 8, 16, ..., 48 (y = 8, stride 8) and p6 at (100, 100); 2 classes, logits 0.
    GT A = [0, 0, 32, 16] label 0, centre (16, 8); GT S = [42, 6, 46, 10] label 1, centre (44, 8), tiny.
    Inside a box: A: p0, p1, p2; S: none (x = 40 and 48 lie outside 42..46).
    Centre squares (+-2.5 * 8 = 20 px): A: x in (-4, 36) -> p0..p3; S: x in (24, 64) -> p3, p4, p5.
    Candidates (box or centre): p0..p5. Inside box AND centre: A: p0, p1, p2; S: none -> +1e5 on all.
    Preds and IoUs (A, S): p0 = A (1, 0); p1 [0, 0, 16, 16] (0.5, 0); p2 [8, 0, 40, 16] (0.6, 0);
      p3 [40, 4, 48, 12] (0, 16/64 = 0.25); p4 = S (0, 1); p5 [41, 5, 45, 9] (0, 9/23); p6 = A (ignored).
    Hard cls cost with logit 0 = sum over the 2 classes of BCE(0.5, y) = 2 ln2 = 1.386294 for every pair.
    A: p0 1.386294; p1 1.386294 + 3*ln2 = 3.465736; p2 1.386294 + 3*0.510826 = 2.918771;
       p3..p5: 1.386294 + 48.354287 + 1e5. dynamic k = int(1 + 0.5 + 0.6) = 2 -> p0, p2.
    S: p3 1.386294 + 3*ln4 + 1e5 = 100005.545177; p4 1.386294 + 1e5 = 100001.386294;
       p5 1.386294 + 3*ln(23/9) + 1e5 = 100004.201104. k = int(0.25 + 1 + 9/23) = int(1.64) = 1 -> p4.
    Result: p0 A (IoU 1), p2 A (0.6), p4 S (1); the rest background.
    """
    priors = torch.tensor([[x, 8.0, 8.0, 8.0] for x in (8, 16, 24, 32, 40, 48)] + [[100.0, 100.0, 8.0, 8.0]])
    box_a, box_s = [0.0, 0, 32, 16], [42.0, 6, 46, 10]
    pred = torch.tensor([box_a, [0.0, 0, 16, 16], [8.0, 0, 40, 16], [40.0, 4, 48, 12], box_s, [41.0, 5, 45, 9], box_a])
    case = dict(
        pred_logits=torch.zeros(1, 7, 2),
        pred_boxes=pred[None],
        priors=priors,
        gt_boxes=torch.tensor([[box_a, box_s]]),
        gt_labels=torch.tensor([[0, 1]]),
        gt_mask=torch.tensor([[True, True]]),
    )
    assigner = DynamicSoftLabelAssigner(**SIMOTA)
    cost, _, cand = assigner.cost_matrix(**case)
    assert cand.tolist() == [[True] * 6 + [False]]
    torch.testing.assert_close(cost[0, :3, 0], torch.tensor([1.386294, 3.465736, 2.918771]), atol=2e-6, rtol=0)
    torch.testing.assert_close(
        cost[0, 3:6, 1].double(), torch.tensor([100005.545177, 100001.386294, 100004.201104], dtype=torch.float64),
        atol=1e-2, rtol=0,  # fp32 spacing at 1e5 is 0.0078
    )
    result = assigner(**case)
    assert result.gt_index.tolist() == [[0, -1, 0, -1, 1, -1, -1]]
    assert result.labels.tolist() == [[0, -1, 0, -1, 1, -1, -1]]
    torch.testing.assert_close(result.ious, torch.tensor([[1.0, 0.0, 0.6, 0.0, 1.0, 0.0, 0.0]]))

    # The reference DSLA on the same input: only p0..p2 (inside A) are candidates; S's IoUs there are
    # 0 so k=1 and S picks its nearest candidate p2 (d = 2.5), which A (k=2: p0, p2) also picks; the
    # row argmin gives p2 to A, so S ends with no positive at all (not an invariant of the method).
    dsla = DynamicSoftLabelAssigner()(**case)
    assert dsla.gt_index.tolist() == [[0, -1, 0, -1, -1, -1, -1]]


# ---------------------------------------------------------------------------- against references


@pytest.mark.parametrize("cls_cost", ["soft", "hard"])
@pytest.mark.parametrize("classes", ["all", "gt"])
def test_cls_cost_decomposition_equals_full_tensor(cls_cost: str, classes: str) -> None:
    """S(n) + correction on the GT class == the full [N, M, C] BCE * |Y - sigmoid|^2 tensor summed."""
    batch = random_batch(1, [9], num_classes=20)
    batch["pred_logits"] = batch["pred_logits"] * 2  # logits up to ~+-20: tests the cancellation
    b64 = _as(batch, torch.float64)
    assigner = DynamicSoftLabelAssigner(cls_cost=cls_cost, cls_cost_classes=classes, iou_weight=0.0, center_prior="off")
    x = b64["pred_logits"][0][:, None, :]  # [N, 1, C]
    onehot = F.one_hot(b64["gt_labels"][0], 20).double()[None]  # [1, M, C]
    _, ious, cand = assigner.cost_matrix(**b64)
    iou = ious[0][..., None]  # [N, M, 1]
    if cls_cost == "soft":
        y = onehot * iou
        full = F.binary_cross_entropy_with_logits(x.expand_as(y), y, reduction="none") * (y - x.sigmoid()) ** 2
    else:
        full = F.binary_cross_entropy(x.sigmoid().expand(-1, onehot.shape[1], -1), onehot.expand(x.shape[0], -1, -1),
                                      reduction="none")
    expected = full.sum(-1) if classes == "all" else (full * onehot).sum(-1)  # [N, M]
    assert cand.sum() > 10
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        cost, _, _ = assigner.cost_matrix(**_as(batch, dtype))
        got = cost[0][cand[0]].double()
        torch.testing.assert_close(got, expected[cand[0]], atol=tol, rtol=tol)


CONFIGS = {
    "dsla": {},
    "dsla_gtcls": dict(cls_cost_classes="gt"),
    "simota": SIMOTA,
    "ablation_hard_cls": dict(cls_cost="hard"),
    "ablation_linear_iou": dict(cls_cost="hard", center_prior="hard", iou_cost="linear"),
    "no_cls_soft_prior_box_or_center": dict(cls_cost="none", candidates="box_or_center", topk=5),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_per_image_reference(name: str) -> None:
    """Batched float64 result == the plain per-image, per-GT-loop mmdet algorithm, for every image."""
    options = CONFIGS[name]
    batch = _as(random_batch(2, [6, 0, 3, 11], pad_to=12), torch.float64)
    result = DynamicSoftLabelAssigner(**options)(**batch)
    total_pos = 0
    for b in range(4):
        m = int(batch["gt_mask"][b].sum())
        ref_index, ref_ious = reference_assign(
            batch["pred_logits"][b], batch["pred_boxes"][b], batch["priors"],
            batch["gt_boxes"][b, :m], batch["gt_labels"][b, :m], **options,
        )
        assert result.gt_index[b].tolist() == ref_index
        torch.testing.assert_close(result.ious[b], torch.tensor(ref_ious, dtype=torch.float64))
        labels = [int(batch["gt_labels"][b, g]) if g >= 0 else -1 for g in ref_index]
        assert result.labels[b].tolist() == labels
        total_pos += sum(g >= 0 for g in ref_index)
    assert total_pos > 20


def test_padded_batch_equals_per_image_runs() -> None:
    """fp32: the padded batch gives, image by image, what the assigner gives on that image alone."""
    counts = [4, 0, 9, 1]
    batch = random_batch(3, counts, pad_to=10)
    assigner = DynamicSoftLabelAssigner()
    result = assigner(**batch)
    for b, m in enumerate(counts):
        alone = assigner(
            batch["pred_logits"][b : b + 1], batch["pred_boxes"][b : b + 1], batch["priors"],
            batch["gt_boxes"][b : b + 1, :m], batch["gt_labels"][b : b + 1, :m], batch["gt_mask"][b : b + 1, :m],
        )
        assert torch.equal(result.gt_index[b], alone.gt_index[0])
        assert torch.equal(result.labels[b], alone.labels[0])
        assert torch.equal(result.ious[b], alone.ious[0])
    assert (result.gt_index[1] == -1).all() and (result.ious[1] == 0).all()
    assert result.pos_mask[[0, 2, 3]].sum(1).gt(0).all()


def test_padding_anywhere_is_never_matched() -> None:
    """Padding slots interleaved with real GTs (garbage boxes covering the image) change nothing."""
    gen = torch.Generator().manual_seed(4)
    batch = random_batch(4, [7, 5], pad_to=7, garbage_padding=False)
    compact = DynamicSoftLabelAssigner()(**batch)
    width = 16
    slots = torch.stack([torch.randperm(width, generator=gen)[:7].sort().values for _ in range(2)])  # [B, 7]
    spread = dict(batch)
    spread["gt_boxes"] = torch.tensor([-40.0, -40.0, 200.0, 200.0]).repeat(2, width, 1)
    spread["gt_labels"] = torch.full((2, width), 3)
    spread["gt_mask"] = torch.zeros(2, width, dtype=torch.bool)
    for b in range(2):
        spread["gt_boxes"][b, slots[b]] = batch["gt_boxes"][b]
        spread["gt_labels"][b, slots[b]] = batch["gt_labels"][b]
        spread["gt_mask"][b, slots[b]] = batch["gt_mask"][b]
    result = DynamicSoftLabelAssigner()(**spread)
    for b in range(2):
        pos = compact.gt_index[b] >= 0
        assert torch.equal(result.gt_index[b] >= 0, pos)
        assert torch.equal(result.gt_index[b][pos], slots[b][compact.gt_index[b][pos]])
        assert spread["gt_mask"][b][result.gt_index[b][pos]].all()
    assert torch.equal(result.labels, compact.labels)
    assert torch.equal(result.ious, compact.ious)


@pytest.mark.parametrize("options", [{}, SIMOTA], ids=["dsla", "simota"])
def test_chunking_does_not_change_the_result(options: dict) -> None:
    """Any chunk size (one GT at a time, a few GTs, several images per block) gives the same result."""
    batch = random_batch(5, [8, 3, 12], pad_to=12)
    num_priors = batch["priors"].shape[0]
    full = DynamicSoftLabelAssigner(**options)(**batch)
    for pairs in (1, 5 * num_priors, 12 * num_priors * 2):
        chunked = DynamicSoftLabelAssigner(max_pairs_per_chunk=pairs, **options)(**batch)
        assert torch.equal(chunked.gt_index, full.gt_index)
        assert torch.equal(chunked.ious, full.ious)


# ---------------------------------------------------------------------------- edge cases


def test_zero_gt_images_and_empty_inputs() -> None:
    """No valid GT -> all background; M = 0 and N = 0 give correctly shaped background results."""
    batch = random_batch(6, [0, 0], pad_to=3)
    result = DynamicSoftLabelAssigner()(**batch)
    assert (result.gt_index == -1).all() and (result.labels == -1).all() and (result.ious == 0).all()
    no_slots = DynamicSoftLabelAssigner()(
        batch["pred_logits"], batch["pred_boxes"], batch["priors"],
        torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool),
    )
    assert no_slots.gt_index.shape == (2, batch["priors"].shape[0]) and (no_slots.gt_index == -1).all()
    no_priors = DynamicSoftLabelAssigner()(
        torch.zeros(2, 0, 7), torch.zeros(2, 0, 4), torch.zeros(0, 4),
        batch["gt_boxes"], batch["gt_labels"], torch.ones(2, 3, dtype=torch.bool),
    )
    assert no_priors.gt_index.shape == (2, 0)


def test_gt_without_candidates_gives_background() -> None:
    """DSLA: a GT with no prior point strictly inside it (and no other GT) leaves everything background."""
    priors = grid_priors([(4, 4)], [8])  # points at 0, 8, 16, 24
    gt = torch.tensor([[[9.0, 9.0, 15.0, 15.0]]])  # no multiple of 8 strictly inside (9, 15)
    pred = gt.expand(1, 16, 4).clone()
    args = (torch.zeros(1, 16, 3), pred, priors, gt, torch.tensor([[2]]), torch.tensor([[True]]))
    assert (DynamicSoftLabelAssigner()(*args).gt_index == -1).all()
    # SimOTA's centre square (+-20 px around (12, 12)) does make candidates: the GT gets a positive.
    assert (DynamicSoftLabelAssigner(**SIMOTA)(*args).gt_index == 0).sum() >= 1


def test_overflowing_centre_prior_still_ranks_below_non_candidates() -> None:
    """A GT whose only candidates are > 41.5 strides away (10^(d-3) = inf in fp32) still gets its k.

    X = [0, 0, 6, 6] holds no prior point; Y = [400, 400, 640, 640] holds 29^2 stride-8 points. Every
    prediction is X's box, so X's IoU is 1 at all candidates: k_X = 13. Its centre (3, 3) is >= 55
    strides from any candidate, so all its real costs overflow. Those must still rank below the
    masked (non-candidate) entries: X then picks 13 candidates. Y's IoUs are 0 -> k_Y = 1; Y can take
    at most one of X's picks in a conflict, so X keeps at least 12 positives, all inside Y.
    """
    priors = grid_priors([(80, 80)], [8])
    n = priors.shape[0]
    box_x, box_y = [0.0, 0.0, 6.0, 6.0], [400.0, 400.0, 640.0, 640.0]
    result = DynamicSoftLabelAssigner()(
        torch.zeros(1, n, 2), torch.tensor(box_x).expand(1, n, 4), priors,
        torch.tensor([[box_x, box_y]]), torch.tensor([[0, 1]]), torch.tensor([[True, True]]),
    )
    cost, _, _ = DynamicSoftLabelAssigner().cost_matrix(
        torch.zeros(1, n, 2), torch.tensor(box_x).expand(1, n, 4), priors,
        torch.tensor([[box_x, box_y]]), torch.tensor([[0, 1]]), torch.tensor([[True, True]]),
    )
    inside_y = (priors[:, 0] > 400) & (priors[:, 1] > 400)
    assert (cost[0, inside_y, 0] == torch.finfo(torch.float32).max).all()
    pos = result.gt_index[0] >= 0
    assert inside_y[pos].all()
    assert 12 <= int((result.gt_index[0] == 0).sum()) <= 13
    assert int((result.gt_index[0] == 1).sum()) <= 1


def test_500_gts_at_640_with_80_classes_on_cpu() -> None:
    """One 640x640 image (8400 priors), 500 GTs (plus 12 padding slots), 80 classes, default chunking.

    GTs tile the image in a 25 x 20 grid of disjoint boxes (every box holds stride-8 points) and each
    prediction is its cell's box jittered, so no prior is fought over between GTs: each GT must
    keep >= 1 positive. (With heavily overlapping GTs that is not guaranteed: conflicts can strip a GT
    of all its picks, see the SimOTA hand case.)
    """
    gen = torch.Generator().manual_seed(7)
    priors = grid_priors([(80, 80), (40, 40), (20, 20)], (8, 16, 32))
    n = priors.shape[0]
    cols, rows, cw, ch = 25, 20, 640 / 25, 640 / 20
    gx, gy = torch.meshgrid(torch.arange(cols), torch.arange(rows), indexing="xy")
    x1, y1 = gx.flatten() * cw + 2, gy.flatten() * ch + 2
    gt = torch.stack((x1, y1, x1 + cw - 4, y1 + ch - 4), 1)  # [500, 4], 21.6 x 28 px
    gt_boxes = torch.cat((gt, torch.zeros(12, 4)))[None]
    gt_mask = torch.arange(512)[None] < 500
    cell = ((priors[:, 1] / ch).floor().clamp(max=rows - 1) * cols + (priors[:, 0] / cw).floor().clamp(max=cols - 1))
    pred = gt[cell.long()] + torch.randn(n, 4, generator=gen) * 2
    logits = torch.randn(1, n, 80, generator=gen)
    labels = torch.randint(0, 80, (1, 512), generator=gen)
    start = time.perf_counter()
    result = DynamicSoftLabelAssigner()(logits, pred[None], priors, gt_boxes, labels, gt_mask)
    elapsed = time.perf_counter() - start
    assert result.gt_index.shape == result.labels.shape == result.ious.shape == (1, n)
    matched = result.gt_index[0][result.gt_index[0] >= 0]
    assert (matched < 500).all()
    assert torch.bincount(matched, minlength=500).ge(1).all()
    assert torch.bincount(matched, minlength=500).le(13).all()
    assert elapsed < 30, f"500-GT assignment took {elapsed:.1f} s"


# ---------------------------------------------------------------------------- args and configs


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(cls_cost="focal"), "cls_cost"),
        (dict(cls_cost_classes="some"), "cls_cost_classes"),
        (dict(center_prior="gauss"), "center_prior"),
        (dict(iou_cost="giou"), "iou_cost"),
        (dict(candidates="center"), "candidates"),
        (dict(topk=0), "topk"),
        (dict(iou_weight=-1.0), "iou_weight"),
        (dict(cls_weight=-0.5), "cls_weight"),
        (dict(hard_prior_cost=-1.0), "hard_prior_cost"),
        (dict(center_radius=0.0), "center_radius"),
        (dict(max_pairs_per_chunk=0), "max_pairs_per_chunk"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DynamicSoftLabelAssigner(**kwargs)


def test_invalid_choice_lists_valid_values() -> None:
    with pytest.raises(ValueError, match="'soft', 'hard', 'none'"):
        DynamicSoftLabelAssigner(cls_cost="Soft")


def test_bad_shapes_raise() -> None:
    batch = random_batch(8, [2])
    with pytest.raises(ValueError, match="priors"):
        DynamicSoftLabelAssigner()(**{**batch, "priors": batch["priors"][:-1]})
    with pytest.raises(ValueError, match="gt_mask"):
        DynamicSoftLabelAssigner()(**{**batch, "gt_mask": batch["gt_mask"][:, :0]})


@pytest.mark.parametrize(
    "option, expected",
    [
        ("soft", dict(cls_cost="soft", cls_cost_classes="all", center_prior="soft", iou_cost="log", iou_weight=3.0,
                      topk=13, soft_center_radius=3.0, candidates="inside_box")),
        ("soft_gtcls", dict(cls_cost="soft", cls_cost_classes="gt", center_prior="soft", topk=13)),
        ("hard", dict(cls_cost="hard", cls_cost_classes="all", center_prior="hard", center_radius=2.5,
                      candidates="box_or_center", topk=10, iou_cost="log", iou_weight=3.0, hard_prior_cost=1e5)),
    ],
)
def test_configs_instantiate(option: str, expected: dict) -> None:
    assigner = instantiate(OmegaConf.load(CONF_DIR / f"{option}.yaml"))
    assert isinstance(assigner, DynamicSoftLabelAssigner) and isinstance(assigner, Assigner)
    for key, value in expected.items():
        assert getattr(assigner, key) == value, key


def test_half_precision_inputs_are_promoted() -> None:
    """bf16 predictions are assigned in fp32: same result as the same values given as fp32."""
    batch = random_batch(9, [5, 2], pad_to=5)
    low = {k: v.to(torch.bfloat16) if k in ("pred_logits", "pred_boxes") else v for k, v in batch.items()}
    result = DynamicSoftLabelAssigner()(**low)
    reference = DynamicSoftLabelAssigner()(**{k: v.float() if v.is_floating_point() else v for k, v in low.items()})
    assert torch.equal(result.gt_index, reference.gt_index)
    assert torch.equal(result.ious, reference.ious) and result.ious.dtype == torch.float32
    assert result.pos_mask.any()
