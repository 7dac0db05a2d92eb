"""``hydra/launcher=submitit_local`` / ``submitit_slurm``: our defaults, real local jobs, and a job
that is stopped by submitit's preemption signal, requeued, and resumed from its checkpoint.

The expected numbers follow from the TINY settings (16 training images in batches of 4: 4 steps
per epoch) and the epochs asked for; the SLURM defaults are checked as composed (no SLURM here).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from conftest import REPO, TINY, run_cli, start_cli, wait_for
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from hydra_plugins.rtmdet_optuna_sweeper.submitit_launchers import ForwardToTrainer
from rtmdet_exp.experiment import register, rundir

STEPS_PER_EPOCH = 16 // 4  # TINY: 16 training images, batch 4


def job_log(job: Path) -> str:
    """stdout and stderr of a submitit job's task 0 (submitit logs to both)."""
    return "".join(p.read_text() for p in sorted(job.glob(f"{job.name}_0_log.*")))


def launcher_config(name: str, *overrides: str) -> dict:
    """``hydra.launcher`` as composed from the real conf/ (not resolved)."""
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
    return {k: cfg.hydra.launcher[k] for k in cfg.hydra.launcher if k != "submitit_folder"}


@pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema:UserWarning")
def test_launcher_defaults_and_typos() -> None:
    slurm = launcher_config("submitit_slurm")
    assert slurm["_target_"].endswith("RequeueingSlurmLauncher")
    assert (slurm["gpus_per_task"], slurm["tasks_per_node"], slurm["timeout_min"]) == (1, 1, 720)
    assert slurm["max_num_timeout"] > 0 and slurm["additional_parameters"] == {"requeue": True}
    assert slurm["signal_delay_s"] == 300 and slurm["cpus_per_task"] == 10 and slurm["mem_gb"] == 64
    local = launcher_config("submitit_local", "hydra.launcher.gpus_per_node=0")
    assert local["_target_"].endswith("RequeueingLocalLauncher") and local["gpus_per_node"] == 0
    with pytest.raises(ConfigCompositionException):  # checked against the plugin's schema
        launcher_config("submitit_slurm", "hydra.launcher.timeout_mn=5")


def test_preemption_signal_goes_to_the_trainer_only_inside_its_loop() -> None:
    calls: list[str] = []

    def idle(signum: int, frame: object) -> None:  # the SIGTERM handler a job starts with
        calls.append("idle")

    def trainer(signum: int, frame: object) -> None:
        calls.append(f"trainer:{signal.Signals(signum).name}")

    forward = ForwardToTrainer(lambda signum, frame: calls.append("requeue"), idle)
    before = signal.signal(signal.SIGTERM, idle)
    try:
        forward(signal.SIGUSR2, None)  # not training: submitit requeues at once
        signal.signal(signal.SIGTERM, trainer)
        forward(signal.SIGUSR2, None)  # training: the trainer saves after this step
    finally:
        signal.signal(signal.SIGTERM, before)
    assert calls == ["requeue", "trainer:SIGTERM"]


@pytest.mark.slow
def test_submitit_local_runs_each_job_in_its_own_process(tmp_path: Path) -> None:
    """Without a pinned hydra.sweep.dir: the folder the command names (multirun/<identity>/<time>)
    is resolved once by the launcher, and both jobs, each in its own process, land in it."""
    proc = run_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.gpus_per_node=0", *TINY,
                    "seed=0,1", "hydra.sweep.subdir=${hydra.job.num}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sweep_dir,) = list((tmp_path / "multirun").glob("*/*"))
    jobs = sorted((sweep_dir / ".submitit").glob("[0-9]*"))
    assert len(jobs) == 2  # two submitit jobs (local job id = the process id of its controller)
    for job in jobs:
        assert "Job completed successfully" in job_log(job)
    for num, seed in ((0, 0), (1, 1)):
        run_dir = sweep_dir / str(num)
        assert rundir.status(run_dir) == rundir.STATUS_FINISHED
        assert rundir.read_results(run_dir)["config"]["seed"] == seed
        steps = [r["step"] for r in rundir.read_metrics(run_dir) if "train/loss" in r]
        assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))  # debug=fast: 2 epochs


def _submitit_task(sweep_dir: Path) -> int | None:
    """Process id of the running submitit task of this sweep (its command names the sweep folder)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "submitit.core._submit" in cmdline and any(str(sweep_dir) in part for part in cmdline):
            return int(entry.name)
    return None


@pytest.mark.slow
def test_preempted_trial_is_requeued_resumes_and_keeps_its_heartbeat(tmp_path: Path) -> None:
    """SIGUSR2 (submitit's time-limit/preemption signal) in epoch 2 of a 4-epoch trial: the trainer
    saves interrupt.pt, the job is requeued into the same folder and resumes; the Optuna trial
    stays RUNNING across the restart (its sweeper keeps beating although stale_after is 2 s) and
    ends COMPLETE with every step trained exactly once."""
    sweep_dir = tmp_path / "sweep"
    epochs = 4
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.gpus_per_node=0", "hydra/sweeper=optuna",
            *TINY, f"trainer.max_epochs={epochs}", "trainer.val_interval=1", "hydra.sweeper.n_trials=1",
            "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.stale_after=2",
            f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}"]
    proc = start_cli(args, tmp_path / "sweep.log", new_session=True)
    run_dir = sweep_dir / "0"
    try:
        def in_epoch_2() -> bool:
            steps = [r.get("step", 0) for r in rundir.read_metrics(run_dir) if "train/loss" in r]
            return bool(steps) and max(steps) > STEPS_PER_EPOCH

        wait_for(in_epoch_2, proc, what="a training step of epoch 2")
        task = _submitit_task(sweep_dir)
        assert task is not None, "no running submitit task found"
        signalled = time.monotonic()
        os.kill(task, signal.SIGUSR2)
        assert proc.wait(timeout=240) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    job = next((sweep_dir / ".submitit").glob("[0-9]*"))
    assert "Requeued job" in job_log(job)
    assert "resumed from" in (run_dir / "run.log").read_text() and "interrupt.pt" in (run_dir / "run.log").read_text()
    assert rundir.status(run_dir) == rundir.STATUS_FINISHED
    steps = [r["step"] for r in rundir.read_metrics(run_dir) if "train/loss" in r]
    assert steps == list(range(1, epochs * STEPS_PER_EPOCH + 1))  # nothing lost, nothing trained twice
    study = optuna.load_study(study_name=f"run-{sweep_dir.name}", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    assert took > 2 + 1  # the restart outlasted stale_after + heartbeat_interval: the heartbeat held
    best = rundir.read_results(run_dir)["metrics"]["val/mAP_best"]
    assert study.trials[0].value == pytest.approx(best)
