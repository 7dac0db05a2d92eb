"""Where a run's start-up goes: process start to the end of its first training step, in named phases.

A slow start is only worth cutting once it says what is slow: the interpreter and imports, Hydra's
config, the data, the model on its device (CUDA's initialisation), the optimiser, the loggers, the
first batch (the loader's workers starting) or the first step (cuDNN autotuning, graph capture). The
run's code marks the end of each phase with :func:`mark`; the trainer ends the clock at its first
step and logs the phases once (``perf/startup_s`` and ``startup/<phase>_s``).

The first run of a process counts from the process start (Linux ``/proc``; this module's import
elsewhere); a later run in the same process (an in-process multirun, tests) counts from its own
:func:`begin`, also after a run that ended before its first step (:func:`end`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the time a run needs it; the clock starts before
    import torch


def _process_start_time() -> float:
    """Wall-clock start of this process (Linux /proc); the import time of this module elsewhere."""
    try:
        ticks = int(Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


_IMPORTED_AT = time.time()


class StartupClock:
    """Seconds per phase since ``origin``; a phase repeated adds up."""

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.phases: dict[str, float] = {}
        self.done = False
        self._last = origin

    def mark(self, phase: str) -> None:
        """End ``phase`` now: the time since the previous mark is its."""
        now = time.time()
        self.phases[phase] = self.phases.get(phase, 0.0) + max(now - self._last, 0.0)
        self._last = now

    def finish(self, device: torch.device | None = None) -> dict[str, float]:
        """End the clock after the device's queued work (one sync, once): total and phases, as metrics."""
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.synchronize(device)
        self.mark("first_step")
        self.done = True
        return {"perf/startup_s": self._last - self.origin,
                **{f"startup/{name}_s": seconds for name, seconds in self.phases.items()}}


_clock = StartupClock(_process_start_time())


def begin() -> None:
    """A run starts: keep the process's clock for its first run, start a new one for a later run."""
    global _clock
    if _clock.done:
        _clock = StartupClock(time.time())


def end() -> None:
    """A run ended, at whatever point: the next :func:`begin` in this process starts a new clock."""
    _clock.done = True


def mark(phase: str) -> None:
    """End ``phase`` of this run's start-up (nothing once the first step has ended it)."""
    if not _clock.done:
        _clock.mark(phase)


def finish(device: torch.device | None = None) -> dict[str, float]:
    """End this run's start-up at its first step; see :meth:`StartupClock.finish`."""
    return _clock.finish(device)


def elapsed() -> float:
    """Seconds since this run's clock started (the process start for a process's first run)."""
    return time.time() - _clock.origin


def describe(metrics: dict[str, float]) -> str:
    """One line for the log: ``start-up 12.3 s: imports 3.1, data 0.4, ...``."""
    phases = ", ".join(f"{key[len('startup/'):-2]} {value:.1f}" for key, value in metrics.items()
                       if key.startswith("startup/"))
    return f"start-up {metrics['perf/startup_s']:.1f} s to the end of the first step: {phases}"
