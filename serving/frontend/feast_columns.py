"""Feast's ``df`` (a JSON object of columns, as ``PushFeaturesRequest`` and
``WriteToFeatureStoreRequest`` carry it) into the Arrow table a view's write path takes.

Every value is converted by pyarrow (``pa.array`` over the decoded JSON list, then casts in
Arrow's kernels), never by a Python loop per value; only a column that fails is walked in
Python, to name the first bad row. Nothing here writes: a table comes back only when every
column of the view converted, so a bad batch is refused whole.

Column rules (docs/feast-compatibility.md, "Writes"):

- every join key, the event timestamp (``event_timestamp``, or the view's batch-source
  ``timestamp_field``) and every feature of the view are required; other columns (Feast's SDK
  sends ``created``) are ignored;
- numbers go to int / float features (an integer feature refuses ``1.5``: no silent
  truncation), ``true`` / ``false`` to bool, strings to string features, base64 text to bytes
  features, lists of numbers of the view's ``dim`` to float32_array features;
- timestamps (the event timestamp and timestamp features): ISO 8601 / RFC 3339 text, with a
  zone offset or without (then UTC, as Feast's SDK sends them), or epoch seconds as numbers
  (Feast's ``UnixTimestamp``);
- join keys and the event timestamp must not be null; features may be.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from serving.errors import InvalidArgumentError
from serving.registry import EVENT_TIMESTAMP, FeatureView, Registry

_UTC_US = pa.timestamp("us", tz="UTC")

#: what a JSON value of each Arrow target may be, for naming the first bad row
_EXPECTED: dict[str, tuple[str, tuple[type, ...]]] = {
    "int": ("an integer", (int,)),
    "float": ("a number", (int, float)),
    "bool": ("true or false", (bool,)),
    "string": ("a string", (str,)),
    "binary": ("base64 text", (str,)),
    "timestamp": ("an ISO 8601 time or epoch seconds", (str, int, float)),
    "list": ("a list of numbers", (list,)),
}


def _kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t):
        return "string"
    if pa.types.is_binary(t):
        return "binary"
    if pa.types.is_timestamp(t):
        return "timestamp"
    return "list"


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _bad_row(
    name: str,
    values: list[Any],
    target: pa.DataType,
    why: str,
    *,
    per_second: float = 1e6,
    what: str = "df",
) -> InvalidArgumentError:
    """The first row of a column that failed to convert (walked only on this error path)."""
    expected, types = _EXPECTED[_kind(target)]
    for i, v in enumerate(values):
        if v is None:
            continue
        ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
        if ok:
            try:
                _convert(name, [v], target, per_second)
            except InvalidArgumentError:
                ok = False
        if not ok:
            return InvalidArgumentError(
                f"{what}['{name}'] row {i}: expected {expected} ({target}), got {_json_kind(v)} "
                f"{v!r:.80}"
            )
    return InvalidArgumentError(f"{what}['{name}']: cannot convert to {target}: {why}")


def _timestamps(values: list[Any], arr: pa.Array, per_second: float = 1e6) -> pa.Array:
    """``per_second``: how many micros an epoch number's unit is (Feast: seconds; v1: 1, micros)."""
    if pa.types.is_string(arr.type):
        try:
            return pc.cast(arr, _UTC_US)
        except pa.ArrowInvalid:
            # no zone offset: UTC, the way Feast's SDK writes its naive UTC datetimes
            return pc.assume_timezone(pc.cast(arr, pa.timestamp("us")), "UTC")
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        if per_second == 1 and pa.types.is_integer(arr.type):
            return pc.cast(pc.cast(arr, pa.int64()), _UTC_US)
        micros = pc.round(pc.multiply(pc.cast(arr, pa.float64()), per_second))
        return pc.cast(pc.cast(micros, pa.int64()), _UTC_US)
    raise pa.ArrowInvalid(f"not a time: {arr.type}")


_B64 = np.full(256, 255, dtype=np.uint8)
_B64[
    np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", np.uint8)
] = np.arange(64, dtype=np.uint8)
_B64[ord("=")] = 0


def _base64(arr: pa.Array) -> pa.Array:
    """Base64 text to bytes for a whole column in numpy: padded base64 of each value is a
    multiple of 4 characters, so the column's character buffer (the values back to back) is
    decoded quad by quad at once, and each value's padding bytes are cut afterwards."""
    if not pa.types.is_string(arr.type):
        raise pa.ArrowInvalid(f"not base64 text: {arr.type}")
    arr = pa.concat_arrays([arr])  # offset 0, its own buffers
    n = len(arr)
    validity, offsets, chars_buf = arr.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32, count=n + 1)
    sizes = np.diff(bounds)
    if np.any(sizes & 3):
        raise pa.ArrowInvalid("base64 text must be padded to a multiple of 4 characters")
    if n == 0 or bounds[-1] == 0:  # only empty strings and nulls
        return pc.cast(arr, pa.binary())
    raw = np.frombuffer(chars_buf, dtype=np.uint8, count=int(bounds[-1]))
    six = _B64[raw]
    if np.any(six == 255):
        raise pa.ArrowInvalid("invalid base64 character")
    ends = bounds[1:][sizes > 0]
    one = raw[ends - 1] == ord("=")
    pad = one.astype(np.int64) + (one & (raw[ends - 2] == ord("=")))
    if int(np.count_nonzero(raw == ord("="))) != int(pad.sum()):
        raise pa.ArrowInvalid("base64 padding '=' inside a value")
    q = six.reshape(-1, 4).astype(np.uint32)
    word = (q[:, 0] << 18) | (q[:, 1] << 12) | (q[:, 2] << 6) | q[:, 3]
    out = np.stack([(word >> 16) & 255, (word >> 8) & 255, word & 255], axis=1).astype(np.uint8)
    keep = np.ones(out.size, dtype=bool)
    last = ends // 4 * 3  # one past each non-empty value's decoded bytes, before the cut
    keep[last[pad >= 1] - 1] = False
    keep[last[pad == 2] - 2] = False
    data = out.reshape(-1)[keep]
    decoded = sizes // 4 * 3
    decoded[sizes > 0] -= pad
    cuts = np.concatenate([[0], np.cumsum(decoded)]).astype(np.int32)
    return pa.Array.from_buffers(
        pa.binary(), n, [validity, pa.py_buffer(cuts), pa.py_buffer(data)],
        null_count=arr.null_count,
    )  # fmt: skip


def _convert(
    name: str, values: list[Any], target: pa.DataType, per_second: float = 1e6
) -> pa.Array:
    """One JSON column as ``target`` (InvalidArgumentError naming the column otherwise)."""
    try:
        arr = pa.array(values)
        if pa.types.is_null(arr.type):
            return pa.nulls(len(values), target)
        kind = _kind(target)
        if kind == "timestamp":
            return _timestamps(values, arr, per_second)
        if kind == "binary":
            return _base64(arr)
        inferred = _kind(arr.type) if not pa.types.is_list(arr.type) else "list"
        allowed = {"int": {"int", "float"}, "float": {"int", "float"}}.get(kind, {kind})
        # pyarrow reads [1.0, true] as doubles: the Python types (one C-level pass) tell
        if inferred not in allowed or (kind in ("int", "float") and bool in set(map(type, values))):
            raise pa.ArrowInvalid(f"got {arr.type}")
        if kind == "list":
            arr = pa.array(values, type=pa.list_(target.value_type))
        return pc.cast(arr, target)  # a safe cast: 1.5 into an int or an overflow is an error
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise InvalidArgumentError(f"df['{name}']: {e}") from None


def column_lengths(df: Mapping[str, Any], what: str = "df") -> int:
    """The common length of the ``df`` columns (400 naming them when they differ)."""
    if not df:
        return 0  # what Feast's remote store sends for a batch without rows: a no-op
    lengths: dict[str, int] = {}
    for name, values in df.items():
        if not isinstance(values, list):
            raise InvalidArgumentError(
                f"{what}['{name}']: expected a list of values ({what} is a JSON object of "
                f"columns), got {_json_kind(values)}"
            )
        lengths[name] = len(values)
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"'{k}' has {v}" for k, v in lengths.items())
        raise InvalidArgumentError(f"{what}: columns of unequal length: {shown}")
    return next(iter(lengths.values()))


#: int values a float64 holds exactly (larger ones go the per-column way, which refuses them)
_EXACT_INT = float(2**53)


def _floats_at_once(df: Mapping[str, Any], fields: list[pa.Field]) -> dict[str, pa.Array]:
    """The float features of ``df`` converted together, by one numpy conversion of all of them:
    the per-column way costs ~150 us a column in pyarrow calls (30 ms for a 1-row push of a
    200-feature view). Only columns of plain numbers take it; anything else (nulls, bools,
    text, a value of the wrong shape) leaves every column to the per-column way, which names
    the bad row."""
    names = [f.name for f in fields if pa.types.is_floating(f.type) and f.name in df]
    if len(names) < 8:
        return {}
    cols = [df[n] for n in names]
    kinds = {type(x) for col in cols for x in col}
    if not kinds <= {int, float}:
        return {}
    try:
        mat = np.array(cols, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return {}
    if mat.ndim != 2 or (int in kinds and bool(np.any(np.abs(mat) > _EXACT_INT))):
        return {}
    types = {f.name: f.type for f in fields}
    out: dict[str, pa.Array] = {}
    with np.errstate(over="ignore"):  # as Arrow's double -> float cast: out of range is inf
        for name, row in zip(names, mat, strict=True):
            t = types[name]
            out[name] = pa.array(row.astype(np.float32) if t == pa.float32() else row, type=t)
    return out


def view_table(registry: Registry, view: FeatureView, df: Mapping[str, Any]) -> pa.Table:
    """The rows of ``df`` for ``view``, in the schema of ``Store.write`` (join keys,
    ``event_timestamp``, features)."""
    rows = column_lengths(df)
    schema = registry.arrow_schema(view.name)
    if rows == 0:
        return schema.empty_table()
    ts_field = view.batch_source.timestamp_field if view.batch_source else EVENT_TIMESTAMP
    required = {k.name for k in view.join_keys} | {EVENT_TIMESTAMP}
    floats = _floats_at_once(df, list(schema))
    columns = []
    for field in schema:
        if field.name in floats:
            columns.append(floats[field.name])
            continue
        source = field.name
        if field.name == EVENT_TIMESTAMP and source not in df and ts_field in df:
            source = ts_field
        if source not in df:
            shown = (
                f"'{EVENT_TIMESTAMP}'"
                + (f" or '{ts_field}'" if ts_field != EVENT_TIMESTAMP else "")
                if field.name == EVENT_TIMESTAMP
                else f"'{field.name}'"
            )
            raise InvalidArgumentError(
                f"df: missing column {shown} ({field.type}) of feature view '{view.name}'"
            )
        values = df[source]
        try:
            col = _convert(source, values, field.type)
        except InvalidArgumentError as e:
            raise _bad_row(source, values, field.type, e.message) from None
        if field.name in required and col.null_count:
            row = pc.index(pc.is_null(col), True).as_py()
            raise InvalidArgumentError(
                f"df['{source}'] row {row}: must not be null "
                f"({'the event timestamp' if field.name == EVENT_TIMESTAMP else 'a join key'})"
            )
        columns.append(col)
    table = pa.Table.from_arrays(columns, schema=schema)
    assert table.num_rows == rows
    return table


def v1_rows_table(registry: Registry, view: FeatureView, rows: Mapping[str, Any]) -> pa.Table:
    """The ``rows`` of a ``POST /v1/push`` body (columns by name: join keys, ``event_timestamp``
    as RFC 3339 text or epoch *microseconds*, features) as Arrow columns of the view's types,
    with the same strict conversion as Feast's ``df`` (``1.5`` for an integer column is refused
    naming the column and row, never truncated). Columns the view lacks are left out (the
    store ignores them); a missing column is the store's error, as before."""
    column_lengths(rows, "rows")
    schema = registry.arrow_schema(view.name)
    known = set(schema.names)
    columns: dict[str, pa.Array] = {}
    for name, values in rows.items():
        if name not in known:
            continue
        target = schema.field(name).type
        try:
            if pa.types.is_binary(target):
                # /v1/push has always stored a bytes column's text as its UTF-8 bytes (not base64)
                columns[name] = pa.array(values, type=target)
                continue
            columns[name] = _convert(name, values, target, per_second=1)
        except InvalidArgumentError as e:
            raise _bad_row(name, values, target, e.message, per_second=1, what="rows") from None
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InvalidArgumentError(f"rows['{name}']: {e}") from None
    if not columns:
        raise InvalidArgumentError(
            f"rows: no column of feature view '{view.name}' (it has {', '.join(schema.names)})"
        )
    return pa.table(columns)
