"""Rich output of training: the progress bar and the warnings above it."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from deqkit.cli.tables import fmt
from deqkit.train.trainer import Reporter


class RichReporter(Reporter):
    """A progress bar (step, loss, steps/s, ETA) on stderr; warnings are printed above it.

    With ``progress=False`` (``-q``) only the warnings print: they say the data or the weights are wrong.
    """

    def __init__(self, console: Console, description: str, progress: bool = True) -> None:
        self.console, self.description, self.show_progress = console, description, progress
        self.progress: Progress | None = None
        self.task: Any = None

    def start(self, total: int, completed: int) -> None:
        if not self.show_progress:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} steps/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False)
        self.task = self.progress.add_task(self.description, total=total, completed=completed, loss="-",
                                           rate="-")
        self.progress.start()

    def advance(self, step: int, loss: float, rate: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=fmt(loss), rate=f"{rate:.1f}")

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
