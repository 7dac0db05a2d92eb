"""Fold every BatchNorm into the conv before it, for evaluation and export.

In eval mode ``bn(conv(x)) = s * (W x + b - mean) + beta`` with ``s = gamma / sqrt(var + eps)`` per
output channel, which is one conv with weight ``s * W`` and bias ``beta + s * (b - mean)``. Every
:class:`~rtmdet_exp.models.blocks.ConvBNAct` (stem, downsamples, CSP layers, both halves of the
depthwise-separable convs, SPP, neck, head towers) becomes conv (with bias) -> identity -> SiLU.

The SepBN head shares one conv across levels but keeps a BN per level; fusing gives each level its own
conv (shared weight times that level's BN scale), so the fused copy has per-level tower weights (the
parameter count grows, the MACs do not). A fully shared tower (conv *and* BN shared) stays shared.
Backbones from timm keep their own layers unfused.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from rtmdet_exp.models.blocks import ConvBNAct

__all__ = ["fuse_conv_bn", "fused_conv"]

log = logging.getLogger(__name__)


@torch.no_grad()
def fused_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv equal to ``bn(conv(x))`` with ``bn`` in eval mode (computed in float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fuse a BatchNorm2d without running statistics (track_running_stats=False)")
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)  # [C_out]
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    fused.weight.copy_(conv.weight.double() * scale[:, None, None, None])  # [C_out, C_in/g, k, k]
    fused.bias.copy_(beta + (bias - mean) * scale)
    return fused


def fuse_conv_bn(network: nn.Module) -> nn.Module:
    """An eval-mode copy of ``network`` with every ConvBNAct's BatchNorm folded into its conv.

    ``network`` itself is left untouched. Outputs agree with ``network.eval()`` to float rounding.
    """
    fused = copy.deepcopy(network).eval()
    count = 0
    for module in list(fused.modules()):  # each module once: a fully shared tower is fused once
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fused_conv(module.conv, module.bn)
            module.bn = nn.Identity()
            count += 1
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    log.info("fused %d conv+BN pairs; %d BatchNorm layers left unfused (timm backbone layers)", count, left)
    return fused.eval()
