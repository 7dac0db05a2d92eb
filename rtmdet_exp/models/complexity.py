"""Parameter and multiply-accumulate counts, to check variants against the RTMDet tables.

MACs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts only ops it has a formula for:
convolutions and matrix products (conv, mm, addmm, bmm, attention). BatchNorm, activations, pooling,
upsampling, conv bias and elementwise ops count zero. It reports FLOPs = 2 x MACs (one multiply plus
one add). The "FLOPs" column of the RTMDet README is really MACs, so compare it with ``macs`` here
(spec section 0: conv MACs reproduce the README within 0.5%).

The counts depend on shapes only, so by default the forward runs on the ``meta`` device (parameters
on a deep copy whose tensors are shape-only stand-ins): RTMDet-x at 640 costs a few seconds
under a second instead of ~10 s of real CPU convolutions. ``meta=False`` runs the real module.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["breakdown", "count_macs", "count_params"]


def count_params(module: nn.Module) -> int:
    """Number of unique parameter elements; a parameter shared by several layers counts once."""
    return sum(p.numel() for p in module.parameters())


def _dummy_input(module: nn.Module, img_size: int | tuple[int, int], in_channels: int, meta: bool) -> torch.Tensor:
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    if h < 1 or w < 1 or in_channels < 1:
        raise ValueError(
            f"img_size and in_channels must be positive, got img_size={img_size!r}, in_channels={in_channels!r}"
        )
    p = next(module.parameters(), None)
    device = torch.device("meta") if meta else (p.device if p is not None else torch.device("cpu"))
    dtype = p.dtype if p is not None else torch.float32
    return torch.zeros(1, in_channels, h, w, device=device, dtype=dtype)  # [1, C, H, W]


def _run(model: nn.Module, x: torch.Tensor, meta: bool) -> None:
    """One forward of ``model`` on ``x``; with ``meta`` the parameters and buffers are meta stand-ins."""
    if not meta:
        model(x)
        return
    # Count on a shape-only copy: the memo maps every tensor to a meta stand-in, so deepcopy copies
    # no data and keeps shared weights shared. (functional_call on the real module leaves meta
    # tensors behind in modules that share a conv, like the SepBN head.)
    tensors = [*model.parameters(), *model.buffers()]
    memo = {
        id(t): (nn.Parameter(torch.empty_like(t, device="meta"), t.requires_grad) if isinstance(t, nn.Parameter)
                else torch.empty_like(t, device="meta"))
        for t in tensors
    }
    copy.deepcopy(model, memo)(x)


def breakdown(
    model: nn.Module,
    parts: Mapping[str, nn.Module] | None = None,
    img_size: int | tuple[int, int] = 640,
    in_channels: int = 3,
    meta: bool = True,
) -> dict[str, dict[str, float]]:
    """Params, FLOPs and MACs of ``model`` and of each of its sub-modules in ``parts``.

    One eval-mode, no-grad forward of a zero image of batch 1 (on ``meta`` unless ``meta=False``);
    every sub-module's train/eval flag is restored afterwards. A part's FLOPs are the counter's growth
    across that part's calls, so a part called several times adds up and nothing depends on module
    names. ``parts`` defaults to ``model.parts()`` when the model has it (``RTMDetNet``: backbone,
    neck, head). Returns ``{name: {"params", "flops", "macs"}}`` with a ``"total"`` entry for the whole model.
    """
    if parts is None:
        parts_fn = getattr(model, "parts", None)
        parts = parts_fn() if callable(parts_fn) else {}
    if "total" in parts:
        raise ValueError("parts may not use the reserved name 'total'")
    x = _dummy_input(model, img_size, in_channels, meta)
    flops = {name: 0 for name in parts}
    start: dict[str, int] = {}
    counter = FlopCounterMode(display=False)
    handles = []
    for name, part in parts.items():

        def pre_hook(_m: nn.Module, _args: object, name: str = name) -> None:
            start[name] = counter.get_total_flops()

        def post_hook(_m: nn.Module, _args: object, _out: object, name: str = name) -> None:
            flops[name] += counter.get_total_flops() - start[name]

        handles.append(part.register_forward_pre_hook(pre_hook))
        handles.append(part.register_forward_hook(post_hook))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), counter:
            _run(model, x, meta)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    total = counter.get_total_flops()
    out = {
        name: {"params": count_params(part), "flops": flops[name], "macs": flops[name] / 2}
        for name, part in parts.items()
    }
    out["total"] = {"params": count_params(model), "flops": total, "macs": total / 2}
    return out


def count_macs(
    module: nn.Module, img_size: int | tuple[int, int] = 640, in_channels: int = 3, meta: bool = True
) -> dict[str, float]:
    """FLOPs and MACs of one forward at ``img_size`` (int or (H, W)), batch 1, eval mode, no grad.

    Returns ``{"flops": conv/matmul FLOPs as torch counts them, "macs": flops / 2}``; see the module
    docstring for what is and is not counted.
    """
    total = breakdown(module, parts={}, img_size=img_size, in_channels=in_channels, meta=meta)["total"]
    return {"flops": total["flops"], "macs": total["macs"]}
