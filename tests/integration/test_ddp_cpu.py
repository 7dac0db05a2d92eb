"""DDP on the CPU: 2 gloo processes under torchrun train like one process at the same total batch.

Two ranks with batch 2 each and one process with batch 4 must see the same images at every step
(the sampler gives rank r every world-th image of the epoch's permutation, so together the ranks
cover exactly the single process's batch) and get the same loss: each rank's loss is its share of
the positives' losses divided by the *mean* of the ranks' normalisers (``reduce_mean``), so the mean
of the ranks' losses is the single process's loss, and DDP's gradient mean is its gradient.

BatchNorm is frozen (eval mode: running statistics, no batch statistics) because a rank's batch
statistics are those of its 2 images, not of all 4; SyncBN would make them global but needs CUDA.
The augmentation is ``none`` (deterministic letterbox), so images do not depend on the worker.
The last test checks that ``torchrun ... run.py`` makes one run folder that only rank 0 writes.

The graphed step under DDP: NCCL needs every rank to capture and replay the same graph at the same
step, so the ranks must agree on the GT bucket although each batch has its own GT count. Two gloo
processes with a recorder in place of CUDA capture check that agreement against maxima worked out
by hand, and that a batch padded to another rank's larger bucket keeps its own values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, TINY, cli_env

from rtmdet_exp.engine.step_graph import GraphedStep, RankMax

STEPS = 4  # TINY: 16 training images, one epoch of 4 steps at a total batch of 4

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from rtmdet_exp.experiment import build, compose, distributed
    from rtmdet_exp.engine.loop import seed_everything
    from rtmdet_exp.engine.step import TrainStep

    out_file, overrides = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)
    cfg = compose(overrides)
    device = torch.device("cpu")
    rank, world = distributed.setup(device)
    seed_everything(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    detector, augment = build.build_detector(cfg), build.build_augment(cfg)
    data = build.build_data(cfg, augment, rank=rank, world_size=world)
    data.setup()
    step_model = distributed.wrap(detector, device)
    optimizer = build.build_optimizer(cfg, detector, world)
    schedule = build.build_schedule(cfg, optimizer, data.steps_per_epoch)
    step = TrainStep(detector, optimizer, schedule, device, step_model=step_model)
    step.train()
    for module in detector.modules():  # BN frozen: running statistics, the same for any batch split
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    records = []
    for batch in data.train_loader(0):
        out = step(batch)
        loss = out["loss"].clone()
        pixels = batch["images"].flatten(1).long()  # which images (training batches carry no ids): a
        ids = (pixels * torch.arange(1, pixels.shape[1] + 1)).sum(1)  # position-weighted checksum each
        if world > 1:
            dist.all_reduce(loss)
            loss /= world
            gathered = [torch.zeros_like(ids) for _ in range(world)]
            dist.all_gather(gathered, ids)
            ids = torch.cat(gathered)
        records.append({"loss": loss.item(), "images": sorted(ids.tolist())})
    weights = sum(p.double().abs().sum() for p in detector.parameters()).item()
    if rank == 0:
        json.dump({"steps": records, "weights": weights, "world": world}, open(out_file, "w"))
    distributed.teardown()
""")


def run_worker(tmp_path: Path, name: str, world: int) -> dict:
    script = tmp_path / "ddp_worker.py"
    script.write_text(WORKER)
    out = tmp_path / f"{name}.json"
    batch = 4 // world
    overrides = [*TINY, "augment=none", f"data.batch_size={batch}", "trainer.max_epochs=1"]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--standalone"] \
        if world > 1 else [sys.executable]
    proc = subprocess.run([*launcher, str(script), str(out), *overrides], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_loss_at_every_step(tmp_path: Path) -> None:
    single = run_worker(tmp_path, "single", world=1)
    ddp = run_worker(tmp_path, "ddp", world=2)
    assert single["world"] == 1 and ddp["world"] == 2
    assert len(single["steps"]) == len(ddp["steps"]) == STEPS
    for i, (a, b) in enumerate(zip(single["steps"], ddp["steps"])):
        assert b["images"] == a["images"], f"step {i + 1}: the ranks together saw other images"
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), f"step {i + 1}"
    assert ddp["weights"] == pytest.approx(single["weights"], rel=1e-5)


@pytest.mark.slow
def test_torchrun_of_run_py_makes_one_run_folder_written_by_rank_0(tmp_path: Path) -> None:
    args = [*TINY, "augment=none", "data.batch_size=2", "trainer.max_epochs=2", "hydra.searchpath=[]"]
    env = cli_env()
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                           str(REPO / "run.py"), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, f"one launch, one run folder; found {runs}"
    run = runs[0]
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "finished" and record["metrics"]["steps"] == 2 * STEPS
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]
    assert steps == list(range(1, 2 * STEPS + 1)), "each step logged once (rank 0 only)"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_0001.pt", "epoch_0002.pt"]
    assert not any(name.startswith(".") for name in os.listdir(run / "checkpoints"))


# GT counts (the padded width of each batch) per step: rank 0, rank 1, and the buckets they must share,
# the next power of two >= 16 above the larger of the two counts
GRAPH_COUNTS = [(3, 18), (20, 2), (5, 4), (40, 9), (5, 4), (1, 30)]
SHARED_BUCKETS = [32, 32, 16, 64, 16, 32]


def _graph_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank: a GraphedStep whose step sums its padded inputs, with a recorder as the capture."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    captured: list[int] = []

    def record(fn, inputs):  # replays by calling fn again on the (reloaded) static inputs
        captured.append(int(inputs[1].shape[1]))
        output = fn(*inputs)
        return (lambda: output.copy_(fn(*inputs))), output

    def step_fn(images, boxes, labels, mask):
        return torch.stack([boxes.sum(), mask.sum().float(), (labels >= 0).sum().float()])

    runner = GraphedStep(step_fn, torch.device("cpu"), False, [], warmup_steps=1, capture=record, agree=RankMax())
    sums, buckets = [], []
    for i, counts in enumerate(GRAPH_COUNTS):
        m = counts[rank]
        g = torch.Generator().manual_seed(100 * rank + i)
        boxes = torch.rand(2, m, 4, generator=g) * 50
        batch = {"images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "boxes": boxes,
                 "labels": torch.zeros(2, m, dtype=torch.int64), "mask": torch.ones(2, m, dtype=torch.bool)}
        sums.append({"got": runner(batch).tolist(), "want": [boxes.sum().item(), 2.0 * m, 2.0 * m]})
        buckets.append(runner.bucket)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"buckets": buckets, "captured": captured,
                                                              "sums": sums}))
    dist.destroy_process_group()


def test_graphed_ranks_agree_on_every_step_s_bucket_and_capture_together(tmp_path: Path) -> None:
    mp.spawn(_graph_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, got in enumerate(ranks):
        assert got["buckets"] == SHARED_BUCKETS, f"rank {r}"
        # 1 warm-up step (bucket 32), then 32 is captured at its second sight, 16 at its second, 64 never
        assert got["captured"] == [32, 16], f"rank {r}"
        for i, s in enumerate(got["sums"]):
            assert s["got"] == pytest.approx(s["want"], rel=1e-6), f"rank {r} step {i}: padding changed the batch"
