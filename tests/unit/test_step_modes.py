"""The training step's fast paths against the plain eager step, on the CPU.

* GT bucketing: padding the GT of a batch to its bucket with masked boxes gives the same losses
  (every assigner), so the compile and cuda_graph modes train on the same objective.
* compile: ``torch.compile`` of the training forward gives the eager losses on a fixed batch, in one
  graph (no graph break) that is not recompiled for a batch with another GT count of the same bucket.
  The ``aot_eager`` backend is used: it traces exactly what Inductor would get (Dynamo + AOTAutograd)
  but skips Inductor's C++ code generation, which takes about 7 minutes for this model on 2 CPU cores.
* cuda_graph: the graph runner's bookkeeping (static buffers, GT padding, warm-up, one capture per
  bucket, the device-tensor lr, EMA and ``found_inf``) with a recorder that replays on the CPU; the
  real CUDA capture is measured by ``bench/train_step.py`` on a GPU.
* the device-tensor arithmetic: lr, EMA and ``found_inf`` against host versions written out here.
"""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from conftest import TINY, compose
from torch import nn

from rtmdet_exp.engine.ema import ModelEMA
from rtmdet_exp.engine.optim import adamw, host_lr, use_device_lr
from rtmdet_exp.engine.schedule import FlatCosineSchedule, build_scheduler
from rtmdet_exp.engine.step import TrainStep, gt_bucket, pad_targets
from rtmdet_exp.experiment import build
from tests.support.batches import make_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_parts(*overrides: str) -> tuple:
    """The TINY detector (seeded), its fused AdamW and per-iteration schedule, from the real config."""
    cfg = compose(*TINY, *overrides)
    torch.manual_seed(0)
    detector = build.build_detector(cfg)
    optimizer = build.build_optimizer(cfg, detector)
    return cfg, detector, optimizer, build.build_schedule(cfg, optimizer, steps_per_epoch=4)


def scalars(out: dict) -> dict[str, torch.Tensor]:
    """A step result's loss, named loss terms and gradient norm."""
    return {"loss": out["loss"], **out["losses"], "grad_norm": out["grad_norm"]}


def make_step(mode: str = "eager", with_ema: bool = True, **kwargs) -> TrainStep:
    _, detector, optimizer, schedule = tiny_parts()
    ema = ModelEMA(detector, momentum=0.01, gamma=3.0) if with_ema else None
    step = TrainStep(detector, optimizer, schedule, torch.device("cpu"), ema=ema, mode=mode, **kwargs)
    step.train()
    return step


# ------------------------------------------------------------------------------ GT buckets
def test_gt_bucket_is_the_next_power_of_two_above_a_floor() -> None:
    assert [gt_bucket(n) for n in (0, 1, 16, 17, 32, 33, 100, 128, 129)] == [16, 16, 16, 32, 32, 64, 128, 128, 256]
    assert [gt_bucket(n, minimum=1) for n in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]


def test_pad_targets_pads_like_collate() -> None:
    batch = make_batch(0, [3, 1])
    padded = pad_targets({k: batch[k] for k in ("boxes", "labels", "mask")}, 8)
    assert padded["boxes"].shape == (2, 8, 4) and padded["labels"].shape == padded["mask"].shape == (2, 8)
    assert torch.equal(padded["boxes"][:, :3], batch["boxes"]) and not padded["boxes"][:, 3:].any()
    assert torch.equal(padded["labels"][:, 3:], torch.full((2, 5), -1))
    assert padded["mask"].sum().item() == 4 and not padded["mask"][:, 3:].any()
    with pytest.raises(ValueError, match="cannot pad 3 GT boxes down to 2"):
        pad_targets({k: batch[k] for k in ("boxes", "labels", "mask")}, 2)


@pytest.mark.slow
@pytest.mark.parametrize("assigner", ["soft", "hard", "atss", "task_aligned", "soft_gtcls"])
def test_padding_gt_to_the_bucket_leaves_the_losses_unchanged(assigner: str) -> None:
    """Masked padding boxes take part in no assignment, so the losses at M, 16 and 64 are identical."""
    _, detector, _, _ = tiny_parts(f"assigner={assigner}")
    batch = make_batch(1, [5, 2, 0, 3])
    targets = {k: batch[k] for k in ("boxes", "labels", "mask")}
    with torch.no_grad():
        reference = detector.loss(batch["images"], targets)
        for size in (16, 64):
            out = detector.loss(batch["images"], pad_targets(targets, size))
            for key in ("loss_cls", "loss_bbox", "num_pos", "avg_factor"):
                assert torch.equal(out[key], reference[key]), f"{assigner}: {key} changed at {size} GT"
    assert reference["num_pos"].item() > 0  # the batch trains something


# ------------------------------------------------------------------------------ compile
@pytest.mark.slow
def test_compiled_step_matches_eager_in_one_graph_without_recompiling() -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    eager, compiled = make_step("eager"), make_step("compile", compile_backend=counter)
    batches = [make_batch(2, [5, 3, 4, 1]), make_batch(3, [9, 2, 6, 7]), make_batch(4, [12, 0, 3, 8])]
    for i, batch in enumerate(batches):  # 5, 9 and 12 GT: all in bucket 16
        a, b = eager(batch), compiled(batch)
        for key, value in scalars(a).items():
            torch.testing.assert_close(scalars(b)[key], value, rtol=1e-5, atol=1e-6, msg=f"step {i}: {key}")
        assert b["stats"]["num_pos"].item() == a["stats"]["num_pos"].item()
    assert counter.frame_count == 1  # one compiled frame: no graph break, no recompilation
    for (name, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    names = {n for n, _ in compiled.model.named_parameters()}
    assert names == {n for n, _ in eager.model.named_parameters()}  # compiled in place: names kept
    torch._dynamo.reset()


# ------------------------------------------------------------------------------ graphed step
def cpu_recorder() -> tuple:
    """A stand-in for CUDA capture: records nothing, replays by running the step on the static buffers."""
    captured: list[int] = []

    def capture(fn, inputs):
        output = torch.empty(0)
        captured.append(inputs[1].shape[1])

        def replay() -> None:
            values = fn(*inputs)
            output.resize_(values.shape).copy_(values)

        return replay, output

    return capture, captured


@pytest.mark.slow
def test_graphed_step_matches_eager_with_one_capture_per_bucket() -> None:
    capture, captured = cpu_recorder()
    # the eager reference keeps its lr in a tensor as the graph must (a float32 lr drifts from a double one)
    eager, graphed = make_step("eager", device_lr=True), make_step("cuda_graph", graph_capture=capture)
    counts = [[3, 1], [2, 2], [20, 4], [5, 0], [1, 30], [7, 7], [4, 17]]  # buckets 16,16,32,16,32,16,32
    for i, c in enumerate(counts):
        batch = make_batch(10 + i, c)
        a, b = eager(batch), graphed(batch)
        for key, value in scalars(a).items():  # padding is exact and the arithmetic the same: bitwise equal
            assert torch.equal(scalars(b)[key], value), f"step {i}: {key}"
        assert b["lr"] == a["lr"]
    runner = graphed._graphs
    # 3 warm-up steps (buckets 16, 16, 32), then bucket 16 is captured at step 4 and 32 at step 5
    assert captured == [16, 32] and runner.captures == 2 and runner.replays == 4
    assert isinstance(graphed.optimizer.param_groups[0]["lr"], torch.Tensor)
    assert graphed.optimizer.param_groups[0]["lr"].item() == pytest.approx(graphed.scheduler.get_last_lr()[0].item())
    for p, q in zip(eager.model.parameters(), graphed.model.parameters()):
        assert torch.equal(q, p)
    for p, q in zip(eager.ema.module.state_dict().values(), graphed.ema.module.state_dict().values()):
        assert torch.equal(q, p)
    assert eager.ema.steps == graphed.ema.steps == len(counts)
    # close() lets the graphs go (under DDP they must go before the process group: pytorch#115388)
    outputs = [weakref.ref(slot.output) for slot in runner._slots.values()]
    graphed.close()
    gc.collect()
    assert graphed._graphs is None and all(ref() is None for ref in outputs)


def test_graph_mode_and_bad_modes_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA GPU"):
        make_step("cuda_graph")
    with pytest.raises(ValueError, match="must be one of eager, compile, cuda_graph"):
        make_step("graph")
    with pytest.raises(Exception, match="step_mode"):
        compose(*TINY, "trainer.step_mode=graph")


# ------------------------------------------------------------------------------ device arithmetic
def test_device_tensor_lr_follows_the_host_schedule() -> None:
    """AdamW with the lr as a device tensor, stepped by the schedule, trains like float lrs."""

    def run(device_lr: bool) -> tuple[torch.Tensor, list[float]]:
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        optimizer = adamw(model, lr=0.01, weight_decay=0.05)
        schedule = FlatCosineSchedule(total_iters=8, warmup_iters=3, min_ratio=0.1)
        scheduler = build_scheduler(optimizer, schedule)
        if device_lr:
            use_device_lr(optimizer, scheduler, torch.device("cpu"))
        lrs = []
        for _ in range(8):
            loss = model(torch.randn(5, 4)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            lrs.append(host_lr(optimizer, scheduler))
            optimizer.step()
            scheduler.step()
        return model.weight.detach().clone(), lrs

    host_w, host_lrs = run(False)
    dev_w, dev_lrs = run(True)
    # the schedule by hand: warm-up 1e-5 -> 1 over 3 iterations, flat to 4, cosine to 0.1 at 8
    by_hand = [1e-5 + (1 - 1e-5) * i / 3 for i in range(3)] + [1.0, 1.0]
    by_hand += [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (i - 4) / 4)) for i in range(5, 8)]
    assert host_lrs == pytest.approx([0.01 * f for f in by_hand], rel=1e-12)
    assert dev_lrs == host_lrs
    torch.testing.assert_close(dev_w, host_w, rtol=1e-6, atol=1e-7)  # float32 lr in the kernel vs double


def test_ema_device_update_matches_the_host_formula_and_skips() -> None:
    """avg_t = avg + m_t (w - avg), m_t = (1 - 0.1) e^{-(1+t)/2} + 0.1 computed on the host here."""
    model = nn.Linear(1, 1, bias=False)
    ema = ModelEMA(model, momentum=0.1, gamma=2.0)
    values, skips = [1.0, 3.0, -2.0, 5.0, 0.5], [0.0, 0.0, 1.0, 0.0, 0.0]
    expected = None
    for t, (w, skip) in enumerate(zip(values, skips)):
        with torch.no_grad():
            model.weight.fill_(w)
        ema.update(model, skip=torch.tensor(skip))
        if t == 0:
            expected = w
        else:
            m = 0.9 * math.exp(-(1 + t) / 2.0) + 0.1
            expected = expected + m * (1 - skip) * (w - expected)
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6), f"update {t}"
    assert ema.steps == len(values)


def poison_second_forward(step: TrainStep) -> None:
    """The step's second forward returns ``loss_cls * NaN``: NaN loss and gradients, as a real blow-up."""
    forward, calls = step.model.forward, [0]

    def forward_with_nan(images: torch.Tensor, targets: dict) -> dict:
        out = forward(images, targets)
        calls[0] += 1
        if calls[0] == 2:
            out["loss_cls"] = out["loss_cls"] * float("nan")
        return out

    step.model.forward = forward_with_nan


@pytest.mark.slow
def test_found_inf_skips_the_step_on_the_device_like_the_host_check() -> None:
    """[good, NaN, good] with the skip decided on the device (fused AdamW's ``found_inf``) ends with the
    same weights, EMA and Adam step counts as with the skip decided on the host (``bool(found_inf)``
    and no ``optimizer.step()``)."""
    batches = [make_batch(20, [3, 2]), make_batch(21, [4, 1]), make_batch(22, [2, 2])]
    device, host = make_step("eager"), make_step("eager")
    host.on_device_skip = False  # the host check: one sync, optimizer.step() not called
    poison_second_forward(device)
    poison_second_forward(host)
    outs = [device(batch) for batch in batches]
    host_outs = [host(batch) for batch in batches]
    assert [o["found_inf"].item() for o in outs] == [0.0, 1.0, 0.0]
    assert [o["applied"] for o in host_outs] == [True, False, True]
    for p, q in zip(host.model.state_dict().values(), device.model.state_dict().values()):
        assert torch.equal(q, p)
    for p, q in zip(host.ema.module.state_dict().values(), device.ema.module.state_dict().values()):
        assert torch.equal(q, p)
    for state in (device.optimizer.state_dict()["state"], host.optimizer.state_dict()["state"]):
        assert all(s["step"].item() == 2 for s in state.values())
    assert device.scheduler.last_epoch == host.scheduler.last_epoch == 3
