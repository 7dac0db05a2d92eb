"""Would Inductor help where the eager kernels are the limit? Two probes in one GPU call.

    python bench/compile_probe.py [--out bench/results/compile_probe.json] [--skip-step]

1. Inference: rtmdet_s fused network at batch 32, 640, fp16/bf16, channels_last: eager and CUDA graph
   (as bench/latency.py), then ``torch.compile`` (Inductor default and ``max-autotune-no-cudagraphs``)
   under a CUDA graph; plus the ten most expensive kernels of the eager network (torch.profiler).
2. Training: the bare step (bench/train_step.py's ``make_step``) in ``cuda_graph`` mode with the
   detector compiled by Inductor before the graph is captured, beside the plain ``cuda_graph`` step.
Prints a table and writes JSON; each number is a median over timed calls after warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from latency import network_input, our_network, timed  # noqa: E402
from train_step import make_step, synthetic_batches  # noqa: E402
from train_step import timed as timed_steps  # noqa: E402

from rtmdet_exp.deploy.fast import CudaGraph  # noqa: E402
from rtmdet_exp.deploy.inference import parse_dtype  # noqa: E402
from rtmdet_exp.models.fuse import fuse_conv_bn  # noqa: E402


def top_kernels(fn: Any, steps: int = 5) -> list[dict[str, Any]]:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.device_time_total for e in events) / 1e3 / steps
    top = sorted(events, key=lambda e: -e.device_time_total)[:12]
    return [{"total_ms": total}] + [{"name": e.key[:100], "ms": e.device_time_total / 1e3 / steps,
                                      "count": e.count // steps} for e in top]


def plain_rows(net: torch.nn.Module, x: torch.Tensor, dtype_name: str, profile_it: bool) -> list[dict[str, Any]]:
    device = x.device
    graph = CudaGraph(net, [x])
    rows = [{"what": "network eager", "dtype": dtype_name, "ms": timed(lambda: net(x), device, 50)},
            {"what": "network graph", "dtype": dtype_name, "ms": timed(lambda: graph(x), device, 50)}]
    if profile_it:
        rows.append({"what": "eager kernels", "dtype": dtype_name, "top": top_kernels(lambda: net(x))})
    return rows


def compiled_row(net: torch.nn.Module, x: torch.Tensor, dtype_name: str, mode: str, profile_it: bool) -> dict:
    torch._dynamo.reset()
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(net, mode=mode, dynamic=False)
        compiled(x)
        compiled(x)
        build_s = time.perf_counter() - t0
        graph = CudaGraph(compiled, [x])
        row = {"what": f"compile {mode} + graph", "dtype": dtype_name, "ms": timed(lambda: graph(x), x.device, 50),
               "build_s": build_s}
        if profile_it:
            row["top"] = top_kernels(lambda: graph(x))
    except Exception as err:  # noqa: BLE001 - a probe reports what failed and goes on
        row = {"what": f"compile {mode}", "dtype": dtype_name, "error": repr(err)[:300]}
    return row


def inference_rows(args: argparse.Namespace, modes: tuple[str, ...], dtypes: list[str],
                   plain: bool = True) -> list[dict[str, Any]]:
    device = torch.device("cuda")
    ns = argparse.Namespace(model="rtmdet_s", recipe=["experiment=paper"])
    rows = []
    for dtype_name in dtypes:
        dtype = parse_dtype(dtype_name)
        net = fuse_conv_bn(our_network(ns)).to(device, dtype).eval().to(memory_format=torch.channels_last)
        x = network_input(args.batch, 640, dtype, device, True)
        with torch.no_grad():
            if plain:
                rows += plain_rows(net, x, dtype_name, dtype_name == dtypes[0])
            for mode in modes:
                rows.append(compiled_row(net, x, dtype_name, mode, profile_it=dtype_name == dtypes[0]))
                print(rows[-1], flush=True)
    return rows


def step_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device("cuda")
    batches = synthetic_batches(4, 32, 640, device)
    rows = []
    for variant in ("cuda_graph", "cuda_graph+compile"):
        torch._dynamo.reset()
        step = make_step("rtmdet_s", "cuda_graph", 640, 32, device)
        if variant.endswith("compile"):
            step.model.compile(dynamic=False)
        try:
            row = timed_steps(step, batches, 12, 30, device)
            row.update(what=variant, captures=step._graphs.captures, replays=step._graphs.replays)
        except Exception as err:  # noqa: BLE001
            row = {"what": variant, "error": repr(err)[:300]}
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"])
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "compile_probe.json")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    result: dict[str, Any] = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    result["inference"] = [] if args.skip_inference else inference_rows(args, ("default",), args.dtypes)
    if not args.skip_step:
        result["step"] = step_rows(args)
    if not args.skip_inference:
        result["inference"] += inference_rows(args, ("max-autotune-no-cudagraphs",), args.dtypes[:1], plain=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for row in result.get("inference", []) + result.get("step", []):
        print({k: v for k, v in row.items() if k != "top"})
    for row in result.get("inference", []):
        for k in row.get("top", []):
            print("  ", k)


if __name__ == "__main__":
    main()
