"""The detector as deployed: images of one fixed size in, class scores and decoded boxes out.

:class:`InferenceModel` is what the fast path replays, what export traces and what the latency
measurement times: normalisation, the (conv+BN fused) network in fp32/fp16/bf16, sigmoid scores and
boxes decoded from the grid priors, which are a constant of the input size. Its outputs equal
``Detector.forward_flat``'s (sigmoid of the logits, and the boxes) to float rounding.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from rtmdet_exp.models.fuse import fuse_conv_bn
from rtmdet_exp.ops.boxes import distance2bbox
from rtmdet_exp.ops.priors import grid_priors

__all__ = ["DTYPES", "InferenceModel", "parse_dtype"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    """``fp32`` | ``fp16`` | ``bf16`` as a torch dtype; ValueError naming the valid ones otherwise."""
    if name not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _size_pair(img_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if h < 1 or w < 1:
        raise ValueError(f"img_size must be positive, got {img_size!r}")
    return int(h), int(w)


def _plain_copy(network: nn.Module, fuse: bool) -> nn.Module:
    """An eval copy of ``network`` (fused or not) that runs its own modules, not a compiled original.

    ``nn.Module.compile()`` keeps a compiled bound method of the original module; a deep copy would
    carry it over and silently run the original, so it is dropped here.
    """
    out = fuse_conv_bn(network) if fuse else copy.deepcopy(network).eval()
    for module in out.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
    return out


class InferenceModel(nn.Module):
    """uint8 (or float 0..255) BGR images ``[B,3,H,W]`` at ``img_size`` -> ``(scores, boxes)``.

    ``scores [B,N,C]`` are float32 class probabilities, ``boxes [B,N,4]`` float32 xyxy in input
    pixels (not clipped), priors level-major as in ``Detector.forward_flat``.

    Args:
        detector: a :class:`~rtmdet_exp.models.detector.Detector` (its network is copied, never changed).
        img_size: the input size, ``S`` or ``(H, W)``; the priors are built for it.
        fuse: fold every BatchNorm into its conv (:func:`rtmdet_exp.models.fuse.fuse_conv_bn`).
        dtype: the network's precision; normalisation and decoding stay in float32.
        channels_last: NHWC memory layout for the network (faster convs on recent GPUs).
        compile: ``torch.compile`` the network (Inductor, a static shape per batch size) for large
            batches: rtmdet_s at batch 32, fp16, under a CUDA graph took 5.2 ms instead of 10.0 on an
            H200 (bench/latency.py), after ~30 s of building per batch size. Batch 1 gains little.
    """

    def __init__(self, detector: Any, img_size: int | tuple[int, int], fuse: bool = True,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False, compile: bool = False) -> None:
        super().__init__()
        self.img_hw = _size_pair(img_size)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.network = _plain_copy(detector.network, fuse).to(dtype=dtype, memory_format=self.memory_format)
        if compile:
            self.network.compile(dynamic=False)  # in place: the copy's state-dict names stay
        self.num_classes = int(detector.num_classes)
        self.strides = tuple(int(s) for s in detector.strides)
        self.rgb = bool(detector.input_spec.rgb)
        device = detector.mean.device
        self.register_buffer("mean", detector.mean.detach().clone().float(), persistent=False)  # [1, 3, 1, 1]
        self.register_buffer("std", detector.std.detach().clone().float(), persistent=False)
        h, w = self.img_hw
        self.feature_hw = [(math.ceil(h / s), math.ceil(w / s)) for s in self.strides]  # stride-2 convs round up
        self.level_sizes = [fh * fw for fh, fw in self.feature_hw]
        self.register_buffer("priors", grid_priors(self.feature_hw, self.strides, device=device), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """0..255 BGR images to the network's input (channel order, statistics, precision, layout)."""
        x = images.float()
        if self.rgb:
            x = x.flip(1)  # [B, 3, H, W] BGR -> RGB
        x = (x - self.mean) / self.std
        return x.to(dtype=self.dtype, memory_format=self.memory_format)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if tuple(images.shape[-2:]) != self.img_hw:
            raise ValueError(f"input is {tuple(images.shape[-2:])} (H, W); this model was built for {self.img_hw}")
        cls_scores, bbox_dists = self.network(self.normalize(images))
        got = [tuple(c.shape[-2:]) for c in cls_scores]
        if got != self.feature_hw:
            raise ValueError(f"feature maps {got} differ from the expected {self.feature_hw} for input {self.img_hw}")
        batch = images.shape[0]
        # [B,C,H,W] -> [B,H*W,C] per level, levels concatenated (level-major, row-major inside).
        logits = torch.cat([c.permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes) for c in cls_scores], 1)
        dists = torch.cat([d.permute(0, 2, 3, 1).reshape(batch, -1, 4) for d in bbox_dists], 1)
        boxes = distance2bbox(self.priors[None, :, :2], dists.float())  # [B, N, 4] xyxy pixels
        return logits.float().sigmoid(), boxes
