"""``hydra/launcher=gpu_pool``: K jobs at once in fresh processes, each in its own run folder.

The resource rule is checked against numbers worked out by hand. The end-to-end tests run real
processes: a throwaway Hydra app (jobs that sleep, raise, or kill their own process) under the
basic and the Optuna sweeper, and a tiny real training grid whose four runs, two at a time, must
equal bit for bit the same runs made one after the other by Hydra's basic launcher. Concurrency
is read from the run folders: a job's ``.hydra/config.yaml`` is written when it starts and its
result when it ends, so two such intervals that overlap prove two jobs ran at once, and no point
covered by three intervals shows that at most two did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import REPO, REPRO, cli_env, run_cli
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate

from hydra_plugins.rtmdet_gpu_pool_launcher import resources
from hydra_plugins.rtmdet_gpu_pool_launcher.resources import Gpu, auto_workers, plan_slots, resolve_gpus
from rtmdet_exp.experiment import trial as sweep
from rtmdet_exp.experiment import register, rundir

APP = '''
import json, os, time
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    number = int(os.environ.get("RTMDET_OPTUNA_TRIAL", cfg.job))
    if number in cfg.raise_in:
        raise ValueError(f"boom in job {number}")
    if number in cfg.crash_in:
        os._exit(3)  # the process dies: no result, no traceback
    time.sleep(cfg.sleep)
    value = -(cfg.x - 1.0) ** 2
    with open("result.json", "w") as out:  # the job's own record, in its run folder (hydra.job.chdir)
        json.dump({"x": cfg.x, "pid": os.getpid(), "shared": os.environ.get("RTMDET_GPU_SHARED"),
                   "threads": os.environ.get("OMP_NUM_THREADS")}, out)
    return {"val/mAP_best": value}


if __name__ == "__main__":
    main()
'''

CONFIG = """
defaults:
  - override hydra/launcher: gpu_pool
  - _self_
job: 0
x: 0.0
sleep: 1.5
raise_in: []
crash_in: []
hydra:
  job:
    chdir: true
  sweep:
    subdir: ${hydra.job.num}
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pool_app")
    (root / "app.py").write_text(APP)
    (root / "conf").mkdir()
    (root / "conf" / "config.yaml").write_text(CONFIG)
    return root


def app_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for key in (sweep.ENV_TRIAL, sweep.ENV_STUDY, sweep.ENV_STORAGE, "CUDA_VISIBLE_DEVICES"):
        env.pop(key, None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU: the CPU rule decides, the same on every machine
    return env


def run_app(app: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", "-m", *overrides], cwd=app, env=app_env(), capture_output=True,
                          text=True, timeout=180, check=False)


def intervals(folders: list[Path], end_file: str) -> list[tuple[float, float]]:
    """(start, end) of each job: its .hydra/config.yaml (written at start) and its ``end_file``."""
    return [((f / ".hydra" / "config.yaml").stat().st_mtime, (f / end_file).stat().st_mtime) for f in folders]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of intervals that cover one instant (checked at every start)."""
    return max(sum(start <= t < end for start, end in spans) for t, _ in spans)


# ------------------------------------------------------------------------------------ the rule


def test_auto_workers_follow_the_documented_rule() -> None:
    # 16 cores, 2 per run: 8; one H200 with 139.5 GiB free at 8 GiB per run: 17 -> the CPU decides
    assert auto_workers(16, [Gpu("0", 139.5)], 2, 8.0)[0] == 8
    # two GPUs with 20 and 17 GiB free at 8 GiB per run: 2 + 2 = 4 < 64 cores // 2 -> memory decides
    assert auto_workers(64, [Gpu("0", 20.0), Gpu("1", 17.0)], 2, 8.0)[0] == 4
    # not even one run fits by memory: still one worker
    assert auto_workers(16, [Gpu("0", 3.0)], 2, 8.0)[0] == 1
    # no GPU (or its memory unknown): the cores alone, 2 cores // 2 = 1, 3 // 1 = 3
    assert auto_workers(2, [], 2, 8.0)[0] == 1
    assert auto_workers(3, [Gpu("GPU-abc", None)], 1, 8.0)[0] == 3


def test_slots_spread_round_robin_and_split_the_cores() -> None:
    slots = plan_slots(5, [Gpu("0"), Gpu("1")], cores=16)
    assert [s.gpu for s in slots] == ["0", "1", "0", "1", "0"]
    assert all(s.shared for s in slots) and {s.threads for s in slots} == {16 // 5}
    alone = plan_slots(2, [Gpu("0"), Gpu("1")], cores=16)
    assert [s.shared for s in alone] == [False, False]  # one run per GPU: latency is measured alone
    cpu = plan_slots(2, [], cores=2)
    assert [s.gpu for s in cpu] == [None, None] and all(s.shared for s in cpu)
    assert resources.loader_share(16, 8) == 1 and resources.loader_share(16, 5) == 2
    assert resources.loader_share(2, 2) == 0
    env = resources.slot_environment(slots[1], {"PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["OMP_NUM_THREADS"] == "3" and env[resources.SHARED_ENV] == "1" and env["PATH"] == "/bin"
    assert resources.slot_environment(slots[1], {"OMP_NUM_THREADS": "1"})["OMP_NUM_THREADS"] == "1"


def test_gpus_come_from_the_option_the_environment_or_nvidia_smi() -> None:
    listed = [("0", "GPU-a", 10.0), ("1", "GPU-b", 20.0), ("2", "GPU-c", 30.0)]

    def names(option: list[str] | None, env: dict[str, str]) -> list[tuple[str, float | None]]:
        # Compared as tuples: Hydra's plugin scan re-executes plugin modules, so the Gpu class can be a new one
        return [(g.name, g.free_gb) for g in resolve_gpus(option, env, listed)]

    assert names(None, {}) == [("0", 10.0), ("1", 20.0), ("2", 30.0)]
    assert names(None, {"CUDA_VISIBLE_DEVICES": "2,GPU-b"}) == [("2", 30.0), ("GPU-b", 20.0)]
    assert names(None, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert names(None, {"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert names(["1"], {"CUDA_VISIBLE_DEVICES": "0"}) == [("1", 20.0)]


def _launcher_node(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["hydra/launcher=gpu_pool", *overrides], return_hydra_config=True)


def test_options_are_typed_and_bad_values_name_the_key() -> None:
    launcher = _launcher_node().hydra.launcher
    assert launcher.workers == "auto" and launcher.cpus_per_run == 2 and launcher.console_log == "console.log"
    for typo in ("hydra.launcher.workerz=2", "hydra.launcher.cpus_per_run=many"):
        with pytest.raises(ConfigCompositionException):
            _launcher_node(typo)
    for key, value in (("workers", 0), ("workers", "'all'"), ("cpus_per_run", 0), ("loader_workers", -1),
                       ("mps", "maybe")):
        node = _launcher_node(f"hydra.launcher.{key}={value}").hydra.launcher
        with pytest.raises(InstantiationException, match=f"hydra.launcher.{key}: expected"):
            instantiate(node)


# ---------------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_basic_sweeper_runs_the_batch_two_at_a_time_and_survives_failures(app: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "grid"
    proc = run_app(app, "job=0,1,2,3,4,5", "raise_in=[4]", "crash_in=[5]", "hydra.launcher.workers=2",
                   f"hydra.sweep.dir={sweep_dir}")
    # Hydra's basic sweeper raises the first failed job's error once the whole batch has run
    assert proc.returncode == 1 and "boom in job 4" in proc.stderr, proc.stderr[-3000:]
    folders = [sweep_dir / str(n) for n in range(4)]
    records = [json.loads((f / "result.json").read_text()) for f in folders]
    assert len({r["pid"] for r in records} | {os.getpid()}) == 5  # four processes, none of them the test's
    assert all(r["shared"] == "1" and r["threads"] == "1" for r in records)  # two jobs share the CPU's cores
    spans = intervals(folders, "result.json")
    assert most_at_once(spans) == 2  # two at once, never three
    assert "gpu_pool: 2 worker(s)" in proc.stdout + proc.stderr
    # the failures came back as failed jobs with their reasons, and the other jobs all ran
    assert "ValueError: boom in job 4" in (sweep_dir / "4" / "console.log").read_text()
    assert "#5 FAILED" in proc.stdout + proc.stderr and "exited with code 3" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_optuna_sweeper_keeps_two_trials_in_flight(app: Path, tmp_path: Path) -> None:
    """Trials of unequal length: a new one starts whenever one ends (not batch after batch); a
    trial that raises and one whose process dies are FAIL, the study still gets its 4 finished."""
    sweep_dir = tmp_path / "study"
    proc = run_app(app, "hydra/sweeper=optuna", "x=interval(-2,2)", "sleep=choice(0.5,3.0)",
                   "raise_in=[1]", "crash_in=[2]", "hydra.launcher.workers=2", "hydra.sweeper.n_trials=4",
                   "hydra/sweeper/sampler=random", f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = optuna.load_study(study_name=f"app-{sweep_dir.name}", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    states = {t.number: t.state.name for t in study.trials}
    assert states[1] == "FAIL" and states[2] == "FAIL"
    assert sum(s == "COMPLETE" for s in states.values()) == 4 and len(states) == 6
    for trial in study.trials:
        if trial.state.name == "COMPLETE":
            record = json.loads((sweep_dir / str(trial.number) / "result.json").read_text())
            assert trial.value == pytest.approx(-(record["x"] - 1.0) ** 2)
            assert record["x"] == pytest.approx(trial.params["x"])
    complete = [sweep_dir / str(t.number) for t in study.trials if t.state.name == "COMPLETE"]
    assert most_at_once(intervals(complete, "result.json")) <= 2
    assert "Keeping 2 trial(s) in flight" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_tiny_grid_in_the_pool_equals_the_same_runs_one_at_a_time(tmp_path: Path) -> None:
    grid = ["-m", *REPRO, "seed=0,1,2,3", "hydra.sweep.subdir=${hydra.job.num}"]
    alone = run_cli([*grid, f"hydra.sweep.dir={tmp_path / 'alone'}"])
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    pooled = run_cli([*grid, "hydra/launcher=gpu_pool", "hydra.launcher.workers=2",
                      f"hydra.sweep.dir={tmp_path / 'pool'}"], env=cli_env(CUDA_VISIBLE_DEVICES=""))
    assert pooled.returncode == 0, pooled.stdout[-3000:] + pooled.stderr[-3000:]
    folders = [tmp_path / "pool" / str(n) for n in range(4)]
    for n, folder in enumerate(folders):
        reference = tmp_path / "alone" / str(n)
        assert rundir.status(folder) == rundir.STATUS_FINISHED
        ours, theirs = rundir.read_results(folder), rundir.read_results(reference)
        assert ours["config"]["seed"] == n
        same = {k: v for k, v in theirs["metrics"].items() if not k.startswith("perf/") or k in ("perf/params",)}
        assert {k: ours["metrics"][k] for k in same} == same  # bitwise: deterministic CPU runs
        losses = [(r["step"], r["train/loss"]) for r in rundir.read_metrics(folder) if "train/loss" in r]
        assert losses == [(r["step"], r["train/loss"]) for r in rundir.read_metrics(reference) if "train/loss" in r]
        assert len(losses) == 12  # REPRO: 3 epochs of 4 steps
        assert (folder / "console.log").is_file()
    assert most_at_once(intervals(folders, rundir.RESULTS)) == 2
