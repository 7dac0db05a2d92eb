"""``train(cfg)``: check, build, fit and record one run; returns its final metrics (the sweep objective).

``run.py`` is a thin Hydra entry around this function; tests and sweep drivers call it directly.
Everything that can be checked is checked before any data is read (``dry_run=true`` stops there,
after printing the recipe card).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from rtmdet_exp.engine import startup
from rtmdet_exp.engine.ema import ModelEMA
from rtmdet_exp.engine.loop import (
    TerminatedError,
    Trainer,
    is_main_process,
    seed_everything,
)
from rtmdet_exp.engine.step import TrainStep
from rtmdet_exp.engine.validation import Validator
from rtmdet_exp.experiment import build, distributed, rundir
from rtmdet_exp.experiment.checks import check_config
from rtmdet_exp.experiment.context import LaunchContext
from rtmdet_exp.experiment.errors import ConfigError
from rtmdet_exp.experiment.recipe import format_card, recipe_card
from rtmdet_exp.experiment.results import (
    dry_run,
    final_summary,
    model_cost,
    start_loggers,
)
from rtmdet_exp.experiment.session import FINISHED, RESUME, RunSession
from rtmdet_exp.models.layout import to_channels_last

log = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: str | Path | None = None, context: LaunchContext | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration; returns ``val/mAP_best``, ``val/mAP``..., ``perf/...``."""
    startup.begin()
    try:
        return _train(cfg, run_dir, context)
    finally:
        startup.end()  # a next run in this process, however this one ended, times its own start-up


def _train(cfg: DictConfig, run_dir: str | Path | None, context: LaunchContext | None) -> dict[str, Any]:
    from rtmdet_exp.experiment import register

    register()
    ctx = context or LaunchContext.from_hydra()
    check_config(cfg, ctx.sweeper)
    card = recipe_card(cfg, distributed.world_size_from_env(), overrides=ctx.overrides)
    if cfg.dry_run:
        return dry_run(cfg, card)
    device = distributed.resolve_device(build.plain(cfg.trainer).get("device", "auto"))
    rank, world = distributed.setup(device)
    if rank != 0:  # one log per run: rank 0's (the other ranks still report errors)
        logging.getLogger().setLevel(logging.ERROR)
    session = RunSession(Path(run_dir or ctx.run_dir or os.getcwd()), cfg, ctx.overrides, ctx.multirun, rank == 0)
    try:
        decision = session.decide()
        startup.mark("checks")  # the config checked, the device and the run folder chosen
        return session.finished_summary() if decision == FINISHED else _fit(cfg, session, decision, device, world, ctx)
    finally:
        distributed.teardown()


def _fit(cfg: DictConfig, session: RunSession, decision: str, device: torch.device, world: int,
         ctx: LaunchContext) -> dict[str, Any]:
    seed_everything(int(cfg.seed) + (torch.distributed.get_rank() if world > 1 else 0), cfg.trainer.deterministic)
    detector, augment = build.build_detector(cfg), build.build_augment(cfg)
    startup.mark("model")
    data = build.build_data(cfg, augment, rank=0 if world == 1 else torch.distributed.get_rank(), world_size=world)
    data.setup()
    startup.mark("data")  # annotations read and checked (the built-in set generated on its first use)
    bf16, channels_last = build.precision_flags(cfg, device)
    precision = build.plain(cfg.trainer)["precision"]
    why = "; this CPU has neither AMX nor AVX512-BF16, so bf16 would be emulated and slower" \
        if precision == "fast" and device.type == "cpu" and not bf16 else ""
    log.info("precision: %s (trainer.precision=%s%s) on %s%s", "bf16 autocast" if bf16 else "fp32", precision, why,
             device.type, ", channels_last" if channels_last else "")
    detector.to(device)
    if channels_last:  # NHWC, except the layers that are faster without it on the CPU
        to_channels_last(detector, device)
    startup.mark("to_device")  # on a GPU, CUDA's initialisation
    mode = build.step_mode(cfg, device)
    step_model = distributed.wrap(detector, device, graphed=mode == "cuda_graph", sync_bn=cfg.trainer.sync_bn)
    optimizer = build.build_optimizer(cfg, detector, world)
    startup.mark("optimizer")  # torch.optim imports torch._dynamo on first use
    settings = build.loop_settings(cfg, augment.switch_epoch)
    ema = ModelEMA(detector, cfg.trainer.ema.momentum, cfg.trainer.ema.gamma) if cfg.trainer.ema.enabled else None
    total_steps = data.steps_per_epoch * int(cfg.trainer.max_epochs)
    try:  # the step updates the EMA; step_mode compile/cuda_graph compiles or captures it (before trainer.compile)
        step = TrainStep(detector, optimizer, build.build_schedule(cfg, optimizer, data.steps_per_epoch), device,
                         bf16, channels_last, cfg.trainer.grad_clip, step_model, ema=ema, mode=mode,
                         cudnn_benchmark=build.cudnn_benchmark(cfg, device, total_steps))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if build.compile_network(cfg, device, total_steps, world):
        log.info("torch.compile of the network: its first steps build Inductor kernels (minutes on a cold cache)")
        detector.network.compile(dynamic=False)  # in place: parameter names (and so the EMA's) stay the same
    validator = Validator(data, device, bf16, channels_last, cfg.trainer.limit_val_batches, cfg.trainer.num_vis_images)
    trainer = Trainer(step, data, validator, settings,
                      rundir.RunCheckpoints(session.run_dir, cfg.trainer.keep_checkpoints), ema,
                      extra={"config": session.record_config(), "class_names": data.class_names,
                             "label_to_cat_id": data.label_to_cat_id})
    if decision == RESUME:
        path, payload = session.load_checkpoint()
        trainer.load(path, payload)
    startup.mark("step")
    card = recipe_card(cfg, world, data.steps_per_epoch, ctx.overrides)
    log.info("%s", format_card(card))
    session.start(card, data.val_annotation_file)
    cost = model_cost(detector, int(cfg.data.img_size)) if is_main_process() else {}  # counted once per run
    loggers = start_loggers(cfg, session, trainer, cost, ctx) if is_main_process() else []
    trainer.loggers = loggers
    trainer.on_validation = [session.on_validation, *_sweep_report(int(cfg.trainer.max_epochs)),
                             *[_images_to(lg, data) for lg in loggers]]
    startup.mark("loggers")  # the run folder's records, the configured logger, the model's MACs
    summary: dict[str, Any] = {}
    try:
        result = trainer.fit()
        if is_main_process():
            summary, per_class = final_summary(cfg, trainer, result, detector, data, cost)
            session.finish(summary, per_class)
        return summary
    except TerminatedError as err:
        session.fail(err, status=rundir.STATUS_INTERRUPTED)
        raise
    except BaseException as err:
        session.fail(err)
        raise
    finally:
        step.close()  # the graphs go before the process group (NCCL waits for graphs holding its collectives)
        for logger in loggers:
            logger.finish(summary, failed=not summary)


def _sweep_report(max_epochs: int) -> list[Any]:
    """The Optuna trial's intermediate report after each validation but the last (a no-op outside Optuna
    sweeps): a finished trial is told its final value by the sweeper, never pruned at its end."""
    from rtmdet_exp.experiment import trial as sweep

    def report(result: Any, epoch: int, step: int) -> None:
        if epoch >= max_epochs:
            return
        value = result.metrics.get("val/mAP", result.metrics.get("val_subset/mAP"))
        sweep.report(build.finite_or(value, 0.0), epoch)

    return [report]


def _images_to(logger: Any, data: Any) -> Any:
    return lambda result, epoch, step: logger.log_images(result.visuals, data.class_names, step=step)
