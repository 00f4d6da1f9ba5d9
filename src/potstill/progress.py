"""Rich progress bars and stage messages shared by every long step."""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)
if not console.is_terminal:  # logs and pipes: wide enough for a progress line with its rate and ETA
    console = Console(stderr=True, highlight=False, width=160)


def say(message: str) -> None:
    """One status line on stderr."""
    console.print(message)


class _Tracker:
    def __init__(self, progress: Progress, task, unit: str):
        self.progress, self.task, self.unit = progress, task, unit
        self.start = time.perf_counter()
        self.tokens = 0

    def advance(self, n: int = 1, tokens: int = 0, **fields) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        self.progress.update(self.task, advance=n, info=f"{rate:,.0f} {self.unit}/s {extra}".rstrip())


@contextmanager
def track(total: int, description: str, unit: str = "tok"):
    """A progress bar with done/total, elapsed, ETA and a token rate; ``advance(n, tokens=...)``."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")
        yield _Tracker(progress, task, unit)
