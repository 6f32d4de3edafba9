"""What every client sends and reads: ``GetFeatureVectorRequest`` building, the v1 HTTP JSON body,
and the answers (protobuf or JSON) as the same numpy results, without a Python object per value
on the dense path."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from serving._proto.feature_serving.v1 import feature_service_pb2 as pb
from serving.client.results import ColumnsResult, DenseResult
from serving.errors import FeatureServingError, InvalidArgumentError, error_class

METHOD = "/feature_serving.v1.FeatureService/GetFeatureVector"
_STATUS_NAMES = {"INVALID": 0, "PRESENT": 1, "NULL_VALUE": 2, "NOT_FOUND": 3, "OUTSIDE_MAX_AGE": 4}
_INT64 = (-(1 << 63), (1 << 63) - 1)

Entities = Mapping[str, Sequence[Any] | npt.NDArray[Any]]
#: an entity column checked and converted: ``int64``, ``string`` or ``bytes``, and its values
#: as Python ints / str / bytes
KeyColumn = tuple[str, list[Any]]


def entity_column(name: str, values: Any) -> KeyColumn:
    """One entity column as plain Python values of one type. numpy arrays and numpy scalars
    (``np.int64``, ``np.int32``, ``np.str_``, ``list(np.arange(3))``) are accepted."""
    if isinstance(values, str | bytes):
        raise InvalidArgumentError(
            f"entity column '{name}': give a list of values, not a single "
            f"{'string' if isinstance(values, str) else 'bytes'} value ({values!r}); "
            f"e.g. {{'{name}': [{values!r}]}}"
        )
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise InvalidArgumentError(
                f"entity column '{name}': a 1-dimensional array, got shape {values.shape}"
            )
        vals = values.tolist()
    else:
        try:
            vals = list(values)
        except TypeError:
            raise InvalidArgumentError(
                f"entity column '{name}': give a list of values, got "
                f"{type(values).__name__} {values!r}"
            ) from None
    if vals and all(type(v) is int for v in vals):  # the common case: no per-value work
        lo, hi = min(vals), max(vals)
        if _INT64[0] <= lo and hi <= _INT64[1]:
            return "int64", vals
    if all(isinstance(v, str) for v in vals):
        return "string", [str(v) for v in vals]  # np.str_ is a str
    if all(isinstance(v, bytes) for v in vals):
        return "bytes", [bytes(v) for v in vals]
    ints = []
    for v in vals:
        if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer):
            raise InvalidArgumentError(
                f"entity column '{name}': values must be all ints, all strings or all bytes, "
                f"got {type(v).__name__} {v!r}"
            )
        x = int(v)
        if not _INT64[0] <= x <= _INT64[1]:
            raise InvalidArgumentError(
                f"entity column '{name}': {x} does not fit a 64-bit integer join key"
            )
        ints.append(x)
    return "int64", ints


def entity_columns(entities: Entities) -> dict[str, KeyColumn]:
    if not isinstance(entities, Mapping):
        raise InvalidArgumentError(
            "entities must map each join key to its values, e.g. {'user_id': [1, 2]}, got "
            f"{type(entities).__name__}"
        )
    return {str(k): entity_column(str(k), v) for k, v in entities.items()}


def check_features(features: Any, feature_service: Any) -> list[str] | None:
    """The feature references of a call (None with a feature service), checked."""
    if isinstance(features, str):
        raise InvalidArgumentError(
            f"features must be a list of feature references, not a string: pass [{features!r}]"
        )
    if feature_service is not None and not isinstance(feature_service, str):
        raise InvalidArgumentError(
            "feature_service must be the name of a feature service (a string), got "
            f"{type(feature_service).__name__}"
        )
    if (features is None) == (feature_service is None):
        raise InvalidArgumentError("give either features or feature_service")
    if features is None:
        return None
    refs = list(features)
    bad = [r for r in refs if not isinstance(r, str)]
    if bad:
        raise InvalidArgumentError(
            f"features must be feature references ('view:feature' strings), got {bad[0]!r}"
        )
    return refs


#: a request-data column: the RequestColumn oneof it goes to, and its values as Python scalars
RequestData = Mapping[str, Sequence[Any] | npt.NDArray[Any]]


def request_columns(data: RequestData | None) -> dict[str, tuple[str, list[Any]]]:
    """Request fields of on-demand views (docs/on-demand.md) -> (RequestColumn kind, values):
    booleans, integers, floats (integers among them widen) or strings, one value per entity."""
    out: dict[str, tuple[str, list[Any]]] = {}
    for name, raw in (data or {}).items():
        values = raw.tolist() if isinstance(raw, np.ndarray) else list(raw)
        if all(isinstance(v, bool) for v in values):
            kind = "bool_values"
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            kind = "int64_values"
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            kind, values = "double_values", [float(v) for v in values]
        elif all(isinstance(v, str) for v in values):
            kind = "string_values"
        else:
            raise InvalidArgumentError(
                f"request_data['{name}']: give all booleans, all numbers or all strings"
            )
        out[name] = (kind, values)
    return out


def build_request(
    entities: Entities,
    features: Sequence[str] | None,
    feature_service: str | None,
    dense: bool,
    *,
    columns: Mapping[str, KeyColumn] | None = None,
    request_data: RequestData | None = None,
) -> pb.GetFeatureVectorRequest:
    """``columns``: ``entities`` already checked (:func:`entity_columns`); ``request_data``:
    request fields of the on-demand views asked for."""
    refs = check_features(features, feature_service)
    req = pb.GetFeatureVectorRequest(
        include_statuses=True,
        include_event_timestamps=not dense,
        layout=pb.LAYOUT_DENSE if dense else pb.LAYOUT_COLUMNS,
    )
    if feature_service is not None:
        req.feature_service = feature_service
    else:
        req.features.refs.extend(refs or [])
    for name, (kind, vals) in (columns or entity_columns(entities)).items():
        col = req.entities[name]
        if kind == "string":
            col.string_values.values.extend(vals)
        elif kind == "bytes":
            col.bytes_values.values.extend(vals)
        else:
            col.int64_values.values.extend(vals)
    for name, (kind, vals) in request_columns(request_data).items():
        getattr(req.request_data[name], kind).values.extend(vals)
    return req


def dense_result(
    resp: pb.GetFeatureVectorResponse, entities: Mapping[str, Any] | None = None
) -> DenseResult:
    d = resp.dense
    return DenseResult(
        feature_names=list(resp.feature_names),
        values=np.frombuffer(d.values, dtype="<f4").reshape(d.rows, d.cols),
        statuses=np.frombuffer(d.statuses, dtype=np.uint8).reshape(d.rows, d.cols),
        entities=entities or {},
    )


#: the FeatureColumn oneof -> the feature type and the numpy dtype its values become
_COLUMN_KINDS: dict[str, tuple[str, Any]] = {
    "bool_values": ("bool", np.bool_),
    "int32_values": ("int32", np.int32),
    "int64_values": ("int64", np.int64),
    "float_values": ("float32", np.float32),
    "double_values": ("float64", np.float64),
    "string_values": ("string", None),
    "bytes_values": ("bytes", None),
    "timestamp_values": ("timestamp", np.int64),
    "float_array_values": ("float32_array", np.float32),
}


def columns_result(
    resp: pb.GetFeatureVectorResponse, entities: Mapping[str, Any] | None = None
) -> ColumnsResult:
    n, names = resp.num_entities, list(resp.feature_names)
    cols: dict[str, Any] = {}
    dtypes: dict[str, str] = {}
    statuses = np.zeros((n, len(names)), dtype=np.uint8)
    ts = np.zeros((n, len(names)), dtype=np.int64)
    for j, (name, c) in enumerate(zip(names, resp.columns, strict=True)):
        kind = c.WhichOneof("values")
        if kind == "float_array_values":
            fa = c.float_array_values
            cols[name] = np.array(fa.values, dtype=np.float32).reshape(n, fa.dim)
            dtypes[name] = "float32_array"
        elif kind is None:
            cols[name] = np.zeros(n, dtype=np.float32)
        else:
            dtypes[name], dtype = _COLUMN_KINDS[kind]
            values = getattr(c, kind).values
            cols[name] = np.array(values, dtype=dtype) if dtype else list(values)
        statuses[:, j] = np.frombuffer(c.statuses, dtype=np.uint8)
        if len(c.event_timestamps):
            ts[:, j] = c.event_timestamps
    return ColumnsResult(names, cols, statuses, ts, dtypes, entities or {})


def http_body(
    entities: Entities,
    features: Sequence[str] | None,
    service: str | None,
    dense: bool,
    *,
    columns: Mapping[str, KeyColumn] | None = None,
    request_data: RequestData | None = None,
) -> dict[str, Any]:
    refs = check_features(features, service)
    body: dict[str, Any] = {
        "entities": {
            name: [base64.b64encode(x).decode() for x in vals] if kind == "bytes" else vals
            for name, (kind, vals) in (columns or entity_columns(entities)).items()
        },
        "include_statuses": True,
        "include_event_timestamps": not dense,
        "layout": "dense" if dense else "columns",
    }
    if request_data:
        body["request_data"] = {k: v for k, (_, v) in request_columns(request_data).items()}
    if service is not None:
        body["feature_service"] = service
    else:
        body["features"] = refs or []
    return body


def dense_from_json(r: dict[str, Any], entities: Mapping[str, Any] | None = None) -> DenseResult:
    """A ``layout: dense`` JSON answer as :class:`DenseResult` (NaN where no value)."""
    d = r["dense"]
    vals = np.array(
        [[np.nan if v is None else v for v in row] for row in d["values"]],
        dtype=np.float32,
    ).reshape(d["rows"], d["cols"])
    st = np.array(
        [[_STATUS_NAMES[s] for s in row] for row in d["statuses"]], dtype=np.uint8
    ).reshape(d["rows"], d["cols"])
    return DenseResult(list(r["feature_names"]), vals, st, entities or {})


def _rfc3339_micros(text: list[Any]) -> npt.NDArray[np.int64]:
    """RFC 3339 UTC text (``2024-01-01T00:00:00.5Z``; None: 0) as microseconds since the epoch."""
    plain = [t[:-1] if t.endswith("Z") else t for t in (t or "1970-01-01T00:00:00Z" for t in text)]
    return np.array(plain, dtype="datetime64[us]").astype(np.int64)


def _json_column(
    dtype: str | None, values: list[Any], present: npt.NDArray[np.bool_], dim: int
) -> Any:
    """One JSON column as :func:`columns_result` gives it over gRPC: the type's zero where no
    value (gRPC's packed columns), NaN for a PRESENT float JSON could only write as null."""
    if dtype == "string":
        return ["" if v is None else v for v in values]
    if dtype == "bytes":
        return [b"" if v is None else base64.b64decode(v) for v in values]
    if dtype == "timestamp":
        return _rfc3339_micros(values)
    if dtype == "bool":
        return np.array([bool(v) for v in values], dtype=np.bool_)
    if dtype in ("int32", "int64"):
        return np.array([0 if v is None else v for v in values], dtype=dtype)
    if dtype in ("float32", "float64"):
        out = np.array([np.nan if v is None else v for v in values], dtype=dtype)
        out[~present & np.isnan(out)] = 0
        return out
    if dtype == "float32_array":
        rows = [
            [np.nan if x is None else x for x in v] if v is not None else [0.0] * dim
            for v in values
        ]
        return np.array(rows, dtype=np.float32).reshape(len(values), dim)
    return values  # a node older than the `dtype` field: the JSON values as they came


def columns_from_json(
    r: dict[str, Any], entities: Mapping[str, Any] | None = None
) -> ColumnsResult:
    """A ``layout: columns`` JSON answer as :class:`ColumnsResult`, with the types
    :func:`columns_result` gives over gRPC (from each column's ``dtype``)."""
    names = list(r["feature_names"])
    n = int(r["num_entities"])
    st = np.zeros((n, len(names)), dtype=np.uint8)
    ts = np.zeros((n, len(names)), dtype=np.int64)
    cols: dict[str, Any] = {}
    dtypes: dict[str, str] = {}
    for j, (name, c) in enumerate(zip(names, r["columns"], strict=True)):
        st[:, j] = [_STATUS_NAMES[s] for s in c["statuses"]]
        if c.get("event_timestamps") is not None:
            ts[:, j] = c["event_timestamps"]
        dtype = c.get("dtype")
        if dtype:
            dtypes[name] = dtype
        cols[name] = _json_column(dtype, c["values"], st[:, j] == 1, int(c.get("dim") or 0))
    return ColumnsResult(names, cols, st, ts, dtypes, entities or {})


def http_error(status: int, raw: bytes) -> FeatureServingError:
    """An HTTP error answer as the class its JSON ``code`` names (else its status's)."""
    code = None
    try:
        err = json.loads(raw)["error"]
        code, msg = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        msg = f"HTTP {status}: {raw[:200]!r}"
    return error_class(code=code, http_status=status)(msg)
