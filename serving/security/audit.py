"""The audit log: one JSON line per write, admin action and denied request, and per read at a
configurable sampling; to a file (rotated by size) or stdout. Never a key or a token: a caller
is named by its key's name or its token's subject.

A line::

    {"ts": "2026-12-03T16:10:00.123456Z", "event": "write", "identity": "loader",
     "kind": "api_key", "project": "demo", "role": "writer", "api": "feast-http",
     "method": "/push", "views": ["driver_stats"], "entities": 128, "status": "200",
     "request_id": "9f0c..."}

``event`` is ``read``, ``write``, ``admin`` or ``denied`` (``reason`` then says why). The
frontends collect ``views`` and ``entities`` of a request with :func:`note` while handling it
(writes and admin actions always, reads only when sampled: the hot path of an unsampled read
pays one random draw).
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import random
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from serving.errors import InvalidArgumentError

EVENTS = ("read", "write", "admin", "denied")


@dataclass
class Noted:
    """What a handler tells the audit log about the request it handles."""

    views: list[str] = field(default_factory=list)
    entities: int | None = None


#: the notes of the request being handled (set by the frontend's audit layer)
current: contextvars.ContextVar[Noted | None] = contextvars.ContextVar("audit", default=None)


def note(views: Any = (), entities: int | None = None) -> None:
    """Adds ``views`` (names) and ``entities`` (rows or entity count) to the current
    request's audit line; nothing when the request is not audited."""
    n = current.get()
    if n is None:
        return
    for v in views:
        if v not in n.views:
            n.views.append(v)
    if entities is not None:
        n.entities = (n.entities or 0) + entities


@dataclass(frozen=True)
class AuditConfig:
    #: file path, or "-" for stdout
    path: str
    max_bytes: int = 100 << 20
    backups: int = 5
    #: fraction of reads logged (0 = none, 1 = every one)
    read_sample: float = 0.0


def audit_config(d: Any, where: str) -> AuditConfig:
    if not isinstance(d, dict):
        raise InvalidArgumentError(f"{where}: expected a mapping with path, read_sample, ...")
    known = {"path", "max_bytes", "backups", "read_sample"}
    if unknown := sorted(set(d) - known):
        raise InvalidArgumentError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if not d.get("path"):
        raise InvalidArgumentError(f"{where}: 'path' is required (a file, or - for stdout)")
    sample = float(d.get("read_sample", 0.0))
    if not 0.0 <= sample <= 1.0:
        raise InvalidArgumentError(f"{where}.read_sample: {sample} is not between 0 and 1")
    return AuditConfig(
        path=str(d["path"]),
        max_bytes=int(d.get("max_bytes", 100 << 20)),
        backups=int(d.get("backups", 5)),
        read_sample=sample,
    )


class AuditLog:
    """Writes audit lines through a logger of its own (``serving.audit``, not propagated),
    so the file handler's rotation and locking are the standard library's."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self.read_sample = config.read_sample
        self._log = logging.getLogger(f"serving.audit.{id(self)}")
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        handler: logging.Handler
        if config.path == "-":
            handler = logging.StreamHandler(sys.stdout)
        else:
            handler = logging.handlers.RotatingFileHandler(
                config.path, maxBytes=config.max_bytes, backupCount=config.backups
            )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler = handler
        self._log.addHandler(handler)
        self._random = random.random
        #: lines written, by event
        self.counts = dict.fromkeys(EVENTS, 0)

    def sampled(self) -> bool:
        return self.read_sample > 0 and self._random() < self.read_sample

    def record(
        self,
        event: str,
        *,
        identity: str,
        kind: str,
        project: str,
        role: str,
        api: str,
        method: str,
        status: str,
        views: list[str] | None = None,
        entities: int | None = None,
        request_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        line: dict[str, Any] = {
            "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "event": event,
            "identity": identity,
            "kind": kind,
            "project": project,
            "role": role,
            "api": api,
            "method": method,
            "views": views or [],
            "entities": entities,
            "status": status,
            "request_id": request_id,
        }
        if reason is not None:
            line["reason"] = reason
        self.counts[event] = self.counts.get(event, 0) + 1
        self._log.info(json.dumps(line, separators=(",", ":")))

    def close(self) -> None:
        self._log.removeHandler(self._handler)
        self._handler.close()
