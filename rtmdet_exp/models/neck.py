"""CSPNeXtPAFPN, the neck of RTMDet (https://arxiv.org/abs/2212.07784; mmdet ``necks/cspnext_pafpn.py``).

A PAFPN whose fusion layers are CSPLayers of CSPNeXt blocks (no identity, no channel attention).
With backbone maps C3, C4, C5 (channels c3, c4, c5):

    top-down:  r5 = conv1x1(C5 -> c4);  td4 = CSP(cat[up(r5), C4] -> c4)
               r4 = conv1x1(td4 -> c3); td3 = CSP(cat[up(r4), C3] -> c3)
    bottom-up: b4 = CSP(cat[conv3x3s2(td3), r4] -> c4)
               b5 = CSP(cat[conv3x3s2(b4), r5] -> c5)
    outputs:   conv3x3 of td3, b4, b5 -> out_channels each

The bottom-up concatenations use the *reduced* maps r4 and r5, as in YOLOX. The same rule is built
for any number (>= 2) of levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtmdet_exp.models.backbone import init_kaiming_uniform
from rtmdet_exp.models.blocks import ConvBNAct, CSPLayer, check_odd_kernel

__all__ = ["CSPNeXtPAFPN"]


class CSPNeXtPAFPN(nn.Module):
    """Path-aggregation FPN with CSPNeXt fusion layers.

    Args:
        in_channels: channels of the backbone maps, finest first (take them from ``backbone.out_channels``).
        out_channels: channels of every output map; None means int(256 * widen_factor).
        widen_factor: only used for the default ``out_channels``.
        deepen_factor: only used for the default ``num_csp_blocks``.
        kernel_size: depthwise kernel of the CSPNeXt blocks (odd >= 1).
        expand_ratio: CSPLayer hidden width ratio.
        num_csp_blocks: blocks per CSPLayer; None means max(round(3 * deepen_factor), 1).
        bn_momentum, bn_eps: BatchNorm settings (effective RTMDet values 0.1 / 1e-5).

    Attributes:
        out_channels: channels of each returned map (an int, the same for every level).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int | None = None,
        widen_factor: float = 1.0,
        deepen_factor: float = 1.0,
        kernel_size: int = 5,
        expand_ratio: float = 0.5,
        num_csp_blocks: int | None = None,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if len(in_channels) < 2 or any(c < 1 for c in in_channels):
            raise ValueError(f"in_channels must list >= 2 positive channel counts, got {in_channels!r}")
        if out_channels is None:
            if not widen_factor > 0:
                raise ValueError(f"widen_factor must be > 0, got {widen_factor!r}")
            out_channels = int(256 * widen_factor)
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be an integer >= 1 or None, got {out_channels!r}")
        if num_csp_blocks is None:
            if not deepen_factor > 0:
                raise ValueError(f"deepen_factor must be > 0, got {deepen_factor!r}")
            num_csp_blocks = max(round(3 * deepen_factor), 1)
        if isinstance(num_csp_blocks, bool) or not isinstance(num_csp_blocks, int) or num_csp_blocks < 1:
            raise ValueError(f"num_csp_blocks must be an integer >= 1 or None, got {num_csp_blocks!r}")
        check_odd_kernel(kernel_size)

        self.in_channels = in_channels
        self.out_channels: int = out_channels
        self.num_csp_blocks = num_csp_blocks
        norm = {"bn_momentum": bn_momentum, "bn_eps": bn_eps}
        csp = {
            "kernel_size": kernel_size,
            "add_identity": False,
            "channel_attention": False,
            "expand_ratio": expand_ratio,
            **norm,
        }
        n = len(in_channels)
        # Top-down, coarsest first: reduce_layers[j] / top_down[j] serve level i = n-1-j.
        self.reduce_layers = nn.ModuleList(
            ConvBNAct(in_channels[i], in_channels[i - 1], 1, **norm) for i in range(n - 1, 0, -1)
        )
        self.top_down = nn.ModuleList(
            CSPLayer(2 * in_channels[i - 1], in_channels[i - 1], num_csp_blocks, **csp) for i in range(n - 1, 0, -1)
        )
        # Bottom-up, finest first: downsamples[i] / bottom_up[i] go from level i to i+1.
        self.downsamples = nn.ModuleList(
            ConvBNAct(in_channels[i], in_channels[i], 3, stride=2, **norm) for i in range(n - 1)
        )
        self.bottom_up = nn.ModuleList(
            CSPLayer(2 * in_channels[i], in_channels[i + 1], num_csp_blocks, **csp) for i in range(n - 1)
        )
        self.out_convs = nn.ModuleList(ConvBNAct(c, out_channels, 3, **norm) for c in in_channels)
        init_kaiming_uniform(self)

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Backbone maps (finest first) -> fused maps [B, out_channels, H_l, W_l] at the same sizes."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(feats)}")
        n = len(feats)
        # Top-down. reduced[i] holds the 1x1-reduced map made at level i (i = 1..n-1), reused bottom-up.
        high = feats[-1]
        reduced: dict[int, Tensor] = {}
        fused: dict[int, Tensor] = {}
        for j, i in enumerate(range(n - 1, 0, -1)):
            high = self.reduce_layers[j](high)
            reduced[i] = high
            low = feats[i - 1]
            up = F.interpolate(high, size=low.shape[-2:], mode="nearest")  # [B, c_{i-1}, H_{i-1}, W_{i-1}]
            high = self.top_down[j](torch.cat((up, low), dim=1))  # cat: [B, 2*c_{i-1}, H_{i-1}, W_{i-1}]
            fused[i - 1] = high
        # Bottom-up from the finest fused map, concatenating the reduced maps.
        outs = [fused[0]]
        for i in range(n - 1):
            down = self.downsamples[i](outs[-1])  # [B, c_i, H_{i+1}, W_{i+1}]
            outs.append(self.bottom_up[i](torch.cat((down, reduced[i + 1]), dim=1)))  # cat: [B, 2*c_i, ...]
        return tuple(conv(x) for conv, x in zip(self.out_convs, outs))
