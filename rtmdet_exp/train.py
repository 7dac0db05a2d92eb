"""``train(cfg)``: build every object from a composed config, train, evaluate, return metrics.

``run.py`` is a thin Hydra entry around this function; tests and sweep drivers call it directly.
Everything that can be checked is checked before any data is loaded: the model, assigner,
losses and augmentation are built first, so a bad value fails in seconds with its key named.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from rich.console import Console
from rich.table import Table

from rtmdet_exp.config import ConfigError, DataConfig, TrainerConfig, instantiate, register, to_flat_dict
from rtmdet_exp.engine.evaluate import Evaluation
from rtmdet_exp.engine.loggers import JsonlLogger, Logger
from rtmdet_exp.engine.optim import build_optimizer, scale_lr
from rtmdet_exp.engine.schedule import build_scheduler
from rtmdet_exp.engine.trainer import Trainer, is_main_process, seed_everything
from rtmdet_exp.io import write_json_atomic
from rtmdet_exp.models.complexity import count_macs, count_params
from rtmdet_exp.models.detector import Detector
from rtmdet_exp.models.postprocess import PostprocessConfig

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(name: str) -> torch.device:
    """``trainer.device``: auto picks the GPU when there is one (the LOCAL_RANK one under torchrun)."""
    if name not in DEVICES:
        raise ConfigError(f"trainer.device: '{name}' is not valid; choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device: 'cuda' was asked for but no CUDA GPU is visible; use trainer.device=cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def build_detector(cfg: DictConfig) -> Detector:
    """Model, assigner, losses and test-time settings from their config groups."""
    network = instantiate(cfg.model, "model")
    assigner = instantiate(cfg.assigner, "assigner")
    cls_loss = instantiate(cfg.loss.cls, "loss.cls")
    box_loss = instantiate(cfg.loss.box, "loss.box")
    try:
        test_cfg = PostprocessConfig(**OmegaConf.to_container(cfg.test, resolve=True))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"test: {err}") from err
    return Detector(network, assigner, cls_loss, box_loss, test_cfg)


def check_config(cfg: DictConfig) -> tuple[TrainerConfig, DataConfig]:
    """Range checks that types alone cannot express; each error names its key."""
    try:
        trainer: TrainerConfig = OmegaConf.to_object(cfg.trainer)
        data: DataConfig = OmegaConf.to_object(cfg.data)
    except InterpolationResolutionError as err:  # a resolver failed, e.g. ${coco_num_classes:<missing json>}
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        raise ConfigError(str(cause) if cause is not None else f"{err.full_key}: {err.msg}") from err
    positive = {
        "trainer.max_epochs": trainer.max_epochs,
        "trainer.checkpoint_interval": trainer.checkpoint_interval,
        "trainer.log_interval": trainer.log_interval,
        "trainer.max_bad_steps": trainer.max_bad_steps,
        "data.batch_size": data.batch_size,
        "data.img_size": data.img_size,
        "optim.lr": cfg.optim.lr,
        "optim.base_batch_size": cfg.optim.base_batch_size,
    }
    for key, value in positive.items():
        if value is None or value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    if data.img_size % 32:
        raise ConfigError(f"data.img_size must be a multiple of 32 (the largest stride), got {data.img_size}")
    if data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {data.num_workers}")
    if cfg.optim.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {cfg.optim.weight_decay}")
    if trainer.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision: '{trainer.precision}' is not valid; choose one of {', '.join(PRECISIONS)}")
    if str(trainer.channels_last) not in ("auto", "true", "false", "True", "False"):
        raise ConfigError(f"trainer.channels_last must be auto, true or false, got {trainer.channels_last}")
    if data.on_error not in ("raise", "skip"):
        raise ConfigError(f"data.on_error must be raise or skip, got '{data.on_error}'")
    if trainer.grad_clip is not None and trainer.grad_clip <= 0:
        raise ConfigError(f"trainer.grad_clip must be > 0 or null, got {trainer.grad_clip}")
    return trainer, data


def setup_distributed(device: torch.device) -> tuple[int, int]:
    """Join the torchrun process group when launched by torchrun; returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _run_name(cfg: DictConfig) -> str:
    if cfg.get("run_name"):
        return str(cfg.run_name)
    try:
        from hydra.core.hydra_config import HydraConfig

        name = HydraConfig.get().job.override_dirname
        return name or "default"
    except ValueError:
        return "default"


IGNORED_AXES = ("seed", "study", "trainer.device", "data.num_workers", "logger", "resume", "run_name")


def sweep_identity() -> tuple[str | None, list[str]]:
    """In a multirun: the sweep's name (its folder, last two parts) and the axes it varies."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:
        return None, []
    if hc.mode != RunMode.MULTIRUN:
        return None, []
    sweep_dir = Path(hc.sweep.dir)
    group = "/".join(sweep_dir.parts[-2:])
    axes = []
    for item in hc.overrides.task:
        key = item.split("=", 1)[0].lstrip("+~")
        if not key.startswith("hydra") and not key.startswith(IGNORED_AXES):
            axes.append(key)
    return group, axes


def _claim_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to write a new run over an existing one (pass resume=true to continue it)."""
    finished = (run_dir / "results.json").exists()
    started = any((run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").exists() else False
    if (finished or started) and not resume:
        what = "a finished run (results.json)" if finished else "a started run (checkpoints/)"
        raise ConfigError(
            f"{run_dir} already holds {what}; pass resume=true to continue it, or choose another hydra.run.dir"
        )


# Keys that may differ when a run is continued: they do not change what is trained.
RESUME_FREE_KEYS = ("resume", "run_name", "tags", "logger", "trainer.auto_resume", "trainer.device",
                    "data.num_workers", "data.pin_memory")


def _config_changes(saved: dict[str, Any] | None, cfg: DictConfig) -> list[str]:
    """Keys (dotted) whose values differ between a checkpoint's stored config and ``cfg``."""
    if saved is None:
        return []
    old, new = to_flat_dict(OmegaConf.create(saved)), to_flat_dict(cfg)
    keys = sorted(k for k in old.keys() | new.keys() if not k.startswith(RESUME_FREE_KEYS))
    return [k for k in keys if old.get(k) != new.get(k)]


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the final namespaced metrics.

    The returned dict holds ``val/mAP``, ``val/mAP50``..., ``val/mAP_best`` (the sweep objective),
    ``perf/params``, ``perf/macs`` and ``perf/train_time_s``. Files written to ``run_dir``
    (default: Hydra's output folder, else the working directory): ``metrics.jsonl``,
    ``results.json``, ``val_results.json`` and ``checkpoints/``.
    """
    register()
    if run_dir is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            run_dir = HydraConfig.get().runtime.output_dir
        except ValueError:
            run_dir = os.getcwd()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer_cfg, data_cfg = check_config(cfg)
    device = resolve_device(trainer_cfg.device)
    rank, world = setup_distributed(device)
    seed_everything(int(cfg.seed) + rank, trainer_cfg.deterministic)

    # 1. Everything that can fail on a config value, before any data is touched.
    detector = build_detector(cfg)
    augment = instantiate(cfg.augment, "augment")
    logger: Logger = instantiate(cfg.logger, "logger")
    params = count_params(detector.network)
    macs = count_macs(detector.network, img_size=data_cfg.img_size)["macs"]
    resume = bool(cfg.resume)
    # auto-resume continues an unfinished run (a preempted job run again); a finished one needs resume=true
    ckpt_dir = run_dir / "checkpoints"
    has_ckpt = ckpt_dir.exists() and any(p.name.startswith(("epoch_", "interrupt")) for p in ckpt_dir.glob("*.pt"))
    if has_ckpt and trainer_cfg.auto_resume and not (run_dir / "results.json").exists():
        resume = True
    if is_main_process():
        _claim_run_dir(run_dir, resume)
    log.info("model: %.3f M parameters, %.3f GMACs at %d px", params / 1e6, macs / 1e9, data_cfg.img_size)

    # 2. Data (generated on first use for the built-in dataset, validated before training).
    data = instantiate(cfg.data, "data", augment=augment, seed=int(cfg.seed), max_epochs=trainer_cfg.max_epochs,
                       rank=rank, world_size=world, _convert_="all")
    data.setup()
    if detector.num_classes < data.num_classes:
        raise ConfigError(
            f"model.num_classes={detector.num_classes} but the dataset has {data.num_classes} classes; "
            f"leave model.num_classes at its default (${{data.num_classes}}) or raise it"
        )

    # 3. Optimisation.
    detector.to(device)
    bf16 = trainer_cfg.precision == "bf16" or (trainer_cfg.precision == "auto" and device.type == "cuda")
    channels_last = str(trainer_cfg.channels_last).lower() == "true" or (
        str(trainer_cfg.channels_last) == "auto" and device.type == "cuda"
    )
    if channels_last:
        detector.to(memory_format=torch.channels_last)
    step_model: torch.nn.Module = detector
    if world > 1:
        detector = torch.nn.SyncBatchNorm.convert_sync_batchnorm(detector)
        step_model = torch.nn.parallel.DistributedDataParallel(
            detector, device_ids=[device.index] if device.type == "cuda" else None
        )
    total_batch = data_cfg.batch_size * world
    lr = scale_lr(cfg.optim.lr, cfg.optim.base_batch_size, total_batch) if cfg.optim.scale_lr else cfg.optim.lr
    optimizer = build_optimizer(detector, cfg.optim.name, lr, cfg.optim.weight_decay, tuple(cfg.optim.betas),
                                cfg.optim.momentum)
    steps_per_epoch = data.steps_per_epoch
    if trainer_cfg.limit_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, trainer_cfg.limit_train_batches)
    total_iters = max(steps_per_epoch * trainer_cfg.max_epochs, 1)
    warmup = min(cfg.schedule.warmup_iters, int(cfg.schedule.warmup_max_fraction * total_iters))
    scheduler = build_scheduler(
        optimizer,
        total_iters=total_iters,
        warmup_iters=warmup,
        flat_fraction=cfg.schedule.flat_fraction if cfg.schedule.kind == "flat_cosine" else None,
        min_ratio=cfg.schedule.min_ratio,
        kind=cfg.schedule.kind,
    )

    # 4. Loggers, the loop, and the final record.
    evaluation = Evaluation(data, device, bf16, channels_last, trainer_cfg, run_dir, logger)
    trainer = Trainer(detector, optimizer, scheduler, data, evaluation, trainer_cfg, run_dir, [], device, bf16,
                      channels_last, model_for_step=step_model,
                      extra={"config": OmegaConf.to_container(cfg, resolve=True), "class_names": data.class_names,
                             "label_to_cat_id": data.label_to_cat_id})
    if trainer_cfg.compile:  # after the EMA copy, so the average holds plain modules
        detector.network = torch.compile(detector.network)
    if resume and not trainer.resume():
        log.info("resume requested but %s holds no checkpoint: starting from scratch", run_dir / "checkpoints")
    elif resume and not cfg.resume:  # auto-resume: only the same run continues, never another by accident
        changed = _config_changes(trainer.resumed_extra.get("config"), cfg)
        if changed:
            raise ConfigError(
                f"{run_dir} holds an unfinished run with other settings ({', '.join(changed[:8])}); "
                f"pass resume=true to continue it with these settings, or choose another hydra.run.dir"
            )
    loggers: list[Logger] = []
    if is_main_process():
        loggers = [JsonlLogger(run_dir, resume_step=trainer.state.step if resume else None), logger]
        flat = to_flat_dict(cfg)
        flat.update({"perf/params": params, "perf/macs": macs, "perf/lr_scaled": lr})
        group, axes = sweep_identity()
        tags = [*cfg.get("tags", []), *axes]
        for item in loggers:
            item.start(run_dir, flat, _run_name(cfg), tags, group)
        for item in loggers:
            item.log_metrics({"perf/params": params, "perf/macs": macs, "perf/flops": 2 * macs}, trainer.state.step)
    trainer.loggers = loggers
    failed = True
    summary: dict[str, Any] = {}
    try:
        start = time.perf_counter()
        metrics = trainer.fit()
        if not metrics:  # resumed a finished run: evaluate once more for the record
            metrics = evaluation(trainer.ema.module if trainer.ema else detector, trainer.state.epoch,
                                 step=trainer.state.step)
            metrics["val/mAP_best"] = max(trainer.state.best_map, metrics.get("val/mAP", 0.0))
        summary = {k: v for k, v in metrics.items() if k.startswith("val/") and not isinstance(v, dict)}
        summary.update(
            {
                "val/mAP_best": max(trainer.state.best_map, 0.0),
                "val/best_epoch": trainer.state.best_epoch,
                "perf/params": params,
                "perf/macs": macs,
                "perf/flops": 2 * macs,
                "perf/train_time_s": trainer.state.train_time_s,
                "perf/skipped_steps": trainer.state.skipped_steps,
                "data/skipped_images": len(data.skip_train.image_ids) + len(data.skip_val.image_ids),
                "data/skipped_annotations": len(data.skip_train.ann_ids) + len(data.skip_val.ann_ids),
                "perf/wall_time_s": time.perf_counter() - start,
                "epochs": trainer.state.epoch,
                "steps": trainer.state.step,
            }
        )
        if is_main_process():
            record = {
                "run_name": _run_name(cfg),
                "metrics": summary,
                "per_class_AP": metrics.get("val/per_class_AP", {}),
                "config": OmegaConf.to_container(cfg, resolve=True),
            }
            write_json_atomic(run_dir / "results.json", record)
            print_results(summary, metrics.get("val/per_class_AP", {}))
        failed = False
        return summary
    finally:
        for item in loggers:
            item.finish(summary, failed=failed)


def print_results(summary: dict[str, Any], per_class: dict[str, float]) -> None:
    """The final results table in the terminal."""
    console = Console()
    table = Table(title="rtmdet-exp results (EMA weights, val split)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    if per_class:
        classes = Table(title="per-class AP@[.5:.95]")
        classes.add_column("class")
        classes.add_column("AP", justify="right")
        for name, ap in per_class.items():
            classes.add_row(name, f"{ap:.4f}")
        console.print(classes)


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Read a finished run's ``results.json``."""
    with (Path(run_dir) / "results.json").open() as f:
        return json.load(f)
