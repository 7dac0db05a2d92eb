"""The gpu_pool launcher's MPS daemon: when it starts, what the runs get, that it is stopped.

A stand-in ``nvidia-cuda-mps-control`` (a shell script on PATH) records how it is called, as the
real one is: ``-d`` starts the daemon, ``quit`` on stdin stops it; the CUDA client check is replaced
where a CPU machine cannot run one (its failure path runs for real in the last test).
"""

from __future__ import annotations

import gc
import os
import stat
from pathlib import Path

import pytest

from hydra_plugins.rtmdet_gpu_pool_launcher import mps
from hydra_plugins.rtmdet_gpu_pool_launcher.launcher import GpuPoolLauncher

FAKE_CONTROL = """#!/bin/sh
if [ "$1" = "-d" ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_LOG"; exit 0; fi
read command; echo "$command $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_LOG"
"""


@pytest.fixture
def fake_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH gets a stand-in control binary; returns the file it writes its calls to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / mps.CONTROL
    script.write_text(FAKE_CONTROL)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_LOG", str(calls))
    monkeypatch.delenv(mps.PIPE_ENV, raising=False)
    return calls


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_the_daemon_is_wanted_only_for_shared_gpus_without_one_already() -> None:
    def found(name: str) -> str:
        return "/usr/bin/" + name

    def missing(name: str) -> None:
        return None

    assert mps.wanted("auto", True, {}, found)[0] is True
    assert mps.wanted(True, True, {}, found)[0] is True
    assert mps.wanted("auto", False, {}, found) == (False, "no GPU runs more than one run at once")
    assert mps.wanted(False, True, {}, found) == (False, "mps=false")
    site = mps.wanted("auto", True, {mps.PIPE_ENV: "/run/mps"}, found)
    assert site[0] is False and mps.PIPE_ENV in site[1]  # a site's own daemon is used as it is
    assert mps.wanted("auto", True, {}, missing) == (False, f"{mps.CONTROL} is not on PATH")
    with pytest.raises(RuntimeError, match="hydra.launcher.mps=true, but nvidia-cuda-mps-control is not on PATH"):
        mps.wanted(True, True, {}, missing)
    for bad in ("yes", 1):  # 1 == True in Python: still not a setting
        with pytest.raises(ValueError, match=f"hydra.launcher.mps: expected auto, true or false, got {bad!r}"):
            mps.wanted(bad, True, {}, found)


def test_daemon_starts_with_its_own_folders_and_quits(fake_control: Path, tmp_path: Path) -> None:
    daemon = mps.MpsDaemon(tmp_path / "pool")
    seen: list[dict] = []
    assert daemon.start(check=lambda env: seen.append(env) or None) is None
    pipe = str(tmp_path / "pool" / "pipe")
    assert daemon.env == {mps.PIPE_ENV: pipe, mps.LOG_ENV: str(tmp_path / "pool" / "log")}
    assert seen[0][mps.PIPE_ENV] == pipe  # the client check ran under this daemon
    assert lines(fake_control) == [f"start {pipe}"]
    daemon.stop()
    daemon.stop()  # once only
    assert lines(fake_control) == [f"start {pipe}", f"quit {pipe}"]


def test_a_daemon_whose_client_fails_is_stopped_and_says_why(fake_control: Path, tmp_path: Path) -> None:
    daemon = mps.MpsDaemon(tmp_path / "pool")
    assert daemon.start(check=lambda env: "a CUDA client failed under it: no device") == \
        "a CUDA client failed under it: no device"
    assert [line.split()[0] for line in lines(fake_control)] == ["start", "quit"] and not daemon.running


def test_pool_of_two_runs_on_one_gpu_starts_the_daemon_and_stops_it(
        fake_control: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mps, "client_works", lambda env: None)
    launcher = GpuPoolLauncher(workers=2, gpus=["0"])
    assert launcher.workers == 2
    pipe = launcher._mps_env[mps.PIPE_ENV]  # what every job's environment gets on top of its slot's
    assert lines(fake_control) == [f"start {pipe}"]
    del launcher
    gc.collect()
    assert lines(fake_control) == [f"start {pipe}", f"quit {pipe}"]


def test_pool_without_shared_gpu_or_with_mps_off_starts_none(fake_control: Path) -> None:
    assert GpuPoolLauncher(workers=2, gpus=["0", "1"]).workers == 2  # one run per GPU
    assert GpuPoolLauncher(workers=2, gpus=["0"], mps=False).workers == 2
    assert lines(fake_control) == []


def test_auto_goes_on_without_mps_where_no_cuda_client_runs(fake_control: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(mps, "CLIENT_CHECK", "raise SystemExit('no CUDA here')")  # what a CPU machine answers
    launcher = GpuPoolLauncher(workers=2, gpus=["0"])
    assert launcher.workers == 2 and launcher._mps_env == {}
    assert "runs share their GPU without MPS (taking turns): a CUDA client failed under it: no CUDA here" in caplog.text
    assert [line.split()[0] for line in lines(fake_control)] == ["start", "quit"]
    with pytest.raises(RuntimeError, match="hydra.launcher.mps=true: the MPS daemon does not work"):
        _ = GpuPoolLauncher(workers=2, gpus=["0"], mps=True).workers
