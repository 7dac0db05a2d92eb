"""Schema of ``hydra/launcher=gpu_pool``, registered in Hydra's ConfigStore (a typo fails at compose time).

This module imports nothing heavy: Hydra imports every plugin module at each start-up.
"""

from dataclasses import dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore

GPU_POOL_TARGET = "hydra_plugins.rtmdet_gpu_pool_launcher.launcher.GpuPoolLauncher"


@dataclass
class GpuPoolLauncherConf:
    """Options of ``hydra/launcher=gpu_pool`` (``hydra.launcher.<key>=...``)."""

    _target_: str = GPU_POOL_TARGET
    # Runs at once: an int, or "auto" = min(CPU cores // cpus_per_run, sum over the GPUs of
    # free GiB // gpu_mem_per_run_gb), at least 1
    workers: Any = "auto"
    # GPUs the runs are spread over, round-robin (CUDA_VISIBLE_DEVICES entries: indices or UUIDs);
    # null = the entries of CUDA_VISIBLE_DEVICES when set, else every GPU nvidia-smi lists
    gpus: Optional[List[str]] = None
    gpu_mem_per_run_gb: float = 8.0  # GPU memory one run needs, in GiB (workers=auto only)
    cpus_per_run: int = 2  # CPU cores one run needs at least: its main process and a loader worker (workers=auto)
    # Loader processes per run: "auto" = the configured count capped at cores // workers - 1
    # (the runs split the cores); null = as configured; or an int
    loader_workers: Any = "auto"
    loader_workers_key: str = "data.num_workers"  # config key of the loader process count (absent: left alone)
    console_log: str = "console.log"  # file in each run folder that gets the job's stdout and stderr
    # NVIDIA MPS for runs sharing a GPU (their kernels overlap instead of taking turns): auto = a
    # private daemon while the pool runs, where it can start (mps.py); true = required; false = never
    mps: Any = "auto"


ConfigStore.instance().store(
    group="hydra/launcher", name="gpu_pool", node=GpuPoolLauncherConf, provider="rtmdet_gpu_pool_launcher"
)
