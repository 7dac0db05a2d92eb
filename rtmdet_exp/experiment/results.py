"""What a run reports: the dry run, the loggers' start, and the final summary and results table."""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rtmdet_exp.deploy.latency import cost_metrics
from rtmdet_exp.engine.loggers import Guarded, JsonlLogger, Logger
from rtmdet_exp.engine.loop import Trainer
from rtmdet_exp.engine.validation import ValidationResult
from rtmdet_exp.experiment import build, rundir
from rtmdet_exp.experiment.context import LaunchContext
from rtmdet_exp.experiment.recipe import format_card
from rtmdet_exp.experiment.session import RunSession
from rtmdet_exp.models.complexity import count_macs, count_params

log = logging.getLogger(__name__)


def dry_run(cfg: DictConfig, card: dict[str, Any]) -> dict[str, Any]:
    """Print the recipe card and build every object that needs no data (which checks its config)."""
    print(format_card(card))
    detector = build.build_detector(cfg)
    build.build_augment(cfg)
    build.build_logger(cfg)
    build.build_optimizer(cfg, detector)
    params = count_params(detector.network)
    print(f"dry run: the config checks out ({params / 1e6:.3f} M parameters); no data was read, nothing written")
    return {"dry_run": True, "perf/params": params, "recipe": card}


def start_loggers(cfg: DictConfig, session: RunSession, trainer: Trainer, cost: dict[str, float],
                  ctx: LaunchContext) -> list[Logger]:
    """The run's metrics.jsonl plus the configured logger, started with the flat config, the model's
    ``cost`` (:func:`model_cost`) and tags; each guarded, so that a failing one is switched off with a
    warning instead of ending the run."""
    resumed = trainer.resumed_from is not None
    jsonl = JsonlLogger(session.run_dir / rundir.METRICS, resume_step=trainer.state.step if resumed else None,
                        redo_validation=trainer.state.pending_validation)
    loggers: list[Logger] = [Guarded(jsonl), Guarded(build.build_logger(cfg))]
    flat = rundir.flatten(session.record_config())
    flat.update(cost)
    name = session.record.get("run_name", "default")
    for logger in loggers:
        logger.start(session.run_dir, flat, name, [*cfg.get("tags", []), *ctx.axes], ctx.sweep_group)
    if not resumed:
        for logger in loggers:
            logger.log_metrics(cost, 0)
    return loggers


def model_cost(detector: Any, img_size: int) -> dict[str, float]:
    """Parameters, MACs and FLOPs of the network at the run's image size."""
    macs = count_macs(detector.network, img_size=img_size)["macs"]
    return {"perf/params": count_params(detector.network), "perf/macs": macs, "perf/flops": 2 * macs}


def final_summary(cfg: DictConfig, trainer: Trainer, result: ValidationResult | None, detector: Any,
                  data: Any, cost: dict[str, float]) -> tuple[dict[str, Any], dict[str, float]]:
    """The run's final metrics (last validation, best mAP, ``cost``, latency, time, throughput) and
    per-class AP."""
    if result is None:  # resumed a run whose training had ended: validate once more for the record
        result = trainer.validate(trainer.ema.module if trainer.ema else detector)
    state = trainer.state
    summary = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    summary.update(cost)
    summary.update(cost_metrics(detector, int(cfg.data.img_size), trainer.step.device, summary["perf/macs"]))
    summary.update({
        "val/mAP_best": max(state.best_map, 0.0),
        "val/best_epoch": state.best_epoch,
        "perf/train_time_s": state.train_time_s,
        "perf/images_per_s": state.images_seen / state.train_time_s if state.train_time_s > 0 else 0.0,
        "perf/skipped_steps": state.skipped_steps,
        "perf/val_time_s": state.val_time_s,
        **({"perf/startup_s": trainer.startup_s} if trainer.startup_s is not None else {}),
        "data/skipped_images": len(data.skip_train.image_ids) + len(data.skip_val.image_ids),
        "data/skipped_annotations": len(data.skip_train.ann_ids) + len(data.skip_val.ann_ids),
        "epochs": state.epoch,
        "steps": state.step,
    })
    if torch.cuda.is_available() and trainer.step.device.type == "cuda":
        summary["perf/gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated(trainer.step.device) / 2**30
    print_results(summary, result.per_class_AP)
    return summary, result.per_class_AP


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
            classes.add_row(escape(str(name)), f"{ap:.4f}")
        console.print(classes)
