"""Parity with mmdetection's own RTMDet: its checkpoints load into our network, which then computes
the same class logits and box distances, for all five variants.

No released checkpoint can be downloaded here, so each test makes one the way mmdet does: mmdet 3.3's
RTMDet is built from a config dict, every weight *and* every BN running statistic is randomised (a
fresh model's BN would be the identity and hide a wrong BN mapping), and ``{"meta", "state_dict"}``
is saved with mmengine's config text in ``meta["cfg"]``. mmcv-lite lacks mmcv's compiled extension;
RTMDet's forward pass never calls it, and tests/support/mmcv_ext_stub.py stands in for it at import.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rtmdet_exp.experiment import compose
from rtmdet_exp.experiment.build import build_network
from rtmdet_exp.models.weights import WeightsError, load_weights
from tests.support.random_state import randomise

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")]

# Spec section 0: deepen, widen, CSP blocks in the neck, exp_on_reg (mmdet: l and x only).
VARIANTS: dict[str, tuple[float, float, int, bool]] = {
    "tiny": (0.167, 0.375, 1, False),
    "s": (0.33, 0.5, 1, False),
    "m": (0.67, 0.75, 2, False),
    "l": (1.0, 1.0, 3, True),
    "x": (1.33, 1.25, 4, True),
}
# Non-square, so that a transposed map or prior grid cannot pass: levels 12x8, 6x4, 3x2.
INPUT_SHAPE = (2, 3, 96, 64)


@pytest.fixture(scope="module")
def mm() -> dict[str, Any]:
    """mmdet's model registry and mmengine's Config (the dev extra installs them)."""
    try:
        from tests.support.mmcv_ext_stub import install

        install()
        import mmdet
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import Config
    except ImportError as err:
        pytest.fail(f"mmdet 3.3, mmengine and mmcv-lite come with the dev extra: pip install -e '.[dev]' ({err})")
    register_all_modules()
    return {"MODELS": MODELS, "Config": Config, "version": mmdet.__version__}


def mmdet_config(variant: str, num_classes: int = 80) -> dict[str, Any]:
    """mmdet's RTMDet model config for ``variant`` (configs/rtmdet/rtmdet_*_8xb32-300e_coco.py), with BN
    instead of SyncBN: the same tensors, and no process group needed."""
    deepen, widen, csp_blocks, exp_on_reg = VARIANTS[variant]
    norm, act = dict(type="BN"), dict(type="SiLU", inplace=True)
    width = int(256 * widen)
    return dict(
        type="RTMDet",
        data_preprocessor=dict(
            type="DetDataPreprocessor", mean=[103.53, 116.28, 123.675], std=[57.375, 57.12, 58.395], bgr_to_rgb=False
        ),
        backbone=dict(
            type="CSPNeXt", arch="P5", expand_ratio=0.5, deepen_factor=deepen, widen_factor=widen,
            channel_attention=True, norm_cfg=norm, act_cfg=act,
        ),
        neck=dict(
            type="CSPNeXtPAFPN", in_channels=[int(256 * widen), int(512 * widen), int(1024 * widen)],
            out_channels=width, num_csp_blocks=csp_blocks, expand_ratio=0.5, norm_cfg=norm, act_cfg=act,
        ),
        bbox_head=dict(
            type="RTMDetSepBNHead", num_classes=num_classes, in_channels=width, stacked_convs=2,
            feat_channels=width, anchor_generator=dict(type="MlvlPointGenerator", offset=0, strides=[8, 16, 32]),
            bbox_coder=dict(type="DistancePointBBoxCoder"),
            loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
            with_objectness=False, exp_on_reg=exp_on_reg, share_conv=True, pred_kernel_size=1,
            norm_cfg=norm, act_cfg=act,
        ),
        train_cfg=dict(assigner=dict(type="DynamicSoftLabelAssigner", topk=13), allowed_border=-1, pos_weight=-1),
        test_cfg=dict(
            nms_pre=30000, min_bbox_size=0, score_thr=0.001, nms=dict(type="nms", iou_threshold=0.65), max_per_img=300
        ),
    )


def save_mmdet_checkpoint(mm: dict[str, Any], model: nn.Module, config: dict[str, Any], path: Path) -> Path:
    """What mmengine's Runner.save_checkpoint keeps after mmdet's publish_model: meta and state_dict."""
    meta = {
        "mmdet_version": mm["version"],
        "cfg": mm["Config"]({"model": config}).pretty_text,
        "dataset_meta": {"classes": tuple(f"class{i}" for i in range(config["bbox_head"]["num_classes"]))},
    }
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)
    return path


def our_network(variant: str, num_classes: int = 80) -> nn.Module:
    """Our network for ``variant`` under the paper's recipe (the CPU quickstart turns exp_on_reg on for all)."""
    cfg = compose(["experiment=paper", f"model=rtmdet_{variant}", f"model.num_classes={num_classes}"])
    assert cfg.model.head.exp_on_reg == VARIANTS[variant][3], "the variant table disagrees with mmdet's exp_on_reg"
    return build_network(cfg)


def build_mmdet(mm: dict[str, Any], variant: str, num_classes: int = 80, seed: int = 0) -> tuple[nn.Module, dict]:
    config = mmdet_config(variant, num_classes)
    model = mm["MODELS"].build(config)
    randomise(model, seed)
    return model.eval(), config


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mmdet_checkpoint_loads_and_matches(mm: dict[str, Any], variant: str, tmp_path: Path) -> None:
    theirs, config = build_mmdet(mm, variant)
    path = save_mmdet_checkpoint(mm, theirs, config, tmp_path / f"rtmdet_{variant}.pth")
    ours = our_network(variant).eval()
    images = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_cls, want_reg = theirs._forward(images)
        before_cls, _ = ours(images)

    report = load_weights(ours, path)

    assert report.source == "mmdet"
    assert report.missing == [] and report.unexpected == [] and report.reinitialised == []
    assert len(report.loaded) == len(theirs.state_dict())
    with torch.no_grad():
        got_cls, got_reg = ours(images)
    assert not torch.allclose(before_cls[0], want_cls[0], rtol=1e-4, atol=1e-5)  # the load is what made them equal
    for level, (got, want) in enumerate(zip(got_cls, want_cls)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"{variant} cls level {level}")
    for level, (got, want) in enumerate(zip(got_reg, want_reg)):
        assert want.std() > 0.1, "box distances should not be constant"
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"{variant} reg level {level}")


@pytest.fixture(scope="module")
def tiny_file(mm: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """An mmdet RTMDet-tiny checkpoint with 80 classes, and the model that made it."""
    theirs, config = build_mmdet(mm, "tiny", seed=3)
    return theirs, save_mmdet_checkpoint(mm, theirs, config, tmp_path_factory.mktemp("mmdet") / "tiny.pth")


def test_other_class_count_reinitialises_only_the_classifier(tiny_file: tuple[nn.Module, Path]) -> None:
    theirs, path = tiny_file
    ours = our_network("tiny", num_classes=3).eval()
    report = load_weights(ours, path)

    assert report.reinitialised == [f"head.rtm_cls.{i}.{p}" for i in range(3) for p in ("bias", "weight")]
    assert any("80" in note and "3" in note for note in report.notes)
    prior_bias = -math.log((1 - 0.01) / 0.01)  # -4.59512: sigmoid(bias) = 0.01
    for conv in ours.head.rtm_cls:
        assert conv.weight.shape[0] == 3
        torch.testing.assert_close(conv.bias, torch.full((3,), prior_bias))
        assert 0.005 < conv.weight.std() < 0.02  # normal(0, 0.01)
    images = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, want_reg = theirs._forward(images)
        _, got_reg = ours(images)
    for got, want in zip(got_reg, want_reg):  # everything but the classifier came from the file
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_renamed_key_is_refused_and_nothing_loads(tiny_file: tuple[nn.Module, Path], tmp_path: Path) -> None:
    _, path = tiny_file
    payload = torch.load(path, weights_only=True)
    state = payload["state_dict"]
    state["bbox_head.rtm_regs.0.weight"] = state.pop("bbox_head.rtm_reg.0.weight")
    broken = tmp_path / "renamed.pth"
    torch.save(payload, broken)
    ours = our_network("tiny")
    before = {k: v.clone() for k, v in ours.state_dict().items()}

    with pytest.raises(WeightsError) as err:
        load_weights(ours, broken)

    message = str(err.value)
    assert str(broken) in message
    assert "head.rtm_reg.0.weight" in message and "head.rtm_regs.0.weight" in message
    assert err.value.report.missing == ["head.rtm_reg.0.weight"]
    assert err.value.report.unexpected == ["head.rtm_regs.0.weight"]
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_exp_on_reg_disagreement_is_refused(tiny_file: tuple[nn.Module, Path]) -> None:
    _, path = tiny_file  # mmdet's tiny decodes raw distances (exp_on_reg=False in meta["cfg"])
    ours = our_network("tiny")
    ours.head.exp_on_reg = True  # as the CPU quickstart experiment sets it for every variant
    with pytest.raises(WeightsError, match="model.head.exp_on_reg=false"):
        load_weights(ours, path)


def test_imagenet_backbone_checkpoint_loads_the_backbone_only(mm: dict[str, Any], tmp_path: Path) -> None:
    # mmpretrain's ImageClassifier around mmdet's CSPNeXt: keys backbone.* plus the classifier head.fc.*.
    theirs, _ = build_mmdet(mm, "s", seed=5)
    state = {k: v for k, v in theirs.state_dict().items() if k.startswith("backbone.")}
    state["head.fc.weight"] = torch.randn(1000, 512)
    state["head.fc.bias"] = torch.randn(1000)
    path = tmp_path / "cspnext-s_imagenet_600e.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    ours = our_network("s").eval()
    neck_head_before = {k: v.clone() for k, v in ours.state_dict().items() if not k.startswith("backbone.")}

    report = load_weights(ours, path)

    assert report.source == "cspnext_backbone"
    assert report.skipped == ["head.fc.bias", "head.fc.weight"]
    assert report.unexpected == [] and all(k.startswith("backbone.") for k in report.loaded)
    assert sorted(report.missing) == sorted(neck_head_before)
    assert any("backbone only" in note for note in report.notes)
    images = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for got, want in zip(ours.backbone(images), theirs.backbone(images)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    after = ours.state_dict()
    assert all(torch.equal(after[k], v) for k, v in neck_head_before.items())
