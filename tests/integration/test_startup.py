"""A run's start-up, split into phases.

The phase names are what the README and bench/NOTES.md read from the log; the times come from the
wall clock around the calls (a second run in one process must not count the first one's time).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import TINY, compose, train_records

from rtmdet_exp.experiment.errors import ConfigError
from rtmdet_exp.experiment.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

PHASES = ["launch", "imports", "checks", "model", "data", "to_device", "optimizer", "step", "loggers",
          "first_batch", "first_step"]


def test_a_run_logs_its_start_up_by_phase(uninterrupted_run: Path) -> None:
    """``python run.py``: the first training record carries the start-up and every phase, in order,
    and the phases add up to the whole (no time left unaccounted between two marks)."""
    first = train_records(uninterrupted_run)[0]
    phases = [k[len("startup/"):-2] for k in first if k.startswith("startup/")]
    assert phases == PHASES
    assert all(first[f"startup/{p}_s"] >= 0 for p in phases)
    assert sum(first[f"startup/{p}_s"] for p in phases) == pytest.approx(first["perf/startup_s"], abs=1e-3)
    results = json.loads((uninterrupted_run / "results.json").read_text())["metrics"]
    assert results["perf/startup_s"] == pytest.approx(first["perf/startup_s"])
    assert all(not k.startswith("startup/") for r in train_records(uninterrupted_run)[1:] for k in r)


def test_a_second_run_in_one_process_counts_its_own_start_up(tmp_path: Path) -> None:
    """In-process runs (tests, a sweep's jobs): the first counts from the process start, the next from
    its own call, also after a run refused before its first step: its start-up is shorter than the
    call itself, and it has no launch/imports phases."""
    settings = (*TINY, "trainer.max_epochs=1")
    train(compose(*settings), run_dir=tmp_path / "a")
    with pytest.raises(ConfigError):
        train(compose(*settings, "optim.lr=-1"), run_dir=tmp_path / "refused")
    gap = 3.0
    time.sleep(gap)  # a clock left running since the refused run would count this in the next run's first phase
    started = time.time()
    second = train(compose(*settings), run_dir=tmp_path / "b")
    wall = time.time() - started
    assert 0 < second["perf/startup_s"] < wall
    first_record = train_records(tmp_path / "b")[0]
    assert [k[len("startup/"):-2] for k in first_record if k.startswith("startup/")] == PHASES[2:]
    assert first_record["startup/checks_s"] < gap
