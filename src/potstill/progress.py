"""Rich progress bars and stage messages shared by every long step.

On a terminal :func:`track` draws a rich progress bar. Anywhere else (a log file, a pipe, CI) it
prints plain lines instead, ``description: done/total (pct%), rate unit/s, ETA mm:ss``: at every 5%
of the total, at least every 30 s (a heartbeat thread covers a batch slower than that) and at the end.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)
if not console.is_terminal:  # logs and pipes: wide enough for a progress line with its rate and ETA
    console = Console(stderr=True, highlight=False, width=160)

PLAIN_EVERY_S = 30.0  # a plain progress line at least this often...
PLAIN_EVERY_FRACTION = 0.05  # ...and whenever another 5% of the total is done


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


def clock_text(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour on)."""
    s = max(round(seconds), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class PlainTracker:
    """The same ``advance(n, tokens=..., **fields)`` as the rich bar, printing plain lines (see the module doc).

    ``clock`` is injectable for tests; the heartbeat thread (started by :func:`track`) calls :meth:`tick`.
    """

    def __init__(self, total: int, description: str, unit: str = "tok", clock=time.monotonic, emit=None):
        self.total, self.description, self.unit, self.clock = total, description, unit, clock
        self.emit = emit or (lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
        self.start = self.last = clock()
        self.done = self.tokens = 0
        self.printed = -1  # ``done`` when the last line was printed
        self.fields: dict = {}
        self.lock = threading.Lock()

    def _step(self, done: int) -> int:
        return int(done / max(self.total, 1) / PLAIN_EVERY_FRACTION) if done >= 0 else -1

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = f"{self.tokens / elapsed:,.0f} {self.unit}/s" if self.tokens else f"{self.done / elapsed:,.2f} items/s"
        eta = clock_text(elapsed * (self.total - self.done) / self.done) if self.done else "--:--"
        extra = "".join(f", {k}={v}" for k, v in self.fields.items())
        return f"{self.description}: {self.done}/{self.total} ({pct:.0f}%), {rate}, ETA {eta}{extra}"

    def _print(self) -> None:
        self.emit(self.line())
        self.last, self.printed = self.clock(), self.done

    def advance(self, n: int = 1, tokens: int = 0, **fields) -> None:
        with self.lock:
            self.done += n
            self.tokens += tokens
            self.fields.update(fields)
            if (
                self.done >= self.total
                or self._step(self.done) > self._step(self.printed)
                or self.clock() - self.last >= PLAIN_EVERY_S
            ):
                self._print()

    def tick(self) -> None:
        """Print a line if none was printed for ``PLAIN_EVERY_S`` (a slow batch still shows it is alive)."""
        with self.lock:
            if self.clock() - self.last >= PLAIN_EVERY_S:
                self._print()

    def finish(self) -> None:
        """The last line, unless it is already out (also when the step stopped early)."""
        with self.lock:
            if self.printed != self.done:
                self._print()


@contextmanager
def _heartbeat(tracker: PlainTracker):
    stop = threading.Event()

    def beat():
        while not stop.wait(min(PLAIN_EVERY_S, 5.0)):
            tracker.tick()

    thread = threading.Thread(target=beat, name="potstill-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(1.0)


@contextmanager
def track(total: int, description: str, unit: str = "tok"):
    """A progress bar with done/total, elapsed, ETA and a token rate; ``advance(n, tokens=...)``.

    Plain lines instead of a bar when stderr is not a terminal (:class:`PlainTracker`).
    """
    if not (console.is_terminal or console.is_jupyter):
        tracker = PlainTracker(total, description, unit)
        with _heartbeat(tracker):
            try:
                yield tracker
            finally:
                tracker.finish()
        return
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
