"""Progress a person can follow: one line per stage, rewritten in place on a terminal.

A line reads `ragtune: [chunk] 1,234/5,000 rows (25%), 310 rows/s, ETA 12 s`. On a terminal
(stderr is a TTY) it is redrawn in place, at most every `TTY_REDRAW_S`; anywhere else (a log
file, `ray job logs`) a plain line is printed at most every `interval_s` or every `every`
units, so a long job's log grows by a bounded number of lines.

`stage(label)` names what is running; `current_label()` is how a progress source that does
not know its stage (Ray Data executions on the driver, see factory.cluster) labels its line.
`emit(line)` prints a log line without tearing an in-place progress line; `ConsoleHandler` is
how ragtune's loggers (`logging.getLogger(__name__)` in each module) print theirs.
Nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, Callable, Iterator, TextIO

TTY_REDRAW_S = 0.2
DEFAULT_INTERVAL_S = 15.0

_label: str | None = None
_drawn: "Progress | None" = None  # the bar whose line is on the terminal now


def duration(seconds: float) -> str:
    """`45 s`, `3 min 05 s`, `2 h 07 min`."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def _field(value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """One updating line: `done`/`total` units, rate and ETA, plus optional `fields` (e.g. loss)."""

    def __init__(self, label: str, total: int | None = None, unit: str = "rows", stream: TextIO | None = None,
                 interval_s: float | None = DEFAULT_INTERVAL_S, every: int | None = None,
                 start: int | None = 0, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s, self.every, self.clock = interval_s, every, clock
        self.done = 0
        self.fields: dict[str, Any] = {}
        # (time, done) the rate counts from; `start=None`: from the first update (work resumed from a checkpoint is not this run's).
        self._start: tuple[float, int] | None = None if start is None else (clock(), start)
        # Off a terminal the first line waits a whole interval: a short execution prints none.
        self._shown_at = -float("inf") if self.tty else clock()
        self._shown_done = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: int, total: int | None = None) -> None:
        self.update(self.done + n, total)

    def update(self, done: int, total: int | None = None, fields: dict[str, Any] | None = None) -> None:
        now = self.clock()
        if self._start is None:
            self._start = (now, done)
        self.done = done
        if total is not None:
            self.total = total
        self.fields.update(fields or {})
        if self._due(now):
            self._show(now)

    def rate(self) -> float | None:
        """Units per second since the first update (None until a second has passed)."""
        if self._start is None:
            return None
        elapsed = self.clock() - self._start[0]
        return (self.done - self._start[1]) / elapsed if elapsed >= 1 else None

    def line(self) -> str:
        parts = [f"{self.done:,}/{self.total:,} {self.unit} ({100 * self.done // max(self.total, 1)}%)"
                 if self.total else f"{self.done:,} {self.unit}"]
        parts += [f"{k} {_field(v)}" for k, v in self.fields.items() if v is not None]
        rate = self.rate()
        if rate:
            parts.append(f"{_rate(rate)} {self.unit}/s")
            if self.total and self.total > self.done:
                parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        return f"ragtune: [{self.label}] " + ", ".join(parts)

    def close(self) -> None:
        """Take the line off the terminal (the stage's summary line follows); nothing to do elsewhere."""
        global _drawn
        if _drawn is self:
            _erase(self.stream)
            _drawn = None

    def _due(self, now: float) -> bool:
        if self.tty:
            return now - self._shown_at >= TTY_REDRAW_S
        if self.total and self.done >= self.total:  # the summary line that follows says it
            return False
        if self.every and self.done // self.every > self._shown_done // self.every:
            return True
        return self.interval_s is not None and now - self._shown_at >= self.interval_s and self.done > self._shown_done

    def _show(self, now: float) -> None:
        global _drawn
        self._shown_at, self._shown_done = now, self.done
        if self.tty:
            if _drawn is not None and _drawn is not self:
                _erase(_drawn.stream)
            self.stream.write("\r" + self.line() + "\x1b[K")
            _drawn = self
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def _erase(stream: TextIO) -> None:
    stream.write("\r\x1b[K")
    stream.flush()


def emit(line: str, stream: TextIO | None = None) -> None:
    """Print a log line; a progress line on the terminal is erased first and redrawn after it."""
    stream = stream or sys.stderr
    bar = _drawn
    if bar is not None:
        _erase(bar.stream)
    stream.write(line + "\n")
    stream.flush()
    if bar is not None:
        bar.stream.write("\r" + bar.line() + "\x1b[K")
        bar.stream.flush()


class ConsoleHandler(logging.Handler):
    """A log record as the line `ragtune: <message>` on stderr (the one current at the time of the
    record, so a captured stderr gets it too), without tearing a progress line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            emit(f"ragtune: {self.format(record)}")
        except Exception:
            self.handleError(record)


def log_to_console(logger: logging.Logger) -> None:
    """`logger`'s INFO and above printed by a ConsoleHandler, and only there (not also by a root
    handler an embedding program installed); once, however often it is called."""
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


@contextlib.contextmanager
def stage(label: str) -> Iterator[None]:
    """Name what runs inside, for progress sources that do not know their stage."""
    global _label
    previous, _label = _label, label
    try:
        yield
    finally:
        _label = previous


def current_label() -> str:
    return _label or "ray"
