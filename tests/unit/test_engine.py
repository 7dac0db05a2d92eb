"""Engine pieces: optimiser groups, LR schedule, EMA, checkpoints, RNG state, COCO evaluator.

Expected numbers are derived by hand in the comments (or, for COCO, also cross-checked by calling
pycocotools directly), never taken from the code under test.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import random

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from rtmdet_exp.engine import checkpoint as ckpt
from rtmdet_exp.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    latest_valid_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from rtmdet_exp.engine.ema import ModelEMA, lerp_
from rtmdet_exp.engine.evaluator import STAT_KEYS, CocoEvaluator
from rtmdet_exp.engine.optim import adamw, param_groups, scale_lr, sgd
from rtmdet_exp.engine.progress import RunClock
from rtmdet_exp.engine.schedule import FlatCosineSchedule, build_scheduler

# ----------------------------------------------------------------------------- run clock


class _FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_run_clock_estimates_and_lines_by_hand() -> None:
    """A 1,200-step run timed from step 1: 20 more steps in 20 s is 1 s a step, so 1,179 steps (19.65 min)
    are left at step 21; epoch lines come at most every 60 s, and always after the last epoch."""
    clock = _FakeClock()
    run = RunClock(total_steps=1200, early_steps=20, every_s=60.0, clock=clock)
    assert run.estimate(1) is None and run.early(30) is None  # not started
    run.start(1)
    clock.now += 19.0
    assert run.early(20) is None  # 19 steps since the start: too early
    clock.now += 1.0
    per_step, left = run.estimate(21)
    assert per_step == pytest.approx(1.0) and left == pytest.approx(1179.0)
    assert run.early(21) == "step 21 of 1200 at 1 s a step: about 19.6 min of training left (validation not included)"
    assert run.early(22) is None  # once
    clock.now += 30.0  # step 51 at 1 s a step, 30 s after the early line: no epoch line yet
    assert run.epoch_end(1, 5, 51, epoch_s=50.0) is None
    clock.now += 189.0  # step 240 after 239 s: 1 s a step, 960 steps (16 min) left
    assert run.epoch_end(1, 5, 240, epoch_s=239.0) == \
        "epoch 1/5 done in 4.0 min (step 240 of 1200, 1 s a step): about 16.0 min of training left"
    clock.now += 1.0  # the last epoch is always reported, without a time left
    assert run.epoch_end(5, 5, 241, epoch_s=1.0) == "epoch 5/5 done in 1 s (step 241 of 1200, 1 s a step)"


def test_run_clock_durations_by_size() -> None:
    """Seconds under 90 s, minutes under 90 min, hours beyond: at 0.5 s a step, 7,200 steps left are 60 min
    and 14,400 are 2 h."""
    for total, left in ((7300, "60.0 min"), (14500, "2.0 h")):
        clock = _FakeClock()
        run = RunClock(total_steps=total, early_steps=100, clock=clock)
        run.start(0)
        clock.now += 50.0
        assert run.early(100) == f"step 100 of {total} at 0.5 s a step: about {left} of training left " \
            "(validation not included)"


# ----------------------------------------------------------------------------- optimiser


class _Net(nn.Module):
    """Conv without bias, BN, a conv shared by two 'levels', GN, LN, and a weight tied across two linears."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.shared = nn.Conv2d(4, 4, 1)
        self.levels = nn.ModuleList([self.shared, self.shared])
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.fc_tied = nn.Linear(4, 2, bias=False)
        self.fc_tied.weight = self.fc.weight


def test_param_groups_split_and_dedupe() -> None:
    net = _Net()
    groups = {g["name"]: g for g in param_groups(net, weight_decay=0.05)}
    assert set(groups) == {"decay", "no_decay"}
    decay_ids = [id(p) for p in groups["decay"]["params"]]
    no_decay_ids = [id(p) for p in groups["no_decay"]["params"]]
    assert len(decay_ids) == len(set(decay_ids)) and len(no_decay_ids) == len(set(no_decay_ids))
    assert set(decay_ids) == {id(net.conv.weight), id(net.shared.weight), id(net.fc.weight)}
    assert set(no_decay_ids) == {
        id(p)
        for p in (net.bn.weight, net.bn.bias, net.shared.bias, net.gn.weight, net.gn.bias)
        + (net.ln.weight, net.ln.bias, net.fc.bias)
    }
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_weight_decay_applied_once_and_only_to_weights(name: str) -> None:
    # With all gradients zero, one step leaves AdamW's adaptive part at 0/(0+eps) = 0 and gives SGD the
    # gradient wd*p: both shrink decayed weights by exactly (1 - lr*wd) = 1 - 0.1*0.5 = 0.95. A shared
    # weight decayed twice would come out at 0.95**2; BN/bias must not move at all.
    net = _Net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = {"adamw": adamw, "sgd": sgd}[name](net, lr=0.1, weight_decay=0.5)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(net.named_parameters())
    for n in ("conv.weight", "shared.weight", "fc.weight"):
        torch.testing.assert_close(after[n].detach(), before[n] * 0.95)
    for n in ("bn.weight", "bn.bias", "shared.bias", "gn.weight", "ln.bias", "fc.bias"):
        torch.testing.assert_close(after[n].detach(), before[n], rtol=0, atol=0)


def test_optimizers_validate() -> None:
    with pytest.raises(ValueError, match="lr"):
        adamw(_Net(), lr=0.0)
    with pytest.raises(ValueError, match="betas"):
        adamw(_Net(), betas=(0.9,))
    with pytest.raises(ValueError, match="momentum"):
        sgd(_Net(), momentum=1.0)
    with pytest.raises(ValueError, match="backbone_lr_mult"):
        sgd(_Net(), backbone_lr_mult=0.0)


def test_backbone_lr_multiplier_and_frozen_params() -> None:
    # A parameter under a module named "backbone" trains at lr * mult; frozen ones are left out.
    net = nn.Module()
    net.backbone, net.head = nn.Linear(2, 2), nn.Linear(2, 2)
    net.head.bias.requires_grad_(False)
    opt = sgd(net, lr=0.5, momentum=0.0, weight_decay=0.0, backbone_lr_mult=0.1)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(net.backbone.weight)] == pytest.approx(0.05) and lrs[id(net.backbone.bias)] == pytest.approx(0.05)
    assert lrs[id(net.head.weight)] == pytest.approx(0.5)
    assert id(net.head.bias) not in lrs
    before = net.backbone.weight.detach().clone()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # plain SGD: w <- w - lr * 1
    torch.testing.assert_close(net.backbone.weight.detach(), before - 0.05)


def test_scale_lr_linear_rule() -> None:
    assert scale_lr(0.004, 256, 32) == pytest.approx(0.0005)
    assert scale_lr(0.004, 256, 512) == pytest.approx(0.008)
    with pytest.raises(ValueError, match="batch"):
        scale_lr(0.004, 256, 0)


# ----------------------------------------------------------------------------- schedule

# total 1000 iterations, warmup 100 from 1e-5, flat until 500 (half), cosine to 0.05 at 1000.
_SCHED = dict(total_iters=1000, warmup_iters=100, min_ratio=0.05, warmup_start=1e-5)


@pytest.mark.parametrize(
    ("it", "expected"),
    [
        (0, 1e-5),  # warmup start
        (50, 1e-5 + (1 - 1e-5) * 0.5),  # half-way through warmup: 0.500005
        (100, 1.0),  # end of warmup
        (300, 1.0),  # flat
        (500, 1.0),  # cosine start
        (750, 0.525),  # cosine middle: 0.05 + 0.95 * (1 + cos(pi/2)) / 2 = 0.05 + 0.475
        (875, 0.18912427893638994),  # 0.05 + 0.475 * (1 + cos(3pi/4)) = 0.05 + 0.475 * 0.2928932
        (1000, 0.05),  # end: min_ratio
        (5000, 0.05),  # past the end stays at the final value
    ],
)
def test_flat_cosine_values(it: int, expected: float) -> None:
    assert FlatCosineSchedule(**_SCHED)(it) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_schedule_other_kinds_and_flat_iters() -> None:
    # cosine from 0, no warmup, at a quarter: 0.05 + 0.475 * (1 + cos(pi/4)) = 0.05 + 0.475 * 1.7071068
    assert FlatCosineSchedule(1000, warmup_iters=0, kind="cosine")(250) == pytest.approx(0.8608757210636101)
    assert FlatCosineSchedule(1000, warmup_iters=0, kind="cosine")(0) == pytest.approx(1.0)
    assert FlatCosineSchedule(1000, warmup_iters=10, kind="constant")(999) == 1.0
    assert FlatCosineSchedule(1000, warmup_iters=10, kind="constant")(5) == pytest.approx(1e-5 + (1 - 1e-5) * 0.5)
    # explicit cosine start at 200: iteration 600 is half-way from 200 to 1000
    assert FlatCosineSchedule(1000, warmup_iters=0, flat_iters=200)(600) == pytest.approx(0.525)
    assert FlatCosineSchedule(1000, warmup_iters=0, flat_fraction=0.2)(600) == pytest.approx(0.525)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        (dict(total_iters=100, warmup_iters=200), "warmup_iters"),
        (dict(total_iters=0), "total_iters"),
        (dict(total_iters=100, warmup_iters=0, kind="step"), "kind"),
        (dict(total_iters=100, warmup_iters=0, min_ratio=1.5), "min_ratio"),
        (dict(total_iters=100, warmup_iters=0, warmup_start=0.0), "warmup_start"),
        (dict(total_iters=100, warmup_iters=0, flat_iters=10, flat_fraction=0.5), "flat_iters"),
        (dict(total_iters=100, warmup_iters=0, flat_iters=101), "flat_iters"),
    ],
)
def test_schedule_validates(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        FlatCosineSchedule(**kwargs)


def test_build_scheduler_steps_per_iteration() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.004)
    sched = build_scheduler(opt, FlatCosineSchedule(**_SCHED))
    seen = {0: opt.param_groups[0]["lr"]}
    for it in range(1, 1001):
        opt.step()
        sched.step()
        seen[it] = opt.param_groups[0]["lr"]
    assert seen[0] == pytest.approx(0.004 * 1e-5)
    assert seen[100] == pytest.approx(0.004)
    assert seen[400] == pytest.approx(0.004)
    assert seen[750] == pytest.approx(0.004 * 0.525)
    assert seen[1000] == pytest.approx(0.004 * 0.05)


# ----------------------------------------------------------------------------- EMA


def test_ema_momentum_values() -> None:
    ema = ModelEMA(nn.Linear(1, 1), momentum=0.0002, gamma=2000)
    # m_0 = 0.9998 * e^-0.0005 + 0.0002 ~ 0.9998 * 0.999500125 + 0.0002 = 0.999500225
    assert ema.momentum_at(0) == pytest.approx(0.9995002249541735, rel=1e-12)
    # m_1 = 0.9998 * e^-0.001 + 0.0002 ~ 0.9998 * 0.9990005 + 0.0002 = 0.9990007
    assert ema.momentum_at(1) == pytest.approx(0.9990006997334083, rel=1e-12)
    assert ema.momentum_at(10**9) == pytest.approx(0.0002)


def test_ema_two_and_three_updates_by_hand() -> None:
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    ema = ModelEMA(model, momentum=0.1, gamma=2.0)
    assert not ema.module.training and model.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    w, bn = model[0].weight, model[1]
    with torch.no_grad():
        w.fill_(1.0)
        bn.running_mean.fill_(2.0)
        bn.num_batches_tracked.fill_(3)
    ema.update(model)  # t = 0: plain copy
    assert ema.module[0].weight.item() == 1.0
    with torch.no_grad():
        w.fill_(3.0)
        bn.running_mean.fill_(4.0)
        bn.num_batches_tracked.fill_(7)
    ema.update(model)  # t = 1: m_1 = 0.9 * e^-1 + 0.1 = 0.4310915; avg = 1 + m_1 * (3 - 1)
    m1 = 0.9 * math.exp(-1.0) + 0.1
    assert ema.module[0].weight.item() == pytest.approx(1.0 + m1 * 2.0, rel=1e-6)
    assert ema.module[0].weight.item() == pytest.approx(1.8621829941, rel=1e-6)
    assert ema.module[1].running_mean.item() == pytest.approx(2.0 + m1 * 2.0, rel=1e-6)  # buffers averaged
    assert ema.module[1].num_batches_tracked.item() == 7  # integer buffers copied
    with torch.no_grad():
        w.fill_(0.0)
    ema.update(model)  # t = 2: m_2 = 0.9 * e^-1.5 + 0.1; avg *= (1 - m_2)
    m2 = 0.9 * math.exp(-1.5) + 0.1
    assert ema.module[0].weight.item() == pytest.approx((1.0 + m1 * 2.0) * (1.0 - m2), rel=1e-6)
    assert ema.steps == 3
    assert w.item() == 0.0  # the source model is untouched


@pytest.mark.parametrize("per_tensor", [True, False], ids=["per_tensor", "multi_tensor"])
def test_ema_lerp_both_forms_match_the_formula(per_tensor: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    avg = [torch.randn(4, 3, 3, 3, generator=gen), torch.randn(7, generator=gen)]
    avg[0] = avg[0].contiguous(memory_format=torch.channels_last)  # conv weights may be channels_last
    src = [torch.randn(4, 3, 3, 3, generator=gen), torch.randn(7, generator=gen)]
    expected = [(a.double() + 0.3 * (s.double() - a.double())) for a, s in zip(avg, src)]
    lerp_(avg, src, torch.tensor(0.3), per_tensor=per_tensor)
    for got, want in zip(avg, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    kept = [a.clone() for a in avg]
    lerp_(avg, src, torch.tensor(0.0), per_tensor=per_tensor)  # a skipped step: weight 0
    for got, want in zip(avg, kept):
        assert torch.equal(got, want)


def test_ema_state_dict_round_trip_and_wrapped_model() -> None:
    model = nn.Linear(2, 1)
    ema = ModelEMA(model, momentum=0.1, gamma=2.0)
    ema.update(nn.DataParallel(model))  # wrappers are unwrapped (DDP goes through the same `.module` path)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    state = ema.state_dict()
    fresh = ModelEMA(nn.Linear(2, 1), momentum=0.1, gamma=2.0)
    fresh.load_state_dict(state)
    assert fresh.steps == 2
    torch.testing.assert_close(fresh.module.weight, ema.module.weight)
    # the next update continues the ramp at t = 2 in both
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    fresh.update(model)
    torch.testing.assert_close(fresh.module.weight, ema.module.weight)


# ----------------------------------------------------------------------------- checkpoints


def _state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((3,), float(epoch))}, "meta": {"name": "x", "lr": 0.1}}


def test_checkpoint_round_trip(tmp_path) -> None:
    path = save_checkpoint(_state(3), tmp_path / "sub" / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["meta"] == {"name": "x", "lr": 0.1}
    torch.testing.assert_close(loaded["model"]["w"], torch.full((3,), 3.0))
    assert sorted(os.listdir(tmp_path / "sub")) == ["last.pt"]  # no temp file left behind
    save_checkpoint(_state(4), path)  # overwrite in place
    assert load_checkpoint(path)["epoch"] == 4


def test_truncated_and_corrupt_files_detected(tmp_path, caplog) -> None:
    older = save_checkpoint(_state(1), tmp_path / "epoch_1.pt")
    newer = save_checkpoint(_state(2), tmp_path / "epoch_2.pt")
    data = newer.read_bytes()
    newer.write_bytes(data[: len(data) // 2])  # a crash mid-copy
    with pytest.raises(CheckpointError, match="epoch_2.pt"):
        load_checkpoint(newer)
    flipped = bytearray(older.read_bytes())
    flipped[-10] ^= 0xFF
    bad_sum = tmp_path / "flipped.pt"
    bad_sum.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(bad_sum)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")

    with caplog.at_level(logging.WARNING, logger="rtmdet_exp.engine.checkpoint"):
        found = latest_valid_checkpoint([tmp_path / "missing.pt", newer, bad_sum, older])
    assert found is not None
    path, state = found
    assert path == older and state["epoch"] == 1
    text = caplog.text
    assert "epoch_2.pt" in text and "flipped.pt" in text and "epoch_1.pt" in text
    assert latest_valid_checkpoint([newer, bad_sum]) is None


def test_enospc_keeps_previous_checkpoint(tmp_path, monkeypatch) -> None:
    path = save_checkpoint(_state(1), tmp_path / "last.pt")
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd: int, data) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:5])  # a few bytes land, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.os, "write", full_disk)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(_state(2), path)
    monkeypatch.undo()
    message = str(info.value)
    assert "last.pt" in message and os.strerror(errno.ENOSPC) in message and "ENOSPC" in message
    assert isinstance(info.value.__cause__, OSError)
    assert calls["n"] >= 2
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def _draws() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), np.random.randn()


def test_rng_state_restore_reproduces_draws(tmp_path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    state = capture_rng_state()
    first = _draws()
    _draws()
    restore_rng_state(state)
    assert _draws() == first
    # through a checkpoint file, loaded with weights_only=True
    save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    _draws()
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == first


# ----------------------------------------------------------------------------- COCO evaluator

# Two images, categories 1 ("cat") and 3 ("dog"): labels 0 -> 1, 1 -> 3 (non-contiguous on purpose).
# GT areas: 12000 (large), 2500 (medium), 400 (small), so every area range has ground truth.
_GT = {
    "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
    "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 120], "area": 12000, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [120, 20, 50, 50], "area": 2500, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [30, 40, 20, 20], "area": 400, "iscrowd": 0},
    ],
}


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = json.loads(json.dumps(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _pred(boxes: list, scores: list, labels: list) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


_PERFECT = [
    _pred([[10, 10, 110, 130], [120, 20, 170, 70]], [0.9, 0.8], [0, 1]),
    _pred([[30, 40, 50, 60]], [0.7], [0]),
]


def _reference_stats(dataset: dict, dets: list[dict]) -> np.ndarray:
    """pycocotools called directly, the plain way (all images, all categories). The evaluator computes
    the same numbers with faster_coco_eval, whose sums may differ from these in the last bit."""
    gt = _coco(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_evaluator_perfect_predictions(tmp_path, capsys) -> None:
    ann_file = tmp_path / "gt.json"
    ann_file.write_text(json.dumps(_GT))
    ev = CocoEvaluator(ann_file, label_to_cat_id=[1, 3], class_names=["cat", "dog"])
    ev.update(_PERFECT, [1, 2])
    metrics = ev.compute()
    assert capsys.readouterr().out == ""  # pycocotools kept quiet
    # every GT matched exactly with one detection per (image, class): all 12 numbers are 1
    assert [metrics[k] for k in STAT_KEYS] == pytest.approx([1.0] * 12, abs=1e-12)
    assert metrics["per_class_AP"] == pytest.approx({"cat": 1.0, "dog": 1.0}, abs=1e-12)
    assert [metrics[k] for k in STAT_KEYS] == pytest.approx(_reference_stats(_GT, results := ev.results()), abs=1e-12)
    assert {"image_id": 1, "category_id": 3, "bbox": [120.0, 20.0, 50.0, 50.0]}.items() <= [
        r for r in results if r["category_id"] == 3
    ][0].items()
    assert len(results) == 3
    assert "Average Precision" in ev.summary_text


def test_evaluator_missed_class() -> None:
    ev = CocoEvaluator(_coco(_GT), label_to_cat_id=[1, 3])  # names default to the COCO ones
    preds = [_pred([[10, 10, 110, 130]], [0.9], [0]), _PERFECT[1]]
    ev.update(preds, [1, 2])
    m = ev.compute()
    # cat: AP 1; dog: never detected, AP 0 -> mAP 0.5. Small and large GTs are cats (AP 1); the only medium
    # GT is the dog (AP 0; cat has no medium GT, its -1 is excluded). Recall mirrors this.
    expected = dict(mAP=0.5, mAP50=0.5, mAP75=0.5, mAP_s=1.0, mAP_m=0.0, mAP_l=1.0)
    expected |= dict(AR1=0.5, AR10=0.5, AR100=0.5, AR_s=1.0, AR_m=0.0, AR_l=1.0)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
    assert m["per_class_AP"] == pytest.approx({"cat": 1.0, "dog": 0.0}, abs=1e-12)
    ref = _reference_stats(_GT, ev.results())
    assert [m[k] for k in STAT_KEYS] == pytest.approx(ref, abs=1e-12)


def test_evaluator_false_positive_hand_values() -> None:
    # Add a cat FP (IoU 0 with everything) in image 2 scored above both cat TPs. Cat detections by score:
    # FP .95, TP .9, TP .7 -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1; the interpolated envelope is 2/3
    # at every recall threshold, so AP_cat = 2/3 and mAP = (2/3 + 1) / 2 = 5/6. With 1 detection per image
    # the FP displaces image 2's cat TP: cat recall 1/2, dog 1 -> AR1 = 3/4.
    ev = CocoEvaluator(_coco(_GT), label_to_cat_id=[1, 3], class_names=["cat", "dog"])
    preds = [_PERFECT[0], _pred([[150, 150, 190, 190], [30, 40, 50, 60]], [0.95, 0.7], [0, 0])]
    ev.update(preds, [1, 2])
    m = ev.compute()
    assert m["per_class_AP"]["cat"] == pytest.approx(2 / 3)
    assert m["mAP"] == pytest.approx(5 / 6) and m["mAP50"] == pytest.approx(5 / 6)
    assert m["AR1"] == pytest.approx(0.75) and m["AR10"] == pytest.approx(1.0)
    assert [m[k] for k in STAT_KEYS] == pytest.approx(_reference_stats(_GT, ev.results()), abs=1e-12)


def test_evaluator_no_detections_and_no_update() -> None:
    ev = CocoEvaluator(_coco(_GT), label_to_cat_id=[1, 3])
    empty = _pred([], [], [])
    ev.update([empty, empty], [1, 2])
    m = ev.compute()
    assert [m[k] for k in STAT_KEYS] == [0.0] * 12  # every area range has GT, so 0 rather than -1
    assert m["per_class_AP"] == {"cat": 0.0, "dog": 0.0}
    assert ev.results() == []
    ev.reset()
    assert [ev.compute()[k] for k in STAT_KEYS] == [0.0] * 12


def test_evaluator_subset_of_images_and_class_without_gt() -> None:
    dataset = json.loads(json.dumps(_GT))
    dataset["categories"].append({"id": 5, "name": "bird"})
    ev = CocoEvaluator(_coco(dataset), label_to_cat_id=[1, 3, 5])
    ev.update(_PERFECT[:1], [1])
    ev.update(_PERFECT[:1], [1])  # a repeated image (sampler padding) is ignored, not double counted
    m = ev.compute()
    # only image 1 is scored: its two GTs are found; image 2's small cat is not counted as missed,
    # so there is no small GT at all (-1, pycocotools' "no GT" value); bird has no GT -> nan.
    assert m["mAP"] == pytest.approx(1.0) and m["AR100"] == pytest.approx(1.0) and m["mAP_s"] == -1.0
    assert m["per_class_AP"]["cat"] == pytest.approx(1.0) and math.isnan(m["per_class_AP"]["bird"])
    assert len(ev.results()) == 2


def test_evaluator_validates() -> None:
    with pytest.raises(ValueError, match="label_to_cat_id"):
        CocoEvaluator(_coco(_GT), label_to_cat_id=[1, 2])
    with pytest.raises(ValueError, match="class_names"):
        CocoEvaluator(_coco(_GT), label_to_cat_id=[1, 3], class_names=["cat"])
    ev = CocoEvaluator(_coco(_GT), label_to_cat_id=[1, 3])
    with pytest.raises(ValueError, match="image_id"):
        ev.update(_PERFECT[:1], [99])
    with pytest.raises(ValueError, match="labels"):
        ev.update([_pred([[0, 0, 1, 1]], [0.5], [2])], [1])
