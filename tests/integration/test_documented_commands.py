"""Every command the documentation shows works as written (README.md, docs/*.md, study headers, conf/).

Commands are read from the files (tests/support/commands.py), never copied here. Placeholders
(``/data/coco``, ``<launch time>``, ``some/folder``...) become real paths made by the fixtures
below: a tiny COCO copy of the built-in data and a tiny real sweep. Then:

* ``python run.py ...`` and ``torchrun ... run.py ...``: the first job composes, passes every check
  and builds (a dry run: ``dry_run=true`` prints the recipe card and reads no data); a multirun's
  sweeper settings are checked too (a pruner that could never act is refused);
* ``python -m rtmdet_exp.<tool> ...``: the tool runs on the real files and exits 0.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, TINY, run_cli

from rtmdet_exp.experiment.context import LaunchContext
from rtmdet_exp.experiment.train import train
from tests.support.commands import Command, compose_first_job, documented_commands, run_py_args, tool_of

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# Documented lines that are not our commands to run, each with the reason.
NOT_RUNNABLE = {
    "python run.py key=value ...": "the generic form a W&B agent runs, not a command",
    "python -m rtmdet_exp.<tool> key=value ...": "the generic form of every tool, not a command",
}
PLACEHOLDER = re.compile(r"<[^<>]*>")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real sweep (2 jobs): report input, and a checkpoint for predict/evaluate/export."""
    folder = tmp_path_factory.mktemp("documented") / "kernel_size"
    proc = run_cli(["-m", "+study=kernel_size", "kernel=k3,k5", "seed=0", *TINY, "trainer.max_epochs=1",
                    f"hydra.sweep.dir={folder}"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return folder


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An Optuna storage holding a small finished study named as in the docs' shared-storage example."""
    import optuna

    url = f"sqlite:///{tmp_path_factory.mktemp('optuna') / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="hparams_lr_wd_coco", direction="maximize")
    for value in (0.1, 0.3, 0.2, 0.25):
        trial = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        study.tell(trial, value)
    return url


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, coco_dataset: Path) -> Path:
    """A checkpoint of an RTMDet-s network for the tiny COCO copy, as the fine-tuning example loads."""
    from rtmdet_exp.engine.checkpoint import save_checkpoint
    from rtmdet_exp.experiment import build, compose

    network = build.build_network(compose(["model=rtmdet_s", "data=coco", f"data.root={coco_dataset}"]))
    state = {f"network.{k}": v for k, v in network.state_dict().items()}
    return save_checkpoint({"model": state}, tmp_path_factory.mktemp("weights") / "rtmdet_s.pt")


def substitute(text: str, sweep: Path, coco: Path, storage: str, weights: Path) -> str:
    """Real paths for the documentation's placeholders."""
    job = sorted(p for p in sweep.iterdir() if (p / "checkpoints" / "best.pt").exists())[0]
    swaps = {
        "/data/coco": str(coco),
        "outputs/<date>/<time>/checkpoints/best.pt": str(job / "checkpoints" / "best.pt"),
        "outputs/<run>/checkpoints/best.pt": str(job / "checkpoints" / "best.pt"),
        "rtmdet_s_coco.pth": str(weights),
        "some/folder": str(coco / "val2017"),
        "postgresql://user@dbhost/optuna": storage,
        "seed=$I": "seed=0",
        "seed$I": "seed0",
    }
    for old, new in swaps.items():
        text = text.replace(old, new)
    text = re.sub(r"multirun/[\w<>/ ]*?(<[^<>]*>|run1)(?=\s|$)", str(sweep), text)
    text = re.sub(r"(?<=\s)outputs(?=\s|$)", str(sweep), text)
    return text


COMMANDS = [c for c in documented_commands() if c.text not in NOT_RUNNABLE]


def test_the_docs_show_commands_of_every_kind() -> None:
    kinds = {tool_of(c) for c in COMMANDS}
    assert {"run.py", "torchrun", "rtmdet_exp.info", "rtmdet_exp.report", "rtmdet_exp.predict"} <= kinds


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_works(command: Command, sweep: Path, coco_dataset: Path, storage: str, weights: Path,
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = substitute(command.text, sweep, coco_dataset, storage, weights)
    assert not PLACEHOLDER.search(text), f"{command}: placeholder left in {text!r}"
    real = Command(command.source, text)
    monkeypatch.chdir(REPO)
    if tool_of(real) in ("run.py", "torchrun"):
        check_run(real, tmp_path)
    else:
        proc = run_cli(real.argv[3:], module=real.argv[2], timeout=600, cwd=tmp_path)  # default outputs go there
        assert proc.returncode == 0, f"{real}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr


def check_run(command: Command, tmp_path: Path) -> None:
    if "--help" in command.argv:
        proc = run_cli(["--help"], timeout=120, cwd=tmp_path)
        assert proc.returncode == 0 and "== Configuration groups ==" in proc.stdout, proc.stderr[-2000:]
        assert "model: rtmdet_l, rtmdet_m, rtmdet_s, rtmdet_tiny, rtmdet_x" in proc.stdout, proc.stdout
        return
    args = [a for a in run_py_args(command) if a != "--cfg" and a != "job"]
    multirun = "-m" in args or "--multirun" in args
    cfg, hydra = compose_first_job(args)
    if "--cfg" in command.argv:
        return  # printing the composed config: composing it is the check
    ctx = LaunchContext(overrides=[a for a in args if not a.startswith("-")], multirun=multirun,
                        sweeper=hydra.sweeper if multirun else None)
    cfg.dry_run = True
    out: dict[str, Any] = train(cfg, run_dir=tmp_path / "run", context=ctx)
    assert out["dry_run"] is True, command
    assert not (tmp_path / "run").exists()
