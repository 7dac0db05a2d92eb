"""RTMDet detection head with "SepBN" towers (https://arxiv.org/abs/2212.07784;
mmdet ``dense_heads/rtmdet_head.py``, ``RTMDetSepBNHead``).

Per level, a classification tower and a regression tower of ``stacked_convs`` 3x3 ConvBNAct each,
then per-level 1x1 predictors ``rtm_cls`` (class logits) and ``rtm_reg`` (l, t, r, b distances).
Tower sharing across levels is the paper's head ablation:

* ``share_conv=True, sep_bn=True`` (SepBN, the default): the *same* ``nn.Conv2d`` objects serve every
  level, each level keeps its own BatchNorm.
* ``share_conv=False``: every level has its own convs and BNs ("separated").
* ``share_conv=True, sep_bn=False``: convs and BNs are both shared ("fully shared").

The predictors are per level in all three cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from rtmdet_exp.models.blocks import ConvBNAct, check_odd_kernel

__all__ = ["RTMDetHead"]


class RTMDetHead(nn.Module):
    """Dense anchor-free head: ``forward(feats) -> (cls_scores, bbox_dists)``.

    Args:
        in_channels: channels of every input level (the neck's ``out_channels``).
        num_classes: number of object classes (>= 1); logits are sigmoid-style, no background class.
        feat_channels: tower width; None means ``in_channels``.
        stacked_convs: 3x3 convs per tower (>= 0).
        share_conv: share tower convs across levels.
        sep_bn: with ``share_conv``, keep one BN per level (SepBN); False shares the BNs too.
        strides: stride of each input level; the distances are multiplied by it.
        exp_on_reg: apply exp() to the raw regression output before the stride (mmdet: l and x).
        pred_kernel_size: kernel of the predictors (odd >= 1).
        prior_prob: initial foreground probability; sets the cls bias to -log((1 - p) / p).
        bn_momentum, bn_eps: BatchNorm settings (effective RTMDet values 0.1 / 1e-5).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        feat_channels: int | None = None,
        stacked_convs: int = 2,
        share_conv: bool = True,
        sep_bn: bool = True,
        strides: Sequence[int] = (8, 16, 32),
        exp_on_reg: bool = False,
        pred_kernel_size: int = 1,
        prior_prob: float = 0.01,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        feat_channels = in_channels if feat_channels is None else feat_channels
        strides = tuple(strides)
        _check_args(in_channels, num_classes, feat_channels, stacked_convs, share_conv, sep_bn, strides,
                    pred_kernel_size, prior_prob)
        self.num_classes = num_classes
        self.strides = strides
        self.exp_on_reg = exp_on_reg
        self.share_conv = share_conv
        self.sep_bn = sep_bn
        self.prior_prob = prior_prob
        norm = {"bn_momentum": bn_momentum, "bn_eps": bn_eps}
        self.cls_convs = _towers(in_channels, feat_channels, stacked_convs, len(strides), share_conv, sep_bn, norm)
        self.reg_convs = _towers(in_channels, feat_channels, stacked_convs, len(strides), share_conv, sep_bn, norm)
        num_levels = len(strides)
        pad = pred_kernel_size // 2
        self.rtm_cls = nn.ModuleList(
            nn.Conv2d(feat_channels, num_classes, pred_kernel_size, padding=pad) for _ in range(num_levels)
        )
        self.rtm_reg = nn.ModuleList(
            nn.Conv2d(feat_channels, 4, pred_kernel_size, padding=pad) for _ in range(num_levels)
        )
        self.init_weights()

    def init_weights(self) -> None:
        """Every conv normal(0, 0.01) with zero bias, BN (1, 0); cls bias = -log((1 - p) / p)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        cls_bias = -math.log((1.0 - self.prior_prob) / self.prior_prob)
        for conv in self.rtm_cls:
            nn.init.constant_(conv.bias, cls_bias)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Neck maps [B, in_channels, H_l, W_l] -> (cls logits [B, C, H_l, W_l], ltrb pixels [B, 4, H_l, W_l])."""
        if len(feats) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature maps (one per stride), got {len(feats)}")
        cls_scores: list[Tensor] = []
        bbox_dists: list[Tensor] = []
        for level, (x, stride) in enumerate(zip(feats, self.strides)):
            cls_feat = x
            for layer in self.cls_convs[level]:
                cls_feat = layer(cls_feat)
            reg_feat = x
            for layer in self.reg_convs[level]:
                reg_feat = layer(reg_feat)
            cls_scores.append(self.rtm_cls[level](cls_feat))
            reg = self.rtm_reg[level](reg_feat)
            bbox_dists.append((reg.exp() if self.exp_on_reg else reg) * stride)
        return cls_scores, bbox_dists


def _check_args(in_channels: int, num_classes: int, feat_channels: int, stacked_convs: int, share_conv: bool,
                sep_bn: bool, strides: tuple, pred_kernel_size: int, prior_prob: float) -> None:
    """Raise a ValueError naming the first argument of :class:`RTMDetHead` that cannot work."""
    for name, value, low in (
        ("in_channels", in_channels, 1),
        ("num_classes", num_classes, 1),
        ("feat_channels", feat_channels, 1),
        ("stacked_convs", stacked_convs, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not strides or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in strides):
        raise ValueError(f"strides must be a non-empty sequence of integers >= 1, got {strides!r}")
    check_odd_kernel(pred_kernel_size, "pred_kernel_size")
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"prior_prob must lie strictly between 0 and 1, got {prior_prob!r}")
    if not share_conv and not sep_bn:
        raise ValueError(
            "sep_bn=False (BN shared across levels) needs share_conv=True; valid pairs are "
            "(share_conv=True, sep_bn=True) SepBN, (True, False) fully shared, (False, True) separated"
        )


def _towers(in_channels: int, feat_channels: int, stacked_convs: int, num_levels: int, share_conv: bool,
            sep_bn: bool, norm: dict) -> nn.ModuleList:
    """One tower of ``stacked_convs`` ConvBNAct per level, shared as the head's sharing mode says."""

    def tower() -> nn.ModuleList:
        return nn.ModuleList(
            ConvBNAct(in_channels if i == 0 else feat_channels, feat_channels, 3, **norm) for i in range(stacked_convs)
        )

    if share_conv and not sep_bn:
        shared = tower()  # the same ConvBNAct objects (conv and BN) at every level
        return nn.ModuleList(shared for _ in range(num_levels))
    towers = nn.ModuleList(tower() for _ in range(num_levels))
    if share_conv:  # SepBN: tie every level's conv to level 0's, keep the per-level BN
        for level in range(1, num_levels):
            for i in range(stacked_convs):
                towers[level][i].conv = towers[0][i].conv
    return towers
