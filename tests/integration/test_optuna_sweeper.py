"""The ``hydra/sweeper=optuna`` plugin and the ``rtmdet_exp.sweep`` bridge.

End-to-end tests run a throwaway Hydra app (written into a temp folder) in a subprocess and
read the real Optuna database afterwards; the objective values are recomputed here from each
trial's params with the app's formula, and the Pareto front with a plain dominance loop.
"""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from hydra_plugins.rtmdet_optuna_sweeper.optuna_sweeper import (
    objective_values,
    parse_search_space,
    quote,
)
from rtmdet_exp import sweep

REPO = Path(__file__).resolve().parents[2]
COMPLETE, PRUNED, FAIL, RUNNING = (optuna.trial.TrialState[s] for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"))

APP = '''
import hydra
from omegaconf import DictConfig

from rtmdet_exp import sweep


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


def run_sweep(app: Path, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for key in (sweep.ENV_TRIAL, sweep.ENV_STUDY, sweep.ENV_STORAGE):
        env.pop(key, None)
    cmd = [sys.executable, "app.py", "-m", f"hydra.sweep.dir={sweep_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=app, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


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


def test_failures_and_stale_trials_are_marked_fail(app: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "fail"
    sweep_dir.mkdir()
    storage = sqlite_url(sweep_dir / "optuna.db")
    name = f"app-{sweep_dir.name}"
    # a trial left RUNNING by a "killed" earlier sweep of the same command
    optuna.create_study(study_name=name, storage=storage, direction="maximize").ask()

    proc = run_sweep(app, sweep_dir, "mode=fail", "model=small", "hydra.sweeper.n_trials=3")
    study = optuna.load_study(study_name=name, storage=storage)
    # trial 0 stale, trial 1 fine, trial 2 raises, trial 3 returns NaN; 3 launched in this run
    assert [t.state for t in study.trials] == [FAIL, COMPLETE, FAIL, FAIL]
    assert study.trials[1].value == pytest.approx(expected_score({**study.trials[1].params, "model": "small"}))
    log = proc.stdout + proc.stderr
    assert "boom in trial 2" in log and "not finite" in log


def test_workers_sharing_a_study_leave_running_trials_alone(app: Path, tmp_path: Path) -> None:
    """With fail_running_trials=false another worker's RUNNING trial survives this worker's start."""
    sweep_dir = tmp_path / "workers"
    sweep_dir.mkdir()
    storage = sqlite_url(sweep_dir / "optuna.db")
    name = f"app-{sweep_dir.name}"
    optuna.create_study(study_name=name, storage=storage, direction="maximize").ask()  # "other worker"

    run_sweep(app, sweep_dir, "model=small", "hydra.sweeper.n_trials=2", "hydra.sweeper.fail_running_trials=false")
    study = optuna.load_study(study_name=name, storage=storage)
    assert [t.state for t in study.trials] == [RUNNING, COMPLETE, COMPLETE]


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
