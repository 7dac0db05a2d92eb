"""The five RTMDet sizes as one table (spec section 0): each variant is a depth and a width multiplier
over the same CSPNeXt / CSPNeXt-PAFPN / SepBN-head layout, plus mmdet's per-variant ``exp_on_reg``.

:func:`model_config` turns a row into the ``model`` config node (the `_target_` tree that
:class:`~rtmdet_exp.models.network.RTMDetNet` is built from); the experiment layer registers one
node per row as ``model=rtmdet_<name>``. Every key of the node is an argument of a constructor
(``CSPNeXt``, ``CSPNeXtPAFPN``, ``RTMDetHead``), documented there, except ``variant`` (the row's
name, read by the paper recipe), ``init_from`` (a weights file to start from) and ``frozen_stages``
(backbone stages to freeze, mmdetection's meaning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["VARIANTS", "Variant", "model_config"]


@dataclass(frozen=True)
class Variant:
    """One row of the table: the multipliers and the reference size at 640 px, 80 classes."""

    deepen_factor: float  # block count = max(round(base * deepen_factor), 1)
    widen_factor: float  # channels = int(base * widen_factor)
    exp_on_reg: bool  # exp() on the box distances (mmdet: l and x only)
    params_m: float  # parameters in millions (computed, spec table 0)
    gmacs: float  # GMACs at 640x640 (computed, spec table 0; the README's "FLOPs")


VARIANTS: dict[str, Variant] = {
    "tiny": Variant(0.167, 0.375, False, 4.896, 8.04),
    "s": Variant(0.33, 0.5, False, 8.887, 14.76),
    "m": Variant(0.67, 0.75, False, 24.709, 39.07),
    "l": Variant(1.0, 1.0, True, 52.316, 79.90),
    "x": Variant(1.33, 1.25, True, 94.856, 141.19),
}


def model_config(name: str) -> dict[str, Any]:
    """The ``model`` config node of variant ``name`` (a key of :data:`VARIANTS`).

    The neck follows the backbone's depth, width and kernel through interpolations, falling back to
    the variant's own values when the backbone is not CSPNeXt (``backbone=timm``); head and neck
    BatchNorm settings follow the backbone's.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown RTMDet variant {name!r}; valid: {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    norm = {"bn_momentum": "${..backbone.bn_momentum}", "bn_eps": "${..backbone.bn_eps}"}
    return {
        "_target_": "rtmdet_exp.models.network.RTMDetNet",
        "_convert_": "all",
        "variant": name,
        "init_from": None,
        "frozen_stages": -1,  # mmdetection's meaning: -1 none, 0 the stem, k the stem and stages 1..k
        "num_classes": "${data.num_classes}",
        "backbone": {
            "_target_": "rtmdet_exp.models.backbone.CSPNeXt",
            "deepen_factor": v.deepen_factor,
            "widen_factor": v.widen_factor,
            "kernel_size": 5,
            "channel_attention": True,
            "expand_ratio": 0.5,
            "arch_blocks": [3, 6, 6, 3],
            "bn_momentum": 0.1,  # the effective RTMDet BN (SyncBN defaults), not the class defaults
            "bn_eps": 1e-5,
        },
        "neck": {
            "_target_": "rtmdet_exp.models.neck.CSPNeXtPAFPN",
            "_partial_": True,  # in_channels come from the backbone
            "deepen_factor": f"${{oc.select:..backbone.deepen_factor,{v.deepen_factor}}}",
            "widen_factor": f"${{oc.select:..backbone.widen_factor,{v.widen_factor}}}",
            "kernel_size": "${oc.select:..backbone.kernel_size,5}",
            "expand_ratio": 0.5,
            "out_channels": None,
            "num_csp_blocks": None,
            **norm,
        },
        "head": {
            "_target_": "rtmdet_exp.models.head.RTMDetHead",
            "_partial_": True,  # in_channels and num_classes come from the neck and the model
            "feat_channels": None,
            "stacked_convs": 2,
            "share_conv": True,
            "sep_bn": True,
            "strides": [8, 16, 32],
            "exp_on_reg": v.exp_on_reg,
            "pred_kernel_size": 1,
            "prior_prob": 0.01,
            **norm,
        },
    }
