"""Planning a batch run over an Apache Hudi table (the ``hudi`` package, hudi-rs; reads only):
a snapshot's file slices (base file merged with its logs), or Hudi's incremental query
between the synced instant and the target one; deletes found by a key diff.

A version is a completed instant of the timeline (``20261203142501123``, its requested time),
as an integer. Copy-on-write and merge-on-read tables read the same way: the file group reader
merges a slice's log files (updates and deletes) into its base file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from serving.errors import InvalidArgumentError
from serving.loaders.batch.changes import deleted_entities
from serving.loaders.batch.meta import OnError
from serving.loaders.batch.plan import Plan, _reader_unit
from serving.registry import FeatureView

#: operations that never remove a record (compaction and clustering rewrite them): a range of
#: only these deletes nothing
_ADDS_ONLY = {"insert", "upsert", "bulk_insert", "compact", "cluster"}


def _hudi() -> Any:
    try:
        import hudi
    except ImportError:
        raise InvalidArgumentError(
            "Hudi sources need the hudi package: pip install 'feature-serving[hudi]'"
        ) from None
    return hudi


def open_table(fv: FeatureView) -> Any:
    hudi = _hudi()
    assert fv.batch_source is not None
    path, view = fv.batch_source.path, fv.name
    if "://" not in path:
        if not os.path.exists(path):
            raise InvalidArgumentError(f"feature view '{view}': batch source {path} does not exist")
        if not os.path.isdir(os.path.join(path, ".hoodie")):
            raise InvalidArgumentError(
                f"feature view '{view}': batch source {path} is not a Hudi table (no .hoodie)"
            )
    try:
        return hudi.HudiTable(path)
    except Exception as e:  # hudi raises HudiCoreError
        raise InvalidArgumentError(
            f"feature view '{view}': cannot open Hudi table {path}: {e}"
        ) from None


def _instants(table: Any) -> list[Any]:
    """The completed instants that change data, oldest first."""
    tl = table.get_timeline()
    found = [
        *tl.get_completed_commits(),
        *tl.get_completed_deltacommits(),
        *tl.get_completed_replacecommits(),
    ]
    return sorted(found, key=lambda i: int(i.timestamp))


def _target(table: Any, version: int | None, view: str, path: str) -> Any | None:
    instants = _instants(table)
    if version is None:
        return instants[-1] if instants else None
    for i in instants:
        if int(i.timestamp) == version:
            return i
    known = ", ".join(i.timestamp for i in instants[-5:]) or "none"
    raise InvalidArgumentError(
        f"feature view '{view}': Hudi table {path} has no completed instant {version} "
        f"(latest: {known})"
    )


def _options(**kw: Any) -> Any:
    hudi = _hudi()
    opts = hudi.HudiReadOptions(projection=kw.pop("projection", None))
    if kw.get("as_of") is not None:
        opts = opts.with_as_of_timestamp(str(kw["as_of"]))
    if kw.get("start") is not None:
        opts = (
            opts.with_query_type(hudi.HudiQueryType.Incremental)
            .with_start_timestamp(str(kw["start"]))
            .with_end_timestamp(str(kw["end"]))
        )
    if kw.get("batch_rows"):
        opts = opts.with_batch_size(int(kw["batch_rows"]))
    return opts


def read_version(fv: FeatureView, version: int | None, columns: list[str]) -> pa.Table:
    """The table's rows at an instant (latest if None), only ``columns``."""
    table = open_table(fv)
    assert fv.batch_source is not None
    target = _target(table, version, fv.name, fv.batch_source.path)
    schema = table.get_schema()
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise InvalidArgumentError(
            f"feature view '{fv.name}': Hudi table {fv.batch_source.path}: missing column "
            f"'{missing[0]}'"
        )
    if target is None:
        return pa.schema([schema.field(c) for c in columns]).empty_table()
    return _read(table, columns, target.timestamp)


def _read(table: Any, columns: list[str], as_of: str) -> pa.Table:
    """A snapshot's ``columns`` (logs merged), in memory."""
    schema = table.get_schema()
    fields = pa.schema([schema.field(c) for c in columns])
    batches = table.read(_options(projection=columns, as_of=as_of))
    return pa.Table.from_batches(
        [b.select(columns).cast(fields) for b in batches if b.num_rows], schema=fields
    )


def latest_version(fv: FeatureView) -> int | None:
    assert fv.batch_source is not None
    target = _target(open_table(fv), None, fv.name, fv.batch_source.path)
    return int(target.timestamp) if target is not None else None


def _operation(table: Any, instant: Any) -> str:
    try:
        meta = json.loads(table.get_timeline().get_instant_metadata_in_json(instant))
    except Exception:  # unknown: treated as one that may delete
        return "?"
    return str(meta.get("operationType") or "?").lower()


def _slice_reader(table: Any, file_slice: Any, as_of: str) -> Any:
    def read(columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        opts = _options(projection=columns, as_of=as_of, batch_rows=batch_rows)
        reader = table.create_file_group_reader_with_options(opts)
        for batch in reader.read_file_slice_stream(file_slice, opts):
            yield batch.select(columns)

    return read


def _incremental_reader(table: Any, start: str, end: str) -> Any:
    def read(columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        # hudi-rs has no streaming incremental read yet: the changed records come in one go
        for batch in table.read(_options(projection=columns, start=start, end=end)):
            yield from batch.select(columns).to_batches(max_chunksize=batch_rows)

    return read


def plan_hudi(
    plan: Plan,
    *,
    version: int | None,
    synced: int | None,
    incremental: bool,
    prune_partitions: bool,
    on_error: OnError,
) -> int | None:
    """Plans a Hudi source; returns the instant read (None: no completed commit yet)."""
    del prune_partitions  # Hudi prunes its own partitions
    fv, path = plan.fv, plan.summary.path
    table = open_table(fv)
    target = _target(table, version, fv.name, path)
    if target is None:
        plan.summary.notes.append("Hudi table has no completed commit yet: nothing to load")
        return None
    tid = int(target.timestamp)
    plan.summary.table_version = tid
    schema = table.get_schema()
    if synced is not None and synced < tid:
        after = [i for i in _instants(table) if synced < int(i.timestamp) <= tid]
        ops = [(i, _operation(table, i)) for i in after]
        shown = ", ".join(f"{i.timestamp} {i.action}:{op}" for i, op in ops)
        if incremental:
            plan.summary.notes.append(f"Hudi instants after {synced} [{shown}]: incremental query")
            _reader_unit(
                plan,
                f"{path} (instants {synced}..{tid}]",
                schema,
                0,
                _incremental_reader(table, str(synced), target.timestamp),
                on_error=on_error,
            )
        changing = [(i, op) for i, op in ops if op not in _ADDS_ONLY]
        if changing:
            _deletes(plan, table, synced, target, changing[0][0])
        if incremental:
            return tid
    elif synced is not None and incremental:
        plan.summary.notes.append(f"Hudi table at instant {tid}, already synced")
        return tid
    try:
        slices = table.get_file_slices(_options(as_of=target.timestamp))
    except Exception as e:
        raise InvalidArgumentError(
            f"feature view '{fv.name}': cannot list Hudi table {path}: {e}"
        ) from None
    for s in slices:
        label = os.path.join(path, s.base_file_relative_path())
        _reader_unit(
            plan,
            label,
            schema,
            int(s.num_records),
            _slice_reader(table, s, target.timestamp),
            on_error=on_error,
        )
    return tid


def _deletes(plan: Plan, table: Any, synced: int, target: Any, first: Any) -> None:
    fv = plan.fv
    assert fv.batch_source is not None
    keys = [k.name for k in fv.join_keys]
    ts_field = fv.batch_source.timestamp_field
    try:
        old = _read(table, [*keys, ts_field], str(synced))
        new = _read(table, keys, target.timestamp)
    except Exception as e:
        raise InvalidArgumentError(
            f"feature view '{fv.name}': cannot read Hudi table {plan.summary.path} for its "
            f"deletes: {e}"
        ) from None
    at = dt.datetime.fromtimestamp(first.epoch_mills / 1000, tz=dt.UTC)
    plan.deletes = deleted_entities(fv, old, new, at)
    plan.summary.notes.append(
        f"{plan.deletes.num_rows} entities deleted after instant {synced} (key diff of instants "
        f"{synced} and {target.timestamp}): tombstones timed "
        f"{at.isoformat().replace('+00:00', 'Z')} or their row's later event time"
    )
