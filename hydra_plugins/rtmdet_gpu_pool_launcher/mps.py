"""NVIDIA MPS for the runs that share a GPU: a private control daemon for the pool's lifetime.

Without MPS, processes on one GPU take turns in time slices: a short study run keeps the GPU busy
with many small kernels, so several of them together barely run faster than one. Under the
Multi-Process Service their kernels run side by side. Measured on an H200 (``bench/mps_probe.sh``,
the graphed train step of rtmdet_tiny at batch 8, 320 px): 966 img/s for one process alone; four
processes together 1,567 img/s taking turns and 1,957 img/s under MPS.

The daemon is this user's own: its pipe and log folders lie in the pool's temporary folder, no GPU
setting changes, and it is told to quit when the pool ends (a pool killed with SIGKILL leaves it
running: ``CUDA_MPS_PIPE_DIRECTORY=<folder>/pipe nvidia-cuda-mps-control`` then ``quit``).
``hydra.launcher.mps``: ``auto`` starts one when a GPU gets more than one run, the control binary is
on PATH and the environment names no MPS pipe already (a site's own daemon is used as it is), and
goes on without it, with a warning, where it cannot start; ``true`` insists (an error instead);
``false`` never starts one.
"""

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
LOG_ENV = "CUDA_MPS_LOG_DIRECTORY"
AUTO = "auto"
# A CUDA client under the daemon: MPS starts its server at the first client, and a server that
# cannot start shows only there.
CLIENT_CHECK = "import torch; torch.zeros(1, device='cuda').add_(1); torch.cuda.synchronize()"


def check_setting(setting: object) -> None:
    """``hydra.launcher.mps`` is auto, true or false (ValueError naming the key otherwise)."""
    if not (setting == AUTO or isinstance(setting, bool)):
        raise ValueError(f"hydra.launcher.mps: expected auto, true or false, got {setting!r}")


def wanted(setting: object, gpu_shared: bool, environ: Mapping[str, str],
           which: Callable[[str], str | None] = shutil.which) -> tuple[bool, str]:
    """Whether the pool starts its own daemon, and why (for the log). ValueError on a bad setting."""
    check_setting(setting)
    if setting is False:
        return False, "mps=false"
    if PIPE_ENV in environ:
        return False, f"{PIPE_ENV} is set: the runs use that MPS daemon"
    if not gpu_shared:
        return False, "no GPU runs more than one run at once"
    if which(CONTROL) is None:
        if setting is True:
            raise RuntimeError(f"hydra.launcher.mps=true, but {CONTROL} is not on PATH (NVIDIA's driver "
                               "utilities); set hydra.launcher.mps=auto or false to share GPUs without MPS")
        return False, f"{CONTROL} is not on PATH"
    return True, "a GPU runs several runs at once"


class MpsDaemon:
    """A control daemon whose pipe and log folders lie under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.pipe, self.logs = folder / "pipe", folder / "log"
        self.running = False

    @property
    def env(self) -> dict[str, str]:
        """What a client (and the control command) needs to find this daemon."""
        return {PIPE_ENV: str(self.pipe), LOG_ENV: str(self.logs)}

    def start(self, check: Callable[[dict[str, str]], str | None] | None = None) -> str | None:
        """Start it and check one CUDA client under it; None when it works, else why not (then stopped)."""
        self.pipe.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        try:
            subprocess.run([CONTROL, "-d"], env=env, capture_output=True, text=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as err:
            return f"{CONTROL} -d failed: {err}"
        self.running = True
        problem = (check or client_works)(env)
        if problem is not None:
            self.stop()
        return problem

    def stop(self) -> None:
        """Tell the daemon to quit (it stops its server once the clients are gone)."""
        if not self.running:
            return
        self.running = False
        try:
            subprocess.run([CONTROL], input="quit\n", env={**os.environ, **self.env}, capture_output=True,
                           text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as err:
            log.warning(f"gpu_pool: could not stop the MPS daemon ({err}); its pipe folder is {self.pipe}")


def client_works(env: dict[str, str]) -> str | None:
    """None when a CUDA client runs under the daemon of ``env``, else the client's last error line."""
    try:
        proc = subprocess.run([sys.executable, "-c", CLIENT_CHECK], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        return f"the CUDA client check did not run: {err}"
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return f"a CUDA client failed under it: {lines[-1] if lines else f'exit code {proc.returncode}'}"
