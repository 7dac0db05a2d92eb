"""The Detector feeds each backbone the input its weights expect: mmdet's BGR statistics for CSPNeXt,
RGB with the model's own pretrained mean/std for timm models."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from rtmdet_exp.models.backbone import CSPNeXt
from rtmdet_exp.models.detector import Detector
from rtmdet_exp.models.head import RTMDetHead
from rtmdet_exp.models.neck import CSPNeXtPAFPN
from rtmdet_exp.models.network import RTMDetNet
from rtmdet_exp.models.timm_backbone import TimmBackbone

# One BGR pixel value per channel, as OpenCV loads images.
BLUE, GREEN, RED = 10.0, 20.0, 30.0


def detector(backbone: nn.Module, **kwargs: object) -> Detector:
    net = RTMDetNet(
        backbone, partial(CSPNeXtPAFPN, widen_factor=0.125, deepen_factor=0.167), partial(RTMDetHead), num_classes=2
    )
    return Detector(net, assigner=None, cls_loss=nn.Identity(), box_loss=nn.Identity(), **kwargs)


def bgr_image() -> torch.Tensor:
    image = torch.empty(1, 3, 2, 2, dtype=torch.uint8)
    image[:, 0], image[:, 1], image[:, 2] = BLUE, GREEN, RED
    return image


def channels(normalised: torch.Tensor) -> list[float]:
    return [normalised[0, c, 0, 0].item() for c in range(3)]


def test_cspnext_keeps_mmdet_bgr_statistics() -> None:
    det = detector(CSPNeXt(deepen_factor=0.167, widen_factor=0.125))
    want = [(BLUE - 103.53) / 57.375, (GREEN - 116.28) / 57.12, (RED - 123.675) / 58.395]  # spec 1.7
    assert channels(det.normalize(bgr_image())) == pytest.approx(want, rel=1e-6)


def test_timm_imagenet_model_gets_rgb_and_imagenet_statistics() -> None:
    det = detector(TimmBackbone("resnet10t", out_indices=(2, 3, 4)))
    # timm's ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), RGB, on 0..1
    want = [
        (RED / 255 - 0.485) / 0.229,
        (GREEN / 255 - 0.456) / 0.224,
        (BLUE / 255 - 0.406) / 0.225,
    ]
    assert channels(det.normalize(bgr_image())) == pytest.approx(want, rel=1e-5)


def test_timm_model_statistics_come_from_its_own_pretrained_config() -> None:
    # TF-ported MobileNetV3 weights were trained with mean = std = 0.5 (Inception preprocessing).
    det = detector(TimmBackbone("tf_mobilenetv3_small_minimal_100", out_indices=(2, 3, 4)))
    want = [(RED / 255 - 0.5) / 0.5, (GREEN / 255 - 0.5) / 0.5, (BLUE / 255 - 0.5) / 0.5]
    assert channels(det.normalize(bgr_image())) == pytest.approx(want, rel=1e-5)
    assert det.input_spec.rgb


def test_explicit_statistics_override_the_network() -> None:
    det = detector(TimmBackbone("resnet10t", out_indices=(2, 3, 4)), mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    assert channels(det.normalize(bgr_image())) == pytest.approx([(BLUE - 1) / 2, (GREEN - 2) / 4, (RED - 3) / 8])
