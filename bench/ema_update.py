"""The EMA update's two forms on this machine's devices: one lerp per tensor against three foreach passes.

    python bench/ema_update.py [--models rtmdet_tiny rtmdet_s] [--iters 200] [--out bench/results/ema_update.json]

``rtmdet_exp.engine.ema.lerp_`` folds the weights into the average as one ``lerp`` per tensor on the CPU,
which runs foreach ops tensor by tensor, and as three multi-tensor passes (sub, mul, add) elsewhere.
This times both forms on every tensor the EMA averages (parameters and float buffers of the detector,
channels_last as the platform trains it) on the CPU and, when there is one, the GPU (CUDA events), so
the choice per device rests on a measurement. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rtmdet_exp.engine.ema import ModelEMA, lerp_  # noqa: E402
from rtmdet_exp.experiment import build, compose  # noqa: E402


def time_form(ema: ModelEMA, model: torch.nn.Module, per_tensor: bool, iters: int, device: torch.device) -> float:
    """Milliseconds per update of every averaged tensor in one form."""
    src, _ = ema._sources(model)
    avg = ema._float_avg
    weight = torch.tensor(0.01, device=device)
    for _ in range(5):
        lerp_(avg, src, weight, per_tensor)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            lerp_(avg, src, weight, per_tensor)
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / iters
    begin = time.perf_counter()
    for _ in range(iters):
        lerp_(avg, src, weight, per_tensor)
    return (time.perf_counter() - begin) * 1e3 / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["rtmdet_tiny", "rtmdet_s"])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "ema_update.json"))
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows: list[dict[str, Any]] = []
    for name in args.models:
        for device in devices:
            model = build.build_detector(compose([f"model={name}"])).to(device, memory_format=torch.channels_last)
            ema = ModelEMA(model)
            iters = args.iters if device.type == "cuda" else max(args.iters // 10, 10)
            row = {"model": name, "device": device.type, "tensors": len(ema._float_avg),
                   "lerp_ms": time_form(ema, model, True, iters, device),
                   "three_pass_ms": time_form(ema, model, False, iters, device)}
            rows.append(row)
    print(f"{'model':12s} {'device':6s} {'tensors':>7s} {'lerp ms':>8s} {'3-pass ms':>9s}")
    for r in rows:
        print(f"{r['model']:12s} {r['device']:6s} {r['tensors']:7d} {r['lerp_ms']:8.3f} {r['three_pass_ms']:9.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "torch": torch.__version__,
                               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
