"""End-to-end training throughput: ours (``python run.py``) beside Ultralytics, the short-run case, DDP scaling.

    python bench/throughput.py [--case e2e peer short ddp] [--modes eager cuda_graph] [--quick]
                               [--workers 14] [--gpus 1 2 4] [--out bench/results/throughput.json]

* ``e2e``: ``python run.py experiment=paper model=rtmdet_s trainer.max_epochs=4 augment.stage2_epochs=1
  data.synthetic.num_train=2560 ...`` per step mode. Throughput is read from the run's metrics.jsonl
  (``perf/images_per_s`` records, weighted by their time) over the epochs after the first that still
  run Mosaic + MixUp (epochs 2-3 of 4): validation and the first epoch's start-up are not in it.
* ``peer``: Ultralytics YOLOv8s trained by its own trainer on the same synthetic images written in
  YOLO format (its default recipe: Mosaic, ``close_mosaic=1``), counted over the same epochs.
* ``short``: rtmdet_tiny, 320 px, batch 8, 68 images, 150 epochs, alone on the GPU: ms per training
  step and seconds spent outside training (process wall time minus ``perf/train_time_s``), once
  with the default checkpoint/validation settings and once with both at the last epoch only. The
  built-in data set is generated before (untimed), as a study's later runs find it.
* ``ddp``: the e2e recipe under ``torchrun --nproc_per_node=N`` for each N in ``--gpus`` (those the
  machine has); total images/s (rank 0 reports the sum) and the scaling against one GPU.

Targets (printed as ratios): e2e >= 90% of the bare step (``--bare`` JSON of bench/train_step.py) and
>= 1.2x Ultralytics end to end; short run <= 20 ms/step and <= 15 s outside training; DDP 2 GPUs >=
1.85x one, 4 GPUs >= 3.5x. ``--quick`` runs every case on the CPU with tiny sizes (a smoke test of
this script; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

TARGETS = {"e2e_vs_bare": 0.90, "e2e_vs_peer": 1.2, "short_ms_per_step": 20.0, "short_outside_s": 15.0,
           "ddp_2": 1.85, "ddp_4": 3.5}


def settings(quick: bool, workers: int) -> dict[str, Any]:
    """Sizes of every case: the issue's on a GPU, tiny ones for --quick on the CPU."""
    if quick:
        return {"device": "cpu", "model": "rtmdet_tiny", "size": 64, "batch": 4, "images": 32, "epochs": 4,
                "workers": 0, "peer": "yolov8n", "short": {"size": 64, "batch": 4, "images": 16, "epochs": 3},
                "extra": ["model.backbone.widen_factor=0.125", "data.synthetic.num_val=8"]}
    return {"device": "cuda", "model": "rtmdet_s", "size": 640, "batch": 32, "images": 2560, "epochs": 4,
            "workers": workers, "peer": "yolov8s", "short": {"size": 320, "batch": 8, "images": 68, "epochs": 150},
            "extra": []}


def run_ours(args: list[str], run_dir: Path, timeout: float, nproc: int = 1) -> dict[str, Any]:
    """``python run.py ARGS`` (under torchrun for nproc > 1); wall time, results and metrics records.

    The output goes to ``<run_dir>.log`` as it is written. A run past ``timeout`` seconds
    (``--run-timeout``) is sent SIGABRT first, which makes every Python process of it print its threads'
    stacks into that log (faulthandler), then killed: a hang says where it hangs.
    """
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"] \
        if nproc > 1 else [sys.executable]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run every time (a finished one would be refused)
    log_path = run_dir.parent / f"{run_dir.name}.log"
    started = time.perf_counter()
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([*launcher, str(REPO / "run.py"), *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                                env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # torchrun's ranks may sit in their own process groups: each by pid
            tree = [proc.pid, *_descendants(proc.pid)]
            _signal_all(tree, signal.SIGABRT)
            time.sleep(5)
            _signal_all(tree, signal.SIGKILL)
            proc.wait()
            code = None
    wall = time.perf_counter() - started
    if code != 0:
        tail = log_path.read_text(errors="replace")[-1500:]
        what = f"timed out after {wall:.0f} s (stacks in {log_path.name})" if code is None else f"exit {code}"
        return {"error": f"{what}: {tail}", "wall_s": wall}
    results = json.loads((run_dir / "results.json").read_text())["metrics"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"wall_s": wall, "results": results, "records": records}


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid``, from /proc (the benchmarks run on Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the field after the command name
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def window_throughput(records: list[dict], first: float, last: float) -> float | None:
    """Time-weighted images/s of the training records whose epoch position is in (first, last]."""
    images = seconds = 0.0
    previous = 0
    for rec in records:
        if "perf/images_per_s" not in rec:
            continue
        steps, previous = rec["step"] - previous, rec["step"]
        if first < rec["epoch"] <= last:
            elapsed = steps * rec["perf/step_time_s"]
            images += rec["perf/images_per_s"] * elapsed
            seconds += elapsed
    return images / seconds if seconds > 0 else None


def e2e_args(s: dict[str, Any], mode: str) -> list[str]:
    """``mode`` is a ``trainer.step_mode``, ``+compile`` after it sets ``trainer.compile=true``."""
    mode, _, compiled = mode.partition("+")
    return ["experiment=paper", f"model={s['model']}", f"trainer.device={s['device']}", f"trainer.step_mode={mode}",
            f"trainer.compile={str(compiled == 'compile').lower()}",
            f"trainer.max_epochs={s['epochs']}", "augment.stage2_epochs=1", f"data.img_size={s['size']}",
            f"data.batch_size={s['batch']}", f"data.num_workers={s['workers']}",
            f"data.synthetic.num_train={s['images']}", f"trainer.val_interval={s['epochs']}", "logger=none",
            *s["extra"], *s.get("overrides", [])]


def case_e2e(s: dict[str, Any], modes: list[str], work: Path, nproc: int = 1) -> list[dict]:
    rows = []
    for mode in modes:
        out = run_ours(e2e_args(s, mode), work / f"e2e_{mode}_x{nproc}", s["run_timeout"], nproc)
        row: dict[str, Any] = {"case": "e2e" if nproc == 1 else f"ddp_{nproc}", "mode": mode, "gpus": nproc,
                               "wall_s": out["wall_s"]}
        if "error" in out:
            rows.append({**row, "error": out["error"]})
            continue
        # stage 1 after the first epoch: epoch positions (1, epochs - stage2]
        row["img_per_s"] = window_throughput(out["records"], 1.0, s["epochs"] - 1.0)
        row["startup_s"] = next((r["perf/startup_s"] for r in out["records"] if "perf/startup_s" in r), None)
        row["data_wait_frac"] = _mean([r["perf/data_wait_frac"] for r in out["records"]
                                      if "perf/data_wait_frac" in r and 1.0 < r["epoch"] <= s["epochs"] - 1.0])
        row["gpu_mem_peak_gb"] = out["results"].get("perf/gpu_mem_peak_gb")
        rows.append(row)
    return rows


def case_peer(s: dict[str, Any], work: Path) -> list[dict]:
    """Ultralytics' trainer on our synthetic images; images/s over its epochs 2..E-1 (Mosaic on)."""
    if importlib.util.find_spec("ultralytics") is None:
        return [{"case": "peer", "error": "ultralytics is not importable"}]
    from loader import write_yolo_dataset
    from ultralytics import YOLO

    from rtmdet_exp.data.synthetic import ensure_synthetic_dataset
    from rtmdet_exp.experiment import compose

    data = compose(e2e_args(s, "eager")).data  # the dataset (and folder) our e2e run trains on
    root = Path(data.root) if Path(data.root).is_absolute() else REPO / data.root  # run.py runs in REPO
    paths = ensure_synthetic_dataset(root, num_train=data.synthetic.num_train, num_val=data.synthetic.num_val,
                                     img_size=data.img_size, seed=data.synthetic.seed, num_classes=data.num_classes)
    yolo_root = work / "yolo"
    train_dir = write_yolo_dataset(paths, yolo_root)
    val_paths = {**paths, "train_json": paths["val_json"], "train_images": paths["val_images"]}
    val_dir = write_yolo_dataset(val_paths, work / "yolo_val")
    data_yaml = work / "yolo.yaml"
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(paths["class_names"]))
    data_yaml.write_text(f"train: {train_dir}\nval: {val_dir}\nnames:\n{names}\n")
    marks: list[tuple[str, float, int]] = []
    model = YOLO(f"{s['peer']}.yaml")
    model.add_callback("on_train_epoch_start", lambda tr: marks.append(("start", time.perf_counter(), tr.epoch)))
    model.add_callback("on_train_epoch_end", lambda tr: marks.append(("end", time.perf_counter(), tr.epoch)))
    started, failure = time.perf_counter(), None
    try:  # save=False: no per-epoch checkpoints (their final one needs polars, which may be absent)
        model.train(data=str(data_yaml), epochs=s["epochs"], imgsz=s["size"], batch=s["batch"], workers=s["workers"],
                    device=0 if s["device"] == "cuda" else "cpu", val=False, plots=False, close_mosaic=1, save=False,
                    project=str(work / "ultralytics"), name="run", exist_ok=True, verbose=False, seed=0)
    except Exception as err:  # noqa: BLE001 - an error after the timed epochs still leaves their times
        failure = f"{type(err).__name__}: {err}"
    per_epoch = (s["images"] // s["batch"]) * s["batch"]
    starts = {e: t for kind, t, e in marks if kind == "start"}
    ends = {e: t for kind, t, e in marks if kind == "end"}
    window = [e for e in range(1, s["epochs"] - 1) if e in starts and e in ends]  # 0-based epochs 1..E-2
    seconds = sum(ends[e] - starts[e] for e in window)
    import ultralytics

    row = {"case": "peer", "model": s["peer"], "version": ultralytics.__version__,
           "img_per_s": per_epoch * len(window) / seconds if seconds > 0 else None,
           "wall_s": time.perf_counter() - started, "note": failure}
    if seconds <= 0:
        row["error"] = failure or "no complete epoch in the timed window"
    return [row]


def prepare_data(overrides: list[str]) -> None:
    """Generate the built-in data set the runs read, untimed: a study's runs find it made by its first."""
    from rtmdet_exp.experiment import build, compose

    cfg = compose(overrides)
    build.build_data(cfg, build.build_augment(cfg)).setup()


def case_short(s: dict[str, Any], modes: list[str], work: Path, lean_only: bool = False) -> list[dict]:
    short, rows = s["short"], []
    base = [f"model={s['model'] if s['extra'] else 'rtmdet_tiny'}", f"trainer.device={s['device']}",
            f"data.img_size={short['size']}", f"data.batch_size={short['batch']}",
            f"data.synthetic.num_train={short['images']}", f"trainer.max_epochs={short['epochs']}", "logger=none",
            *s["extra"], *s.get("overrides", [])]
    lean = [f"trainer.checkpoint_interval={short['epochs']}", f"trainer.val_interval={short['epochs']}",
            f"trainer.stage2_val_interval={short['epochs']}"]
    prepare_data(base)
    for mode in modes:
        variants = (("default", []), ("last-epoch ckpt+val", lean))
        for variant, extra in variants[1:] if lean_only else variants:
            out = run_ours([*base, f"trainer.step_mode={mode}", *extra], work / f"short_{mode}_{len(extra)}",
                           s["run_timeout"])
            row: dict[str, Any] = {"case": "short", "mode": mode, "variant": variant, "wall_s": out["wall_s"]}
            if "error" in out:
                rows.append({**row, "error": out["error"]})
                continue
            res = out["results"]
            row.update(ms_per_step=res["perf/train_time_s"] / max(res["steps"], 1) * 1e3,
                       outside_s=out["wall_s"] - res["perf/train_time_s"],
                       val_s=sum(r.get("perf/val_time_s", 0.0) for r in out["records"]),
                       startup_s=next((r["perf/startup_s"] for r in out["records"] if "perf/startup_s" in r), None))
            rows.append(row)
    return rows


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def summarise(rows: list[dict], bare: dict | None) -> list[str]:
    """Target lines: e2e vs bare and vs peer, short-run limits, DDP scaling."""
    lines = []
    peer = next((r for r in rows if r["case"] == "peer" and r.get("img_per_s")), None)
    bare_by_mode = {r["mode"]: r["img_per_s"] for r in (bare or {}).get("rows", []) if r.get("mode") and
                    r.get("img_per_s")}
    for r in (r for r in rows if r["case"] == "e2e" and r.get("img_per_s")):
        if r["mode"] in bare_by_mode:
            lines.append(f"e2e {r['mode']}: {r['img_per_s'] / bare_by_mode[r['mode']]:.2f} of the bare step "
                         f"(target >= {TARGETS['e2e_vs_bare']})")
        if peer:
            lines.append(f"e2e {r['mode']}: {r['img_per_s'] / peer['img_per_s']:.2f}x {peer['model']} end to end "
                         f"(target >= {TARGETS['e2e_vs_peer']})")
    for r in (r for r in rows if r["case"] == "short" and "ms_per_step" in r):
        lines.append(f"short {r['mode']} ({r['variant']}): {r['ms_per_step']:.1f} ms/step (target <= "
                     f"{TARGETS['short_ms_per_step']}), {r['outside_s']:.1f} s outside training (target <= "
                     f"{TARGETS['short_outside_s']})")
    for mode in {r["mode"] for r in rows if r["case"].startswith("ddp")}:
        one = next((r.get("img_per_s") for r in rows if r["case"] in ("e2e", "ddp_1") and r.get("mode") == mode
                    and r.get("img_per_s")), None)
        for r in (r for r in rows if r["case"].startswith("ddp") and r["mode"] == mode and r.get("img_per_s")):
            if one and r["gpus"] > 1:
                target = TARGETS.get(f"ddp_{r['gpus']}")
                lines.append(f"ddp {mode} {r['gpus']} GPUs: {r['img_per_s'] / one:.2f}x one (target >= {target})")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="+", default=["e2e", "peer", "short", "ddp"],
                        choices=["e2e", "peer", "short", "ddp"])
    parser.add_argument("--modes", nargs="+", default=None, help="step modes of ours (default: eager cuda_graph)")
    parser.add_argument("--workers", type=int, default=14, help="loader workers per process")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4], help="DDP process counts")
    parser.add_argument("--bare", type=Path, default=None, help="bench/train_step.py JSON for the e2e/bare ratio")
    parser.add_argument("--one", type=Path, default=None, help="an earlier throughput JSON: its e2e rows are the "
                        "one-GPU baseline of --case ddp and its peer row the e2e peer")
    parser.add_argument("--lean-only", action="store_true", help="short case: only the last-epoch ckpt+val variant")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run with tiny sizes")
    parser.add_argument("--override", nargs="*", default=[], help="more run.py overrides for our runs "
                        "(e.g. trainer.sync_bn=false)")
    parser.add_argument("--run-timeout", type=float, default=900, help="seconds before a run is stopped "
                        "(its stacks are printed into its log first)")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".cache" / "throughput")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "throughput.json")
    args = parser.parse_args(argv)
    s = settings(args.quick, args.workers)
    s["overrides"], s["run_timeout"] = list(args.override), args.run_timeout
    modes = args.modes or (["eager"] if args.quick else ["eager", "cuda_graph"])
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if "e2e" in args.case:
        rows += case_e2e(s, modes, args.work)
    if "peer" in args.case:
        rows += case_peer(s, args.work)
    if "short" in args.case:
        rows += case_short(s, modes, args.work, args.lean_only)
    if "ddp" in args.case:
        available = 2 if args.quick else _gpu_count()
        for n in (n for n in args.gpus if 1 < n <= available):
            rows += case_e2e(s, modes, args.work, nproc=n)
        skipped = [n for n in args.gpus if n > available]
        if skipped:
            rows.append({"case": "ddp", "mode": "-", "error": f"not run: {skipped} GPUs asked, {available} here"})
    bare = json.loads(args.bare.read_text()) if args.bare and args.bare.is_file() else None
    earlier = json.loads(args.one.read_text())["rows"] if args.one and args.one.is_file() else []
    print(f"\n{'case':8s} {'mode':11s} {'variant':20s} {'img/s':>8s} {'ms/step':>8s} {'outside s':>9s} "
          f"{'wall s':>7s} {'data wait':>9s}")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:8s} {r.get('mode', '-'):11s} failed: {r['error'][:300]}")
            continue
        print(f"{r['case']:8s} {r.get('mode', r.get('model', '-')):11s} {r.get('variant', ''):20s} "
              f"{_fmt(r.get('img_per_s')):>8s} {_fmt(r.get('ms_per_step')):>8s} {_fmt(r.get('outside_s')):>9s} "
              f"{_fmt(r.get('wall_s')):>7s} {_fmt(r.get('data_wait_frac'), '.2f'):>9s}")
    lines = summarise(rows + [r for r in earlier if r["case"] in ("e2e", "peer")], bare)
    print("\n".join(lines))
    report = {"quick": args.quick, "settings": s, "targets": TARGETS, "rows": rows, "summary": lines}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


if __name__ == "__main__":
    main()
