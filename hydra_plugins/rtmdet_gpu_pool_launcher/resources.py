"""How many runs fit at once, which GPU each gets, and its share of the CPU cores.

The rule (``workers=auto``)::

    K = max(1, min(cores // cpus_per_run, sum over the GPUs of floor(free GiB / gpu_mem_per_run_gb)))

``cores`` is the CPU count this process may use (its affinity mask); the free memory comes from
``nvidia-smi`` at the first launch (nothing here initialises CUDA, so the sweeper process holds
no GPU memory). Without a GPU the CPU term alone decides. Worker slot ``i`` runs on GPU
``gpus[i % len(gpus)]``, so K > len(gpus) puts several runs on one GPU; each run gets
``max(1, cores // K)`` threads and ``cores // K - 1`` loader processes (capped at its configured
count), so that K runs do not oversubscribe the cores.
"""

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

SHARED_ENV = "RTMDET_GPU_SHARED"  # "1": the run's device runs other runs of the pool at the same time
SLOT_ENV = "RTMDET_POOL_SLOT"  # the worker slot a job runs in (for its logs)


@dataclass(frozen=True)
class Gpu:
    """One GPU as a child's ``CUDA_VISIBLE_DEVICES`` names it, with its free memory (None: unknown)."""

    name: str
    free_gb: float | None = None


@dataclass(frozen=True)
class Slot:
    """A worker slot: where its runs go and how much of the CPU they take."""

    index: int
    gpu: str | None  # CUDA_VISIBLE_DEVICES of its runs; None leaves the variable as it is
    shared: bool  # another slot uses the same device (GPU, or the CPU when there is none)
    threads: int  # OMP_NUM_THREADS of its runs (when the environment does not set it)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def query_gpus() -> list[tuple[str, str, float]]:
    """``(index, uuid, free GiB)`` of every GPU ``nvidia-smi`` lists; [] without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        log.warning(f"gpu_pool: nvidia-smi failed ({err}); GPU memory is not taken into account")
        return []
    gpus = []
    for line in out.strip().splitlines():
        index, uuid, free_mib = (part.strip() for part in line.split(","))
        gpus.append((index, uuid, float(free_mib) / 1024))
    return gpus


def resolve_gpus(requested: Sequence[str] | None, environ: Mapping[str, str],
                 listed: Sequence[tuple[str, str, float]]) -> list[Gpu]:
    """The GPUs to spread runs over: ``requested``, else ``CUDA_VISIBLE_DEVICES``, else every listed one.

    An empty ``CUDA_VISIBLE_DEVICES`` (or ``-1``) means no GPU. Free memory is matched by index
    or UUID (children get ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so an index means nvidia-smi's).
    """
    free = {key: gb for index, uuid, gb in listed for key in (index, uuid)}
    if requested is not None:
        names = [str(g) for g in requested]
    elif "CUDA_VISIBLE_DEVICES" in environ:
        names = [n.strip() for n in environ["CUDA_VISIBLE_DEVICES"].split(",") if n.strip()]
        names = [] if names in ([], ["-1"]) else names
    else:
        names = [index for index, _, _ in listed]
    return [Gpu(name, free.get(name)) for name in names]


def auto_workers(cores: int, gpus: Sequence[Gpu], cpus_per_run: int, gpu_mem_per_run_gb: float) -> tuple[int, str]:
    """K by the module's rule, and the arithmetic in words (for the log)."""
    by_cpu = max(1, cores // cpus_per_run)
    reason = f"{cores} cores // {cpus_per_run} per run = {by_cpu}"
    known = [g.free_gb for g in gpus if g.free_gb is not None]
    if not gpus or len(known) < len(gpus):
        return by_cpu, reason + ("; GPU memory unknown" if gpus else "; no GPU")
    by_gpu = sum(int(free // gpu_mem_per_run_gb) for free in known)
    reason += f"; {sum(known):.1f} GiB free on {len(gpus)} GPU(s) // {gpu_mem_per_run_gb:g} GiB per run = {by_gpu}"
    return max(1, min(by_cpu, by_gpu)), reason


def plan_slots(workers: int, gpus: Sequence[Gpu], cores: int) -> list[Slot]:
    """One slot per worker, round-robin over ``gpus`` (all on the CPU or the inherited GPU when empty)."""
    names = [g.name for g in gpus]
    threads = max(1, cores // workers)
    slots = []
    for i in range(workers):
        gpu = names[i % len(names)] if names else None
        sharing = sum(1 for j in range(workers) if not names or names[j % len(names)] == gpu)
        slots.append(Slot(i, gpu, sharing > 1, threads))
    return slots


def loader_share(cores: int, workers: int) -> int:
    """Loader processes per run when K runs split the cores (one core each for the main processes)."""
    return max(0, cores // workers - 1)


def slot_environment(slot: Slot, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a job in ``slot``: its GPU, its thread count and the sharing flag."""
    env = dict(environ)
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env.setdefault("OMP_NUM_THREADS", str(slot.threads))
    env[SHARED_ENV] = "1" if slot.shared else "0"
    env[SLOT_ENV] = str(slot.index)
    return env
