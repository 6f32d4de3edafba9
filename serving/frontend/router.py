"""`feature-serving route`: one endpoint in front of a sharded cluster, for clients that cannot
route themselves (the Feast SDK and its HTTP API, curl, Locust, any gRPC client).

The router answers the same APIs as a node (Feast HTTP and gRPC, v1 HTTP and gRPC) and gives
the same bytes a single node holding every row would give. Per request:

1. the Rust core (``RouterCore.route``, GIL released) parses and plans the request exactly as
   a node does, checks the caller's scope, and splits it by owning shard into
   ``GetCellsRequest`` parts (docs/scale-out.md, "Router");
2. the parts go concurrently to a replica of their shard (``ClusterChannels``: round robin,
   fail-over on UNAVAILABLE, a hedge to another replica when one is slow), carrying the
   caller's own ``authorization`` header, so every node checks the key again;
3. the Rust core gathers the answers (raw cells) back into request order and encodes the
   response (``Routed.merge``, GIL released).

The router holds no rows and no state besides the registry and the cluster map.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving import __version__, _rust_core
from serving.cluster.channels import ClusterChannels, HttpClusterChannels
from serving.cluster.map import ClusterMap
from serving.cluster.rpc import CELLS_METHOD, CELLS_PATH
from serving.config import ServeSettings
from serving.errors import (
    DeadlineExceededError,
    FeatureServingError,
    InvalidArgumentError,
    ResourceExhaustedError,
    SchemaError,
    ShardAnswerError,
    ShardUnavailableError,
    UnauthenticatedError,
    WrongShardError,
    error_class,
)
from serving.feature_log import FeatureLogger, new_request_id
from serving.feature_log.metrics import FeatureLogCollector
from serving.frontend.admission import LoopLagGuard
from serving.frontend.auth import Authenticator, KeyFile
from serving.frontend.console import Console, RouterFacts
from serving.frontend.console.routes import replica_node_info
from serving.frontend.endpoints import JSON, Endpoint
from serving.frontend.grpc_auth import principal
from serving.frontend.router_writes import RouterWrites
from serving.frontend.tls import node_credentials, node_ssl_context
from serving.frontend.transforms import TransformPool
from serving.metrics import LATENCY_BUCKETS, NS, ServingMetrics
from serving.ondemand import OnDemandRunner
from serving.registry import Registry
from serving.sharding import sharded_views

log = logging.getLogger("serving.router")

HEALTH_METHOD = "/grpc.health.v1.Health/Check"

#: a node's gRPC statuses the router answers otherwise than a client reads them: the shard
#: (not the router's store) is unavailable; the rest as ``serving.errors.error_class`` says
_SHARD_UNAVAILABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def node_error(shard: int, e: grpc.aio.AioRpcError, shard_count: int) -> FeatureServingError:
    """A node's error as the router answers it: the node's message, same status class."""
    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        # wrong_shard means the router's map and the nodes disagree: name it.
        if "belongs to shard" in details:
            return WrongShardError(f"{details} (the router's cluster map sent it to shard {shard})")
        return SchemaError(details)
    if code in _SHARD_UNAVAILABLE:
        cls: type[FeatureServingError] = ShardUnavailableError
    else:
        cls = error_class(grpc_status=code.name)
    name = f"shard {shard} of {shard_count}"
    if cls is FeatureServingError:
        return ShardAnswerError(f"{name} answered {code.name}: {details}")
    if cls is ShardUnavailableError and not details.startswith(name):
        # UNAVAILABLE from ClusterChannels names the shard and the replicas tried already;
        # a replica's own UNAVAILABLE (a storage error, a stopping node) was failed over
        details = f"{name} is unavailable: {details}"
    return cls(details)


class RouterMetrics:
    """Per-shard figures of the fan-out, beside the request metrics every frontend has."""

    def __init__(self, metrics: ServingMetrics, shards: Sequence[int]) -> None:
        reg = metrics.registry
        self.part_latency = Histogram(
            f"{NS}_router_part_seconds",
            "Time from sending a part of a routed request to its shard until the answer",
            ["shard"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.part_errors = Counter(
            f"{NS}_router_part_errors_total",
            "Parts of routed requests that failed, by shard and gRPC status",
            ["shard", "code"],
            registry=reg,
        )
        self.parts = Counter(
            f"{NS}_router_parts_total",
            "Parts routed requests were split into, by shard",
            ["shard"],
            registry=reg,
        )
        #: per shard: its parts counter and latency histogram (label lookups cost ~5 us)
        self.per_shard = self.shard_children(shards)
        self.replica_ready = Gauge(
            f"{NS}_router_replica_ready",
            "1 if the router's last health check of a replica said SERVING, else 0",
            ["shard", "endpoint"],
            registry=reg,
        )

    def shard_children(self, shards: Sequence[int]) -> dict[int, tuple[Any, Any]]:
        return {k: (self.parts.labels(str(k)), self.part_latency.labels(str(k))) for k in shards}


class RouterCollector(Collector):
    """The channels' hedge counts and the router's readiness, read when Prometheus scrapes."""

    def __init__(self, channels: Callable[[], ClusterChannels], ready: Callable[[], bool]) -> None:
        self.channels = channels
        self.ready = ready

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            f"{NS}_ready",
            "1 while the router is ready (/readyz 200: every shard has a SERVING replica), else 0",
            value=1 if self.ready() else 0,
        )
        c = CounterMetricFamily(
            f"{NS}_router_hedges",
            "Slow parts also sent to another replica (sent), or not because the hedge budget "
            "was spent (over_budget)",
            labels=["outcome"],
        )
        for outcome, n in self.channels().hedges.items():
            c.add_metric([outcome], n)
        yield c


class FeatureRouter(RouterWrites):
    """The router process: both frontends, over a :class:`ClusterChannels`."""

    def __init__(self, registry: Registry, cluster: ClusterMap, settings: ServeSettings) -> None:
        super().__init__(settings)
        self._registry = registry
        self.cluster = cluster
        self.core = _rust_core.RouterCore(
            registry.to_core_json(),
            cluster.shard_count,
            sharded_views(registry, cluster.topic_partitions),
        )
        self.core.configure_serving(
            max_entities=settings.max_entities,
            max_features=settings.max_features,
            json_float32_shortest=settings.json_float32_shortest,
        )
        self.metrics = ServingMetrics()
        self.metrics.describe_build(rocksdb="none (router)", core=_rust_core.__version__)
        self.router_metrics = RouterMetrics(self.metrics, sorted(cluster.shards))
        #: request-time on-demand views are computed here, over the inputs the shards answer
        #: (they may come from views keyed by different entities, so from different shards)
        self.on_demand = OnDemandRunner(registry, self.metrics.observe_transform)
        self.transforms = TransformPool(
            lambda: self.on_demand, settings.transform_timeout_ms / 1000
        )
        self.auth: Authenticator | None = None
        if not settings.no_auth:
            if not settings.keys_file:
                raise InvalidArgumentError(
                    "route needs the cluster's keys file (--keys-file, env FS_KEYS_FILE) to "
                    "check API keys, or --no-auth"
                )
            self.auth = Authenticator.for_settings(
                settings, self.core, KeyFile(settings.keys_file), registry.project, self.security
            )
        self.timeout = settings.route_timeout_ms / 1000
        self.channels = self._channels_for(cluster)
        self.metrics.add_collector(RouterCollector(lambda: self.channels, self.is_ready))
        #: overload guard: requests that start while the event loop is more than
        #: --max-loop-lag-ms behind are refused at once (429 / RESOURCE_EXHAUSTED), which
        #: bounds the queueing delay of admitted ones; None when 0
        self.guard = (
            LoopLagGuard(settings.max_loop_lag_ms / 1000) if settings.max_loop_lag_ms > 0 else None
        )
        #: served-feature logging (docs/feature-logging.md): the router logs the merged
        #: answers with --log-at router; with nodes (the default) it passes request ids on
        if settings.log_at not in ("nodes", "router"):
            raise InvalidArgumentError(f"--log-at must be nodes or router, not {settings.log_at!r}")
        self.feature_log = FeatureLogger(self.core)
        self._configure_logging()
        self.metrics.add_collector(FeatureLogCollector(self.feature_log))
        #: per replica endpoint: did its last health check say SERVING
        self.replica_ready: dict[str, bool] = {}
        self._probe_task: asyncio.Task[None] | None = None

    @property
    def registry(self) -> Registry:
        return self._registry

    def _configure_logging(self) -> None:
        #: answers carry a request id while some service of the registry is logged
        self.request_ids = any(s.logging for s in self._registry.feature_services.values())
        if self.settings.log_at == "router":
            self.feature_log.configure(self._registry)

    def _channels_for(self, cluster: ClusterMap) -> ClusterChannels:
        """Channels to the cluster's replicas: parts over HTTP to replicas whose HTTP address
        the map gives (``--route-transport auto``, the default, or ``http``, which requires
        one for every replica), over gRPC otherwise; health checks always over gRPC."""
        s = self.settings
        options: dict[str, Any] = {
            "down_seconds": s.route_down_seconds,
            "hedge_after": s.route_hedge_after_ms / 1000 or None,
            "hedge_budget": s.route_hedge_budget,
            "credentials": node_credentials(s),
        }
        if s.route_transport not in ("auto", "grpc", "http"):
            raise InvalidArgumentError(
                f"--route-transport must be auto, grpc or http, not {s.route_transport!r}"
            )
        if s.route_transport == "grpc":
            return ClusterChannels(cluster, **options)
        if s.route_transport == "http":
            missing = [e for e in cluster.endpoints if e not in cluster.http]
            if missing:
                raise InvalidArgumentError(
                    f"--route-transport http: the cluster map gives no HTTP address for "
                    f"{missing} (write {{grpc: 'host:port', http: 'host:port'}})"
                )
        return HttpClusterChannels(
            cluster,
            http_paths={CELLS_METHOD: CELLS_PATH},
            ssl_context=node_ssl_context(s),
            **options,
        )

    async def reload(self) -> dict[str, Any]:
        """Re-reads the registry file and the cluster map file and routes the requests that
        follow by them. Both are read and checked before anything is swapped; requests in
        flight finish on the old channels, which close once the longest of them is over."""
        s = self.settings
        registry = Registry.from_yaml(s.config)
        cluster = ClusterMap.load(s.cluster_map) if s.cluster_map else self.cluster
        self.core.reload(
            registry.to_core_json(),
            cluster.shard_count,
            sharded_views(registry, cluster.topic_partitions),
        )
        self.on_demand = OnDemandRunner(registry, self.metrics.observe_transform)
        self._registry = registry
        await asyncio.to_thread(self._configure_logging)
        if self.auth is not None:
            self.auth.set_project(registry.project)
        changed = cluster != self.cluster
        if changed:
            for shard, endpoints in self.cluster.shards.items():
                for e in endpoints:
                    with contextlib.suppress(KeyError):
                        self.router_metrics.replica_ready.remove(str(shard), e)
            old = self.channels
            self.channels = self._channels_for(cluster)
            self.channels.hedges = old.hedges
            self.cluster = cluster
            self.router_metrics.per_shard = self.router_metrics.shard_children(
                sorted(cluster.shards)
            )
            self.replica_ready = {}
            loop = asyncio.get_running_loop()
            loop.call_later(self.timeout + 1.0, lambda: loop.create_task(old.close()))
            await self.probe_replicas()
        log.info(
            "reloaded: %d feature views, cluster map %s",
            len(registry.feature_views),
            "changed" if changed else "unchanged",
        )
        return {
            "feature_views": sorted(registry.feature_views),
            "cluster_changed": changed,
            "cluster": cluster.to_dict(),
        }

    async def _admin_reload(self, request: web.Request) -> web.Response:
        self._require_admin(request)
        return web.json_response(await self.reload())

    # -- the routed call -------------------------------------------------------------------

    async def route(
        self,
        api: str,
        body: bytes,
        scope: int | None,
        authorization: str | None,
        timeout: float | None,
        *,
        request_id: str | None = None,
    ) -> bytes:
        """Splits, fans out, merges. ``timeout``: the caller's remaining deadline (seconds).
        ``request_id``: logged here (``--log-at router``) or passed on to the nodes."""
        if self.guard is not None and self.guard.behind():
            self.guard.shed += 1
            raise ResourceExhaustedError("router overloaded: event loop behind; retry with backoff")
        at_router = self.settings.log_at == "router"
        routed = self.core.route(api, body, scope, request_id if at_router else None)
        parts = routed.parts()
        budget = self.timeout if timeout is None else min(timeout, self.timeout)
        if budget <= 0:
            raise DeadlineExceededError("the deadline expired before the request started")
        md: list[tuple[str, str]] = [("authorization", authorization)] if authorization else []
        if request_id is not None and not at_router:
            md.append(("x-request-id", request_id))
        metadata = tuple(md) or None
        t0 = time.perf_counter()
        if not parts:  # on-demand views over request fields only
            answers = []
        elif len(parts) == 1:
            shard, part = parts[0]
            answers = [await self._ask(shard, part, metadata, budget)]
        else:
            tasks = [
                asyncio.ensure_future(self._ask(shard, part, metadata, budget))
                for shard, part in parts
            ]
            try:
                answers = await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                raise
        out = routed.merge(answers)
        if isinstance(out, bytes):
            return out
        return await self.transforms.complete(out, budget - (time.perf_counter() - t0))

    async def _ask(
        self,
        shard: int,
        part: bytes,
        metadata: Sequence[tuple[str, str]] | None,
        timeout: float,
    ) -> bytes:
        m = self.router_metrics
        count, latency = m.per_shard[shard]
        count.inc()
        t0 = time.perf_counter()
        try:
            answer = await self.channels.call(
                shard, CELLS_METHOD, part, metadata=metadata, timeout=timeout
            )
        except grpc.aio.AioRpcError as e:
            m.part_errors.labels(str(shard), e.code().name).inc()
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceededError(
                    f"shard {shard} of {self.cluster.shard_count} did not answer within "
                    f"{timeout * 1000:.0f} ms"
                ) from None
            raise node_error(shard, e, self.cluster.shard_count) from None
        latency.observe(time.perf_counter() - t0)
        return answer

    # -- HTTP ------------------------------------------------------------------------------

    def _extra_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/cluster", self._http_cluster)
        app.router.add_post("/admin/reload", self._admin_reload)
        self._router_write_routes(app)
        facts = RouterFacts(
            lambda: self.cluster,
            lambda: self.replica_ready,
            lambda endpoint, auth: replica_node_info(self.channels, endpoint, auth),
        )
        Console(self, facts).install(app)

    def _http_serving(self, endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
        api = endpoint.api

        async def handle(request: web.Request) -> web.Response:
            body, scope = await self._serving_body(request)
            auth = request.headers.get("Authorization")
            if not self.request_ids:
                out = await self.route(api, body, scope, auth, None)
                return web.Response(body=out, content_type=JSON)
            rid = request.headers.get("X-Request-Id") or new_request_id()
            out = await self.route(api, body, scope, auth, None, request_id=rid)
            return web.Response(body=out, content_type=JSON, headers={"X-Request-Id": rid})

        return handle

    def is_ready(self) -> bool:
        """Ready while every shard has a replica whose last health check said SERVING."""
        return self.ready and all(
            any(self.replica_ready.get(e, False) for e in endpoints)
            for endpoints in self.cluster.shards.values()
        )

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready = self.is_ready()
        return web.json_response(
            {
                "status": "ready" if ready else "not ready",
                "shards": {
                    str(shard): {e: self.replica_ready.get(e, False) for e in endpoints}
                    for shard, endpoints in sorted(self.cluster.shards.items())
                },
                "feature_logging": self.feature_log.stats(),
            },
            status=200 if ready else 503,
        )

    async def _http_cluster(self, _request: web.Request) -> web.Response:
        return web.json_response(self.cluster.to_dict())

    # -- gRPC ------------------------------------------------------------------------------

    def _grpc_serving(
        self, endpoint: Endpoint
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        api = endpoint.api

        async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            p = principal.get()
            if p is None and self.auth is not None:
                raise UnauthenticatedError("missing API key")
            scope = None if p is None or p.read_all else p.scope_id
            authorization = rid = None
            for k, v in context.invocation_metadata() or ():
                if k == "authorization":
                    authorization = v if isinstance(v, str) else v.decode()
                elif k == "x-request-id":
                    rid = v if isinstance(v, str) else v.decode()
            if self.request_ids:
                rid = rid or new_request_id()
                context.set_trailing_metadata((("x-request-id", rid),))
            else:
                rid = None
            remaining = context.time_remaining()
            return await self.route(api, request, scope, authorization, remaining, request_id=rid)

        return call

    def _extra_grpc_methods(self) -> dict[tuple[str, str], grpc.RpcMethodHandler[Any, Any]]:
        return self._feast_write_grpc_methods()

    # -- replica health --------------------------------------------------------------------

    async def _probe(self, shard: int, endpoint: str) -> bool:
        metadata = (
            (("authorization", f"Bearer {self.settings.node_api_key}"),)
            if self.settings.node_api_key
            else None
        )
        try:
            raw = await self.channels.call_replica(
                endpoint, HEALTH_METHOD, b"", metadata=metadata, timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return False
        resp = health_pb2.HealthCheckResponse.FromString(raw)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    async def probe_replicas(self) -> None:
        """Health-checks every replica once; replicas not SERVING (down, or catching up on
        their partitions) are avoided until they are."""
        checks = [(shard, e) for shard, endpoints in self.cluster.shards.items() for e in endpoints]
        results = await asyncio.gather(*(self._probe(s, e) for s, e in checks))
        for (shard, endpoint), ok in zip(checks, results, strict=True):
            if ok != self.replica_ready.get(endpoint):
                log.info(
                    "replica %s of shard %d is %s", endpoint, shard, "ready" if ok else "not ready"
                )
            self.replica_ready[endpoint] = ok
            self.channels.set_ready(endpoint, ok)
            self.router_metrics.replica_ready.labels(str(shard), endpoint).set(1 if ok else 0)
        await self._set_health(self.is_ready())

    async def _probe_loop(self) -> None:
        while self.ready:
            with contextlib.suppress(Exception):
                await self.probe_replicas()
            await asyncio.sleep(self.settings.route_probe_seconds)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.guard is not None:
            self.guard.start(asyncio.get_running_loop())
        await self._listen()
        if self.auth is None:
            log.warning("routing WITHOUT authentication (--no-auth)")
        self.feature_log.start()
        self.ready = True
        await self.probe_replicas()
        self._probe_task = asyncio.create_task(self._probe_loop())
        log.info(
            "routing over %d shards on %s: gRPC port %d, HTTP port %d",
            self.cluster.shard_count,
            self.settings.host,
            self.grpc_port,
            self.http_port,
        )

    async def stop(self) -> None:
        self.ready = False
        if self._probe_task is not None:
            self._probe_task.cancel()
        await self._close_listeners()
        if self.guard is not None:
            self.guard.stop()
        await self.channels.close()
        self.transforms.close()
        await asyncio.to_thread(self.feature_log.stop, self.settings.grace_seconds)
        await self._close_router_writes()
        log.info("stopped")


def run(registry: Registry, cluster: ClusterMap, settings: ServeSettings) -> None:
    """Routes until SIGTERM / SIGINT, on uvloop."""
    import uvloop

    router = FeatureRouter(registry, cluster, settings)
    log.info("feature-serving %s router", __version__)
    uvloop.run(router.run_until_stopped())
