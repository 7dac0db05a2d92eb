"""Detection losses against hand-derived numbers and plain float64 re-implementations.

References below loop over every element with Python floats, so they share no code (and no
vectorisation tricks such as the masked scatter) with rtmdet_exp.losses.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from rtmdet_exp.losses import (
    BCELoss,
    CIoULoss,
    DIoULoss,
    FocalLoss,
    GIoULoss,
    IoULoss,
    L1Loss,
    QualityFocalLoss,
    VarifocalLoss,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
LOG2 = math.log(2.0)


# ----------------------------------------------------------------------------- plain references
def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce(x: float, t: float) -> float:
    """-(t log p + (1 - t) log(1 - p)) with p = sigmoid(x), written in the stable form."""
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def _ref_cls(kind: str, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, **kw: float) -> float:
    """Sum over every (image, prior, class) of the per-element loss, one element at a time."""
    total = 0.0
    B, N, C = logits.shape
    for b in range(B):
        for n in range(N):
            label = int(labels[b, n])
            s = float(targets[b, n])
            for c in range(C):
                x = float(logits[b, n, c])
                p = _sigmoid(x)
                is_gt = label >= 0 and c == label
                if kind == "qfl":
                    beta = kw.get("beta", 2.0)
                    total += _bce(x, s) * abs(s - p) ** beta if is_gt else _bce(x, 0.0) * p**beta
                elif kind == "focal":
                    alpha, gamma = kw.get("alpha", 0.25), kw.get("gamma", 2.0)
                    if is_gt:
                        total += -alpha * (1 - p) ** gamma * math.log(p)
                    else:
                        total += -(1 - alpha) * p**gamma * math.log(1 - p)
                elif kind == "vfl":
                    alpha, gamma = kw.get("alpha", 0.75), kw.get("gamma", 2.0)
                    q = s if is_gt else 0.0
                    if q > 0:
                        total += _bce(x, q) * (q if kw.get("iou_weighted", True) else 1.0)
                    else:
                        total += _bce(x, 0.0) * alpha * p**gamma
                elif kind == "bce":
                    total += _bce(x, 1.0 if is_gt else 0.0)
    return total


def _box_terms(p: list[float], t: list[float]) -> dict[str, float]:
    """IoU, GIoU, DIoU, CIoU of one pair of xyxy boxes, straight from the papers' definitions."""
    area_p = max(p[2] - p[0], 0.0) * max(p[3] - p[1], 0.0)
    area_t = max(t[2] - t[0], 0.0) * max(t[3] - t[1], 0.0)
    iw = max(min(p[2], t[2]) - max(p[0], t[0]), 0.0)
    ih = max(min(p[3], t[3]) - max(p[1], t[1]), 0.0)
    inter = iw * ih
    union = area_p + area_t - inter
    iou = inter / union
    cw = max(p[2], t[2]) - min(p[0], t[0])
    ch = max(p[3], t[3]) - min(p[1], t[1])
    giou = iou - (cw * ch - union) / (cw * ch)
    rho2 = ((p[0] + p[2]) / 2 - (t[0] + t[2]) / 2) ** 2 + ((p[1] + p[3]) / 2 - (t[1] + t[3]) / 2) ** 2
    diou = iou - rho2 / (cw**2 + ch**2)
    v = 4 / math.pi**2 * (math.atan((t[2] - t[0]) / (t[3] - t[1])) - math.atan((p[2] - p[0]) / (p[3] - p[1]))) ** 2
    a = v / (1 - iou + v) if v > 0 else 0.0
    l1 = sum(abs(pi - ti) for pi, ti in zip(p, t))
    return {"iou": 1 - iou, "giou": 1 - giou, "diou": 1 - diou, "ciou": 1 - diou + a * v, "l1": l1}


def _ref_box(kind: str, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> float:
    return sum(
        float(weight[i]) * _box_terms(pred[i].tolist(), target[i].tolist())[kind] for i in range(pred.shape[0])
    )


def _cls_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B=2, N=5, C=3 with a mix of positives and background; bg targets are junk on purpose."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 3, generator=g) * 2.0
    labels = torch.tensor([[0, -1, 2, -1, 1], [-1, -1, 1, 0, -1]])
    targets = torch.rand(2, 5, generator=g) * 0.9 + 0.05  # soft targets; bg entries must be ignored
    return logits, labels, targets


def _box_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Overlapping, nested, disjoint and off-centre pairs with various aspect ratios."""
    pred = torch.tensor(
        [
            [0.0, 0.0, 2.0, 2.0],
            [10.0, 10.0, 30.0, 20.0],
            [0.0, 0.0, 4.0, 4.0],
            [5.0, 5.0, 8.0, 9.0],
            [1.0, 2.0, 3.0, 7.0],
        ]
    )
    target = torch.tensor(
        [
            [1.0, 1.0, 3.0, 3.0],
            [12.0, 8.0, 25.0, 26.0],
            [1.0, 1.0, 2.0, 3.0],
            [20.0, 20.0, 24.0, 22.0],
            [0.5, 2.5, 4.0, 6.0],
        ]
    )
    weight = torch.tensor([0.9, 0.5, 1.0, 0.3, 0.7])
    return pred, target, weight


CLS_CASES = [
    ("qfl", QualityFocalLoss, {"beta": 2.0}),
    ("qfl", QualityFocalLoss, {"beta": 1.5}),
    ("focal", FocalLoss, {"alpha": 0.25, "gamma": 2.0}),
    ("focal", FocalLoss, {"alpha": 0.6, "gamma": 1.0}),
    ("vfl", VarifocalLoss, {"alpha": 0.75, "gamma": 2.0, "iou_weighted": True}),
    ("vfl", VarifocalLoss, {"alpha": 0.5, "gamma": 1.5, "iou_weighted": False}),
    ("bce", BCELoss, {}),
]
BOX_CASES = [
    ("iou", IoULoss),
    ("giou", GIoULoss),
    ("diou", DIoULoss),
    ("ciou", CIoULoss),
    ("l1", L1Loss),
]


# ----------------------------------------------------------------------------- hand-derived values
def test_qfl_single_prior_hand_value() -> None:
    # logit 0 -> p = 0.5; BCE(0, 0.8) = log 2 for any target; |0.8 - 0.5|^2 = 0.09.
    loss = QualityFocalLoss()(torch.zeros(1, 1, 1), torch.tensor([[0]]), torch.tensor([[0.8]]), 1.0)
    assert loss.item() == pytest.approx(0.09 * LOG2, rel=1e-6)
    assert loss.item() == pytest.approx(0.0623832, rel=1e-6)


def test_qfl_keeps_negative_terms_of_a_positive_prior() -> None:
    # Two classes, GT class 0: class 1 still pays BCE(0, 0) * 0.5^2 = 0.25 log 2.
    loss = QualityFocalLoss()(torch.zeros(1, 1, 2), torch.tensor([[0]]), torch.tensor([[0.8]]), 1.0)
    assert loss.item() == pytest.approx(0.09 * LOG2 + 0.25 * LOG2, rel=1e-6)


def test_qfl_background_prior_hand_value() -> None:
    # logit log 3 -> p = 0.75; BCE(x, 0) = log(1 + 3) = log 4; times 0.75^2.
    logits = torch.full((1, 1, 1), math.log(3.0))
    loss = QualityFocalLoss()(logits, torch.tensor([[-1]]), torch.tensor([[0.0]]), 1.0)
    assert loss.item() == pytest.approx(math.log(4.0) * 0.5625, rel=1e-6)


def test_focal_and_vfl_and_bce_hand_values() -> None:
    logits = torch.zeros(1, 1, 2)
    labels = torch.tensor([[0]])
    targets = torch.tensor([[0.8]])
    # Focal: GT class 0.25 * 0.5^2 * log 2, other class 0.75 * 0.5^2 * log 2.
    assert FocalLoss()(logits, labels, targets, 1.0).item() == pytest.approx(0.25 * LOG2, rel=1e-6)
    # VFL: GT class BCE(0, 0.8) * 0.8 = 0.8 log 2, other class 0.75 * 0.5^2 * log 2.
    vfl = VarifocalLoss()(logits, labels, targets, 1.0).item()
    assert vfl == pytest.approx(0.8 * LOG2 + 0.1875 * LOG2, rel=1e-6)
    # BCE: log 2 per class.
    assert BCELoss()(logits, labels, targets, 1.0).item() == pytest.approx(2 * LOG2, rel=1e-6)


def test_box_losses_hand_values() -> None:
    # [0,0,2,2] vs [1,1,3,3]: inter 1, union 7, enclosing 3x3 = 9, centres (1,1)/(2,2) -> rho^2 2, c^2 18.
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    weight = torch.ones(1)
    assert IoULoss()(pred, target, weight, 1.0).item() == pytest.approx(6 / 7, rel=1e-5)
    assert GIoULoss(loss_weight=1.0)(pred, target, weight, 1.0).item() == pytest.approx(68 / 63, rel=1e-5)
    assert DIoULoss()(pred, target, weight, 1.0).item() == pytest.approx(61 / 63, rel=1e-5)
    # Both boxes square: v = 0, so CIoU = DIoU.
    assert CIoULoss()(pred, target, weight, 1.0).item() == pytest.approx(61 / 63, rel=1e-5)
    assert L1Loss()(pred, target, weight, 1.0).item() == pytest.approx(4.0)
    # GIoU's default weight is the paper's 2.
    assert GIoULoss()(pred, target, weight, 1.0).item() == pytest.approx(2 * 68 / 63, rel=1e-5)


def test_iou_loss_modes_hand_values() -> None:
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    w = torch.ones(1)
    assert IoULoss(mode="square")(pred, target, w, 1.0).item() == pytest.approx(1 - 1 / 49, rel=1e-5)
    assert IoULoss(mode="log")(pred, target, w, 1.0).item() == pytest.approx(math.log(7.0), rel=1e-5)


# ----------------------------------------------------------------------------- against references
@pytest.mark.parametrize(("kind", "cls", "kwargs"), CLS_CASES)
def test_cls_loss_matches_reference(kind: str, cls: type, kwargs: dict) -> None:
    logits, labels, targets = _cls_batch()
    expected = _ref_cls(kind, logits.double(), labels, targets.double(), **kwargs)
    got = cls(**kwargs)(logits, labels, targets, 1.0)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("kind", "cls", "kwargs"), CLS_CASES)
def test_cls_avg_factor_divides_and_loss_weight_multiplies(kind: str, cls: type, kwargs: dict) -> None:
    logits, labels, targets = _cls_batch(seed=1)
    expected = _ref_cls(kind, logits.double(), labels, targets.double(), **kwargs)
    got_float = cls(**kwargs, loss_weight=3.0)(logits, labels, targets, 4.0)
    got_tensor = cls(**kwargs, loss_weight=3.0)(logits, labels, targets, torch.tensor(4.0))
    assert got_float.item() == pytest.approx(expected * 3.0 / 4.0, rel=1e-5)
    assert got_tensor.item() == pytest.approx(expected * 3.0 / 4.0, rel=1e-5)


@pytest.mark.parametrize(("kind", "cls", "kwargs"), CLS_CASES)
def test_cls_all_background(kind: str, cls: type, kwargs: dict) -> None:
    logits = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.full((2, 4), -1)
    targets = torch.zeros(2, 4)
    expected = _ref_cls(kind, logits.double(), labels, targets.double(), **kwargs)
    assert cls(**kwargs)(logits, labels, targets, 1.0).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("kind", "cls", "kwargs"), CLS_CASES)
def test_cls_gradients_finite_on_extreme_logits(kind: str, cls: type, kwargs: dict) -> None:
    logits = torch.tensor([[[60.0, -60.0, 0.0], [-80.0, 80.0, 5.0]]], requires_grad=True)
    labels = torch.tensor([[0, -1]])
    targets = torch.tensor([[0.7, 0.0]])
    loss = cls(**kwargs)(logits, labels, targets, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_qfl_gradient_matches_reference_derivative() -> None:
    # d/dx of BCE(x, s) * (s - p)^2 at x = 0, s = 0.8: (p - s)(s - p)^2 + BCE * 2 (s - p)(-p(1 - p))
    # = -0.3 * 0.09 + log 2 * 2 * 0.3 * (-0.25).
    logits = torch.zeros(1, 1, 1, requires_grad=True)
    QualityFocalLoss()(logits, torch.tensor([[0]]), torch.tensor([[0.8]]), 1.0).backward()
    expected = -0.3 * 0.09 - LOG2 * 0.15
    assert logits.grad.item() == pytest.approx(expected, rel=1e-5)


def test_qfl_soft_target_gets_no_gradient() -> None:
    targets = torch.tensor([[0.8]], requires_grad=True)
    loss = QualityFocalLoss()(torch.zeros(1, 1, 1, requires_grad=True), torch.tensor([[0]]), targets, 1.0)
    loss.backward()
    assert targets.grad is None


@pytest.mark.parametrize(("kind", "cls", "kwargs"), CLS_CASES)
def test_cls_bf16_autocast_input_gives_fp32_value(kind: str, cls: type, kwargs: dict) -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 5, 8, generator=g)
    proj = torch.randn(8, 3, generator=g)
    _, labels, targets = _cls_batch()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = feats @ proj  # bf16 under autocast, like a head's output
        assert logits.dtype == torch.bfloat16
        loss = cls(**kwargs)(logits, labels, targets, 1.0)
    expected = _ref_cls(kind, logits.double(), labels, targets.double(), **kwargs)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("kind", "cls"), BOX_CASES)
def test_box_loss_matches_reference(kind: str, cls: type) -> None:
    pred, target, weight = _box_batch()
    expected = _ref_box(kind, pred.double(), target.double(), weight.double())
    got = cls(loss_weight=1.0)(pred, target, weight, 1.0)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("kind", "cls"), BOX_CASES)
def test_box_avg_factor_divides_and_loss_weight_multiplies(kind: str, cls: type) -> None:
    pred, target, weight = _box_batch()
    expected = _ref_box(kind, pred.double(), target.double(), weight.double())
    loss = cls(loss_weight=5.0)
    assert loss(pred, target, weight, 2.5).item() == pytest.approx(expected * 5.0 / 2.5, rel=1e-5)
    assert loss(pred, target, weight, torch.tensor(2.5)).item() == pytest.approx(expected * 2.0, rel=1e-5)
    # weight defaults to ones
    unweighted = _ref_box(kind, pred.double(), target.double(), torch.ones(5, dtype=torch.float64))
    assert loss(pred, target).item() == pytest.approx(unweighted * 5.0, rel=1e-5)


@pytest.mark.parametrize(("kind", "cls"), BOX_CASES)
def test_box_empty_is_zero_with_grad(kind: str, cls: type) -> None:
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = cls()(pred, torch.zeros(0, 4), torch.zeros(0), torch.tensor(1.0))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert pred.grad is not None and pred.grad.shape == (0, 4)


@pytest.mark.parametrize(("kind", "cls"), BOX_CASES)
def test_box_gradients_finite_on_degenerate_boxes(kind: str, cls: type) -> None:
    # identical boxes, zero-width prediction, inverted prediction, disjoint pair
    pred = torch.tensor(
        [[0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 5.0, 9.0], [4.0, 4.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]], requires_grad=True
    )
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 6.0, 8.0], [1.0, 1.0, 4.0, 4.0], [10.0, 10.0, 12.0, 11.0]])
    loss = cls()(pred, target, torch.ones(4), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


def test_giou_pulls_disjoint_boxes_together() -> None:
    # The enclosing-box term must give a gradient where plain IoU gives none.
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[3.0, 0.0, 4.0, 1.0]])
    GIoULoss()(pred, target, torch.ones(1), 1.0).backward()
    assert pred.grad[0, 2] < 0  # increasing x2 (moving right) lowers the loss


def test_ciou_trade_off_is_constant_in_backward() -> None:
    # Reference gradient with a = v / (1 - IoU + v) detached, written with float64 autograd on the formula.
    p = torch.tensor([1.0, 2.0, 3.0, 7.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.5, 2.5, 4.0, 6.0], dtype=torch.float64)
    terms = _box_terms(p.tolist(), t.tolist())
    v_const = 4 / math.pi**2 * (math.atan(3.5 / 3.5) - math.atan(2.0 / 5.0)) ** 2
    a_const = (terms["ciou"] - terms["diou"]) / v_const
    iw = torch.minimum(p[2], t[2]) - torch.maximum(p[0], t[0])
    ih = torch.minimum(p[3], t[3]) - torch.maximum(p[1], t[1])
    inter = iw * ih
    union = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter
    cw = torch.maximum(p[2], t[2]) - torch.minimum(p[0], t[0])
    ch = torch.maximum(p[3], t[3]) - torch.minimum(p[1], t[1])
    rho2 = ((p[0] + p[2]) / 2 - (t[0] + t[2]) / 2) ** 2 + ((p[1] + p[3]) / 2 - (t[1] + t[3]) / 2) ** 2
    v = 4 / math.pi**2 * (math.atan(1.0) - torch.atan((p[2] - p[0]) / (p[3] - p[1]))) ** 2
    (1 - inter / union + rho2 / (cw**2 + ch**2) + a_const * v).backward()
    pred = torch.tensor([[1.0, 2.0, 3.0, 7.0]], requires_grad=True)
    CIoULoss()(pred, t.float()[None], torch.ones(1), 1.0).backward()
    torch.testing.assert_close(pred.grad[0].double(), p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("kind", "cls"), BOX_CASES)
def test_box_bf16_autocast_input_gives_fp32_value(kind: str, cls: type) -> None:
    pred, target, weight = _box_batch()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        pred_bf16 = pred.to(torch.bfloat16) + torch.tensor(0.3, dtype=torch.bfloat16)  # bf16-representable values
        loss = cls(loss_weight=1.0)(pred_bf16, target, weight, 1.0)
    expected = _ref_box(kind, pred_bf16.double(), target.double(), weight.double())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- argument validation
@pytest.mark.parametrize(
    ("cls", "kwargs", "arg"),
    [
        (QualityFocalLoss, {"beta": -1.0}, "beta"),
        (QualityFocalLoss, {"loss_weight": -0.1}, "loss_weight"),
        (FocalLoss, {"alpha": 1.5}, "alpha"),
        (FocalLoss, {"alpha": -0.1}, "alpha"),
        (FocalLoss, {"gamma": -2.0}, "gamma"),
        (VarifocalLoss, {"alpha": 2.0}, "alpha"),
        (VarifocalLoss, {"gamma": -1.0}, "gamma"),
        (VarifocalLoss, {"loss_weight": -1.0}, "loss_weight"),
        (BCELoss, {"loss_weight": -1.0}, "loss_weight"),
        (GIoULoss, {"loss_weight": -2.0}, "loss_weight"),
        (GIoULoss, {"eps": 0.0}, "eps"),
        (IoULoss, {"mode": "cubic"}, "mode"),
        (DIoULoss, {"eps": -1.0}, "eps"),
        (CIoULoss, {"loss_weight": -1.0}, "loss_weight"),
        (L1Loss, {"loss_weight": -1.0}, "loss_weight"),
    ],
)
def test_invalid_args_raise(cls: type, kwargs: dict, arg: str) -> None:
    with pytest.raises(ValueError, match=arg):
        cls(**kwargs)


def test_bad_shapes_and_avg_factor_raise() -> None:
    logits, labels, targets = _cls_batch()
    with pytest.raises(ValueError, match="logits"):
        QualityFocalLoss()(logits.flatten(0, 1), labels, targets, 1.0)
    with pytest.raises(ValueError, match="labels"):
        QualityFocalLoss()(logits, labels[:, :3], targets, 1.0)
    with pytest.raises(ValueError, match="avg_factor"):
        QualityFocalLoss()(logits, labels, targets, 0.0)
    pred, target, weight = _box_batch()
    with pytest.raises(ValueError, match="weight"):
        GIoULoss()(pred, target, weight[:2], 1.0)
    with pytest.raises(ValueError, match="pred"):
        GIoULoss()(pred[:, :3], target[:, :3], weight, 1.0)


# ----------------------------------------------------------------------------- Hydra configs
def _compose(tmp_path: Path, overrides: list[str]):
    """Compose the real conf/loss through a throwaway primary config that only selects `loss`."""
    (tmp_path / "primary.yaml").write_text(
        f"defaults:\n  - loss: default\n  - _self_\nhydra:\n  searchpath:\n    - file://{CONF_DIR}\n"
    )
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        return compose(config_name="primary", overrides=overrides)


def test_default_config_is_paper_losses(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, [])
    cls_loss, box_loss = instantiate(cfg.loss.cls), instantiate(cfg.loss.box)
    assert isinstance(cls_loss, QualityFocalLoss) and cls_loss.beta == 2.0 and cls_loss.loss_weight == 1.0
    assert isinstance(box_loss, GIoULoss) and box_loss.loss_weight == 2.0
    paper = _compose(tmp_path, ["loss=qfl_giou"])
    assert paper.loss == cfg.loss


@pytest.mark.slow
@pytest.mark.parametrize("cls_option", ["qfl", "focal", "varifocal", "bce"])
@pytest.mark.parametrize("box_option", ["giou", "iou", "diou", "ciou", "l1"])
def test_every_option_instantiates_and_runs(tmp_path: Path, cls_option: str, box_option: str) -> None:
    cfg = _compose(tmp_path, [f"loss/cls={cls_option}", f"loss/box={box_option}"])
    cls_loss, box_loss = instantiate(cfg.loss.cls), instantiate(cfg.loss.box)
    logits, labels, targets = _cls_batch()
    pred, target, weight = _box_batch()
    total = cls_loss(logits, labels, targets, 2.0) + box_loss(pred, target, weight, 2.0)
    assert torch.isfinite(total) and total.item() > 0


def test_override_reaches_the_object(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, ["loss/cls=focal", "loss/box=iou", "loss.box.loss_weight=5", "loss.cls.gamma=1.5"])
    cls_loss, box_loss = instantiate(cfg.loss.cls), instantiate(cfg.loss.box)
    assert isinstance(cls_loss, FocalLoss) and cls_loss.gamma == 1.5
    assert isinstance(box_loss, IoULoss) and box_loss.loss_weight == 5.0
