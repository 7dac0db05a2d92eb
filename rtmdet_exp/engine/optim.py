"""Optimiser construction: parameter groups without decay on norms and biases, AdamW or SGD.

The RTMDet recipe (spec section 4) is AdamW, lr 0.004 for a total batch of 256, weight decay 0.05,
with ``norm_decay_mult=0``, ``bias_decay_mult=0`` and ``bypass_duplicate=True``: the head shares
its conv weights across the pyramid levels, so a parameter must land in exactly one group or
decay would be applied to it several times per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

OPTIMIZERS = ("adamw", "sgd")
NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split ``model``'s parameters into a decayed group and a non-decayed one.

    Parameters of norm layers (batch/instance norm, GroupNorm, LayerNorm) and every parameter
    named ``bias`` get no weight decay; all others (conv and linear weights) get ``weight_decay``.
    Each parameter appears once, de-duplicated by identity, even when a module or a tensor is
    shared by several parents. Empty groups are left out. Each group carries a ``name`` key
    (``"decay"`` / ``"no_decay"``) for logging; torch optimisers keep extra keys untouched.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    seen: set[int] = set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if is_norm or name == "bias":
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 0.004,
    weight_decay: float = 0.05,
    betas: Sequence[float] = (0.9, 0.999),
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Build ``adamw`` (the recipe) or ``sgd`` (with momentum) over :func:`param_groups`.

    ``lr`` is used as given: scale it for the actual batch with :func:`scale_lr` first.
    ``betas`` only concern AdamW and ``momentum`` only SGD.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"name must be one of {OPTIMIZERS}, got {name!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two values in [0, 1), got {tuple(betas)}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("model has no parameters to optimise")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def scale_lr(base_lr: float, base_batch: int, batch: int) -> float:
    """Linear scaling rule: ``base_lr`` was tuned for ``base_batch`` (0.004 for 256 in the recipe)."""
    if base_lr <= 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    if base_batch <= 0:
        raise ValueError(f"base_batch must be > 0, got {base_batch}")
    if batch <= 0:
        raise ValueError(f"batch must be > 0, got {batch}")
    return base_lr * batch / base_batch
