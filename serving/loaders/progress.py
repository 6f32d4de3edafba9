"""A tiny, dependency-free progress reporter for long loads.

On a terminal it redraws one line (a bar when the total is known, rows, rows/s, ETA) at most
about ten times a second; otherwise (a log file, CI) it prints a plain line every few seconds.
:meth:`Progress.close` prints one final summary line either way. ``enabled=False`` makes every
method a no-op, so callers never need to branch.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_count", "format_duration"]

_BAR_WIDTH = 24


def format_count(n: float) -> str:
    """``1234567`` -> ``1,234,567``."""
    return f"{int(n):,}"


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; under a minute with one decimal."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds + 0.5), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class Progress:
    """Counts units (rows by default) towards an optional ``total``."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "rows",
        stream: TextIO | None = None,
        enabled: bool = True,
        tty: bool | None = None,
        tty_interval: float = 0.1,
        log_interval: float = 5.0,
    ) -> None:
        self.label = label
        self.total = total if total and total > 0 else None
        self.unit = unit
        self.count = 0
        self.enabled = enabled
        self._stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self._stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self._tty = tty
        self._interval = tty_interval if tty else log_interval
        self._started = time.monotonic()
        self._last_draw = self._started
        self._drawn = False
        self._closed = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def rate(self) -> float:
        elapsed = self.elapsed
        return self.count / elapsed if elapsed > 0 else 0.0

    def update(self, n: int) -> None:
        """Adds ``n`` units; redraws if the last draw is older than the interval."""
        self.count += n
        if not self.enabled or self._closed:
            return
        now = time.monotonic()
        if now - self._last_draw >= self._interval:
            self._last_draw = now
            self._draw()

    def line(self) -> str:
        """The current status line (without bar on non-terminals)."""
        rate = self.rate()
        parts = [f"{self.label}:"]
        if self.total is not None:
            frac = min(self.count / self.total, 1.0)
            if self._tty:
                filled = int(frac * _BAR_WIDTH)
                parts.append("[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "]")
            parts.append(
                f"{format_count(self.count)}/{format_count(self.total)} {self.unit} "
                f"({frac * 100:.0f}%)"
            )
        else:
            parts.append(f"{format_count(self.count)} {self.unit}")
        parts.append(f"{format_count(rate)} {self.unit}/s")
        if self.total is not None and rate > 0:
            remaining = max(self.total - self.count, 0) / rate
            parts.append(f"ETA {format_duration(remaining)}")
        return " ".join(parts)

    def _draw(self) -> None:
        if self._tty:
            self._stream.write("\r" + self.line() + "\x1b[K")
            self._drawn = True
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()

    def close(self, summary: str | None = None) -> None:
        """Ends the line on a terminal and prints the final summary line."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if summary is None:
            summary = (
                f"{self.label}: {format_count(self.count)} {self.unit} in "
                f"{format_duration(self.elapsed)} ({format_count(self.rate())} {self.unit}/s)"
            )
        if self._tty and self._drawn:
            self._stream.write("\r\x1b[K")
        self._stream.write(summary + "\n")
        self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
