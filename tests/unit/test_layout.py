"""CPU layout and precision of the network: the NCHW stem under channels_last, fp32 depthwise convs under bf16.

Both exist for speed on the CPU (bench/cpu_step.py); these tests check that neither changes what is
computed: values against float64 references and against the plain NCHW network, and that gradients
leave a layout boundary in the layout of the layers before it.
"""

from __future__ import annotations

import copy

import hydra.utils
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose
from omegaconf import OmegaConf
from torch import nn

from rtmdet_exp.engine.step import TrainStep
from rtmdet_exp.experiment import build
from rtmdet_exp.experiment.build import MODEL_META_KEYS
from rtmdet_exp.models.blocks import ConvBNAct, GroupedConv2d
from rtmdet_exp.models.layout import layout_of, relayout, to_channels_last
from rtmdet_exp.models.variants import model_config
from tests.support.batches import make_batch

CL = torch.channels_last
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_network(num_classes: int = 3) -> nn.Module:
    node = {k: v for k, v in model_config("tiny").items() if k not in MODEL_META_KEYS}
    cfg = OmegaConf.merge({"model": node}, {"data": {"num_classes": num_classes}})
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg.model)


def depthwise_case() -> tuple[nn.Conv2d, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    conv = ConvBNAct(16, 16, 5, groups=16).conv
    x = torch.randn(2, 16, 12, 12).to(torch.bfloat16).float()  # exact in bf16: no input rounding in the tests
    grad = torch.randn(2, 16, 12, 12)
    return conv, x, grad


def float64_reference(conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and weight gradient of the depthwise conv in float64 (F.conv2d on doubles)."""
    weight = conv.weight.detach().double().requires_grad_(True)
    out = F.conv2d(x.double(), weight, padding=conv.padding, groups=conv.groups)
    out.backward(grad.double())
    return out.detach(), weight.grad


def test_depthwise_conv_is_a_grouped_conv2d_and_only_it() -> None:
    assert type(ConvBNAct(16, 16, 5, groups=16).conv) is GroupedConv2d
    assert type(ConvBNAct(16, 32, 3).conv) is nn.Conv2d


def test_grouped_conv_runs_in_fp32_under_cpu_bf16_autocast() -> None:
    conv, x, grad = depthwise_case()
    ref_out, ref_wgrad = float64_reference(conv, x, grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x.to(torch.bfloat16))  # what a bf16 layer before it hands over
    out.backward(grad)
    assert out.dtype == torch.float32
    scale = ref_out.abs().max().item()
    assert (out.double() - ref_out).abs().max().item() < 1e-5 * scale
    assert (conv.weight.grad.double() - ref_wgrad).abs().max().item() < 1e-5 * ref_wgrad.abs().max().item()
    # the same conv in bf16 (what autocast does to a plain nn.Conv2d) is ~1e-2 off: the check above can fail
    plain = nn.Conv2d(16, 16, 5, padding=2, groups=16, bias=False)
    plain.weight.data.copy_(conv.weight.data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = plain(x)
    assert low.dtype == torch.bfloat16
    assert (low.double() - ref_out).abs().max().item() > 1e-3 * scale


def test_grouped_conv_without_autocast_is_plain_conv2d() -> None:
    conv, x, _ = depthwise_case()
    expected = F.conv2d(x.double(), conv.weight.double(), padding=2, groups=16)
    assert torch.allclose(conv.double()(x.double()), expected, rtol=0, atol=1e-12)


def test_relayout_hands_the_gradient_back_in_the_source_layout() -> None:
    x = torch.randn(2, 6, 5, 7, requires_grad=True)
    h = x * 1.0  # NCHW, not a leaf (a leaf's .grad is laid out like the leaf whatever arrives)
    seen: list[torch.Tensor] = []
    h.register_hook(seen.append)
    y = relayout(h, CL)
    assert y.is_contiguous(memory_format=CL) and not y.is_contiguous()
    assert torch.equal(y, h)
    upstream = torch.randn(2, 6, 5, 7).contiguous(memory_format=CL)
    y.backward(upstream)
    assert seen[0].is_contiguous()
    assert torch.equal(seen[0], upstream)
    same = torch.randn(2, 6, 5, 7)
    assert relayout(same, torch.contiguous_format) is same  # no copy when already there


def conv_layouts(net: nn.Module) -> dict[str, torch.memory_format]:
    """The layout of every conv whose weight tells them apart (kernel > 1 and more than one input channel)."""
    return {name: layout_of(m) for name, m in net.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1 and m.weight.shape[1] > 1}


def test_to_channels_last_keeps_the_stem_in_nchw_on_the_cpu_only() -> None:
    cpu = to_channels_last(tiny_network(), torch.device("cpu"))
    layouts = conv_layouts(cpu)
    stem = {n for n in layouts if n.startswith("backbone.stem.")}
    assert len(stem) == 3
    assert all(layouts[n] == torch.contiguous_format for n in stem)
    assert all(layouts[n] == CL for n in layouts if n not in stem)
    gpu_layout = to_channels_last(tiny_network(), torch.device("cuda"))  # the device type only: no GPU needed
    assert set(conv_layouts(gpu_layout).values()) == {CL}


def test_mixed_layout_network_computes_what_the_nchw_network_does() -> None:
    plain = tiny_network()
    mixed = to_channels_last(copy.deepcopy(plain), torch.device("cpu"))
    images = torch.randn(2, 3, 128, 128)
    stem_grads: list[torch.Tensor] = []  # the gradient arriving at the stem's output

    def watch_stem_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        output.register_hook(stem_grads.append)

    mixed.backbone.stem.register_forward_hook(watch_stem_output)
    results = []
    for net, x in ((plain, images), (mixed, images.contiguous(memory_format=CL))):
        cls_scores, bbox_dists = net(x)
        outputs = list(cls_scores + bbox_dists)
        sum((t * (i + 1)).sum() for i, t in enumerate(outputs)).backward()
        results.append((outputs, {n: p.grad for n, p in net.named_parameters()}))
    (out_a, grad_a), (out_b, grad_b) = results
    for a, b in zip(out_a, out_b):  # fp32 in both: only the summation order differs (BN over few values)
        assert (a - b).abs().max().item() <= 1e-3 * a.abs().max().item()
    for name, g in grad_a.items():
        assert (g - grad_b[name]).norm().item() <= 1e-3 * max(g.norm().item(), 1e-6), name
    # the gradient reaches the NCHW stem in NCHW (a channels_last one would mix layouts in its backward)
    assert stem_grads and stem_grads[0].is_contiguous()


@pytest.mark.parametrize("bf16", [False, True])
def test_first_step_losses_match_the_fp32_nchw_step(bf16: bool) -> None:
    """The platform's CPU step (stem NCHW, rest channels_last, fp32 depthwise) against plain fp32 NCHW."""
    def first_step(platform: bool) -> dict[str, float]:
        cfg = compose(*TINY)
        torch.manual_seed(0)
        detector = build.build_detector(cfg)
        if platform:
            to_channels_last(detector, torch.device("cpu"))
        optimizer = build.build_optimizer(cfg, detector)
        step = TrainStep(detector, optimizer, build.build_schedule(cfg, optimizer, steps_per_epoch=4),
                         torch.device("cpu"), bf16=bf16 and platform, channels_last=platform, grad_clip=5.0)
        step.train()
        out = step(make_batch(0, [5, 3, 4, 1], size=128))
        return {"loss": float(out["loss"]), **{k: float(v) for k, v in out["losses"].items()},
                "grad_norm": float(out["grad_norm"])}

    reference, platform = first_step(False), first_step(True)
    rtol = 0.02 if bf16 else 1e-4  # bf16: 8 mantissa bits through ~80 layers; fp32: summation order only
    for key in ("loss", "loss_cls", "loss_bbox") + (() if bf16 else ("grad_norm",)):
        assert abs(platform[key] - reference[key]) <= rtol * abs(reference[key]), (key, platform, reference)
