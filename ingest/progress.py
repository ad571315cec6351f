"""Progress of an import (`meterstream tail --once`): a bar on a terminal (rich: bytes, lines/s,
time left), a log line every ``tail.progress_interval_s`` otherwise (journald, CI, a pipe)."""

from __future__ import annotations

import sys
import time
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from meterstream import logs

log = logs.get(__name__)


class ImportProgress(Protocol):
    def update(self, done_bytes: int, total_bytes: int, lines: int) -> None: ...

    def close(self) -> None: ...


class _Rates:
    """Rates since the start (what was read before this run is not part of them)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first_done: int | None = None

    def of(self, done: int, total: int, lines: int) -> tuple[float, float, float | None]:
        """(lines/s, bytes/s, seconds left or None)."""
        if self.first_done is None:
            self.first_done = done
        elapsed = max(time.monotonic() - self.started, 1e-6)
        byte_rate = (done - self.first_done) / elapsed
        left = (total - done) / byte_rate if byte_rate > 0 else None
        return lines / elapsed, byte_rate, left


class BarProgress:
    def __init__(self, console: Console | None = None) -> None:
        self.rates = _Rates()
        self.bar = Progress(
            TextColumn("[bold]import"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TextColumn("{task.fields[lines]:,} lines, {task.fields[rate]:,.0f} lines/s"), TextColumn("ETA"),
            TimeRemainingColumn(), console=console or Console(stderr=True), redirect_stdout=False,
            redirect_stderr=False)
        self.task = self.bar.add_task("import", total=None, lines=0, rate=0.0)
        self.started = False

    def update(self, done_bytes: int, total_bytes: int, lines: int) -> None:
        if not self.started:
            self.bar.start()
            self.started = True
        rate, _, _ = self.rates.of(done_bytes, total_bytes, lines)
        self.bar.update(self.task, completed=done_bytes, total=total_bytes, lines=lines, rate=rate)

    def close(self) -> None:
        if self.started:
            self.bar.stop()


class LogProgress:
    def __init__(self, interval_s: float) -> None:
        self.rates = _Rates()
        self.interval_s = interval_s
        self.logged_at = time.monotonic()
        self.last: tuple[int, int, int] = (0, 0, 0)

    def update(self, done_bytes: int, total_bytes: int, lines: int) -> None:
        self.last = (done_bytes, total_bytes, lines)
        if time.monotonic() - self.logged_at >= self.interval_s:
            self._log("import progress")
            self.logged_at = time.monotonic()

    def _log(self, what: str) -> None:
        done, total, lines = self.last
        rate, byte_rate, left = self.rates.of(done, total, lines)
        log.info(what, bytes_read=done, bytes_total=total, percent=round(100 * done / total, 1) if total else 100.0,
                 lines=lines, lines_per_s=round(rate), bytes_per_s=round(byte_rate),
                 eta_s=None if left is None else round(left, 1))

    def close(self) -> None:
        self._log("import finished")


def for_terminal_or_log(interval_s: float) -> ImportProgress:
    """A bar when standard error is a terminal, else log lines."""
    return BarProgress() if sys.stderr.isatty() else LogProgress(interval_s)
