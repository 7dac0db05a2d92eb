"""Building blocks of CSPNeXt and its PAFPN, from RTMDet (https://arxiv.org/abs/2212.07784).

Everything here is conv -> BatchNorm -> SiLU (mmcv ``ConvModule`` with ``bias="auto"``: a conv followed by
BN carries no bias). The BN defaults are the *effective* values that trained the released models
(PyTorch's momentum 0.1 and eps 1e-5, see spec 1.4), not the mmdet class defaults (0.03 / 1e-3).

Every design knob (``kernel_size``, ``expand_ratio``, ``channel_attention``, ``bn_momentum``, ``bn_eps``)
is a keyword argument that each layer forwards to the layers it builds, so an ablation set at the top
reaches the bottom.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CSPLayer",
    "CSPNeXtBlock",
    "ChannelAttention",
    "ConvBNAct",
    "DepthwiseSeparableConv",
    "GroupedConv2d",
    "SPPF",
    "check_odd_kernel",
]


def check_odd_kernel(value: int, name: str = "kernel_size") -> int:
    """Return ``value`` if it is an odd integer >= 1, else raise a ValueError naming ``name``.

    Odd kernels keep the spatial size with padding ``k // 2``; even ones would shift the grid.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 1 (1, 3, 5, 7, ...), got {value!r}")
    return value


def _check_positive(value: int, name: str) -> int:
    """Return ``value`` if it is a positive integer, else raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class GroupedConv2d(nn.Conv2d):
    """``nn.Conv2d`` for grouped (here: depthwise) convs: under bf16 autocast on the CPU it runs in fp32.

    oneDNN's bf16 weight gradient of a depthwise 5x5 conv is 3-5x slower than its fp32 one on an AMX
    CPU (bench/NOTES.md, "The CPU step"), while bf16 brings nothing to a conv this cheap. On a GPU,
    and outside autocast, it is a plain ``nn.Conv2d`` (same parameters, state-dict keys and output).
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class ConvBNAct(nn.Module):
    """``kernel_size`` x ``kernel_size`` conv (no bias, 'same' padding) -> BatchNorm2d -> SiLU.

    A grouped conv (``groups > 1``) is a :class:`GroupedConv2d`.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        check_odd_kernel(kernel_size)
        _check_positive(in_ch, "in_ch")
        _check_positive(out_ch, "out_ch")
        _check_positive(stride, "stride")
        _check_positive(groups, "groups")
        if in_ch % groups or out_ch % groups:
            raise ValueError(f"groups={groups} must divide in_ch={in_ch} and out_ch={out_ch}")
        conv = GroupedConv2d if groups > 1 else nn.Conv2d
        self.conv = conv(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, momentum=bn_momentum, eps=bn_eps)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise ``k`` x ``k`` ConvBNAct, then pointwise 1x1 ConvBNAct (both with BN and SiLU, as mmcv)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 5,
        stride: int = 1,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(
            in_ch, in_ch, kernel_size, stride=stride, groups=in_ch, bn_momentum=bn_momentum, bn_eps=bn_eps
        )
        self.pointwise = ConvBNAct(in_ch, out_ch, 1, bn_momentum=bn_momentum, bn_eps=bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class CSPNeXtBlock(nn.Module):
    """CSPNeXt basic block: 3x3 ConvBNAct, then depthwise-separable ``kernel_size`` conv, plus identity.

    The block keeps the channel count (expansion 1.0 inside a CSPLayer), so the identity always fits.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 5,
        add_identity: bool = True,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, 3, bn_momentum=bn_momentum, bn_eps=bn_eps)
        self.conv2 = DepthwiseSeparableConv(
            channels, channels, kernel_size=kernel_size, bn_momentum=bn_momentum, bn_eps=bn_eps
        )
        self.add_identity = add_identity

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class ChannelAttention(nn.Module):
    """Per-channel gate: global average pool, 1x1 conv with bias, Hardsigmoid, multiply.

    No reduction ratio and no BN (mmdet ``layers/se_layer.py``). The pool runs in fp32 so that a
    large spatial mean does not lose precision under mixed precision.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        _check_positive(channels, "channels")
        self.fc = nn.Conv2d(channels, channels, 1, bias=True)
        self.act = nn.Hardsigmoid(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        # Autocast casts no pooling op, so the mean of the fp32 copy is taken in fp32 under mixed
        # precision too (an explicit autocast switch here broke torch.compile's graph on CUDA).
        pooled = F.adaptive_avg_pool2d(x.float(), 1)  # [B, C, 1, 1]
        gate = self.act(self.fc(pooled.to(x.dtype)))  # [B, C, 1, 1]
        return x * gate


class CSPLayer(nn.Module):
    """Cross Stage Partial layer with CSPNeXt blocks.

    main = blocks(main_conv(x)), short = short_conv(x); out = final_conv(attn(cat[main, short])).
    Hidden width ``mid = int(out_ch * expand_ratio)``; the optional channel attention acts on the
    ``2 * mid`` concatenation.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        num_blocks: int,
        kernel_size: int = 5,
        add_identity: bool = True,
        channel_attention: bool = False,
        expand_ratio: float = 0.5,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be an integer >= 0, got {num_blocks!r}")
        if not expand_ratio > 0:
            raise ValueError(f"expand_ratio must be > 0, got {expand_ratio!r}")
        mid = int(out_ch * expand_ratio)
        if mid < 1:
            raise ValueError(
                f"expand_ratio={expand_ratio} gives int(out_ch * expand_ratio) = {mid} hidden channels; need >= 1"
            )
        norm = {"bn_momentum": bn_momentum, "bn_eps": bn_eps}
        self.main_conv = ConvBNAct(in_ch, mid, 1, **norm)
        self.short_conv = ConvBNAct(in_ch, mid, 1, **norm)
        self.blocks = nn.Sequential(
            *(CSPNeXtBlock(mid, kernel_size=kernel_size, add_identity=add_identity, **norm) for _ in range(num_blocks))
        )
        self.attention = ChannelAttention(2 * mid) if channel_attention else nn.Identity()
        self.final_conv = ConvBNAct(2 * mid, out_ch, 1, **norm)

    def forward(self, x: Tensor) -> Tensor:
        main = self.blocks(self.main_conv(x))
        short = self.short_conv(x)
        return self.final_conv(self.attention(torch.cat((main, short), dim=1)))  # cat: [B, 2*mid, H, W]


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast form: 1x1 conv to in/2, three chained max-pools, concat, 1x1 conv.

    With ``pool_kernel=5`` the chained pools see 5, 9 and 13 pixel windows, so this equals mmdet's
    ``SPPBottleneck(kernel_sizes=(5, 9, 13))`` output for output, with the same parameters.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        pool_kernel: int = 5,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        check_odd_kernel(pool_kernel, "pool_kernel")
        mid = in_ch // 2
        if mid < 1:
            raise ValueError(f"in_ch must be >= 2 so that in_ch // 2 >= 1, got {in_ch!r}")
        self.conv1 = ConvBNAct(in_ch, mid, 1, bn_momentum=bn_momentum, bn_eps=bn_eps)
        self.pool = nn.MaxPool2d(pool_kernel, stride=1, padding=pool_kernel // 2)
        self.conv2 = ConvBNAct(4 * mid, out_ch, 1, bn_momentum=bn_momentum, bn_eps=bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        p3 = self.pool(p2)
        return self.conv2(torch.cat((x, p1, p2, p3), dim=1))  # cat: [B, 4*mid, H, W]
