"""Appending rows to a view's batch source (Feast's offline push): the write side of the
sources the batch loader reads, so the next ``materialize-incremental`` and any training
pipeline reading the source see the rows.

- Parquet: the source must be a directory (the loader reads every Parquet file in it); the rows
  become one new file, written under a hidden temporary name in the same directory (readers
  skip names starting with ``.``), fsynced, then renamed into place and the directory fsynced.
  A reader sees the whole file or none of it; a crash leaves at most a hidden temporary file.
  A temporary file left by a crash is removed when a server starts (:func:`remove_stale_temps`,
  files older than :data:`STALE_TEMP_S`, so that a push of another node writing into the same
  directory at that moment keeps its file).
- Delta: one append commit through ``deltalake`` (the commit is Delta's atomic step).

The rows are cast to the source's own schema first (the file schema already in the directory,
the Delta table's schema), so the new data reads back like the old; a column the source lacks
fails the append before anything is written.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from serving.errors import InvalidArgumentError
from serving.loaders.batch.delta import _deltalake
from serving.registry import EVENT_TIMESTAMP, FeatureView

#: a push's temporary file older than this is a crash's leftover (writing one takes seconds)
STALE_TEMP_S = 3600.0
_TEMP_PREFIX, _TEMP_SUFFIX = ".push-", ".parquet.tmp"


@dataclass(frozen=True)
class Appended:
    """What an append wrote: the new Parquet file, or the Delta table and its new version."""

    view: str
    rows: int
    path: str
    delta_version: int | None = None

    def describe(self) -> str:
        if self.delta_version is not None:
            return f"{self.rows} rows to Delta table {self.path} (version {self.delta_version})"
        return f"{self.rows} rows to {self.path}"


@dataclass(frozen=True)
class PreparedAppend:
    """Rows cast to the source's schema, checked, not written yet (:func:`prepare`)."""

    view: FeatureView
    table: pa.Table


def _source_schema(fv: FeatureView, rows: pa.Table) -> pa.Schema:
    """The schema the source already has (its files' or the Delta table's); the rows' own when
    the source holds nothing yet."""
    assert fv.batch_source is not None
    src = fv.batch_source
    if src.type in ("iceberg", "hudi"):
        raise InvalidArgumentError(
            f"feature view '{fv.name}': offline pushes to {src.type} sources "
            f"({src.location}) are not supported; write them with the table's own engine, "
            f"or use a Parquet directory or a Delta table"
        )
    if src.type == "delta":
        deltalake = _deltalake()
        if os.path.exists(src.path) and deltalake.DeltaTable.is_deltatable(src.path):
            table = deltalake.DeltaTable(src.path)
            schema: pa.Schema = pa.schema(table.schema().to_arrow())
            return schema
        return rows.schema
    if "://" in src.path:
        raise InvalidArgumentError(
            f"feature view '{fv.name}': offline pushes to object-store Parquet sources "
            f"({src.path}) are not supported; use a local directory or a Delta table"
        )
    if os.path.isfile(src.path):
        raise InvalidArgumentError(
            f"feature view '{fv.name}': its batch_source path {src.path} is a single Parquet "
            "file; an offline push adds a new file, so the source must be a directory of "
            "Parquet files (or a Delta table)"
        )
    if not os.path.isdir(src.path):
        return rows.schema
    dataset = pads.dataset(src.path, format="parquet", partitioning="hive")
    top = os.path.normpath(src.path)
    if any(os.path.dirname(os.path.normpath(f)) != top for f in dataset.files):
        raise InvalidArgumentError(
            f"feature view '{fv.name}': offline pushes to a partitioned source (files in "
            f"subdirectories of {src.path}) are not supported"
        )
    return dataset.schema if dataset.files else rows.schema


def prepare(fv: FeatureView, rows: pa.Table) -> PreparedAppend:
    """The rows of ``rows`` (the write path's schema) as the view's batch source stores them:
    the timestamp column under the source's ``timestamp_field``, every column cast to the
    source's type, the source's other columns null."""
    if fv.batch_source is None:
        raise InvalidArgumentError(
            f"feature view '{fv.name}' has no batch_source: an offline push appends to it"
        )
    ts_field = fv.batch_source.timestamp_field
    if ts_field != EVENT_TIMESTAMP:
        rows = rows.rename_columns(
            [ts_field if c == EVENT_TIMESTAMP else c for c in rows.column_names]
        )
    schema = _source_schema(fv, rows)
    columns = []
    given = set(rows.column_names)  # pyarrow rebuilds the list on every access
    for field in schema:
        if field.name in given:
            col = rows.column(field.name)
            try:
                columns.append(col.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise InvalidArgumentError(
                    f"feature view '{fv.name}': column '{field.name}' ({col.type}) cannot be "
                    f"stored as the batch source's {field.type}: {e}"
                ) from None
        elif field.nullable:
            columns.append(pa.nulls(rows.num_rows, field.type))
        else:
            raise InvalidArgumentError(
                f"feature view '{fv.name}': the batch source has a non-null column "
                f"'{field.name}' that the view does not write"
            )
    names = set(schema.names)
    missing = [n for n in rows.column_names if n not in names]
    if missing:
        raise InvalidArgumentError(
            f"feature view '{fv.name}': the batch source {fv.batch_source.path} has no column "
            f"{', '.join(repr(m) for m in missing)}"
        )
    return PreparedAppend(fv, pa.Table.from_arrays(columns, schema=schema))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append(prepared: PreparedAppend) -> Appended:
    """Writes prepared rows to the source (see the module's docstring for the atomic step)."""
    fv, table = prepared.view, prepared.table
    assert fv.batch_source is not None
    src = fv.batch_source
    try:
        if src.type == "delta":
            return _append_delta(fv.name, src.path, table)
        return _append_parquet(fv.name, src.path, table)
    except OSError as e:
        from serving.errors import StorageError

        raise StorageError(
            f"feature view '{fv.name}': cannot append to batch source {src.path}: {e}"
        ) from None


def _append_parquet(view: str, directory: str, table: pa.Table) -> Appended:
    os.makedirs(directory, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name = f"push-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
    final = os.path.join(directory, name)
    temp = os.path.join(directory, f".{name}.tmp")
    try:
        with open(temp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, final)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    _fsync_dir(directory)
    return Appended(view, table.num_rows, final)


def _append_delta(view: str, path: str, table: pa.Table) -> Appended:
    deltalake: Any = _deltalake()
    deltalake.write_deltalake(path, table, mode="append")
    version = int(deltalake.DeltaTable(path).version())
    return Appended(view, table.num_rows, path, version)


def remove_stale_temps(fv: FeatureView, *, older_than: float = STALE_TEMP_S) -> list[str]:
    """Removes the temporary files of offline pushes to ``fv``'s Parquet directory that a crash
    left behind (older than ``older_than`` seconds); returns their paths."""
    src = fv.batch_source
    if src is None or src.type != "parquet" or "://" in src.path or not os.path.isdir(src.path):
        return []
    now = time.time()
    removed: list[str] = []
    for entry in os.scandir(src.path):
        if not (entry.name.startswith(_TEMP_PREFIX) and entry.name.endswith(_TEMP_SUFFIX)):
            continue
        try:
            if now - entry.stat().st_mtime > older_than:
                os.unlink(entry.path)
                removed.append(entry.path)
        except FileNotFoundError:
            continue  # removed meanwhile (another node starting)
    return removed
