"""Freeze the first backbone stages for fine-tuning, with mmdetection's ``frozen_stages`` meaning.

``num_stages = -1`` freezes nothing, ``0`` the stem, ``k`` the stem and stages 1..k. A frozen stage
keeps its weights (``requires_grad=False``) *and* its BatchNorm statistics: its BNs normalise with the
running statistics and never update them, even while the rest of the network trains.

How the BNs stay in eval mode: each frozen BN gets a forward pre-hook that switches it to eval before
every call. ``network.train()`` still flips its ``training`` flag back to True (so the flag reads True
between ``train()`` and the next forward), but no forward can ever run in training mode. A hook, unlike
a ``train()`` override, lives in the module itself: it survives ``copy.deepcopy`` (the EMA copy), DDP
wrapping and ``network.train()`` calls made by any trainer, and needs no change to the model classes.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from rtmdet_exp.models.backbone import CSPNeXt

__all__ = ["backbone_stages", "freeze_backbone_stages"]

_FROZEN_FLAG = "_rtmdet_frozen_bn"


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """Stem then stages of a backbone, in forward order (``stage_modules()`` when it has one)."""
    stage_modules = getattr(backbone, "stage_modules", None)
    if callable(stage_modules):
        return list(stage_modules())
    if isinstance(backbone, CSPNeXt):
        return [backbone.stem, *backbone.stages]
    raise ValueError(
        f"cannot freeze stages of a {type(backbone).__name__} backbone: it is neither CSPNeXt nor has "
        "stage_modules() (the stem and stages in forward order)"
    )


def _stay_in_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen BatchNorm: use and keep the running statistics."""
    if module.training:
        module.train(False)


def freeze_backbone_stages(network: nn.Module, num_stages: int) -> None:
    """Freeze the stem (stage 0) and stages 1..``num_stages`` of ``network.backbone`` in place.

    Args:
        network: an RTMDetNet (anything with a ``backbone`` attribute of a supported kind).
        num_stages: mmdet's ``frozen_stages``: -1 none, 0 the stem, k the stem and stages 1..k.

    Raises:
        ValueError: ``num_stages`` out of range for this backbone, or a backbone without stages.
    """
    backbone = getattr(network, "backbone", None)
    if backbone is None:
        raise ValueError(f"{type(network).__name__} has no `backbone` to freeze")
    stages = backbone_stages(backbone)
    last = len(stages) - 1
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or not -1 <= num_stages <= last:
        raise ValueError(
            f"num_stages (frozen backbone stages) must be an integer from -1 (none) through {last} "
            f"(the stem and all {last} stages of this {type(backbone).__name__}), got {num_stages!r}"
        )
    for stage in stages[: num_stages + 1]:
        stage.requires_grad_(False)
        for module in stage.modules():
            if isinstance(module, _BatchNorm):
                module.train(False)
                if not getattr(module, _FROZEN_FLAG, False):
                    module.register_forward_pre_hook(_stay_in_eval)
                    setattr(module, _FROZEN_FLAG, True)
