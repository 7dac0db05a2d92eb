"""``hydra/launcher=submitit_slurm`` and ``submitit_local`` for rtmdet-exp: a stopped job resumes.

The options are ``conf/hydra/launcher/submitit_{slurm,local}.yaml``: our defaults, with the
launcher classes below as ``_target_``. Hydra validates each against the plugin's schema of the
same name (its "automatic schema matching"), so a mistyped key fails at compose time.

How a job is stopped and resumed, and why the plugin's launcher alone is not enough: submitit
handles its preemption signal (``USR2``, sent by SLURM ``signal_delay_s`` before the time limit,
or by the local executor) by calling the launcher's ``checkpoint()`` (a resubmission of the same
job: same job number, so the same run folder), requeueing the job and exiting at once, in the
middle of a training step: the run would resume from its last epoch checkpoint. Our trainer
saves ``checkpoints/interrupt.pt`` after the current step on SIGTERM and raises; Hydra records
that as a failed job, which submitit would report as a result instead of requeueing.

These launchers make the two cooperate: while the trainer is in its loop, submitit's signal is
passed to the trainer's SIGTERM handler; once the job has stopped with its run folder marked
``interrupted`` (``rtmdet_exp.experiment.rundir``), submitit's own handler is called to
checkpoint and requeue. A SLURM preemption that sends SIGTERM (no user signal) takes the same
path. The requeued job finds the checkpoint and resumes (``trainer.auto_resume``), and the
sweeper keeps waiting for it, its trial's heartbeat beating all along.
"""

import logging
import os
import signal
import warnings
from pathlib import Path
from typing import Any, Callable

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

log = logging.getLogger(__name__)

PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's variable naming its signal (default USR2)
# Hydra's notice about matching conf/hydra/launcher/submitit_*.yaml with the plugin's schema of the
# same name, which the job repeats when it composes its config; the matching is what we want.
SCHEMA_NOTICE = r"(?s).*validated against ConfigStore schema with the same name"

Handler = Callable[[int, Any], Any]


def preempt_signal() -> signal.Signals:
    """The signal submitit treats as "time limit or preemption: checkpoint and requeue"."""
    return signal.Signals[f"SIG{os.environ.get(PREEMPT_SIGNAL_ENV, 'USR2')}"]


class ForwardToTrainer:
    """Handler of submitit's preemption signal while a job runs.

    Outside the training loop (SIGTERM still has the handler it had when the job started)
    there is nothing to save: submitit's handler requeues at once. Inside it, the trainer's
    SIGTERM handler gets the signal, saves ``interrupt.pt`` after the current step and stops.
    """

    def __init__(self, requeue: Handler, idle_sigterm: Any) -> None:
        self.requeue = requeue
        self.idle_sigterm = idle_sigterm

    def __call__(self, signum: int, frame: Any) -> None:
        sigterm = signal.getsignal(signal.SIGTERM)
        if sigterm is self.idle_sigterm or not callable(sigterm):
            self.requeue(signum, frame)
        else:
            log.warning(f"{signal.Signals(signum).name} (time limit or preemption): stopping after this step "
                        "to save a checkpoint, then requeueing")
            sigterm(signal.SIGTERM, frame)


def stopped_with_checkpoint(job_return: JobReturn) -> bool:
    """Whether a job ended by a stop signal with a resumable checkpoint in its run folder."""
    if job_return.status != JobStatus.FAILED or job_return.hydra_cfg is None:
        return False
    from rtmdet_exp.experiment import rundir

    run_dir = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
    return rundir.status(run_dir) == rundir.STATUS_INTERRUPTED and rundir.has_checkpoint(run_dir)


class RequeueOnStop:
    """Mixin for the submitit launchers: a job stopped by a signal is requeued, not reported.

    The sweep folder is resolved once, here, and handed to every job as an override: a job composes
    its config again in its own process, where ``${rtmdet.sweep_dir:...}`` would name a new folder.
    """

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        from omegaconf import open_dict

        from hydra_plugins.rtmdet_optuna_sweeper.search_space import quote

        config = self.config  # type: ignore[attr-defined]
        with open_dict(config):
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quote(str(config.hydra.sweep.dir))}")
        return super().launch(job_overrides, initial_job_idx)  # type: ignore[misc]

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        from rtmdet_exp.experiment import register

        register()  # this is the job's own process: the project's resolvers are not registered yet
        sig = preempt_signal()
        requeue = signal.getsignal(sig)
        if not callable(requeue):  # not inside a submitit job: nothing to cooperate with
            return super().__call__(*args, **kwargs)  # type: ignore[misc]
        signal.signal(sig, ForwardToTrainer(requeue, signal.getsignal(signal.SIGTERM)))
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=SCHEMA_NOTICE)
                result: JobReturn = super().__call__(*args, **kwargs)  # type: ignore[misc]
        finally:
            signal.signal(sig, requeue)
        if stopped_with_checkpoint(result):
            log.warning("The job stopped on a signal with its checkpoint saved: requeueing it to resume")
            try:
                requeue(sig, None)  # checkpoint() -> same job again, requeue, exit; raises if it will not
            except Exception as err:  # e.g. too many time-outs: report the job as failed
                log.error(f"Not requeued ({err}); the job is reported as failed")
        return result


class RequeueingSlurmLauncher(RequeueOnStop, SlurmLauncher):
    """``hydra/launcher=submitit_slurm``: SLURM jobs that resume after a time limit or preemption."""


class RequeueingLocalLauncher(RequeueOnStop, LocalLauncher):
    """``hydra/launcher=submitit_local``: local submitit jobs with the same stop-and-resume path."""
