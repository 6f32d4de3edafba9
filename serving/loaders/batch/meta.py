"""What a batch run keeps in the store's meta (a view's event-time watermark, its Delta version),
the run's limits, and the time values runs take (``parse_time``)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

import pyarrow as pa

from serving.errors import InvalidArgumentError
from serving.registry import parse_ttl
from serving.store import Store

#: rows per record batch read from a file (the store splits writes at the same size)
BATCH_ROWS = 65_536
#: bad rows listed in a summary (all are counted)
MAX_REPORTED_ERRORS = 5
#: batches read ahead on the background thread
READ_AHEAD = 2

OnError = Literal["fail", "skip"]
US_UTC = pa.timestamp("us", tz="UTC")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError)


def watermark_key(view: str) -> str:
    """Meta key of a view's event-time watermark (ISO 8601, UTC, microseconds)."""
    return f"batch/{view}/watermark"


def delta_version_key(view: str) -> str:
    """Meta key of the Delta table version a view was last synced to (decimal text)."""
    return f"batch/{view}/delta_version"


def table_version_key(view: str, source_type: str) -> str:
    """Meta key of the table version a view was last synced to (decimal text): the Delta
    version, the Iceberg snapshot id, the Hudi instant."""
    if source_type == "delta":
        return delta_version_key(view)
    what = {"iceberg": "iceberg_snapshot", "hudi": "hudi_instant"}[source_type]
    return f"batch/{view}/{what}"


# --------------------------------------------------------------------------------------------
# time helpers


def parse_time(
    value: str | dt.datetime | dt.date | None, *, now: dt.datetime | None = None
) -> dt.datetime | None:
    """A UTC datetime from a datetime (naive = UTC), a date, ISO 8601 text, ``now`` or
    ``now-<duration>`` (``now-1h``, ``now-2d``). None stays None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    text = value.strip()
    base = now or dt.datetime.now(dt.UTC)
    if text.lower() == "now":
        return base
    if text.lower().startswith("now-"):
        try:
            return base - dt.timedelta(seconds=parse_ttl(text[4:]))
        except ValueError as e:
            raise InvalidArgumentError(f"invalid time '{value}': {e}") from None
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgumentError(
            f"invalid time '{value}' (expected ISO 8601 like 2024-01-01 or "
            f"2024-01-01T12:00:00Z, 'now' or 'now-2h')"
        ) from None
    return parse_time(parsed)


def _micros(t: dt.datetime) -> int:
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _get_watermark(store: Store, view: str) -> dt.datetime | None:
    raw = store.get_meta(watermark_key(view))
    return parse_time(raw.decode()) if raw else None


def _get_delta_version(store: Store, view: str) -> int | None:
    raw = store.get_meta(delta_version_key(view))
    return int(raw.decode()) if raw else None


def _get_table_version(store: Store, view: str, source_type: str) -> int | None:
    raw = store.get_meta(table_version_key(view, source_type))
    return int(raw.decode()) if raw else None
