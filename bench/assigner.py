"""Micro-benchmark of the batched DynamicSoftLabelAssigner against a naive per-image loop.

Times the batched assigner on ``batch x 8400 priors (640x640) x M GT boxes x 80 classes`` and,
as baseline in the same run, a plain re-implementation of mmdet's per-image DSLA (a Python loop
over images, a full [num_candidates, M, C] cls tensor and a loop over GTs for the dynamic-k picks).
The baseline is timed on a few images and scaled to the batch. Also checks that both agree.

    python bench/assigner.py                 # CPU, and CUDA when available
    python bench/assigner.py --quick         # small sizes, a smoke run (~30 s on 2 CPU cores)
    python bench/assigner.py --device cpu --repeats 5 --out bench/results/assigner.json
    python bench/assigner.py --device cpu --threads 1   # steadier timings on a shared CPU
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtmdet_exp.assigners.dynamic import DynamicSoftLabelAssigner  # noqa: E402
from rtmdet_exp.ops.boxes import pairwise_iou  # noqa: E402
from rtmdet_exp.ops.priors import grid_priors  # noqa: E402

IMAGE_SIZE = 640
STRIDES = (8, 16, 32)
NUM_CLASSES = 80


def make_inputs(batch: int, max_gts: int, seed: int, device: torch.device) -> dict[str, Tensor]:
    """A padded batch: between max_gts/2 and max_gts GTs per image, COCO-like log-uniform sizes
    (8 to 320 px, aspect 1:3 to 3:1), predictions = a random GT of the image jittered by ~10%."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [(IMAGE_SIZE // s, IMAGE_SIZE // s) for s in STRIDES]
    priors = grid_priors(sizes, STRIDES)  # [8400, 4]
    num_priors = priors.shape[0]
    counts = torch.randint(math.ceil(max_gts / 2), max_gts + 1, (batch,), generator=gen)
    gt_mask = torch.arange(max_gts)[None] < counts[:, None]  # [B, M]
    scale = torch.exp(torch.empty(batch, max_gts).uniform_(math.log(8), math.log(320), generator=gen))
    aspect = torch.exp(torch.empty(batch, max_gts).uniform_(-math.log(3), math.log(3), generator=gen))
    wh = torch.stack((scale * aspect.sqrt(), scale / aspect.sqrt()), -1).clamp(max=IMAGE_SIZE - 1)  # [B, M, 2]
    xy = torch.rand(batch, max_gts, 2, generator=gen) * (IMAGE_SIZE - wh)
    gt_boxes = torch.cat((xy, xy + wh), -1) * gt_mask[..., None]  # [B, M, 4], zeros as padding
    gt_labels = torch.randint(0, NUM_CLASSES, (batch, max_gts), generator=gen).masked_fill(~gt_mask, -1)
    pick = (torch.rand(batch, num_priors, generator=gen) * counts[:, None]).long()  # a valid GT per prior
    source = gt_boxes.gather(1, pick[..., None].expand(batch, num_priors, 4))  # [B, N, 4]
    size = (source[..., 2:] - source[..., :2]).repeat(1, 1, 2)
    pred = source + torch.randn(batch, num_priors, 4, generator=gen) * size * 0.1
    pred = torch.cat((torch.minimum(pred[..., :2], pred[..., 2:]), torch.maximum(pred[..., :2], pred[..., 2:])), -1)
    logits = torch.randn(batch, num_priors, NUM_CLASSES, generator=gen) * 2 - 4
    out = dict(pred_logits=logits, pred_boxes=pred, priors=priors, gt_boxes=gt_boxes, gt_labels=gt_labels,
               gt_mask=gt_mask)
    return {k: v.to(device) for k, v in out.items()}


def naive_dsla(
    pred_logits: Tensor, pred_boxes: Tensor, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor,
    topk: int = 13, soft_center_radius: float = 3.0, iou_weight: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """mmdet's DSLA as mmdet runs it: one image at a time, a full [K, M, C] cls tensor, a loop over GTs."""
    num_images, num_priors, num_classes = pred_logits.shape
    gt_index = torch.full((num_images, num_priors), -1, dtype=torch.long, device=pred_logits.device)
    out_ious = torch.zeros(num_images, num_priors, device=pred_logits.device)
    for b in range(num_images):
        gts, labels = gt_boxes[b][gt_mask[b]], gt_labels[b][gt_mask[b]]
        num_gts = gts.shape[0]
        if num_gts == 0:
            continue
        lt = priors[:, None, :2] - gts[None, :, :2]
        rb = gts[None, :, 2:] - priors[:, None, :2]
        valid = torch.cat((lt, rb), -1).amin(-1).gt(0).any(1)  # [N]
        num_valid = int(valid.sum())
        if num_valid == 0:
            continue
        boxes, scores, valid_priors = pred_boxes[b][valid], pred_logits[b][valid], priors[valid]
        centers = (gts[:, :2] + gts[:, 2:]) / 2
        distance = (valid_priors[:, None, :2] - centers[None]).pow(2).sum(-1).sqrt() / valid_priors[:, None, 2]
        center_prior = torch.pow(10, distance - soft_center_radius)
        ious = pairwise_iou(boxes, gts)  # [K, M]
        iou_cost = -torch.log(ious + 1e-7) * iou_weight
        onehot = F.one_hot(labels, num_classes).float().unsqueeze(0).repeat(num_valid, 1, 1)  # [K, M, C]
        scores = scores.unsqueeze(1).repeat(1, num_gts, 1)  # [K, M, C]
        soft_label = onehot * ious[..., None]
        scale = soft_label - scores.sigmoid()
        bce = F.binary_cross_entropy_with_logits(scores, soft_label, reduction="none")  # [K, M, C]
        cls_cost = (bce * scale.abs().pow(2)).sum(-1)
        cost = cls_cost + iou_cost + center_prior  # [K, M]

        matching = torch.zeros_like(cost, dtype=torch.uint8)
        top_ious = torch.topk(ious, min(topk, num_valid), dim=0).values
        dynamic_ks = top_ious.sum(0).int().clamp(min=1)
        for g in range(num_gts):
            pos = torch.topk(cost[:, g], k=int(dynamic_ks[g]), largest=False).indices
            matching[pos, g] = 1
        multi = matching.sum(1) > 1
        if multi.any():
            argmin = cost[multi].argmin(1)
            matching[multi] = 0
            matching[multi, argmin] = 1
        fg = matching.sum(1) > 0
        local = torch.arange(num_priors, device=pred_logits.device)[valid][fg]
        gt_index[b, local] = torch.nonzero(gt_mask[b]).squeeze(1)[matching[fg].argmax(1)]
        out_ious[b, local] = (matching * ious).sum(1)[fg]
    return gt_index, out_ious


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` after ``warmup`` calls (CUDA: events + synchronize)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_device(device: torch.device, batch: int, gt_counts: list[int], naive_images: int, repeats: int) -> list[dict]:
    """Time batched vs naive for each GT count on one device; returns one row per GT count."""
    assigner = DynamicSoftLabelAssigner()
    rows = []
    for max_gts in gt_counts:
        inputs = make_inputs(batch, max_gts, seed=max_gts, device=device)
        batched_s = time_call(lambda: assigner(**inputs), device, repeats)
        few = {k: (v if k == "priors" else v[:naive_images]) for k, v in inputs.items()}
        naive_s = time_call(lambda: naive_dsla(**few), device, max(1, repeats // 2))
        result = assigner(**few)
        ref_index, ref_ious = naive_dsla(**few)
        agree = float((result.gt_index == ref_index).float().mean())
        naive_batch_s = naive_s / naive_images * batch
        rows.append(dict(
            device=str(device), batch=batch, num_priors=int(inputs["priors"].shape[0]), max_gts=max_gts,
            mean_gts=float(inputs["gt_mask"].sum(1).float().mean()), num_classes=NUM_CLASSES,
            positives_per_image=float(result.pos_mask.sum(1).float().mean()),
            batched_s=batched_s, batched_ms_per_image=batched_s / batch * 1e3,
            naive_images=naive_images, naive_ms_per_image=naive_s / naive_images * 1e3,
            naive_scaled_batch_s=naive_batch_s, speedup=naive_batch_s / batched_s,
            agreement_with_naive=agree, max_abs_iou_diff=float((result.ious - ref_ious).abs().max()),
        ))
        print_row(rows[-1])
    return rows


HEADER = (f"{'device':>6} {'B':>3} {'M':>4} {'batched s':>10} {'ms/img':>8} {'naive ms/img':>13} "
          f"{'naive x B s':>12} {'speed-up':>9} {'agree':>7}")


def print_row(r: dict) -> None:
    print(f"{r['device']:>6} {r['batch']:>3} {r['max_gts']:>4} {r['batched_s']:>10.4f} "
          f"{r['batched_ms_per_image']:>8.2f} {r['naive_ms_per_image']:>13.2f} {r['naive_scaled_batch_s']:>12.3f} "
          f"{r['speedup']:>8.1f}x {r['agreement_with_naive']:>7.4f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                        help="all = CPU, plus CUDA when available")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per size (median reported)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--gts", type=int, nargs="+", default=[8, 50, 200], help="max GT boxes per image")
    parser.add_argument("--naive-images", type=int, default=4, help="images the naive baseline is timed on")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is steadier on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run: B=4, M in {8, 50}")
    parser.add_argument("--out", type=Path, default=Path("bench/results/assigner.json"), help="JSON output path")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.gts, args.naive_images, args.repeats = 4, [8, 50], 2, min(args.repeats, 3)
    args.naive_images = min(args.naive_images, args.batch)

    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            parser.error("--device cuda but CUDA is not available")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(HEADER)
    rows = []
    for device in devices:
        rows += bench_device(device, args.batch, args.gts, args.naive_images, args.repeats)
    report = dict(
        benchmark="DynamicSoftLabelAssigner (batched) vs naive per-image mmdet loop",
        torch=torch.__version__, python=platform.python_version(), cpu_threads=torch.get_num_threads(),
        cuda_device=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        repeats=args.repeats, quick=args.quick, rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
