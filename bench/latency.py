"""Inference latency of our detector beside its peers: batch 1 and 32, fp16/bf16, network and end to end.

One command on a GPU machine (repository root) produces every number (table + JSON):

    python bench/latency.py --out bench/results/latency.json [--checkpoint path/to/best.pt]

CPU smoke run (tiny model, 64 px, a few iterations; what the CPU-only machines can check):

    python bench/latency.py --quick

Rows:
* ``network``: the network alone (normalised fp16/bf16 input to raw head outputs), per model: ours
  (rtmdet_s under the paper's recipe, 80 classes) unfused eager, fused eager and fused CUDA graph,
  and at batch 32 fused + ``torch.compile`` (Inductor, one static shape) under a CUDA graph;
  YOLOv8s fused (``ultralytics``) and mmdetection's RTMDet-s unfused and fused, eager and graph,
  when importable (else a row says why not).
* ``end-to-end``: uint8 images to detections (normalise, network, decode, per-level top-k,
  class-aware NMS, top max_per_img) through :class:`rtmdet_exp.deploy.fast.FastPredictor`: CUDA
  graph as the predictor chooses by default (``graph``: under deployment settings with the fixed-shape
  NMS inside it; its note says so, and when the host NMS had to run), CUDA graph with torchvision's
  NMS after it (``graph+host NMS``) and eager, under the paper's test settings (score_thr 0.001, nms_pre 30000, 300 per image)
  and deployment settings (score_thr 0.25, 100 per image). NMS cost depends on the scores, so these
  rows use a trained model: ``--checkpoint`` if given, else the model trained here for a few
  hundred steps on the built-in data. Its classifier is repeated to 80 classes (class j reads the
  trained class j mod C), so NMS sees a COCO-sized class count with a trained score distribution.
  Inputs are the built-in data's val images. Before timing, the graph's detections are checked
  against the eager path's (column ``check``).

Each time is the median over ``--iters`` calls, each waited for (device synchronised): a latency,
not a throughput. Targets (issue 14, H200): rtmdet_s batch 1 end to end under deployment settings
<= 2.5 ms; batch 32 network <= 8 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `tests.support` (mmdet stand-in) and the package from a checkout

from rtmdet_exp.deploy.decode import DEPLOYMENT, PAPER_TEST  # noqa: E402
from rtmdet_exp.deploy.fast import CudaGraph, FastPredictor  # noqa: E402
from rtmdet_exp.deploy.inference import InferenceModel, parse_dtype  # noqa: E402
from rtmdet_exp.deploy.latency import time_call  # noqa: E402
from rtmdet_exp.experiment import build, compose  # noqa: E402
from rtmdet_exp.models.fuse import fuse_conv_bn  # noqa: E402

COCO_CLASSES = 80


def timed(fn: Callable[[], Any], device: torch.device, iters: int) -> float:
    """Median ms per call; fewer calls when one takes long (at most ~3 s per row)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    n = max(3, min(iters, int(3.0 / max(first, 1e-4))))
    return statistics.median(time_call(fn, device, iters=n, warmup=min(10, n)))


def network_input(batch: int, size: int, dtype: torch.dtype, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def graph_or_reason(fn: Callable[..., Any], inputs: list[torch.Tensor]) -> tuple[Any, str]:
    try:
        return CudaGraph(fn, inputs), ""
    except (RuntimeError, ValueError) as err:
        return None, f"graph capture failed: {str(err).splitlines()[0][:80]}"


def time_network(name: str, net: torch.nn.Module, args: argparse.Namespace, device: torch.device,
                 graph: bool) -> list[dict[str, Any]]:
    """Rows of one network over batches and precisions (eager, or replayed as a CUDA graph)."""
    rows = []
    for dtype_name in args.dtypes:
        model = net.to(device, parse_dtype(dtype_name)).eval()
        cl = device.type == "cuda"
        if cl:
            model = model.to(memory_format=torch.channels_last)
        for batch in args.batches:
            x = network_input(batch, args.size, parse_dtype(dtype_name), device, cl)
            row = {"kind": "network", "model": name, "mode": "graph" if graph else "eager", "dtype": dtype_name,
                   "batch": batch, "ms": None, "note": ""}
            with torch.no_grad():
                if graph:
                    runner, row["note"] = graph_or_reason(model, [x]) if device.type == "cuda" else (None, "no GPU")
                    if runner is not None:
                        row["ms"] = timed(lambda: runner(x), device, args.iters)
                else:
                    row["ms"] = timed(lambda: model(x), device, args.iters)
            rows.append(row)
    return rows


def our_network(args: argparse.Namespace) -> torch.nn.Module:
    """rtmdet_<model> under the paper's recipe with 80 classes (random weights: timing only)."""
    cfg = compose([f"model={args.model}", f"model.num_classes={COCO_CLASSES}", *args.recipe])
    return build.build_network(cfg).eval()


def peer_networks(args: argparse.Namespace) -> list[tuple[str, Callable[[], torch.nn.Module], bool]]:
    """(name, builder, fused) of the peers, built lazily; a builder raises ImportError when unavailable."""

    def yolo() -> torch.nn.Module:
        from ultralytics import YOLO

        return YOLO("yolov8s.yaml").model.fuse()

    def mmdet(fused: bool) -> torch.nn.Module:
        from tests.integration.test_mmdet_parity import mmdet_config
        from tests.support.mmcv_ext_stub import install

        install()
        from mmcv.cnn import fuse_conv_bn
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules

        register_all_modules()
        model = MODELS.build(mmdet_config(args.model.replace("rtmdet_", ""))).eval()
        net = MmdetNetwork(model)
        return fuse_conv_bn(net) if fused else net

    return [("yolov8s (fused)", yolo, True), (f"mmdet {args.model}", lambda: mmdet(False), False),
            (f"mmdet {args.model} (fused)", lambda: mmdet(True), True)]


class MmdetNetwork(torch.nn.Module):
    """mmdet's RTMDet from normalised images to head outputs (``RTMDet._forward``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model._forward(x)


def network_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    ours = our_network(args)
    fused = fuse_conv_bn(ours)
    rows = time_network(f"ours {args.model}", ours, args, device, graph=False)
    rows += time_network(f"ours {args.model} (fused)", fused, args, device, graph=False)
    rows += time_network(f"ours {args.model} (fused)", fused, args, device, graph=True)
    if device.type == "cuda" and 32 in args.batches:  # Inductor's kernels (torch.compile of the fused network)
        compiled = fuse_conv_bn(ours)
        compiled.compile(dynamic=False)
        rows += time_network(f"ours {args.model} (fused, compiled)", compiled, argparse.Namespace(**{
            **vars(args), "batches": [32]}), device, graph=True)
    if args.no_peers:
        return rows
    for name, make, is_fused in peer_networks(args):
        try:
            net = make()
        except ImportError as err:
            rows.append({"kind": "network", "model": name, "mode": "—", "dtype": "—", "batch": "—", "ms": None,
                         "note": f"not importable: {err}"})
            continue
        rows += time_network(name, net, args, device, graph=False)
        if is_fused:
            rows += time_network(name, net, args, device, graph=True)
    return rows


# ------------------------------------------------------------------------------ end to end
def train_quickly(args: argparse.Namespace, device: torch.device, folder: Path) -> Path:
    """A checkpoint of ``args.model`` trained for ``args.train_steps`` steps on the built-in data."""
    from rtmdet_exp.experiment.train import train

    paper_exp = compose(["experiment=paper", f"model={args.model}"]).model.head.exp_on_reg  # the timed architecture
    batch = 16 if device.type == "cuda" else 4
    num_train = 320 if device.type == "cuda" else 16
    epochs = max(1, round(args.train_steps * batch / num_train))
    overrides = [f"model={args.model}", f"data.img_size={args.size}", f"data.batch_size={batch}",
                 f"data.synthetic.num_train={num_train}", f"data.synthetic.num_val={max(args.batches)}",
                 f"trainer.max_epochs={epochs}", f"trainer.val_interval={epochs}", "trainer.stage2_val_interval=1000",
                 f"trainer.device={device.type}", f"model.head.exp_on_reg={paper_exp}", *args.train_overrides]
    train(compose(overrides), run_dir=folder)
    return folder / "checkpoints" / f"epoch_{epochs:04d}.pt"


def with_classes(detector: Any, cfg: Any, num_classes: int) -> Any:
    """The same detector with ``num_classes`` classes whose class j is the trained class j mod C."""
    trained = detector.num_classes
    cfg = cfg.copy()
    cfg.model.num_classes = num_classes
    cfg.model.init_from = None
    wide = build.build_detector(cfg)
    state = detector.state_dict()
    repeat = torch.arange(num_classes) % trained
    for key, value in state.items():
        if ".rtm_cls." in key:
            state[key] = value[repeat]  # [C, ...] -> [num_classes, ...]
    wide.load_state_dict(state)
    return wide.eval()


def trained_detector(args: argparse.Namespace, device: torch.device, folder: Path) -> tuple[Any, Any, str]:
    """(detector with 80 classes, its config, where its weights come from)."""
    if args.checkpoint:
        path, source = Path(args.checkpoint), f"checkpoint {args.checkpoint}"
    else:
        start = time.perf_counter()
        path = train_quickly(args, device, folder)
        source = (f"{args.model} trained here for {args.train_steps} steps on the built-in data "
                  f"({time.perf_counter() - start:.0f} s)")
    detector, extra = build.load_detector(str(path))
    cfg = extra["config"]
    if detector.num_classes != COCO_CLASSES:
        source += f"; classifier repeated from {detector.num_classes} to {COCO_CLASSES} classes"
        detector = with_classes(detector, cfg, COCO_CLASSES)
    return detector, cfg, source


def val_images(folder: Path, size: int, count: int) -> torch.Tensor:
    """``count`` letterboxed val images of the built-in data at ``size``, generated into ``folder``."""
    from rtmdet_exp.data.coco import CocoDetection
    from rtmdet_exp.data.collate import collate
    from rtmdet_exp.data.synthetic import ensure_synthetic_dataset
    from rtmdet_exp.data.transforms import LetterboxResize

    made = ensure_synthetic_dataset(folder, num_train=1, num_val=count, img_size=size, seed=1)
    data = CocoDetection(made["val_images"], made["val_json"], pipeline=LetterboxResize(size))
    return collate([data[i] for i in range(count)])["images"]


def same_detections(a: list[dict], b: list[dict]) -> str:
    """``ok`` when both paths found the same number of boxes per image with scores within 1e-3."""
    if [len(x["scores"]) for x in a] != [len(x["scores"]) for x in b]:
        return "COUNTS DIFFER"
    diffs = [float((x["scores"] - y["scores"]).abs().max()) for x, y in zip(a, b) if len(x["scores"])]
    worst = max(diffs, default=0.0)
    return "ok" if worst <= 1e-3 else f"scores differ by {worst:.1e}"


def typical_first(detector: Any, images: torch.Tensor, args: argparse.Namespace,
                  device: torch.device) -> torch.Tensor:
    """The images with the image of median candidate count (deployment settings) first: batch 1
    times that image, not whichever comes first (an image without detections has nothing to NMS)."""
    model = InferenceModel(detector, args.size, fuse=True).to(device)
    hw = torch.tensor([[args.size, args.size]] * len(images), device=device)
    with torch.no_grad():
        counts = FastPredictor(model, len(images), DEPLOYMENT, graph=False).dense(images.to(device), hw)[0].valid.sum(1)
    median = int(counts.argsort()[len(counts) // 2])
    order = [median] + [i for i in range(len(images)) if i != median]
    return images[order]


def end_to_end_rows(detector: Any, name: str, images: torch.Tensor, args: argparse.Namespace,
                    device: torch.device) -> list[dict[str, Any]]:
    """uint8 images -> detections, per setting, precision and batch, CUDA graph (GPU) and eager."""
    rows = []
    images = typical_first(detector, images, args, device)
    for dtype_name in args.dtypes:
        model = InferenceModel(detector, args.size, fuse=True, dtype=parse_dtype(dtype_name),
                               channels_last=device.type == "cuda").to(device)
        for setting_name, setting in (("paper test", PAPER_TEST), ("deployment", DEPLOYMENT)):
            for batch in args.batches:
                x = images[:batch].to(device)
                hw = torch.tensor([[args.size, args.size]] * batch)
                meta = {"img_shape": hw, "pad_offset": torch.zeros(batch, 2), "scale_factor": torch.ones(batch, 2)}
                eager = FastPredictor(model, batch, setting, graph=False)
                want = eager(x, meta)
                base = {"kind": "end-to-end", "model": f"ours {name} (fused)", "dtype": dtype_name,
                        "batch": batch, "setting": setting_name,
                        "detections_per_image": sum(len(w["scores"]) for w in want) / batch,
                        "candidates_per_image": float(eager.dense(x, hw.to(device))[0].valid.sum()) / batch}
                rows.append({**base, "mode": "eager", "ms": timed(lambda: eager(x, meta), device, args.iters),
                             "note": ""})
                if device.type != "cuda":
                    rows.append({**base, "mode": "graph", "ms": None, "note": "no GPU"})
                    continue
                for mode, fixed in (("graph", None), ("graph+host NMS", False)):  # None: the default choice
                    graphed = FastPredictor(model, batch, setting, graph=True, fixed_nms=fixed)
                    check = same_detections(graphed(x, meta), want)
                    ms = timed(lambda: graphed(x, meta), device, args.iters)
                    fell_back = f", host NMS ran in {graphed.fallbacks} calls" if graphed.fallbacks else ""
                    fell_back += ", fixed NMS in the graph" if graphed.fixed else ""
                    rows.append({**base, "mode": mode, "ms": ms, "note": f"check {check}{fell_back}"})
    return rows


# --------------------------------------------------------------------------------- report
def targets(rows: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """The issue's two targets, met or not (best matching row)."""
    def best(pick: Callable[[dict], bool]) -> float | None:
        times = [r["ms"] for r in rows if r["ms"] is not None and pick(r)]
        return min(times, default=None)

    e2e = best(lambda r: r["kind"] == "end-to-end" and r["batch"] == 1 and r.get("setting") == "deployment"
               and r["model"].startswith(f"ours {model}"))
    net = best(lambda r: r["kind"] == "network" and r["batch"] == 32 and r["model"].startswith(f"ours {model}"))
    return [{"target": f"{model} batch 1 end to end, deployment settings", "limit_ms": 2.5, "best_ms": e2e,
             "met": e2e is not None and e2e <= 2.5},
            {"target": f"{model} batch 32 network", "limit_ms": 8.0, "best_ms": net,
             "met": net is not None and net <= 8.0}]


def print_table(rows: list[dict[str, Any]], goals: list[dict[str, Any]], header: str) -> None:
    print(f"\n{header}")
    print(f"{'kind':11s} {'model':28s} {'mode':14s} {'dtype':5s} {'batch':>5s} {'setting':11s} {'ms':>9s} "
          f"{'cand/img':>9s} {'det/img':>8s}  note")
    for r in rows:
        ms = "—" if r["ms"] is None else f"{r['ms']:.3f}"
        cand = f"{r['candidates_per_image']:.0f}" if "candidates_per_image" in r else ""
        dets = f"{r['detections_per_image']:.1f}" if "detections_per_image" in r else ""
        print(f"{r['kind']:11s} {r['model']:28s} {r['mode']:14s} {r['dtype']:5s} {r['batch']!s:>5s} "
              f"{r.get('setting', ''):11s} {ms:>9s} {cand:>9s} {dets:>8s}  {r['note']}")
    for g in goals:
        best = "—" if g["best_ms"] is None else f"{g['best_ms']:.3f} ms"
        print(f"target: {g['target']} <= {g['limit_ms']} ms: best {best}: {'MET' if g['met'] else 'not met'}")


def environment(device: torch.device, source: str) -> dict[str, Any]:
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "ultralytics": version("ultralytics"), "mmdet": version("mmdet"), "scores_from": source}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rtmdet_s", help="our variant (and mmdet's) to time")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--checkpoint", help="a trained checkpoint for the end-to-end rows (default: train one)")
    parser.add_argument("--train-steps", type=int, default=300, help="steps of the fallback training")
    parser.add_argument("--no-peers", action="store_true", help="skip YOLOv8s and mmdet's RTMDet")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: tiny model, 64 px, fp32, 5 iterations")
    parser.add_argument("--out", default="bench/results/latency.json")
    args = parser.parse_args()
    args.recipe, args.train_overrides = ["experiment=paper"], ["data.num_workers=8"]
    if args.quick:
        args.model, args.size, args.batches, args.dtypes, args.iters = "rtmdet_tiny", 64, [1, 4], ["fp32"], 5
        args.train_steps, args.recipe = 40, ["experiment=paper", "model.backbone.widen_factor=0.125"]
        args.train_overrides = ["model.backbone.widen_factor=0.125", "optim.lr=0.01", "data.num_workers=0"]
    return args


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        detector, cfg, source = trained_detector(args, device, Path(tmp) / "train")
        images = val_images(Path(tmp) / "images", args.size, max(args.batches))
        name = f"rtmdet_{cfg.model.variant}" if cfg.model.get("variant") else args.model
        rows = network_rows(args, device) + end_to_end_rows(detector, name, images, args, device)
    goals = targets(rows, args.model)
    env = environment(device, source)
    print_table(rows, goals, f"latency, {args.size} px, {env['device']}, torch {env['torch']}; "
                             f"end-to-end scores: {source}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {**env, "size": args.size, "iters": args.iters, "rows": rows, "targets": goals}
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
