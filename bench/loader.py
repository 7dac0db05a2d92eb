"""Training-loader throughput: our stage-1 RTMDet pipeline (Mosaic + MixUp at 640) vs Ultralytics'.

    python bench/loader.py [--quick] [--workers 0 1 2] [--images 200] [--out bench/results/loader.json]

Measures, on the built-in dataset rendered at 640 px (generated once into bench/.cache/):

1. images/s through the full stage-1 pipeline (decode + CachedMosaic + RandomResize + RandomCrop + HSV +
   flip + Pad + CachedMixUp) in this process, i.e. per worker process;
   the same with the images decoded once into memory first (``data.cache_images=true``);
2. images/s through a DataLoader (batch 8, our collate, one OpenCV thread per worker as the platform's
   loaders run) for each ``--workers`` count, and per worker; at the largest count also with the
   images in RAM, and the same with OpenCV's default thread pool in every worker;
3. the same two numbers for Ultralytics' YOLO training dataset (Mosaic + RandomPerspective + MixUp at
   640, ``mixup=1.0``) on the same images with YOLO-format labels, when ``ultralytics`` is importable;
   the ratio ours/theirs is printed (target: >= 1.5 per worker);
4. CachedMosaic and CachedMixUp in ms per 100 images against the uncached variants, which must decode
   the partner images (3 for Mosaic, 1 for MixUp) from disk for every sample (paper ablation 5(f):
   Mosaic 87.1 -> 24.0 ms, MixUp 19.3 -> 12.4 ms).

Steady state only: caches are filled and workers started before the clock runs. The machine's other
load shows up in the numbers; compare ours and theirs from the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rtmdet_exp.data.coco import CocoDetection  # noqa: E402
from rtmdet_exp.data.collate import collate  # noqa: E402
from rtmdet_exp.data.pipelines import TwoStagePipeline  # noqa: E402
from rtmdet_exp.data.synthetic import ensure_synthetic_dataset  # noqa: E402
from rtmdet_exp.experiment import build, compose  # noqa: E402
from rtmdet_exp.data.mixing import CachedMixUp, CachedMosaic  # noqa: E402
from rtmdet_exp.data.transforms import LetterboxResize  # noqa: E402

IMG_SIZE = 640
BATCH = 8
CACHE = REPO / "bench" / ".cache"
OPENCV_DEFAULT_THREADS = cv2.getNumThreads()  # before anything here changes it
PAPER_MS_PER_100 = {"mosaic": {"uncached": 87.1, "cached": 24.0}, "mixup": {"uncached": 19.3, "cached": 12.4}}


def dataset_paths(num_images: int) -> dict[str, Any]:
    """The built-in dataset at 640 px under bench/.cache (generated on first use)."""
    return ensure_synthetic_dataset(
        CACHE / f"synthetic_{IMG_SIZE}_{num_images}", num_train=num_images, num_val=0, img_size=IMG_SIZE, seed=0
    )


def stage1_pipeline(seed: int = 0) -> TwoStagePipeline:
    """Stage 1 of conf/augment/rtmdet.yaml at 640 px (the paper's rtmdet_s recipe), as a run builds it."""
    cfg = compose(["experiment=paper", "model=rtmdet_s", f"data.img_size={IMG_SIZE}", f"seed={seed}"])
    pipe = build.build_augment(cfg).pipeline
    pipe.set_epoch(0)
    return pipe


def time_in_process(get: Any, size: int, count: int, warmup: int) -> float:
    """Images/s of ``get(i)`` over ``count`` indices after ``warmup`` untimed ones (fills the caches)."""
    order = np.resize(np.random.default_rng(0).permutation(size), warmup + count)  # repeats if size is small
    for i in order[:warmup]:
        get(int(i))
    start = time.perf_counter()
    for i in order[warmup : warmup + count]:
        get(int(i))
    return count / (time.perf_counter() - start)


def time_loader(dataset: torch.utils.data.Dataset, collate_fn: Any, workers: int, batches: int,
                opencv_threads: int = 1) -> float:
    """Images/s of a shuffled DataLoader, timed from the end of the first (warm-up) batches.

    ``opencv_threads`` is set before the workers fork (they inherit it): 1 as the platform's loaders
    set it, or OpenCV's own default.
    """
    cv2.setNumThreads(opencv_threads)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_fn,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    # startup, cache filling in every worker and the batches prefetched meanwhile (2 per worker) are
    # consumed before the clock starts; then enough batches that the workers' pace decides the rate
    skip = max(2, 4 * workers)
    batches = max(batches, 4 * workers)
    it = iter(loader)
    seen = 0
    start = time.perf_counter()
    for k, _ in enumerate(it):
        if k == skip - 1:
            start, seen = time.perf_counter(), 0
            continue
        seen += BATCH
        if k >= skip - 1 + batches:
            break
    elapsed = time.perf_counter() - start
    del it
    return seen / elapsed


class _Resampled(torch.utils.data.Dataset):
    """``base`` indexed modulo its length, so a loader can run more batches than there are images."""

    def __init__(self, base: torch.utils.data.Dataset, length: int) -> None:
        self.base, self.length = base, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.base[index % len(self.base)]


# ------------------------------------------------------------------------------------ ultralytics


def ultralytics_available() -> bool:
    return importlib.util.find_spec("ultralytics") is not None


def write_yolo_dataset(paths: dict[str, Any], root: Path) -> Path:
    """The same images (symlinked) with YOLO txt labels (class cx cy w h, normalised); returns the image dir."""
    coco = json.loads(Path(paths["train_json"]).read_text())
    cat_ids = sorted(c["id"] for c in coco["categories"])
    label_of = {c: i for i, c in enumerate(cat_ids)}
    img_dir, lbl_dir = root / "images" / "train", root / "labels" / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    per_image: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
    size = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        w, h = size[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        if bw <= 0 or bh <= 0:
            continue
        per_image[ann["image_id"]].append(
            f"{label_of[ann['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
        )
    for im in coco["images"]:
        src = Path(paths["train_images"]) / im["file_name"]
        dst = img_dir / Path(im["file_name"]).name
        if not dst.exists():
            dst.symlink_to(src)
        (lbl_dir / (dst.stem + ".txt")).write_text("\n".join(per_image[im["id"]]) + "\n")
    return img_dir


def ultralytics_dataset(img_dir: Path, class_names: list[str]) -> Any:
    """Ultralytics' YOLO training dataset: Mosaic + RandomPerspective + MixUp (p=1) + HSV + flip at 640."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.utils import LOGGER

    LOGGER.setLevel(logging.ERROR)
    cfg = get_cfg(overrides={"imgsz": IMG_SIZE, "mosaic": 1.0, "mixup": 1.0, "cache": False, "task": "detect"})
    data = {"names": dict(enumerate(class_names)), "nc": len(class_names), "channels": 3}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return build_yolo_dataset(cfg, str(img_dir), batch=BATCH, data=data, mode="train")


# ------------------------------------------------------------------------------------ cache timing


def time_cache(dataset: CocoDetection, samples: list[dict], count: int) -> dict[str, dict[str, float]]:
    """ms per 100 images of CachedMosaic / CachedMixUp, cached (steady state) vs decoding partners per sample."""
    rng = np.random.default_rng(0)
    n = len(dataset)
    mosaic = CachedMosaic(img_scale=(IMG_SIZE, IMG_SIZE))
    for s in samples[:40]:
        mosaic(s)
    stream = [samples[i % len(samples)] for i in range(count)]
    start = time.perf_counter()
    for s in stream:
        mosaic(s)
    cached = (time.perf_counter() - start) / count * 100 * 1e3
    start = time.perf_counter()
    for s in stream:
        mosaic.tile(s, [dataset.load_sample(int(j)) for j in rng.integers(0, n, 3)])
    uncached = (time.perf_counter() - start) / count * 100 * 1e3
    result = {"mosaic": {"cached": cached, "uncached": uncached}}

    # MixUp receives padded 640 x 640 samples in the pipeline; the uncached one decodes its partner raw
    base = [_letterbox(s) for s in stream]
    mixup = CachedMixUp(img_scale=(IMG_SIZE, IMG_SIZE))
    for s in base[:20]:
        mixup(s)
    start = time.perf_counter()
    for s in base:
        mixup(s)
    cached = (time.perf_counter() - start) / count * 100 * 1e3
    start = time.perf_counter()
    for s in base:
        mixup.blend(s, dataset.load_sample(int(rng.integers(0, n))))
    uncached = (time.perf_counter() - start) / count * 100 * 1e3
    result["mixup"] = {"cached": cached, "uncached": uncached}
    return result


def _letterbox(sample: dict) -> dict:
    """The sample fitted and padded to 640 x 640 (the shape MixUp receives after Pad)."""
    return LetterboxResize(IMG_SIZE)(sample)


# ------------------------------------------------------------------------------------ main


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images per measurement (< 60 s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--images", type=int, default=200, help="images in the generated 640 px dataset")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "loader.json", help="JSON output")
    args = parser.parse_args(argv)
    if any(w < 0 for w in args.workers) or args.images < 16:
        parser.error("--workers must be >= 0 and --images >= 16")
    count, batches, cache_count = (40, 5, 100) if args.quick else (200, 25, 300)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # per worker: one thread each, as the platform's loader workers run

    t0 = time.perf_counter()
    paths = dataset_paths(args.images)
    gen_s = time.perf_counter() - t0
    ours = CocoDetection(paths["train_images"], paths["train_json"], pipeline=stage1_pipeline())
    n = len(ours)
    length = BATCH * (max(batches, 4 * max(args.workers)) + 4 * max(args.workers) + 4)

    results: dict[str, Any] = {"ours": {}, "ultralytics": None}
    results["ours"]["in_process"] = time_in_process(ours.__getitem__, n, count, warmup=20)
    results["ours"]["loader"] = {w: time_loader(_Resampled(ours, length), collate, w, batches) for w in args.workers}
    cached = CocoDetection(paths["train_images"], paths["train_json"], pipeline=stage1_pipeline())
    cached.cache_images()  # data.cache_images=true: decoded once, before the workers fork
    results["ours"]["in_process_cached"] = time_in_process(cached.__getitem__, n, count, warmup=20)
    most = max(args.workers)
    if most > 0:  # the training run's setting, and the same with OpenCV's default thread pool in every worker
        results["ours"]["loader_cached"] = time_loader(_Resampled(cached, length), collate, most, batches)
        results["ours"]["loader_cached_cv2_pool"] = time_loader(_Resampled(cached, length), collate, most, batches,
                                                                OPENCV_DEFAULT_THREADS)

    theirs_note = "ultralytics not installed"
    if ultralytics_available():
        import ultralytics

        img_dir = write_yolo_dataset(paths, CACHE / f"yolo_{IMG_SIZE}_{args.images}")
        yolo = ultralytics_dataset(img_dir, list(paths["class_names"]))
        results["ultralytics"] = {
            "version": ultralytics.__version__,
            "in_process": time_in_process(yolo.__getitem__, len(yolo), count, warmup=20),
            "loader": {
                w: time_loader(_Resampled(yolo, length), type(yolo).collate_fn, w, batches) for w in args.workers
            },
        }
        theirs_note = f"ultralytics {ultralytics.__version__}"

    raw = CocoDetection(paths["train_images"], paths["train_json"])
    samples = [raw.load_sample(i) for i in range(min(n, 60))]
    cache = time_cache(raw, samples, cache_count)

    # ------------------------------------------------------------------ report
    theirs = results["ultralytics"]
    rows = [("in-process (1 worker)", results["ours"]["in_process"], theirs and theirs["in_process"], 1),
            ("in-process, RAM cache", results["ours"]["in_process_cached"], None, 1)]
    rows += [
        (f"DataLoader, {w} workers", results["ours"]["loader"][w], theirs and theirs["loader"][w], max(w, 1))
        for w in args.workers
    ]
    if most > 0:
        rows += [(f"DataLoader, {most} workers, RAM cache", results["ours"]["loader_cached"], None, most),
                 (f"  the same, OpenCV threads {OPENCV_DEFAULT_THREADS} per worker",
                  results["ours"]["loader_cached_cv2_pool"], None, most)]
    print(f"\nstage-1 pipeline at {IMG_SIZE}x{IMG_SIZE}, {n} images, batch {BATCH} ({os.cpu_count()} CPUs; "
          f"theirs: {theirs_note})")
    print(f"{'measure':<40}{'ours img/s':>12}{'per worker':>12}{'theirs img/s':>14}{'per worker':>12}{'ratio':>8}")
    table = []
    for name, ips, tips, per in rows:
        ratio = ips / tips if tips else None
        table.append({"measure": name, "ours_ips": ips, "ours_per_worker": ips / per,
                      "theirs_ips": tips, "theirs_per_worker": tips / per if tips else None, "ratio": ratio})
        theirs_cols = (f"{_fmt(tips):>14}{_fmt(tips / per if tips else None):>12}{_fmt(ratio, '.2f'):>8}"
                       if theirs and tips else f"{'-' if theirs else 'ultralytics not installed':>34}")
        print(f"{name:<40}{ips:>12.1f}{ips / per:>12.1f}{theirs_cols}")
    print(f"\n{'cache (ms / 100 images)':<24}{'uncached':>10}{'cached':>10}{'speed-up':>10}{'paper':>18}")
    for key in ("mosaic", "mixup"):
        c, p = cache[key], PAPER_MS_PER_100[key]
        print(f"{key:<24}{c['uncached']:>10.1f}{c['cached']:>10.1f}{c['uncached'] / c['cached']:>9.1f}x"
              f"{p['uncached']:>10.1f} -> {p['cached']:.1f}")
    report = {
        "img_size": IMG_SIZE,
        "batch_size": BATCH,
        "num_images": n,
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "dataset_seconds": gen_s,
        "theirs": theirs_note,
        "throughput": table,
        "target_ratio_per_worker": 1.5,
        "cache_ms_per_100": cache,
        "paper_ms_per_100": PAPER_MS_PER_100,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
