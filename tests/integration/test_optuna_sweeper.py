"""The ``hydra/sweeper=optuna`` plugin and the ``rtmdet_exp.experiment.trial`` bridge.

End-to-end tests run a throwaway Hydra app (written into a temp folder) in a subprocess and
read the real Optuna database afterwards; the objective values are recomputed here from each
trial's params with the app's formula, and the Pareto front with a plain dominance loop.
"""

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from hydra_plugins.rtmdet_optuna_sweeper.optuna_sweeper import OptunaSweeper, consecutive_runs
from hydra_plugins.rtmdet_optuna_sweeper.outcome import objective_values
from hydra_plugins.rtmdet_optuna_sweeper.search_space import parse_search_space, quote
from hydra_plugins.rtmdet_optuna_sweeper.storage import WORKER_ATTR
from rtmdet_exp.experiment import trial as sweep

REPO = Path(__file__).resolve().parents[2]
COMPLETE, PRUNED, FAIL, RUNNING = (optuna.trial.TrialState[s] for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"))

APP = '''
import hydra
from omegaconf import DictConfig

from rtmdet_exp.experiment import trial as sweep


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    number = sweep.current_trial().number
    if cfg.mode == "fail" and number == 2:
        raise RuntimeError("boom in trial 2")
    if cfg.mode == "fail" and number == 3:
        return {"val/mAP_best": float("nan")}
    if cfg.mode == "prune":
        value = -1.0 if number % 2 else 1.0
        for step in range(3):
            sweep.report(value, step)
    if cfg.mode == "multi":
        return {"a": cfg.x + (10.0 if cfg.y == "c" else 0.0), "b": cfg.x ** 2}
    score = -(cfg.x - 1.0) ** 2 + (0.5 if cfg.y == "b" else 0.0) + cfg.model.size
    return {"val/mAP_best": score, "val/other": 123.0}


if __name__ == "__main__":
    main()
'''

CONFIG = """
defaults:
  - model: small
  - override hydra/sweeper: optuna
  - _self_
mode: basic
x: 0.0
y: a
hydra:
  sweeper:
    n_trials: 3
    params:
      x: interval(-5, 5)
      y: choice(a, b)
"""


def expected_score(params: dict) -> float:
    """The app's basic objective, written out again."""
    size = {"small": 1.0, "big": 2.0}[params["model"]]
    return -(params["x"] - 1.0) ** 2 + (0.5 if params["y"] == "b" else 0.0) + size


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("app")
    (root / "app.py").write_text(APP)
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "config.yaml").write_text(CONFIG)
    (root / "conf" / "model" / "small.yaml").write_text("size: 1.0\n")
    (root / "conf" / "model" / "big.yaml").write_text("size: 2.0\n")
    return root


def app_env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for key in (sweep.ENV_TRIAL, sweep.ENV_STUDY, sweep.ENV_STORAGE):
        env.pop(key, None)
    return env


def run_sweep(app: Path, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "app.py", "-m", f"hydra.sweep.dir={sweep_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=app, env=app_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def start_sweep(app: Path, sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    """The same command in the background, stdout and stderr together in one pipe."""
    cmd = [sys.executable, "app.py", "-m", f"hydra.sweep.dir={sweep_dir}", *overrides]
    return subprocess.Popen(cmd, cwd=app, env=app_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def test_sweep_writes_study_and_rerun_resumes(app: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "resume"
    choose_model = "model=choice(small,big)"  # a config-group choice from the command line
    run_sweep(app, sweep_dir, "hydra.sweeper.n_trials=3", choose_model)
    storage = sqlite_url(sweep_dir / "optuna.db")
    name = f"app-{sweep_dir.name}"  # derived: job name + sweep dir basename
    assert optuna.get_all_study_names(storage) == [name]
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.state for t in trials] == [COMPLETE] * 3

    run_sweep(app, sweep_dir, "hydra.sweeper.n_trials=5", choose_model)
    assert optuna.get_all_study_names(storage) == [name]
    study = optuna.load_study(study_name=name, storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert all(t.state == COMPLETE for t in study.trials)
    assert study.metric_names == ["val/mAP_best"]
    for t in study.trials:
        assert -5.0 <= t.params["x"] <= 5.0 and t.params["y"] in ("a", "b")
        assert t.params["model"] in ("small", "big")
        assert t.value == pytest.approx(expected_score(t.params), abs=1e-9)
        # one job folder per trial number; its overrides carry that trial's params
        job_overrides = yaml.safe_load((sweep_dir / str(t.number) / ".hydra" / "overrides.yaml").read_text())
        assert f"x={t.params['x']!r}" in job_overrides
    best = max(study.trials, key=lambda t: t.value)
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_trial"] == best.number
    assert results["best_value"] == pytest.approx(best.value)
    assert results["trials"] == {"COMPLETE": 5}


def app_space() -> dict:
    """The app's search space as the sweeper builds it (x: interval(-5, 5), y: choice(a, b))."""
    return {"x": optuna.distributions.FloatDistribution(-5.0, 5.0),
            "y": optuna.distributions.CategoricalDistribution(["a", "b"])}


def test_stale_trial_is_failed_and_retried_once_and_failures_are_recorded(app: Path, tmp_path: Path) -> None:
    """A trial left RUNNING by a killed worker (its last heartbeat long ago) is failed at start and
    its params run once more; job errors and NaN objectives are FAIL and the worker goes on until
    n_trials trials are finished."""
    sweep_dir = tmp_path / "fail"
    sweep_dir.mkdir()
    db = sweep_dir / "optuna.db"
    name = f"app-{sweep_dir.name}"
    lost = optuna.create_study(study_name=name, storage=sqlite_url(db), direction="maximize").ask(app_space())
    storage = optuna.storages.RDBStorage(sqlite_url(db))
    storage.set_trial_system_attr(lost._trial_id, WORKER_ATTR, "gone-host:1")
    storage.record_heartbeat(lost._trial_id)
    with sqlite3.connect(db) as conn:  # its worker died an hour ago
        conn.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour')")

    proc = run_sweep(app, sweep_dir, "mode=fail", "model=small", "hydra.sweeper.n_trials=3",
                     "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.stale_after=30")
    trials = optuna.load_study(study_name=name, storage=sqlite_url(db)).trials
    # 0 lost, 1 its retry, 2 raises, 3 returns NaN, 4 and 5 complete the 3 finished trials
    assert [t.state for t in trials] == [FAIL, COMPLETE, FAIL, FAIL, COMPLETE, COMPLETE]
    retry = trials[1]
    assert retry.params == trials[0].params and retry.system_attrs["failed_trial"] == 0
    assert [t.number for t in trials if t.system_attrs.get("failed_trial") is not None] == [1]
    for t in (trials[1], trials[4], trials[5]):
        assert t.value == pytest.approx(expected_score({**t.params, "model": "small"}))
    log = proc.stdout + proc.stderr
    assert "boom in trial 2" in log and "not finite" in log
    assert "Trial 0 of gone-host:1 has no heartbeat any more" in log
    assert "Trial 1 retries the params of trial 0" in log


def test_running_trial_of_a_live_worker_counts_and_is_left_alone(app: Path, tmp_path: Path) -> None:
    """Another worker's RUNNING trial that keeps beating counts towards n_trials: this worker runs
    one trial of n_trials=2, then stands by (longer than stale_after) until the other one finishes."""
    sweep_dir = tmp_path / "workers"
    sweep_dir.mkdir()
    db = sweep_dir / "optuna.db"
    name = f"app-{sweep_dir.name}"
    other = optuna.create_study(study_name=name, storage=sqlite_url(db), direction="maximize").ask(app_space())
    storage = optuna.storages.RDBStorage(sqlite_url(db))
    storage.set_trial_system_attr(other._trial_id, WORKER_ATTR, "other-host:1")
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            storage.record_heartbeat(other._trial_id)
            stop.wait(0.5)

    beating = threading.Thread(target=beat)
    beating.start()
    proc = start_sweep(app, sweep_dir, "model=small", "hydra.sweeper.n_trials=2",
                       "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.stale_after=2")
    try:
        deadline = time.monotonic() + 120
        while len(storage.get_all_trials(storage.get_study_id_from_name(name), states=(COMPLETE,))) < 1:
            assert proc.poll() is None and time.monotonic() < deadline, "the worker's own trial did not finish"
            time.sleep(0.1)
        time.sleep(4)  # the worker stands by; a trial without beats would be failed by now
        assert storage.get_trial(other._trial_id).state == RUNNING
        optuna.load_study(study_name=name, storage=sqlite_url(db)).tell(other.number, 7.0)
        out, _ = proc.communicate(timeout=60)
    finally:
        stop.set()
        beating.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    trials = optuna.load_study(study_name=name, storage=sqlite_url(db)).trials
    assert [t.state for t in trials] == [COMPLETE, COMPLETE] and trials[0].value == 7.0
    assert "Waiting: the trials other workers run would complete the study" in out


def test_consecutive_runs_and_settings_are_checked() -> None:
    class T:
        def __init__(self, number: int) -> None:
            self.number = number

    runs = consecutive_runs([T(7), T(12), T(13), T(15)])  # a retry (7) popped before new trials
    assert [[t.number for t in run] for run in runs] == [[7], [12, 13], [15]]
    base = dict(sampler={"_target_": "optuna.samplers.RandomSampler"}, direction="maximize", storage=None,
                study_name=None, n_trials=3, n_jobs=1, max_failure_rate=1.0, params=None,
                custom_search_space=None, pruner=None, metric="val/mAP_best", load_if_exists=True)
    with pytest.raises(ValueError, match="hydra.sweeper.stale_after"):
        OptunaSweeper(**base, heartbeat_interval=10, stale_after=10)
    with pytest.raises(ValueError, match="hydra.sweeper.heartbeat_interval"):
        OptunaSweeper(**base, heartbeat_interval=0, stale_after=10)


def test_grid_sampler_runs_each_point_once(app: Path, tmp_path: Path) -> None:
    """n_trials above the grid size is capped at the 2 x 2 = 4 points, each run once."""
    sweep_dir = tmp_path / "grid"
    run_sweep(app, sweep_dir, "hydra/sweeper/sampler=grid", "x=choice(0.0,1.0)", "model=small",
              "hydra.sweeper.n_trials=10")
    trials = optuna.load_study(study_name=f"app-{sweep_dir.name}", storage=sqlite_url(sweep_dir / "optuna.db")).trials
    assert [t.state for t in trials] == [COMPLETE] * 4
    assert sorted((t.params["x"], t.params["y"]) for t in trials) == [(0.0, "a"), (0.0, "b"), (1.0, "a"), (1.0, "b")]


def test_report_prunes_under_threshold_pruner(app: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "prune"
    run_sweep(
        app, sweep_dir, "mode=prune", "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.lower=0.0", "hydra.sweeper.n_trials=3",
    )
    study = optuna.load_study(study_name=f"app-{sweep_dir.name}", storage=sqlite_url(sweep_dir / "optuna.db"))
    assert [t.state for t in study.trials] == [COMPLETE, PRUNED, COMPLETE]
    pruned = study.trials[1]
    assert pruned.intermediate_values == {0: -1.0}  # stopped at the first report below 0
    assert pruned.value == -1.0  # Optuna keeps the last reported value
    assert study.trials[0].intermediate_values == {0: 1.0, 1: 1.0, 2: 1.0}


def test_multi_objective_pareto_front_and_command_line_overrides(app: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "multi"
    storage = sqlite_url(tmp_path / "mo.db")
    run_sweep(
        app, sweep_dir, "mode=multi", "hydra.sweeper.direction=[maximize,minimize]",
        "hydra.sweeper.metric=[a,b]", f"hydra.sweeper.storage='{storage}'",
        "hydra.sweeper.study_name=mo", "y=c", "x=interval(-1,1)", "hydra.sweeper.n_trials=3",
    )
    study = optuna.load_study(study_name="mo", storage=storage)
    trials = study.trials
    assert [t.state for t in trials] == [COMPLETE] * 3
    assert study.metric_names == ["a", "b"]
    for t in trials:
        assert set(t.params) == {"x"} and -1.0 <= t.params["x"] <= 1.0  # the command line wins
        assert t.user_attrs == {"mode": "multi", "y": "c"}  # fixed on the command line
        assert t.values == pytest.approx([t.params["x"] + 10.0, t.params["x"] ** 2])

    def dominates(p: list, q: list) -> bool:
        return p[0] >= q[0] and p[1] <= q[1] and (p[0] > q[0] or p[1] < q[1])

    front = {t.number for t in trials if not any(dominates(o.values, t.values) for o in trials)}
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert {s["number"] for s in results["solutions"]} == front
    for solution in results["solutions"]:
        assert solution["values"] == pytest.approx(trials[solution["number"]].values)


def test_search_space_grammar() -> None:
    dists = parse_search_space(
        [
            "x=interval(-5,5)",
            "n=range(1,10)",
            "f=range(0,1,0.25)",
            "lr=tag(log, interval(1e-4,1e-1))",
            "y=a,b",
            "z=choice(1,2)",
            "z=7",  # a later fixed value replaces the earlier choice
        ]
    )
    d = dists.distributions
    assert d["x"] == optuna.distributions.FloatDistribution(-5.0, 5.0)
    assert d["n"] == optuna.distributions.IntDistribution(1, 9)  # Hydra's range excludes stop
    assert d["f"] == optuna.distributions.FloatDistribution(0.0, 0.75, step=0.25)
    assert d["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert d["y"] == optuna.distributions.CategoricalDistribution(["a", "b"])
    assert "z" not in d and dists.fixed_lines["z"] == "z=7"


def test_quote_parses_back_unchanged() -> None:
    parser = OverridesParser.create()
    for text in ["postgresql://u:p@h:5432/db?a=1&b=2", "/tmp/a b/c's.db", "x\\'y", "C:\\dir\\", ""]:
        assert parser.parse_override(f"k={quote(text)}").value() == text


def test_objective_values() -> None:
    assert objective_values({"val/mAP_best": 0.25, "val/mAP": 0.2}, ["val/mAP_best"], 1) == [0.25]
    assert objective_values(0.5, ["val/mAP_best"], 1) == [0.5]
    assert objective_values((1, 2.5), ["unused"], 2) == [1.0, 2.5]
    for bad in ({"val/mAP": 0.2}, float("nan"), float("inf"), None, "high"):
        with pytest.raises(ValueError):
            objective_values(bad, ["val/mAP_best"], 1)
    with pytest.raises(ValueError):
        objective_values((1.0,), ["a", "b"], 2)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize(
    ("overrides", "cls"),
    [
        (["hydra/sweeper/sampler=tpe"], optuna.samplers.TPESampler),
        (["hydra/sweeper/sampler=random"], optuna.samplers.RandomSampler),
        (["hydra/sweeper/sampler=cmaes"], optuna.samplers.CmaEsSampler),
        (["hydra/sweeper/sampler=nsgaii"], optuna.samplers.NSGAIISampler),
        (["hydra/sweeper/sampler=qmc"], optuna.samplers.QMCSampler),
        (["hydra/sweeper/pruner=median"], optuna.pruners.MedianPruner),
        (["hydra/sweeper/pruner=hyperband"], optuna.pruners.HyperbandPruner),
        (["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.upper=2"], optuna.pruners.ThresholdPruner),
    ],
)
def test_every_sampler_and_pruner_option_instantiates(app: Path, overrides: list, cls: type) -> None:
    with initialize_config_dir(config_dir=str(app / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    node = cfg.hydra.sweeper.pruner if "pruner" in overrides[0] else cfg.hydra.sweeper.sampler
    assert isinstance(instantiate(node), cls)
    if "pruner" not in overrides[0]:
        assert cfg.hydra.sweeper.pruner is None  # default: no pruning
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.hydra.sweeper.metric == "val/mAP_best"


def test_schema_rejects_typos(app: Path) -> None:
    with initialize_config_dir(config_dir=str(app / "conf"), version_base="1.3"):
        with pytest.raises(ConfigCompositionException):
            compose("config", overrides=["hydra.sweeper.n_trails=3"], return_hydra_config=True)
        with pytest.raises(ConfigCompositionException):
            compose("config", overrides=["hydra.sweeper.sampler.n_startup_trails=3"], return_hydra_config=True)


def test_bridge_outside_and_inside_a_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (sweep.ENV_TRIAL, sweep.ENV_STUDY, sweep.ENV_STORAGE):
        monkeypatch.delenv(key, raising=False)
    assert sweep.current_trial() is None
    sweep.report(-1.0, 0)  # no sweep: nothing happens

    storage = sqlite_url(tmp_path / "bridge.db")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.set_user_attr(sweep.PRUNER_ATTR, {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.0})
    study.ask()
    number = study.ask().number  # trial 1, so that the number -> id mapping is exercised
    monkeypatch.setenv(sweep.ENV_TRIAL, str(number))
    monkeypatch.setenv(sweep.ENV_STUDY, "s")
    monkeypatch.setenv(sweep.ENV_STORAGE, storage)
    assert sweep.current_trial().number == number
    sweep.report(0.5, 0)
    with pytest.raises(optuna.TrialPruned):
        sweep.report(-0.5, 1)
    stored = optuna.load_study(study_name="s", storage=storage).trials[number]
    assert stored.intermediate_values == {0: 0.5, 1: -0.5}
