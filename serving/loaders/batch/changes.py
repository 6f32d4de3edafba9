"""What changed between two versions of a table, row by row: the entities a table format's
commits deleted (applied as tombstones by incremental runs) and the rows added, changed and
deleted between two versions (``feature-serving diff``).

Both work on *entity rows*: a version's rows reduced to one per entity, the one the merge rule
keeps (the latest event time; between equal times, the last one read), because that is what
the online store would hold after loading the version.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from serving.loaders.batch.convert import _to_timestamp
from serving.loaders.batch.meta import US_UTC
from serving.registry import EVENT_TIMESTAMP, FeatureView

_ROW = "__fs_row"


def source_columns(fv: FeatureView, *, features: bool) -> list[str]:
    """The source columns of a view: join keys, timestamp (and every feature)."""
    assert fv.batch_source is not None
    cols = [k.name for k in fv.join_keys] + [fv.batch_source.timestamp_field]
    return cols + (list(fv.feature_names) if features else [])


def entity_rows(fv: FeatureView, table: pa.Table) -> pa.Table:
    """One row per entity of a source table (source column names, ``event_timestamp`` as a UTC
    timestamp replacing the view's timestamp column): the row with the latest event time,
    and between equal times the last one. Rows with a null key or time are dropped."""
    assert fv.batch_source is not None
    keys = [k.name for k in fv.join_keys]
    ts_field = fv.batch_source.timestamp_field
    ts, _bad = _to_timestamp(table.column(ts_field).combine_chunks())
    others = [c for c in table.column_names if c not in (ts_field, EVENT_TIMESTAMP)]
    t = pa.table(
        {**{c: table.column(c) for c in others}, EVENT_TIMESTAMP: ts},
    )
    valid = pc.is_valid(t.column(EVENT_TIMESTAMP))
    for k in keys:
        valid = pc.and_(valid, pc.is_valid(t.column(k)))
    t = t.filter(valid)
    if t.num_rows == 0:
        return t
    t = t.append_column(_ROW, pa.array(range(t.num_rows), type=pa.int64()))
    t = t.sort_by([(EVENT_TIMESTAMP, "ascending"), (_ROW, "ascending")])
    t = t.set_column(t.schema.get_field_index(_ROW), _ROW, pa.array(range(t.num_rows)))
    last = t.group_by(keys, use_threads=False).aggregate([(_ROW, "max")])
    return (
        t.take(last.column(f"{_ROW}_max"))
        .drop_columns([_ROW])
        .sort_by([(k, "ascending") for k in keys])
    )


def _key_filter(table: pa.Table, keys: list[str], other: pa.Table, *, inside: bool) -> pa.Table:
    """Rows of ``table`` whose key is (``inside``) or is not in ``other``."""
    if table.num_rows == 0:
        return table
    if len(keys) == 1:
        hit = pc.is_in(table.column(keys[0]), value_set=other.column(keys[0]).combine_chunks())
    else:
        probe = other.select(keys).append_column("__fs_hit", pa.array([True] * other.num_rows))
        joined = table.append_column(_ROW, pa.array(range(table.num_rows))).join(
            probe, keys, join_type="left outer", use_threads=False
        )
        joined = joined.sort_by(_ROW)
        hit = pc.fill_null(joined.column("__fs_hit"), False)
    return table.filter(hit if inside else pc.invert(hit))


def deleted_entities(
    fv: FeatureView, old: pa.Table, new_keys: pa.Table, at: dt.datetime
) -> pa.Table:
    """The entities of ``old`` (a version's key and timestamp columns) that ``new_keys`` (a
    later version's key columns) no longer holds: join keys and ``event_timestamp``, which is
    ``at`` (the delete's commit time) or the deleted row's own event time if later, so a delete
    always beats the row it deletes and a newer row (from a stream) survives it."""
    keys = [k.name for k in fv.join_keys]
    gone = _key_filter(entity_rows(fv, old), keys, new_keys, inside=False)
    when = pa.scalar(at.astimezone(dt.UTC), type=US_UTC).cast(pa.int64())
    micros = gone.column(EVENT_TIMESTAMP).cast(pa.int64())
    times = pc.max_element_wise(micros, when).cast(US_UTC)
    return pa.table({**{k: gone.column(k) for k in keys}, EVENT_TIMESTAMP: times})


@dataclass
class Diff:
    """Rows added, changed and deleted between two versions (entity rows, source columns)."""

    view: str
    source: str
    old: str
    new: str
    added: pa.Table
    changed_old: pa.Table
    changed_new: pa.Table
    deleted: pa.Table
    notes: list[str] = field(default_factory=list)
    #: the view's join keys (how a changed row is named when shown)
    keys: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "added": self.added.num_rows,
            "changed": self.changed_new.num_rows,
            "deleted": self.deleted.num_rows,
        }


def _same(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.Array:
    """Element-wise equality, nulls equal to nulls (lists compared by value)."""
    a, b = a.combine_chunks(), b.combine_chunks()
    try:
        eq = pc.equal(a, b)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([x == y for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True)])
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    return pc.or_(pc.fill_null(eq, False), both_null)


def diff_rows(fv: FeatureView, old: pa.Table, new: pa.Table) -> tuple[pa.Table, ...]:
    """``(added, changed_old, changed_new, deleted)`` between two tables of entity rows."""
    keys = [k.name for k in fv.join_keys]
    added = _key_filter(new, keys, old, inside=False)
    deleted = _key_filter(old, keys, new, inside=False)
    both_new = _key_filter(new, keys, old, inside=True).sort_by([(k, "ascending") for k in keys])
    both_old = _key_filter(old, keys, new, inside=True).sort_by([(k, "ascending") for k in keys])
    same: Any = None
    for c in [EVENT_TIMESTAMP, *fv.feature_names]:
        if c not in both_new.column_names or c not in both_old.column_names:
            continue
        eq = _same(both_old.column(c), both_new.column(c))
        same = eq if same is None else pc.and_(same, eq)
    differs = pa.array([False] * both_new.num_rows) if same is None else pc.invert(same)
    return added, both_old.filter(differs), both_new.filter(differs), deleted
