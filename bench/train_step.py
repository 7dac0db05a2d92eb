"""Bare training step: ours per ``trainer.step_mode`` beside Ultralytics YOLOv8s, data already on the device.

    python bench/train_step.py [--model rtmdet_s] [--batch 32] [--size 640] [--steps 30] [--quick]
                               [--modes eager compile cuda_graph cuda_graph+compile]
                               [--out bench/results/train_step.json]

Ours is the platform's own :class:`~rtmdet_exp.engine.step.TrainStep` as ``train()`` builds it on a
GPU: bf16 autocast, channels_last, fused AdamW, the EMA update, the schedule step, for each step mode.
Batches are synthetic (uint8 images, 8..30 GT boxes per image, so the padded GT count varies the way
real batches do), put on the device before the clock starts, and cycled. Timed: ``--steps`` steps
after the warm-up (compile and graph capture are in the warm-up; their cost is reported apart as
``first_s``, the wall time of the warm-up steps).

The peer, when ``ultralytics`` is importable: YOLOv8s from its YAML (no weights), its loss, its
optimiser step as its trainer runs it (fp16 autocast + GradScaler, gradient clipping at 10, SGD with
Nesterov momentum, its EMA), on the same images and boxes. Target: ours >= 1.55x YOLOv8s.
``--quick`` is a CPU smoke run (rtmdet_tiny and YOLOv8n, batch 2, 64 px, a few steps; compile uses the
``aot_eager`` backend there, as Inductor's C++ build takes minutes on a small CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rtmdet_exp.engine.ema import ModelEMA
from rtmdet_exp.engine.step import TrainStep
from rtmdet_exp.experiment import build, compose
from rtmdet_exp.models.layout import to_channels_last

TARGET_VS_YOLOV8S = 1.55
NUM_CLASSES = 80


def synthetic_batches(count: int, batch: int, size: int, device: torch.device, seed: int = 0,
                      num_classes: int = NUM_CLASSES) -> list[dict]:
    """``count`` collate-style batches on ``device``: uint8 images, 8..30 boxes per image (padded, label -1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        counts = torch.randint(8, 31, (batch,), generator=g)
        m = int(counts.max())
        wh = 16 + torch.rand(batch, m, 2, generator=g) * (size / 3)
        xy = torch.rand(batch, m, 2, generator=g) * (size - wh)
        mask = torch.arange(m)[None, :] < counts[:, None]
        labels = torch.where(mask, torch.randint(0, num_classes, (batch, m), generator=g), -1)
        images = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
        cpu = {"images": images, "boxes": torch.cat([xy, xy + wh], -1) * mask[..., None], "labels": labels,
               "mask": mask}
        out.append({k: v.to(device) for k, v in cpu.items()})
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run_step: Any, batches: list[dict], warmup: int, steps: int, device: torch.device) -> dict[str, float]:
    """Wall time of the warm-up steps and images/s over the timed steps (one sync at each end)."""
    sync(device)
    t0 = time.perf_counter()
    for i in range(warmup):
        run_step(batches[i % len(batches)])
    sync(device)
    t1 = time.perf_counter()
    for i in range(steps):
        run_step(batches[i % len(batches)])
    sync(device)
    elapsed = time.perf_counter() - t1
    batch = int(batches[0]["images"].shape[0])
    return {"first_s": t1 - t0, "step_ms": elapsed / steps * 1e3, "img_per_s": batch * steps / elapsed}


def make_step(model: str, mode: str, size: int, batch: int, device: torch.device) -> TrainStep:
    """The platform's TrainStep in ``mode`` under experiment=paper (bf16 + channels_last on a GPU, as its defaults).

    ``<mode>+compile`` also compiles the network in place after the step is built, as ``train()`` does
    with ``trainer.compile`` (auto: on a GPU for runs of >= 10,000 steps).
    """
    mode, _, compiled = mode.partition("+")
    cfg = compose([f"model={model}", f"data.num_classes={NUM_CLASSES}", f"data.img_size={size}",
                   f"data.batch_size={batch}", "experiment=paper"])
    torch.manual_seed(0)
    detector = build.build_detector(cfg).to(device)
    bf16, channels_last = build.precision_flags(cfg, device)
    if channels_last:
        to_channels_last(detector, device)
    optimizer = build.build_optimizer(cfg, detector)
    schedule = build.build_schedule(cfg, optimizer, steps_per_epoch=1000)
    ema = ModelEMA(detector, cfg.trainer.ema.momentum, cfg.trainer.ema.gamma)
    backend = "aot_eager" if device.type == "cpu" else "inductor"
    step = TrainStep(detector, optimizer, schedule, device, bf16, channels_last, ema=ema, mode=mode,
                     compile_backend=backend)
    if compiled == "compile":
        detector.network.compile(dynamic=False, backend=backend)
    step.train()
    return step


def ours(model: str, mode: str, batches: list[dict], args: argparse.Namespace, device: torch.device) -> dict:
    """The platform's TrainStep in ``mode``, timed."""
    step = make_step(model, mode, args.size, args.batch, device)
    row = timed(step, batches, args.warmup, args.steps, device)
    row.update(name=f"ours {model} {mode}", mode=mode, bf16=step.bf16, channels_last=step.channels_last)
    if mode.startswith("cuda_graph"):
        row.update(captures=step._graphs.captures, replays=step._graphs.replays)
    return row


def ultralytics_row(model: str, batches: list[dict], args: argparse.Namespace, device: torch.device) -> dict:
    """YOLO ``model`` (a YAML name) trained the way its trainer steps, on the same batches."""
    import ultralytics
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import ModelEMA as YoloEMA

    torch.manual_seed(0)
    net = DetectionModel(f"{model}.yaml", nc=NUM_CLASSES, verbose=False).to(device)
    net.args = get_cfg()  # the loss gains (box, cls, dfl) of their default recipe
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    ema = YoloEMA(net)
    yolo_batches = [_yolo_targets(b) for b in batches]

    def step(batch: dict) -> None:
        batch = {**batch, "img": batch["images"].float() / 255}  # their preprocess_batch
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss, _ = net.loss(batch)
            loss = loss.sum()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=10.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        ema.update(net)

    row = timed(step, yolo_batches, args.warmup, args.steps, device)
    row.update(name=f"ultralytics {model}", version=ultralytics.__version__, fp16_amp=amp)
    return row


def _yolo_targets(batch: dict) -> dict:
    """Our padded xyxy pixel boxes as Ultralytics' flat targets (batch_idx, cls, normalised cx cy w h)."""
    size = batch["images"].shape[-1]
    index = batch["mask"].nonzero()  # [K, 2] (image, box), once, before timing
    boxes = batch["boxes"][index[:, 0], index[:, 1]] / size
    xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], dim=1)
    return {"images": batch["images"], "batch_idx": index[:, 0].float(),
            "cls": batch["labels"][index[:, 0], index[:, 1]].float()[:, None], "bboxes": xywh}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rtmdet_s")
    parser.add_argument("--peer", default="yolov8s", help="Ultralytics model YAML name")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=12, help="untimed steps first (compile, capture)")
    parser.add_argument("--modes", nargs="+", default=None, help="step modes (default: all the device can run)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: tiny models, batch 2, 64 px")
    parser.add_argument("--no-peer", action="store_true", help="ours only, even where ultralytics is importable")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_step.json")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.model, args.peer, args.batch, args.size, args.steps, args.warmup = "rtmdet_tiny", "yolov8n", 2, 64, 3, 2
    modes = args.modes or (["eager", "cuda_graph", "cuda_graph+compile"] if device.type == "cuda"
                           else ["eager", "compile"])
    batches = synthetic_batches(4, args.batch, args.size, device)
    rows = []
    for mode in modes:
        try:
            rows.append(ours(args.model, mode, batches, args, device))
        except Exception as err:  # noqa: BLE001 - a failed mode is reported, the others still run
            rows.append({"name": f"ours {args.model} {mode}", "mode": mode, "error": f"{type(err).__name__}: {err}"})
        if device.type == "cuda":
            rows[-1]["mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
    peer = None
    if not args.no_peer and importlib.util.find_spec("ultralytics") is not None:
        peer = ultralytics_row(args.peer, batches, args, device)
        rows.append(peer)
    report(rows, peer, args, device)
    return {"rows": rows}


def report(rows: list[dict], peer: dict | None, args: argparse.Namespace, device: torch.device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\nbare train step, batch {args.batch}, {args.size} px, {device.type} ({name}), torch {torch.__version__}")
    print(f"{'step':34s} {'img/s':>9s} {'ms/step':>9s} {'warm-up s':>10s} {'vs ' + args.peer:>12s}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:34s} failed: {r['error']}")
            continue
        ratio = r["img_per_s"] / peer["img_per_s"] if peer else None
        r["ratio_vs_peer"] = ratio
        shown = f"{ratio:11.2f}x" if ratio is not None else f"{'-':>12s}"
        print(f"{r['name']:34s} {r['img_per_s']:9.1f} {r['step_ms']:9.2f} {r['first_s']:10.1f} {shown}")
    ok = [r for r in rows if r.get("mode") and "error" not in r]
    if peer and ok:
        best = max(ok, key=lambda r: r["img_per_s"])
        print(f"target: ours >= {TARGET_VS_YOLOV8S}x {args.peer}: best mode {best['mode']} at "
              f"{best['img_per_s'] / peer['img_per_s']:.2f}x")
    elif not peer and not args.no_peer:
        print("ultralytics is not importable: no peer row")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "batch": args.batch,
                                    "size": args.size, "quick": args.quick, "target_vs_peer": TARGET_VS_YOLOV8S,
                                    "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
