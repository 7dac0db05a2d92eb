"""Random weights *and* random BatchNorm state for tests that compare two computations of one network.

A freshly built network has BN running mean 0, variance 1, weight 1 and bias 0: its BNs are nearly the
identity, so a BN loaded into the wrong place, or a conv+BN fusion that ignored the statistics, would
still pass. These tests randomise every floating-point tensor in the state dict instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def randomise(model: nn.Module, seed: int) -> None:
    """In place: conv/linear weights of unit gain, small biases, BN affine and running stats all random."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(noise * 0.2)
            elif name.endswith("bn.weight"):
                tensor.copy_(1.0 + 0.2 * noise)
            elif tensor.dim() > 1:  # keep activations of order 1 through the depth: std 1 / sqrt(fan_in)
                tensor.copy_(noise / math.sqrt(tensor[0].numel()))
            else:
                tensor.copy_(noise * 0.1)
