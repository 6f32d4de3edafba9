"""Producing feature rows and deletes to a view's stream topic (tests, benchmarks, backfills from
Python, ``materialize --via-kafka``), keyed and encoded as the loader reads them."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from serving import _rust_core
from serving.errors import InvalidArgumentError
from serving.registry import EVENT_TIMESTAMP, FeatureView


def encode_key(view: FeatureView, values: Sequence[int | str | bytes]) -> bytes:
    """The record key of an entity of ``view``: its join-key values in the view's order,
    encoded like the store's entity keys (what a tombstone must carry)."""
    return _rust_core.encode_entity_key([k.dtype for k in view.join_keys], list(values))


def _micros(v: Any) -> int:
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.UTC)
        delta: dt.timedelta = v - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(v, int) and not isinstance(v, bool):
        return int(v)
    raise InvalidArgumentError(f"event timestamp must be a datetime or int microseconds, got {v!r}")


def _rows(
    data: pa.Table | pa.RecordBatch | Iterable[Mapping[str, Any]],
) -> Iterable[Mapping[str, Any]]:
    if isinstance(data, pa.Table | pa.RecordBatch):
        for batch in data.to_batches() if isinstance(data, pa.Table) else [data]:
            yield from batch.to_pylist()
    else:
        yield from data


def _json_value(dtype: str, v: Any) -> Any:
    if v is None:
        return None
    if dtype == "bytes":
        return base64.b64encode(v).decode()
    if dtype == "timestamp":
        return _micros(v)
    return v


def _encode_json(view: FeatureView, row: Mapping[str, Any]) -> bytes:
    obj: dict[str, Any] = {}
    for k in view.join_keys:
        v = row[k.name]
        obj[k.name] = base64.b64encode(v).decode() if k.dtype == "bytes" else v
    obj[EVENT_TIMESTAMP] = _micros(row[EVENT_TIMESTAMP])
    for f in view.features:
        if f.name in row:
            obj[f.name] = _json_value(f.dtype, row[f.name])
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _encode_protobuf(view: FeatureView, row: Mapping[str, Any]) -> bytes:
    from serving._proto.feature_serving.v1 import feature_row_pb2 as pb

    msg = pb.FeatureRow(event_timestamp_micros=_micros(row[EVENT_TIMESTAMP]))
    for k in view.join_keys:
        ev = msg.join_keys[k.name]
        setattr(
            ev,
            {
                "int64": "int64_value",
                "int32": "int32_value",
                "string": "string_value",
                "bytes": "bytes_value",
            }[k.dtype],
            row[k.name],
        )
    for f in view.features:
        if f.name not in row:
            continue
        v = row[f.name]
        fv = msg.features[f.name]
        if v is None:
            fv.null_value.SetInParent()
        elif f.dtype == "float32_array":
            fv.float_array_value.values.extend(v)
        elif f.dtype == "timestamp":
            fv.timestamp_micros_value = _micros(v)
        else:
            name = {"float32": "float_value", "float64": "double_value"}.get(
                f.dtype, f"{f.dtype}_value"
            )
            setattr(fv, name, v)
    return bytes(msg.SerializeToString())


def produce_rows(
    producer: Any,
    view: FeatureView,
    rows: pa.Table | pa.RecordBatch | Iterable[Mapping[str, Any]],
    format: str | None = None,
    *,
    topic: str | None = None,
    flush: bool = True,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> int:
    """Produces rows of ``view`` (join keys, ``event_timestamp`` as datetime or int
    microseconds, features by name; absent features are null) as records the loader reads:
    the key is :func:`encode_key` of the row, the value JSON or a ``FeatureRow``. ``format``
    and ``topic`` default to the view's stream source. Create the producer with
    :data:`PRODUCER_DEFAULTS` so that keys are partitioned like the Java client does.
    Returns the number of records produced (flushed unless ``flush=False``); ``on_delivery``
    is called with ``(error, message)`` for each once the broker acknowledged or refused it."""
    src = view.stream_source
    topic = topic or (src.topic if src else None)
    fmt = format or (src.format if src else "json")
    if topic is None:
        raise InvalidArgumentError(f"feature view '{view.name}' has no stream_source: give a topic")
    encode = {"json": _encode_json, "protobuf": _encode_protobuf}.get(fmt)
    if encode is None:
        raise InvalidArgumentError(f"unknown format '{fmt}' (json or protobuf)")
    n = 0
    for row in _rows(rows):
        key = encode_key(view, [row[k.name] for k in view.join_keys])
        _produce(producer, topic, key, encode(view, row), on_delivery=on_delivery)
        n += 1
    if flush:
        producer.flush()
    return n


def produce_deletes(
    producer: Any,
    view: FeatureView,
    keys: Iterable[Sequence[int | str | bytes]],
    *,
    timestamp: dt.datetime | int | None = None,
    topic: str | None = None,
    flush: bool = True,
) -> int:
    """Produces tombstones (null values) deleting the entities ``keys`` (join-key values in
    the view's order). The delete is timed by the record's timestamp: ``timestamp`` (datetime
    or int milliseconds), default now."""
    src = view.stream_source
    topic = topic or (src.topic if src else None)
    if topic is None:
        raise InvalidArgumentError(f"feature view '{view.name}' has no stream_source: give a topic")
    if isinstance(timestamp, dt.datetime):
        ts_ms: int | None = _micros(timestamp) // 1000
    else:
        ts_ms = timestamp
    n = 0
    for values in keys:
        _produce(producer, topic, encode_key(view, values), None, ts_ms)
        n += 1
    if flush:
        producer.flush()
    return n


def _produce(
    producer: Any,
    topic: str,
    key: bytes,
    value: bytes | None,
    ts_ms: int | None = None,
    *,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    kwargs: dict[str, Any] = {"key": key, "value": value}
    if ts_ms is not None:
        kwargs["timestamp"] = ts_ms
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)
