"""Per-batch conversion to the registry's Arrow schema, with row-level checks (bad rows named by
file, column and row)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from serving.errors import InvalidArgumentError
from serving.loaders.batch.meta import CAST_ERRORS, MAX_REPORTED_ERRORS, US_UTC, _micros
from serving.loaders.batch.plan import Plan, Unit
from serving.loaders.batch.summary import RowError


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
        except CAST_ERRORS:
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
        return arr.cast(US_UTC)
    except CAST_ERRORS:
        # no zone offset: naive text is taken as UTC
        return arr.cast(pa.timestamp("us")).cast(US_UTC)


def _to_timestamp(arr: pa.Array) -> tuple[pa.Array, list[int]]:
    t = arr.type
    if t == US_UTC:
        return arr, []
    if pa.types.is_timestamp(t):
        # naive timestamps are taken as UTC; sub-microsecond digits are truncated
        return arr.cast(US_UTC, safe=False), []
    if pa.types.is_date(t):
        return arr.cast(US_UTC), []
    return _bisect_cast(arr, US_UTC, _parse_text_ts)


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
class Prepared:
    batch: pa.RecordBatch | None
    scanned: int
    in_window: int
    bad: int
    errors: list[RowError]


def _bool_np(arr: pa.Array) -> npt.NDArray[np.bool_]:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def _prepare(plan: Plan, unit: Unit, row0: int, batch: pa.RecordBatch, *, build: bool) -> Prepared:
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
    return Prepared(out_batch, n, int(in_window.sum()), n_bad, errors)
