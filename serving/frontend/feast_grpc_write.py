"""Feast's gRPC feature server writes (``GrpcFeatureServer/Push`` and ``/WriteToOnlineStore``,
proto/feast/serving/GrpcServer.proto) as the JSON bodies of ``POST /push`` and
``POST /write-to-online-store``, so node and router answer them by the same path as HTTP.

A request carries one row: ``features`` (text values, each converted to its column's type
here) or ``typed_features`` (``feast.types.Value``), not both. Feast's own server turns the
text into a one-row pandas frame; we convert by the view's schema instead, so ``"1.5"`` for an
integer column is INVALID_ARGUMENT naming the field rather than a truncation. An empty ``to``
means ``online`` (Feast's server refuses it; the HTTP API's default is ``online``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any

from serving._proto.feast.serving import GrpcServer_pb2 as pb
from serving.errors import InvalidArgumentError
from serving.registry import EVENT_TIMESTAMP, FeatureView, Registry

#: Value's list cases, read as JSON lists
_LISTS = frozenset(
    {"int32_list_val", "int64_list_val", "double_list_val", "float_list_val", "bool_list_val",
     "string_list_val", "unix_timestamp_list_val"}
)  # fmt: skip


def _dtypes(views: Iterable[FeatureView]) -> dict[str, str]:
    """Column -> dtype of every column the views write (the event timestamp as 'timestamp')."""
    out: dict[str, str] = {}
    for v in views:
        for k in v.join_keys:
            out[k.name] = k.dtype
        for f in v.features:
            out[f.name] = f.dtype
        out[EVENT_TIMESTAMP] = "timestamp"
        if v.batch_source is not None:
            out[v.batch_source.timestamp_field] = "timestamp"
    return out


def _from_text(field: str, name: str, text: str, dtype: str | None) -> Any:
    where = f"field '{field}' key '{name}'"
    try:
        if dtype in ("int32", "int64"):
            return int(text)
        if dtype in ("float32", "float64"):
            return float(text)
        if dtype == "bool":
            low = text.strip().lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError(f"not true or false: {text!r}")
            return low in ("true", "1")
        if dtype == "timestamp":
            try:
                return float(text)  # epoch seconds, as Feast's UnixTimestamp
            except ValueError:
                return text  # ISO 8601, converted with the rest of the column
        if dtype == "float32_array":
            value = json.loads(text)
            if not isinstance(value, list):
                raise ValueError(f"not a JSON list of numbers: {text!r:.60}")
            return value
    except ValueError as e:
        raise InvalidArgumentError(f"{where}: expected a {dtype} value as text: {e}") from None
    return text  # string; bytes as base64 text, as in the HTTP df


def _from_value(field: str, name: str, value: Any) -> Any:
    case = value.WhichOneof("val")
    if case is None or case == "null_val":
        return None
    raw = getattr(value, case)
    if case == "bytes_val":
        return base64.b64encode(raw).decode()
    if case in _LISTS:
        return list(raw.val)
    if hasattr(raw, "val"):
        raise InvalidArgumentError(
            f"field '{field}' key '{name}': Value case '{case}' is not a type feature views hold"
        )
    return raw


def _row(
    field_text: Mapping[str, str], field_typed: Mapping[str, Any], dtypes: Mapping[str, str]
) -> dict[str, list[Any]]:
    if field_text and field_typed:
        raise InvalidArgumentError(
            "fields 'features' and 'typed_features': only one of them may be set, not both"
        )
    if not field_text and not field_typed:
        raise InvalidArgumentError(
            "missing field 'features' (or 'typed_features'): the columns of the row to write"
        )
    if field_typed:
        return {k: [_from_value("typed_features", k, v)] for k, v in field_typed.items()}
    return {k: [_from_text("features", k, t, dtypes.get(k))] for k, t in field_text.items()}


def _parse(cls: Any, raw: bytes) -> Any:
    try:
        return cls.FromString(raw)
    except Exception as e:  # DecodeError: a body that is not this message
        raise InvalidArgumentError(f"the request is not a {cls.__name__}: {e}") from None


def push_body(registry: Registry, raw: bytes) -> tuple[dict[str, Any], str]:
    """A ``PushRequest`` as the ``PushFeaturesRequest`` JSON body of ``POST /push``, and the
    request's field that held the row (for naming it in errors)."""
    req = _parse(pb.PushRequest, raw)
    if not req.stream_feature_view:
        raise InvalidArgumentError("missing field 'stream_feature_view' (a push source name)")
    views = registry.push_views(req.stream_feature_view)
    return {
        "push_source_name": req.stream_feature_view,
        "df": _row(req.features, req.typed_features, _dtypes(views)),
        "to": req.to or "online",
        "allow_registry_cache": req.allow_registry_cache,
    }, _field_of(req)


def write_body(registry: Registry, raw: bytes) -> tuple[dict[str, Any], str]:
    """A ``WriteToOnlineStoreRequest`` as the JSON body of ``POST /write-to-online-store``,
    and the request's field that held the row."""
    req = _parse(pb.WriteToOnlineStoreRequest, raw)
    if not req.feature_view_name:
        raise InvalidArgumentError("missing field 'feature_view_name' (a feature view name)")
    view = registry.view(req.feature_view_name)
    return {
        "feature_view_name": req.feature_view_name,
        "df": _row(req.features, req.typed_features, _dtypes([view])),
        "allow_registry_cache": req.allow_registry_cache,
    }, _field_of(req)


def _field_of(req: Any) -> str:
    return "typed_features" if req.typed_features else "features"


def push_answer() -> bytes:
    return bytes(pb.PushResponse(status=True).SerializeToString())


def write_answer() -> bytes:
    return bytes(pb.WriteToOnlineStoreResponse(status=True).SerializeToString())
