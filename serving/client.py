"""Python client for model servers.

``FeatureClient`` (blocking) and ``AsyncFeatureClient`` (asyncio) call ``GetFeatureVector`` over
gRPC (default) or ``POST /v1/feature-vector`` over HTTP. The dense layout returns one numpy
float32 matrix built straight from the response bytes, without a Python object per value::

    with FeatureClient("127.0.0.1:6565") as client:
        m = client.get_dense({"user_id": [1, 2, 3]}, feature_service="user_profile_all")
        m.values.shape  # (3, 200)

``ShardedFeatureClient`` routes over a sharded cluster (docs/scale-out.md): it splits a batch
by owning shard, asks the shards concurrently, merges the answers back in request order, and
fails over to another replica of a shard that is unavailable.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from serving import _rust_core
from serving._proto.feature_serving.v1 import feature_service_pb2 as pb
from serving.errors import (
    DeadlineExceededError,
    FeatureServingError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    StorageError,
    UnauthenticatedError,
    WrongShardError,
)
from serving.store import DenseResult

METHOD = "/feature_serving.v1.FeatureService/GetFeatureVector"
_STATUS_NAMES = {"INVALID": 0, "PRESENT": 1, "NULL_VALUE": 2, "NOT_FOUND": 3, "OUTSIDE_MAX_AGE": 4}
_GRPC_ERRORS: dict[grpc.StatusCode, type[FeatureServingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: StorageError,
    grpc.StatusCode.FAILED_PRECONDITION: WrongShardError,
}
_HTTP_ERRORS: dict[int, type[FeatureServingError]] = {
    400: InvalidArgumentError,
    401: UnauthenticatedError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: WrongShardError,
    429: ResourceExhaustedError,
    503: StorageError,
    504: DeadlineExceededError,
}


@dataclass(frozen=True)
class ColumnsResult:
    """Typed columns: one numpy array (or list, for strings / bytes) per feature."""

    feature_names: list[str]
    columns: dict[str, Any]
    #: ``[entities x features]`` FieldStatus values
    statuses: npt.NDArray[np.uint8]
    #: ``[entities x features]`` event timestamps in microseconds (0 where none)
    event_timestamps: npt.NDArray[np.int64] | None


def _request(
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


def _dense(resp: pb.GetFeatureVectorResponse) -> DenseResult:
    d = resp.dense
    return DenseResult(
        feature_names=list(resp.feature_names),
        values=np.frombuffer(d.values, dtype="<f4").reshape(d.rows, d.cols),
        statuses=np.frombuffer(d.statuses, dtype=np.uint8).reshape(d.rows, d.cols),
    )


def _columns(resp: pb.GetFeatureVectorResponse) -> ColumnsResult:
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


def _raise_grpc(e: grpc.RpcError) -> FeatureServingError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    cls = _GRPC_ERRORS.get(code, FeatureServingError)
    details = e.details() if hasattr(e, "details") else str(e)
    return cls(f"{code.name}: {details}")


class FeatureClient:
    """Blocking client; reuse one per process (it keeps one gRPC channel / HTTP base URL)."""

    def __init__(
        self,
        target: str = "127.0.0.1:6565",
        *,
        transport: str = "grpc",
        api_key: str | None = None,
        timeout: float = 1.0,
    ) -> None:
        if transport not in ("grpc", "http"):
            raise InvalidArgumentError("transport must be 'grpc' or 'http'")
        self.target, self.transport, self.timeout = target, transport, timeout
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._channel: grpc.Channel | None = None
        self._call: Any = None
        if transport == "grpc":
            self._channel = grpc.insecure_channel(target)
            self._call = self._channel.unary_unary(
                METHOD,
                request_serializer=pb.GetFeatureVectorRequest.SerializeToString,
                response_deserializer=pb.GetFeatureVectorResponse.FromString,
            )

    def _grpc(self, req: pb.GetFeatureVectorRequest, timeout: float | None) -> Any:
        try:
            return self._call(req, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _raise_grpc(e) from None

    def _http(self, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        url = self.target if "://" in self.target else f"http://{self.target}"
        req = urllib.request.Request(
            url.rstrip("/") + "/v1/feature-vector",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **dict(self._metadata)},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = str(e)
            raise _HTTP_ERRORS.get(e.code, FeatureServingError)(msg) from None

    @staticmethod
    def _http_body(
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

    def get_dense(
        self,
        entities: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
    ) -> DenseResult:
        """Numeric features as one ``[entities x features]`` float32 matrix, NaN where a value
        is not PRESENT (see ``statuses``)."""
        if self.transport == "http":
            r = self._http(self._http_body(entities, features, feature_service, True), timeout)
            d = r["dense"]
            vals = np.array(
                [[np.nan if v is None else v for v in row] for row in d["values"]],
                dtype=np.float32,
            ).reshape(d["rows"], d["cols"])
            st = np.array(
                [[_STATUS_NAMES[s] for s in row] for row in d["statuses"]], dtype=np.uint8
            ).reshape(d["rows"], d["cols"])
            return DenseResult(list(r["feature_names"]), vals, st)
        return _dense(self._grpc(_request(entities, features, feature_service, True), timeout))

    def get_features(
        self,
        entities: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
    ) -> ColumnsResult:
        """Typed columns of any feature types, plus statuses and event timestamps."""
        if self.transport == "http":
            r = self._http(self._http_body(entities, features, feature_service, False), timeout)
            names = list(r["feature_names"])
            cols = {n: c["values"] for n, c in zip(names, r["columns"], strict=True)}
            st = np.array(
                [[_STATUS_NAMES[s] for s in c["statuses"]] for c in r["columns"]], dtype=np.uint8
            ).T.reshape(r["num_entities"], len(names))
            return ColumnsResult(names, cols, st, None)
        return _columns(self._grpc(_request(entities, features, feature_service, False), timeout))

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFeatureClient:
    """asyncio client over one ``grpc.aio`` channel."""

    def __init__(
        self, target: str = "127.0.0.1:6565", *, api_key: str | None = None, timeout: float = 1.0
    ) -> None:
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._channel = grpc.aio.insecure_channel(target)
        self._call = self._channel.unary_unary(
            METHOD,
            request_serializer=pb.GetFeatureVectorRequest.SerializeToString,
            response_deserializer=pb.GetFeatureVectorResponse.FromString,
        )

    async def _grpc(self, req: pb.GetFeatureVectorRequest, timeout: float | None) -> Any:
        try:
            return await self._call(req, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _raise_grpc(e) from None

    async def get_dense(
        self,
        entities: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
    ) -> DenseResult:
        return _dense(
            await self._grpc(_request(entities, features, feature_service, True), timeout)
        )

    async def get_features(
        self,
        entities: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
    ) -> ColumnsResult:
        return _columns(
            await self._grpc(_request(entities, features, feature_service, False), timeout)
        )

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncFeatureClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ShardedFeatureClient:
    """Blocking client of a sharded cluster: routes each entity to the shard that owns it.

    ``cluster`` maps every shard index ``0..N-1`` to the gRPC endpoints of its replicas
    (``{0: ["fs-0-0:6565", "fs-0-1:6565"], 1: ["fs-1-0:6565"]}``); the shard count is
    ``len(cluster)``. ``topic_partitions`` is the partition count of the stream topics and
    ``join_keys`` the routing entity's join keys as ``(name, dtype)`` in the view's order
    (``[("user_id", "int64")]``): an entity's owner is
    ``murmur2(encode_key(join key values)) % topic_partitions % N``, as the nodes compute it
    (``--shard-index/--shard-count/--topic-partitions``).

    A request is split by owning shard, the parts are sent concurrently (one thread each) and
    the answers are merged back in request order. Replicas of a shard are used in turn; one
    that answers UNAVAILABLE (refused connection, node stopping) is skipped for
    ``down_seconds`` and the part is retried on the next replica, within the call's
    ``timeout`` (the caller's deadline for the whole call). Other errors are raised as they
    are. Only the dense layout is routed (:meth:`get_dense`).
    """

    def __init__(
        self,
        cluster: Mapping[int, Sequence[str]],
        *,
        topic_partitions: int,
        join_keys: Sequence[tuple[str, str]],
        api_key: str | None = None,
        timeout: float = 1.0,
        down_seconds: float = 5.0,
    ) -> None:
        n = len(cluster)
        if n < 1 or sorted(cluster) != list(range(n)):
            raise InvalidArgumentError(
                f"cluster must map every shard index 0..N-1 to endpoints, got {sorted(cluster)}"
            )
        empty = [k for k, eps in cluster.items() if not eps]
        if empty:
            raise InvalidArgumentError(f"shard(s) {empty} have no endpoint")
        if topic_partitions < 1:
            raise InvalidArgumentError("topic_partitions must be at least 1")
        if not join_keys:
            raise InvalidArgumentError("join_keys: give the routing entity's join keys")
        self.shard_count = n
        self.topic_partitions = topic_partitions
        self.join_keys = [name for name, _ in join_keys]
        self._dtypes = [dtype for _, dtype in join_keys]
        self.timeout = timeout
        self.down_seconds = down_seconds
        self._replicas = {
            k: [FeatureClient(ep, api_key=api_key, timeout=timeout) for ep in cluster[k]]
            for k in range(n)
        }
        self._turn = {k: itertools.count() for k in range(n)}
        self._down: dict[str, float] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(2, n), thread_name_prefix="fs-route")

    def shards_of(self, entities: Mapping[str, Sequence[Any] | npt.NDArray[Any]]) -> list[int]:
        """The owning shard of each entity of ``entities`` (request order)."""
        missing = [k for k in self.join_keys if k not in entities]
        if missing:
            raise InvalidArgumentError(f"entities: missing routing join key(s) {missing}")
        columns = [
            list(v.tolist() if isinstance(v, np.ndarray) else v)
            for v in (entities[k] for k in self.join_keys)
        ]
        keys = _rust_core.encode_entity_keys(self._dtypes, columns)
        parts = _rust_core.partitions_for_keys(keys, self.topic_partitions)
        return [p % self.shard_count for p in parts]

    def _order(self, shard: int) -> list[FeatureClient]:
        """Replicas of ``shard`` to try: round robin, those recently down last."""
        reps = self._replicas[shard]
        start = next(self._turn[shard]) % len(reps)
        turn = reps[start:] + reps[:start]
        now = time.monotonic()
        with self._lock:
            return sorted(turn, key=lambda c: self._down.get(c.target, 0.0) > now)

    def _ask_shard(
        self,
        shard: int,
        entities: dict[str, list[Any]],
        features: Sequence[str] | None,
        feature_service: str | None,
        deadline: float,
    ) -> DenseResult:
        last: FeatureServingError | None = None
        for client in self._order(shard):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                return client.get_dense(
                    entities, features, feature_service=feature_service, timeout=left
                )
            except StorageError as e:  # UNAVAILABLE: try the next replica
                with self._lock:
                    self._down[client.target] = time.monotonic() + self.down_seconds
                last = e
        if last is not None:
            raise StorageError(f"shard {shard}: no replica answered: {last.message}")
        raise DeadlineExceededError(f"shard {shard}: the deadline expired before an answer")

    def get_dense(
        self,
        entities: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
    ) -> DenseResult:
        """:meth:`FeatureClient.get_dense` over the cluster, rows in request order."""
        deadline = time.monotonic() + (timeout or self.timeout)
        shards = self.shards_of(entities)
        if not shards:
            raise InvalidArgumentError("no entities given")
        cols = {
            k: list(v.tolist() if isinstance(v, np.ndarray) else v) for k, v in entities.items()
        }
        rows: dict[int, list[int]] = {}
        for i, k in enumerate(shards):
            rows.setdefault(k, []).append(i)
        futures = {
            k: self._pool.submit(
                self._ask_shard,
                k,
                {name: [col[i] for i in idx] for name, col in cols.items()},
                features,
                feature_service,
                deadline,
            )
            for k, idx in rows.items()
        }
        answers = {k: f.result() for k, f in futures.items()}
        first = next(iter(answers.values()))
        n, f = len(shards), first.values.shape[1]
        values = np.empty((n, f), dtype=np.float32)
        statuses = np.empty((n, f), dtype=np.uint8)
        for k, idx in rows.items():
            values[idx] = answers[k].values
            statuses[idx] = answers[k].statuses
        return DenseResult(first.feature_names, values, statuses)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for reps in self._replicas.values():
            for c in reps:
                c.close()

    def __enter__(self) -> ShardedFeatureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
