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
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Gauge, Histogram

from serving import __version__, _rust_core
from serving.auth import Authenticator, KeyFile
from serving.cluster import ClusterChannels, ClusterMap
from serving.config import ServeSettings
from serving.errors import (
    DeadlineExceededError,
    FeatureServingError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SchemaError,
    ShardAnswerError,
    ShardUnavailableError,
    StorageError,
    UnauthenticatedError,
    WrongShardError,
)
from serving.metrics import LATENCY_BUCKETS, NS, ServingMetrics
from serving.registry import Registry
from serving.server import (
    FEAST_SERVICE,
    JSON,
    V1_SERVICE,
    Frontend,
    _AuthInterceptor,
    _grpc_credentials,
    _principal,
    _ssl_context,
)

log = logging.getLogger("serving.router")

#: the node method that answers a router's part of a request (raw cells, see rust_core/src/route.rs)
CELLS_METHOD = f"/{V1_SERVICE}/GetCells"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"

_NODE_ERRORS: dict[grpc.StatusCode, type[FeatureServingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: ShardUnavailableError,
    grpc.StatusCode.CANCELLED: ShardUnavailableError,
}


def node_error(shard: int, e: grpc.aio.AioRpcError) -> FeatureServingError:
    """A node's error as the router answers it: the node's message, same status class."""
    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        # wrong_shard means the router's map and the nodes disagree: name it.
        if "belongs to shard" in details:
            return WrongShardError(f"{details} (the router's cluster map sent it to shard {shard})")
        return SchemaError(details)
    if code == grpc.StatusCode.UNAVAILABLE and "storage" in details.lower():
        return StorageError(details)
    cls = _NODE_ERRORS.get(code)
    if cls is None:
        return ShardAnswerError(f"shard {shard} answered {code.name}: {details}")
    if cls is ShardUnavailableError:
        return ShardUnavailableError(f"shard {shard}: {details}")
    return cls(details)


def sharded_views(registry: Registry, topic_partitions: int) -> dict[str, int]:
    """Views the nodes shard (those with a stream source) -> partition count of the topic."""
    return {
        v.name: topic_partitions
        for v in registry.feature_views.values()
        if v.stream_source is not None
    }


class RouterMetrics:
    """Per-shard figures of the fan-out, beside the request metrics every frontend has."""

    def __init__(self, metrics: ServingMetrics) -> None:
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
        self.replica_ready = Gauge(
            f"{NS}_router_replica_ready",
            "1 if the router's last health check of a replica said SERVING, else 0",
            ["shard", "endpoint"],
            registry=reg,
        )


class FeatureRouter(Frontend):
    """The router process: both frontends, over a :class:`ClusterChannels`."""

    def __init__(self, registry: Registry, cluster: ClusterMap, settings: ServeSettings) -> None:
        self._registry = registry
        self.cluster = cluster
        self.settings = settings
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
        self.router_metrics = RouterMetrics(self.metrics)
        self.auth: Authenticator | None = None
        if not settings.no_auth:
            if not settings.keys_file:
                raise InvalidArgumentError(
                    "route needs the cluster's keys file (--keys-file, env FS_KEYS_FILE) to "
                    "check API keys, or --no-auth"
                )
            self.auth = Authenticator(KeyFile(settings.keys_file), self.core)
        self.timeout = settings.route_timeout_ms / 1000
        self.channels = ClusterChannels(
            cluster,
            down_seconds=settings.route_down_seconds,
            hedge_after=settings.route_hedge_after_ms / 1000 or None,
        )
        #: per replica endpoint: did its last health check say SERVING
        self.replica_ready: dict[str, bool] = {}
        self.grpc_port = 0
        self.http_port = 0
        self.ready = False
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._stopping = asyncio.Event()
        self._probe_task: asyncio.Task[None] | None = None
        self._health_status: int | None = None

    @property
    def registry(self) -> Registry:
        return self._registry

    # -- the routed call -------------------------------------------------------------------

    async def route(
        self,
        api: str,
        body: bytes,
        scope: int | None,
        authorization: str | None,
        timeout: float | None,
    ) -> bytes:
        """Splits, fans out, merges. ``timeout``: the caller's remaining deadline (seconds)."""
        routed = self.core.route(api, body, scope)
        parts = routed.parts()
        budget = self.timeout if timeout is None else min(timeout, self.timeout)
        if budget <= 0:
            raise DeadlineExceededError("the deadline expired before the request started")
        metadata = (("authorization", authorization),) if authorization else None
        if len(parts) == 1:
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
        return routed.merge(answers)

    async def _ask(
        self,
        shard: int,
        part: bytes,
        metadata: Sequence[tuple[str, str]] | None,
        timeout: float,
    ) -> bytes:
        label = str(shard)
        m = self.router_metrics
        m.parts.labels(label).inc()
        t0 = time.perf_counter()
        try:
            answer = await self.channels.call(
                shard, CELLS_METHOD, part, metadata=metadata, timeout=timeout
            )
        except grpc.aio.AioRpcError as e:
            m.part_errors.labels(label, e.code().name).inc()
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceededError(
                    f"shard {shard} did not answer within {timeout * 1000:.0f} ms"
                ) from None
            raise node_error(shard, e) from None
        m.part_latency.labels(label).observe(time.perf_counter() - t0)
        return answer

    # -- HTTP ------------------------------------------------------------------------------

    def _http_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_message_bytes,
            middlewares=[self._http_metrics, self._http_errors, self._http_auth],
        )
        app.router.add_post("/get-online-features", self._http_handler("feast_http"))
        app.router.add_post("/v1/feature-vector", self._http_handler("v1_http"))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/feature-views", self._http_list_views)
        app.router.add_get("/v1/cluster", self._http_cluster)
        return app

    def _http_handler(self, api: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            ctype = request.content_type
            if ctype not in (JSON, "application/octet-stream") and request.headers.get(
                "Content-Type"
            ):
                raise InvalidArgumentError(
                    f"unsupported content type '{ctype}'; send application/json"
                )
            body = await request.read()
            p = request.get("principal")
            scope = None if p is None or p.read_all else p.scope_id
            out = await self.route(api, body, scope, request.headers.get("Authorization"), None)
            return web.Response(body=out, content_type=JSON)

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
            },
            status=200 if ready else 503,
        )

    async def _http_cluster(self, _request: web.Request) -> web.Response:
        return web.json_response(self.cluster.to_dict())

    # -- gRPC ------------------------------------------------------------------------------

    def _grpc_routed(self, api: str, label: str, method: str) -> grpc.RpcMethodHandler[Any, Any]:
        async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            p = _principal.get()
            if p is None and self.auth is not None:
                raise UnauthenticatedError("missing API key")
            scope = None if p is None or p.read_all else p.scope_id
            authorization = None
            for k, v in context.invocation_metadata() or ():
                if k == "authorization":
                    authorization = v if isinstance(v, str) else v.decode()
                    break
            return await self.route(api, request, scope, authorization, context.time_remaining())

        return self._grpc_unary(call, label, method)

    def _grpc_server(self) -> grpc.aio.Server:
        interceptors = (
            [] if self.auth is None else [_AuthInterceptor(self.auth, self.settings, self.metrics)]
        )
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    FEAST_SERVICE,
                    {
                        "GetOnlineFeatures": self._grpc_routed(
                            "feast_grpc", "feast-grpc", "GetOnlineFeatures"
                        ),
                        "GetFeastServingInfo": self._grpc_unary(
                            self._serving_info, "feast-grpc", "GetFeastServingInfo"
                        ),
                    },
                ),
                grpc.method_handlers_generic_handler(
                    V1_SERVICE,
                    {
                        "GetFeatureVector": self._grpc_routed(
                            "v1_grpc", "grpc", "GetFeatureVector"
                        ),
                        "ListFeatureViews": self._grpc_unary(
                            self._list_views, "grpc", "ListFeatureViews"
                        ),
                        "ListFeatureServices": self._grpc_unary(
                            self._list_services, "grpc", "ListFeatureServices"
                        ),
                    },
                ),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (FEAST_SERVICE, V1_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return server

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
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.is_ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if status != self._health_status:
            self._health_status = status
            for name in ("", FEAST_SERVICE, V1_SERVICE):
                await self._health.set(name, status)

    async def _probe_loop(self) -> None:
        while self.ready:
            with contextlib.suppress(Exception):
                await self.probe_replicas()
            await asyncio.sleep(self.settings.route_probe_seconds)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        for name in ("", FEAST_SERVICE, V1_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._grpc = self._grpc_server()
        address = f"{s.host}:{s.grpc_port}"
        creds = _grpc_credentials(s)
        self.grpc_port = (
            self._grpc.add_secure_port(address, creds)
            if creds is not None
            else self._grpc.add_insecure_port(address)
        )
        if self.grpc_port == 0:
            raise ResourceExhaustedError(f"cannot bind gRPC to {s.host}:{s.grpc_port}")
        await self._grpc.start()
        self._runner = web.AppRunner(
            self._http_app(), access_log=None, shutdown_timeout=s.grace_seconds
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, s.host, s.http_port, reuse_address=True, ssl_context=_ssl_context(s)
        )
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else s.http_port
        if self.auth is None:
            log.warning("routing WITHOUT authentication (--no-auth)")
        self.ready = True
        await self.probe_replicas()
        self._probe_task = asyncio.create_task(self._probe_loop())
        log.info(
            "routing over %d shards on %s: gRPC port %d, HTTP port %d",
            self.cluster.shard_count,
            s.host,
            self.grpc_port,
            self.http_port,
        )

    async def stop(self) -> None:
        self.ready = False
        if self._probe_task is not None:
            self._probe_task.cancel()
        with contextlib.suppress(Exception):
            await self._health.enter_graceful_shutdown()
        grace = self.settings.grace_seconds
        tasks: list[Awaitable[Any]] = []
        if self._grpc is not None:
            tasks.append(self._grpc.stop(grace))
        if self._runner is not None:
            tasks.append(self._runner.cleanup())
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.channels.close()
        log.info("stopped")

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()


def run(registry: Registry, cluster: ClusterMap, settings: ServeSettings) -> None:
    """Routes until SIGTERM / SIGINT, on uvloop."""
    import uvloop

    router = FeatureRouter(registry, cluster, settings)
    log.info("feature-serving %s router", __version__)
    uvloop.run(router.run_until_stopped())
