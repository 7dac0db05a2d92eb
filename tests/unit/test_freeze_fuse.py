"""Backbone stage freezing (mmdet frozen_stages) and conv+BN fusion."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from rtmdet_exp.models.backbone import CSPNeXt
from rtmdet_exp.models.fuse import fuse_conv_bn, fused_conv
from rtmdet_exp.models.freeze import freeze_backbone_stages
from rtmdet_exp.models.head import RTMDetHead
from rtmdet_exp.models.neck import CSPNeXtPAFPN
from rtmdet_exp.models.network import RTMDetNet
from rtmdet_exp.models.timm_backbone import TimmBackbone
from tests.support.random_state import randomise
from tests.support.variants import SPEC_VARIANTS, spec_network


def small_net(backbone: nn.Module | None = None, **head: object) -> RTMDetNet:
    """A narrow RTMDet (0.1 M parameters) on CPU."""
    backbone = backbone or CSPNeXt(deepen_factor=0.167, widen_factor=0.125)
    return RTMDetNet(
        backbone,
        partial(CSPNeXtPAFPN, widen_factor=0.125, deepen_factor=0.167),
        partial(RTMDetHead, **head),
        num_classes=3,
    )


def bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


# ---------------------------------------------------------------- freezing


@pytest.mark.parametrize("num_stages, frozen", [(-1, 0), (0, 1), (2, 3), (4, 5)])
def test_freeze_marks_stem_and_first_stages(num_stages: int, frozen: int) -> None:
    net = small_net()
    freeze_backbone_stages(net, num_stages)
    parts = [net.backbone.stem, *net.backbone.stages]  # stage 0 = stem, then stages 1..4
    for index, part in enumerate(parts):
        assert all(p.requires_grad == (index >= frozen) for p in part.parameters()), index
    assert all(p.requires_grad for p in [*net.neck.parameters(), *net.head.parameters()])


def test_frozen_batchnorm_survives_train_and_deepcopy() -> None:
    torch.manual_seed(0)
    net = small_net()
    randomise(net, 1)
    freeze_backbone_stages(net, 1)  # stem and stage 1
    frozen = nn.ModuleList([net.backbone.stem, net.backbone.stages[0]])
    frozen_eval = copy.deepcopy(frozen).eval()  # reference: the same layers in plain eval mode
    stats_frozen = bn_stats(frozen)
    stats_stage2 = bn_stats(net.backbone.stages[1])
    images = torch.randn(2, 3, 64, 64)

    for model in (net, copy.deepcopy(net)):  # the EMA keeps a deep copy
        model.train()
        model(images)
        frozen_now = nn.ModuleList([model.backbone.stem, model.backbone.stages[0]])
        torch.testing.assert_close(bn_stats(frozen_now), stats_frozen)
    assert not all(torch.equal(v, stats_stage2[k]) for k, v in bn_stats(net.backbone.stages[1]).items())
    net.train()
    with torch.no_grad():
        got = net.backbone.stages[0](net.backbone.stem(images))
        want = frozen_eval[1](frozen_eval[0](images))
    torch.testing.assert_close(got, want)  # normalised with the running statistics, not the batch's


def test_frozen_parameters_get_no_gradient() -> None:
    net = small_net()
    freeze_backbone_stages(net, 0)
    cls, reg = net(torch.randn(1, 3, 64, 64))
    (sum(c.sum() for c in cls) + sum(r.sum() for r in reg)).backward()
    assert all(p.grad is None for p in net.backbone.stem.parameters())
    assert all(p.grad is not None for p in net.backbone.stages[0].parameters())


def test_freeze_range_is_checked() -> None:
    net = small_net()
    with pytest.raises(ValueError, match=r"from -1 \(none\) through 4"):
        freeze_backbone_stages(net, 5)
    with pytest.raises(ValueError, match="num_stages"):
        freeze_backbone_stages(net, -2)


def test_freeze_timm_backbone_by_feature_levels() -> None:
    net = small_net(TimmBackbone("resnet10t", out_indices=(2, 3, 4)))
    freeze_backbone_stages(net, 1)  # ResNet: stem (conv1, bn1) and stage 1 (layer1), as mmdet's ResNet
    model = net.backbone.model
    for name in ("conv1", "bn1", "layer1"):
        assert not any(p.requires_grad for p in getattr(model, name).parameters()), name
    assert all(p.requires_grad for p in model.layer2.parameters())
    net.train()
    before = bn_stats(model.bn1)
    net(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(bn_stats(model.bn1), before)


# ---------------------------------------------------------------- fusion


def test_fused_conv_hand_values() -> None:
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1, eps=1.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(1.0)
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(3.0)
    fused = fused_conv(conv, bn)
    # scale = 3 / sqrt(3 + 1) = 1.5; weight 2 * 1.5 = 3; bias 1 + (0 - 0.5) * 1.5 = 0.25
    assert fused.weight.item() == pytest.approx(3.0)
    assert fused.bias.item() == pytest.approx(0.25)
    assert fused(torch.tensor([[[[4.0]]]])).item() == pytest.approx(bn(conv(torch.tensor([[[[4.0]]]]))).item())


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(SPEC_VARIANTS))
def test_fused_network_matches_unfused(variant: str) -> None:
    net = spec_network(variant)
    randomise(net, 2)
    net.eval()
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))

    fused = fuse_conv_bn(net)

    assert not fused.training
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    with torch.no_grad():
        want, got = net(images), fused(images)
    for level, (g, w) in enumerate(zip([*got[0], *got[1]], [*want[0], *want[1]])):
        assert w.std() > 0.05
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=f"{variant} output {level}")


def test_fusion_unties_sepbn_convs_and_leaves_the_original_alone() -> None:
    net = small_net()
    randomise(net, 3)
    original = {k: v.clone() for k, v in net.state_dict().items()}
    fused = fuse_conv_bn(net)
    levels = [fused.head.cls_convs[level][0].conv for level in range(3)]
    assert len({id(conv) for conv in levels}) == 3  # per-level weights after fusion
    assert not torch.equal(levels[0].weight, levels[1].weight)
    assert net.head.cls_convs[1][0].conv is net.head.cls_convs[0][0].conv  # still shared in the original
    assert all(torch.equal(v, original[k]) for k, v in net.state_dict().items())
    assert net.head.cls_convs[0][0].bn.__class__ is nn.BatchNorm2d


def test_fully_shared_tower_stays_shared() -> None:
    net = small_net(share_conv=True, sep_bn=False)
    randomise(net, 4)
    fused = fuse_conv_bn(net)
    assert fused.head.cls_convs[0][0] is fused.head.cls_convs[2][0]
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(images), net.eval()(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value, frozen_parts", [(-1, 0), (0, 1), (1, 2)])
def test_frozen_stages_from_the_command_line(value: int, frozen_parts: int) -> None:
    from rtmdet_exp.experiment import build, compose

    network = build.build_network(compose(["model=rtmdet_tiny", f"model.frozen_stages={value}"]))
    parts = [network.backbone.stem, *network.backbone.stages]
    assert [all(not p.requires_grad for p in part.parameters()) for part in parts] == (
        [True] * frozen_parts + [False] * (len(parts) - frozen_parts))
    assert all(p.requires_grad for p in network.head.parameters())


def test_frozen_stages_out_of_range_names_the_key() -> None:
    from rtmdet_exp.experiment import build, compose
    from rtmdet_exp.experiment.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.frozen_stages=5: .*-1 \(none\) through 4"):
        build.build_network(compose(["model=rtmdet_tiny", "model.frozen_stages=5"]))
