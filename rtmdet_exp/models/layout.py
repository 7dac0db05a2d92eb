"""Memory layout of a network on its device: channels_last, except where oneDNN is faster without it.

``trainer.channels_last`` asks for NHWC tensors, which cuDNN's tensor-core kernels and oneDNN's convs
want. On the CPU one part is faster in NCHW: the CSPNeXt stem (3 -> 12/24 channels at half the input
size), whose first conv has 3 input channels and whose BatchNorm backward in channels_last takes
~10x as long as in NCHW for so few channels (bench/NOTES.md, "The CPU step"). A module lists such
parts by attribute name in ``cpu_contiguous_parts``; :func:`to_channels_last` leaves them in NCHW on the
CPU, and the module moves its activations between the layouts with :func:`relayout`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["layout_of", "relayout", "to_channels_last"]


def layout_of(conv: nn.Conv2d) -> torch.memory_format:
    """The memory format a conv's weight is stored in (channels_last or contiguous)."""
    weight = conv.weight
    if weight.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class _Relayout(torch.autograd.Function):
    """``x.contiguous(memory_format=layout)`` whose gradient returns in the layout of ``x``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, layout: torch.memory_format) -> Tensor:
        ctx.source = torch.contiguous_format if x.is_contiguous() else torch.channels_last
        return x.contiguous(memory_format=layout)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.contiguous(memory_format=ctx.source), None


def relayout(x: Tensor, layout: torch.memory_format) -> Tensor:
    """``x`` in ``layout``, its gradient handed back in x's own layout (a no-op when x is already so).

    A plain ``contiguous`` would pass the gradient on in ``layout``: the layers before it would then
    mix layouts in their backward, which on the CPU is slower than either layout alone.
    """
    if x.is_contiguous(memory_format=layout):
        return x
    return _Relayout.apply(x, layout)


def to_channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """Convert ``model`` to channels_last in place; on the CPU keep each ``cpu_contiguous_parts`` in NCHW."""
    model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        for module in model.modules():
            for name in getattr(module, "cpu_contiguous_parts", ()):
                getattr(module, name).to(memory_format=torch.contiguous_format)
    return model
