"""The cost a run records (latency on a GPU, else GMACs) and the report's note about it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose

from rtmdet_exp.analysis.markdown import cost_note
from rtmdet_exp.analysis.runs import Run, read_run
from rtmdet_exp.deploy.latency import cost_metrics, run_latency, time_call
from rtmdet_exp.experiment.build import build_detector


def test_without_a_gpu_the_cost_is_gmacs() -> None:
    detector = build_detector(compose(*TINY))
    assert run_latency(detector, 64, torch.device("cpu")) == {}
    assert cost_metrics(detector, 64, torch.device("cpu"), macs=2.5e9) == {"perf/cost": 2.5, "perf/cost_kind": "gmacs"}


def test_time_call_waits_for_each_call() -> None:
    calls = []
    times = time_call(lambda: calls.append(1), torch.device("cpu"), iters=7, warmup=3)
    assert len(calls) == 10 and len(times) == 7 and all(t >= 0 for t in times)


def run(name: str, latency: float | None = None, **labels: object) -> Run:
    metrics = {"val/mAP": 0.3, "perf/cost": 1.0 if latency is None else latency}
    if latency is not None:
        metrics["perf/latency_ms"] = latency
    return Run(Path(name), [], "default", 0, metrics=metrics, labels=dict(labels))


def test_cost_note_names_what_was_measured() -> None:
    assert "MACs only" in cost_note([run("a"), run("b")])
    one_gpu = cost_note([run("a", 2.0, **{"perf/latency_device": "NVIDIA H200"}),
                         run("b", 2.5, **{"perf/latency_device": "NVIDIA H200"})])
    assert "2 of 2" in one_gpu and "NVIDIA H200" in one_gpu and "no GPU" not in one_gpu
    mixed = cost_note([run("a", 2.0, **{"perf/latency_device": "NVIDIA H200", "perf/latency_shared": True}),
                       run("b")])
    assert "1 run(s) had no GPU" in mixed and "GMACs, not ms" in mixed and "shared their GPU" in mixed
    two_gpus = cost_note([run("a", 2.0, **{"perf/latency_device": "NVIDIA H200"}),
                          run("b", 3.0, **{"perf/latency_device": "NVIDIA A100"})])
    assert "not comparable" in two_gpus


def test_run_records_keep_text_metrics_as_labels(tmp_path: Path) -> None:
    metrics = {"val/mAP": 0.5, "val/mAP_s": "nan", "perf/cost": 3.1, "perf/cost_kind": "gmacs",
               "perf/latency_shared": False}
    (tmp_path / "results.json").write_text(json.dumps({"status": "finished", "metrics": metrics}))
    record = read_run(tmp_path)
    assert record.labels == {"perf/cost_kind": "gmacs", "perf/latency_shared": False}
    assert record.metrics["perf/cost"] == pytest.approx(3.1) and "perf/cost_kind" not in record.metrics
