"""The batch loader: keeps the online store in sync with the offline store (Parquet, Delta Lake).

``materialize`` loads the rows whose event timestamp falls in ``[start, end)`` from each view's
batch source; ``materialize_incremental`` loads what arrived since the last successful run
(Parquet: an event-time watermark; Delta: the last synced table version). See
``docs/batch-loader.md`` for the user-facing semantics.

How a run works
---------------
1. *Plan* every view first: list the files (pruning hive/Delta partitions and Parquet row groups
   that cannot hold rows of the window), read each file's schema from its footer and check every
   column the view needs (present, castable). Nothing is read or written yet.
2. *Validate* (``on_error="fail"`` and dry runs): a first pass over the data that reads only the
   columns needing per-row checks (join keys, the timestamp, features whose file type differs
   from the registry's). In the usual case that is 2 columns out of hundreds, so it is cheap;
   in the worst case it doubles the reading. It guarantees the issue's promise: bad input fails
   the run *before anything is written*, naming file, column and row.
3. *Load*: stream record batches (bounded memory: one row group slice at a time, a read-ahead
   of two batches on a background thread), convert each to the registry's Arrow schema and
   hand it to :meth:`Store.write`. Progress meta (watermark, Delta version) rides in the SAME
   write as the view's last batch, so it commits atomically with the data that completes it;
   a crash before that leaves the old meta, and the rerun re-applies rows idempotently (merge
   rule: a row only replaces an older one).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import queue
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from serving.admin_client import send_admin_job, store_in_use
from serving.errors import FeatureServingError, InvalidArgumentError, StorageError
from serving.progress import Progress, format_count, format_duration
from serving.publish_state import STATE_TOPIC, PublishState, StateTopic, check_topic
from serving.registry import EVENT_TIMESTAMP, FeatureView, Registry, parse_ttl
from serving.store import Store, WriteStats

__all__ = [
    "BATCH_ROWS",
    "LoadSummary",
    "RowError",
    "ViewSummary",
    "add_commands",
    "delta_version_key",
    "materialize",
    "materialize_incremental",
    "parse_time",
    "watermark_key",
]

#: rows per record batch read from a file (the store splits writes at the same size)
BATCH_ROWS = 65_536
#: bad rows listed in a summary (all are counted)
MAX_REPORTED_ERRORS = 5
#: batches read ahead on the background thread
READ_AHEAD = 2

OnError = Literal["fail", "skip"]
_US_UTC = pa.timestamp("us", tz="UTC")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError)


def watermark_key(view: str) -> str:
    """Meta key of a view's event-time watermark (ISO 8601, UTC, microseconds)."""
    return f"batch/{view}/watermark"


def delta_version_key(view: str) -> str:
    """Meta key of the Delta table version a view was last synced to (decimal text)."""
    return f"batch/{view}/delta_version"


# --------------------------------------------------------------------------------------------
# summary


@dataclass(frozen=True)
class RowError:
    """One bad row (``row`` is 0-based within ``file``; None when a whole file was skipped)."""

    file: str
    row: int | None
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "whole file"
        return f"{self.file}: {where}: column '{self.column}': {self.reason}"


@dataclass
class ViewSummary:
    view: str
    source_type: str
    path: str
    #: rows read from the source that fall in the window (including bad rows)
    rows_read: int = 0
    written: int = 0
    #: rows published to the view's stream-source topic (``via_kafka`` runs; nothing is written)
    published: int = 0
    #: rows not written because the store holds a newer (or the same) event for the key
    skipped_older: int = 0
    #: bad rows skipped (``on_error="skip"``) or found by a dry run
    errors: int = 0
    #: data files read / skipped without opening their data (partition or statistics pruning)
    files_read: int = 0
    files_pruned: int = 0
    seconds: float = 0.0
    #: event-time watermark stored by this run (or the existing one)
    watermark: dt.datetime | None = None
    #: Delta table version read, and the version stored as synced by this run
    delta_version: int | None = None
    first_errors: list[RowError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LoadSummary:
    views: list[ViewSummary] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0
    #: the rows were published to the views' stream-source topics instead of written
    via_kafka: bool = False
    #: incremental via-kafka runs: the topic the published watermarks are recorded in
    state_topic: str | None = None

    def view(self, name: str) -> ViewSummary:
        for v in self.views:
            if v.view == name:
                return v
        raise KeyError(name)

    def __getitem__(self, name: str) -> ViewSummary:
        return self.view(name)

    @property
    def rows_read(self) -> int:
        return sum(v.rows_read for v in self.views)

    @property
    def written(self) -> int:
        return sum(v.written for v in self.views)

    @property
    def published(self) -> int:
        return sum(v.published for v in self.views)

    @property
    def skipped_older(self) -> int:
        return sum(v.skipped_older for v in self.views)

    @property
    def errors(self) -> int:
        return sum(v.errors for v in self.views)

    @property
    def files_read(self) -> int:
        return sum(v.files_read for v in self.views)

    def __str__(self) -> str:
        head = (
            "view",
            "source",
            "read",
            "published" if self.via_kafka else "written",
            "older",
            "errors",
            "files",
            "seconds",
            "synced",
        )
        rows: list[tuple[str, ...]] = [head]
        for v in self.views:
            if v.delta_version is not None:
                synced = f"version {v.delta_version}"
            elif v.watermark is not None:
                synced = v.watermark.isoformat().replace("+00:00", "Z")
            else:
                synced = "-"
            rows.append(
                (
                    v.view,
                    v.source_type,
                    format_count(v.rows_read),
                    format_count(v.published if self.via_kafka else v.written),
                    format_count(v.skipped_older),
                    format_count(v.errors),
                    f"{v.files_read}" + (f" (+{v.files_pruned} pruned)" if v.files_pruned else ""),
                    f"{v.seconds:.2f}",
                    synced,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        what = "dry run (nothing written)" if self.dry_run else "total"
        if self.via_kafka and not self.dry_run:
            progress = (
                f"progress recorded in Kafka topic '{self.state_topic}'"
                if self.state_topic
                else "no watermark advanced here"
            )
            lines.append(
                f"{what}: {format_count(self.rows_read)} rows read, "
                f"{format_count(self.published)} published to Kafka (the nodes apply them as "
                f"they consume; {progress}), {format_count(self.errors)} bad "
                f"rows, {format_duration(self.seconds)} ({format_count(rate)} rows/s)"
            )
        else:
            lines.append(
                f"{what}: {format_count(self.rows_read)} rows read, {format_count(self.written)} "
                f"written, {format_count(self.skipped_older)} skipped as older, "
                f"{format_count(self.errors)} bad rows, {format_duration(self.seconds)} "
                f"({format_count(rate)} rows/s)"
            )
        for v in self.views:
            lines.extend(f"{v.view}: {note}" for note in v.notes)
            if v.errors:
                lines.append(f"{v.view}: first bad rows ({v.errors} in all):")
                lines.extend(f"  {e}" for e in v.first_errors)
        return "\n".join(lines)


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


# --------------------------------------------------------------------------------------------
# plan


@dataclass
class _RowGroup:
    id: int
    first_row: int
    num_rows: int


@dataclass
class _Column:
    source: str
    target: pa.Field
    kind: Literal["key", "ts", "feature"]
    #: the file's type differs from the registry's: values are cast and checked row by row
    check: bool


@dataclass
class _Unit:
    """One data file and the row groups of it to read."""

    label: str
    fragment: Any
    scan_schema: pa.Schema
    row_groups: list[_RowGroup]
    columns: list[_Column]
    #: (partition column, day) when the file was kept by date-partition pruning: its rows must
    #: then all fall on that day, which is checked while reading
    date_partition: tuple[str, dt.date] | None = None

    @property
    def rows(self) -> int:
        return sum(rg.num_rows for rg in self.row_groups)


@dataclass
class _Plan:
    fv: FeatureView
    schema: pa.Schema
    units: list[_Unit]
    start: dt.datetime | None
    end: dt.datetime | None
    meta: dict[str, bytes]
    summary: ViewSummary
    skipped_files: list[tuple[_Unit, str, str]] = field(default_factory=list)
    #: incremental via-kafka runs: the state recorded in the state topic once every row of
    #: the plan was acknowledged
    publish: PublishState | None = None

    @property
    def total_rows(self) -> int:
        return sum(u.rows for u in self.units)


def _source_path(fv: FeatureView) -> str:
    assert fv.batch_source is not None
    return fv.batch_source.path


def _timestamp_ok(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_timestamp(t)
        or pa.types.is_date(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or getattr(pa.types, "is_string_view", lambda _t: False)(t)
    )


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    try:
        pa.array([], type=src).cast(dst)
    except _CAST_ERRORS:
        return False
    return True


def _columns(
    fv: FeatureView, schema: pa.Schema, registry_schema: pa.Schema
) -> tuple[list[_Column], list[tuple[str, str]]]:
    """The columns to read from a file of ``schema``, and the problems ``(column, reason)``."""
    assert fv.batch_source is not None
    ts_field = fv.batch_source.timestamp_field
    wanted: list[tuple[str, pa.Field, Literal["key", "ts", "feature"]]] = []
    for k in fv.join_keys:
        wanted.append((k.name, registry_schema.field(k.name), "key"))
    wanted.append((ts_field, registry_schema.field(EVENT_TIMESTAMP), "ts"))
    for f in fv.features:
        wanted.append((f.name, registry_schema.field(f.name), "feature"))
    columns: list[_Column] = []
    problems: list[tuple[str, str]] = []
    names = set(schema.names)
    for source, target, kind in wanted:
        if source not in names:
            what = {"key": "join key", "ts": "timestamp", "feature": "feature"}[kind]
            problems.append((source, f"missing {what} column (expected {target.type})"))
            continue
        src_type = schema.field(source).type
        if kind == "ts":
            if not _timestamp_ok(src_type):
                problems.append(
                    (source, f"has type {src_type}; expected a timestamp, a date or ISO 8601 text")
                )
                continue
            columns.append(_Column(source, target, kind, check=src_type != target.type))
            continue
        if src_type != target.type and not _castable(src_type, target.type):
            problems.append(
                (source, f"has type {src_type}, which cannot be converted to {target.type}")
            )
            continue
        columns.append(_Column(source, target, kind, check=src_type != target.type))
    return columns, problems


def _ts_filter(
    ts_type: pa.DataType, column: str, start: dt.datetime | None, end: dt.datetime | None
) -> Any:
    """A dataset expression on the timestamp column for statistics pruning, or None."""
    if not pa.types.is_timestamp(ts_type) or (start is None and end is None):
        return None
    expr = None
    naive = ts_type.tz is None
    for bound, op in ((start, "ge"), (end, "lt")):
        if bound is None:
            continue
        value = bound.replace(tzinfo=None) if naive else bound
        scalar = pa.scalar(value, type=pa.timestamp(ts_type.unit, tz=ts_type.tz))
        term = pads.field(column) >= scalar if op == "ge" else pads.field(column) < scalar
        expr = term if expr is None else expr & term
    return expr


def _date_partition(keys: dict[str, Any], required: set[str]) -> tuple[str, dt.date] | None:
    """The one partition key that holds a calendar date (``date=2024-01-31``), if any."""
    found: list[tuple[str, dt.date]] = []
    for name, value in keys.items():
        if name in required:
            continue
        if isinstance(value, dt.datetime):
            continue
        if isinstance(value, dt.date):
            found.append((name, value))
        elif isinstance(value, str) and _DATE_RE.match(value):
            try:
                found.append((name, dt.date.fromisoformat(value)))
            except ValueError:
                continue
    return found[0] if len(found) == 1 else None


def _day_overlaps(day: dt.date, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    lo = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    hi = lo + dt.timedelta(days=1)
    return (end is None or lo < end) and (start is None or hi > start)


def _file_label(fragment: Any, base: str | None) -> str:
    path = str(fragment.path)
    if base is not None and not os.path.isabs(path) and "://" not in base:
        return os.path.join(base, path)
    return path


def _build_units(
    plan: _Plan,
    fragments: Iterable[Any],
    *,
    table_schema: pa.Schema | None,
    partition_schema: pa.Schema | None,
    base: str | None,
    prune_partitions: bool,
    on_error: OnError,
) -> None:
    """Fills ``plan.units`` from fragments: partition and row-group pruning, schema checks."""
    fv, start, end, summary = plan.fv, plan.start, plan.end, plan.summary
    assert fv.batch_source is not None
    ts_field = fv.batch_source.timestamp_field
    required = {k.name for k in fv.join_keys} | {ts_field} | set(fv.feature_names)
    windowed = start is not None or end is not None
    shared: tuple[list[_Column], list[tuple[str, str]]] | None = None
    if table_schema is not None:
        shared = _columns(fv, table_schema, plan.schema)
    for fragment in fragments:
        label = _file_label(fragment, base)
        keys = pads.get_partition_keys(fragment.partition_expression) or {}
        date_part = None
        if prune_partitions and windowed:
            date_part = _date_partition(keys, required)
            if date_part is not None and not _day_overlaps(date_part[1], start, end):
                summary.files_pruned += 1
                continue
        try:
            metadata = fragment.metadata
            if table_schema is not None:
                scan_schema = table_schema
            else:
                scan_schema = fragment.physical_schema
                if partition_schema is not None:
                    for f in partition_schema:
                        if f.name in keys and f.name not in scan_schema.names:
                            scan_schema = scan_schema.append(f)
        except (OSError, pa.ArrowException) as e:
            raise InvalidArgumentError(
                f"feature view '{fv.name}': cannot read {label}: {e}"
            ) from None
        offsets = []
        row = 0
        for i in range(metadata.num_row_groups):
            n = metadata.row_group(i).num_rows
            offsets.append(_RowGroup(i, row, n))
            row += n
        ids = [rg.id for rg in offsets]
        if ts_field in scan_schema.names:
            expr = _ts_filter(scan_schema.field(ts_field).type, ts_field, start, end)
            if expr is not None:
                with contextlib.suppress(*_CAST_ERRORS):
                    ids = [rg.id for rg in fragment.subset(filter=expr).row_groups]
        if shared is not None:
            columns, problems = shared
        else:
            columns, problems = _columns(fv, scan_schema, plan.schema)
        unit = _Unit(
            label,
            fragment,
            scan_schema,
            [offsets[i] for i in ids],
            columns,
            date_part if windowed else None,
        )
        if not unit.row_groups:
            summary.files_pruned += 1
            continue
        if problems:
            column, reason = problems[0]
            if on_error == "fail":
                more = (
                    f" (and {len(problems) - 1} more column problems)" if len(problems) > 1 else ""
                )
                raise InvalidArgumentError(
                    f"feature view '{fv.name}': {label}: column '{column}': {reason}{more}"
                )
            plan.skipped_files.append((unit, column, reason))
            continue
        plan.units.append(unit)


def _open_parquet(path: str) -> Any:
    try:
        return pads.dataset(path, format="parquet", partitioning="hive")
    except (OSError, pa.ArrowException) as e:
        raise InvalidArgumentError(f"cannot open Parquet source {path}: {e}") from None


def _plan_parquet(plan: _Plan, *, prune_partitions: bool, on_error: OnError) -> None:
    path = plan.summary.path
    if not os.path.exists(path):
        raise InvalidArgumentError(
            f"feature view '{plan.fv.name}': batch source {path} does not exist"
        )
    dataset = _open_parquet(path)
    partitioning = getattr(dataset, "partitioning", None)
    partition_schema = partitioning.schema if partitioning is not None else None
    _build_units(
        plan,
        dataset.get_fragments(),
        table_schema=None,
        partition_schema=partition_schema,
        base=None,
        prune_partitions=prune_partitions,
        on_error=on_error,
    )


# -- Delta -----------------------------------------------------------------------------------


def _deltalake() -> Any:
    try:
        import deltalake
    except ImportError:
        raise InvalidArgumentError(
            "Delta Lake sources need the deltalake package: pip install 'feature-serving[delta]'"
        ) from None
    return deltalake


def _open_delta(path: str, version: int | None, view: str) -> Any:
    deltalake = _deltalake()
    if "://" not in path and not os.path.exists(path):
        raise InvalidArgumentError(f"feature view '{view}': batch source {path} does not exist")
    try:
        if not deltalake.DeltaTable.is_deltatable(path):
            raise InvalidArgumentError(
                f"feature view '{view}': batch source {path} is not a Delta table (no _delta_log)"
            )
        return deltalake.DeltaTable(path, version=version)
    except InvalidArgumentError:
        raise
    except Exception as e:  # deltalake raises its own hierarchy (TableNotFoundError, ...)
        what = f" at version {version}" if version is not None else ""
        raise InvalidArgumentError(
            f"feature view '{view}': cannot open Delta table {path}{what}: {e}"
        ) from None


def _live_files(table: Any) -> set[str]:
    actions = pa.table(table.get_add_actions(flatten=True))
    return {urllib.parse.unquote(p) for p in actions.column("path").to_pylist()}


def _log_actions(path: str, version: int) -> list[dict[str, Any]] | None:
    """The actions of one commit from ``_delta_log`` (local tables only), or None."""
    if "://" in path and not path.startswith("file://"):
        return None
    local = path[len("file://") :] if path.startswith("file://") else path
    name = os.path.join(local, "_delta_log", f"{version:020d}.json")
    try:
        with open(name, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return None


def _already_synced(path: str, synced: int, target: int, live_then: set[str]) -> set[str]:
    """Files live at ``target`` whose rows were all live at version ``synced``.

    A commit whose added files all carry ``dataChange: false`` (OPTIMIZE / compaction, Z-order)
    only rewrites the rows of the files it removes; if every removed file was already synced,
    its new files hold nothing new and are skipped. A file rewritten together with unsynced
    files (or any commit whose log entry is unavailable) is read again: idempotent, just work.
    """
    synced_files = set(live_then)
    for version in range(synced + 1, target + 1):
        actions = _log_actions(path, version)
        if actions is None:
            continue
        adds = [a["add"] for a in actions if "add" in a]
        removes = [urllib.parse.unquote(a["remove"]["path"]) for a in actions if "remove" in a]
        if (
            adds
            and removes
            and all(a.get("dataChange", True) is False for a in adds)
            and all(r in synced_files for r in removes)
        ):
            synced_files.update(urllib.parse.unquote(a["path"]) for a in adds)
    return synced_files


def _history_note(table: Any, synced: int, target: int) -> str:
    try:
        entries = table.history(limit=max(target - synced, 1))
    except Exception:  # informational only
        return ""
    ops = []
    for h in sorted(entries, key=lambda h: h.get("version", 0)):
        v = h.get("version")
        if v is None or v <= synced:
            continue
        op = str(h.get("operation", "?"))
        mode = (h.get("operationParameters") or {}).get("mode")
        ops.append(f"{v} {op}" + (f"({mode})" if mode else ""))
    return ", ".join(ops)


def _plan_delta(
    plan: _Plan,
    *,
    version: int | None,
    synced: int | None,
    incremental: bool,
    prune_partitions: bool,
    on_error: OnError,
) -> int:
    """Plans a Delta source; returns the table version read."""
    path, view = plan.summary.path, plan.fv.name
    table = _open_delta(path, version, view)
    target = int(table.version())
    plan.summary.delta_version = target
    only: set[str] | None = None
    if incremental and synced is not None:
        if synced >= target:
            plan.summary.notes.append(
                f"Delta table at version {target}, already synced to version {synced}"
            )
            only = set()
        else:
            history = _history_note(table, synced, target)
            try:
                live_then = _live_files(_deltalake().DeltaTable(path, version=synced))
            except Exception:
                plan.summary.notes.append(
                    f"synced version {synced} is no longer in the Delta log (vacuumed or "
                    f"checkpointed away): full reload of version {target}"
                )
            else:
                live_now = _live_files(table)
                only = live_now - _already_synced(path, synced, target, live_then)
                plan.summary.notes.append(
                    f"Delta versions {synced + 1}..{target} [{history}]: "
                    f"{len(only)} of {len(live_now)} live files new or rewritten"
                )
    try:
        dataset = table.to_pyarrow_dataset()
    except Exception as e:
        raise InvalidArgumentError(
            f"feature view '{view}': cannot read Delta table {path}: {e}"
        ) from None
    fragments = [
        f
        for f in dataset.get_fragments()
        if only is None or urllib.parse.unquote(str(f.path)) in only
    ]
    base = path[len("file://") :] if path.startswith("file://") else path
    _build_units(
        plan,
        fragments,
        table_schema=dataset.schema,
        partition_schema=None,
        base=base,
        prune_partitions=prune_partitions,
        on_error=on_error,
    )
    return target


# --------------------------------------------------------------------------------------------
# per-batch conversion and checks


def _bisect_cast(
    arr: pa.Array, target: pa.DataType, fn: Callable[[pa.Array], pa.Array]
) -> tuple[pa.Array, list[int]]:
    """``fn`` over ``arr``; where it fails, narrows down to the failing rows (nulls there)."""
    pieces: list[pa.Array] = []
    bad: list[int] = []

    def rec(offset: int, length: int) -> None:
        try:
            pieces.append(fn(arr.slice(offset, length)))
            return
        except _CAST_ERRORS:
            if length == 1:
                bad.append(offset)
                pieces.append(pa.nulls(1, type=target))
                return
        half = length // 2
        rec(offset, half)
        rec(offset + half, length - half)

    if len(arr):
        rec(0, len(arr))
    if not pieces:
        return pa.array([], type=target), bad
    return pa.concat_arrays(pieces), bad


def _parse_text_ts(arr: pa.Array) -> pa.Array:
    try:
        return arr.cast(_US_UTC)
    except _CAST_ERRORS:
        # no zone offset: naive text is taken as UTC
        return arr.cast(pa.timestamp("us")).cast(_US_UTC)


def _to_timestamp(arr: pa.Array) -> tuple[pa.Array, list[int]]:
    t = arr.type
    if t == _US_UTC:
        return arr, []
    if pa.types.is_timestamp(t):
        # naive timestamps are taken as UTC; sub-microsecond digits are truncated
        return arr.cast(_US_UTC, safe=False), []
    if pa.types.is_date(t):
        return arr.cast(_US_UTC), []
    return _bisect_cast(arr, _US_UTC, _parse_text_ts)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _caster(target: pa.DataType) -> Callable[[pa.Array], pa.Array]:
    def cast(a: pa.Array) -> pa.Array:
        return a.cast(target)

    return cast


def _cast_reason(src: pa.Array, target: pa.DataType) -> Callable[[int], str]:
    def reason(i: int) -> str:
        return f"value {_show(src[i].as_py())} cannot be converted to {target}"

    return reason


@dataclass
class _Prepared:
    batch: pa.RecordBatch | None
    scanned: int
    in_window: int
    bad: int
    errors: list[RowError]


def _bool_np(arr: pa.Array) -> npt.NDArray[np.bool_]:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def _prepare(
    plan: _Plan, unit: _Unit, row0: int, batch: pa.RecordBatch, *, build: bool
) -> _Prepared:
    """Checks one batch against the window and the registry; builds the batch to write."""
    n = batch.num_rows
    view = plan.fv.name
    checks: list[tuple[npt.NDArray[np.bool_], str, Callable[[int], str]]] = []
    converted: dict[str, pa.Array] = {}
    ts_col = next(c for c in unit.columns if c.kind == "ts")
    raw_ts = batch.column(ts_col.source)
    if isinstance(raw_ts, pa.ChunkedArray):
        raw_ts = raw_ts.combine_chunks()
    ts, unparsable = _to_timestamp(raw_ts)
    converted[ts_col.source] = ts
    if unparsable:
        mask = np.zeros(n, dtype=bool)
        mask[unparsable] = True
        checks.append(
            (mask, ts_col.source, lambda i: f"cannot parse timestamp {_show(raw_ts[i].as_py())}")
        )
    null_ts = _bool_np(raw_ts.is_null())
    if null_ts.any():
        checks.append((null_ts, ts_col.source, lambda _i: "null event timestamp"))
    ts_bad = null_ts.copy()
    if unparsable:
        ts_bad[unparsable] = True
    micros = np.asarray(
        pc.fill_null(ts.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64
    )
    in_window = np.ones(n, dtype=bool)
    if plan.start is not None:
        in_window &= micros >= _micros(plan.start)
    if plan.end is not None:
        in_window &= micros < _micros(plan.end)
    in_window |= ts_bad  # a row without a usable time cannot be placed outside the window
    if unit.date_partition is not None:
        column, day = unit.date_partition
        lo = _micros(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC))
        outside = ~ts_bad & ((micros < lo) | (micros >= lo + 86_400_000_000))
        if outside.any():
            i = int(np.argmax(outside))
            raise InvalidArgumentError(
                f"feature view '{view}': {unit.label}: row {row0 + i}: event timestamp "
                f"{_show(ts[i].as_py())} is not on the day of partition {column}={day}; "
                f"partition pruning assumes date partitions hold the UTC date of the event "
                f"timestamp. Disable it (--no-partition-pruning / prune_partitions=False)"
            )
    for col in unit.columns:
        if col.kind == "ts":
            continue
        if not build and not col.check and col.kind != "key":
            continue
        arr = batch.column(col.source)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if col.kind == "key":
            nulls = _bool_np(arr.is_null())
            if nulls.any():
                checks.append((nulls, col.source, lambda _i: "null join key"))
        if col.check:
            target = col.target.type
            out, failed = _bisect_cast(arr, target, _caster(target))
            if failed:
                mask = np.zeros(n, dtype=bool)
                mask[failed] = True
                checks.append((mask, col.source, _cast_reason(arr, target)))
            converted[col.source] = out
        else:
            converted[col.source] = arr
    bad = np.zeros(n, dtype=bool)
    for mask, _c, _r in checks:
        bad |= mask
    bad &= in_window
    n_bad = int(bad.sum())
    errors: list[RowError] = []
    if n_bad:
        found: list[tuple[int, RowError]] = []
        for mask, column, reason in checks:
            for i in np.nonzero(mask & in_window)[0][:MAX_REPORTED_ERRORS]:
                found.append((int(i), RowError(unit.label, row0 + int(i), column, reason(int(i)))))
        found.sort(key=lambda e: e[0])
        errors = [e for _i, e in found[:MAX_REPORTED_ERRORS]]
    out_batch = None
    keep = in_window & ~bad
    n_keep = int(keep.sum())
    if build and n_keep:
        arrays = [converted[c.source] for c in unit.columns]
        schema = pa.schema([c.target for c in unit.columns])
        out_batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        if n_keep < n:
            out_batch = out_batch.filter(pa.array(keep))
        if out_batch.schema != plan.schema:
            out_batch = out_batch.select(plan.schema.names)
    return _Prepared(out_batch, n, int(in_window.sum()), n_bad, errors)


# --------------------------------------------------------------------------------------------
# reading


def _scan(unit: _Unit, columns: list[str], batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(first row within the file, batch)`` over the unit's row groups, in file order."""
    for rg in unit.row_groups:
        fragment = unit.fragment.subset(row_group_ids=[rg.id])
        row = rg.first_row
        try:
            batches = fragment.to_batches(
                schema=unit.scan_schema, columns=columns, batch_size=batch_rows, use_threads=True
            )
            for batch in batches:
                if batch.num_rows:
                    yield row, batch
                    row += batch.num_rows
        except (OSError, pa.ArrowException) as e:
            raise InvalidArgumentError(
                f"cannot read {unit.label} (row group {rg.id}): {e}"
            ) from None


def _read_ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Runs ``items`` on a background thread, ``depth`` items ahead (pyarrow releases the GIL,
    so reading and decoding overlap the store's writes)."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
        except BaseException as e:
            put(("error", e))
            return
        put(("done", None))

    thread = threading.Thread(target=run, name="batch-loader-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


def _prepared(plan: _Plan, *, build: bool, batch_rows: int) -> Iterator[tuple[_Unit, _Prepared]]:
    for unit in plan.units:
        if build:
            columns = [c.source for c in unit.columns]
        else:
            columns = [c.source for c in unit.columns if c.kind in ("key", "ts") or c.check]
        for row0, batch in _scan(unit, columns, batch_rows):
            yield unit, _prepare(plan, unit, row0, batch, build=build)


def _fail(plan: _Plan, prep: _Prepared) -> InvalidArgumentError:
    first = prep.errors[0]
    more = prep.bad - 1
    tail = f" ({more} more bad rows in this batch)" if more > 0 else ""
    return InvalidArgumentError(
        f"feature view '{plan.fv.name}': {first}{tail}; nothing was written "
        f"(--on-error skip skips bad rows)"
    )


def _note_errors(summary: ViewSummary, prep: _Prepared) -> None:
    summary.errors += prep.bad
    room = MAX_REPORTED_ERRORS - len(summary.first_errors)
    if room > 0:
        summary.first_errors.extend(prep.errors[:room])


def _note_skipped_files(plan: _Plan) -> None:
    for unit, column, reason in plan.skipped_files:
        plan.summary.errors += unit.rows
        if len(plan.summary.first_errors) < MAX_REPORTED_ERRORS:
            plan.summary.first_errors.append(
                RowError(unit.label, None, column, f"{reason}; file skipped")
            )


def _validate(
    plan: _Plan, *, on_error: OnError, progress: bool, batch_rows: int, count: bool
) -> None:
    """Validation pass: reads only the columns that need per-row checks."""
    bar = Progress(f"validate {plan.fv.name}", plan.total_rows, enabled=progress)
    try:
        for _unit, prep in _read_ahead(
            _prepared(plan, build=False, batch_rows=batch_rows), READ_AHEAD
        ):
            bar.update(prep.scanned)
            if prep.bad and on_error == "fail":
                raise _fail(plan, prep)
            if count:
                plan.summary.rows_read += prep.in_window
                _note_errors(plan.summary, prep)
    finally:
        bar.close()


def _load(store: Store, plan: _Plan, *, on_error: OnError, progress: bool, batch_rows: int) -> None:
    """Load pass: writes every batch; the meta rides with the last one."""
    summary, view = plan.summary, plan.fv.name
    bar = Progress(f"load {view}", plan.total_rows, enabled=progress)
    stats = WriteStats()
    pending: pa.RecordBatch | None = None
    seen: set[str] = set()
    try:
        for unit, prep in _read_ahead(
            _prepared(plan, build=True, batch_rows=batch_rows), READ_AHEAD
        ):
            seen.add(unit.label)
            summary.rows_read += prep.in_window
            if prep.bad:
                if on_error == "fail":
                    raise _fail(plan, prep)
                _note_errors(summary, prep)
            if prep.batch is not None:
                if pending is not None:
                    stats += store.write(view, pending)
                pending = prep.batch
            bar.update(prep.scanned)
        if pending is not None or plan.meta:
            if pending is None:
                pending = pa.RecordBatch.from_pylist([], schema=plan.schema)
            stats += store.write(view, pending, meta=plan.meta or None)
    finally:
        bar.close(
            f"load {view}: {format_count(summary.rows_read)} rows in window, "
            f"{format_count(stats.written)} written, {format_count(stats.skipped_older)} "
            f"skipped as older, {format_count(summary.errors)} bad rows"
        )
        summary.written += stats.written
        summary.skipped_older += stats.skipped_older
    summary.files_read = len(seen)


#: librdkafka's own log lines of via-kafka runs (connection retries while a broker is down
#: come many a second; the run's errors say what failed)
_RDKAFKA_LOG = logging.getLogger("serving.batch_loader.rdkafka")
#: default deadline of a via-kafka run for reaching the brokers and reading or recording state
KAFKA_TIMEOUT_S = 30.0


@dataclass
class _KafkaTarget:
    """Where a ``via_kafka`` run publishes: a given producer (tests, callers that own one), or
    one producer per view created from its stream source (``bootstrap_servers`` and
    ``kafka_config`` override / add librdkafka settings). ``state_topic``: incremental runs
    read and record what was published there (:mod:`serving.publish_state`), on the cluster of
    each view's stream topic. ``timeout``: deadline for reaching the brokers."""

    producer: Any = None
    bootstrap_servers: str | None = None
    kafka_config: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    state_topic: str | None = None
    timeout: float = KAFKA_TIMEOUT_S
    #: state topics by bootstrap servers (one per cluster)
    states: dict[str, StateTopic] = field(default_factory=dict)

    def client_conf(self, fv: FeatureView) -> dict[str, Any]:
        """Connection settings for ``fv``'s cluster: bootstrap servers, the source's
        connection settings (security, client id) and ``kafka_config``."""
        from serving.kafka_loader import OPTION_PREFIX

        src = fv.stream_source
        assert src is not None
        # consumer-only settings of the source would only draw librdkafka warnings
        shared = ("security.", "sasl.", "ssl.", "client.id", "socket.", "broker.")
        conf: dict[str, Any] = {
            k: v
            for k, v in src.options.items()
            if not k.startswith(OPTION_PREFIX) and k.startswith(shared)
        }
        conf["bootstrap.servers"] = self.bootstrap_servers or src.bootstrap_servers
        conf["logger"] = _RDKAFKA_LOG
        conf.update(self.kafka_config)
        return conf

    def check(self, fv: FeatureView) -> None:
        """The view's stream topic exists and the brokers answer within the deadline."""
        assert fv.stream_source is not None
        check_topic(self.client_conf(fv), fv.stream_source.topic, fv.name, self.timeout)

    def state(self, fv: FeatureView, *, create: bool) -> StateTopic:
        """The state topic on ``fv``'s cluster (created if missing and ``create``)."""
        assert self.state_topic is not None
        conf = self.client_conf(fv)
        bootstrap = str(conf["bootstrap.servers"])
        st = self.states.get(bootstrap)
        if st is None:
            st = StateTopic(conf, self.state_topic, self.timeout)
            if create:
                st.ensure()
            self.states[bootstrap] = st
        return st

    def open(self, fv: FeatureView) -> tuple[Any, bool]:
        """(producer, owned) for ``fv``."""
        if self.producer is not None:
            return self.producer, False
        from confluent_kafka import Producer

        from serving.kafka_loader import PRODUCER_DEFAULTS

        conf = self.client_conf(fv)
        conf.update(PRODUCER_DEFAULTS)
        conf.update(self.kafka_config)
        conf["on_delivery"] = self._delivered
        return Producer(conf), True

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None and len(self.failed) < MAX_REPORTED_ERRORS:
            self.failed.append(str(err))
        elif err is not None:
            self.failed.append("")


#: how long the end of a via-kafka run waits for the broker to acknowledge every record
PUBLISH_FLUSH_S = 120.0


def _publish(
    kafka: _KafkaTarget, plan: _Plan, *, on_error: OnError, progress: bool, batch_rows: int
) -> None:
    """Publish pass: produces every row to the view's stream-source topic, in file order, with
    the same key encoding and partitioner as :func:`serving.kafka_loader.produce_rows`."""
    from serving.kafka_loader import produce_rows

    summary, fv = plan.summary, plan.fv
    bar = Progress(f"publish {fv.name}", plan.total_rows, enabled=progress)
    producer, owned = kafka.open(fv)
    seen: set[str] = set()
    try:
        for unit, prep in _read_ahead(
            _prepared(plan, build=True, batch_rows=batch_rows), READ_AHEAD
        ):
            seen.add(unit.label)
            summary.rows_read += prep.in_window
            if prep.bad:
                if on_error == "fail":
                    raise _fail(plan, prep)
                _note_errors(summary, prep)
            if prep.batch is not None and prep.batch.num_rows:
                summary.published += produce_rows(producer, fv, prep.batch, flush=False)
            bar.update(prep.scanned)
            if kafka.failed:  # the broker refuses records: stop producing more
                break
        left = producer.flush(PUBLISH_FLUSH_S)
        if left or kafka.failed:
            shown = "; ".join(e for e in kafka.failed if e)
            raise StorageError(
                f"feature view '{fv.name}': publishing to topic "
                f"'{fv.stream_source.topic if fv.stream_source else '?'}' failed: "
                f"{left} records not acknowledged after {PUBLISH_FLUSH_S:.0f} s, "
                f"{len(kafka.failed)} delivery errors{(': ' + shown) if shown else ''}"
                + ("; the state topic is unchanged" if plan.publish is not None else "")
            )
    finally:
        bar.close(
            f"publish {fv.name}: {format_count(summary.rows_read)} rows in window, "
            f"{format_count(summary.published)} published, "
            f"{format_count(summary.errors)} bad rows"
        )
        if owned:
            producer.flush(0)
    summary.files_read = len(seen)
    if plan.publish is not None:  # every record of the plan was acknowledged
        _record_state(kafka, plan, producer, progress=progress)


def _record_state(kafka: _KafkaTarget, plan: _Plan, producer: Any, *, progress: bool) -> None:
    """Records the plan's publish state once every one of its rows was acknowledged."""
    assert plan.publish is not None
    fv, summary = plan.fv, plan.summary
    state = dataclasses.replace(
        plan.publish, published=summary.published, recorded_at=dt.datetime.now(dt.UTC)
    )
    st = kafka.state(fv, create=True)
    st.record(producer, state)
    if state.watermark is not None:
        summary.watermark = state.watermark
    if state.delta_version is not None:
        summary.delta_version = state.delta_version
    summary.notes.append(
        f"{state.describe()} recorded in topic '{st.name}' (key "
        f"{state.topic}/{state.view}) after the broker acknowledged every record"
    )
    Progress(f"record {fv.name}", enabled=progress).close(
        f"record {fv.name}: {state.describe()} recorded in topic '{st.name}'"
    )


# --------------------------------------------------------------------------------------------
# public API


def _kafka_target(
    selected: list[FeatureView], kafka: _KafkaTarget, *, dry_run: bool
) -> _KafkaTarget:
    """Checks that every view can be published: it has a stream source, and (unless
    ``dry_run``) its topic exists on brokers that answer within the deadline."""
    if not kafka.timeout > 0:
        raise InvalidArgumentError(f"kafka_timeout must be positive, got {kafka.timeout}")
    missing = [fv.name for fv in selected if fv.stream_source is None]
    if missing:
        raise InvalidArgumentError(
            f"--via-kafka publishes to each view's stream_source topic, and feature "
            f"view(s) {', '.join(repr(m) for m in missing)} have none"
        )
    if not dry_run:
        for fv in selected:
            kafka.check(fv)
    return kafka


def _select_views(store: Store | Registry, views: Sequence[str] | str | None) -> list[FeatureView]:
    registry = store if isinstance(store, Registry) else store.registry
    if isinstance(views, str):
        views = [views]
    if views:
        out = []
        for name in views:
            fv = registry.view(name)
            if fv.batch_source is None:
                raise InvalidArgumentError(f"feature view '{name}' has no batch_source")
            out.append(fv)
        return out
    return [
        fv for fv in registry.feature_views.values() if fv.batch_source is not None and fv.online
    ]


def _new_plan(
    store: Store | Registry, fv: FeatureView, start: dt.datetime | None, end: dt.datetime | None
) -> _Plan:
    assert fv.batch_source is not None
    registry = store if isinstance(store, Registry) else store.registry
    summary = ViewSummary(fv.name, fv.batch_source.type, _source_path(fv))
    return _Plan(fv, registry.arrow_schema(fv.name), [], start, end, {}, summary)


def _execute(
    store: Store | None,
    plans: list[_Plan],
    *,
    on_error: OnError,
    dry_run: bool,
    progress: bool,
    batch_rows: int,
    started: float,
    kafka: _KafkaTarget | None = None,
) -> LoadSummary:
    if on_error not in ("fail", "skip"):
        raise InvalidArgumentError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    result = LoadSummary(
        views=[p.summary for p in plans], dry_run=dry_run, via_kafka=kafka is not None
    )
    for plan in plans:
        _note_skipped_files(plan)
    if dry_run or on_error == "fail":
        # every view is validated before the first write of the run
        for plan in plans:
            t0 = time.perf_counter()
            _validate(
                plan, on_error=on_error, progress=progress, batch_rows=batch_rows, count=dry_run
            )
            plan.summary.seconds += time.perf_counter() - t0
            if dry_run:
                plan.summary.files_read = len(plan.units)
    if not dry_run and kafka is not None:
        for plan in plans:
            t0 = time.perf_counter()
            _publish(kafka, plan, on_error=on_error, progress=progress, batch_rows=batch_rows)
            plan.summary.seconds += time.perf_counter() - t0
    elif not dry_run:
        assert store is not None
        for plan in plans:
            t0 = time.perf_counter()
            _load(store, plan, on_error=on_error, progress=progress, batch_rows=batch_rows)
            plan.summary.seconds += time.perf_counter() - t0
            _record_meta(plan)
    result.seconds = time.perf_counter() - started
    return result


def _record_meta(plan: _Plan) -> None:
    wm = plan.meta.get(watermark_key(plan.fv.name))
    if wm is not None:
        plan.summary.watermark = parse_time(wm.decode())
    dv = plan.meta.get(delta_version_key(plan.fv.name))
    if dv is not None:
        plan.summary.delta_version = int(dv.decode())


def materialize(
    store: Store | Registry,
    views: Sequence[str] | str | None = None,
    start: dt.datetime | str | None = None,
    end: dt.datetime | str | None = None,
    *,
    as_of_version: int | None = None,
    on_error: OnError = "fail",
    dry_run: bool = False,
    progress: bool = True,
    batch_rows: int = BATCH_ROWS,
    prune_partitions: bool = True,
    via_kafka: bool = False,
    producer: Any = None,
    bootstrap_servers: str | None = None,
    kafka_config: dict[str, Any] | None = None,
    kafka_timeout: float = KAFKA_TIMEOUT_S,
) -> LoadSummary:
    """Loads rows with ``start <= event timestamp < end`` from each view's batch source.

    ``views=None``: every online view with a batch source. ``start``/``end`` None: unbounded.
    ``as_of_version``: read Delta sources as of that table version (time travel).
    ``on_error="fail"``: a validation pass runs first and bad input raises
    :class:`InvalidArgumentError` (file, column, row) before anything is written;
    ``"skip"``: bad rows are skipped and counted. ``dry_run``: validate only.

    A run that covers everything up to ``end`` (``start`` None or not after the stored
    watermark) advances the view's watermark to ``end`` (now if None), so a later
    :func:`materialize_incremental` continues from there. A full load of a Delta table's latest
    version (no window, no ``as_of_version``) records that version as synced.

    ``via_kafka``: publish the rows to each view's stream-source topic instead of writing them
    (``store`` may then be a :class:`Registry`: no store is opened). Every shard and replica
    consuming the topic applies them through the same path, in the same order, under the same
    merge rule. Validation is the same as for a normal load (bad input fails before the first
    record is produced); a view without a ``stream_source`` is an error. No watermark or Delta
    version is recorded anywhere: the nodes apply the rows only when they consume them, and the
    local store (if any) is not one of them, so a watermark here would claim rows it does not
    hold. Records use :func:`serving.kafka_loader.encode_key` keys and the
    ``murmur2_random`` partitioner (``producer``: use this one, created with
    :data:`serving.kafka_loader.PRODUCER_DEFAULTS`; otherwise one per view from its stream
    source, with ``bootstrap_servers`` / ``kafka_config`` overriding its settings). Unless
    ``dry_run``, each view's stream topic must exist and the brokers must answer within
    ``kafka_timeout`` seconds (:class:`StorageError` otherwise) before anything is read.
    Incremental publishing: :func:`materialize_incremental` with ``via_kafka``.
    """
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    t_start, t_end = parse_time(start, now=now), parse_time(end, now=now)
    if t_start is not None and t_end is not None and t_start >= t_end:
        raise InvalidArgumentError(
            f"empty window: start {_iso(t_start)} is not before end {_iso(t_end)}"
        )
    if batch_rows < 1:
        raise InvalidArgumentError(f"batch_rows must be at least 1, got {batch_rows}")
    selected = _select_views(store, views)
    kafka: _KafkaTarget | None = None
    if via_kafka:
        kafka = _kafka_target(
            selected,
            _KafkaTarget(
                producer, bootstrap_servers, dict(kafka_config or {}), timeout=kafka_timeout
            ),
            dry_run=dry_run,
        )
    elif not isinstance(store, Store):
        raise InvalidArgumentError("materialize needs a Store (a Registry only with via_kafka)")
    plans = []
    for fv in selected:
        assert fv.batch_source is not None
        plan = _new_plan(store, fv, t_start, t_end)
        if via_kafka:
            if fv.batch_source.type == "delta":
                _plan_delta(
                    plan,
                    version=as_of_version,
                    synced=None,
                    incremental=False,
                    prune_partitions=prune_partitions,
                    on_error=on_error,
                )
            elif as_of_version is not None:
                raise InvalidArgumentError(
                    f"feature view '{fv.name}': as_of_version applies to Delta sources only "
                    f"(its source is {fv.batch_source.type})"
                )
            else:
                _plan_parquet(plan, prune_partitions=prune_partitions, on_error=on_error)
            plan.summary.notes.append(
                f"published to topic '{fv.stream_source.topic if fv.stream_source else ''}'; "
                f"no watermark recorded (the consuming nodes apply the rows)"
            )
        elif fv.batch_source.type == "delta":
            assert isinstance(store, Store)
            version = _plan_delta(
                plan,
                version=as_of_version,
                synced=None,
                incremental=False,
                prune_partitions=prune_partitions,
                on_error=on_error,
            )
            synced = _get_delta_version(store, fv.name)
            if (
                t_start is None
                and t_end is None
                and as_of_version is None
                and (synced is None or version > synced)
            ):
                plan.meta[delta_version_key(fv.name)] = str(version).encode()
        else:
            assert isinstance(store, Store)
            if as_of_version is not None:
                raise InvalidArgumentError(
                    f"feature view '{fv.name}': as_of_version applies to Delta sources only "
                    f"(its source is {fv.batch_source.type})"
                )
            _plan_parquet(plan, prune_partitions=prune_partitions, on_error=on_error)
            mark = _get_watermark(store, fv.name)
            plan.summary.watermark = mark
            new = t_end or now
            if (t_start is None or (mark is not None and t_start <= mark)) and (
                mark is None or new > mark
            ):
                plan.meta[watermark_key(fv.name)] = _iso(new).encode()
        plans.append(plan)
    return _execute(
        store if isinstance(store, Store) else None,
        plans,
        on_error=on_error,
        dry_run=dry_run,
        progress=progress,
        batch_rows=batch_rows,
        started=started,
        kafka=kafka,
    )


def materialize_incremental(
    store: Store | Registry,
    views: Sequence[str] | str | None = None,
    *,
    end: dt.datetime | str | None = None,
    as_of_version: int | None = None,
    on_error: OnError = "fail",
    dry_run: bool = False,
    progress: bool = True,
    batch_rows: int = BATCH_ROWS,
    prune_partitions: bool = True,
    via_kafka: bool = False,
    producer: Any = None,
    bootstrap_servers: str | None = None,
    kafka_config: dict[str, Any] | None = None,
    state_topic: str = STATE_TOPIC,
    kafka_timeout: float = KAFKA_TIMEOUT_S,
) -> LoadSummary:
    """Loads what is new since each view's last successful run.

    Parquet: rows with ``watermark <= event timestamp < end`` (``end`` default now; no watermark
    yet: from the beginning), then the watermark becomes ``end``. Delta: the files added or
    rewritten since the synced table version, up to the latest version (or ``as_of_version``),
    whatever their event time, then that version is recorded; ``end`` does not apply.
    The new watermark / version is written atomically with the view's last batch.

    ``via_kafka``: publish what is new since the last *published* watermark / version to each
    view's stream-source topic instead (``store`` may be a :class:`Registry`; no store is
    opened). The same selection as above, but the state lives in the compacted Kafka topic
    ``state_topic`` on the cluster of the view's stream topic (one record per stream topic and
    view, :mod:`serving.publish_state`), not in a store; it is recorded only after the broker
    acknowledged every record of the run. Producer settings as for :func:`materialize`;
    ``kafka_timeout`` bounds reaching the brokers and reading / recording the state.
    """
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    t_end = parse_time(end, now=now) or now
    if batch_rows < 1:
        raise InvalidArgumentError(f"batch_rows must be at least 1, got {batch_rows}")
    selected = _select_views(store, views)
    kafka: _KafkaTarget | None = None
    if via_kafka:
        kafka = _kafka_target(
            selected,
            _KafkaTarget(
                producer,
                bootstrap_servers,
                dict(kafka_config or {}),
                state_topic=state_topic,
                timeout=kafka_timeout,
            ),
            dry_run=dry_run,
        )
    elif not isinstance(store, Store):
        raise InvalidArgumentError(
            "materialize_incremental needs a Store (a Registry only with via_kafka)"
        )
    plans = []
    for fv in selected:
        assert fv.batch_source is not None
        published: PublishState | None = None
        if kafka is not None:
            published = _published_state(kafka, fv, dry_run=dry_run)
        if fv.batch_source.type == "delta":
            plan = _new_plan(store, fv, None, None)
            if kafka is not None:
                synced = _published_version(plan, published)
            else:
                assert isinstance(store, Store)
                synced = _get_delta_version(store, fv.name)
            version = _plan_delta(
                plan,
                version=as_of_version,
                synced=synced,
                incremental=True,
                prune_partitions=prune_partitions,
                on_error=on_error,
            )
            if synced is None or version > synced:
                if kafka is not None:
                    plan.publish = _state_of(fv, delta_version=version)
                else:
                    plan.meta[delta_version_key(fv.name)] = str(version).encode()
            else:
                plan.summary.delta_version = synced
        else:
            if as_of_version is not None:
                raise InvalidArgumentError(
                    f"feature view '{fv.name}': as_of_version applies to Delta sources only "
                    f"(its source is {fv.batch_source.type})"
                )
            if kafka is not None:
                mark = published.watermark if published is not None else None
            else:
                assert isinstance(store, Store)
                mark = _get_watermark(store, fv.name)
            plan = _new_plan(store, fv, mark, t_end)
            plan.summary.watermark = mark
            if mark is not None and t_end <= mark:
                done = "published" if kafka is not None else "loaded"
                plan.summary.notes.append(f"already {done} up to {_iso(mark)}")
            else:
                _plan_parquet(plan, prune_partitions=prune_partitions, on_error=on_error)
                if kafka is not None:
                    plan.publish = _state_of(fv, watermark=t_end)
                else:
                    plan.meta[watermark_key(fv.name)] = _iso(t_end).encode()
        if kafka is not None:
            _note_published(plan, published, kafka)
        plans.append(plan)
    result = _execute(
        store if isinstance(store, Store) else None,
        plans,
        on_error=on_error,
        dry_run=dry_run,
        progress=progress,
        batch_rows=batch_rows,
        started=started,
        kafka=kafka,
    )
    if kafka is not None:
        result.state_topic = state_topic
    return result


def _published_state(kafka: _KafkaTarget, fv: FeatureView, *, dry_run: bool) -> PublishState | None:
    """What the state topic says was published of ``fv`` (a dry run creates no topic)."""
    assert fv.stream_source is not None
    return kafka.state(fv, create=not dry_run).get(fv.stream_source.topic, fv.name)


def _published_version(plan: _Plan, published: PublishState | None) -> int | None:
    """The Delta version recorded as published, if it is of this view's current table."""
    if published is None or published.delta_version is None:
        return None
    if published.source_path != plan.summary.path:
        plan.summary.notes.append(
            f"the published Delta version {published.delta_version} is of another table "
            f"({published.source_path}): publishing the table as of its latest version"
        )
        return None
    return published.delta_version


def _state_of(
    fv: FeatureView, *, watermark: dt.datetime | None = None, delta_version: int | None = None
) -> PublishState:
    assert fv.stream_source is not None
    assert fv.batch_source is not None
    return PublishState(
        topic=fv.stream_source.topic,
        view=fv.name,
        source_type=fv.batch_source.type,
        source_path=fv.batch_source.path,
        watermark=watermark,
        delta_version=delta_version,
    )


def _note_published(plan: _Plan, published: PublishState | None, kafka: _KafkaTarget) -> None:
    topic = plan.fv.stream_source.topic if plan.fv.stream_source else "?"
    if published is None:
        since = f"nothing recorded for it in topic '{kafka.state_topic}': from the beginning"
    else:
        at = _iso(published.recorded_at) if published.recorded_at else "?"
        since = (
            f"continuing from the {published.describe()} recorded in topic "
            f"'{kafka.state_topic}' at {at}"
        )
    plan.summary.notes.insert(0, f"publishing to topic '{topic}'; {since}")


# --------------------------------------------------------------------------------------------
# CLI


def _shared_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "views", nargs="*", metavar="VIEW", help="feature views (default: all with a batch_source)"
    )
    p.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="fail: validate everything first and write nothing on bad input (default); "
        "skip: skip bad rows, count them and list the first few",
    )
    p.add_argument("--dry-run", action="store_true", help="validate the sources, write nothing")
    p.add_argument(
        "--as-of-version", type=int, metavar="N", help="Delta sources: read table version N"
    )
    p.add_argument(
        "--batch-rows", type=int, default=BATCH_ROWS, help=f"rows per batch (default {BATCH_ROWS})"
    )
    p.add_argument(
        "--no-partition-pruning",
        dest="prune_partitions",
        action="store_false",
        help="read every date partition (when partitions are not the event's UTC date)",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress reporting on stderr (auto: bar on a terminal, log lines otherwise)",
    )


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Registers ``materialize`` and ``materialize-incremental`` on the CLI's subparsers.

    ``common`` already defines ``--config`` and ``--data-dir``.
    """
    m = subparsers.add_parser(
        "materialize",
        parents=[common],
        help="load rows of a time window from the batch sources",
        description="Load rows with START <= event timestamp < END from each view's batch "
        "source (Parquet file / directory / hive dataset, or Delta table) into the store.",
    )
    _shared_flags(m)
    m.add_argument("--start", help="window start, inclusive (ISO 8601, 'now', 'now-2d')")
    m.add_argument("--end", help="window end, exclusive (default: unbounded)")
    m.add_argument(
        "--via-kafka",
        action="store_true",
        help="publish the rows to each view's stream_source topic instead of writing the "
        "store, so every shard and replica applies them (needs only the registry; no "
        "watermark is recorded)",
    )
    m.set_defaults(func=cmd_materialize)
    inc = subparsers.add_parser(
        "materialize-incremental",
        parents=[common],
        help="load what is new since the last run (watermark / Delta version)",
        description="Load everything since each view's last successful run: Parquet by "
        "event-time watermark up to END (default now), Delta by table version.",
    )
    _shared_flags(inc)
    inc.add_argument("--end", help="Parquet sources: load up to this time (default now)")
    inc.add_argument(
        "--via-kafka",
        action="store_true",
        help="publish what is new since the last published watermark / Delta version to each "
        "view's stream_source topic instead of writing the store (needs only the registry); "
        "the new watermark is recorded in --state-topic once the broker acknowledged every "
        "record",
    )
    inc.add_argument(
        "--state-topic",
        default=os.environ.get("FS_BATCH_STATE_TOPIC", STATE_TOPIC),
        help=f"--via-kafka: the compacted topic holding the published watermarks, on the "
        f"cluster of each view's stream topic; created if missing (default {STATE_TOPIC}; "
        f"env FS_BATCH_STATE_TOPIC)",
    )
    inc.set_defaults(func=cmd_materialize_incremental)
    for p in (m, inc):
        p.add_argument(
            "--bootstrap-servers",
            help="--via-kafka: override every stream source's bootstrap servers",
        )
        p.add_argument(
            "--kafka-timeout",
            type=float,
            default=KAFKA_TIMEOUT_S,
            metavar="SECONDS",
            help=f"--via-kafka: give up when the brokers do not answer within this time "
            f"(default {KAFKA_TIMEOUT_S:g})",
        )
        p.add_argument(
            "--server",
            metavar="URL",
            help="run the job on this server (its admin API, its own store). Without it, the "
            "store in --data-dir is opened here, and only when a server holds it is "
            "FS_SERVER_URL (default http://127.0.0.1:6566) asked instead",
        )
        p.add_argument(
            "--api-key",
            default=os.environ.get("FS_API_KEY"),
            help="admin API key for --server (env FS_API_KEY)",
        )


class _StoreInUse(Exception):
    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir


def _open(args: argparse.Namespace) -> Store:
    data_dir = getattr(args, "data_dir", None) or os.environ.get("FS_DATA_DIR") or ".data/store"
    config = getattr(args, "config", None) or os.environ.get("FS_CONFIG") or "features.yaml"
    kwargs: dict[str, Any] = {}
    if getattr(args, "hot_tier_bytes", None) is not None:
        kwargs["hot_tier_bytes"] = int(args.hot_tier_bytes)
    try:
        return Store(data_dir, config, **kwargs)
    except StorageError as e:
        if store_in_use(e):
            raise _StoreInUse(data_dir) from None
        raise


def _send_to_server(
    args: argparse.Namespace, incremental: bool, data_dir: str, held: bool = True
) -> int:
    """Runs the job on a server through ``POST /admin/materialize``: the one holding the
    store, or the one named by ``--server`` (``held=False``)."""
    body = {
        "views": args.views or None,
        "start": getattr(args, "start", None),
        "end": args.end,
        "incremental": incremental,
        "on_error": args.on_error,
        "dry_run": args.dry_run,
        "as_of_version": args.as_of_version,
    }
    code, answer = send_admin_job(
        args.server,
        args.api_key,
        "/admin/materialize",
        body,
        what="job",
        data_dir=data_dir,
        held=held,
    )
    if answer is not None:
        print(answer["summary"])
    return code


def _run_via_kafka(args: argparse.Namespace, incremental: bool) -> int:
    """``materialize[-incremental] --via-kafka``: needs the registry only, never opens the
    store (so it works while a server holds it, or where there is none). Exit codes: 1 bad
    input, 2 brokers unreachable or records / state not acknowledged."""
    config = getattr(args, "config", None) or os.environ.get("FS_CONFIG") or "features.yaml"
    progress = {"always": True, "never": False}.get(args.progress, True)
    # librdkafka logs every failed connection attempt; the run's own error names the problem
    _RDKAFKA_LOG.setLevel(logging.CRITICAL)
    common: dict[str, Any] = {
        "as_of_version": args.as_of_version,
        "on_error": args.on_error,
        "dry_run": args.dry_run,
        "progress": progress,
        "batch_rows": args.batch_rows,
        "prune_partitions": args.prune_partitions,
        "via_kafka": True,
        "bootstrap_servers": args.bootstrap_servers,
        "kafka_timeout": args.kafka_timeout,
    }
    try:
        registry = Registry.from_yaml(config)
        if incremental:
            summary = materialize_incremental(
                registry, args.views or None, end=args.end, state_topic=args.state_topic, **common
            )
        else:
            summary = materialize(registry, args.views or None, args.start, args.end, **common)
    except StorageError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except FeatureServingError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def _run_cli(args: argparse.Namespace, incremental: bool) -> int:
    if getattr(args, "via_kafka", False):
        return _run_via_kafka(args, incremental)
    if args.server is not None:  # a server named on the command line runs the job
        data_dir = args.data_dir or os.environ.get("FS_DATA_DIR") or ".data/store"
        return _send_to_server(args, incremental, data_dir, held=False)
    args.server = os.environ.get("FS_SERVER_URL", "http://127.0.0.1:6566")
    try:
        store = _open(args)
    except _StoreInUse as e:
        return _send_to_server(args, incremental, e.data_dir)
    progress = {"always": True, "never": False}.get(args.progress, True)
    common: dict[str, Any] = {
        "as_of_version": args.as_of_version,
        "on_error": args.on_error,
        "dry_run": args.dry_run,
        "progress": progress,
        "batch_rows": args.batch_rows,
        "prune_partitions": args.prune_partitions,
    }
    try:
        with store:
            if incremental:
                summary = materialize_incremental(store, args.views or None, end=args.end, **common)
            else:
                summary = materialize(store, args.views or None, args.start, args.end, **common)
    except InvalidArgumentError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    return _run_cli(args, incremental=False)


def cmd_materialize_incremental(args: argparse.Namespace) -> int:
    return _run_cli(args, incremental=True)
