"""RTMDet network parts: shapes, parameter/MAC counts against the spec, init, head sharing, validation.

Models are built from the variant table's config nodes (what ``model=rtmdet_<variant>`` composes). Parameter and MAC checks build the
models on the ``meta`` device (shape-only, no memory, instant), so all five variants stay fast; the
reference numbers are the spec's independently computed counts (spec section 0 and 5) and deltas
derived by hand from the module structure.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import hydra.utils
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from rtmdet_exp.experiment.build import MODEL_META_KEYS
from rtmdet_exp.models.backbone import CSPNeXt
from rtmdet_exp.models.blocks import SPPF, ChannelAttention, ConvBNAct, CSPLayer, CSPNeXtBlock, DepthwiseSeparableConv
from rtmdet_exp.models.complexity import breakdown, count_macs, count_params
from rtmdet_exp.models.head import RTMDetHead
from rtmdet_exp.models.neck import CSPNeXtPAFPN
from rtmdet_exp.models.network import RTMDetNet
from rtmdet_exp.models.variants import model_config

VARIANTS = ("tiny", "s", "m", "l", "x")

# Spec table 0: stem channels, stage (out channels, blocks), neck out / csp blocks, params (M), MACs (G).
SPEC = {
    "tiny": ((12, 12, 24), ((48, 1), (96, 1), (192, 1), (384, 1)), 96, 1, 4.896, 8.04),
    "s": ((16, 16, 32), ((64, 1), (128, 2), (256, 2), (512, 1)), 128, 1, 8.887, 14.76),
    "m": ((24, 24, 48), ((96, 2), (192, 4), (384, 4), (768, 2)), 192, 2, 24.709, 39.07),
    "l": ((32, 32, 64), ((128, 3), (256, 6), (512, 6), (1024, 3)), 256, 3, 52.316, 79.90),
    "x": ((40, 40, 80), ((160, 4), (320, 8), (640, 8), (1280, 4)), 320, 4, 94.856, 141.19),
}


def build(variant: str, num_classes: int = 80, meta: bool = True, **overrides: Any) -> RTMDetNet:
    """The ``model=rtmdet_<variant>`` node (the variant table's row) merged as Hydra would, then built."""
    node = {k: v for k, v in model_config(variant).items() if k not in MODEL_META_KEYS}
    cfg = OmegaConf.merge({"model": node}, {"data": {"num_classes": num_classes}}, {"model": overrides})
    with torch.device("meta") if meta else contextlib.nullcontext():
        return hydra.utils.instantiate(cfg.model)


@functools.cache
def meta_model(variant: str, num_classes: int = 80) -> RTMDetNet:
    return build(variant, num_classes)


def rel_err(value: float, ref: float) -> float:
    return abs(value - ref) / ref


# ---------------------------------------------------------------- structure and shapes


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_structure_matches_spec_table(variant: str) -> None:
    stem, stages, neck_out, neck_blocks, _, _ = SPEC[variant]
    net = meta_model(variant)
    assert tuple(conv.conv.out_channels for conv in net.backbone.stem) == stem
    assert net.backbone.block_counts == tuple(n for _, n in stages)
    for stage, (ch, n) in zip(net.backbone.stages, stages):
        assert stage[0].conv.stride == (2, 2) and stage[0].conv.out_channels == ch
        assert len(stage[-1].blocks) == n
    assert net.backbone.out_channels == tuple(ch for ch, _ in stages[1:])
    assert net.neck.in_channels == net.backbone.out_channels  # derived, not restated
    assert net.neck.out_channels == neck_out and net.neck.num_csp_blocks == neck_blocks
    assert all(m.in_channels == neck_out for m in net.head.rtm_cls)
    assert net.head.exp_on_reg is (variant in ("l", "x"))
    # _convert_: all hands plain Python containers to the model code
    assert type(net.head.strides) is tuple and all(type(s) is int for s in net.head.strides)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [64, 96])
def test_output_shapes_every_variant(variant: str, size: int) -> None:
    net = meta_model(variant, num_classes=3)
    cls_scores, bbox_dists = net(torch.zeros(2, 3, size, size, device="meta"))
    assert [tuple(t.shape) for t in cls_scores] == [(2, 3, size // s, size // s) for s in (8, 16, 32)]
    assert [tuple(t.shape) for t in bbox_dists] == [(2, 4, size // s, size // s) for s in (8, 16, 32)]


def test_tiny_real_forward_backward() -> None:
    torch.manual_seed(0)
    net = build("tiny", num_classes=3, meta=False)
    cls_scores, bbox_dists = net(torch.randn(2, 3, 64, 64))
    assert [tuple(t.shape) for t in cls_scores] == [(2, 3, 64 // s, 64 // s) for s in (8, 16, 32)]
    assert [tuple(t.shape) for t in bbox_dists] == [(2, 4, 64 // s, 64 // s) for s in (8, 16, 32)]
    assert all(torch.isfinite(t).all() for t in cls_scores + bbox_dists)
    sum(t.sum() for t in cls_scores + bbox_dists).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    net.eval()
    with torch.no_grad():
        cls_scores, bbox_dists = net(torch.randn(1, 3, 96, 96))
    assert [tuple(t.shape) for t in bbox_dists] == [(1, 4, 96 // s, 96 // s) for s in (8, 16, 32)]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["s", "m", "l", "x"])
def test_real_forward_larger_variants(variant: str) -> None:
    net = build(variant, num_classes=3, meta=False).eval()
    with torch.no_grad():
        cls_scores, bbox_dists = net(torch.randn(1, 3, 64, 64))
    assert [tuple(t.shape) for t in cls_scores] == [(1, 3, 64 // s, 64 // s) for s in (8, 16, 32)]
    assert all(torch.isfinite(t).all() for t in cls_scores + bbox_dists)
    if variant in ("l", "x"):  # exp_on_reg: distances are positive
        assert all((t > 0).all() for t in bbox_dists)


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("variant", VARIANTS)
def test_params_match_spec(variant: str) -> None:
    assert rel_err(count_params(meta_model(variant)) / 1e6, SPEC[variant][4]) < 0.005


def test_params_breakdown_l() -> None:
    parts = breakdown(meta_model("l"))
    for name, ref in (("backbone", 26.14), ("neck", 23.75), ("head", 2.43)):
        assert rel_err(parts[name]["params"] / 1e6, ref) < 0.005
    assert sum(parts[n]["params"] for n in ("backbone", "neck", "head")) == parts["total"]["params"]


def test_each_class_adds_three_predictors_worth() -> None:
    # rtm_cls is per level: one more class adds 3 x (head_ch weights + 1 bias); head_ch = 96 for tiny.
    assert count_params(meta_model("tiny", 81)) - count_params(meta_model("tiny", 80)) == 3 * (96 + 1)


def test_channel_attention_ablation_params() -> None:
    full = count_params(meta_model("l"))
    no_ca = count_params(build("l", backbone={"channel_attention": False}))
    # One ChannelAttention per backbone stage on the 2*mid = out concat: conv c x c plus c biases.
    assert full - no_ca == sum(c * (c + 1) for c in (128, 256, 512, 1024))
    assert rel_err(no_ca / 1e6, 50.921) < 0.005
    s_no_ca = count_params(build("s", backbone={"channel_attention": False}))
    assert rel_err(s_no_ca / 1e6, 8.538) < 0.005


def test_3993_blocks_ablation_params() -> None:
    no_ca = count_params(build("l", backbone={"channel_attention": False}))
    deep = count_params(build("l", backbone={"channel_attention": False, "arch_blocks": [3, 9, 9, 3]}))

    def block(c: int) -> int:  # 3x3 conv + BN, dw 5x5 + BN, pw 1x1 + BN
        return 9 * c * c + 2 * c + 25 * c + 2 * c + c * c + 2 * c

    assert deep - no_ca == 3 * block(128) + 3 * block(256)  # 3 extra blocks at hidden 128 and 256
    assert rel_err(deep / 1e6, 53.415) < 0.005


@pytest.mark.slow
@pytest.mark.parametrize(("kernel", "ref", "ref_macs"), [(3, 50.8, 79.61), (7, 51.1, 80.34)])
def test_kernel_size_ablation_params(kernel: int, ref: float, ref_macs: float) -> None:
    base = count_params(build("l", backbone={"channel_attention": False}))
    other = count_params(build("l", backbone={"channel_attention": False, "kernel_size": kernel}))
    # Sum of hidden widths over every CSPNeXt block: backbone 3-6-6-3 at 64/128/256/512 hidden,
    # neck 4 CSPLayers x 3 blocks at 256 (td4), 128 (td3), 256 (b4), 512 (b5).
    hidden = 3 * 64 + 6 * 128 + 6 * 256 + 3 * 512 + 3 * (256 + 128 + 256 + 512)
    assert other - base == (kernel * kernel - 25) * hidden  # the neck follows the backbone's kernel_size
    assert rel_err(other / 1e6, ref) < 0.005  # paper table (a), l without channel attention
    macs = count_macs(build("l", backbone={"channel_attention": False, "kernel_size": kernel}))["macs"]
    assert rel_err(macs / 1e9, ref_macs) < 0.005


def test_head_sharing_ablation_params() -> None:
    sepbn = count_params(meta_model("l"))
    separated = count_params(build("l", head={"share_conv": False}))
    fully_shared = count_params(build("l", head={"sep_bn": False}))
    # 2 more levels x 2 towers x 2 convs of 256x256x3x3 when nothing is shared.
    assert separated - sepbn == 2 * 2 * 2 * 256 * 256 * 9
    assert rel_err(separated / 1e6, 57.03) < 0.005
    # Fully shared drops 2 levels x 2 towers x 2 BNs of (weight, bias) x 256.
    assert sepbn - fully_shared == 2 * 2 * 2 * 2 * 256


def test_count_params_counts_shared_once() -> None:
    lin = nn.Linear(3, 4)
    assert count_params(nn.Sequential(lin, nn.ReLU(), lin)) == 3 * 4 + 4


# ---------------------------------------------------------------- MACs


def test_count_macs_single_conv_by_hand() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    out = count_macs(conv, img_size=(4, 5))
    assert out["macs"] == 8 * 3 * 9 * 4 * 5  # bias adds are not counted
    assert out["flops"] == 2 * out["macs"]
    assert count_macs(conv, img_size=(4, 5), meta=False) == out


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_macs_match_spec(variant: str) -> None:
    macs = count_macs(meta_model(variant), img_size=640)["macs"]
    assert rel_err(macs / 1e9, SPEC[variant][5]) < 0.005


def test_macs_3993_ablation() -> None:
    net = build("l", backbone={"channel_attention": False, "arch_blocks": [3, 9, 9, 3]})
    assert rel_err(count_macs(net, img_size=640)["macs"] / 1e9, 86.28) < 0.005


def test_real_and_meta_counts_agree_tiny_640() -> None:
    real = build("tiny", meta=False)
    parts_real = breakdown(real, img_size=640, meta=False)
    parts_meta = breakdown(meta_model("tiny"), img_size=640)
    assert parts_real == parts_meta
    assert rel_err(parts_real["total"]["macs"] / 1e9, 8.04) < 0.005
    # Every counted op sits inside one of the three parts.
    assert sum(parts_real[n]["flops"] for n in ("backbone", "neck", "head")) == parts_real["total"]["flops"]
    assert real.training  # breakdown switches to eval for the count and restores the mode it found


def test_breakdown_restores_each_module_mode() -> None:
    net = build("tiny")
    net.backbone.eval()  # e.g. a frozen backbone inside a training model
    breakdown(net, img_size=64)
    assert not net.backbone.training and not net.backbone.stem[0].bn.training
    assert net.training and net.head.training and net.neck.training


# ---------------------------------------------------------------- knobs reach the bottom


def test_knobs_are_forwarded_everywhere() -> None:
    net = build(
        "tiny",
        backbone={"kernel_size": 7, "expand_ratio": 0.25, "bn_momentum": 0.03, "bn_eps": 1e-3},
    )
    dw = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(dw) == 4 + 4  # one block per CSPLayer for tiny: 4 backbone + 4 neck CSPLayers
    assert all(m.kernel_size == (7, 7) and m.padding == (3, 3) for m in dw)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.03 and m.eps == 1e-3 for m in bns)
    for stage, out in zip(net.backbone.stages, (48, 96, 192, 384)):
        assert stage[-1].main_conv.conv.out_channels == int(out * 0.25)
    # The neck's expand_ratio is its own knob (backbone/neck balance ablation): still 0.5.
    assert net.neck.top_down[0].main_conv.conv.out_channels == int(192 * 0.5)


def test_channel_attention_only_in_backbone() -> None:
    net = meta_model("tiny")
    assert sum(isinstance(m, ChannelAttention) for m in net.backbone.modules()) == 4
    assert not any(isinstance(m, ChannelAttention) for m in net.neck.modules())
    off = build("tiny", backbone={"channel_attention": False})
    assert not any(isinstance(m, ChannelAttention) for m in off.modules())


def test_last_stage_has_spp_and_no_identity() -> None:
    net = meta_model("s")
    for i, stage in enumerate(net.backbone.stages):
        assert isinstance(stage[1], SPPF) == (i == 3)
        assert all(b.add_identity == (i < 3) for b in stage[-1].blocks)
    assert all(not b.add_identity for m in net.neck.modules() if isinstance(m, CSPLayer) for b in m.blocks)


def test_neck_bottom_up_uses_reduced_maps() -> None:
    neck = CSPNeXtPAFPN(in_channels=[8, 16, 32], out_channels=12, num_csp_blocks=1)
    # b4 = CSP(cat[down(td3), r4]) with r4 at c3 = 8 channels: input 2 * 8; b5 input 2 * 16.
    assert [m.main_conv.conv.in_channels for m in neck.bottom_up] == [16, 32]
    assert [m.final_conv.conv.out_channels for m in neck.bottom_up] == [16, 32]
    outs = neck([torch.randn(1, 8, 12, 12), torch.randn(1, 16, 6, 6), torch.randn(1, 32, 3, 3)])
    assert [tuple(o.shape) for o in outs] == [(1, 12, 12, 12), (1, 12, 6, 6), (1, 12, 3, 3)]


# ---------------------------------------------------------------- blocks by hand


def test_sppf_equals_spp_5_9_13() -> None:
    torch.manual_seed(0)
    spp = SPPF(8, 6).eval()
    x = torch.randn(1, 8, 7, 9)
    with torch.no_grad():
        y = spp.conv1(x)
        pools = [F.max_pool2d(y, k, stride=1, padding=k // 2) for k in (5, 9, 13)]
        ref = spp.conv2(torch.cat([y, *pools], dim=1))
        assert torch.allclose(spp(x), ref, atol=1e-6)


def test_cspnext_block_identity() -> None:
    torch.manual_seed(0)
    with_id = CSPNeXtBlock(4, add_identity=True).eval()
    without = CSPNeXtBlock(4, add_identity=False).eval()
    without.load_state_dict(with_id.state_dict())
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert torch.allclose(with_id(x) - without(x), x, atol=1e-6)
    assert with_id.conv1.conv.kernel_size == (3, 3) and with_id.conv2.depthwise.conv.kernel_size == (5, 5)
    assert with_id.conv1.conv.bias is None  # conv followed by BN has no bias


def test_channel_attention_by_hand() -> None:
    torch.manual_seed(0)
    ca = ChannelAttention(2)
    x = torch.randn(1, 2, 3, 3)
    w = ca.fc.weight.detach().double()[:, :, 0, 0].tolist()
    b = ca.fc.bias.detach().double().tolist()
    xs = x.double()[0].tolist()
    means = [sum(sum(row) for row in xs[c]) / 9 for c in range(2)]
    with torch.no_grad():
        out = ca(x)
    for c in range(2):
        z = sum(w[c][k] * means[k] for k in range(2)) + b[c]
        gate = min(max(z / 6 + 0.5, 0.0), 1.0)  # Hardsigmoid
        for i in range(3):
            for j in range(3):
                assert out[0, c, i, j].item() == pytest.approx(xs[c][i][j] * gate, abs=1e-6)


def test_channel_attention_under_bf16_autocast() -> None:
    ca = ChannelAttention(4)
    x = torch.randn(1, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ca(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_backbone_kaiming_uniform_init() -> None:
    torch.manual_seed(0)
    bb = CSPNeXt(deepen_factor=0.33, widen_factor=0.25)
    conv = bb.stages[3][0].conv  # 64 -> 128, 3x3
    fan_in = conv.in_channels * 9
    bound = 1 / math.sqrt(fan_in)  # gain sqrt(2 / (1 + 5)) * sqrt(3 / fan_in)
    w = conv.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    fc = bb.stages[3][-1].attention.fc
    assert torch.equal(fc.bias, torch.zeros_like(fc.bias))  # PyTorch's default would be non-zero


# ---------------------------------------------------------------- head


def test_head_init() -> None:
    torch.manual_seed(0)
    head = RTMDetHead(in_channels=64, num_classes=3)
    for conv in head.rtm_cls:
        assert torch.allclose(conv.bias, torch.full((3,), -4.59512), atol=1e-5)  # -log(99)
    for conv in head.rtm_reg:
        assert torch.equal(conv.bias, torch.zeros(4))
    tower_w = head.cls_convs[0][0].conv.weight.detach()  # 64 * 64 * 9 samples
    assert tower_w.std().item() == pytest.approx(0.01, rel=0.05) and abs(tower_w.mean().item()) < 1e-3
    bn = head.reg_convs[2][1].bn
    assert torch.equal(bn.weight, torch.ones(64)) and torch.equal(bn.bias, torch.zeros(64))


@pytest.mark.parametrize("exp_on_reg", [False, True])
def test_head_regression_scaled_by_stride(exp_on_reg: bool) -> None:
    head = RTMDetHead(in_channels=8, num_classes=2, exp_on_reg=exp_on_reg, strides=(8, 16, 32))
    raw = [0.5, -1.0, 0.0, 2.0]
    with torch.no_grad():
        for conv in head.rtm_reg:
            conv.weight.zero_()
            conv.bias.copy_(torch.tensor(raw))
    feats = [torch.randn(2, 8, n, n) for n in (4, 2, 1)]
    cls_scores, dists = head(feats)
    for d, stride in zip(dists, (8, 16, 32)):
        for k, r in enumerate(raw):
            want = (math.exp(r) if exp_on_reg else r) * stride
            assert torch.allclose(d[:, k], torch.full_like(d[:, k], want), atol=1e-5)
    assert [tuple(c.shape) for c in cls_scores] == [(2, 2, 4, 4), (2, 2, 2, 2), (2, 2, 1, 1)]


def test_sepbn_shares_conv_weights_with_per_level_bn() -> None:
    torch.manual_seed(0)
    head = RTMDetHead(in_channels=8, num_classes=2)
    for towers in (head.cls_convs, head.reg_convs):
        for i in range(2):
            ptrs = {towers[lvl][i].conv.weight.data_ptr() for lvl in range(3)}
            bns = {id(towers[lvl][i].bn) for lvl in range(3)}
            bn_ptrs = {towers[lvl][i].bn.weight.data_ptr() for lvl in range(3)}
            assert len(ptrs) == 1 and len(bns) == 3 and len(bn_ptrs) == 3
    assert len({id(m) for m in head.rtm_cls}) == 3  # predictors per level
    # Per-level BN really keeps per-level statistics.
    head.train()
    head([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2) + 5.0, torch.randn(2, 8, 1, 1) - 5.0])
    means = [head.cls_convs[lvl][0].bn.running_mean for lvl in range(3)]
    assert not torch.allclose(means[0], means[1]) and not torch.allclose(means[1], means[2])


def test_separated_and_fully_shared_heads() -> None:
    sep = RTMDetHead(in_channels=8, num_classes=2, share_conv=False)
    assert len({sep.cls_convs[lvl][0].conv.weight.data_ptr() for lvl in range(3)}) == 3
    full = RTMDetHead(in_channels=8, num_classes=2, share_conv=True, sep_bn=False)
    for towers in (full.cls_convs, full.reg_convs):
        for i in range(2):
            assert len({id(towers[lvl][i].conv) for lvl in range(3)}) == 1
            assert len({id(towers[lvl][i].bn) for lvl in range(3)}) == 1
    assert sum(isinstance(m, nn.BatchNorm2d) for m in full.modules()) == 2 * 2  # modules() is unique
    assert len({id(m) for m in full.rtm_reg}) == 3


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "make",
    [
        lambda: CSPNeXt(kernel_size=4),
        lambda: CSPNeXtPAFPN(in_channels=[8, 16, 32], kernel_size=2),
        lambda: CSPLayer(8, 8, 1, kernel_size=6),
        lambda: CSPNeXtBlock(8, kernel_size=0),
        lambda: DepthwiseSeparableConv(8, 8, kernel_size=-3),
        lambda: ConvBNAct(3, 8, kernel_size=2),
    ],
)
def test_even_or_nonpositive_kernel_raises(make: Any) -> None:
    with pytest.raises(ValueError, match=r"kernel_size must be an odd integer >= 1"):
        make()


def test_even_kernel_from_config_raises() -> None:
    with pytest.raises(Exception, match="kernel_size"):
        build("tiny", backbone={"kernel_size": 4})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"stacked_convs": -1}, "stacked_convs"),
        ({"pred_kernel_size": 2}, "pred_kernel_size"),
        ({"prior_prob": 1.0}, "prior_prob"),
        ({"strides": ()}, "strides"),
        ({"share_conv": False, "sep_bn": False}, "sep_bn"),
    ],
)
def test_head_validation(kwargs: dict[str, Any], name: str) -> None:
    args = {"in_channels": 8, "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        RTMDetHead(**args)


def test_network_validation() -> None:
    bb = CSPNeXt(deepen_factor=0.33, widen_factor=0.25)
    neck = functools.partial(CSPNeXtPAFPN, out_channels=16)
    with pytest.raises(ValueError, match="neck"):
        RTMDetNet(bb, CSPNeXtPAFPN(in_channels=bb.out_channels), functools.partial(RTMDetHead), 2)
    with pytest.raises(ValueError, match="strides"):
        RTMDetNet(bb, neck, functools.partial(RTMDetHead, strides=(8, 16, 64)), 2)
    with pytest.raises(ValueError, match="arch_blocks"):
        CSPNeXt(arch_blocks=(3, 6, 6))
    net = RTMDetNet(bb, neck, functools.partial(RTMDetHead), 2)
    assert set(net.parts()) == {"backbone", "neck", "head"} and net.neck.in_channels == (64, 128, 256)
