"""Progress: a rich bar per epoch (it/s, loss, lr, the epoch's ETA; silent when not on a terminal) and the
run's remaining training time for the log, which a piped or backgrounded run shows as well."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class EpochProgress:
    """Context manager showing one epoch's progress; ``update`` sets the shown loss and lr."""

    def __init__(self, epoch: int, max_epochs: int, total: int, enabled: bool = True) -> None:
        console = Console(stderr=True)
        self.enabled = enabled and console.is_terminal
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{max_epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>6.2f} it/s  loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=not self.enabled,
        )
        self.task = self.progress.add_task("train", total=total, loss=float("nan"), lr=0.0, rate=0.0)

    def __enter__(self) -> EpochProgress:
        self.progress.start()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.stop()

    def advance(self, n: int) -> None:
        if n:
            self.progress.advance(self.task, n)
            speed = self.progress.tasks[0].speed
            if speed:
                self.progress.update(self.task, rate=speed)

    def update(self, loss: float, lr: float) -> None:
        self.progress.update(self.task, loss=loss, lr=lr)


def _duration(seconds: float) -> str:
    """``"45 s"``, ``"7.5 min"`` or ``"2.3 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class RunClock:
    """How long the rest of the run's training will take, from the mean step time so far.

    Started after this process's first step (its one-off warm-up would skew the mean); the estimate
    covers training steps only, not validation or checkpoints. ``early`` returns one line a few steps
    in, ``epoch_end`` a line at the end of an epoch when at least ``every_s`` passed since the last one
    (and always after the last epoch), so a long CPU run says early how long it will take and a short
    GPU run with hundreds of epochs does not fill its log.
    """

    def __init__(self, total_steps: int, early_steps: int = 20, every_s: float = 60.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.total_steps = total_steps
        self.early_steps = early_steps
        self.every_s = every_s
        self._clock = clock
        self._start: tuple[int, float] | None = None  # (step, time) when timing began
        self._early_done = False
        self._last_line = -float("inf")

    def start(self, step: int) -> None:
        """Begin timing at ``step`` steps done (call once, after the first step of this process)."""
        self._start = (step, self._clock())

    def estimate(self, step: int) -> tuple[float, float] | None:
        """``(seconds per step, seconds of training left)`` at ``step`` steps done; None before any timing."""
        if self._start is None or step <= self._start[0]:
            return None
        per_step = (self._clock() - self._start[1]) / (step - self._start[0])
        return per_step, per_step * max(self.total_steps - step, 0)

    def early(self, step: int) -> str | None:
        """The first estimate, once, ``early_steps`` after the clock started."""
        if self._early_done or self._start is None or step - self._start[0] < self.early_steps:
            return None
        self._early_done = True
        per_step, left = self.estimate(step)
        self._last_line = self._clock()
        return f"step {step} of {self.total_steps} at {per_step:.3g} s a step: about {_duration(left)} of " \
               f"training left (validation not included)"

    def epoch_end(self, epoch: int, max_epochs: int, step: int, epoch_s: float) -> str | None:
        """A line for the end of epoch ``epoch`` (1-based), or None when the last line is recent."""
        timing = self.estimate(step)
        if timing is None or (epoch < max_epochs and self._clock() - self._last_line < self.every_s):
            return None
        self._last_line = self._clock()
        per_step, left = timing
        line = f"epoch {epoch}/{max_epochs} done in {_duration(epoch_s)} (step {step} of {self.total_steps}, " \
               f"{per_step:.3g} s a step)"
        return line + (f": about {_duration(left)} of training left" if epoch < max_epochs else "")
