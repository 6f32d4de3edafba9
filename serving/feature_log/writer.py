"""The background writer of served-feature logs (docs/feature-logging.md).

The serving path appends sampled rows to the Rust core's bounded buffer (``Store.serve`` with a
request id; ``rust_core/src/serve/feature_log.rs``) and never waits for this thread. The thread
wakes every ``TICK_S``, and flushes a service's buffer when ``flush_rows`` rows wait or
``flush_interval_seconds`` passed since its last flush: it drains the buffer (Arrow arrays, no
Python object per value), and hands the rows to each destination. A destination that fails
keeps its rows (up to ``buffer_rows``, older ones dropped and counted past it) and is retried
with exponential back-off; the others go on. ``stop()`` flushes everything once more (graceful
shutdown).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from serving.feature_log.destinations import Destination, open_destination
from serving.registry import Registry, ServiceLogging

log = logging.getLogger("serving.feature_log")

#: how often the writer looks at the buffers (a flush by size waits at most this long)
TICK_S = 0.1
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


#: request ids this process makes: a random 64-bit prefix per process, then a counter. Measured
#: on the loaded 2-core machine: uuid4().hex 9.8 us a call, os.urandom(16).hex() 1.8 us, this
#: well under 1 us; W1 requests that bring no id pay it each.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A request id for a request that brought none (``x-request-id``): 32 hex digits, unique
    per process (the counter) and across processes (the random prefix)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class LogCore(Protocol):
    """What the writer needs of the core: a node's ``Store`` or a router's ``RouterCore``."""

    @property
    def closed(self) -> bool: ...
    def configure_logging(self, services: dict[str, tuple[float, int]] | None = None) -> None: ...
    def drain_log(self, service: str) -> list[pa.RecordBatch]: ...
    def log_counts(self) -> dict[str, dict[str, int]]: ...


@dataclass
class _DestState:
    dest: Destination
    pending: list[pa.Table] = field(default_factory=list)
    pending_rows: int = 0
    written_rows: int = 0
    write_errors: int = 0
    dropped_rows: int = 0
    last_error: str = ""
    retry_s: float = 0.0
    next_try: float = 0.0


@dataclass
class _Service:
    cfg: ServiceLogging
    dests: list[_DestState]
    last_flush: float
    flushes: int = 0
    flush_cpu_s: float = 0.0
    flushed_rows: int = 0


class FeatureLogger:
    """Configures the core's log buffers from the registry and writes them out."""

    def __init__(self, core: LogCore) -> None:
        self._core = core
        self._services: dict[str, _Service] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """True while some feature service is logged (requests then carry a request id)."""
        return bool(self._services)

    def configure(self, registry: Registry) -> None:
        """Applies the registry's ``logging:`` blocks: rows already buffered are flushed first
        (to the old destinations), then the core gets new buffers."""
        with self._lock:
            if self._services:
                self._flush_all(force=True)
                for s in self._services.values():
                    for d in s.dests:
                        d.dest.close()
            now = time.monotonic()
            services: dict[str, _Service] = {}
            for svc in registry.feature_services.values():
                if svc.logging is None or svc.logging.sample_rate <= 0:
                    continue
                dests = [_DestState(open_destination(d)) for d in svc.logging.destinations]
                services[svc.name] = _Service(svc.logging, dests, now)
            self._services = services
            self._core.configure_logging(
                {n: (s.cfg.sample_rate, s.cfg.buffer_rows) for n, s in services.items()}
                if services
                else None
            )

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="feature-log", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops the thread and flushes what is buffered, each healthy destination written
        once more; within ``timeout_s`` (a destination failing at that moment is not waited
        for: its rows are reported lost in the log)."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            log.warning("feature log: the writer is still writing at shutdown; buffered rows lost")
            return
        try:
            self._flush_all(force=True, shutdown=True)
            for name, s in self._services.items():
                for d in s.dests:
                    if d.pending_rows:
                        log.warning(
                            "feature log of '%s': %d rows not written to %s at shutdown: %s",
                            name,
                            d.pending_rows,
                            d.dest.name,
                            d.last_error,
                        )
                    d.dest.close()
        finally:
            self._lock.release()

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                with self._lock:
                    self._flush_all(force=False)
            except Exception:  # keep the writer alive whatever a destination raises
                log.exception("feature log writer")

    def _flush_all(self, force: bool, shutdown: bool = False) -> None:
        if not self._services:
            return
        counts = self._core.log_counts()
        now = time.monotonic()
        for name, s in self._services.items():
            buffered = counts.get(name, {}).get("buffered_rows", 0)
            due = now - s.last_flush >= s.cfg.flush_interval_seconds
            if force or buffered >= s.cfg.flush_rows or (due and buffered):
                self._flush(name, s, now)
            if force or any(d.pending and now >= d.next_try for d in s.dests):
                self._retry(s, now, force, shutdown)

    def _flush(self, name: str, s: _Service, now: float) -> None:
        t0 = time.thread_time()
        batches = self._core.drain_log(name)
        s.last_flush = now
        if not batches:
            return
        table = _concat(batches)
        for d in s.dests:
            d.pending.append(table)
            d.pending_rows += table.num_rows
            # a failing destination keeps rows up to the buffer's size; older ones go first
            while d.pending_rows > s.cfg.buffer_rows and len(d.pending) > 1:
                old = d.pending.pop(0)
                d.pending_rows -= old.num_rows
                d.dropped_rows += old.num_rows
        s.flushes += 1
        s.flushed_rows += table.num_rows
        s.flush_cpu_s += time.thread_time() - t0

    def _retry(self, s: _Service, now: float, force: bool, shutdown: bool = False) -> None:
        for d in s.dests:
            if not d.pending or (not force and now < d.next_try) or (shutdown and d.last_error):
                continue
            t0 = time.thread_time()
            table = _concat(d.pending) if len(d.pending) > 1 else d.pending[0]
            try:
                d.dest.write(table)
            except Exception as e:
                d.write_errors += 1
                d.last_error = f"{type(e).__name__}: {e}"[:500]
                d.retry_s = min(RETRY_MAX_S, d.retry_s * 2 if d.retry_s else RETRY_FIRST_S)
                d.next_try = now + d.retry_s
                log.warning(
                    "feature log: writing %d rows to %s failed (retry in %.1f s): %s",
                    table.num_rows,
                    d.dest.name,
                    d.retry_s,
                    d.last_error,
                )
            else:
                d.written_rows += table.num_rows
                d.pending, d.pending_rows = [], 0
                d.retry_s, d.next_try, d.last_error = 0.0, 0.0, ""
            s.flush_cpu_s += time.thread_time() - t0

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per logged service: the core's counters and each destination's (what /readyz and
        the metrics show)."""
        counts = self._core.log_counts() if not self._core.closed else {}
        out: dict[str, dict[str, Any]] = {}
        for name, s in list(self._services.items()):
            c = counts.get(name, {})
            out[name] = {
                "sample_rate": s.cfg.sample_rate,
                "sampled_requests": c.get("sampled_requests", 0),
                "appended_rows": c.get("appended_rows", 0),
                "buffered_rows": c.get("buffered_rows", 0),
                "dropped_rows_buffer_full": c.get("dropped_rows", 0),
                "flushes": s.flushes,
                "flushed_rows": s.flushed_rows,
                "flush_cpu_seconds": round(s.flush_cpu_s, 6),
                "destinations": {
                    d.dest.name: {
                        "ok": not d.last_error,
                        "written_rows": d.written_rows,
                        "pending_rows": d.pending_rows,
                        "dropped_rows": d.dropped_rows,
                        "write_errors": d.write_errors,
                        "last_error": d.last_error,
                    }
                    for d in s.dests
                },
            }
        return out


def _concat(tables: list[pa.RecordBatch] | list[pa.Table]) -> pa.Table:
    """One table of batches or tables whose schemas may differ by request shape (columns in
    another order, a feature added by a registry reload): missing columns become nulls."""
    parts = [t if isinstance(t, pa.Table) else pa.Table.from_batches([t]) for t in tables]
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables(parts, promote_options="default")
