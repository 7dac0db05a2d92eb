"""The default run's training step on the CPU, as the platform runs it and with the layouts it replaced.

    python bench/cpu_step.py [--steps 30] [--out bench/results/cpu_step.json] [overrides ...]
    python bench/cpu_step.py --batches 8 10 16 [--rounds 8 --block-s 3]   # cost per image by batch size

Builds the quickstart recipe's step (rtmdet_tiny, 10 classes, batch 10, 256 px, bf16 autocast where the CPU has
AMX or AVX512-BF16) once per variant and times the variants step by step in turn, so that a change
in the machine's speed (this 2-core machine drifts by 20-30% within minutes) hits all of them alike:

* ``platform``: what ``python run.py`` runs (``models.layout.to_channels_last``: the stem in NCHW, the
  rest channels_last; depthwise convs in fp32 under CPU autocast, ``blocks.GroupedConv2d``);
* ``all channels_last``: the stem in channels_last too;
* ``bf16 depthwise, all channels_last``: the step before both changes;
* ``NCHW``: no channels_last at all (depthwise in fp32).

Prints median, lower quartile and minimum seconds per step and each variant's speed against the
old step (by median); writes JSON. Findings: bench/NOTES.md, "The CPU step".

``--batches``: the platform's step at each batch size, run in turn for ``--block-s`` seconds each over
``--rounds`` rounds; prints the milliseconds per image of every round and the median ratio of each batch
size's cost per image to the first one's (a step has a fixed cost, so larger batches cost less per image).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from train_step import synthetic_batches  # noqa: E402

from rtmdet_exp.engine.ema import ModelEMA  # noqa: E402
from rtmdet_exp.engine.step import TrainStep  # noqa: E402
from rtmdet_exp.experiment import build, compose  # noqa: E402
from rtmdet_exp.models.blocks import GroupedConv2d  # noqa: E402
from rtmdet_exp.models.layout import to_channels_last  # noqa: E402

OLD = "bf16 depthwise, all channels_last"
VARIANTS = ("platform", "all channels_last", OLD, "NCHW")


def make_step(variant: str, overrides: list[str]) -> TrainStep:
    """The quickstart's TrainStep on the CPU with ``variant``'s layout and depthwise precision."""
    cfg = compose(overrides)  # the built-in dataset's 10 classes, as the default run
    device = torch.device("cpu")
    torch.manual_seed(0)
    detector = build.build_detector(cfg)
    bf16, channels_last = build.precision_flags(cfg, device)
    channels_last = channels_last and variant != "NCHW"
    if variant == "platform" and channels_last:
        to_channels_last(detector, device)
    elif channels_last:
        detector.to(memory_format=torch.channels_last)
    if variant == OLD:  # the conv as autocast runs it: bf16
        for module in detector.modules():
            if isinstance(module, GroupedConv2d):
                module.forward = types.MethodType(nn.Conv2d.forward, module)
    optimizer = build.build_optimizer(cfg, detector)
    schedule = build.build_schedule(cfg, optimizer, steps_per_epoch=100)
    ema = ModelEMA(detector, cfg.trainer.ema.momentum, cfg.trainer.ema.gamma)
    step = TrainStep(detector, optimizer, schedule, device, bf16, channels_last, cfg.trainer.grad_clip, ema=ema)
    step.train()
    return step


def per_image_by_batch(batch_sizes: list[int], rounds: int, block_s: float, overrides: list[str]) -> dict[str, Any]:
    """Seconds per image of the platform step at each batch size, in interleaved time blocks."""
    steps = {b: make_step("platform", [*overrides, f"data.batch_size={b}"]) for b in batch_sizes}
    data = compose(overrides).data
    batches = {b: synthetic_batches(4, b, int(data.img_size), torch.device("cpu"), num_classes=int(data.num_classes))
               for b in batch_sizes}
    for b in batch_sizes:
        for i in range(3):
            steps[b](batches[b][i])
    per_round: list[dict[int, float]] = []
    for r in range(rounds):
        costs = {}
        for b in batch_sizes:
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < block_s:
                steps[b](batches[b][n % 4])
                n += 1
            costs[b] = (time.perf_counter() - start) / (n * b)
        per_round.append(costs)
        print(f"round {r}: " + ", ".join(f"batch {b} {c * 1e3:.1f} ms/image" for b, c in costs.items()), flush=True)
    first = batch_sizes[0]
    ratios = {b: statistics.median(c[b] / c[first] for c in per_round) for b in batch_sizes}
    print(f"cost per image against batch {first} (median of {rounds} rounds): "
          + ", ".join(f"batch {b} {ratio:.3f}" for b, ratio in ratios.items()))
    return {"batch_sizes": batch_sizes, "rounds": [{str(b): c for b, c in r.items()} for r in per_round],
            "ratio_vs_first": {str(b): v for b, v in ratios.items()}, "block_s": block_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", help="compare the cost per image at these batch sizes")
    parser.add_argument("--rounds", type=int, default=8, help="--batches: rounds of blocks")
    parser.add_argument("--block-s", type=float, default=3.0, help="--batches: seconds per batch size and round")
    parser.add_argument("--out", help="JSON file (default bench/results/cpu_step.json, with --batches cpu_batch.json)")
    parser.add_argument("overrides", nargs="*", help="config overrides on top of the quickstart recipe")
    args = parser.parse_args()
    if args.batches:
        result = per_image_by_batch(args.batches, args.rounds, args.block_s, args.overrides)
        out = Path(args.out or REPO / "bench" / "results" / "cpu_batch.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result, "torch": torch.__version__, "threads": torch.get_num_threads(),
                                   "overrides": args.overrides}, indent=2) + "\n")
        print(f"wrote {out}")
        return
    steps = {v: make_step(v, args.overrides) for v in VARIANTS}
    cfg = compose(args.overrides)
    batches = synthetic_batches(4, int(cfg.data.batch_size), int(cfg.data.img_size), torch.device("cpu"),
                                num_classes=int(cfg.data.num_classes))
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(args.warmup + args.steps):
        for variant, step in steps.items():
            t0 = time.perf_counter()
            step(batches[i % len(batches)])
            if i >= args.warmup:
                times[variant].append(time.perf_counter() - t0)
    old = statistics.median(times[OLD])
    rows: list[dict[str, Any]] = []
    for variant, values in times.items():
        values = sorted(values)
        median = statistics.median(values)
        rows.append({"variant": variant, "median_s": median, "p25_s": values[len(values) // 4], "min_s": values[0],
                     "speedup_vs_old": old / median})
    bf16 = steps["platform"].bf16
    print(f"CPU train step, quickstart recipe (batch {cfg.data.batch_size}, {cfg.data.img_size} px, "
          f"{'bf16' if bf16 else 'fp32'}), {torch.get_num_threads()} threads, {args.steps} interleaved steps")
    print(f"{'variant':36s} {'median s':>9s} {'p25 s':>7s} {'min s':>7s} {'vs old':>7s}")
    for r in rows:
        print(f"{r['variant']:36s} {r['median_s']:9.3f} {r['p25_s']:7.3f} {r['min_s']:7.3f} {r['speedup_vs_old']:6.2f}x")
    out = Path(args.out or REPO / "bench" / "results" / "cpu_step.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "steps": args.steps, "bf16": bf16, "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                               "overrides": args.overrides}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
