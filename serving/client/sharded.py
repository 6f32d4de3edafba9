"""Clients of a sharded cluster (docs/scale-out.md): split a batch by owning shard, ask the shards
concurrently, merge the answers back in request order, fail over to another replica of a shard
that is unavailable and hedge to another replica when one is slow (``serving.cluster``)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import ssl
import threading
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from serving._proto.feature_serving.v1 import feature_service_pb2 as pb
from serving.client import keys as py_keys
from serving.client.codec import (
    METHOD,
    Entities,
    KeyColumn,
    build_request,
    columns_result,
    dense_result,
    entity_columns,
)
from serving.client.results import ColumnsResult, DenseResult
from serving.cluster.channels import ClusterChannels, HttpClusterChannels
from serving.cluster.map import ClusterMap, ClusterMapError
from serving.cluster.map import fetch_node_info as _fetch_node_info
from serving.cluster.rpc import (
    CELLS_METHOD,
    CELLS_PATH,
    auth_metadata,
    error_from_rpc,
    open_channel,
)
from serving.errors import FeatureServingError, InvalidArgumentError

if TYPE_CHECKING:
    from serving import _rust_core
    from serving.registry import Registry


@functools.cache
def _core_module() -> ModuleType | None:
    """The Rust extension when installed (the full ``feature-serving`` package), else None
    (the client wheel): routing then encodes keys in Python (``serving.client.keys``)."""
    try:
        from serving import _rust_core
    except ImportError:
        return None
    return _rust_core


def _router_core(
    registry: str | os.PathLike[str] | Registry, shard_count: int, topic_partitions: int
) -> _rust_core.RouterCore:
    """The Rust split and merge of ``registry=``; only the full package has them (ImportError
    naming it otherwise)."""
    core = _core_module()
    if core is None:
        raise ImportError(
            "registry= routes in Rust (serving._rust_core.RouterCore), which the "
            "feature-serving-client package does not include: install the full package, "
            "feature-serving, instead (make wheel; pip install dist/feature_serving-*.whl), "
            "or leave registry out to route in Python"
        )
    from serving.registry import Registry
    from serving.sharding import sharded_views

    reg = registry if isinstance(registry, Registry) else Registry.from_yaml(registry)
    router: _rust_core.RouterCore = core.RouterCore(
        reg.to_core_json(), shard_count, sharded_views(reg, topic_partitions)
    )
    # the nodes enforce their own limits; the client does not guess them
    router.configure_serving(max_entities=1 << 30, max_features=1 << 30)
    return router


#: what the sharded clients take as a cluster: a ClusterMap, or shard index -> endpoints (with
#: ``topic_partitions`` given separately)
Cluster = ClusterMap | Mapping[int, Sequence[str]]
_T = TypeVar("_T")


@dataclass(frozen=True)
class _Parts:
    """A request split by owning shard."""

    #: entities in the request
    n: int
    #: shard -> the request positions it answers, ascending
    rows: dict[int, list[int]]
    #: shard -> its entity columns
    entities: dict[int, dict[str, KeyColumn]]
    #: the request's entity columns, as the answers carry them
    keys: dict[str, list[Any]]


class _Routing:
    """What both sharded clients share: the map, the routing entity's join keys, the owner of
    each entity and the split of a request by owner."""

    def __init__(
        self,
        cluster: Cluster,
        topic_partitions: int | None,
        join_keys: Sequence[tuple[str, str]],
    ) -> None:
        if isinstance(cluster, ClusterMap):
            if topic_partitions is not None and topic_partitions != cluster.topic_partitions:
                raise InvalidArgumentError(
                    f"topic_partitions={topic_partitions} but the cluster map says "
                    f"{cluster.topic_partitions}"
                )
            self.cluster = cluster
        else:
            if topic_partitions is None:
                raise InvalidArgumentError(
                    "topic_partitions: give the stream topics' partition count with a "
                    "{shard: endpoints} cluster (or pass a ClusterMap)"
                )
            if not isinstance(cluster, Mapping):
                raise InvalidArgumentError(
                    "cluster must be a ClusterMap or map shard indices to endpoints, "
                    f"got {cluster!r}"
                )
            self.cluster = ClusterMap(
                shards={k: list(v) for k, v in cluster.items()}, topic_partitions=topic_partitions
            )
        if not join_keys:
            raise InvalidArgumentError("join_keys: give the routing entity's join keys")
        self.join_keys = [name for name, _ in join_keys]
        self.dtypes = [dtype for _, dtype in join_keys]

    def shards_of(self, entities: Entities) -> list[int]:
        return self._owners(entity_columns(entities))

    def _owners(self, cols: Mapping[str, KeyColumn]) -> list[int]:
        missing = [k for k in self.join_keys if k not in cols]
        if missing:
            raise InvalidArgumentError(f"entities: missing routing join key(s) {missing}")
        columns = [cols[k][1] for k in self.join_keys]
        core = _core_module()
        if core is not None:
            keys = core.encode_entity_keys(self.dtypes, columns)
            parts = core.partitions_for_keys(keys, self.cluster.topic_partitions)
        else:
            keys = py_keys.encode_entity_keys(self.dtypes, columns, self.join_keys)
            parts = py_keys.partitions_for_keys(keys, self.cluster.topic_partitions)
        n = self.cluster.shard_count
        return [p % n for p in parts]

    def split(self, entities: Entities) -> _Parts:
        cols = entity_columns(entities)
        shards = self._owners(cols)
        if not shards:
            raise InvalidArgumentError("no entities given")
        uneven = {name: len(c) for name, (_, c) in cols.items() if len(c) != len(shards)}
        if uneven:
            raise InvalidArgumentError(
                f"entity columns must have the same length ({len(shards)}), got {uneven}"
            )
        keys = {name: vals for name, (_, vals) in cols.items()}
        rows: dict[int, list[int]] = {}
        for i, k in enumerate(shards):
            rows.setdefault(k, []).append(i)
        if len(rows) == 1:
            return _Parts(len(shards), rows, {shards[0]: cols}, keys)
        parts = {
            k: {name: (kind, [col[i] for i in idx]) for name, (kind, col) in cols.items()}
            for k, idx in rows.items()
        }
        return _Parts(len(shards), rows, parts, keys)


def _same_features(answers: Mapping[int, DenseResult | ColumnsResult]) -> list[str]:
    names = None
    for k, a in answers.items():
        if names is None:
            names = a.feature_names
        elif a.feature_names != names:
            raise FeatureServingError(
                f"the shards answered different features (registries differ?): {names} and, "
                f"from shard {k}, {a.feature_names}"
            )
    assert names is not None
    return names


def _merge_rows(n: int, rows: Mapping[int, list[int]], parts: Mapping[int, Any]) -> Any:
    """One column (numpy array or list) of ``n`` rows from each shard's part, by position."""
    first = next(iter(parts.values()))
    if isinstance(first, np.ndarray):
        out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
        for k, idx in rows.items():
            out[idx] = parts[k]
        return out
    merged: list[Any] = [None] * n
    for k, idx in rows.items():
        for i, v in zip(idx, parts[k], strict=True):
            merged[i] = v
    return merged


def _merge_dense(p: _Parts, answers: Mapping[int, DenseResult]) -> DenseResult:
    """The shards' dense answers as one, rows in request order."""
    if len(answers) == 1:
        return dataclasses.replace(next(iter(answers.values())), entities=p.keys)
    names = _same_features(answers)
    return DenseResult(
        feature_names=names,
        values=_merge_rows(p.n, p.rows, {k: a.values for k, a in answers.items()}),
        statuses=_merge_rows(p.n, p.rows, {k: a.statuses for k, a in answers.items()}),
        entities=p.keys,
    )


def _merge_columns(p: _Parts, answers: Mapping[int, ColumnsResult]) -> ColumnsResult:
    """The shards' columns answers as one, rows in request order."""
    if len(answers) == 1:
        return dataclasses.replace(next(iter(answers.values())), entities=p.keys)
    names = _same_features(answers)
    timestamps = {k: a.event_timestamps for k, a in answers.items()}
    return ColumnsResult(
        feature_names=names,
        columns={
            f: _merge_rows(p.n, p.rows, {k: a.columns[f] for k, a in answers.items()})
            for f in names
        },
        statuses=_merge_rows(p.n, p.rows, {k: a.statuses for k, a in answers.items()}),
        event_timestamps=(
            None
            if any(t is None for t in timestamps.values())
            else _merge_rows(p.n, p.rows, timestamps)
        ),
        dtypes=next(iter(answers.values())).dtypes,
        entities=p.keys,
    )


def _load_cluster(source: str | os.PathLike[str] | ClusterMap | Mapping[str, Any]) -> ClusterMap:
    if isinstance(source, ClusterMap):
        return source
    if isinstance(source, Mapping):
        return ClusterMap.from_dict(source)
    return ClusterMap.load(source)


_DTYPES = {pb.DTYPE_INT64: "int64", pb.DTYPE_INT32: "int32", pb.DTYPE_STRING: "string"}
_DTYPES[pb.DTYPE_BYTES] = "bytes"


def _bootstrap(
    endpoint: str,
    api_key: str | None,
    timeout: float,
    join_keys: Sequence[tuple[str, str]] | None,
    credentials: grpc.ChannelCredentials | None = None,
) -> tuple[ClusterMap, list[tuple[str, str]]]:
    """The cluster map a node hands out (GetNodeInfo) and, unless given, the routing join keys:
    those of the node's sharded views (ListFeatureViews), which must all have the same."""
    info = _fetch_node_info(endpoint, api_key=api_key, timeout=timeout, credentials=credentials)
    if info.cluster is None:
        raise ClusterMapError(
            f"node {endpoint} has no cluster map (start it with --cluster-map FILE)"
        )
    if join_keys is not None:
        return info.cluster, list(join_keys)
    if not info.sharded_views:
        raise InvalidArgumentError(
            f"node {endpoint} has no sharded view to take the routing join keys from: give "
            "join_keys"
        )
    with open_channel(endpoint, credentials) as channel:
        call = channel.unary_unary(
            "/feature_serving.v1.FeatureService/ListFeatureViews",
            request_serializer=pb.ListFeatureViewsRequest.SerializeToString,
            response_deserializer=pb.ListFeatureViewsResponse.FromString,
        )
        try:
            views = call(
                pb.ListFeatureViewsRequest(), timeout=timeout, metadata=auth_metadata(api_key)
            )
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
    keys = {
        v.name: tuple((k.name, _DTYPES.get(k.dtype, "?")) for k in v.join_keys)
        for v in views.feature_views
        if v.name in info.sharded_views
    }
    distinct = set(keys.values())
    if len(distinct) != 1:
        raise InvalidArgumentError(
            f"the sharded views of node {endpoint} do not share one entity's join keys "
            f"({keys}): give join_keys, the entity to route by"
        )
    return info.cluster, list(distinct.pop())


class AsyncShardedFeatureClient:
    """asyncio client of a sharded cluster: routes each entity to the shard that owns it.

    ``cluster`` is a :class:`~serving.cluster.ClusterMap` (from a file:
    :meth:`from_cluster_map`; from a node: :meth:`from_node`) or ``{shard index: [endpoints]}``
    with ``topic_partitions`` (the stream topics' partition count). ``join_keys`` are the routing
    entity's join keys as ``(name, dtype)`` in the view's order (``[("user_id", "int64")]``):
    an entity's owner is ``murmur2(encode_key(join key values)) % topic_partitions % N``, as
    the nodes compute it.

    A request is split by owning shard, the parts go out concurrently (``asyncio.gather``) over
    :class:`~serving.cluster.ClusterChannels`, and the answers are merged back in request
    order. Per part: replicas in turn, fail-over on UNAVAILABLE (the replica is then tried last
    for ``down_seconds``), a hedge to another replica after ``hedge_after`` seconds without an
    answer (None: no hedging), all within the call's ``timeout`` (one deadline for the whole
    call). Other errors are raised as :class:`~serving.errors.FeatureServingError`
    (``WrongShardError``, ``DeadlineExceededError``, ...); a shard with no replica answering
    raises ``StorageError`` naming the shard and its endpoints.

    With ``registry`` (the cluster's ``features.yaml``, or a :class:`~serving.Registry`) the
    client routes as ``feature-serving route`` does: the request is split and the answers
    merged in Rust (:class:`serving._rust_core.RouterCore`), and the parts are raw cells
    (``GetCells``), sent to a replica's HTTP port when the map gives it (``ssl_context`` for
    nodes serving TLS), else over gRPC. Same answers, a fraction of the CPU on the caller and
    on the nodes (docs/benchmarks.md, "Scale-out"); the registry must be the nodes' (a node
    answering other types is an error, never a misread value).
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        topic_partitions: int | None = None,
        join_keys: Sequence[tuple[str, str]],
        api_key: str | None = None,
        timeout: float = 1.0,
        down_seconds: float = 5.0,
        hedge_after: float | None = 0.05,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        registry: str | os.PathLike[str] | Registry | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._routing = _Routing(cluster, topic_partitions, join_keys)
        self.cluster = self._routing.cluster
        self.timeout = timeout
        self._metadata = auth_metadata(api_key)
        #: split and merge in Rust (with a registry), else per-shard GetFeatureVector calls
        self._core: _rust_core.RouterCore | None = None
        channel_options: dict[str, Any] = {
            "down_seconds": down_seconds,
            "hedge_after": hedge_after,
            "credentials": credentials,
            "options": options,
        }
        if registry is None:
            self.channels = ClusterChannels(self.cluster, **channel_options)
            return
        self._core = _router_core(registry, self.cluster.shard_count, self.cluster.topic_partitions)
        if self.cluster.http:
            self.channels = HttpClusterChannels(
                self.cluster,
                http_paths={CELLS_METHOD: CELLS_PATH},
                ssl_context=ssl_context,
                **channel_options,
            )
        else:
            self.channels = ClusterChannels(self.cluster, **channel_options)

    @classmethod
    def from_cluster_map(
        cls,
        source: str | os.PathLike[str] | ClusterMap | Mapping[str, Any],
        *,
        join_keys: Sequence[tuple[str, str]],
        **options: Any,
    ) -> AsyncShardedFeatureClient:
        """From a cluster map file (YAML/JSON), a :class:`ClusterMap` or its dict form."""
        return cls(_load_cluster(source), join_keys=join_keys, **options)

    @classmethod
    async def from_node(
        cls,
        endpoint: str,
        *,
        join_keys: Sequence[tuple[str, str]] | None = None,
        api_key: str | None = None,
        bootstrap_timeout: float = 5.0,
        **options: Any,
    ) -> AsyncShardedFeatureClient:
        """From the cluster map node ``endpoint`` was started with (``GetNodeInfo``). Without
        ``join_keys``, those of the node's sharded views (which must share one entity).
        ``credentials`` (TLS) serve the bootstrap calls as well as the shards' channels."""
        cluster, keys = await asyncio.to_thread(
            _bootstrap, endpoint, api_key, bootstrap_timeout, join_keys, options.get("credentials")
        )
        return cls(cluster, join_keys=keys, api_key=api_key, **options)

    @property
    def shard_count(self) -> int:
        return self.cluster.shard_count

    @property
    def topic_partitions(self) -> int:
        return self.cluster.topic_partitions

    @property
    def join_keys(self) -> list[str]:
        return list(self._routing.join_keys)

    def shards_of(self, entities: Entities) -> list[int]:
        """The owning shard of each entity of ``entities`` (request order)."""
        return self._routing.shards_of(entities)

    def up_replicas(self, shard: int) -> list[str]:
        """Replicas of ``shard`` not currently marked down (:class:`ClusterChannels`)."""
        return self.channels.up_replicas(shard)

    async def _fan_out(
        self, method: str, parts: Sequence[tuple[int, bytes]], timeout: float | None
    ) -> list[bytes]:
        """Each ``(shard, body)`` to a replica of its shard, concurrently, within one deadline;
        the answers in the same order. One part failing cancels the others."""
        t = timeout or self.timeout
        calls = [
            self.channels.call(k, method, body, metadata=self._metadata, timeout=t)
            for k, body in parts
        ]
        try:
            if len(calls) == 1:
                return [await calls[0]]
            tasks = [asyncio.ensure_future(c) for c in calls]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:  # one part failed: the others are not waited for
                    task.cancel()
                raise
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from None

    async def _ask(
        self,
        entities: Entities,
        features: Sequence[str] | None,
        feature_service: str | None,
        dense: bool,
        timeout: float | None,
    ) -> tuple[_Parts, dict[int, pb.GetFeatureVectorResponse]]:
        p = self._routing.split(entities)
        bodies = {
            k: build_request({}, features, feature_service, dense, columns=part).SerializeToString()
            for k, part in p.entities.items()
        }
        outs = await self._fan_out(METHOD, list(bodies.items()), timeout)
        return p, {
            k: pb.GetFeatureVectorResponse.FromString(out)
            for k, out in zip(bodies, outs, strict=True)
        }

    async def _routed(
        self,
        entities: Entities,
        features: Sequence[str] | None,
        feature_service: str | None,
        dense: bool,
        timeout: float | None,
    ) -> tuple[pb.GetFeatureVectorResponse, dict[str, list[Any]]]:
        """The request split in Rust, its cells parts sent concurrently, merged in Rust; with
        the request's entity columns."""
        assert self._core is not None
        cols = entity_columns(entities)
        body = build_request(
            entities, features, feature_service, dense, columns=cols
        ).SerializeToString()
        routed = self._core.route("v1_grpc", body, None)
        answers = await self._fan_out(CELLS_METHOD, routed.parts(), timeout)
        keys = {name: vals for name, (_, vals) in cols.items()}
        out = routed.merge(answers)
        if not isinstance(out, bytes):
            raise InvalidArgumentError(
                f"on-demand feature views ({', '.join(out.views)}) run their Python transforms "
                "on the server: ask a node or `feature-serving route` for them, not the routing "
                "client"
            )
        return pb.GetFeatureVectorResponse.FromString(out), keys

    async def get_dense(
        self,
        entities: Entities,
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
    ) -> DenseResult:
        """:meth:`FeatureClient.get_dense` over the cluster, rows in request order."""
        if self._core is not None:
            return dense_result(
                *await self._routed(entities, features, feature_service, True, timeout)
            )
        p, answers = await self._ask(entities, features, feature_service, True, timeout)
        return _merge_dense(p, {k: dense_result(r) for k, r in answers.items()})

    async def get_features(
        self,
        entities: Entities,
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
    ) -> ColumnsResult:
        """:meth:`FeatureClient.get_features` over the cluster, rows in request order."""
        if self._core is not None:
            resp, keys = await self._routed(entities, features, feature_service, False, timeout)
            return columns_result(resp, keys)
        p, answers = await self._ask(entities, features, feature_service, False, timeout)
        return _merge_columns(p, {k: columns_result(r) for k, r in answers.items()})

    async def close(self) -> None:
        await self.channels.close()

    async def __aenter__(self) -> AsyncShardedFeatureClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ShardedFeatureClient:
    """Blocking client of a sharded cluster: :class:`AsyncShardedFeatureClient` (same
    arguments, same routing, fail-over and hedging) run on a private event loop thread, so
    that every shard's part goes out concurrently and a slow replica can be hedged.

    ``ShardedFeatureClient({0: [...], 1: [...]}, topic_partitions=P, join_keys=[...])``, or
    :meth:`from_cluster_map` / :meth:`from_node`. Thread-safe: calls from several threads share
    the loop and the channels.
    """

    def __init__(self, cluster: Cluster, **options: Any) -> None:
        """The arguments of :class:`AsyncShardedFeatureClient`, which does the work."""
        self._client = AsyncShardedFeatureClient(cluster, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fs-route", daemon=True)
        self._thread.start()
        self._closed = False

    @classmethod
    def from_cluster_map(
        cls,
        source: str | os.PathLike[str] | ClusterMap | Mapping[str, Any],
        *,
        join_keys: Sequence[tuple[str, str]],
        **options: Any,
    ) -> ShardedFeatureClient:
        """From a cluster map file (YAML/JSON), a :class:`ClusterMap` or its dict form."""
        return cls(_load_cluster(source), join_keys=join_keys, **options)

    @classmethod
    def from_node(
        cls,
        endpoint: str,
        *,
        join_keys: Sequence[tuple[str, str]] | None = None,
        api_key: str | None = None,
        bootstrap_timeout: float = 5.0,
        **options: Any,
    ) -> ShardedFeatureClient:
        """From the cluster map node ``endpoint`` was started with (``GetNodeInfo``). Without
        ``join_keys``, those of the node's sharded views (which must share one entity).
        ``credentials`` (TLS) serve the bootstrap calls as well as the shards' channels."""
        cluster, keys = _bootstrap(
            endpoint, api_key, bootstrap_timeout, join_keys, options.get("credentials")
        )
        return cls(cluster, join_keys=keys, api_key=api_key, **options)

    @property
    def cluster(self) -> ClusterMap:
        return self._client.cluster

    @property
    def shard_count(self) -> int:
        return self._client.shard_count

    @property
    def topic_partitions(self) -> int:
        return self._client.topic_partitions

    @property
    def join_keys(self) -> list[str]:
        return self._client.join_keys

    @property
    def timeout(self) -> float:
        return self._client.timeout

    def shards_of(self, entities: Entities) -> list[int]:
        """The owning shard of each entity of ``entities`` (request order)."""
        return self._client.shards_of(entities)

    def up_replicas(self, shard: int) -> list[str]:
        """Replicas of ``shard`` not currently marked down."""
        return self._client.up_replicas(shard)

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            coro.close()
            raise InvalidArgumentError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get_dense(
        self,
        entities: Entities,
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
    ) -> DenseResult:
        """:meth:`FeatureClient.get_dense` over the cluster, rows in request order."""
        return self._run(
            self._client.get_dense(
                entities, features, feature_service=feature_service, timeout=timeout
            )
        )

    def get_features(
        self,
        entities: Entities,
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        timeout: float | None = None,
    ) -> ColumnsResult:
        """:meth:`FeatureClient.get_features` over the cluster, rows in request order."""
        return self._run(
            self._client.get_features(
                entities, features, feature_service=feature_service, timeout=timeout
            )
        )

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> ShardedFeatureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
