"""A full GPU: a 12-run study with ``hydra/launcher=gpu_pool`` against the same runs one at a time.

    python bench/study_pool.py                       # on the GPU machine, from the repository root
    python bench/study_pool.py --smoke               # the same steps on the CPU in a minute (checks the script)

Issue 15, item 4. Each run: rtmdet_tiny (the default model), 320 px, batch 8, 1,200 steps (800
built-in training images: 100 steps per epoch, 12 epochs), one validation at the end on the 200
val images, bf16 on the GPU. Steps, each a ``python run.py -m`` subprocess timed from outside:

1. the dataset is generated once (not timed);
2. *sequential*: seeds 0 and 1 one after the other (Hydra's basic launcher, one process); a run
   alone costs half of that wall time, and R runs one at a time cost R times as much;
3. *pool*: the R-run study (seeds 0..R-1) with ``hydra/launcher=gpu_pool`` (``--workers``,
   default ``auto``: see docs/sweeps.md), while ``nvidia-smi`` samples GPU use every 2 s.

Reported: both wall times, the speedup (target >= 4x for R = 12), each run's training time, mAP
and mAP50, and for seeds 0 and 1 the difference between the pooled run and its sequential twin
(bf16 training is not bitwise reproducible on a GPU: ``--tolerance`` is the absolute difference
accepted). Runs that measure ``perf/latency_ms`` show whether it was taken under sharing
(``perf/latency_shared``; the pool sets ``RTMDET_GPU_SHARED=1`` for runs that share a device).
Both parts together take about 8 minutes on an H200 (a run alone: ~100 s). Prints a table and
writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["model.backbone.widen_factor=0.125", "trainer.device=cpu", "data.num_workers=0"]


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides every run of both parts shares (no seed)."""
    steps_per_epoch = args.train_images // args.batch
    epochs = max(1, args.steps // steps_per_epoch)
    common = [f"data.img_size={args.size}", f"data.batch_size={args.batch}", f"trainer.max_epochs={epochs}",
              f"trainer.val_interval={epochs}", f"data.synthetic.num_train={args.train_images}",
              f"data.synthetic.num_val={args.val_images}", "trainer.log_interval=50"]
    return common + (SMOKE if args.smoke else ["trainer.device=cuda"])


def prepare_data(overrides: list[str]) -> None:
    """Generate the built-in dataset for these settings once, before anything is timed."""
    from rtmdet_exp.data.synthetic import ensure_synthetic_dataset
    from rtmdet_exp.experiment import compose

    cfg = compose(overrides)
    gen = cfg.data.synthetic
    ensure_synthetic_dataset(cfg.data.root, num_train=gen.num_train, num_val=gen.num_val, img_size=gen.image_size,
                             seed=gen.seed, num_classes=cfg.data.num_classes)


class GpuSampler:
    """``nvidia-smi`` utilisation and memory every ``period`` seconds, in a thread (nothing without it)."""

    def __init__(self, period: float = 2.0) -> None:
        self.samples: list[tuple[float, float]] = []  # (utilisation %, memory used GiB), summed over GPUs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._period = period

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.wait(self._period):
            try:
                lines = subprocess.run(query, capture_output=True, text=True, timeout=10,
                                       check=False).stdout.strip().splitlines()
                rows = [[float(x) for x in line.split(",")] for line in lines]
                self.samples.append((sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows) / 1024))
            except (OSError, ValueError, ZeroDivisionError, subprocess.SubprocessError):
                return

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def summary(self) -> dict[str, float | None]:
        util = [s[0] for s in self.samples]
        return {"gpu_util_mean_pct": sum(util) / len(util) if util else None,
                "gpu_mem_max_gib": max((s[1] for s in self.samples), default=None)}


def sweep(name: str, seeds: int, overrides: list[str], extra: list[str], out: Path) -> tuple[float, list[dict]]:
    """``run.py -m`` over seeds 0..seeds-1; its wall time and each run's results.json metrics."""
    sweep_dir = out / name
    shutil.rmtree(sweep_dir, ignore_errors=True)
    cmd = [sys.executable, "run.py", "-m", *overrides, f"seed={','.join(map(str, range(seeds)))}",
           f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}", *extra]
    print(f"== {name}: {' '.join(cmd[2:])}", flush=True)
    started = time.perf_counter()
    with (out / f"{name}.log").open("w") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - started
    if code != 0:
        sys.exit(f"{name} failed (exit code {code}); see {out / f'{name}.log'}")
    runs = []
    for num in range(seeds):
        record = json.loads((sweep_dir / str(num) / "results.json").read_text())
        runs.append({"seed": num, **{k: v for k, v in record["metrics"].items() if isinstance(v, (int, float, bool))}})
    return wall, runs


def workers_used(log: Path) -> int | None:
    """K as the launcher logged it (``gpu_pool: K worker(s) ...``)."""
    for line in log.read_text(errors="replace").splitlines():
        if "gpu_pool:" in line and "worker(s)" in line:
            return int(line.split("gpu_pool:")[1].split("worker(s)")[0])
    return None


def compare(sequential: list[dict], pooled: list[dict], tolerance: float) -> list[dict]:
    """Seeds run both ways: the pooled run's metrics minus its sequential twin's."""
    rows = []
    for alone in sequential:
        twin = next(r for r in pooled if r["seed"] == alone["seed"])
        deltas = {k: twin[k] - alone[k] for k in ("val/mAP", "val/mAP50") if k in twin and k in alone}
        rows.append({"seed": alone["seed"], **{f"delta {k}": v for k, v in deltas.items()},
                     "within_tolerance": all(abs(v) <= tolerance for v in deltas.values())})
    return rows


def print_table(result: dict) -> None:
    seq, pool = result["sequential"], result["pool"]
    print(f"\nsequential: 2 runs in {seq['wall_s']:.1f} s -> {seq['per_run_s']:.1f} s per run, "
          f"{result['runs']} runs one at a time ~ {seq['estimate_s']:.0f} s")
    print(f"pool:       {result['runs']} runs with {pool['workers']} workers in {pool['wall_s']:.1f} s "
          f"(GPU use {pool.get('gpu_util_mean_pct') or float('nan'):.0f}% mean, "
          f"{pool.get('gpu_mem_max_gib') or float('nan'):.1f} GiB max)")
    print(f"speedup:    {result['speedup']:.2f}x (target >= {result['target']:g}x: "
          f"{'met' if result['speedup'] >= result['target'] else 'NOT met'})\n")
    print(f"{'part':<11}{'seed':>5}{'train s':>10}{'mAP':>9}{'mAP50':>9}{'latency ms':>12}{'shared':>8}")
    for part, runs in (("sequential", seq["runs"]), ("pool", pool["runs"])):
        for r in runs:
            latency = r.get("perf/latency_ms")
            print(f"{part:<11}{r['seed']:>5}{r.get('perf/train_time_s', float('nan')):>10.1f}"
                  f"{r.get('val/mAP', float('nan')):>9.4f}{r.get('val/mAP50', float('nan')):>9.4f}"
                  f"{'—' if latency is None else f'{latency:.2f}':>12}{r.get('perf/latency_shared', '—')!s:>8}")
    for row in result["same_run_check"]:
        deltas = ", ".join(f"{k} {v:+.4f}" for k, v in row.items() if k.startswith("delta"))
        print(f"seed {row['seed']}: pooled - alone: {deltas} ({'within' if row['within_tolerance'] else 'OUTSIDE'} "
              f"±{result['tolerance']:g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=12, help="runs in the pooled study (default 12)")
    parser.add_argument("--steps", type=int, default=1200, help="training steps per run (default 1200)")
    parser.add_argument("--size", type=int, default=320, help="image size (default 320)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--train-images", type=int, default=800, help="built-in training images (default 800)")
    parser.add_argument("--val-images", type=int, default=200, help="built-in val images (default 200)")
    parser.add_argument("--workers", default="auto", help="hydra.launcher.workers (default auto)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="accepted |pooled - alone| of mAP, mAP50")
    parser.add_argument("--out", default="bench_results/study_pool", help="folder for the runs, logs and JSON")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, 64 px, 16 steps, 4 runs, 2 workers")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.steps, args.size, args.batch, args.train_images, args.val_images = 4, 16, 64, 4, 16, 4
        args.workers = "2"
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "disabled")
    overrides = run_overrides(args)
    prepare_data(overrides)

    seq_wall, seq_runs = sweep("sequential", 2, overrides, [], out)
    with GpuSampler() as sampler:
        pool_wall, pool_runs = sweep("pool", args.runs, overrides,
                                     ["hydra/launcher=gpu_pool", f"hydra.launcher.workers={args.workers}"], out)
    per_run = seq_wall / 2
    result = {
        "setup": {"model": "rtmdet_tiny", "size": args.size, "batch": args.batch, "steps": args.steps,
                  "train_images": args.train_images, "overrides": overrides},
        "runs": args.runs, "target": 4.0, "tolerance": args.tolerance,
        "sequential": {"wall_s": seq_wall, "per_run_s": per_run, "estimate_s": per_run * args.runs, "runs": seq_runs},
        "pool": {"wall_s": pool_wall, "workers": workers_used(out / "pool.log"), "runs": pool_runs,
                 **sampler.summary()},
        "speedup": per_run * args.runs / pool_wall,
        "same_run_check": compare(seq_runs, pool_runs, args.tolerance),
    }
    print_table(result)
    (out / "study_pool.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / 'study_pool.json'}")


if __name__ == "__main__":
    main()
