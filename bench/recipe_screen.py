"""Screen candidate recipes for the CPU default run on a GPU: every candidate x seed, K runs at a time.

    python bench/recipe_screen.py --candidates bench/recipes.txt --seeds 0 1 2 --parallel 8
    python bench/recipe_screen.py --smoke        # two tiny CPU runs (checks the script)

Issue 13, item 5: the default ``python run.py`` must reach mAP50 >= 0.55 within 10 minutes on a
2-core CPU. A CPU run takes 10-17 minutes, so candidates are screened here first: each line of
``--candidates`` is one recipe (overrides on top of the default experiment), run once per seed as
``python run.py trainer.device=cuda trainer.precision=fp32 seed=S <line>`` with TF32 off
(``NVIDIA_TF32_OVERRIDE=0``), so the arithmetic is the CPU's fp32 up to summation order. The steps,
data order and augmentation are those of the CPU run; only its wall time differs, which is why
the CPU step time of each candidate's (batch, image size) is measured on the CPU separately
(bench/NOTES.md). Prints per candidate the val mAP50 of each seed, their mean and minimum, and the
GPU training time; writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU = ["trainer.device=cuda", "trainer.precision=fp32", "data.num_workers=2"]
SMOKE = ["trainer.device=cpu", "model.backbone.widen_factor=0.125", "data.num_workers=0",
         "data.synthetic.num_train=8", "data.synthetic.num_val=4", "trainer.max_epochs=1", "trainer.val_interval=1"]


def read_candidates(path: Path) -> list[str]:
    """One recipe per non-empty line (``#`` starts a comment)."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def run_one(index: int, candidate: str, seed: int, base: list[str], out: Path) -> dict:
    """One training run (candidate ``index``); its final metrics (or the error) and wall time."""
    run_dir = out / "runs" / f"c{index}_s{seed}"
    given = {item.split("=", 1)[0] for item in candidate.split()}
    cmd = [sys.executable, "run.py", *(b for b in base if b.split("=", 1)[0] not in given), f"seed={seed}",
           *candidate.split(), f"hydra.run.dir={run_dir}", "logger=none"]
    env = {**os.environ, "NVIDIA_TF32_OVERRIDE": "0"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, check=False)
    row: dict = {"candidate": candidate, "seed": seed, "wall_s": time.perf_counter() - started}
    results = run_dir / "results.json"
    if proc.returncode != 0 or not results.exists():
        row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return row
    metrics = json.loads(results.read_text())["metrics"]
    row.update(mAP50=metrics.get("val/mAP50"), mAP=metrics.get("val/mAP"), train_s=metrics.get("perf/train_time_s"))
    return row


def summarise(rows: list[dict], candidates: list[str]) -> list[dict]:
    """Per candidate: the seeds' mAP50, mean, min and population std."""
    table = []
    for candidate in candidates:
        done = [r for r in rows if r["candidate"] == candidate and r.get("mAP50") is not None]
        values = [r["mAP50"] for r in sorted(done, key=lambda r: r["seed"])]
        table.append({"candidate": candidate or "(default)", "mAP50": values,
                      "mean": statistics.fmean(values) if values else None, "min": min(values, default=None),
                      "std": statistics.pstdev(values) if len(values) > 1 else None,
                      "train_s": statistics.fmean(r["train_s"] or 0.0 for r in done) if done else None,
                      "failed": sum(1 for r in rows if r["candidate"] == candidate and "error" in r)})
    return table


def fmt(value: float | None) -> str:
    """A table cell: three decimals, or a dash."""
    return f"{value:6.3f}" if value is not None else "     -"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=Path, default=REPO / "bench" / "recipes.txt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=8, help="runs at a time")
    parser.add_argument("--smoke", action="store_true", help="two tiny CPU runs of the default recipe")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / ".cache" / "recipe_screen")
    args = parser.parse_args(argv)
    candidates = [""] if args.smoke else read_candidates(args.candidates)
    seeds = args.seeds[:2] if args.smoke else args.seeds
    base = SMOKE if args.smoke else GPU
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(i, c, s) for i, c in enumerate(candidates) for s in seeds]
    shutil.rmtree(args.out / "runs", ignore_errors=True)
    started = time.perf_counter()
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = [pool.submit(run_one, *job, base, args.out) for job in jobs]
        for future in as_completed(futures):  # each finished run is kept at once (a time limit loses nothing)
            rows.append(future.result())
            row = rows[-1]
            print(f"[{len(rows)}/{len(jobs)}] seed {row['seed']} mAP50 {row.get('mAP50')} "
                  f"{row['wall_s']:.0f} s: {row['candidate'] or '(default)'}", flush=True)
            (args.out / "recipe_screen.json").write_text(json.dumps({"base": base, "runs": rows}, indent=2))
    table = summarise(rows, candidates)
    print(f"\n{len(jobs)} runs in {time.perf_counter() - started:.0f} s, {args.parallel} at a time")
    print(f"{'mean':>6} {'min':>6} {'std':>6} {'train':>6}  per seed               candidate")
    for t in table:
        per_seed = " ".join(f"{v:.3f}" for v in t["mAP50"])
        print(f"{fmt(t['mean'])} {fmt(t['min'])} {fmt(t['std'])} {fmt(t['train_s'])}  {per_seed:<22} "
              f"{t['candidate']}{'  (' + str(t['failed']) + ' failed)' if t['failed'] else ''}")
    for r in rows:
        if "error" in r:
            print(f"failed: seed {r['seed']} {r['candidate']}: {r['error']}")
    result = {"base": base, "seeds": seeds, "runs": rows, "table": table}
    (args.out / "recipe_screen.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
