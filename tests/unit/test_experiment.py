"""The experiment layer: a command runs the experiment it names, or fails before touching anything.

The paper's recipe is written out below from the spec (section 4, and table 0 per variant), not read
from the YAML: every documented command that says ``experiment=paper`` must compose to it key by
key, except for the keys its study changes on purpose (listed with the reason).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from rtmdet_exp.engine.ema import ModelEMA
from rtmdet_exp.experiment import build, compose, rundir
from rtmdet_exp.experiment.checks import check_config, validation_epochs
from rtmdet_exp.experiment.errors import ConfigError
from rtmdet_exp.experiment.recipe import recipe_card
from tests.support.commands import compose_first_job, documented_commands, run_py_args

PAPER: dict[str, Any] = {
    "trainer.max_epochs": 300, "trainer.val_interval": 10, "trainer.stage2_val_interval": 1,
    "trainer.grad_clip": None, "trainer.ema.enabled": True, "trainer.ema.momentum": 0.0002, "trainer.ema.gamma": 2000,
    "data.img_size": 640, "data.batch_size": 32, "data.num_workers": 10,
    "optim._target_": "rtmdet_exp.engine.optim.adamw", "optim.lr": 0.004, "optim.base_batch_size": 256,
    "optim.scale_lr": True, "optim.weight_decay": 0.05, "optim.betas": [0.9, 0.999],
    "schedule.kind": "flat_cosine", "schedule.warmup_iters": 1000, "schedule.warmup_start": 1e-5,
    "schedule.flat_fraction": 0.5, "schedule.min_ratio": 0.05,
    "test.score_thr": 0.001, "test.nms_pre": 30000, "test.iou_threshold": 0.65, "test.max_per_img": 300,
    "augment.stage2_epochs": 20,
    "augment.stage1": ["mosaic", "random_resize", "crop", "hsv", "flip", "pad", "mixup", "filter"],
    "augment.stage2": ["stage2_resize", "crop", "hsv", "flip", "pad", "filter"],
    "augment.mosaic.img_scale": [640, 640], "augment.mosaic.center_ratio_range": [0.5, 1.5],
    "augment.mosaic.prob": 1.0, "augment.mosaic.pad_value": 114,
    "augment.random_resize.scale": [1280, 1280], "augment.random_resize.keep_ratio": True,
    "augment.crop.crop_size": [640, 640], "augment.crop.allow_negative_crop": False,
    "augment.hsv.hue_delta": 5, "augment.hsv.saturation_delta": 30, "augment.hsv.value_delta": 30,
    "augment.flip.prob": 0.5, "augment.pad.size": [640, 640], "augment.pad.pad_value": 114,
    "augment.mixup.img_scale": [640, 640], "augment.mixup.ratio_range": [1.0, 1.0], "augment.mixup.flip_ratio": 0.5,
    "augment.mixup.pad_value": 114, "augment.mixup.max_iters": 15,
    "augment.stage2_resize.scale": [640, 640], "augment.stage2_resize.keep_ratio": True,
    "assigner._target_": "rtmdet_exp.assigners.dynamic.DynamicSoftLabelAssigner", "assigner.topk": 13,
    "assigner.iou_weight": 3.0, "assigner.soft_center_radius": 3.0, "assigner.cls_cost": "soft",
    "assigner.center_prior": "soft", "assigner.iou_cost": "log", "assigner.cls_cost_classes": "all",
    "loss.cls._target_": "rtmdet_exp.losses.classification.QualityFocalLoss", "loss.cls.beta": 2.0,
    "loss.cls.loss_weight": 1.0, "loss.box._target_": "rtmdet_exp.losses.box.GIoULoss", "loss.box.loss_weight": 2.0,
    "model.backbone.bn_momentum": 0.1, "model.backbone.bn_eps": 1e-5, "model.backbone.kernel_size": 5,
    "model.backbone.channel_attention": True, "model.backbone.expand_ratio": 0.5,
    "model.backbone.arch_blocks": [3, 6, 6, 3], "model.neck.expand_ratio": 0.5, "model.head.stacked_convs": 2,
    "model.head.share_conv": True, "model.head.sep_bn": True, "model.head.pred_kernel_size": 1,
    "model.head.prior_prob": 0.01, "model.head.strides": [8, 16, 32], "model.init_from": None,
}
# Spec table 0 and section 4 ("tiny/s" vs "m/l/x" overrides of the recipe).
_SMALL_AUG = {"augment.random_resize.ratio_range": [0.5, 2.0], "augment.stage2_resize.ratio_range": [0.5, 2.0]}
_LARGE_AUG = {"augment.random_resize.ratio_range": [0.1, 2.0], "augment.stage2_resize.ratio_range": [0.1, 2.0],
              "augment.mosaic.max_cached_images": 40, "augment.mosaic.random_pop": True, "augment.mixup.prob": 1.0,
              "augment.mixup.max_cached_images": 20, "augment.mixup.random_pop": True}
PER_VARIANT: dict[str, dict[str, Any]] = {
    "tiny": {"model.backbone.deepen_factor": 0.167, "model.backbone.widen_factor": 0.375, "model.head.exp_on_reg": False,
             **_SMALL_AUG, "augment.mosaic.max_cached_images": 20, "augment.mosaic.random_pop": False,
             "augment.mixup.prob": 0.5, "augment.mixup.max_cached_images": 10, "augment.mixup.random_pop": False},
    "s": {"model.backbone.deepen_factor": 0.33, "model.backbone.widen_factor": 0.5, "model.head.exp_on_reg": False,
          **_SMALL_AUG, **{k: v for k, v in _LARGE_AUG.items() if "ratio_range" not in k}},
    "m": {"model.backbone.deepen_factor": 0.67, "model.backbone.widen_factor": 0.75, "model.head.exp_on_reg": False,
          **_LARGE_AUG},
    "l": {"model.backbone.deepen_factor": 1.0, "model.backbone.widen_factor": 1.0, "model.head.exp_on_reg": True,
          **_LARGE_AUG},
    "x": {"model.backbone.deepen_factor": 1.33, "model.backbone.widen_factor": 1.25, "model.head.exp_on_reg": True,
          **_LARGE_AUG},
}
# What a study changes on purpose (its header says so); everything else must be the paper's.
STUDY_CHANGES: dict[str, dict[str, Any]] = {
    "kernel_size": {"model.backbone.channel_attention": False},  # the paper's 5(a) rows are without CA
    "capacity_balance": {"model.backbone.channel_attention": False},  # so are the 5(b') rows
    # the paper's ResNet-50 1x schedule: 12 epochs, no Mosaic; the first row is the all-hard baseline
    "assigner_costs": {"trainer.max_epochs": 12, "augment.*": "light", "assigner.cls_cost": "hard",
                       "assigner.center_prior": "hard", "assigner.iou_cost": "linear"},
}


def flat(cfg: Any) -> dict[str, Any]:
    return rundir.flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def assert_paper(cfg: Any, variant: str, changes: dict[str, Any], where: str) -> None:
    values = flat(cfg)
    expected = {**PAPER, **PER_VARIANT[variant]}
    skip_augment = "augment.*" in changes
    for key, want in expected.items():
        if key in changes or (skip_augment and key.startswith("augment.")):
            continue
        got = values.get(key, "<missing>")
        if isinstance(want, float):
            assert isinstance(got, (int, float)) and math.isclose(got, want), f"{where}: {key} = {got}, paper {want}"
        else:
            assert got == want, f"{where}: {key} = {got!r}, paper {want!r}"
    for key, want in changes.items():
        if key != "augment.*":
            assert values[key] == want, f"{where}: {key} = {values[key]!r}, the study sets {want!r}"


@pytest.mark.parametrize("variant", sorted(PER_VARIANT))
def test_experiment_paper_is_the_papers_recipe(variant: str) -> None:
    assert_paper(compose(["experiment=paper", f"model=rtmdet_{variant}"]), variant, {}, f"rtmdet_{variant}")


PAPER_COMMANDS = [c for c in documented_commands() if "experiment=paper" in c.text and "run.py" in c.text]


def test_there_are_documented_paper_commands() -> None:
    studies = {a.split("=", 1)[1] for c in PAPER_COMMANDS for a in run_py_args(c) if a.startswith("+study=")}
    assert len(studies) >= 8, studies  # every grid study that reproduces a paper table has one


@pytest.mark.slow
@pytest.mark.parametrize("command", PAPER_COMMANDS, ids=str)
def test_documented_paper_command_composes_the_papers_recipe(command: Any, coco_dataset: Path) -> None:
    args = [a.replace("/data/coco", str(coco_dataset)) for a in run_py_args(command) if a != "..."]
    cfg, _ = compose_first_job(args)
    variant = cfg.model.variant
    study = next((a.split("=", 1)[1] for a in args if a.startswith("+study=")), None)
    # what the command line sets on purpose (a benchmark's few epochs) it shows; the rest must be the paper's
    changes = {**STUDY_CHANGES.get(study, {}), **explicit_values(args)}
    assert_paper(cfg, variant, changes, str(command))


def explicit_values(args: list[str]) -> dict[str, Any]:
    """``key: value`` of the plain ``a.b=value`` overrides of a command line (not group choices, not sweeps)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = {}
    for override in OverridesParser.create().parse_overrides([a for a in args if "=" in a and "." in a.split("=")[0]]):
        if not override.is_sweep_override() and not override.key_or_group.startswith(("hydra.", "hydra/")) \
                and "/" not in override.key_or_group:
            values[override.key_or_group] = override.value()
    return values


# ----------------------------------------------------------------------- refused at compose time
@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["trainer=full"], ["trainer"]),  # the old recipe group is gone: an error, not the CPU recipe
        (["optim.name=adamm"], ["optim.name"]),
        (["optim=adamm"], ["adamw", "sgd"]),
        (["schedule.kind=cosne"], ["schedule.kind", "flat_cosine", "cosine", "constant"]),
        (["trainer.device=gpu"], ["trainer.device", "auto", "cpu", "cuda"]),
        (["data.on_error=ignore"], ["data.on_error", "raise", "skip"]),
        (["data=coco", "data.root=/x", "data.synthetic.num_train=48"], ["synthetic"]),
        (["optim.warmup_iters=5"], ["warmup_iters"]),  # a schedule key under optim
        (["trainer.max_epoch=3"], ["max_epoch"]),
    ],
)
def test_wrong_keys_and_options_fail_at_compose_naming_them(overrides: list[str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    for word in words:
        assert word in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["augment=rtmdet", "trainer.max_epochs=14"],
         ["augment.stage2_epochs=20", "trainer.max_epochs=14", "mosaic", "mixup"]),
        (["trainer.max_epochs=0"], ["trainer.max_epochs"]),
        (["data.img_size=100"], ["data.img_size", "32"]),
        (["trainer.val_subset=0"], ["trainer.val_subset"]),
        (["schedule.warmup_max_fraction=2"], ["schedule.warmup_max_fraction"]),
    ],
)
def test_impossible_values_fail_before_data(overrides: list[str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        check_config(compose(overrides))
    for word in words:
        assert word in str(err.value), str(err.value)


def test_a_pruner_that_can_never_act_is_refused() -> None:
    cfg = compose(["trainer.max_epochs=4", "trainer.val_interval=4"])
    sweeper = OmegaConf.create({"pruner": {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 0}})
    with pytest.raises(ConfigError, match="hydra.sweeper.pruner"):
        check_config(cfg, sweeper)
    check_config(compose(["trainer.max_epochs=4", "trainer.val_interval=2"]), sweeper)  # epoch 2 reports
    late = OmegaConf.create({"pruner": {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 3}})
    with pytest.raises(ConfigError, match="n_warmup_steps=3"):
        check_config(compose(["trainer.max_epochs=4", "trainer.val_interval=2"]), late)


@pytest.mark.slow
def test_every_shipped_study_passes_the_checks() -> None:
    studies = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "sweeps" / "study").glob("*.yaml"))
    for study in studies:
        cfg, hydra = compose_first_job(["-m", f"+study={study}"])
        check_config(cfg, hydra.sweeper)


def test_validation_epochs_follow_the_two_intervals() -> None:
    # 30 epochs, stage 2 from epoch 26 (stage2_epochs 5): every 10th, then every epoch of stage 2
    cfg = compose(["augment=rtmdet", "trainer.max_epochs=30", "augment.stage2_epochs=5", "trainer.val_interval=10"])
    assert validation_epochs(cfg) == [10, 20, 26, 27, 28, 29, 30]


# ----------------------------------------------------------------------------- recipe card
def test_recipe_card_states_the_resolved_recipe() -> None:
    cfg = compose(["experiment=paper", "model=rtmdet_s"])
    one, eight = recipe_card(cfg, world_size=1), recipe_card(cfg, world_size=8, steps_per_epoch=459)
    assert one["batch"] == "32 per GPU x 1 = 32" and eight["batch"] == "32 per GPU x 8 = 256"
    assert one["lr"] == "0.004 x 32/256 = 0.0005" and eight["lr"] == "0.004 x 256/256 = 0.004"
    assert eight["schedule"].startswith("flat_cosine, warm-up 1000 of 137700 iterations")  # 459 x 300
    aug = eight["augmentation"]
    assert aug["switch_epoch"] == 280 and aug["stage1_epochs"] == "1-280" and aug["stage2_epochs"] == "281-300"
    assert eight["ema"] == "momentum 0.0002, gamma 2000" and eight["exp_on_reg"] is False
    assert eight["experiment"] == "paper" and eight["model"] == "rtmdet_s"
    assert "cspnext-s_imagenet_600e.pth" in eight["init"]
    assert eight["precision"] == "auto" and eight["grad_clip"] == "off"  # the paper clips nothing
    given = recipe_card(compose(["trainer.precision=fast", "trainer.grad_clip=2.5"]))
    assert given["precision"] == "fast" and given["grad_clip"] == 2.5


def test_dry_run_checks_and_prints_without_touching_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rtmdet_exp.experiment.train import train

    cfg = compose(["dry_run=true", f"data.root={tmp_path / 'never'}"])
    out = train(cfg, run_dir=tmp_path / "run")
    assert out["dry_run"] is True and out["perf/params"] > 0
    printed = capsys.readouterr().out
    assert "recipe card" in printed and "quickstart" in printed
    assert not (tmp_path / "never").exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ runs and folders
def test_same_command_same_identity_other_command_other() -> None:
    a = OmegaConf.to_container(compose(["kernel=k7"]))
    b = OmegaConf.to_container(compose(["kernel=k7", "data.num_workers=0", "trainer.device=cpu"]))
    c = OmegaConf.to_container(compose(["kernel=k3"]))
    assert rundir.identity(a, ["kernel=k7"]) == rundir.identity(b, ["kernel=k7", "data.num_workers=0",
                                                                    "trainer.device=cpu"])
    assert rundir.identity(a, ["kernel=k7"]) != rundir.identity(c, ["kernel=k3"])
    assert rundir.identity({**a, "run_name": "my run"}, []) == "my_run"


def make_run(parent: Path, name: str, status: str | None, checkpoint: bool) -> Path:
    folder = parent / name
    (folder / "checkpoints").mkdir(parents=True)
    if checkpoint:
        (folder / "checkpoints" / "epoch_0001.pt").write_bytes(b"x")
    if status:
        rundir.write_results(folder, {"status": status})
    return folder


def test_resume_finds_the_newest_unfinished_run_of_the_command(tmp_path: Path) -> None:
    make_run(tmp_path, "2026-01-01_00-00-00-00", "running", True)
    newer = make_run(tmp_path, "2026-01-02_00-00-00-00", "interrupted", True)
    make_run(tmp_path, "2026-01-03_00-00-00-00", "finished", True)
    make_run(tmp_path, "2026-01-04_00-00-00-00", None, False)  # started, nothing saved
    assert rundir.newest_unfinished(tmp_path) == newer
    assert rundir.newest_unfinished(tmp_path / "none") is None


def test_torchrun_ranks_name_the_same_folder(tmp_path: Path) -> None:
    """Two processes with LOCAL_RANK set and one parent (as torchrun starts them) agree on the folder."""
    import subprocess
    import sys

    child = ("import os, sys; from rtmdet_exp.experiment.rundir import instance_name; print(instance_name())")
    parent = (  # the second rank starts 0.3 s after the first: their own clocks would differ
        "import os, subprocess, sys, time\n"
        "procs = []\n"
        "for r in range(2):\n"
        f"    procs.append(subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True,\n"
        "        env={**os.environ, 'LOCAL_RANK': str(r), 'WORLD_SIZE': '2', 'LOCAL_WORLD_SIZE': '2'}))\n"
        "    time.sleep(0.3)\n"
        "print('|'.join(p.communicate()[0].strip() for p in procs))\n"
    )
    names = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True).stdout
    first, second = names.strip().split("|")
    assert first == second and len(first) >= 19


# ----------------------------------------------------------------------------- regressions
@pytest.mark.slow
def test_compile_keeps_the_names_the_ema_averages() -> None:
    """trainer.compile compiles the network in place: the EMA copy's tensor names stay valid."""
    detector = build.build_detector(compose(["model.backbone.widen_factor=0.125"]))
    ema = ModelEMA(detector)
    detector.network.compile()
    ema.update(detector)  # raised "model lacks tensors present in the EMA copy" when the network was wrapped
    assert ema.steps == 1


def test_each_generated_dataset_has_its_own_folder() -> None:
    """Other counts or classes never regenerate the folder an earlier run's results point to (they did:
    a 16-image run rewrote the default run's val annotations in place)."""
    roots = {compose(overrides).data.root for overrides in (
        [], ["data.synthetic.num_train=16"], ["data.synthetic.num_val=8"], ["data.num_classes=3"],
        ["data.synthetic.seed=1"], ["data.img_size=320"])}
    assert len(roots) == 6
    assert compose([]).data.root.endswith("/synthetic_256_s0_2400-200_c10")


def test_compile_auto_compiles_long_gpu_runs_only() -> None:
    """trainer.compile=null: compile on one GPU from 10,000 steps (a COCO run), not on the CPU or under
    torchrun; true/false win."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    auto = compose([])
    assert auto.trainer.compile is None
    assert build.compile_network(auto, cuda, 10_000) is True
    assert build.compile_network(auto, cuda, 9_999) is False  # a study's short run: compiling would not pay
    assert build.compile_network(auto, cpu, 10**6) is False
    assert build.compile_network(auto, cuda, 10**6, world_size=2) is False
    assert build.compile_network(compose(["trainer.compile=true"]), cpu, 1) is True
    assert build.compile_network(compose(["trainer.compile=false"]), cuda, 10**6) is False


def test_cudnn_autotuning_is_for_long_gpu_runs_only() -> None:
    """trainer.cudnn_benchmark=null: autotune GPU runs from 10,000 steps (the study-sized 1,200-step run
    was faster without), never deterministic ones or the CPU; true/false win."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    auto = compose([])
    assert auto.trainer.cudnn_benchmark is None
    assert build.cudnn_benchmark(auto, cuda, 10_000) is True
    assert build.cudnn_benchmark(auto, cuda, 1_200) is False
    assert build.cudnn_benchmark(auto, cpu, 10**6) is False
    assert build.cudnn_benchmark(compose(["trainer.deterministic=true"]), cuda, 10**6) is False
    assert build.cudnn_benchmark(compose(["trainer.cudnn_benchmark=true"]), cuda, 1) is True
    assert build.cudnn_benchmark(compose(["trainer.cudnn_benchmark=false"]), cuda, 10**6) is False


def test_sync_bn_false_is_on_the_recipe_card_of_a_torchrun_run() -> None:
    """trainer.sync_bn defines the experiment (it changes the BatchNorm statistics): the card of a
    multi-GPU run says which, a one-process card does not mention it."""
    assert recipe_card(compose([]), 2)["batch_norm"] == "SyncBN over all GPUs"
    assert recipe_card(compose(["trainer.sync_bn=false"]), 2)["batch_norm"].startswith("per GPU")
    assert "batch_norm" not in recipe_card(compose([]), 1)
    assert "trainer.sync_bn" not in rundir.NON_DEFINING_KEYS and "trainer.cudnn_benchmark" in rundir.NON_DEFINING_KEYS


@pytest.mark.parametrize("native", [True, False])
def test_precision_fast_is_bf16_where_the_hardware_has_it(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """fast: bf16 on a GPU and on a CPU with AMX/AVX512-BF16 only (elsewhere the CPU emulates it, slowly);
    auto stays fp32 on every CPU; bf16/fp32 win everywhere."""
    monkeypatch.setattr(build, "cpu_has_native_bf16", lambda: native)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    fast, auto = compose(["trainer.precision=fast"]), compose(["experiment=paper"])
    assert build.precision_flags(fast, cpu)[0] is native
    assert build.precision_flags(fast, cuda)[0] is True
    assert build.precision_flags(auto, cpu)[0] is False and build.precision_flags(auto, cuda)[0] is True
    assert build.precision_flags(compose(["trainer.precision=bf16"]), cpu)[0] is True
    assert build.precision_flags(compose(["trainer.precision=fp32"]), cuda)[0] is False


def test_native_bf16_probe_reads_the_cpu_flags() -> None:
    """The probe agrees with the CPU's own feature flags (Linux: /proc/cpuinfo's amx_tile, avx512_bf16)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to compare with (not Linux)")
    flags = set(cpuinfo.read_text().split())
    assert build.cpu_has_native_bf16() is bool(flags & {"amx_tile", "avx512_bf16"})


def test_variant_table_is_what_model_options_compose() -> None:
    s = compose(["model=rtmdet_s"]).model
    assert (s.variant, s.backbone.deepen_factor, s.backbone.widen_factor) == ("s", 0.33, 0.5)
    assert compose(["model=rtmdet_x"]).model.head.exp_on_reg is True


def test_schema_defaults_are_the_only_defaults() -> None:
    """No YAML restates a typed group: data, optim, schedule and model have no files under conf/."""
    conf = Path(__file__).resolve().parents[2] / "conf"
    for group in ("data", "optim", "schedule", "model", "trainer"):
        assert not (conf / group).exists(), f"conf/{group}/ restates the schema"
    assert (conf / "README.md").is_file()
    assert torch.equal(torch.tensor(compose(["optim=sgd"]).optim.momentum), torch.tensor(0.9))
