"""Pruning that acts: the shipped hparams_lr_wd study reports often enough for its median pruner
to stop trials that learn nothing, and that saves trial-epochs.

Eight trials of the study (its median pruner, validation every few epochs on the val subset, the
last epoch on every image) on a tiny problem that learns within 30 steps: 8 images of 64 px
trained and validated on (``debug=overfit``), one step per epoch. The trials are queued in the
study beforehand, so the order is fixed whatever the sampler does: two good learning rates first
(the pruner's start-up trials), then five from the decade 1e-6..1e-5 that learns nothing in 30
steps, then a good one. The same eight trials run once more with pruning switched off. Trial-epochs
are counted from each run folder's ``metrics.jsonl`` (the highest epoch logged), not from Optuna,
and each trial's stopping epoch is derived by hand from its unpruned twin's intermediate values: a
good learning rate close to the median may be stopped late, and which one is depends on the CPU's
arithmetic, so the test asks for the median rule's answer rather than a fixed epoch.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest
from conftest import run_cli

from rtmdet_exp.experiment import rundir

EPOCHS, VAL_EVERY, WARMUP = 30, 5, 10  # the pruner may first stop a trial at epoch 10 of 30
STARTUP = 2  # trials that complete before the pruner acts (the two first good learning rates)
GOOD, BAD = (7e-3, 1e-2, 5e-3), (1e-6, 3e-6, 1e-5, 2e-6, 5e-6)
LRS = (*GOOD[:2], *BAD, GOOD[2])
WEIGHT_DECAY = 0.05


def study_args(sweep_dir: Path, *extra: str) -> list[str]:
    return ["-m", "+study=hparams_lr_wd", "debug=overfit", "data.img_size=64", "model.backbone.widen_factor=0.125",
            "trainer.device=cpu", "trainer.deterministic=true", f"trainer.max_epochs={EPOCHS}",
            "trainer.precision=fp32", "trainer.grad_clip=null",  # the arithmetic the learning rates were chosen in
            f"trainer.val_interval={VAL_EVERY}", "trainer.checkpoint_interval=1000", "trainer.log_interval=10",
            "optim.lr=tag(log,interval(1e-6,3e-2))", f"hydra.sweeper.n_trials={len(LRS)}",
            f"hydra.sweeper.pruner.n_startup_trials={STARTUP}", f"hydra.sweeper.pruner.n_warmup_steps={WARMUP}",
            f"hydra.sweep.dir={sweep_dir}", *extra]


def run_study(sweep_dir: Path, *extra: str) -> list[optuna.trial.FrozenTrial]:
    """Queue the eight trials in the study the sweep will load, run it, return its trials."""
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    sweep_dir.mkdir(parents=True)
    study = optuna.create_study(study_name=f"run-{sweep_dir.name}", storage=storage, direction="maximize")
    for lr in LRS:
        study.enqueue_trial({"optim.lr": lr, "optim.weight_decay": WEIGHT_DECAY})
    proc = run_cli(study_args(sweep_dir, *extra), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = optuna.load_study(study_name=f"run-{sweep_dir.name}", storage=storage).trials
    assert [t.params["optim.lr"] for t in trials] == pytest.approx(list(LRS))
    return trials


def epochs_trained(run_dir: Path) -> int:
    """Epochs a run trained, from its metrics.jsonl (training records carry the fractional epoch)."""
    return round(max(r["epoch"] for r in rundir.read_metrics(run_dir) if "epoch" in r))


def median_rule_stop(values: dict[int, float], completed: list[dict[int, float]]) -> int:
    """The epoch a median pruner stops a trial with these intermediate values, by hand: the first
    validation at or after warm-up where the best value so far is below the median, at that epoch, of
    the completed trials (here the two start-up trials: the others are pruned or still running)."""
    for step in sorted(values):
        best = max(v for s, v in values.items() if s <= step)
        if step >= WARMUP and best < statistics.median(c[step] for c in completed):
            return step
    return EPOCHS


@pytest.mark.slow
def test_median_pruner_stops_the_learning_rates_that_learn_nothing(tmp_path: Path) -> None:
    pruned_sweep, full_sweep = tmp_path / "pruned", tmp_path / "unpruned"
    pruned = run_study(pruned_sweep)
    full = run_study(full_sweep, "hydra.sweeper.pruner.n_startup_trials=1000")  # the pruner never starts

    spent = {t.number: epochs_trained(pruned_sweep / str(t.number)) for t in pruned}
    unpruned = {t.number: epochs_trained(full_sweep / str(t.number)) for t in full}
    assert set(unpruned.values()) == {EPOCHS} and all(t.state.name == "COMPLETE" for t in full)
    saved = 1 - sum(spent.values()) / sum(unpruned.values())
    assert saved >= 0.30, f"the pruner saved {saved:.0%} of the trial-epochs: {spent}"

    startup = [t.intermediate_values for t in full[:STARTUP]]
    for trial in pruned:
        lr, epochs = trial.params["optim.lr"], spent[trial.number]
        twin = full[trial.number].intermediate_values
        assert trial.intermediate_values == {s: v for s, v in twin.items() if s <= epochs}  # the same run
        assert epochs == (EPOCHS if trial.number < STARTUP else median_rule_stop(twin, startup)), lr
        if lr in BAD:  # stopped at the first epoch the pruner may act on
            assert trial.state.name == "PRUNED" and epochs == WARMUP, (lr, trial.state, epochs)
        else:  # a good one outlives the first epoch the pruner may act on
            assert epochs > WARMUP, (lr, trial.state, epochs)
    # what was stopped would have ended below everything that was kept: read from the unpruned twins
    final = {t.params["optim.lr"]: t.value for t in full}
    assert max(final[lr] for lr in BAD) < min(final[lr] for lr in GOOD)
    # the completed trials are the same runs whether or not others were pruned
    for trial in pruned:
        if trial.state.name == "COMPLETE":
            assert trial.value == full[trial.number].value

    # intermediate validations scored the val subset, the last one every image (the objective)
    records = [r for r in rundir.read_metrics(pruned_sweep / "0") if "epoch" in r and "train/loss" not in r]
    assert [r["epoch"] for r in records if "val_subset/mAP" in r] == list(range(VAL_EVERY, EPOCHS, VAL_EVERY))
    assert [r["epoch"] for r in records if "val/mAP" in r] == [EPOCHS]
