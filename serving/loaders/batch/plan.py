"""Planning a batch run over Parquet files: the files and row groups that can hold rows of the
window (hive/date partitions and row-group statistics pruned), each file's columns checked
against the registry. Nothing is read yet."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as pads

from serving.errors import InvalidArgumentError
from serving.loaders.batch.meta import CAST_ERRORS, DATE_RE, OnError
from serving.loaders.batch.summary import ViewSummary
from serving.loaders.publish_state import PublishState
from serving.registry import EVENT_TIMESTAMP, FeatureView


@dataclass
class RowGroup:
    id: int
    first_row: int
    num_rows: int


@dataclass
class Column:
    source: str
    target: pa.Field
    kind: Literal["key", "ts", "feature"]
    #: the file's type differs from the registry's: values are cast and checked row by row
    check: bool


#: reads a unit that is not a plain Parquet file (a Hudi file slice merging its logs, an
#: Iceberg file with delete files): ``(columns, batch_rows) -> record batches``
Reader = Callable[[list[str], int], Iterator[pa.RecordBatch]]


@dataclass
class Unit:
    """One data file and the row groups of it to read (or one ``reader``, one pseudo group)."""

    label: str
    fragment: Any
    scan_schema: pa.Schema
    row_groups: list[RowGroup]
    columns: list[Column]
    #: (partition column, day) when the file was kept by date-partition pruning: its rows must
    #: then all fall on that day, which is checked while reading
    date_partition: tuple[str, dt.date] | None = None
    reader: Reader | None = None

    @property
    def rows(self) -> int:
        return sum(rg.num_rows for rg in self.row_groups)


@dataclass
class Plan:
    fv: FeatureView
    schema: pa.Schema
    units: list[Unit]
    start: dt.datetime | None
    end: dt.datetime | None
    meta: dict[str, bytes]
    summary: ViewSummary
    skipped_files: list[tuple[Unit, str, str]] = field(default_factory=list)
    #: incremental via-kafka runs: the state recorded in the state topic once every row of
    #: the plan was acknowledged
    publish: PublishState | None = None
    #: table formats: entities deleted in the source since the synced version (join keys and
    #: ``event_timestamp``, the delete's time), applied as tombstones after the rows
    deletes: pa.Table | None = None

    @property
    def total_rows(self) -> int:
        return sum(u.rows for u in self.units)


def _source_path(fv: FeatureView) -> str:
    assert fv.batch_source is not None
    return fv.batch_source.location


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
    except CAST_ERRORS:
        return False
    return True


def _columns(
    fv: FeatureView, schema: pa.Schema, registry_schema: pa.Schema
) -> tuple[list[Column], list[tuple[str, str]]]:
    """The columns to read from a file of ``schema``, and the problems ``(column, reason)``."""
    assert fv.batch_source is not None
    ts_field = fv.batch_source.timestamp_field
    wanted: list[tuple[str, pa.Field, Literal["key", "ts", "feature"]]] = []
    for k in fv.join_keys:
        wanted.append((k.name, registry_schema.field(k.name), "key"))
    wanted.append((ts_field, registry_schema.field(EVENT_TIMESTAMP), "ts"))
    for f in fv.features:
        wanted.append((f.name, registry_schema.field(f.name), "feature"))
    columns: list[Column] = []
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
            columns.append(Column(source, target, kind, check=src_type != target.type))
            continue
        if src_type != target.type and not _castable(src_type, target.type):
            problems.append(
                (source, f"has type {src_type}, which cannot be converted to {target.type}")
            )
            continue
        columns.append(Column(source, target, kind, check=src_type != target.type))
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
        elif isinstance(value, str) and DATE_RE.match(value):
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
    plan: Plan,
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
    shared: tuple[list[Column], list[tuple[str, str]]] | None = None
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
            offsets.append(RowGroup(i, row, n))
            row += n
        ids = [rg.id for rg in offsets]
        if ts_field in scan_schema.names:
            expr = _ts_filter(scan_schema.field(ts_field).type, ts_field, start, end)
            if expr is not None:
                with contextlib.suppress(*CAST_ERRORS):
                    ids = [rg.id for rg in fragment.subset(filter=expr).row_groups]
        if shared is not None:
            columns, problems = shared
        else:
            columns, problems = _columns(fv, scan_schema, plan.schema)
        unit = Unit(
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


def _reader_unit(
    plan: Plan, label: str, schema: pa.Schema, rows: int, reader: Reader, *, on_error: OnError
) -> None:
    """Adds a unit read by ``reader`` (``rows``: its row count, or an estimate for progress),
    after the same column checks as a Parquet file."""
    columns, problems = _columns(plan.fv, schema, plan.schema)
    unit = Unit(label, None, schema, [RowGroup(0, 0, rows)], columns, None, reader)
    if problems:
        column, reason = problems[0]
        if on_error == "fail":
            more = f" (and {len(problems) - 1} more column problems)" if len(problems) > 1 else ""
            raise InvalidArgumentError(
                f"feature view '{plan.fv.name}': {label}: column '{column}': {reason}{more}"
            )
        plan.skipped_files.append((unit, column, reason))
        return
    plan.units.append(unit)


def _open_parquet(path: str) -> Any:
    try:
        return pads.dataset(path, format="parquet", partitioning="hive")
    except (OSError, pa.ArrowException) as e:
        raise InvalidArgumentError(f"cannot open Parquet source {path}: {e}") from None


def _plan_parquet(plan: Plan, *, prune_partitions: bool, on_error: OnError) -> None:
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
