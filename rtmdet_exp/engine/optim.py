"""Optimiser construction: parameter groups without decay on norms and biases, AdamW or SGD.

The RTMDet recipe (spec section 4) is AdamW, lr 0.004 for a total batch of 256, weight decay 0.05,
with ``norm_decay_mult=0``, ``bias_decay_mult=0`` and ``bypass_duplicate=True``: the head shares
its conv weights across the pyramid levels, so a parameter must land in exactly one group or
decay would be applied to it several times per step.

For a training step captured in a CUDA graph, :func:`use_device_lr` turns each group's learning rate
into a 0-d tensor on the device (the fused kernels read it from there at every replay) and makes the
scheduler write its values into those tensors; :func:`use_host_lr` goes back to plain floats.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.optim.lr_scheduler import LRScheduler

NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float, backbone_lr_mult: float = 1.0) -> list[dict]:
    """Split ``model``'s parameters into groups by weight decay and (optionally) by backbone.

    Parameters of norm layers (batch/instance norm, GroupNorm, LayerNorm) and every parameter
    named ``bias`` get no weight decay; all others (conv and linear weights) get ``weight_decay``.
    With ``backbone_lr_mult != 1``, parameters under a module named ``backbone`` form groups of their
    own whose ``lr_mult`` is that factor (applied by :func:`_optimizer_groups`). Each parameter appears
    once, de-duplicated by identity, even when a module or a tensor is shared by several parents.
    Frozen parameters (``requires_grad=False``) are left out. Empty groups are dropped. Each group
    carries a ``name`` key for logging; torch optimisers keep extra keys untouched.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if backbone_lr_mult <= 0:
        raise ValueError(f"backbone_lr_mult must be > 0, got {backbone_lr_mult}")
    split_backbone = backbone_lr_mult != 1.0
    seen: set[int] = set()
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES)
        in_backbone = split_backbone and "backbone" in module_name.split(".")
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            decays = not (is_norm or name == "bias")
            buckets.setdefault((in_backbone, decays), []).append(param)
    groups = []
    for (in_backbone, decays), params in sorted(buckets.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        name = ("backbone_" if in_backbone else "") + ("decay" if decays else "no_decay")
        groups.append({"name": name, "params": params, "weight_decay": weight_decay if decays else 0.0,
                       "lr_mult": backbone_lr_mult if in_backbone else 1.0})
    return groups


def _optimizer_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float) -> list[dict]:
    """:func:`param_groups` with each group's ``lr`` set to ``lr * lr_mult``."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    groups = param_groups(model, weight_decay, backbone_lr_mult)
    if not groups:
        raise ValueError("model has no trainable parameters to optimise")
    for group in groups:
        group["lr"] = lr * group["lr_mult"]
    return groups


def _fused_ok(model: nn.Module) -> bool:
    """Fused kernels (one launch for all tensors, on-device step skipping) need float params on CPU/CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def adamw(
    model: nn.Module,
    lr: float = 0.004,
    weight_decay: float = 0.05,
    betas: Sequence[float] = (0.9, 0.999),
    backbone_lr_mult: float = 1.0,
) -> torch.optim.AdamW:
    """AdamW (the recipe) over :func:`param_groups`, fused where possible.

    ``lr`` is used as given: the experiment layer scales it to the total batch first.
    """
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two values in [0, 1), got {tuple(betas)}")
    groups = _optimizer_groups(model, lr, weight_decay, backbone_lr_mult)
    return torch.optim.AdamW(groups, lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay,
                             fused=_fused_ok(model))


def sgd(
    model: nn.Module,
    lr: float = 0.01,
    weight_decay: float = 0.0005,
    momentum: float = 0.9,
    nesterov: bool = False,
    backbone_lr_mult: float = 1.0,
) -> torch.optim.SGD:
    """SGD with momentum over :func:`param_groups` (L2 weight decay), fused where possible."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov needs momentum > 0")
    groups = _optimizer_groups(model, lr, weight_decay, backbone_lr_mult)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                           fused=_fused_ok(model))


def scale_lr(base_lr: float, base_batch: int, batch: int) -> float:
    """Linear scaling rule: ``base_lr`` was tuned for ``base_batch`` (0.004 for 256 in the recipe)."""
    if base_lr <= 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    if base_batch <= 0:
        raise ValueError(f"base_batch must be > 0, got {base_batch}")
    if batch <= 0:
        raise ValueError(f"batch must be > 0, got {batch}")
    return base_lr * batch / base_batch


def use_device_lr(optimizer: torch.optim.Optimizer, scheduler: LRScheduler, device: torch.device) -> None:
    """Each group's ``lr`` as a float32 0-d tensor on ``device``, set ``capturable`` (CUDA-graph capture).

    The scheduler keeps host floats as its base values, so ``scheduler.step()`` writes each new rate
    into the tensors with ``fill_`` (a kernel launch, no host sync) and a captured optimiser step reads
    it on every replay. Needs a fused optimiser (the kernels that take a tensor ``lr``).
    """
    if not optimizer.defaults.get("fused"):
        raise ValueError(f"a device-tensor lr needs a fused optimiser; {type(optimizer).__name__} is not fused "
                         f"(its parameters must be float tensors on the CPU or a GPU)")
    for group in optimizer.param_groups:
        value = float(group["lr"])
        group["lr"] = torch.tensor(value, dtype=torch.float32, device=device)
        if "capturable" in group:
            group["capturable"] = True
    scheduler.base_lrs = [float(v) for v in scheduler.base_lrs]


def use_host_lr(optimizer: torch.optim.Optimizer, scheduler: LRScheduler) -> None:
    """Undo :func:`use_device_lr` (e.g. a checkpoint of a graphed run resumed in eager mode)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"] = float(group["lr"])
    scheduler.base_lrs = [float(v) for v in scheduler.base_lrs]


def host_lr(optimizer: torch.optim.Optimizer, scheduler: LRScheduler) -> float:
    """The first group's current learning rate as a float, without reading a device tensor.

    For a ``LambdaLR`` over device-tensor rates it is recomputed from the scheduler's host values
    (the same float that the scheduler wrote into the tensor).
    """
    value = optimizer.param_groups[0]["lr"]
    if not isinstance(value, Tensor):
        return float(value)
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is not None:
        return float(scheduler.base_lrs[0]) * float(lambdas[0](scheduler.last_epoch))
    return float(value)  # another scheduler: one read of the device value
