"""Every paper design choice is a config group that composes with the others: one training step per value.

Each test composes the real ``conf/`` (``compose_config``) with a tiny model and a 64-pixel batch,
changes one axis at a time from the default (then five seeded multi-axis combinations), builds the
detector through ``build_detector`` and runs forward, loss and backward on CPU. Besides finite losses
and gradients in the backbone, each value is checked to have reached the built network, against
values derived by hand for RTMDet-tiny (stage widths 48-96-192-384, deepen 0.167). Parameter and MAC
counts of the paper's rows come from the spec (sections 0, 1.6 and 5) or are derived by hand below.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from rtmdet_exp.experiment import CONF_DIR
from rtmdet_exp.experiment import compose as compose_config
from rtmdet_exp.experiment.build import build_detector, build_network
from rtmdet_exp.experiment.errors import ConfigError
from rtmdet_exp.models.backbone import CSPNeXt
from rtmdet_exp.models.blocks import ChannelAttention
from rtmdet_exp.models.complexity import count_macs, count_params
from rtmdet_exp.models.detector import Detector
from rtmdet_exp.models.network import RTMDetNet
from rtmdet_exp.models.timm_backbone import TimmBackbone

BASE = ["model=rtmdet_tiny", "data.img_size=64"]
TIMM_SMALL = "model.backbone.model_name=resnet10t"  # 4.9 M parameters, strides 8/16/32 at levels 2-4
TINY_STAGES = (48, 96, 192, 384)  # RTMDet-tiny stage output channels, int(c * 0.375)
TINY_C4 = 192  # the neck's first top-down CSPLayer outputs c4 channels


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny convolutions on a shared CPU: a second intra-op thread makes steps up to 15x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def options(group: str) -> list[str]:
    """Option names of a config group, read from the folder (other helpers may add options)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def yaml_target(group: str, option: str) -> str:
    """Class name the option's yaml asks for."""
    return str(OmegaConf.load(CONF_DIR / group / f"{option}.yaml")["_target_"]).rsplit(".", 1)[-1]


def batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Two 64x64 uint8 images, three GT boxes (2 + 1, the second image padded to 2)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=gen)
    boxes = torch.tensor([[[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]], [[10.0, 12.0, 42.0, 58.0], [0.0] * 4]])
    labels = torch.tensor([[1, 3], [2, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    return images, {"boxes": boxes, "labels": labels, "mask": mask}


def train_step(overrides: list[str]) -> tuple[DictConfig, Detector]:
    """Compose, build, one forward + loss + backward; checks finiteness and backbone gradients."""
    torch.manual_seed(0)
    cfg = compose_config([*BASE, *overrides])
    det = build_detector(cfg).train()
    images, targets = batch()
    losses = det.loss(images, targets)
    terms = {k: v for k, v in losses.items() if k.startswith("loss_")}
    assert set(terms) >= {"loss_cls", "loss_bbox"}
    for name, value in terms.items():
        assert value.ndim == 0 and torch.isfinite(value), f"{overrides}: {name} = {value}"
    sum(terms.values()).backward()
    back = [p for p in det.network.backbone.parameters() if p.requires_grad]
    assert back and all(p.grad is not None and torch.isfinite(p.grad).all() for p in back), overrides
    first = next(p for p in det.network.backbone.parameters() if p.ndim == 4)  # the stem's first conv
    assert first.grad.abs().sum() > 0, f"{overrides}: no gradient reaches the first backbone conv"
    return cfg, det


# ---------------------------------------------------------------- what each value must do to the network


def dw_convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def check_kernel(k: int) -> Callable[[RTMDetNet], None]:
    def check(net: RTMDetNet) -> None:
        for part in (net.backbone, net.neck):  # the neck's kernel follows the backbone's
            convs = dw_convs(part)
            assert convs and all(c.kernel_size == (k, k) and c.padding == (k // 2, k // 2) for c in convs)

    return check


def check_attention(on: bool) -> Callable[[RTMDetNet], None]:
    def check(net: RTMDetNet) -> None:
        assert sum(isinstance(m, ChannelAttention) for m in net.backbone.modules()) == (4 if on else 0)
        assert not any(isinstance(m, ChannelAttention) for m in net.neck.modules())

    return check


def check_head(kind: str) -> Callable[[RTMDetNet], None]:
    def check(net: RTMDetNet) -> None:
        towers = net.head.cls_convs, net.head.reg_convs
        for tower in towers:
            first, second = tower[0][0], tower[1][0]
            if kind == "shared":
                assert first is second  # conv and BN both shared
            elif kind == "sepbn":
                assert first.conv is second.conv and first.bn is not second.bn
            else:
                assert first.conv is not second.conv and first.bn is not second.bn

    return check


def check_stacked(n: int) -> Callable[[RTMDetNet], None]:
    def check(net: RTMDetNet) -> None:
        assert all(len(level) == n for tower in (net.head.cls_convs, net.head.reg_convs) for level in tower)

    return check


# Hand-derived for tiny: blocks = max(round(base * 0.167), 1) per stage; hidden = int(stage_out * ratio).
ARCH = {
    "default": ((1, 1, 1, 1), 0.5, 0.5),
    "neck_heavy": ((1, 1, 1, 1), 0.5, 0.5),
    "deep_3993": ((1, 2, 2, 1), 0.5, 0.5),  # 9 * 0.167 = 1.503 -> 2
    "backbone_heavy": ((1, 1, 1, 1), 0.75, 0.25),
    "wide_shallow": ((1, 1, 1, 1), 0.625, 0.5),  # 2 * 0.167 -> 0 -> 1, 3 * 0.167 -> 1
    "narrow_deep": ((1, 2, 2, 1), 0.375, 0.5),  # 6 * 0.167 = 1.002 -> 1, 12 * 0.167 = 2.004 -> 2
}


def check_arch(name: str) -> Callable[[RTMDetNet], None]:
    blocks, back_ratio, neck_ratio = ARCH[name]

    def check(net: RTMDetNet) -> None:
        for stage, out, n in zip(net.backbone.stages, TINY_STAGES, blocks):
            csp = stage[-1]
            assert len(csp.blocks) == n
            assert csp.main_conv.conv.out_channels == int(out * back_ratio)
        assert net.neck.top_down[0].main_conv.conv.out_channels == int(TINY_C4 * neck_ratio)

    return check


def check_backbone(kind: str) -> Callable[[RTMDetNet], None]:
    def check(net: RTMDetNet) -> None:
        if kind == "cspnext":
            assert isinstance(net.backbone, CSPNeXt) and net.backbone.out_channels == (96, 192, 384)
        else:
            # ResNet levels 2-4 have 128, 256, 512 channels; the neck adapts, its width stays tiny's 96.
            assert isinstance(net.backbone, TimmBackbone) and net.backbone.out_channels == (128, 256, 512)
            assert net.neck.in_channels == (128, 256, 512) and net.neck.out_channels == 96
            assert not any(isinstance(m, ChannelAttention) for m in net.backbone.modules())

    return check


AXES: dict[str, dict[str, tuple[list[str], Callable[[RTMDetNet], None]]]] = {
    "kernel": {f"k{k}": ([f"kernel=k{k}"], check_kernel(k)) for k in (3, 5, 7)},
    "attention": {v: ([f"attention={v}"], check_attention(v == "on")) for v in ("on", "off")},
    "head": {v: ([f"head={v}"], check_head(v)) for v in ("sepbn", "shared", "separated")},
    "stacked_convs": {str(n): ([f"model.head.stacked_convs={n}"], check_stacked(n)) for n in (1, 3)},
    "arch": {v: ([f"arch={v}"], check_arch(v)) for v in ARCH},
    "backbone": {
        "cspnext": (["backbone=cspnext"], check_backbone("cspnext")),
        "timm": (["backbone=timm", TIMM_SMALL], check_backbone("timm")),
    },
}
CSPNEXT_ONLY = ("kernel", "attention", "arch")


def test_axis_folders_hold_the_expected_options() -> None:
    assert options("kernel") == ["k3", "k5", "k7"]
    assert options("attention") == ["off", "on"]
    assert options("head") == ["separated", "sepbn", "shared"]
    assert options("backbone") == ["cspnext", "timm"]
    assert options("arch") == sorted(ARCH)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("axis", "value"), [(a, v) for a, values in AXES.items() for v in values], ids=lambda x: str(x)
)
def test_one_axis_changed(axis: str, value: str) -> None:
    overrides, check = AXES[axis][value]
    cfg, det = train_step(overrides)
    check(det.network)
    if value == "timm":  # the CSPNeXt node was replaced, not merged into: no CSPNeXt key leaked
        assert set(cfg.model.backbone) == {
            "_target_", "model_name", "out_indices", "pretrained_path", "bn_momentum", "bn_eps"
        }


def test_default_timm_backbone_is_resnet18() -> None:
    cfg, det = train_step(["backbone=timm"])
    assert cfg.model.backbone.model_name == "resnet18" and det.network.backbone.strides == (8, 16, 32)
    # ResNet-18 without its classifier: 11,689,512 - (512 * 1000 + 1000) parameters.
    assert count_params(det.network.backbone) == 11_689_512 - 513_000


@pytest.mark.slow
@pytest.mark.parametrize("option", options("assigner"))
def test_assigner_options(option: str) -> None:
    _, det = train_step([f"assigner={option}"])
    assert type(det.assigner).__name__ == yaml_target("assigner", option)


@pytest.mark.parametrize(("term", "option"), [("cls", o) for o in options("loss/cls")] + [
    ("box", o) for o in options("loss/box")
])
@pytest.mark.slow
def test_loss_options(term: str, option: str) -> None:
    _, det = train_step([f"loss/{term}={option}"])
    built = det.cls_loss if term == "cls" else det.box_loss
    assert type(built).__name__ == yaml_target(f"loss/{term}", option)


def random_combos(n: int, seed: int = 0) -> list[dict[str, str]]:
    """One value per axis; the CSPNeXt-only axes are left out when the backbone is timm."""
    rng = random.Random(seed)
    combos = []
    for _ in range(n):
        combo = {axis: rng.choice(sorted(values)) for axis, values in AXES.items()}
        combo["assigner"] = rng.choice(options("assigner"))
        combo["loss/cls"] = rng.choice(options("loss/cls"))
        combo["loss/box"] = rng.choice(options("loss/box"))
        if combo["backbone"] == "timm":
            for axis in CSPNEXT_ONLY:
                combo.pop(axis)
        combos.append(combo)
    return combos


@pytest.mark.slow
@pytest.mark.parametrize("combo", random_combos(5), ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_random_combinations(combo: dict[str, str]) -> None:
    overrides: list[str] = []
    checks = []
    for axis, value in combo.items():
        if axis in AXES:
            o, check = AXES[axis][value]
            overrides += o
            checks.append(check)
        else:
            overrides.append(f"{axis}={value}")
    _, det = train_step(overrides)
    for check in checks:
        check(det.network)


# ---------------------------------------------------------------- paper rows: parameter and MAC counts


def meta_network(overrides: list[str]) -> RTMDetNet:
    cfg = compose_config([*overrides, "model.num_classes=80"])
    with torch.device("meta"):
        return build_network(cfg)


# Depthwise weights per unit of k^2 in RTMDet-l: sum over CSPLayers of blocks x hidden width.
# Backbone 3*64 + 6*128 + 6*256 + 3*512 = 4032; neck 3 * (256 + 128 + 256 + 512) = 3456.
L_DW_CHANNELS = 4032 + 3456
L_NO_CA = 50_921_244  # spec section 5: 3-6-6-3 without channel attention, 80 classes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "params_m", "tol_m"),
    [
        (["model=rtmdet_l", "head=separated"], 57.03, 0.005),  # spec 1.6 / 5(d)
        (["model=rtmdet_l", "head=sepbn"], 52.316, 0.0005),  # spec table 0
        (["model=rtmdet_l", "attention=off"], 50.921, 0.0005),  # spec 5(c)
        (["model=rtmdet_l", "arch=deep_3993", "attention=off"], 53.415, 0.0005),  # spec 5(b)
        (["model=rtmdet_s", "arch=neck_heavy", "attention=off"], 8.538, 0.0005),  # spec 5(b')
        (["model=rtmdet_s", "arch=backbone_heavy", "attention=off"], 9.01, 0.005),  # paper 5(b')
        (["model=rtmdet_l", "arch=backbone_heavy", "attention=off"], 57.43, 0.005),  # paper 5(b')
        (["model=rtmdet_l", "kernel=k3", "attention=off"], (L_NO_CA + (9 - 25) * L_DW_CHANNELS) / 1e6, 1e-6),
        (["model=rtmdet_l", "kernel=k7", "attention=off"], (L_NO_CA + (49 - 25) * L_DW_CHANNELS) / 1e6, 1e-6),
    ],
    ids=lambda x: ",".join(x) if isinstance(x, list) else None,
)
def test_paper_parameter_counts(overrides: list[str], params_m: float, tol_m: float) -> None:
    assert abs(count_params(meta_network(overrides)) / 1e6 - params_m) <= tol_m


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "gmacs", "rel"),
    [
        (["model=rtmdet_l", "arch=deep_3993", "attention=off"], 86.28, 0.005),  # spec 5(b)
        (["model=rtmdet_s", "arch=backbone_heavy", "attention=off"], 15.85, 0.005),  # paper 5(b')
        (["model=rtmdet_l", "arch=backbone_heavy", "attention=off"], 93.73, 0.005),  # paper 5(b')
        # width vs depth pair: about the default cost (RTMDet-s 14.76 GMAC, spec table 0)
        (["model=rtmdet_s", "arch=wide_shallow"], 14.76, 0.03),
        (["model=rtmdet_s", "arch=narrow_deep"], 14.76, 0.03),
    ],
    ids=lambda x: ",".join(x) if isinstance(x, list) else None,
)
def test_paper_mac_counts(overrides: list[str], gmacs: float, rel: float) -> None:
    macs = count_macs(meta_network(overrides))["macs"] / 1e9
    assert abs(macs / gmacs - 1) <= rel


# ---------------------------------------------------------------- invalid values fail with the valid ones


@pytest.mark.parametrize("group", ["kernel", "attention", "head", "arch", "backbone"])
def test_unknown_option_lists_the_valid_ones(group: str) -> None:
    with pytest.raises(ConfigError) as err:
        compose_config([*BASE, f"{group}=no_such_option"])
    for option in options(group):
        assert option in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["kernel=k7", "model.backbone.kernel_size=4"], ["model", "kernel_size", "1, 3, 5, 7"]),
        (["backbone=timm", "model.backbone.model_name=resnet_18"], ["model", "not a timm model", "resnet18"]),
        (["backbone=timm", TIMM_SMALL, "model.backbone.out_indices=[1,2,3]"], ["(4, 8, 16)", "out_indices=[2, 3, 4]"]),
        (["backbone=timm", TIMM_SMALL, "kernel=k7"], ["kernel_size", "CSPNeXt-only", "model.neck.kernel_size"]),
        (["backbone=timm", TIMM_SMALL, "attention=off"], ["channel_attention", "CSPNeXt-only"]),
        (["backbone=timm", TIMM_SMALL, "arch=deep_3993"], ["arch_blocks", "expand_ratio", "CSPNeXt-only"]),
        (["head=separated", "model.head.sep_bn=false"], ["sep_bn", "share_conv=True"]),
        (["loss.box.loss_weight=-1"], ["loss.box", "loss_weight must be >= 0"]),
        (["loss.cls.loss_weight=-0.5"], ["loss.cls", "loss_weight must be >= 0"]),
    ],
    ids=lambda x: ",".join(x) if isinstance(x, list) else None,
)
def test_invalid_values_name_the_fix(overrides: list[str], expected: list[str]) -> None:
    cfg = compose_config([*BASE, *overrides])
    with pytest.raises(ConfigError) as err:
        build_detector(cfg)
    for text in expected:
        assert text in str(err.value), str(err.value)


# ---------------------------------------------------------------- TimmBackbone on its own


def test_timm_suggests_out_indices_for_models_with_fewer_levels() -> None:
    # ConvNeXt has four levels, strides 4, 8, 16, 32: level 4 does not exist.
    with pytest.raises(ValueError, match=r"4 feature levels.*strides \[4, 8, 16, 32\].*out_indices=\[1, 2, 3\]"):
        TimmBackbone("convnext_atto")
    with pytest.raises(ValueError, match=r"strides \(16, 16, 16\).*pick another model"):
        TimmBackbone("vit_tiny_patch16_224", img_size=64)
    with pytest.raises(ValueError, match="out_indices must be 3 integers"):
        TimmBackbone("resnet10t", out_indices=(3, 4))


def test_timm_never_downloads_and_loads_local_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import timm

    calls: list[dict] = []
    real = timm.create_model

    def spy(*args: object, **kwargs: object) -> nn.Module:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    # A full classifier checkpoint: ConvNeXt keys are 'stages.1...', the feature model's 'stages_1...'.
    torch.manual_seed(1)
    full = real("convnext_atto", pretrained=False)
    path = tmp_path / "atto.pth"
    torch.save({"state_dict": full.state_dict()}, path)
    back = TimmBackbone("convnext_atto", out_indices=(1, 2, 3), pretrained_path=str(path), bn_momentum=0.03)
    assert calls and all(c.get("pretrained") is False for c in calls)
    assert back.out_channels == (80, 160, 320) and back.strides == (8, 16, 32)
    loaded = dict(back.model.named_parameters())["stages_1.blocks.0.conv_dw.weight"]
    assert torch.equal(loaded, full.stages[1].blocks[0].conv_dw.weight)
    missing, unexpected = back.load_weights(path)
    assert missing == [] and unexpected == ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]
    with pytest.raises(ValueError, match="file not found"):
        TimmBackbone("resnet10t", pretrained_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="pretrained: set by TimmBackbone"):
        TimmBackbone("resnet10t", pretrained=True)
    resnet = TimmBackbone("resnet10t", bn_momentum=0.03, bn_eps=1e-3)
    bns = [m for m in resnet.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.03 and m.eps == 1e-3 for m in bns)
