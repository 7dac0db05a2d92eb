"""One job of ``hydra/launcher=gpu_pool`` in its own process: ``python -m <this module> JOB RESULT``.

The launcher writes JOB: the sweeper process's preparation data (``multiprocessing.spawn``'s:
``sys.path``, working folder, and its main script, which is run again as ``__mp_main__`` exactly as
for a spawned multiprocessing child), then the job (Hydra context, task function, composed config,
Hydra's singletons) pickled with cloudpickle. The job runs through Hydra's ``run_job`` as under
any launcher; its ``JobReturn`` is pickled into RESULT. A failed job's traceback is printed here
(stderr is the run folder's console log); an exception or return value that cannot be pickled
is replaced by a ``RuntimeError`` naming it, so the launcher always gets a result. If the
launcher's process dies, the job receives SIGTERM (the trainer saves a checkpoint and stops).

Imported by Hydra's plugin scan at every start-up: nothing runs on import.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

PARENT_POLL_S = 2.0


def _stop_when_orphaned(parent: int) -> None:
    """SIGTERM this process once its parent (the launcher) is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gpu-pool-parent-watch", daemon=True).start()


def _load(job_file: Path) -> dict[str, Any]:
    """The job, after preparing this process as a spawned child of the launcher's process."""
    import multiprocessing.spawn

    with job_file.open("rb") as handle:
        multiprocessing.spawn.prepare(pickle.load(handle))
        return pickle.load(handle)


def _picklable(job_return: Any) -> Any:
    """``job_return``, with an exception or value that pickle cannot carry replaced by a RuntimeError."""
    import cloudpickle
    from hydra.core.utils import JobStatus

    try:
        cloudpickle.dumps(job_return)
        return job_return
    except Exception as err:  # noqa: BLE001 - any pickling failure
        value = job_return._return_value
        what = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else f"return value {value!r:.200}"
        job_return.status = JobStatus.FAILED
        job_return._return_value = RuntimeError(f"{what} (not picklable: {err})")
        return job_return


def run(job: dict[str, Any]) -> Any:
    """Run the job as Hydra's launchers do; returns its ``JobReturn``."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals

    Singleton.set_state(job["singletons"])
    setup_globals()
    job_return = run_job(
        hydra_context=job["hydra_context"],
        task_function=job["task_function"],
        config=job["config"],
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    if job_return.status == JobStatus.FAILED and isinstance(job_return._return_value, BaseException):
        error = job_return._return_value
        print(f"gpu_pool: job #{job['config'].hydra.job.num} failed:", file=sys.stderr)
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    return job_return


def main(argv: list[str]) -> int:
    """Load JOB, run it, write RESULT atomically; the exit code is 0 when RESULT was written."""
    import cloudpickle

    job_file, result_file = Path(argv[0]), Path(argv[1])
    _stop_when_orphaned(os.getppid())
    job_return = _picklable(run(_load(job_file)))
    partial = result_file.with_suffix(".partial")
    partial.write_bytes(cloudpickle.dumps(job_return))
    os.replace(partial, result_file)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
