"""load_weights on our own checkpoints, name conversion and refusals (mmdet's own model: tests/integration)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch

from rtmdet_exp.engine.checkpoint import save_checkpoint
from rtmdet_exp.models.backbone import CSPNeXt
from rtmdet_exp.models.head import RTMDetHead
from rtmdet_exp.models.neck import CSPNeXtPAFPN
from rtmdet_exp.models.network import RTMDetNet
from rtmdet_exp.models.weights import LoadReport, WeightsError, load_weights, mmdet_key_to_ours
from tests.support.random_state import randomise


def small_net(num_classes: int = 3, widen: float = 0.125, **head: object) -> RTMDetNet:
    return RTMDetNet(
        CSPNeXt(deepen_factor=0.167, widen_factor=widen),
        partial(CSPNeXtPAFPN, widen_factor=widen, deepen_factor=0.167),
        partial(RTMDetHead, **head),
        num_classes=num_classes,
    )


def detector_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What Detector.state_dict() holds: the network under ``network.``."""
    return {f"network.{k}": v.clone() for k, v in net.state_dict().items()}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


# Keys as mmdet 3.3 names them (read off a built mmdet RTMDet-s), and ours.
MMDET_NAMES = {
    "backbone.stem.0.conv.weight": "backbone.stem.0.conv.weight",
    "backbone.stage1.0.bn.running_mean": "backbone.stages.0.0.bn.running_mean",
    "backbone.stage2.1.blocks.0.conv2.depthwise_conv.conv.weight": (
        "backbone.stages.1.1.blocks.0.conv2.depthwise.conv.weight"
    ),
    "backbone.stage3.1.attention.fc.bias": "backbone.stages.2.1.attention.fc.bias",
    "backbone.stage4.1.conv2.bn.weight": "backbone.stages.3.1.conv2.bn.weight",
    "backbone.stage4.2.final_conv.conv.weight": "backbone.stages.3.2.final_conv.conv.weight",
    "neck.reduce_layers.0.conv.weight": "neck.reduce_layers.0.conv.weight",
    "neck.top_down_blocks.1.blocks.0.conv2.pointwise_conv.bn.weight": (
        "neck.top_down.1.blocks.0.conv2.pointwise.bn.weight"
    ),
    "neck.bottom_up_blocks.0.short_conv.bn.running_var": "neck.bottom_up.0.short_conv.bn.running_var",
    "neck.downsamples.1.conv.weight": "neck.downsamples.1.conv.weight",
    "neck.out_convs.2.bn.bias": "neck.out_convs.2.bn.bias",
    "bbox_head.cls_convs.2.1.bn.running_var": "head.cls_convs.2.1.bn.running_var",
    "bbox_head.reg_convs.1.0.conv.weight": "head.reg_convs.1.0.conv.weight",
    "bbox_head.rtm_cls.0.bias": "head.rtm_cls.0.bias",
    "bbox_head.rtm_reg.2.weight": "head.rtm_reg.2.weight",
}


@pytest.mark.parametrize("theirs, ours", list(MMDET_NAMES.items()))
def test_mmdet_names_map_onto_real_keys(theirs: str, ours: str) -> None:
    assert mmdet_key_to_ours(theirs) == ours
    assert ours in small_net().state_dict()


def test_own_checkpoint_prefers_ema(tmp_path: Path) -> None:
    trained, averaged = small_net(), small_net()
    randomise(trained, 1)
    randomise(averaged, 2)
    state = {
        "model": {**detector_state(trained), "cls_loss.some_buffer": torch.zeros(1)},
        "ema": {"module": detector_state(averaged), "steps": 7},
        "epoch": 3,
    }
    path = save_checkpoint(state, tmp_path / "epoch_0003.pt")
    net = small_net()

    report = load_weights(net, path)

    assert isinstance(report, LoadReport) and report.source == "rtmdet_exp"
    assert same_weights(net, averaged) and not same_weights(net, trained)
    assert any("EMA" in note for note in report.notes)
    assert report.missing == report.unexpected == report.reinitialised == []
    assert "rtmdet_exp" in report.summary() and str(path) in report.summary()


def test_own_checkpoint_without_ema_uses_the_model(tmp_path: Path) -> None:
    trained = small_net()
    randomise(trained, 1)
    path = save_checkpoint({"model": detector_state(trained), "ema": None}, tmp_path / "last.pt")
    net = small_net()
    report = load_weights(net, path)
    assert same_weights(net, trained)
    assert any("no EMA" in note for note in report.notes)


def test_class_count_change_reinitialises_the_classifier(tmp_path: Path) -> None:
    trained = small_net(num_classes=5)
    randomise(trained, 1)
    path = save_checkpoint({"model": detector_state(trained)}, tmp_path / "c5.pt")
    net = small_net(num_classes=2)

    report = load_weights(net, path)

    assert report.reinitialised == sorted(f"head.rtm_cls.{i}.{p}" for i in range(3) for p in ("weight", "bias"))
    assert any("class count 5" in note and "2 in the network" in note for note in report.notes)
    for conv in net.head.rtm_cls:
        torch.testing.assert_close(conv.bias, torch.full((2,), -math.log(99.0)))  # prior 0.01
    theirs = trained.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in net.state_dict().items() if "rtm_cls" not in k)


def test_other_shape_mismatch_is_refused_with_the_shapes(tmp_path: Path) -> None:
    path = save_checkpoint({"model": detector_state(small_net(widen=0.25))}, tmp_path / "wide.pt")
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    expected = r"shape mismatch.*backbone\.stem\.0\.conv\.weight file \[8, 3, 3, 3\] vs network \[4, 3, 3, 3\]"
    with pytest.raises(WeightsError, match=expected):
        load_weights(net, path)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_separate_head_convs_do_not_load_into_shared_ones(tmp_path: Path) -> None:
    separated = small_net(share_conv=False)
    randomise(separated, 1)
    path = save_checkpoint({"model": detector_state(separated)}, tmp_path / "sep.pt")
    expected = r"ties head\.cls_convs\.0\.0\.conv\.weight, head\.cls_convs\.1\.0\.conv\.weight"
    with pytest.raises(WeightsError, match=expected):
        load_weights(small_net(), path)


def test_bare_cspnext_backbone_file_loads_the_backbone(tmp_path: Path) -> None:
    donor = small_net()
    randomise(donor, 4)
    # mmdet's spelling of the backbone keys, without a prefix (backbone.stages.N. -> stageN+1.)
    bare = {}
    for key, value in donor.backbone.state_dict().items():
        if key.startswith("stages."):
            index, rest = key.split(".", 2)[1:]
            key = f"stage{int(index) + 1}.{rest}"
        bare[key.replace(".depthwise.", ".depthwise_conv.").replace(".pointwise.", ".pointwise_conv.")] = value
    path = tmp_path / "cspnext.pth"
    torch.save(bare, path)
    net = small_net()
    head_before = {k: v.clone() for k, v in net.head.state_dict().items()}

    report = load_weights(net, path)

    assert report.source == "cspnext_backbone"
    assert same_weights(net.backbone, donor.backbone)
    assert all(torch.equal(v, head_before[k]) for k, v in net.head.state_dict().items())
    assert report.missing and all(not k.startswith("backbone.") for k in report.missing)


def test_unreadable_and_unknown_files_are_named(tmp_path: Path) -> None:
    net = small_net()
    with pytest.raises(WeightsError, match="not found: .*nowhere.pt"):
        load_weights(net, tmp_path / "nowhere.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read weights file .*junk.pt"):
        load_weights(net, junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"encoder.layer.0.weight": torch.zeros(1)}}, other)
    with pytest.raises(WeightsError, match="cannot tell the format.*other.pt.*encoder.layer.0.weight.*source="):
        load_weights(net, other)
    with pytest.raises(WeightsError, match="source must be one of auto, rtmdet_exp, mmdet, cspnext_backbone"):
        load_weights(net, other, source="yolo")


def test_truncated_own_checkpoint_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint({"model": detector_state(small_net())}, tmp_path / "cut.pt")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="truncated"):
        load_weights(small_net(), path)
