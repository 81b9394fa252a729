"""Rich output of the CLI: the training progress bar and the result tables."""

from __future__ import annotations

import math
from typing import Any, Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from deqkit.train.trainer import Reporter


class RichReporter(Reporter):
    """A progress bar (step, loss, steps/s, ETA) on stderr; warnings are printed above it."""

    def __init__(self, console: Console, description: str) -> None:
        self.console, self.description = console, description
        self.progress: Progress | None = None
        self.task: Any = None

    def start(self, total: int, completed: int) -> None:
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


def fmt(value: Any) -> str:
    """Numbers for tables: 4 significant digits, scientific when tiny or huge."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def key_value_table(title: str, rows: Mapping[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, fmt(value))
    return table
