"""The cluster map of a sharded deployment and the async transport that routes over it.

A *cluster map* (docs/scale-out.md, "Cluster map") lists, for every shard index ``0..N-1``, the
gRPC endpoints of the shard's replicas, plus the partition count of the views' stream topics;
the owner of an entity is ``murmur2(encode_key(values)) % topic_partitions % N``. It comes from
a file (:meth:`ClusterMap.load`, also what ``serve --cluster-map`` reads) or from a node that
was started with one (:meth:`ClusterMap.fetch`, the ``GetNodeInfo`` RPC)::

    topic_partitions: 12
    shards:
      0: ["fs-shard-0-0:6565", "fs-shard-0-1:6565"]
      1: ["fs-shard-1-0:6565", "fs-shard-1-1:6565"]

:class:`ClusterChannels` holds ``grpc.aio`` channels to every replica and makes raw-bytes unary
calls to one shard: replicas in turn, fail-over on UNAVAILABLE, a hedge to a second replica
when the first is slow, all within one deadline. The routing clients
(``serving.client.AsyncShardedFeatureClient``, ``ShardedFeatureClient``) are built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import yaml

if TYPE_CHECKING:
    from serving.registry import Registry

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

__all__ = [
    "NODE_INFO_METHOD",
    "ClusterChannels",
    "ClusterMap",
    "ClusterMapError",
    "NodeInfo",
    "error_from_rpc",
    "fetch_node_info",
    "open_channel",
]

#: full gRPC path of the node metadata RPC
NODE_INFO_METHOD = "/feature_serving.v1.FeatureService/GetNodeInfo"
#: the node method that answers a router's part of a request (raw cells, see
#: rust_core/src/route.rs), and the same over a node's HTTP port
CELLS_METHOD = "/feature_serving.v1.FeatureService/GetCells"
CELLS_PATH = "/v1/cells"

#: the exception class of each gRPC status a node answers with
GRPC_ERRORS: dict[grpc.StatusCode, type[FeatureServingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: StorageError,
    grpc.StatusCode.FAILED_PRECONDITION: WrongShardError,
}

# host:port, [v6]:port; a target with a scheme (dns:///..., unix:...) is taken as it is
_ENDPOINT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})$")


def error_from_rpc(e: grpc.RpcError) -> FeatureServingError:
    """The :class:`FeatureServingError` of a failed gRPC call (``UNAVAILABLE`` ->
    :class:`StorageError`, ``FAILED_PRECONDITION`` -> :class:`WrongShardError`, ...); the
    message is ``"<CODE>: <details>"``."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    cls = GRPC_ERRORS.get(code, FeatureServingError)
    details = e.details() if hasattr(e, "details") else str(e)
    return cls(f"{code.name}: {details}")


class ClusterMapError(InvalidArgumentError, ValueError):
    """An invalid cluster map (or a node without one); the message names the problem."""


def _int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClusterMapError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ClusterMapError(f"{what} must be at least {minimum}, got {value}")
    return value


def _shard_index(key: object) -> int:
    if isinstance(key, str) and key.strip().isdigit():
        return int(key.strip())  # JSON object keys are strings
    return _int(key, f"shard index {key!r}", 0)


def _check_endpoint(shard: int, ep: object) -> str:
    if not isinstance(ep, str) or not ep.strip():
        raise ClusterMapError(
            f"shard {shard}: an endpoint must be a 'host:port' string, got {ep!r}"
        )
    if "://" in ep or ep.startswith("unix:"):
        return ep
    m = _ENDPOINT.match(ep)
    if m is None or not 1 <= int(m.group(2)) <= 65535:
        raise ClusterMapError(
            f"shard {shard}: endpoint {ep!r} is not 'host:port' (a gRPC port of the replica)"
        )
    return ep


@dataclass(frozen=True)
class ClusterMap:
    """Every shard of a cluster with its replicas' gRPC endpoints.

    ``shards`` maps each shard index ``0..N-1`` (all of them, no gap) to the endpoints
    (``"host:port"``) of its replicas, at least one each; an endpoint belongs to one shard only.
    ``topic_partitions`` is the partition count of the views' stream topics (the nodes'
    ``--topic-partitions``). Invalid maps raise :class:`ClusterMapError` (a ``ValueError``).
    """

    shards: dict[int, list[str]]
    topic_partitions: int
    #: gRPC endpoint -> HTTP address ("host:port") of the same replica, where the map gives
    #: one (``{grpc: ..., http: ...}`` entries); a router sends its parts over HTTP to shards
    #: whose replicas all have one
    http: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.shards, Mapping) or not self.shards:
            raise ClusterMapError(
                "shards must map every shard index 0..N-1 to its replicas' endpoints, "
                f"got {self.shards!r}"
            )
        _int(self.topic_partitions, "topic_partitions", 1)
        shards: dict[int, list[str]] = {}
        http = {str(g): str(h) for g, h in (self.http or {}).items()}
        for key, eps in self.shards.items():
            k = _shard_index(key)
            if k in shards:
                raise ClusterMapError(f"shard {k} is listed twice")
            if isinstance(eps, str) or not isinstance(eps, Sequence):
                raise ClusterMapError(
                    f"shard {k}: expected a list of endpoints ('host:port'), got {eps!r}"
                )
            if not eps:
                raise ClusterMapError(f"shard {k} has no endpoint")
            shards[k] = []
            for ep in eps:
                if isinstance(ep, Mapping):
                    extra = sorted(str(x) for x in ep if x not in ("grpc", "http"))
                    if extra or "grpc" not in ep:
                        raise ClusterMapError(
                            f"shard {k}: an endpoint is 'host:port' or {{grpc: 'host:port', "
                            f"http: 'host:port'}}, got {dict(ep)!r}"
                        )
                    grpc_ep = _check_endpoint(k, ep["grpc"])
                    if "http" in ep:
                        http[grpc_ep] = _check_endpoint(k, ep["http"])
                    shards[k].append(grpc_ep)
                else:
                    shards[k].append(_check_endpoint(k, ep))
        n = len(shards)
        if sorted(shards) != list(range(n)):
            missing = sorted(set(range(n)) - set(shards))
            raise ClusterMapError(
                f"shard indices must be exactly 0..{n - 1} ({n} shards), got {sorted(shards)}"
                + (f": shard(s) {missing} missing" if missing else "")
            )
        owner: dict[str, int] = {}
        for k in range(n):
            for ep in shards[k]:
                if ep in owner:
                    where = "twice in shard" if owner[ep] == k else f"in shards {owner[ep]} and"
                    raise ClusterMapError(f"endpoint {ep} is listed {where} {k}")
                owner[ep] = k
        stray = sorted(set(http) - set(owner))
        if stray:
            raise ClusterMapError(f"HTTP addresses given for endpoints not in the map: {stray}")
        # normalized: int keys in index order, plain lists (the caller's objects are not kept)
        object.__setattr__(self, "shards", {k: list(shards[k]) for k in range(n)})
        object.__setattr__(self, "http", http)

    def http_of(self, shard: int) -> list[str] | None:
        """The HTTP addresses of a shard's replicas (in ``shards`` order), or None unless the
        map gives one for every replica of the shard."""
        eps = self.shards[shard]
        if not all(ep in self.http for ep in eps):
            return None
        return [self.http[ep] for ep in eps]

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    @property
    def endpoints(self) -> list[str]:
        """Every endpoint of the map, shard by shard."""
        return [ep for k in range(self.shard_count) for ep in self.shards[k]]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClusterMap:
        """From ``{"topic_partitions": P, "shards": {0: [...], ...}}``; shard indices may be
        ints or digit strings (JSON)."""
        if not isinstance(d, Mapping):
            raise ClusterMapError(
                f"a cluster map is a mapping with 'topic_partitions' and 'shards', got {d!r}"
            )
        unknown = sorted(str(k) for k in d if k not in ("shards", "topic_partitions"))
        if unknown:
            raise ClusterMapError(
                f"unknown key(s) {unknown} in the cluster map (expected 'topic_partitions' "
                "and 'shards')"
            )
        for key in ("topic_partitions", "shards"):
            if key not in d:
                raise ClusterMapError(f"the cluster map has no '{key}'")
        return cls(shards=d["shards"], topic_partitions=d["topic_partitions"])

    def to_dict(self) -> dict[str, Any]:
        """``{"topic_partitions": P, "shards": {0: [...], ...}}`` (what :meth:`from_dict`
        reads; ``json.dumps`` turns the indices into strings, which it reads too)."""
        return {
            "topic_partitions": self.topic_partitions,
            "shards": {
                k: [{"grpc": ep, "http": self.http[ep]} if ep in self.http else ep for ep in eps]
                for k, eps in self.shards.items()
            },
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClusterMap:
        """From a YAML or JSON file (module docstring, docs/scale-out.md "Cluster map")."""
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ClusterMapError(f"cluster map '{p}': {e}") from None
        try:
            return cls.from_dict(data)
        except ClusterMapError as e:
            raise ClusterMapError(f"cluster map '{p}': {e.message}") from None

    def to_proto(self) -> pb.ClusterMap:
        msg = pb.ClusterMap(topic_partitions=self.topic_partitions)
        for k, eps in self.shards.items():
            msg.shards.add(
                index=k,
                endpoints=eps,
                http_endpoints=[self.http.get(ep, "") for ep in eps] if self.http else [],
            )
        return msg

    @classmethod
    def from_proto(cls, msg: pb.ClusterMap) -> ClusterMap:
        shards: dict[int, list[str]] = {}
        http: dict[str, str] = {}
        for s in msg.shards:
            if s.index in shards:
                raise ClusterMapError(f"shard {s.index} is listed twice")
            shards[s.index] = list(s.endpoints)
            http.update((g, h) for g, h in zip(s.endpoints, s.http_endpoints, strict=False) if h)
        return cls(shards=shards, topic_partitions=msg.topic_partitions, http=http)

    @classmethod
    def fetch(
        cls,
        endpoint: str,
        *,
        api_key: str | None = None,
        timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> ClusterMap:
        """The cluster map a node was started with (``serve --cluster-map``), through its
        ``GetNodeInfo`` RPC (over TLS with ``credentials``). Raises :class:`ClusterMapError`
        when the node has none, and the call's error (:func:`error_from_rpc`) when the node
        does not answer."""
        info = fetch_node_info(endpoint, api_key=api_key, timeout=timeout, credentials=credentials)
        if info.cluster is None:
            raise ClusterMapError(
                f"node {endpoint} has no cluster map (start it with --cluster-map FILE)"
            )
        return info.cluster


@dataclass(frozen=True)
class NodeInfo:
    """What a node says about itself (``GetNodeInfo``, ``GET /v1/node``)."""

    version: str
    #: this node is shard ``shard_index`` of ``shard_count``; 0 and 0 when not sharded
    shard_index: int
    shard_count: int
    #: ``--topic-partitions`` (0 when not sharded)
    topic_partitions: int
    #: views whose keys are sharded (those with a stream source), sorted; empty when not sharded
    sharded_views: tuple[str, ...]
    #: ``/readyz``
    ready: bool
    #: Kafka loader lag per view (None while unknown)
    loader_lag: dict[str, int | None] = field(default_factory=dict)
    #: the map the node was started with (``--cluster-map``), or None
    cluster: ClusterMap | None = None

    @property
    def sharded(self) -> bool:
        return self.shard_count > 0

    def to_dict(self) -> dict[str, Any]:
        """The ``GET /v1/node`` JSON object (``cluster`` in :meth:`ClusterMap.to_dict` form)."""
        return {
            "version": self.version,
            "shard_index": self.shard_index,
            "shard_count": self.shard_count,
            "topic_partitions": self.topic_partitions,
            "sharded_views": list(self.sharded_views),
            "ready": self.ready,
            "loader_lag": dict(self.loader_lag),
            "cluster": None if self.cluster is None else self.cluster.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NodeInfo:
        cluster = d.get("cluster")
        return cls(
            version=str(d["version"]),
            shard_index=int(d["shard_index"]),
            shard_count=int(d["shard_count"]),
            topic_partitions=int(d["topic_partitions"]),
            sharded_views=tuple(d.get("sharded_views") or ()),
            ready=bool(d["ready"]),
            loader_lag=dict(d.get("loader_lag") or {}),
            cluster=None if cluster is None else ClusterMap.from_dict(cluster),
        )

    def to_proto(self) -> pb.GetNodeInfoResponse:
        msg = pb.GetNodeInfoResponse(
            version=self.version,
            shard_index=self.shard_index,
            shard_count=self.shard_count,
            topic_partitions=self.topic_partitions,
            sharded_views=list(self.sharded_views),
            ready=self.ready,
        )
        for view, lag in self.loader_lag.items():
            entry = msg.loader_lag.add(view=view)
            if lag is not None:
                entry.lag = lag
        if self.cluster is not None:
            msg.cluster.CopyFrom(self.cluster.to_proto())
        return msg

    @classmethod
    def from_proto(cls, msg: pb.GetNodeInfoResponse) -> NodeInfo:
        return cls(
            version=msg.version,
            shard_index=msg.shard_index,
            shard_count=msg.shard_count,
            topic_partitions=msg.topic_partitions,
            sharded_views=tuple(msg.sharded_views),
            ready=msg.ready,
            loader_lag={e.view: e.lag if e.HasField("lag") else None for e in msg.loader_lag},
            cluster=ClusterMap.from_proto(msg.cluster) if msg.HasField("cluster") else None,
        )


def _metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def sharded_views(registry: Registry, topic_partitions: int) -> dict[str, int]:
    """Views the nodes shard (those with a stream source) -> partition count of the topic."""
    return {
        v.name: topic_partitions
        for v in registry.feature_views.values()
        if v.stream_source is not None
    }


def open_channel(
    endpoint: str, credentials: grpc.ChannelCredentials | None = None, options: Any = ()
) -> grpc.Channel:
    """A blocking channel to ``endpoint``: TLS with ``credentials``
    (``grpc.ssl_channel_credentials(ca, key, cert)``), else plaintext."""
    if credentials is not None:
        return grpc.secure_channel(endpoint, credentials, options)
    return grpc.insecure_channel(endpoint, options)


def fetch_node_info(
    endpoint: str,
    *,
    api_key: str | None = None,
    timeout: float = 5.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> NodeInfo:
    """A node's ``GetNodeInfo`` (blocking; over TLS with ``credentials``); gRPC errors are
    raised as :class:`FeatureServingError` (:func:`error_from_rpc`)."""
    with open_channel(endpoint, credentials) as channel:
        call = channel.unary_unary(
            NODE_INFO_METHOD,
            request_serializer=pb.GetNodeInfoRequest.SerializeToString,
            response_deserializer=pb.GetNodeInfoResponse.FromString,
        )
        try:
            resp = call(pb.GetNodeInfoRequest(), timeout=timeout, metadata=_metadata(api_key))
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
    return NodeInfo.from_proto(resp)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Done callback of a losing attempt: reads its outcome so that asyncio does not log
    'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()


class ClusterChannels:
    """grpc.aio channels to every replica of every shard; raw-bytes unary calls.

    :meth:`call` sends already-serialized request bytes to one replica of a shard and returns
    the response bytes (no Python protobuf objects on this path). Replicas of a shard are used
    in turn (round robin). A replica answering ``UNAVAILABLE`` (connection refused, a stopping
    node) is marked down for ``down_seconds`` and the call goes on to the next replica; replicas
    marked down are tried last, not skipped. A replica that has not answered within
    ``hedge_after`` seconds gets a hedge: the same call to the next replica that is up; the
    first answer wins and the other call is cancelled (at most one hedge per call; none with a
    single replica or ``hedge_after=None``; at most ``hedge_budget`` hedges per call over
    time, with ``hedge_burst`` in reserve). All of it within one deadline, ``timeout``. Other
    errors (``INVALID_ARGUMENT``, ``FAILED_PRECONDITION`` / wrong_shard, ``PERMISSION_DENIED``,
    ``DEADLINE_EXCEEDED``, ...) are raised as the :class:`grpc.aio.AioRpcError`, not retried.

    Channels are opened on first use, on the running event loop; use one instance from one
    event loop.
    """

    def __init__(
        self,
        cluster: ClusterMap,
        *,
        down_seconds: float = 5.0,
        hedge_after: float | None = 0.05,
        hedge_budget: float = 0.1,
        hedge_burst: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if hedge_after is not None and hedge_after < 0:
            raise InvalidArgumentError(f"hedge_after must be >= 0 or None, got {hedge_after}")
        if hedge_budget < 0 or hedge_burst < 0:
            raise InvalidArgumentError("hedge_budget and hedge_burst must be >= 0")
        self.cluster = cluster
        self.down_seconds = down_seconds
        self.hedge_after = hedge_after
        #: hedges are a budget, not a reflex: each call earns ``hedge_budget`` of a hedge (up
        #: to ``hedge_burst`` saved), each hedge spends one. When every replica is slow
        #: (overload), hedging everything would double the load; the budget caps it.
        self.hedge_budget = hedge_budget
        self.hedge_burst = hedge_burst
        self._hedge_tokens = hedge_burst
        #: hedges sent, and hedges a slow call did not get because the budget was spent
        self.hedges = {"sent": 0, "over_budget": 0}
        self._credentials = credentials
        # answers can be large (1000 entities x 1000 features); gRPC's default cap is 4 MB
        given = {k for k, _ in options}
        self._options = list(options) + [
            (k, -1)
            for k in ("grpc.max_receive_message_length", "grpc.max_send_message_length")
            if k not in given
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], Any] = {}
        self._turn = {k: itertools.count() for k in cluster.shards}
        #: endpoint -> time.monotonic() until which it counts as down
        self._down: dict[str, float] = {}

    # -- replicas --------------------------------------------------------------------------

    def _replicas(self, shard: int) -> list[str]:
        try:
            return self.cluster.shards[shard]
        except KeyError:
            raise InvalidArgumentError(
                f"no shard {shard}: the cluster has shards 0..{self.cluster.shard_count - 1}"
            ) from None

    def _is_down(self, endpoint: str, now: float) -> bool:
        until = self._down.get(endpoint)
        return until is not None and until > now

    def up_replicas(self, shard: int) -> list[str]:
        """The endpoints of ``shard`` not currently marked down, in map order."""
        now = time.monotonic()
        return [ep for ep in self._replicas(shard) if not self._is_down(ep, now)]

    def set_ready(self, endpoint: str, ready: bool) -> None:
        """Health news from outside (a router's probes): a replica that is not ready (down,
        or still catching up on its partitions) counts as down until it is ready again: tried
        last, never hedged to."""
        if ready:
            self._down.pop(endpoint, None)
        else:
            self._down[endpoint] = math.inf

    def _order(self, shard: int) -> list[str]:
        """Replicas of ``shard`` in the order this call tries them: round robin, those
        marked down last."""
        reps = self._replicas(shard)
        if len(reps) == 1:
            return reps
        start = next(self._turn[shard]) % len(reps)
        turn = reps[start:] + reps[:start]
        if not self._down:
            return turn
        now = time.monotonic()
        return sorted(turn, key=lambda ep: self._is_down(ep, now))

    def _mark_down(self, endpoint: str, e: grpc.aio.AioRpcError, failures: list[str]) -> None:
        self._down[endpoint] = time.monotonic() + self.down_seconds
        failures.append(f"{endpoint}: {e.details()}")

    def _callable(self, endpoint: str, method: str) -> Any:
        mc = self._calls.get((endpoint, method))
        if mc is None:
            ch = self._channels.get(endpoint)
            if ch is None:
                if self._credentials is not None:
                    ch = grpc.aio.secure_channel(endpoint, self._credentials, self._options)
                else:
                    ch = grpc.aio.insecure_channel(endpoint, self._options)
                self._channels[endpoint] = ch
            mc = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
            self._calls[(endpoint, method)] = mc
        return mc

    # -- calls -----------------------------------------------------------------------------

    @staticmethod
    def _left(
        deadline: float | None, loop: asyncio.AbstractEventLoop, shard: int, failures: list[str]
    ) -> float | None:
        if deadline is None:
            return None
        left = deadline - loop.time()
        if left <= 0:
            tried = f" (unavailable: {'; '.join(failures)})" if failures else ""
            raise _rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"shard {shard}: the deadline expired before a replica answered{tried}",
            )
        return left

    @staticmethod
    def _all_failed(shard: int, failures: list[str]) -> grpc.aio.AioRpcError:
        return _rpc_error(
            grpc.StatusCode.UNAVAILABLE,
            f"shard {shard}: no replica answered ({'; '.join(failures)})",
        )

    async def call(
        self,
        shard: int,
        method: str,
        body: bytes,
        *,
        metadata: Sequence[tuple[str, str]] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Sends ``body`` to a replica of ``shard`` (``method``: a full gRPC path such as
        ``/feature_serving.v1.FeatureService/GetFeatureVector``) and returns the answer's
        bytes; ``timeout`` bounds the whole call, fail-over and hedge included."""
        self._hedge_tokens = min(self.hedge_burst, self._hedge_tokens + self.hedge_budget)
        order = self._order(shard)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        md = tuple(metadata) if metadata else None
        failures: list[str] = []
        if self.hedge_after is None or len(order) == 1:
            for ep in order:
                left = self._left(deadline, loop, shard, failures)
                try:
                    out = await self._attempt(ep, method, body, md, left)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    self._mark_down(ep, e, failures)
                    continue
                self._down.pop(ep, None)
                return out
            raise self._all_failed(shard, failures)
        return await self._hedged(
            shard, order, method, body, metadata=md, deadline=deadline, failures=failures
        )

    async def call_replica(
        self,
        endpoint: str,
        method: str,
        body: bytes,
        *,
        metadata: Sequence[tuple[str, str]] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """One call to one replica (a health check), no fail-over, no hedge."""
        return await self._attempt(
            endpoint, method, body, tuple(metadata) if metadata else None, timeout
        )

    async def _attempt(
        self,
        endpoint: str,
        method: str,
        body: bytes,
        metadata: tuple[tuple[str, str], ...] | None,
        timeout: float | None,
    ) -> bytes:
        out: bytes = await self._callable(endpoint, method)(
            body, timeout=timeout, metadata=metadata
        )
        return out

    async def _hedged(
        self,
        shard: int,
        order: list[str],
        method: str,
        body: bytes,
        *,
        metadata: tuple[tuple[str, str], ...] | None,
        deadline: float | None,
        failures: list[str],
    ) -> bytes:
        loop = asyncio.get_running_loop()
        pending: dict[asyncio.Task[bytes], str] = {}
        nxt = 0
        hedged = False

        def launch(left: float | None) -> None:
            nonlocal nxt
            ep = order[nxt]
            nxt += 1
            task = loop.create_task(self._attempt(ep, method, body, metadata, left))
            task.add_done_callback(_retrieve)
            pending[task] = ep

        try:
            while True:
                if not pending:
                    if nxt == len(order):
                        raise self._all_failed(shard, failures)
                    launch(self._left(deadline, loop, shard, failures))
                can_hedge = (
                    not hedged
                    and nxt < len(order)
                    and not self._is_down(order[nxt], time.monotonic())
                )
                done, _ = await asyncio.wait(
                    pending,
                    timeout=self.hedge_after if can_hedge else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    # the attempt in flight is slow: the same call to another replica too,
                    # if the budget allows
                    hedged = True
                    if self._hedge_tokens < 1:
                        self.hedges["over_budget"] += 1
                        continue
                    if deadline is None or deadline - loop.time() > 0:
                        self._hedge_tokens -= 1
                        self.hedges["sent"] += 1
                        launch(None if deadline is None else deadline - loop.time())
                    continue
                # an answer first, whatever else finished at the same time
                for task in sorted(done, key=lambda t: t.exception() is not None):
                    ep = pending.pop(task)
                    e = task.exception()
                    if e is None:
                        self._down.pop(ep, None)
                        return task.result()
                    if (
                        isinstance(e, grpc.aio.AioRpcError)
                        and e.code() == grpc.StatusCode.UNAVAILABLE
                    ):
                        self._mark_down(ep, e, failures)
                        continue
                    raise e
        finally:
            for task in pending:
                task.cancel()

    async def close(self) -> None:
        """Closes every channel (calls in flight are cancelled)."""
        channels = list(self._channels.values())
        self._channels.clear()
        self._calls.clear()
        for ch in channels:
            await ch.close(None)


def _status_of_code() -> dict[str, grpc.StatusCode]:
    """``serving.errors`` code (the JSON error body's) -> gRPC status, from the classes."""
    out: dict[str, grpc.StatusCode] = {}
    todo: list[type[FeatureServingError]] = [FeatureServingError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.code, grpc.StatusCode[cls.grpc_status])
        todo.extend(cls.__subclasses__())
    return out


_STATUS_OF_CODE = _status_of_code()
_STATUS_OF_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class _Http1(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a node, one request at a time.

    The router's parts are small POSTs answered with a ``Content-Length`` body; an aiohttp
    client call costs about 40 us of CPU more than one on this connection (docs/benchmarks.md,
    "Scale-out"), two of them per routed request. It handles only what a node sends:
    ``Content-Length`` answers (chunked ones are refused as a protocol error), ``Connection:
    close``, and a node closing an idle connection (it leaves the pool).
    """

    def __init__(self, pool: list[_Http1]) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        #: bytes of the answer in ``buf``, once its head is read (-1 before); its head length
        self.need = -1
        self.head = 0
        self.status = 0
        #: the node asked to close (Connection: close) or the connection is gone
        self.closing = False
        #: any byte of an answer arrived for the request in flight
        self.answered = False
        self.pool = pool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a TCP or TLS transport (uvloop's TLS one is no asyncio.Transport subclass)
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered = True
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            try:
                self.status = int(head[9:12])
                at = head.index(b"\r\ncontent-length:") + 17
                stop = head.find(b"\r\n", at)
                length = int(head[at : stop if stop >= 0 else len(head)])
            except ValueError:
                self.fail(ConnectionError(f"unexpected HTTP answer head: {head[:200]!r}"))
                return
            self.closing = b"\r\nconnection: close" in head
            self.head = end + 4
            self.need = self.head + length
        if len(buf) >= self.need:
            body = bytes(buf[self.head : self.need])
            del buf[: self.need]
            self.need = -1
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result((self.status, body))

    def fail(self, e: BaseException) -> None:
        self.closing = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(e)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closing = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"connection lost: {exc or 'closed by the node'}"))
        with contextlib.suppress(ValueError):
            self.pool.remove(self)


class _Http1Pool:
    """Idle keep-alive connections to one node's HTTP address; a new one when none is idle."""

    def __init__(self, address: str, ssl_context: ssl.SSLContext | None) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.ssl = ssl_context
        self.idle: list[_Http1] = []
        self.host_header = address.encode()

    async def _connect(self) -> _Http1:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: _Http1(self.idle),
            self.host,
            self.port,
            ssl=self.ssl,
            server_hostname=self.host if self.ssl is not None else None,
        )
        return conn

    async def post(self, path: bytes, body: bytes, headers: bytes) -> tuple[int, bytes]:
        """``headers``: extra header lines, each ending in CRLF. A reused connection that
        the node closed before answering is retried once on a new one (an idle connection
        closed as the request went out); parts are reads, so sending one twice is harmless."""
        request = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
            path,
            self.host_header,
            len(body),
            headers,
            body,
        )
        loop = asyncio.get_running_loop()
        while True:
            reused = bool(self.idle)
            conn = self.idle.pop() if reused else await self._connect()
            waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
            conn.waiter, conn.answered = waiter, False
            assert conn.transport is not None
            conn.transport.write(request)
            done = False
            try:
                answer = await waiter
                done = True
            except ConnectionError:
                if reused and not conn.answered:
                    continue
                raise
            finally:
                if not done:  # cancelled (deadline, hedge won) or failed: unusable
                    conn.fail(ConnectionError("request abandoned"))
                elif conn.closing:  # the node said Connection: close
                    conn.transport.close()
                else:
                    self.idle.append(conn)
            return answer

    def close(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            if conn.transport is not None:
                conn.transport.close()


class HttpClusterChannels(ClusterChannels):
    """:class:`ClusterChannels` whose calls of the methods in ``http_paths`` go to a replica's
    HTTP address (``ClusterMap.http``) as ``POST <path>`` over keep-alive connections, when the
    map gives the replica one; everything else goes over gRPC as before.

    An HTTP call (over :class:`_Http1Pool`) costs the caller well under half the CPU of a
    ``grpc.aio`` call, and a node answers HTTP at about 3x the rate of gRPC
    (docs/benchmarks.md, "Scale-out"). Failures are
    raised as the :class:`grpc.aio.AioRpcError` of the matching status (the node's JSON error
    code, else its HTTP status; connection failures UNAVAILABLE, timeouts DEADLINE_EXCEEDED),
    so fail-over, hedging and the callers' error handling are the same on both transports.
    """

    def __init__(
        self,
        cluster: ClusterMap,
        *,
        http_paths: Mapping[str, str],
        ssl_context: ssl.SSLContext | None = None,
        **options: Any,
    ) -> None:
        super().__init__(cluster, **options)
        self._paths = {k: v.encode() for k, v in http_paths.items()}
        self._ssl = ssl_context
        self._pools: dict[str, _Http1Pool] = {}

    async def _attempt(
        self,
        endpoint: str,
        method: str,
        body: bytes,
        metadata: tuple[tuple[str, str], ...] | None,
        timeout: float | None,
    ) -> bytes:
        address = self.cluster.http.get(endpoint)
        path = self._paths.get(method)
        if address is None or path is None:
            return await super()._attempt(endpoint, method, body, metadata, timeout)
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = _Http1Pool(address, self._ssl)
        headers = b"Content-Type: application/octet-stream\r\n"
        for k, v in metadata or ():
            line = f"{k}: {v}\r\n".encode("latin-1", "replace")
            if line.count(b"\n") != 1 or line.count(b"\r") != 1:
                raise _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"bad header {k!r}")
            headers += line
        try:
            async with asyncio.timeout(timeout):
                status, data = await pool.post(path, body, headers)
        except TimeoutError:
            raise _rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{address}: no answer in time"
            ) from None
        except (OSError, ssl.SSLError) as e:  # ConnectionError is an OSError
            raise _rpc_error(grpc.StatusCode.UNAVAILABLE, f"{address}: {e}") from None
        if status == 200:
            return data
        code, message = "", data.decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            err = json.loads(data)["error"]
            code, message = str(err["code"]), str(err["message"])
        grpc_code = _STATUS_OF_CODE.get(code) or _STATUS_OF_HTTP.get(
            status, grpc.StatusCode.INTERNAL
        )
        raise _rpc_error(grpc_code, message)

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()
        await super().close()
