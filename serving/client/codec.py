"""What every client sends and reads: ``GetFeatureVectorRequest`` building, the v1 HTTP JSON body,
and the answers (protobuf or JSON) as numpy results, without a Python object per value."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serving._proto.feature_serving.v1 import feature_service_pb2 as pb
from serving.errors import FeatureServingError, InvalidArgumentError, error_class
from serving.store import DenseResult

METHOD = "/feature_serving.v1.FeatureService/GetFeatureVector"
_STATUS_NAMES = {"INVALID": 0, "PRESENT": 1, "NULL_VALUE": 2, "NOT_FOUND": 3, "OUTSIDE_MAX_AGE": 4}


@dataclass(frozen=True)
class ColumnsResult:
    """Typed columns: one numpy array (or list, for strings / bytes) per feature."""

    feature_names: list[str]
    columns: dict[str, Any]
    #: ``[entities x features]`` FieldStatus values
    statuses: npt.NDArray[np.uint8]
    #: ``[entities x features]`` event timestamps in microseconds (0 where none)
    event_timestamps: npt.NDArray[np.int64] | None


def build_request(
    entities: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
    features: Sequence[str] | None,
    feature_service: str | None,
    dense: bool,
) -> pb.GetFeatureVectorRequest:
    if (features is None) == (feature_service is None):
        raise InvalidArgumentError("give either features or feature_service")
    req = pb.GetFeatureVectorRequest(
        include_statuses=True,
        include_event_timestamps=not dense,
        layout=pb.LAYOUT_DENSE if dense else pb.LAYOUT_COLUMNS,
    )
    if feature_service is not None:
        req.feature_service = feature_service
    else:
        req.features.refs.extend(features or [])
    for name, values in entities.items():
        vals = list(values.tolist() if isinstance(values, np.ndarray) else values)
        col = req.entities[name]
        if all(isinstance(v, str) for v in vals):
            col.string_values.values.extend(vals)
        elif all(isinstance(v, bytes) for v in vals):
            col.bytes_values.values.extend(vals)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            col.int64_values.values.extend(vals)
        else:
            raise InvalidArgumentError(
                f"entity column '{name}': values must be all ints, all strings or all bytes"
            )
    return req


def dense_result(resp: pb.GetFeatureVectorResponse) -> DenseResult:
    d = resp.dense
    return DenseResult(
        feature_names=list(resp.feature_names),
        values=np.frombuffer(d.values, dtype="<f4").reshape(d.rows, d.cols),
        statuses=np.frombuffer(d.statuses, dtype=np.uint8).reshape(d.rows, d.cols),
    )


def columns_result(resp: pb.GetFeatureVectorResponse) -> ColumnsResult:
    n, names = resp.num_entities, list(resp.feature_names)
    cols: dict[str, Any] = {}
    statuses = np.zeros((n, len(names)), dtype=np.uint8)
    ts = np.zeros((n, len(names)), dtype=np.int64)
    for j, (name, c) in enumerate(zip(names, resp.columns, strict=True)):
        kind = c.WhichOneof("values")
        if kind == "float_array_values":
            fa = c.float_array_values
            cols[name] = np.array(fa.values, dtype=np.float32).reshape(n, fa.dim)
        elif kind is None:
            cols[name] = np.zeros(n, dtype=np.float32)
        else:
            values = getattr(c, kind).values
            dtype = {
                "bool_values": np.bool_,
                "int32_values": np.int32,
                "int64_values": np.int64,
                "float_values": np.float32,
                "double_values": np.float64,
                "timestamp_values": np.int64,
            }.get(kind)
            cols[name] = np.array(values, dtype=dtype) if dtype else list(values)
        statuses[:, j] = np.frombuffer(c.statuses, dtype=np.uint8)
        if len(c.event_timestamps):
            ts[:, j] = c.event_timestamps
    return ColumnsResult(names, cols, statuses, ts)


def http_body(
    entities: Mapping[str, Any],
    features: Sequence[str] | None,
    service: str | None,
    dense: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "entities": {
            k: [base64.b64encode(x).decode() if isinstance(x, bytes) else x for x in v]
            for k, v in ((k, list(np.asarray(v).tolist())) for k, v in entities.items())
        },
        "include_statuses": True,
        "include_event_timestamps": not dense,
        "layout": "dense" if dense else "columns",
    }
    if service is not None:
        body["feature_service"] = service
    else:
        body["features"] = list(features or [])
    return body


def dense_from_json(r: dict[str, Any]) -> DenseResult:
    """A ``layout: dense`` JSON answer as :class:`DenseResult` (NaN where no value)."""
    d = r["dense"]
    vals = np.array(
        [[np.nan if v is None else v for v in row] for row in d["values"]],
        dtype=np.float32,
    ).reshape(d["rows"], d["cols"])
    st = np.array(
        [[_STATUS_NAMES[s] for s in row] for row in d["statuses"]], dtype=np.uint8
    ).reshape(d["rows"], d["cols"])
    return DenseResult(list(r["feature_names"]), vals, st)


def columns_from_json(r: dict[str, Any]) -> ColumnsResult:
    """A ``layout: columns`` JSON answer as :class:`ColumnsResult` (values as JSON lists)."""
    names = list(r["feature_names"])
    cols = {n: c["values"] for n, c in zip(names, r["columns"], strict=True)}
    st = np.array(
        [[_STATUS_NAMES[s] for s in c["statuses"]] for c in r["columns"]], dtype=np.uint8
    ).T.reshape(r["num_entities"], len(names))
    return ColumnsResult(names, cols, st, None)


def http_error(status: int, raw: bytes) -> FeatureServingError:
    """An HTTP error answer as the class its JSON ``code`` names (else its status's)."""
    code = None
    try:
        err = json.loads(raw)["error"]
        code, msg = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        msg = f"HTTP {status}: {raw[:200]!r}"
    return error_class(code=code, http_status=status)(msg)


Entities = Mapping[str, Sequence[Any] | npt.NDArray[Any]]


def as_list(values: Sequence[Any] | npt.NDArray[Any]) -> list[Any]:
    return list(values.tolist() if isinstance(values, np.ndarray) else values)
