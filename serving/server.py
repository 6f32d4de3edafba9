"""The serving process: gRPC (grpc.aio) and HTTP (aiohttp) on one asyncio loop.

Python handles the envelope only (routing, content type, deadline, errors). The request body goes
to the Rust core as bytes and the response body comes back as bytes: decoding entity keys,
lookups, TTL and encoding happen in one call with the GIL released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import __version__
from serving._proto.feast.serving import ServingService_pb2 as feast_pb2
from serving._proto.feature_serving.v1 import feature_service_pb2 as v1_pb2
from serving.config import ServeSettings
from serving.errors import (
    DeadlineExceededError,
    FeatureServingError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from serving.store import Store

log = logging.getLogger("serving.server")

FEAST_SERVICE = "feast.serving.ServingService"
V1_SERVICE = "feature_serving.v1.FeatureService"
JSON = "application/json"

_DTYPE_NAMES = {
    "bool": v1_pb2.DTYPE_BOOL,
    "int32": v1_pb2.DTYPE_INT32,
    "int64": v1_pb2.DTYPE_INT64,
    "float32": v1_pb2.DTYPE_FLOAT,
    "float64": v1_pb2.DTYPE_DOUBLE,
    "string": v1_pb2.DTYPE_STRING,
    "bytes": v1_pb2.DTYPE_BYTES,
    "timestamp": v1_pb2.DTYPE_TIMESTAMP,
    "float32_array": v1_pb2.DTYPE_FLOAT_ARRAY,
}


def _json_error(status: int, code: str, message: str) -> web.Response:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return web.Response(status=status, body=body, content_type=JSON)


class FeatureServer:
    """Both frontends over one open :class:`Store`."""

    def __init__(self, store: Store, settings: ServeSettings) -> None:
        self.store = store
        self.settings = settings
        self._core = store.core
        self._core.configure_serving(
            max_entities=settings.max_entities,
            max_features=settings.max_features,
            json_float32_shortest=settings.json_float32_shortest,
        )
        self.grpc_port = 0
        self.http_port = 0
        self.ready = False
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._stopping = asyncio.Event()

    # -- HTTP ------------------------------------------------------------------------------

    def _http_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_message_bytes, middlewares=[self._http_errors]
        )
        app.router.add_post("/get-online-features", self._http_handler("feast_http"))
        app.router.add_post("/v1/feature-vector", self._http_handler("v1_http"))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/v1/feature-views", self._http_list_views)
        return app

    @web.middleware
    async def _http_errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except FeatureServingError as e:
            return _json_error(e.http_status, e.code, e.message)
        except web.HTTPRequestEntityTooLarge:
            return _json_error(
                413,
                "message_too_large",
                f"request body exceeds {self.settings.max_message_bytes} bytes",
            )
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _json_error(e.status, e.reason.lower().replace(" ", "_"), e.text or e.reason)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return _json_error(500, "internal", "internal error; see the server log")

    def _http_handler(self, api: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        serve = self._core.serve

        async def handle(request: web.Request) -> web.Response:
            ctype = request.content_type
            # Feast's SDK and curl -d send application/json or no type; anything else is a
            # client mistake worth naming.
            if ctype not in (JSON, "application/octet-stream") and request.headers.get(
                "Content-Type"
            ):
                raise InvalidArgumentError(
                    f"unsupported content type '{ctype}'; send application/json"
                )
            body = await request.read()
            return web.Response(body=serve(api, body), content_type=JSON)

        return handle

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready = self.ready and not self.store.closed
        return web.json_response(
            {"status": "ready" if ready else "not ready", "store_open": not self.store.closed},
            status=200 if ready else 503,
        )

    async def _http_list_views(self, _request: web.Request) -> web.Response:
        reg = self.store.registry
        return web.json_response(
            {
                "feature_views": [
                    {
                        "name": v.name,
                        "join_keys": [{"name": k.name, "dtype": k.dtype} for k in v.join_keys],
                        "features": [
                            {"name": f.name, "dtype": f.dtype, "dim": f.dim} for f in v.features
                        ],
                        "ttl_seconds": v.ttl_seconds,
                    }
                    for v in reg.feature_views.values()
                ],
                "feature_services": [
                    {"name": s.name, "features": [str(r) for r in s.features]}
                    for s in reg.feature_services.values()
                ],
            }
        )

    # -- gRPC ------------------------------------------------------------------------------

    def _grpc_unary(
        self, fn: Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Bytes in, bytes out (no Python protobuf objects), errors mapped in one place."""

        async def handler(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            remaining = context.time_remaining()
            try:
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceededError("the deadline expired before the request started")
                return await fn(request, context)
            except FeatureServingError as e:
                await context.abort(grpc.StatusCode[e.grpc_status], e.message)
            raise AssertionError("unreachable: abort raises")

        return grpc.unary_unary_rpc_method_handler(handler)

    def _grpc_core(self, api: str) -> grpc.RpcMethodHandler[Any, Any]:
        serve = self._core.serve

        async def call(request: bytes, _context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            return serve(api, request)

        return self._grpc_unary(call)

    async def _serving_info(
        self, _request: bytes, _ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        return feast_pb2.GetFeastServingInfoResponse(version=__version__).SerializeToString()

    async def _list_views(self, _request: bytes, _ctx: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        resp = v1_pb2.ListFeatureViewsResponse()
        for v in self.store.registry.feature_views.values():
            info = resp.feature_views.add(name=v.name, ttl_seconds=v.ttl_seconds)
            for k in v.join_keys:
                info.join_keys.add(name=k.name, dtype=_DTYPE_NAMES[k.dtype])
            for f in v.features:
                info.features.add(name=f.name, dtype=_DTYPE_NAMES[f.dtype], dim=f.dim or 0)
        return resp.SerializeToString()

    async def _list_services(
        self, _request: bytes, _ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        resp = v1_pb2.ListFeatureServicesResponse()
        for s in self.store.registry.feature_services.values():
            resp.feature_services.add(name=s.name, refs=[str(r) for r in s.features])
        return resp.SerializeToString()

    def _grpc_server(self) -> grpc.aio.Server:
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    FEAST_SERVICE,
                    {
                        "GetOnlineFeatures": self._grpc_core("feast_grpc"),
                        "GetFeastServingInfo": self._grpc_unary(self._serving_info),
                    },
                ),
                grpc.method_handlers_generic_handler(
                    V1_SERVICE,
                    {
                        "GetFeatureVector": self._grpc_core("v1_grpc"),
                        "ListFeatureViews": self._grpc_unary(self._list_views),
                        "ListFeatureServices": self._grpc_unary(self._list_services),
                    },
                ),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (FEAST_SERVICE, V1_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return server

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        for name in ("", FEAST_SERVICE, V1_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._grpc = self._grpc_server()
        self.grpc_port = self._grpc.add_insecure_port(f"{s.host}:{s.grpc_port}")
        if self.grpc_port == 0:
            raise ResourceExhaustedError(f"cannot bind gRPC to {s.host}:{s.grpc_port}")
        await self._grpc.start()
        self._runner = web.AppRunner(
            self._http_app(), access_log=None, shutdown_timeout=s.grace_seconds
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.http_port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else s.http_port
        self.ready = True
        for name in ("", FEAST_SERVICE, V1_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving on %s: gRPC port %d, HTTP port %d", s.host, self.grpc_port, self.http_port
        )

    async def stop(self) -> None:
        """Stops accepting, lets in-flight requests finish within the grace period, closes."""
        self.ready = False
        with contextlib.suppress(Exception):
            await self._health.enter_graceful_shutdown()
        grace = self.settings.grace_seconds
        tasks = []
        if self._grpc is not None:
            tasks.append(self._grpc.stop(grace))
        if self._runner is not None:
            tasks.append(self._runner.cleanup())
        await asyncio.gather(*tasks, return_exceptions=True)
        self.store.close()
        log.info("stopped")

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(
        self, on_started: Callable[[FeatureServer], Awaitable[None]] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            if on_started is not None:
                await on_started(self)
            await self._stopping.wait()
        finally:
            t0 = time.monotonic()
            await self.stop()
            log.info("drained and closed in %.2f s", time.monotonic() - t0)


def run(
    store: Store,
    settings: ServeSettings,
    on_started: Callable[[FeatureServer], Awaitable[None]] | None = None,
) -> None:
    """Serves until SIGTERM / SIGINT on uvloop (measured faster than asyncio's default loop)."""
    import uvloop

    server = FeatureServer(store, settings)
    uvloop.run(server.run_until_stopped(on_started))
