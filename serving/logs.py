"""Structured logs: one JSON object per line on stderr.

Every line carries ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger`` and ``msg``, then
whatever the caller passed as ``extra=`` (``request_id``, ``api``, ``method``, ``code``,
``duration_ms`` on the slow-request line), and ``exc`` with the traceback when there is one::

    {"ts": "2026-01-02T03:04:05.678Z", "level": "WARNING", "logger": "serving.server",
     "msg": "slow request", "request_id": "9f0c...", "api": "feast-http", ...}

`setup_logging(level, "text")` keeps the classic one-line text format for people reading a
terminal (``FS_LOG_FORMAT=text`` selects it for the CLI).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import Any

__all__ = ["TEXT_FORMAT", "JsonFormatter", "RepeatFilter", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
#: keys the formatter writes itself; an ``extra=`` field of the same name is prefixed
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})


def _utc(created: float) -> str:
    t = time.gmtime(created)
    ms = int((created - int(created)) * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', t)}.{ms:03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (newlines inside strings are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            out[f"extra_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False, separators=(",", ":"))


class RepeatFilter(logging.Filter):
    """Collapses repeated lines: of the records whose messages are equal up to their numbers
    (ports, ids, milliseconds), the first passes, then none for ``interval_s`` seconds; the
    next one after that passes with the count of those left out appended.

    For librdkafka's own lines: while a broker is down it logs every failed connection
    attempt, about 20 a second per client, which buries everything else in the log.
    """

    _NUMBER = re.compile(r"\d+")
    _MAX_KEYS = 1000

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval = interval_s
        self._lock = threading.Lock()
        #: message shape -> (when the last one passed, how many were left out since)
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        key = f"{record.levelno}:{self._NUMBER.sub('#', message)}"
        now = time.monotonic()
        with self._lock:
            passed, left_out = self._seen.get(key, (-float("inf"), 0))
            if now - passed < self.interval:
                self._seen[key] = (passed, left_out + 1)
                return False
            if len(self._seen) >= self._MAX_KEYS:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if left_out:
            record.msg = (
                f"{message} ({left_out} similar lines in the last {now - passed:.0f} s not logged)"
            )
            record.args = None
        return True


def setup_logging(level: str, fmt: str = "json") -> None:
    """Configures the root logger: `level` (debug, info, warning, ...), `fmt` json or text.

    Replaces handlers installed earlier, so calling it twice does not double every line.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
