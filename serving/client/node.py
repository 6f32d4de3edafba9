"""Clients of one node: :class:`FeatureClient` (blocking; gRPC or HTTP) and
:class:`AsyncFeatureClient` (asyncio; gRPC). Both build requests and read answers with
``serving.client.codec``."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy.typing as npt

from serving._proto.feature_serving.v1 import feature_service_pb2 as pb
from serving.client.codec import (
    METHOD,
    RequestData,
    build_request,
    columns_from_json,
    columns_result,
    dense_from_json,
    dense_result,
    entity_columns,
    http_body,
    http_error,
)
from serving.client.results import ColumnsResult, DenseResult
from serving.cluster.rpc import auth_metadata, error_from_rpc, open_channel
from serving.errors import DeadlineExceededError, InvalidArgumentError, StorageError


class FeatureClient:
    """Blocking client; reuse one per process (it keeps one gRPC channel / HTTP base URL)."""

    def __init__(
        self,
        target: str = "127.0.0.1:6565",
        *,
        transport: str = "grpc",
        api_key: str | None = None,
        timeout: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``credentials``: TLS for gRPC (``grpc.ssl_channel_credentials(ca, key, cert)``;
        key and certificate for a server that requires client certificates).
        ``ssl_context``: for HTTP to an ``https://`` target signed by a private CA
        (``ssl.create_default_context(cafile=...)``, plus ``load_cert_chain`` for mutual TLS).
        """
        if transport not in ("grpc", "http"):
            raise InvalidArgumentError("transport must be 'grpc' or 'http'")
        self.target, self.transport, self.timeout = target, transport, timeout
        self._metadata = auth_metadata(api_key)
        self._ssl_context = ssl_context
        #: HTTP transport: one keep-alive connection per calling thread
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        base = target if "://" in target else f"http://{target}"
        self._path = urllib.parse.urlsplit(base).path.rstrip("/") + "/v1/feature-vector"
        self._channel: grpc.Channel | None = None
        self._call: Any = None
        if transport == "grpc":
            self._channel = open_channel(target, credentials)
            self._call = self._channel.unary_unary(
                METHOD,
                request_serializer=pb.GetFeatureVectorRequest.SerializeToString,
                response_deserializer=pb.GetFeatureVectorResponse.FromString,
            )

    def _grpc(self, req: pb.GetFeatureVectorRequest, timeout: float | None) -> Any:
        try:
            return self._call(req, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None

    def _connection(self) -> http.client.HTTPConnection:
        """This thread's keep-alive connection to the node (one per thread: a blocking
        connection carries one request at a time)."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            url = urllib.parse.urlsplit(
                self.target if "://" in self.target else f"http://{self.target}"
            )
            if url.scheme == "https":
                conn = http.client.HTTPSConnection(
                    url.hostname or "", url.port, context=self._ssl_context
                )
            else:
                conn = http.client.HTTPConnection(url.hostname or "", url.port)
            self._local.conn = conn
            self._conns.append(conn)
        return conn

    def _http(self, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **dict(self._metadata)}
        for attempt in (0, 1):
            conn = self._connection()
            conn.timeout = timeout or self.timeout
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            reused = conn.sock is not None
            try:
                conn.request("POST", self._path, body=data, headers=headers)
                r = conn.getresponse()
                raw = r.read()
            except (ConnectionResetError, BrokenPipeError) as e:  # RemoteDisconnected too
                conn.close()
                if reused and attempt == 0:  # the node closed the idle connection: again
                    continue
                raise StorageError(f"UNAVAILABLE: {self.target}: {e}") from None
            except TimeoutError:
                conn.close()
                raise DeadlineExceededError(
                    f"DEADLINE_EXCEEDED: {self.target} did not answer in {conn.timeout} s"
                ) from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise StorageError(f"UNAVAILABLE: {self.target}: {e}") from None
            if r.will_close:
                conn.close()
            if r.status == 200:
                return dict(json.loads(raw))
            raise http_error(r.status, raw)
        raise AssertionError("unreachable")

    def get_dense(
        self,
        entities: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
        request_data: RequestData | None = None,
    ) -> DenseResult:
        """Numeric features as one ``[entities x features]`` float32 matrix, NaN where a value
        is not PRESENT (see ``statuses``). ``request_data``: request fields of the on-demand
        views asked for, one value per entity (docs/on-demand.md)."""
        cols = entity_columns(entities)
        keys = {k: v for k, (_, v) in cols.items()}
        if self.transport == "http":
            body = http_body(
                entities, features, feature_service, True, columns=cols, request_data=request_data
            )
            return dense_from_json(self._http(body, timeout), keys)
        req = build_request(
            entities, features, feature_service, True, columns=cols, request_data=request_data
        )
        return dense_result(self._grpc(req, timeout), keys)

    def get_features(
        self,
        entities: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
        request_data: RequestData | None = None,
    ) -> ColumnsResult:
        """Typed columns of any feature types, plus statuses and event timestamps; the same
        types over gRPC and HTTP (:class:`~serving.client.ColumnsResult`). ``request_data``:
        request fields of the on-demand views asked for (docs/on-demand.md)."""
        cols = entity_columns(entities)
        keys = {k: v for k, (_, v) in cols.items()}
        if self.transport == "http":
            body = http_body(
                entities, features, feature_service, False, columns=cols, request_data=request_data
            )
            return columns_from_json(self._http(body, timeout), keys)
        req = build_request(
            entities, features, feature_service, False, columns=cols, request_data=request_data
        )
        return columns_result(self._grpc(req, timeout), keys)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFeatureClient:
    """asyncio client over one ``grpc.aio`` channel."""

    def __init__(
        self,
        target: str = "127.0.0.1:6565",
        *,
        api_key: str | None = None,
        timeout: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``credentials``: TLS, as for :class:`FeatureClient`."""
        self.timeout = timeout
        self._metadata = auth_metadata(api_key)
        self._channel = (
            grpc.aio.secure_channel(target, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(target)
        )
        self._call = self._channel.unary_unary(
            METHOD,
            request_serializer=pb.GetFeatureVectorRequest.SerializeToString,
            response_deserializer=pb.GetFeatureVectorResponse.FromString,
        )

    async def _grpc(self, req: pb.GetFeatureVectorRequest, timeout: float | None) -> Any:
        try:
            return await self._call(req, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None

    async def get_dense(
        self,
        entities: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
        request_data: RequestData | None = None,
    ) -> DenseResult:
        cols = entity_columns(entities)
        req = build_request(
            entities, features, feature_service, True, columns=cols, request_data=request_data
        )
        return dense_result(await self._grpc(req, timeout), {k: v for k, (_, v) in cols.items()})

    async def get_features(
        self,
        entities: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
        request_data: RequestData | None = None,
    ) -> ColumnsResult:
        cols = entity_columns(entities)
        req = build_request(
            entities, features, feature_service, False, columns=cols, request_data=request_data
        )
        keys = {k: v for k, (_, v) in cols.items()}
        return columns_result(await self._grpc(req, timeout), keys)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncFeatureClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
