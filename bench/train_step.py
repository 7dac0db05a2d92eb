"""Training-step throughput of the real detector (network + assigner + losses + AdamW step).

    python bench/train_step.py [--model rtmdet_s] [--batch 32] [--size 640] [--steps 20] [--quick]

Measures images per second of one full training step with the data already on the device (as
the peers' numbers were taken: Ultralytics YOLOv8s 425 img/s, mmdetection RTMDet-s 105 img/s on an
H100 at batch 32, 640, bf16). Baseline in the same run: fp32 without channels_last; candidate:
bf16 autocast + channels_last (the platform's GPU default). Also times the assigner alone inside
the step. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from rtmdet_exp.engine.optim import build_optimizer
from rtmdet_exp.info import compose_config
from rtmdet_exp.train import build_detector


def synthetic_batch(batch: int, size: int, num_gt: int, num_classes: int, device: torch.device) -> tuple:
    """Random uint8 images and plausible GT boxes (sizes 16..size/2), all on ``device``."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    wh = 16 + torch.rand(batch, num_gt, 2, generator=g) * (size / 2 - 16)
    xy = torch.rand(batch, num_gt, 2, generator=g) * (size - wh)
    boxes = torch.cat([xy, xy + wh], dim=-1)
    labels = torch.randint(0, num_classes, (batch, num_gt), generator=g)
    mask = torch.rand(batch, num_gt, generator=g) < 0.8
    targets = {"boxes": boxes.to(device), "labels": labels.to(device), "mask": mask.to(device)}
    return images.to(device), targets


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model_name: str, batch: int, size: int, steps: int, warmup: int, bf16: bool, channels_last: bool,
               num_gt: int, device: torch.device, compile_net: bool = False) -> dict:
    cfg = compose_config([f"model={model_name}", "model.num_classes=80"])
    det = build_detector(cfg).to(device)
    if channels_last:
        det.to(memory_format=torch.channels_last)
    if compile_net:
        det.network = torch.compile(det.network)
    opt = build_optimizer(det, lr=1e-4)
    images, targets = synthetic_batch(batch, size, num_gt, 80, device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    assign_ms: list[float] = []
    original = det.assigner.forward

    def timed_assign(*args, **kwargs):
        sync(device)
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        sync(device)
        assign_ms.append((time.perf_counter() - t0) * 1e3)
        return out

    step_s: list[float] = []
    for i in range(warmup + steps):
        det.assigner.forward = timed_assign if i >= warmup else original
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = det.loss(images, targets)
        loss = out["loss_cls"] + out["loss_bbox"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            step_s.append(time.perf_counter() - t0)
    # the timed assigner adds two syncs; report step time from untimed repeats too
    det.assigner.forward = original
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = det.loss(images, targets)
        loss = out["loss_cls"] + out["loss_bbox"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    clean = (time.perf_counter() - t0) / steps
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "model": model_name, "batch": batch, "size": size, "bf16": bf16, "channels_last": channels_last,
        "compile": compile_net, "num_gt": num_gt, "step_ms_median": statistics.median(step_s) * 1e3,
        "step_ms_clean": clean * 1e3, "img_per_s": batch / clean,
        "assign_ms_median": statistics.median(assign_ms), "max_mem_GiB": mem, "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rtmdet_s")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num-gt", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of the network")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: tiny model, batch 2, 128 px")
    parser.add_argument("--out", default="bench/results/train_step.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.model, args.batch, args.size, args.steps, args.warmup = "rtmdet_tiny", 2, 128, 2, 1
    torch.backends.cudnn.benchmark = True
    variants = [("fp32 (baseline)", False, False, False)]
    if device.type == "cuda":
        variants.append(("bf16 + channels_last", True, True, False))
        if args.compile:
            variants.append(("bf16 + channels_last + compile", True, True, True))
    rows = []
    for name, bf16, cl, comp in variants:
        row = time_steps(args.model, args.batch, args.size, args.steps, args.warmup, bf16, cl, args.num_gt, device,
                         comp)
        row["variant"] = name
        rows.append(row)
    base = rows[0]["img_per_s"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\ntrain step, {args.model}, batch {args.batch}, {args.size}px, {args.num_gt} GT/img, {device_name}")
    print(f"{'variant':34s} {'img/s':>8s} {'step ms':>9s} {'assign ms':>10s} {'mem GiB':>8s} {'speed-up':>9s}")
    for r in rows:
        print(f"{r['variant']:34s} {r['img_per_s']:8.1f} {r['step_ms_clean']:9.1f} {r['assign_ms_median']:10.2f} "
              f"{r['max_mem_GiB']:8.2f} {r['img_per_s'] / base:8.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device_name, "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
