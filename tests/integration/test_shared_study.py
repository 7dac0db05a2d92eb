"""Three ``run.py -m`` workers share one Optuna study in a real PostgreSQL database; one is killed.

The server is started on loopback by ``tests/support/postgres.py`` (PostgreSQL 16 from the
``pgserver`` wheel of the dev dependencies). Each worker trains tiny runs (3 epochs, a validation
and an intermediate report after each) until the study holds ``n_trials`` finished trials. One
worker is killed with SIGKILL right after its trial's first intermediate report; the other two
must fail that trial through its missing heartbeat within the bound the config states
(``stale_after + heartbeat_interval`` seconds after the last beat), run its parameters once more,
and stop at exactly ``n_trials`` finished trials.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from conftest import TINY, start_cli

from hydra_plugins.rtmdet_optuna_sweeper.storage import WORKER_ATTR
from rtmdet_exp.experiment import rundir
from tests.support.postgres import PostgresUnavailable, find_bindir, postgres_server

N_TRIALS, WORKERS, EPOCHS = 9, 3, 3
HEARTBEAT, STALE_AFTER = 1, 6  # seconds: hydra.sweeper.heartbeat_interval and stale_after
SLACK = 2.0  # seconds of scheduling delay allowed on a loaded 2-core machine
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    try:
        find_bindir()
    except PostgresUnavailable as err:
        pytest.skip(f"PostgreSQL server binaries not installed: {err}")
    with postgres_server() as url:
        yield url


def worker_args(url: str, sweep_dir: Path) -> list[str]:
    return ["-m", "hydra/sweeper=optuna", *TINY, f"trainer.max_epochs={EPOCHS}", "trainer.val_interval=1",
            "optim.lr=tag(log,interval(0.001,0.01))", "optim.weight_decay=interval(0.0,0.1)",
            f"hydra.sweeper.storage='{url}'", "hydra.sweeper.study_name=shared",
            f"hydra.sweeper.n_trials={N_TRIALS}", f"hydra.sweeper.heartbeat_interval={HEARTBEAT}",
            f"hydra.sweeper.stale_after={STALE_AFTER}", f"hydra.sweep.dir={sweep_dir}",
            "hydra.sweep.subdir=${hydra.job.num}"]


def kill_after_first_report(url: str, workers: dict[int, subprocess.Popen],
                            timeout: float = 150) -> tuple[int, int, datetime]:
    """SIGKILL the worker of the first RUNNING trial with exactly one intermediate value; returns
    the trial number, the worker's pid and the time of the kill."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in workers.values()), "a worker ended before any kill"
        try:
            trials = optuna.load_study(study_name="shared", storage=url).get_trials(deepcopy=False)
        except KeyError:  # the study is not created yet
            trials = []
        for trial in trials:
            if trial.state == optuna.trial.TrialState.RUNNING and len(trial.intermediate_values) == 1:
                pid = int(str(trial.system_attrs[WORKER_ATTR]).rsplit(":", 1)[1])
                os.killpg(pid, signal.SIGKILL)  # each worker leads its own process group
                killed_at = datetime.now()
                workers[pid].wait(timeout=30)
                return trial.number, pid, killed_at
        time.sleep(0.1)
    raise AssertionError("no trial reached its first intermediate report")


@pytest.mark.slow
def test_killed_worker_trial_fails_by_heartbeat_and_is_retried_once(postgres_url: str, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    procs = [start_cli(worker_args(postgres_url, sweep_dir), tmp_path / f"worker{i}.log", new_session=True)
             for i in range(WORKERS)]
    workers = {p.pid: p for p in procs}
    try:
        killed, killed_pid, killed_at = kill_after_first_report(postgres_url, workers)
        for i, proc in enumerate(procs):
            code = proc.wait(timeout=240)
            log = (tmp_path / f"worker{i}.log").read_text()
            assert code == (-signal.SIGKILL if proc.pid == killed_pid else 0), log[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)

    trials = optuna.load_study(study_name="shared", storage=postgres_url).trials
    states = [t.state.name for t in trials]
    assert sum(t.state in FINISHED for t in trials) == N_TRIALS, states
    assert states.count("FAIL") == 1 and len(trials) == N_TRIALS + 1, states  # nothing RUNNING or WAITING
    lost = trials[killed]
    assert lost.state.name == "FAIL" and len(lost.intermediate_values) >= 1  # killed mid-training
    detected_after = (lost.datetime_complete - killed_at).total_seconds()
    # not before the grace period (the last beat came about one interval before the kill), and
    # within the bound the config states, since a live worker checks every interval
    assert STALE_AFTER - HEARTBEAT - SLACK <= detected_after <= STALE_AFTER + HEARTBEAT + SLACK

    retries = [t for t in trials if t.system_attrs.get("failed_trial") is not None]
    assert [t.system_attrs["failed_trial"] for t in retries] == [killed]
    assert retries[0].state in FINISHED and retries[0].params == lost.params

    finished = [t for t in trials if t.state in FINISHED]
    assert len({tuple(sorted(t.params.items())) for t in finished}) == N_TRIALS  # no params finished twice
    assert len({t.system_attrs[WORKER_ATTR] for t in trials}) == WORKERS  # all three took trials
    for trial in finished:
        if trial.state.name == "COMPLETE":  # the job folder is named by trial number and holds its result
            result = rundir.read_results(sweep_dir / str(trial.number))
            assert result["status"] == rundir.STATUS_FINISHED
            assert trial.value == pytest.approx(result["metrics"]["val/mAP_best"])

