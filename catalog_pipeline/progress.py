"""Progress of the long `catalog-pipeline` commands, on stderr only.

On a terminal it is a `rich` bar (done/total, rate, time left) that disappears when the
work ends, with the lines that must stay (a file's result) printed above it. Anywhere
else (a cron job, CI, a pipe) a bar would be a stream of control characters, so the same
progress is a plain line at most every few seconds. With `--json`, stdout holds the one
JSON line only: progress is shown on a terminal's stderr, and not at all otherwise.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, ProgressColumn, Task, TaskProgressColumn, TextColumn
from rich.progress import Progress as RichProgress
from rich.text import Text

PLAIN_INTERVAL_S = 5.0
DESCRIPTION_WIDTH = 40


def progress_wanted(json_mode: bool, stream: TextIO | None = None) -> bool:
    """Whether a command shows progress: always without `--json`; with it, only on a
    terminal (where a reader, not a parser, is watching stderr)."""
    stream = stream or sys.stderr
    return not json_mode or _is_terminal(stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        return decimal(int(value))
    return f"{value:,.0f} {unit}"


class Progress:
    """Progress of one command over `total` units (None: unknown), as a context manager.

    `advance`/`update` move it; `note` prints a line that stays. `enabled=False` shows
    nothing (notes included); `plain_updates=False` keeps only the notes off a terminal
    (for commands whose notes already say as much, such as ingest's line per file).
    """

    def __init__(
        self,
        label: str,
        total: float | None,
        unit: str = "items",
        *,
        enabled: bool = True,
        plain_updates: bool = True,
        stream: TextIO | None = None,
        interval: float = PLAIN_INTERVAL_S,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.enabled = enabled
        self.plain_updates = plain_updates
        self.stream = stream or sys.stderr
        self.interval = interval
        self.completed = 0.0
        self.detail = ""
        self.terminal = enabled and _is_terminal(self.stream)
        self._started = time.monotonic()
        self._last_line = self._started
        self._bar = None
        self._task = None

    def __enter__(self) -> Progress:
        if self.terminal:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=20),
                TaskProgressColumn(),
                _AmountColumn(self.unit),
                _RateColumn(self.unit),
                TextColumn("ETA"),
                _RemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(shorten(self.label), total=self.total, detail="")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def advance(self, amount: float = 1, detail: str | None = None) -> None:
        self.update(self.completed + amount, detail=detail)

    def update(
        self,
        completed: float,
        total: float | None = None,
        description: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Set the done amount (and, when given, the total, the label or the detail: a
        rate the caller measures better than the bar can, such as rows/s)."""
        self.completed = completed
        if total is not None:
            self.total = total
        if detail is not None:
            self.detail = detail
        if not self.enabled:
            return
        if self._bar is not None:
            fields = {"completed": completed, "detail": self.detail}
            if total is not None:
                fields["total"] = total
            if description is not None:
                fields["description"] = shorten(description)
            self._bar.update(self._task, **fields)
            return
        now = time.monotonic()
        if self.plain_updates and now - self._last_line >= self.interval:
            self._last_line = now
            self._write(self.plain_line(now))

    def plain_line(self, now: float | None = None) -> str:
        """`label: done/total unit (rate/s, ETA …)`, the line shown off a terminal."""
        elapsed = max((now or time.monotonic()) - self._started, 1e-9)
        rate = self.completed / elapsed
        done = _amount(self.completed, self.unit)
        line = f"{self.label}: {done}"
        if self.total:
            line += (
                f" of {_amount(self.total, self.unit)} ({100 * self.completed / self.total:.0f} %)"
            )
        extras = [self.detail or f"{_amount(rate, self.unit)}/s"]
        if self.total and rate > 0 and self.completed < self.total:
            extras.append(f"ETA {_duration((self.total - self.completed) / rate)}")
        return f"{line}, {', '.join(extras)}"

    def note(self, line: str) -> None:
        """A line that stays: above the bar on a terminal, else as it is."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self._write(line)

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def shorten(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    """A label that leaves the bar room on one line (a long object key keeps its end)."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _AmountColumn(ProgressColumn):
    """`done/total unit`, in sizes for bytes."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        done = _amount(task.completed, self.unit)
        total = "?" if task.total is None else _amount(task.total, self.unit)
        return Text(f"{done} / {total}", style="progress.download")


class _RateColumn(ProgressColumn):
    """The caller's own rate (`detail`) when it has one, else the bar's measured speed."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        detail = task.fields.get("detail")
        if detail:
            return Text(detail, style="progress.data.speed")
        speed = task.finished_speed or task.speed
        shown = "…" if speed is None else f"{_amount(speed, self.unit)}/s"
        return Text(shown, style="progress.data.speed")


class _RemainingColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        remaining = task.time_remaining
        return Text(
            "-:--" if remaining is None else _duration(remaining), style="progress.remaining"
        )
