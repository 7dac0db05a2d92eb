"""The five RTMDet networks built straight from the model classes, for unit tests that must not depend
on the config layer. The numbers are spec section 0's: deepen, widen, exp_on_reg (mmdet: l and x)."""

from __future__ import annotations

from functools import partial

from rtmdet_exp.models.backbone import CSPNeXt
from rtmdet_exp.models.head import RTMDetHead
from rtmdet_exp.models.neck import CSPNeXtPAFPN
from rtmdet_exp.models.network import RTMDetNet

SPEC_VARIANTS: dict[str, tuple[float, float, bool]] = {
    "tiny": (0.167, 0.375, False),
    "s": (0.33, 0.5, False),
    "m": (0.67, 0.75, False),
    "l": (1.0, 1.0, True),
    "x": (1.33, 1.25, True),
}


def spec_network(variant: str, num_classes: int = 80) -> RTMDetNet:
    """RTMDet-``variant`` as mmdetection defines it (SepBN head, BN momentum 0.1 / eps 1e-5)."""
    deepen, widen, exp_on_reg = SPEC_VARIANTS[variant]
    return RTMDetNet(
        CSPNeXt(deepen_factor=deepen, widen_factor=widen),
        partial(CSPNeXtPAFPN, deepen_factor=deepen, widen_factor=widen),
        partial(RTMDetHead, exp_on_reg=exp_on_reg),
        num_classes=num_classes,
    )
