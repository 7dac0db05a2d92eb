"""Where a training step's time goes on the GPU: torch.profiler over eager and graphed steps.

    python bench/profile_step.py [--model rtmdet_s --batch 32 --size 640 --steps 10] [--out ...json]

Prints, per step mode, the wall time per step, the GPU busy time per step (sum of kernel times),
the idle share (wall minus busy: launch overhead and host work the GPU waits for), the number of
kernel launches and host-device syncs per step, and the ten most expensive kernels; writes JSON.
The findings are in bench/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from train_step import make_step, synthetic_batches  # noqa: E402


def profile_mode(args: argparse.Namespace, mode: str, device: torch.device) -> dict:
    batches = synthetic_batches(4, args.batch, args.size, device)
    step = make_step(args.model, mode, args.size, args.batch, device)
    for i in range(8):  # warm-up (and capture)
        step(batches[i % len(batches)])
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start.record()
        for i in range(args.steps):
            step(batches[i % len(batches)])
        end.record()
        torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / args.steps
    events = prof.key_averages()
    busy_ms = sum(e.device_time_total for e in events if e.device_type.name == "CUDA") / 1e3 / args.steps
    syncs = sum(e.count for e in events if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                     "aten::item", "aten::_local_scalar_dense"))
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch"))
    top = sorted((e for e in events if e.device_type.name == "CUDA"), key=lambda e: -e.device_time_total)[:10]
    row = {"mode": mode, "wall_ms": wall_ms, "gpu_busy_ms": busy_ms, "idle_share": max(0.0, 1 - busy_ms / wall_ms),
           "launches_per_step": launches / args.steps, "syncs_per_step": syncs / args.steps,
           "top_kernels": [{"name": e.key[:90], "ms_per_step": e.device_time_total / 1e3 / args.steps} for e in top]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rtmdet_s")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--modes", nargs="+", default=["eager", "cuda_graph"])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "profile_step.json")
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = [profile_mode(args, mode, device) for mode in args.modes]
    print(f"{'mode':<12}{'wall ms':>9}{'GPU busy ms':>13}{'idle':>7}{'launches':>10}{'syncs':>7}")
    for r in rows:
        print(f"{r['mode']:<12}{r['wall_ms']:>9.1f}{r['gpu_busy_ms']:>13.1f}{r['idle_share']:>7.0%}"
              f"{r['launches_per_step']:>10.0f}{r['syncs_per_step']:>7.1f}")
        for k in r["top_kernels"][:5]:
            print(f"    {k['ms_per_step']:7.2f} ms  {k['name']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
                                    "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
