"""CSPNeXt backbone of RTMDet ("RTMDet: An Empirical Study of Designing Real-Time Object Detectors",
https://arxiv.org/abs/2212.07784; mmdet ``backbones/cspnext.py``).

A 3-conv stem (stride 2) and four stages, each a stride-2 3x3 conv followed by a CSPLayer of
CSPNeXt blocks; the last stage also holds the SPP and has no residuals in its blocks. Variants are
data: ``deepen_factor`` scales the block counts ``arch_blocks`` (banker's rounding, at least 1) and
``widen_factor`` scales the base channels 64-128-256-512-1024 (``int``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from rtmdet_exp.models.blocks import SPPF, ConvBNAct, CSPLayer, check_odd_kernel
from rtmdet_exp.models.layout import layout_of, relayout

__all__ = ["CSPNeXt", "init_kaiming_uniform"]

# Base (P5) stage layout: (in channels, out channels, add_identity, use_spp) before widening.
_STAGES: tuple[tuple[int, int, bool, bool], ...] = (
    (64, 128, True, False),
    (128, 256, True, False),
    (256, 512, True, False),
    (512, 1024, False, True),
)
_STEM_CHANNELS = 64


def init_kaiming_uniform(module: nn.Module) -> None:
    """mmdet backbone/neck init: Kaiming-uniform (a=sqrt(5), fan_in, leaky_relu) conv weights, zero
    conv biases; BatchNorm weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), mode="fan_in", nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CSPNeXt(nn.Module):
    """CSPNeXt backbone returning the stride-8, 16 and 32 feature maps.

    Args:
        deepen_factor: multiplier on ``arch_blocks``; count = max(round(b * deepen_factor), 1).
        widen_factor: multiplier on the base channels; channels = int(c * widen_factor).
        kernel_size: depthwise kernel of every CSPNeXt block (odd >= 1; paper ablation 3/5/7).
        channel_attention: gate the concatenation of each stage's CSPLayer (paper ablation).
        expand_ratio: CSPLayer hidden width ratio (paper's backbone/neck balance ablation).
        arch_blocks: base block counts of the four stages (3-6-6-3; the paper also tries 3-9-9-3).
        bn_momentum, bn_eps: BatchNorm settings (effective RTMDet values 0.1 / 1e-5).

    Attributes:
        out_channels: channels of the returned maps, (int(256w), int(512w), int(1024w)).
        strides: their strides, (8, 16, 32).
        cpu_contiguous_parts: what :func:`~rtmdet_exp.models.layout.to_channels_last` keeps in NCHW
            on the CPU (the stem); ``forward`` moves activations to each part's own layout.
    """

    cpu_contiguous_parts = ("stem",)

    strides: tuple[int, ...] = (8, 16, 32)

    def __init__(
        self,
        deepen_factor: float = 1.0,
        widen_factor: float = 1.0,
        kernel_size: int = 5,
        channel_attention: bool = True,
        expand_ratio: float = 0.5,
        arch_blocks: Sequence[int] = (3, 6, 6, 3),
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not deepen_factor > 0:
            raise ValueError(f"deepen_factor must be > 0, got {deepen_factor!r}")
        if not widen_factor > 0:
            raise ValueError(f"widen_factor must be > 0, got {widen_factor!r}")
        check_odd_kernel(kernel_size)
        arch_blocks = tuple(arch_blocks)
        if len(arch_blocks) != len(_STAGES) or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in arch_blocks
        ):
            raise ValueError(
                f"arch_blocks must be {len(_STAGES)} integers >= 1 (e.g. (3, 6, 6, 3)), got {arch_blocks!r}"
            )
        stem_mid = int(_STEM_CHANNELS * widen_factor // 2)
        stem_out = int(_STEM_CHANNELS * widen_factor)
        if stem_mid < 1:
            raise ValueError(
                f"widen_factor={widen_factor} leaves the stem with 0 channels; need >= {2 / _STEM_CHANNELS}"
            )

        norm = {"bn_momentum": bn_momentum, "bn_eps": bn_eps}
        self.stem = nn.Sequential(
            ConvBNAct(3, stem_mid, 3, stride=2, **norm),
            ConvBNAct(stem_mid, stem_mid, 3, **norm),
            ConvBNAct(stem_mid, stem_out, 3, **norm),
        )
        self.block_counts = tuple(max(round(b * deepen_factor), 1) for b in arch_blocks)
        stages = []
        for (c_in, c_out, add_identity, use_spp), n in zip(_STAGES, self.block_counts):
            c_in, c_out = int(c_in * widen_factor), int(c_out * widen_factor)
            layers: list[nn.Module] = [ConvBNAct(c_in, c_out, 3, stride=2, **norm)]
            if use_spp:
                layers.append(SPPF(c_out, c_out, pool_kernel=5, **norm))
            layers.append(
                CSPLayer(
                    c_out,
                    c_out,
                    n,
                    kernel_size=kernel_size,
                    add_identity=add_identity,
                    channel_attention=channel_attention,
                    expand_ratio=expand_ratio,
                    **norm,
                )
            )
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, ...] = tuple(int(s[1] * widen_factor) for s in _STAGES[1:])
        init_kaiming_uniform(self)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``x`` [B, 3, H, W] -> maps of stages 2, 3, 4: [B, out_channels[i], H / s, W / s], s = 8, 16, 32."""
        x = self.stem(relayout(x, layout_of(self.stem[0].conv)))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(relayout(x, layout_of(stage[0].conv)))
            if i >= 1:
                outs.append(x)
        return tuple(outs)
