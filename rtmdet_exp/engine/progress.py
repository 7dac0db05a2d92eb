"""A rich progress bar per epoch: it/s, loss, lr and ETA; silent when not on a terminal."""

from __future__ import annotations

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
