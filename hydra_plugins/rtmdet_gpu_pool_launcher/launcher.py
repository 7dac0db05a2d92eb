"""``GpuPoolLauncher``: K jobs at once, each in a fresh process with its own GPU and CPU share.

* ``launch(batch)`` (Hydra's interface; the basic sweeper hands over all jobs of a grid at once)
  composes every job first, so that a bad override fails the batch before anything runs, then
  runs them K at a time, first come first served, and returns their ``JobReturn``s in order.
* ``submit(overrides, job_num)`` starts one job and returns a ``Future[JobReturn]``: the Optuna
  sweeper uses it to keep ``workers`` trials in flight (``rtmdet_optuna_sweeper.rolling``).
* A job is a child process (``python -m ...worker``) started with its slot's environment
  (``resources.slot_environment``: ``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``,
  ``RTMDET_GPU_SHARED``), its stdout and stderr in ``<run folder>/console.log``. Spawning a fresh
  interpreter per job (instead of reusing workers) keeps CUDA uninitialised until the GPU is
  chosen and leaves no state (seeds, deterministic-algorithm flags, GPU memory) from one run to
  the next.
* A job that raises, or whose process dies (killed, out of memory, a crash in native code), comes
  back as a failed ``JobReturn``; the pool goes on with the other jobs.
* Where several runs share a GPU the pool starts a private NVIDIA MPS daemon for its lifetime
  (``hydra.launcher.mps``, ``mps.py``), so that their kernels run side by side instead of in turns.
* Children lead their own sessions, so Ctrl-C reaches only this process, which then sends SIGTERM
  to every running job (the trainer saves ``checkpoints/interrupt.pt`` after its current step).
"""

import logging
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.rtmdet_gpu_pool_launcher import mps as mps_service
from hydra_plugins.rtmdet_gpu_pool_launcher import resources

log = logging.getLogger(__name__)

WORKER_MODULE = "hydra_plugins.rtmdet_gpu_pool_launcher.worker"
AUTO = "auto"


@dataclass
class PoolJob:
    """One composed job: its number, overrides, config (hydra node included) and run folder."""

    num: int
    overrides: list[str]
    config: DictConfig
    run_dir: Path


def _count(name: str, value: Any, allow_none: bool = False) -> Any:
    """``value`` as given ("auto", None where allowed) or as an int >= 0 / >= 1; ValueError naming the key."""
    if value == AUTO or (allow_none and value is None):
        return value
    least = 0 if name == "loader_workers" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        allowed = f"'auto', {'null, ' if allow_none else ''}or an integer >= {least}"
        raise ValueError(f"hydra.launcher.{name}: expected {allowed}, got {value!r}")
    return value


class GpuPoolLauncher(Launcher):
    """``hydra/launcher=gpu_pool`` (options: ``config.GpuPoolLauncherConf``)."""

    def __init__(self, workers: Any = AUTO, gpus: Sequence[str] | None = None, gpu_mem_per_run_gb: float = 8.0,
                 cpus_per_run: int = 2, loader_workers: Any = AUTO, loader_workers_key: str = "data.num_workers",
                 console_log: str = "console.log", mps: Any = mps_service.AUTO) -> None:
        self._workers = _count("workers", workers)
        self._cpus_per_run = _count("cpus_per_run", cpus_per_run)
        self._loader_workers = _count("loader_workers", loader_workers, allow_none=True)
        if gpu_mem_per_run_gb <= 0:
            raise ValueError(f"hydra.launcher.gpu_mem_per_run_gb: expected > 0 (GiB), got {gpu_mem_per_run_gb}")
        self._gpus = None if gpus is None else [str(g) for g in gpus]
        self._gpu_mem = float(gpu_mem_per_run_gb)
        self._loader_key, self._console_log = loader_workers_key, console_log
        mps_service.check_setting(mps)
        self._mps_setting = mps
        self._mps_env: dict[str, str] = {}  # added to every job's environment while our daemon runs
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self._slots: list[resources.Slot] | None = None
        self._cores = resources.available_cores()
        self._free: queue.Queue[resources.Slot] = queue.Queue()
        self._executor: ThreadPoolExecutor | None = None
        self._running: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._tmp = Path(tempfile.mkdtemp(prefix="rtmdet_gpu_pool_"))  # job and result files in transit
        weakref.finalize(self, shutil.rmtree, str(self._tmp), True)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    # ---------------------------------------------------------------------------- the pool
    @property
    def workers(self) -> int:
        """K, the runs this launcher keeps going at once (decided at first use, then fixed)."""
        return len(self._plan())

    def _plan(self) -> list[resources.Slot]:
        if self._slots is None:
            gpus = resources.resolve_gpus(self._gpus, os.environ, resources.query_gpus())
            if self._workers == AUTO:
                workers, why = resources.auto_workers(self._cores, gpus, self._cpus_per_run, self._gpu_mem)
            else:
                workers, why = self._workers, "as given"
            self._slots = resources.plan_slots(workers, gpus, self._cores)
            where = f"GPU(s) {', '.join(g.name for g in gpus)}" if gpus else "the CPU"
            loaders = self._loader_count()
            log.info(f"gpu_pool: {workers} worker(s) ({why}) on {where}; per run {self._slots[0].threads} "
                     f"thread(s), {'the configured' if loaders is None else f'at most {loaders}'} loader worker(s)")
            self._start_mps()
            for slot in self._slots:
                self._free.put(slot)
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpu-pool")
        return self._slots

    def _start_mps(self) -> None:
        """A private MPS daemon for the pool's lifetime when runs share a GPU (``mps.wanted``)."""
        assert self._slots is not None
        shared = any(slot.shared and slot.gpu is not None for slot in self._slots)
        start, why = mps_service.wanted(self._mps_setting, shared, os.environ)
        if not start:
            log.info(f"gpu_pool: no MPS daemon of its own ({why})")
            return
        daemon = mps_service.MpsDaemon(self._tmp / "mps")
        problem = daemon.start()
        if problem is not None:
            if self._mps_setting is True:
                raise RuntimeError(f"hydra.launcher.mps=true: the MPS daemon does not work: {problem}")
            log.warning(f"gpu_pool: runs share their GPU without MPS (taking turns): {problem}")
            return
        self._mps_env = daemon.env
        weakref.finalize(self, daemon.stop)  # also at interpreter exit
        log.info(f"gpu_pool: MPS daemon started for the runs that share a GPU (pipe {daemon.pipe})")

    def _loader_count(self) -> int | None:
        """Loader processes per run to set: None leaves the configured count."""
        if self._loader_workers == AUTO:
            return resources.loader_share(self._cores, len(self._plan()))
        return self._loader_workers

    # ------------------------------------------------------------------------- the interface
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        """Run a batch K at a time; the returns are in the batch's order."""
        jobs = [self.compose(overrides, initial_job_idx + i) for i, overrides in enumerate(job_overrides)]
        log.info(f"gpu_pool: launching {len(jobs)} job(s), {self.workers} at a time")
        futures = [self._start(job) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:  # Ctrl-C: stop the children (the trainer saves a checkpoint) before leaving
            self.shutdown()
            raise

    def submit(self, overrides: Sequence[str], job_num: int) -> Future:
        """Start job ``job_num`` as soon as a worker is free; a ``Future`` of its ``JobReturn``."""
        return self._start(self.compose(overrides, job_num))

    def shutdown(self) -> None:
        """Cancel the jobs not started yet and send SIGTERM to the running ones."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for proc in self._running.values():
                if proc.poll() is None:
                    proc.terminate()

    # ------------------------------------------------------------------------------ one job
    def compose(self, overrides: Sequence[str], job_num: int) -> PoolJob:
        """The job's config as the basic launcher composes it, with its sweep folder fixed and its
        loader processes set (in this process: a config that does not compose raises here)."""
        assert self.config is not None and self.hydra_context is not None, "setup() was not called"
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = job_num
            config.hydra.job.num = job_num
            # resolved here: a process-wide resolver (e.g. the launch time) would differ in the child
            config.hydra.sweep.dir = str(config.hydra.sweep.dir)
        loaders = self._loader_count()
        configured = OmegaConf.select(config, self._loader_key, default=None)
        if loaders is not None and isinstance(configured, int):
            value = min(configured, loaders) if self._loader_workers == AUTO else loaders
            OmegaConf.update(config, self._loader_key, value, merge=False)
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)
        try:
            run_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        finally:
            HydraConfig.instance().cfg = previous
        return PoolJob(job_num, list(overrides), config, run_dir.absolute())

    def _start(self, job: PoolJob) -> Future:
        self._plan()
        assert self._executor is not None
        return self._executor.submit(self._run, job)

    def _run(self, job: PoolJob) -> JobReturn:
        """In a pool thread: take a free slot, run the job's process in it, give the slot back."""
        slot = self._free.get()
        try:
            return self._run_in(slot, job)
        except Exception as err:
            log.exception(f"gpu_pool: job #{job.num} could not be run")
            return self._failed(job, RuntimeError(f"gpu_pool could not run job #{job.num}: {err!r}"))
        finally:
            self._free.put(slot)

    def _run_in(self, slot: resources.Slot, job: PoolJob) -> JobReturn:
        import multiprocessing.spawn

        import cloudpickle
        from hydra.core.singleton import Singleton

        job_file, result_file = self._tmp / f"job_{job.num}.pkl", self._tmp / f"result_{job.num}.pkl"
        payload = {"hydra_context": self.hydra_context, "task_function": self.task_function,
                   "config": job.config, "singletons": Singleton.get_state()}
        preparation = multiprocessing.spawn.get_preparation_data("gpu-pool-job")
        preparation.pop("authkey", None)  # multiprocessing's connection secret: not needed, not picklable
        with job_file.open("wb") as handle:
            cloudpickle.dump(preparation, handle)
            cloudpickle.dump(payload, handle)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        console = job.run_dir / self._console_log
        device = f"GPU {slot.gpu}" if slot.gpu is not None else "the default device"
        log.info(f"\t#{job.num} starts on {device} (worker {slot.index}): {' '.join(filter_overrides(job.overrides))}")
        started = time.monotonic()
        with console.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(job_file), str(result_file)],
                                    env={**resources.slot_environment(slot, os.environ), **self._mps_env},
                                    stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd(), start_new_session=True)
        with self._lock:
            self._running[job.num] = proc
        code = proc.wait()
        with self._lock:
            self._running.pop(job.num, None)
        job_file.unlink(missing_ok=True)
        seconds = time.monotonic() - started
        if not result_file.is_file():
            reason = f"its process exited with code {code} without a result; its output is in {console}"
            log.error(f"\t#{job.num} FAILED after {seconds:.1f} s: {reason}")
            return self._failed(job, RuntimeError(f"job #{job.num}: {reason}"))
        with result_file.open("rb") as handle:
            job_return: JobReturn = pickle.load(handle)
        result_file.unlink()
        outcome = job_return.status.name if job_return.status == JobStatus.COMPLETED else \
            f"{job_return.status.name}: {job_return._return_value!r:.300} (traceback in {console})"
        log.info(f"\t#{job.num} ended after {seconds:.1f} s: {outcome}")
        return job_return

    def _failed(self, job: PoolJob, error: BaseException) -> JobReturn:
        """A failed ``JobReturn`` for a job whose process left no result."""
        task_cfg = OmegaConf.masked_copy(job.config, [k for k in job.config if k != "hydra"])
        return JobReturn(overrides=job.overrides, cfg=task_cfg, hydra_cfg=job.config, working_dir=os.getcwd(),
                         task_name=str(OmegaConf.select(job.config, "hydra.job.name", default="")),
                         status=JobStatus.FAILED, _return_value=error)
