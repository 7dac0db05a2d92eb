"""The paper's studies as sweeps (sweeps/, docs/sweeps.md).

Fast tests plan every study with Hydra's own sweeper (its job expansion and its check that every
job composes) behind a launcher that records the jobs instead of running them, and compare the
jobs with the settings written out by hand from the paper's tables (spec section 5). The W&B sweep
files must describe the same configs. The slow tests run real tiny sweeps in a subprocess: a
2 x 2 multirun (report statistics recomputed from the run folders, the notebook, the W&B group of
the offline runs) and a 3-trial Optuna study.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, TINY, cli_env, run_cli
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.rtmdet_optuna_sweeper.optuna_sweeper import parse_search_space
from rtmdet_exp.analysis import load_runs, summarize
from rtmdet_exp.experiment import CONF_DIR, register
from rtmdet_exp.experiment.build import build_detector, instantiate

STUDY_DIR = REPO / "sweeps" / "study"
WANDB_DIR = REPO / "sweeps" / "wandb"
NOTEBOOK = REPO / "notebooks" / "ablation_analysis.ipynb"
SEEDS = (0, 1, 2)

# The settings of each grid study, written out from the paper's tables (spec section 5); every
# setting runs once per seed in SEEDS. The first one is launched first, so it is the report's
# default baseline: the paper's choice (for assigner_costs the paper's all-hard baseline row).
GRID_SETTINGS: dict[str, list[tuple[str, ...]]] = {
    "kernel_size": [("kernel=k5",), ("kernel=k3",), ("kernel=k7",)],
    "blocks_attention": [
        ("arch=default", "attention=on"),
        ("arch=default", "attention=off"),
        ("arch=deep_3993", "attention=on"),
        ("arch=deep_3993", "attention=off"),
    ],
    "capacity_balance": [("arch=neck_heavy",), ("arch=backbone_heavy",)],
    "width_depth": [("arch=default",), ("arch=wide_shallow",), ("arch=narrow_deep",)],
    "head_sharing": [("head=sepbn",), ("head=shared",), ("head=separated",)],
    "assigner_costs": [
        ("assigner={cls_cost:hard,center_prior:hard,iou_cost:linear}",),
        ("assigner={cls_cost:soft,center_prior:hard,iou_cost:linear}",),
        ("assigner={cls_cost:soft,center_prior:soft,iou_cost:linear}",),
        ("assigner={cls_cost:soft,center_prior:soft,iou_cost:log}",),
    ],
    "assigners": [("assigner=soft",), ("assigner=hard",), ("assigner=atss",), ("assigner=task_aligned",)],
    "loss_cls": [("loss/cls=qfl",), ("loss/cls=focal",), ("loss/cls=varifocal",)],
    "loss_box": [("loss/box=giou",), ("loss/box=iou",), ("loss/box=l1",)],
    "augmentation": [("augment=rtmdet",), ("augment=lsj_crop",), ("augment=mosaic_mixup",)],
}
OPTUNA_STUDIES = ("hparams_lr_wd", "pareto_map_macs")
# Config sections that make up an experiment; two jobs with equal sections train the same thing.
SECTIONS = ("model", "assigner", "loss", "augment", "optim", "schedule", "trainer", "data", "seed")
WANDB_COMMAND = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
WANDB_LOGGER_KEYS = ("logger", "logger.mode")


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """conf/config.yaml adds ``file://sweeps`` to the search path, relative to the working directory."""
    monkeypatch.chdir(REPO)


class RecordingLauncher:
    """Stands in for Hydra's launcher: records each batch of job overrides and runs nothing."""

    def __init__(self) -> None:
        self.jobs: list[list[str]] = []

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        self.jobs.extend(list(job) for job in job_overrides)
        return []


@functools.lru_cache(maxsize=None)
def plan(
    study: str, *overrides: str
) -> tuple[DictConfig, list[tuple[str, ...]], dict[tuple[str, ...], DictConfig]]:
    """What ``python run.py -m +study=<study> <overrides>`` launches: the master config, each job's
    overrides (in launch order, without ``+study``), and the composed job config of each setting
    at its first seed, keyed by the setting's sorted overrides (seed left out).

    The sweeper is the configured one (``hydra.sweeper``), set up as Hydra sets it up, so the job
    expansion is the real one. Only the launcher is replaced (it records), and the sweeper's own
    compose check of every job is skipped: jobs that differ only in the seed compose alike, so
    composing one job per setting here checks the same thing at a third of the cost.
    """
    register()
    sweep_dir = Path(os.environ["RTMDET_DATA"]).parent / f"plan_{study}"  # pytest's session temp folder
    args = [f"+study={study}", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="run"):
        loader = GlobalHydra.instance().config_loader()
        cfg = loader.load_configuration("config", overrides=args, run_mode=RunMode.MULTIRUN)
        context = HydraContext(config_loader=loader, callbacks=Callbacks(cfg))
        sweeper = Plugins.instance().instantiate_sweeper(
            hydra_context=context, task_function=lambda _: None, config=cfg
        )
        if not str(cfg.hydra.sweeper._target_).endswith(".BasicSweeper"):  # Optuna: built, not run
            return cfg, [], {}
        launcher = RecordingLauncher()
        sweeper.launcher = launcher
        sweeper.validate_batch_is_legal = lambda batch: None
        sweeper.sweep(arguments=list(cfg.hydra.overrides.task))
        jobs = [tuple(o for o in job if not o.startswith("+study=")) for job in launcher.jobs]
        configs: dict[tuple[str, ...], DictConfig] = {}
        for job in jobs:
            setting, _ = setting_and_seed(job)
            if setting not in configs:
                configs[setting] = loader.load_sweep_config(cfg, [f"+study={study}", *job])
    return cfg, jobs, configs


def compose_run(*overrides: str) -> DictConfig:
    """A single-run config (``python run.py <overrides>``), as a W&B agent would launch it."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="run"):
        loader = GlobalHydra.instance().config_loader()
        return loader.load_configuration("config", overrides=list(overrides), run_mode=RunMode.RUN)


def experiment(cfg: DictConfig) -> str:
    """The resolved experiment sections of a config as sorted JSON (comparable across configs)."""
    sections = {k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg[k])
                else cfg[k] for k in SECTIONS}
    return json.dumps(sections, sort_keys=True)


def setting_and_seed(job: Sequence[str]) -> tuple[tuple[str, ...], int]:
    seeds = [int(o.split("=", 1)[1]) for o in job if o.startswith("seed=")]
    assert len(seeds) == 1, job
    return tuple(sorted(o for o in job if not o.startswith("seed="))), seeds[0]


# --------------------------------------------------------------------------- study files


def test_every_study_file_has_expectations() -> None:
    names = {p.stem for p in STUDY_DIR.glob("*.yaml")}
    assert names == set(GRID_SETTINGS) | set(OPTUNA_STUDIES)
    for path in STUDY_DIR.glob("*.yaml"):
        text = path.read_text()
        assert text.startswith("# @package _global_\n"), path.name
        assert f"python run.py -m +study={path.stem}" in text, f"{path.name}: header lacks the command"
        assert "python -m rtmdet_exp.report" in text, f"{path.name}: header lacks the report command"


@pytest.mark.parametrize("study", sorted(GRID_SETTINGS))
def test_grid_study_runs_every_setting_with_three_seeds(study: str) -> None:
    cfg, jobs, _ = plan(study)
    assert cfg.hydra.sweeper._target_.endswith("BasicSweeper")
    assert str(cfg.hydra.sweep.dir).endswith(f"plan_{study}")
    expected = GRID_SETTINGS[study]
    assert len(jobs) == len(expected) * len(SEEDS)
    seeds_of: dict[tuple[str, ...], list[int]] = {}
    for job in jobs:
        setting, seed = setting_and_seed(job)
        seeds_of.setdefault(setting, []).append(seed)
    assert set(seeds_of) == {tuple(sorted(s)) for s in expected}
    assert all(sorted(s) == list(SEEDS) for s in seeds_of.values())
    assert setting_and_seed(jobs[0]) == (tuple(sorted(expected[0])), SEEDS[0])  # the default baseline


@pytest.mark.parametrize("study", sorted([*GRID_SETTINGS, *OPTUNA_STUDIES]))
def test_study_sweep_dir_is_named_after_the_study(study: str) -> None:
    cfg = compose_run(f"+study={study}")
    assert re.fullmatch(rf"multirun/{study}/\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d-\d\d", str(cfg.hydra.sweep.dir))


@pytest.mark.parametrize(
    ("study", "override", "folder"),
    [
        ("loss_cls", "loss/cls=focal", "3_cls=focal"),  # not the nested folders "3_loss/cls=focal"
        ("loss_box", "loss/box=l1", "3_box=l1"),
        ("hparams_lr_wd", "optim.lr=0.001", "3"),  # trial number only: long floats make long names
        ("pareto_map_macs", "kernel=k3", "3"),
    ],
)
def test_job_folder_names(study: str, override: str, folder: str) -> None:
    cfg = compose_run(f"+study={study}", override)
    OmegaConf.update(cfg, "hydra.job.num", 3)
    assert cfg.hydra.sweep.subdir == folder


@pytest.mark.parametrize("study", sorted(GRID_SETTINGS))
def test_every_setting_builds(study: str) -> None:
    """The model, assigner, losses and augmentation of each setting construct."""
    for job_cfg in plan(study)[2].values():
        build_detector(job_cfg)
        instantiate(job_cfg.augment, "augment")


def test_command_line_seeds_replace_the_studys() -> None:
    _, jobs, _ = plan("kernel_size", "seed=0,1,2,3,4")
    assert len(jobs) == 3 * 5
    _, jobs, _ = plan("head_sharing", "seed=7")
    assert jobs == [("head=" + h, "seed=7") for h in ("sepbn", "shared", "separated")]


@pytest.mark.parametrize(
    ("study", "key", "value"),
    [
        ("kernel_size", "model.backbone.channel_attention", False),  # the paper's 5(a) rows are without CA
        ("capacity_balance", "model.backbone.channel_attention", False),  # so are the 5(b') rows
        ("width_depth", "model.backbone.widen_factor", 0.5),  # RTMDet-s
        ("width_depth", "model.backbone.deepen_factor", 0.33),
    ],
)
def test_study_fixed_settings(study: str, key: str, value: Any) -> None:
    for job_cfg in plan(study)[2].values():
        assert OmegaConf.select(job_cfg, key) == value


def test_command_line_group_choice_beats_the_studys_default() -> None:
    cfg = compose_run("+study=kernel_size", "attention=on")
    assert cfg.model.backbone.channel_attention is True


def test_assigner_cost_rows_follow_spec_2_2() -> None:
    """Row by row one term turns soft (cls -> centre prior -> log IoU); the rest stays DSLA."""
    rows = set()
    for setting, job_cfg in plan("assigner_costs")[2].items():
        assigner = job_cfg.assigner
        rows.add((assigner["cls_cost"], assigner["center_prior"], assigner["iou_cost"]))
        assert assigner["_target_"] == "rtmdet_exp.assigners.dynamic.DynamicSoftLabelAssigner", setting
        assert (assigner["topk"], assigner["candidates"], assigner["iou_weight"]) == (13, "inside_box", 3.0)
        assert (assigner["cls_cost_classes"], assigner["soft_center_radius"]) == ("all", 3.0)
    assert rows == {
        ("hard", "hard", "linear"),
        ("soft", "hard", "linear"),
        ("soft", "soft", "linear"),
        ("soft", "soft", "log"),
    }


def test_augmentation_strategies_match_paper_rows() -> None:
    configs = plan("augmentation")[2].values()
    by_name = {c.augment.name: OmegaConf.to_container(c.augment, resolve=True) for c in configs}
    light = OmegaConf.to_container(compose_run("augment=light").augment, resolve=True)
    lsj, mosaic, two_stage = by_name["lsj_crop"], by_name["mosaic_mixup"], by_name["rtmdet"]
    # LSJ + crop: the light pipeline, large-scale jitter 0.1-2.0, no Mosaic/MixUp, one stage
    assert lsj["stage1"] == light["stage1"] and "mosaic" not in lsj["stage1"] and lsj["stage2"] is None
    assert lsj["random_resize"]["ratio_range"] == [0.1, 2.0]
    # Mosaic + MixUp until the end; two-stage: the same plus 20 weak-augmentation epochs
    assert {"mosaic", "mixup"} <= set(mosaic["stage1"]) and mosaic["stage2_epochs"] == 0
    assert two_stage["stage1"] == mosaic["stage1"] and two_stage["stage2_epochs"] == 20


def test_study_key_is_not_an_experiment_axis() -> None:
    """``+study=X`` selects the sweep; it must not name settings, folders or W&B tags."""
    from rtmdet_exp.analysis import setting_of

    assert setting_of(["+study=kernel_size", "kernel=k3", "seed=1"]) == "kernel=k3"
    cfg = compose_run("+study=kernel_size")
    assert "study" in cfg.hydra.job.config.override_dirname.exclude_keys


# --------------------------------------------------------------------------- Optuna studies


def test_hparams_study_is_an_optuna_search_with_median_pruning() -> None:
    import optuna.distributions as od

    cfg, _, _ = plan("hparams_lr_wd")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.n_trials == 20 and sweeper.direction == "maximize" and sweeper.metric == "val/mAP_best"
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    space = parse_search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert space.distributions == {
        "optim.lr": od.FloatDistribution(0.0004, 0.04, log=True),
        "optim.weight_decay": od.FloatDistribution(0.0, 0.1),
    }
    assert str(cfg.hydra.sweep.dir).endswith("plan_hparams_lr_wd")


def test_pareto_study_searches_architecture_for_map_and_macs() -> None:
    import optuna.distributions as od

    cfg, _, _ = plan("pareto_map_macs")
    sweeper = cfg.hydra.sweeper
    assert list(sweeper.direction) == ["maximize", "minimize"]
    assert list(sweeper.metric) == ["val/mAP_best", "perf/cost"]
    assert sweeper.pruner is None
    space = parse_search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert space.distributions == {
        "kernel": od.CategoricalDistribution(["k3", "k5", "k7"]),
        "arch": od.CategoricalDistribution(["default", "deep_3993", "wide_shallow", "narrow_deep", "backbone_heavy"]),
        "model.backbone.widen_factor": od.CategoricalDistribution([0.25, 0.375, 0.5]),
    }
    # the corners of the space build: every arch at the narrowest width with the largest kernel
    for arch in space.distributions["arch"].choices:
        build_detector(compose_run("+study=pareto_map_macs", f"arch={arch}", "kernel=k7",
                                   "model.backbone.widen_factor=0.25"))


# --------------------------------------------------------------------------- W&B sweep files


def load_wandb(name: str) -> dict[str, Any]:
    return yaml.safe_load((WANDB_DIR / f"{name}.yaml").read_text())


def test_wandb_files_cover_the_grid_studies() -> None:
    assert {p.stem for p in WANDB_DIR.glob("*.yaml")} == set(GRID_SETTINGS) | {"hparams_lr_wd"}


@pytest.mark.parametrize("name", sorted([*GRID_SETTINGS, "hparams_lr_wd"]))
def test_wandb_file_has_required_keys(name: str) -> None:
    sweep = load_wandb(name)
    assert sweep["program"] == "run.py"
    assert sweep["command"] == WANDB_COMMAND
    assert sweep["metric"] == {"name": "val/mAP_best", "goal": "maximize"}
    assert sweep["name"] == name
    params = sweep["parameters"]
    assert params["logger"] == {"value": "wandb"} and params["logger.mode"] == {"value": "online"}
    for key, spec in params.items():
        assert isinstance(spec, dict) and ({"value", "values", "distribution"} & set(spec)), key
    if name in GRID_SETTINGS:
        assert sweep["method"] == "grid"
        assert params["seed"] == {"values": list(SEEDS)}


@pytest.mark.parametrize("name", sorted(GRID_SETTINGS))
def test_wandb_grid_launches_the_same_configs_as_the_study(name: str) -> None:
    """``${args_no_hyphens}`` passes ``key=value`` per parameter; each grid point composes to the
    experiment of one Hydra study job, and together they are the study's jobs."""
    params = load_wandb(name)["parameters"]
    axes = [
        [f"{key}={value}" for value in (spec["values"] if "values" in spec else [spec["value"]])]
        for key, spec in params.items()
        if key not in WANDB_LOGGER_KEYS
    ]
    grid = [experiment(compose_run(*point)) for point in itertools.product(*axes) if "seed=0" in point]
    assert sorted(grid) == sorted(experiment(c) for c in plan(name)[2].values())
    logged = compose_run(*(f"{key}={spec['value']}" for key, spec in params.items() if key in WANDB_LOGGER_KEYS))
    assert logged.logger._target_.endswith("WandbLogger") and logged.logger.mode == "online"


def test_wandb_bayes_search_matches_the_optuna_ranges() -> None:
    sweep = load_wandb("hparams_lr_wd")
    assert sweep["method"] == "bayes" and sweep["run_cap"] == 20
    space = parse_search_space([f"{k}={v}" for k, v in plan("hparams_lr_wd")[0].hydra.sweeper.params.items()])
    lr, wd = sweep["parameters"]["optim.lr"], sweep["parameters"]["optim.weight_decay"]
    assert lr["distribution"] == "log_uniform_values" and space.distributions["optim.lr"].log
    assert (lr["min"], lr["max"]) == (space.distributions["optim.lr"].low, space.distributions["optim.lr"].high)
    wd_dist = space.distributions["optim.weight_decay"]
    assert wd["distribution"] == "uniform" and (wd["min"], wd["max"]) == (wd_dist.low, wd_dist.high)


# --------------------------------------------------------------------------- real sweeps (slow)

# conftest's TINY data and network (64 px, 16 training images, 0.55 M parameters), debug=fast's two
# batches, one epoch, no augmentation. Few overrides: Hydra puts them all into the job folder name.
TINY_SWEEP = (*(o for o in TINY if o != "trainer.limit_train_batches=null"), "trainer.max_epochs=1", "augment=none")


@pytest.fixture(scope="module")
def kernel_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python run.py -m +study=kernel_size kernel=k3,k5 seed=0,1`` with tiny settings and W&B offline."""
    base = tmp_path_factory.mktemp("sweeps")
    sweep_dir = base / "kernel_size" / "tiny"
    env = cli_env(WANDB_MODE="offline", WANDB_DIR=str(base), WANDB_SILENT="true")
    proc = run_cli(
        ["-m", "+study=kernel_size", "kernel=k3,k5", "seed=0,1", *TINY_SWEEP, "logger=wandb",
         f"hydra.sweep.dir={sweep_dir}"],
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep_dir


def job_folders(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.mark.slow
def test_multirun_report_means_match_the_run_files(kernel_sweep: Path) -> None:
    folders = job_folders(kernel_sweep)
    assert len(folders) == 4
    files: dict[str, list[dict[str, float]]] = {}
    for folder in folders:
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        kernel = next(o for o in overrides if o.startswith("kernel="))
        files.setdefault(kernel, []).append(json.loads((folder / "results.json").read_text())["metrics"])
    assert sorted(files) == ["kernel=k3", "kernel=k5"] and all(len(v) == 2 for v in files.values())

    runs = load_runs(kernel_sweep)
    assert len(runs) == 4 and all(r.finished for r in runs)
    rows = summarize(runs)
    assert len(rows) == 2
    for row in rows:
        kernel = next(k for k in files if k in row.setting.split(","))
        assert row.n == 2 and sorted(row.seeds) == [0, 1]
        for key in ("val/mAP", "perf/train_time_s", "perf/params"):
            values = [float(m[key]) for m in files[kernel]]
            mean = (values[0] + values[1]) / 2
            std = math.sqrt((values[0] - mean) ** 2 + (values[1] - mean) ** 2)  # ddof=1 with n=2
            assert row.stats[key].mean == pytest.approx(mean, rel=1e-12, abs=1e-15), (kernel, key)
            assert row.stats[key].std == pytest.approx(std, rel=1e-9, abs=1e-12), (kernel, key)
    params = {k: v[0]["perf/params"] for k, v in files.items()}
    assert params["kernel=k3"] < params["kernel=k5"]  # the kernel override reached the model


@pytest.mark.slow
def test_notebook_runs_on_the_multirun(kernel_sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import find_kernel_specs

    if "python3" not in find_kernel_specs():
        pytest.skip("no 'python3' Jupyter kernel spec: run `python -m ipykernel install --user` in CI")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("RTMDET_SWEEP_DIR", str(kernel_sweep))
    monkeypatch.delenv("RTMDET_BASELINE", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "kernel=k3" in markdown and "kernel=k5" in markdown
    assert "No Optuna storage in this sweep folder" in markdown
    assert any("image/png" in o.get("data", {}) for o in outputs)


def wandb_run_records(path: Path) -> list[Any]:
    """The ``run`` records of an offline W&B run file (``run-<id>.wandb``).

    The file is a 7-byte header (``:W&B``, magic, version) then LevelDB-log records in 32 KiB
    blocks: 4-byte CRC, 2-byte little-endian length, 1-byte type (1 full, 2 first, 3 middle,
    4 last), payload; a block tail shorter than a record header is zero padding. Each full payload
    is a ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, header = 32768, 7
    pos, parts, runs = header, [], []
    while pos + header <= len(data):
        if block - pos % block < header:
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        parts.append(data[pos + header : pos + header + length])
        pos += header + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            if record.HasField("run"):
                runs.append(record.run)
        elif kind == 0:
            break
    return runs


@pytest.mark.slow
def test_wandb_offline_runs_carry_the_sweep_group(kernel_sweep: Path) -> None:
    groups = {}
    for folder in job_folders(kernel_sweep):
        files = list(folder.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, f"{folder}: expected one offline W&B run, found {files}"
        records = wandb_run_records(files[0])
        assert records, f"{files[0]}: no run record"
        groups[folder.name] = records[-1].run_group
        tags = set(records[-1].tags)
        assert "kernel" in tags and "study" not in tags, f"{folder.name}: tags {sorted(tags)}"
    assert len(groups) == 4
    assert len(set(groups.values())) == 1, f"runs of one sweep in different groups: {groups}"
    group = next(iter(groups.values()))
    assert group and "kernel_size" in group, f"group {group!r} does not name the sweep"


@pytest.mark.slow
def test_optuna_study_runs_three_real_trials(tmp_path: Path) -> None:
    import optuna

    sweep_dir = tmp_path / "hparams_lr_wd"
    # two epochs validated each: an intermediate value at epoch 1 for the median pruner
    proc = run_cli(["-m", "+study=hparams_lr_wd", "hydra.sweeper.n_trials=3", *TINY_SWEEP, "trainer.max_epochs=2",
                    "trainer.val_interval=1", "hydra.sweeper.pruner.n_warmup_steps=1", f"hydra.sweep.dir={sweep_dir}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in study.trials:
        assert 0.0004 <= trial.params["optim.lr"] <= 0.04 and 0.0 <= trial.params["optim.weight_decay"] <= 0.1
        folder = sweep_dir / str(trial.number)
        results = json.loads((folder / "results.json").read_text())["metrics"]
        assert trial.value == pytest.approx(float(results["val/mAP_best"]))
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        assert config["optim"]["lr"] == pytest.approx(trial.params["optim.lr"])
    assert statistics.pstdev(t.params["optim.lr"] for t in study.trials) > 0  # three different points
