"""A node: the frontends over one open store (``feature-serving serve``).

Per serving request (the endpoint table, ``serving.frontend.endpoints``): the body and the
caller's read scope go to :class:`~serving.frontend.admission.Admission`, which runs the Rust
core's ``serve`` (GIL released) inline or off the loop; the answer bytes go back as they are.
Beside them: ``/readyz`` and gRPC health follow the Kafka loaders' lag, ``GetNodeInfo`` /
``GET /v1/node`` tell routers and clients about the shard, and the admin routes
(``serving.frontend.admin``) run batch jobs, snapshots, pushes and registry reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web

from serving import __version__, _rust_core
from serving.admin_client import forget_server, record_server
from serving.cluster.map import NodeInfo
from serving.config import ServeSettings, default_keys_file
from serving.errors import InvalidArgumentError, UnauthenticatedError
from serving.feature_log import FeatureLogger, new_request_id
from serving.feature_log.metrics import FeatureLogCollector
from serving.frontend.admission import Admission
from serving.frontend.auth import Authenticator, KeyFile
from serving.frontend.console import Console, NodeFacts
from serving.frontend.endpoints import V1_SERVICE, Endpoint
from serving.frontend.feast_write import FeastWrites
from serving.frontend.grpc_auth import principal
from serving.frontend.hot_http import Dispatch
from serving.metrics import CoreCollector, ServingMetrics
from serving.registry import Registry
from serving.sharding import Ownership, sharded_views
from serving.store import Store

if TYPE_CHECKING:
    from serving.loaders.kafka.loader import KafkaLoader

log = logging.getLogger("serving.server")


class FeatureServer(FeastWrites):
    """Both frontends over one open :class:`Store`."""

    answers_node_only = True

    def __init__(self, store: Store, settings: ServeSettings) -> None:
        super().__init__(settings)
        self.store = store
        self._core = store.core
        self._core.configure_serving(
            max_entities=settings.max_entities,
            max_features=settings.max_features,
            json_float32_shortest=settings.json_float32_shortest,
            encode_threads=settings.encode_threads,
        )
        self.metrics = ServingMetrics()
        self.metrics.describe_build(rocksdb=_rust_core.ROCKSDB_BINDING, core=_rust_core.__version__)
        self.metrics.add_collector(
            CoreCollector(
                self._core,
                lambda: {v.name: v.ttl_seconds for v in self.store.registry.feature_views.values()},
                self._loader_stats,
                self.is_ready,
            )
        )
        #: how serving requests run: inline, batched, or off the loop while it is behind
        store.observe_transforms(self.metrics.observe_transform)
        self.admission = Admission(self._core, settings, lambda: self.store.on_demand)
        #: served-feature logging (docs/feature-logging.md): the registry's `logging:` blocks
        self.feature_log = FeatureLogger(self._core)
        self.feature_log.configure(store.registry)
        self.metrics.add_collector(FeatureLogCollector(self.feature_log))
        #: per view: time of the last batch job this server ran, and the rows those jobs applied
        self.batch_runs: dict[str, float] = {}
        self.batch_totals: dict[str, dict[str, int]] = {}
        #: this node's shard (None: not sharded; no ownership check at all)
        self.shard = settings.shard()
        self._configure_sharding()
        #: the cluster map handed out by GetNodeInfo / GET /v1/node (None: not given)
        self.cluster = settings.cluster()
        #: background loaders (Kafka) started with the server; each has start/stop/stats
        self.loaders: list[KafkaLoader] = []
        self.auth: Authenticator | None = None
        if not settings.no_auth:
            keys = KeyFile(settings.keys_file or default_keys_file(settings.data_dir))
            self.auth = Authenticator.for_settings(
                settings, self._core, keys, store.registry.project, self.security
            )
        self._health_task: asyncio.Task[None] | None = None

    @property
    def registry(self) -> Registry:
        return self.store.registry

    def _configure_logging(self) -> None:
        self.feature_log.configure(self.store.registry)

    def _configure_sharding(self) -> None:
        """Ownership check in the Rust serving path: only views with a stream source are
        sharded (their keys are spread over the topic's partitions)."""
        if self.shard is None:
            return
        views = sharded_views(self.store.registry, self.settings.topic_partitions)
        self._core.configure_sharding(Ownership(self.shard, views).to_core())

    # -- HTTP ------------------------------------------------------------------------------

    def _extra_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/node", self._http_node)
        Console(self, NodeFacts(self._core.serving_stats, self._loader_stats)).install(app)
        self._admin_routes(app)
        self._feast_write_routes(app)

    def _loader_stats(self) -> list[dict[str, Any]]:
        """Batch-loader progress from the store's meta (watermarks, Delta versions) and the
        jobs this server ran; Kafka loaders add theirs."""
        from serving.loaders.batch import meta

        views: dict[str, dict[str, Any]] = {}
        for v in self.store.registry.feature_views.values():
            if v.batch_source is None:
                continue
            entry: dict[str, Any] = {}
            raw = self.store.get_meta(meta.watermark_key(v.name))
            if raw:
                with contextlib.suppress(ValueError, InvalidArgumentError):
                    t = meta.parse_time(raw.decode())
                    if t is not None:
                        entry["watermark"] = t.timestamp()
            raw = self.store.get_meta(meta.delta_version_key(v.name))
            if raw:
                with contextlib.suppress(ValueError):
                    entry["delta_version"] = int(raw.decode())
            if v.name in self.batch_runs:
                entry["last_success"] = self.batch_runs[v.name]
            entry.update(self.batch_totals.get(v.name, {}))
            views[v.name] = entry
        out: list[dict[str, Any]] = [{"loader": "batch", "views": views}]
        for loader in self.loaders:
            kviews: dict[str, dict[str, Any]] = {}
            lag: dict[tuple[str, int], int] = {}
            for view, st in loader.stats().items():
                kviews[view] = {
                    "applied": st.get("applied", 0),
                    "skipped_older": st.get("skipped_older", 0),
                    "errors": st.get("errors", 0),
                    "dead_lettered": st.get("dead_lettered", 0),
                    "misrouted": st.get("misrouted", 0),
                    "topic": str(st.get("topic", view)),
                    "seconds_since_broker_contact": st.get("seconds_since_broker_contact"),
                }
                for partition, n in (st.get("lag") or {}).items():
                    if n is not None:
                        lag[(str(st.get("topic", view)), int(partition))] = int(n)
            out.append({"loader": "kafka", "views": kviews, "lag": lag})
        return out

    def _http_serving(self, endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
        dispatch = self.admission.dispatch
        api, content_type = endpoint.api, endpoint.content_type

        feature_log = self.feature_log
        own_id = api != "cells"

        async def handle(request: web.Request) -> web.Response:
            body, scope = await self._serving_body(request)
            if not feature_log.active:
                out = dispatch(api, body, scope)
                if not isinstance(out, bytes):
                    out = await out
                return web.Response(body=out, content_type=content_type)
            # logging on: every answer carries its request id, the caller's or a new one; a
            # router's part is logged only under the id the router passes on (--log-at nodes)
            rid = request.headers.get("X-Request-Id") or (new_request_id() if own_id else None)
            out = dispatch(api, body, scope, None, rid)
            if not isinstance(out, bytes):
                out = await out
            resp = web.Response(body=out, content_type=content_type)
            if rid is not None:
                resp.headers["X-Request-Id"] = rid
            return resp

        return handle

    def _hot_dispatch(self, endpoint: Endpoint) -> Dispatch | None:
        # the same core call as _http_serving's handler, without aiohttp's request objects.
        # The audit log and the per-identity concurrency cap are aiohttp middlewares
        # (docs/security.md): a node with either answers every route through aiohttp.
        if not self.settings.hot_http or self.audit is not None:
            return None
        if self.auth is not None and self.auth.limiter is not None:
            return None
        return self.admission.dispatch

    def loader_lag(self) -> dict[str, int | None]:
        """Kafka lag per view: None until the first fetch told the log end, and None while the
        loader has had no broker connection for more than ``broker_timeout_seconds`` (the
        cached log end it would be computed from is stale then)."""
        timeout = self.settings.broker_timeout_seconds
        out: dict[str, int | None] = {}
        for loader in self.loaders:
            for view, st in loader.stats().items():
                silent = st.get("seconds_since_broker_contact")
                stale = timeout > 0 and silent is not None and silent > timeout
                out[view] = None if stale else st.get("lag_total")
        return out

    def broker_silence(self) -> dict[str, float | None]:
        """Seconds since each Kafka loader last saw a broker connection up (about 1 s at
        most while connected; None when it does not track connections)."""
        out: dict[str, float | None] = {}
        for loader in self.loaders:
            for view, st in loader.stats().items():
                silent = st.get("seconds_since_broker_contact")
                out[view] = None if silent is None else round(silent, 1)
        return out

    def is_ready(self) -> bool:
        lag = self.loader_lag()
        caught_up = all(v is not None and v <= self.settings.max_ready_lag for v in lag.values())
        return self.ready and not self.store.closed and caught_up

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready = self.is_ready()
        return web.json_response(
            {
                "status": "ready" if ready else "not ready",
                "store_open": not self.store.closed,
                "kafka_lag": self.loader_lag(),
                "kafka_seconds_since_broker_contact": self.broker_silence(),
                # why a view's topic is not consumed yet (missing topic, no broker): the
                # reason its lag is null
                "kafka_waiting_for": {
                    view: st["waiting_for"]
                    for loader in self.loaders
                    for view, st in loader.stats().items()
                    if st.get("waiting_for")
                },
                # served-feature logging: a failing destination keeps the node serving (and
                # ready); it shows here, in the metrics and in the alert rules
                "feature_logging": self.feature_log.stats(),
            },
            status=200 if ready else 503,
        )

    def node_info(self) -> NodeInfo:
        """What GetNodeInfo and GET /v1/node answer: shard, readiness, loader lag, cluster map."""
        sharded: list[str] = []
        if self.shard is not None:
            sharded = sorted(
                v.name for v in self.store.registry.feature_views.values() if v.stream_source
            )
        return NodeInfo(
            version=__version__,
            shard_index=self.shard.index if self.shard is not None else 0,
            shard_count=self.shard.count if self.shard is not None else 0,
            topic_partitions=self.settings.topic_partitions if self.shard is not None else 0,
            sharded_views=tuple(sharded),
            ready=self.is_ready(),
            loader_lag=dict(sorted(self.loader_lag().items())),
            cluster=self.cluster,
        )

    async def _http_node(self, _request: web.Request) -> web.Response:
        return web.json_response(self.node_info().to_dict())

    def _grpc_serving(
        self, endpoint: Endpoint
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        dispatch = self.admission.dispatch
        api = endpoint.api
        feature_log = self.feature_log
        own_id = api != "cells"

        async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            p = principal.get()
            if p is None and self.auth is not None:
                raise UnauthenticatedError("missing API key")
            scope = None if p is None or p.read_all else p.scope_id
            rid = None
            if feature_log.active:
                rid = _metadata_request_id(context) or (new_request_id() if own_id else None)
                if rid is not None:
                    context.set_trailing_metadata((("x-request-id", rid),))
            out = dispatch(api, request, scope, context.time_remaining(), rid)
            return out if isinstance(out, bytes) else await out

        return call

    async def _node_info(self, _request: bytes, _ctx: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return self.node_info().to_proto().SerializeToString()

    def _extra_grpc_methods(self) -> dict[tuple[str, str], grpc.RpcMethodHandler[Any, Any]]:
        return {
            (V1_SERVICE, "GetNodeInfo"): self._grpc_unary(self._node_info, "grpc", "GetNodeInfo"),
            **self._feast_write_grpc_methods(),
        }

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.admission.start(asyncio.get_running_loop())
        await asyncio.to_thread(self._remove_stale_push_temps)
        await self._listen()
        if s.ingest and any(v.stream_source for v in self.store.registry.feature_views.values()):
            from serving.loaders.kafka.loader import KafkaLoader

            loader = KafkaLoader(
                self.store,
                bootstrap_servers=s.bootstrap_servers or None,
                shard=self.shard,
                expected_partitions=self.settings.topic_partitions or None,
            )
            loader.start()
            self.loaders.append(loader)
        if self.auth is None:
            log.warning(
                "serving WITHOUT authentication (--no-auth): any local process can read every "
                "feature; use API keys outside local experiments"
            )
        self.feature_log.start()
        self.ready = True
        await self._publish_health()
        if self.loaders:
            self._health_task = asyncio.create_task(self._watch_health())
        log.info(
            "serving on %s: gRPC port %d, HTTP port %d", s.host, self.grpc_port, self.http_port
        )
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if s.tls_cert else "http"
        try:
            record_server(self.store.data_dir, f"{scheme}://{host}:{self.http_port}")
        except OSError as e:  # only a convenience for `materialize` / `snapshot create`
            log.warning("cannot record this server's address beside the store: %s", e)
        self._check_own_entry()

    def _check_own_entry(self) -> None:
        """Warns when the cluster map names no endpoint of this node's shard on this node's
        ports: clients and routers that route by the map would never reach it. Only ports are
        compared (host names differ by network: a pod, its service, a load balancer)."""
        shard = self.settings.shard()
        if self.cluster is None or shard is None:
            return
        endpoints = self.cluster.shards.get(shard.index, [])
        ports = {e.rpartition(":")[2] for e in endpoints}
        ports |= {
            a.rpartition(":")[2] for e in endpoints if (a := self.cluster.http.get(e)) is not None
        }
        if str(self.grpc_port) not in ports and str(self.http_port) not in ports:
            log.warning(
                "the cluster map lists shard %d at %s, none on this node's ports (gRPC %d, "
                "HTTP %d): clients and routers that route by the map will not send this node "
                "any request (behind port mapping this is expected)",
                shard.index,
                ", ".join(endpoints) or "no endpoint",
                self.grpc_port,
                self.http_port,
            )

    async def _publish_health(self) -> None:
        await self._set_health(self.is_ready())

    async def _watch_health(self) -> None:
        """gRPC health follows readiness: SERVING only while the Kafka lag is small."""
        while self.ready:
            await self._publish_health()
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Stops accepting, lets in-flight requests finish within the grace period, closes."""
        self.ready = False
        if self._health_task is not None:
            self._health_task.cancel()
        grace = self.settings.grace_seconds
        # Loaders stop after the current batch: rows and offsets applied together.
        await self._close_listeners(
            asyncio.to_thread(loader.stop, grace) for loader in self.loaders
        )
        self.admission.stop()
        # after the listeners drained: every answered request's rows are in the buffer
        await asyncio.to_thread(self.feature_log.stop, grace)
        self._close_writes()
        forget_server(self.store.data_dir)
        self.store.close()
        log.info("stopped")


def _metadata_request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return value if isinstance(value, str) else value.decode()
    return None


def run(
    store: Store,
    settings: ServeSettings,
    on_started: Callable[[FeatureServer], Awaitable[None]] | None = None,
) -> None:
    """Serves until SIGTERM / SIGINT on uvloop (measured faster than asyncio's default loop)."""
    import uvloop

    server = FeatureServer(store, settings)
    uvloop.run(server.run_until_stopped(on_started))
