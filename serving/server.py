"""The serving process: gRPC (grpc.aio) and HTTP (aiohttp) on one asyncio loop.

Python handles the envelope only (routing, content type, deadline, errors). The request body goes
to the Rust core as bytes and the response body comes back as bytes: decoding entity keys,
lookups, TTL and encoding happen in one call with the GIL released.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import signal
import ssl
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import __version__, _rust_core
from serving._proto.feast.serving import ServingService_pb2 as feast_pb2
from serving._proto.feature_serving.v1 import feature_service_pb2 as v1_pb2
from serving.auth import Authenticator, KeyFile, Principal, default_keys_file
from serving.cluster import NodeInfo
from serving.config import ServeSettings
from serving.errors import (
    DeadlineExceededError,
    FeatureServingError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from serving.metrics import CoreCollector, ServingMetrics
from serving.registry import Registry
from serving.store import Store

log = logging.getLogger("serving.server")

FEAST_SERVICE = "feast.serving.ServingService"
V1_SERVICE = "feature_serving.v1.FeatureService"
JSON = "application/json"
#: HTTP paths answered without a key when `open_health` is set
OPEN_HTTP_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: gRPC methods answered without a key when `open_health` is set
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

#: metric labels of the serving routes: (api, method)
HTTP_ROUTES = {
    "/get-online-features": ("feast-http", "get-online-features"),
    "/v1/feature-vector": ("http", "feature-vector"),
    "/v1/cells": ("http", "cells"),
}


def rejection_reason(e: FeatureServingError) -> str | None:
    """Why a request was refused before any lookup, for the rejected-requests counter."""
    if isinstance(e, UnauthenticatedError | PermissionDeniedError):
        return "auth"
    if isinstance(e, ResourceExhaustedError):
        return "overload"
    if isinstance(e, DeadlineExceededError):
        return "deadline"
    if "the limit is" in e.message:
        return "limit"
    if isinstance(e, InvalidArgumentError):
        return "invalid"
    return None


#: the verified caller of the gRPC call being handled (set by the auth interceptor)
_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)

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


class LoopLagGuard:
    """Admission control of the inline mode: an event-loop lag probe with a bounded overflow.

    With the Rust call inline on the loop there is no queue to bound: under overload, requests
    wait in socket buffers and in the loop's ready queue, and the wait grows without bound;
    refusing on the loop alone does not help much either, since refusing costs the loop about
    a quarter of what answering does. So a timer is due every ``interval`` seconds; it runs on
    time while the loop keeps up and late while the loop is busy. A request that starts while
    the loop is more than ``limit`` behind its timer (or within ``cooldown`` of the last time
    it was) is not run inline: it goes to a
    :class:`RequestBatcher` (worker thread, bounded queue), which frees the loop for the
    transport and answers RESOURCE_EXHAUSTED / 429 once ``max_queue`` requests wait; past
    ``hard_factor * limit`` requests are refused at once. The check on the hot path is one
    ``loop.time()`` call and a subtraction (~0.1 us, docs/reliability.md); the timer costs
    ``1/interval`` wakeups a second.
    """

    def __init__(
        self,
        limit_s: float,
        overflow: RequestBatcher | None = None,
        interval_s: float = 0.005,
        hard_factor: float = 5.0,
        cooldown_s: float = 0.5,
    ) -> None:
        self.limit = limit_s
        self.cooldown = cooldown_s
        self._until = 0.0
        self.hard = limit_s * hard_factor
        self.interval = interval_s
        self.overflow = overflow
        #: loop time at which the next tick is due
        self.due = float("inf")
        self.shed = 0
        self.overflowed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tick()

    def _tick(self) -> None:
        assert self._loop is not None
        self.due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self.due, self._tick)

    def behind(self) -> bool:
        """True while the loop is more than ``limit`` behind, and for ``cooldown`` seconds
        after it last was (the hot-path check): running requests inline again at the first
        on-time tick would stall the loop again at once."""
        assert self._loop is not None
        now = self._loop.time()
        if now - self.due > self.limit:
            self._until = now + self.cooldown
            return True
        return now < self._until

    def check_hard(self) -> None:
        """Raises ResourceExhaustedError while the loop is more than the hard limit behind."""
        assert self._loop is not None
        late = self._loop.time() - self.due
        if late > self.hard:
            self.shed += 1
            raise ResourceExhaustedError(
                f"server overloaded: event loop {late * 1000:.0f} ms behind; retry with backoff"
            )

    async def serve_overflow(
        self, api: str, body: bytes, scope: int | None, timeout: float | None = None
    ) -> bytes:
        """A request that arrived while the loop was behind: off the loop, bounded queue."""
        self.check_hard()
        if self.overflow is None:
            self.shed += 1
            raise ResourceExhaustedError("server overloaded: event loop behind; retry with backoff")
        self.overflowed += 1
        return await self.overflow.serve(api, body, scope, timeout)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.due = float("inf")
        if self.overflow is not None:
            self.overflow.close()


#: a request waiting in the batcher: api, body, scope, its future, its deadline (loop time)
_Pending = tuple[str, bytes, int | None, "asyncio.Future[bytes]", float | None]


class RequestBatcher:
    """Coalesces concurrent requests into one Rust call (``serve_many``) on a worker thread.

    While a batch runs, new requests queue and form the next batch, so batches grow with load
    on their own; ``window`` only delays the first request of an idle server. The queue is
    bounded: past ``max_queue`` waiting requests the server answers RESOURCE_EXHAUSTED / 429
    instead of letting latency grow without bound.
    """

    def __init__(self, core: Any, window_s: float, max_batch: int, max_queue: int) -> None:
        self._core = core
        self._window = window_s
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._pending: list[_Pending] = []
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="serve-batch")
        self.batches = 0
        self.requests = 0
        #: requests dropped before the Rust call: caller gone (cancelled) or deadline passed
        self.dropped = 0

    async def serve(
        self, api: str, body: bytes, scope: int | None, timeout: float | None = None
    ) -> bytes:
        """``timeout``: seconds the caller still waits (gRPC deadline); a request still queued
        when it passed is dropped before the Rust call and answered DEADLINE_EXCEEDED."""
        if len(self._pending) >= self._max_queue:
            raise ResourceExhaustedError(
                f"server overloaded: {len(self._pending)} requests queued; retry with backoff"
            )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        deadline = None if timeout is None else loop.time() + timeout
        self._pending.append((api, body, scope, fut, deadline))
        if not self._busy and self._timer is None:
            self._timer = loop.call_later(self._window, self._flush)
        return await fut

    def _flush(self) -> None:
        self._timer = None
        if self._busy or not self._pending:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        batch: list[_Pending] = []
        while self._pending and len(batch) < self._max_batch:
            take = self._pending[: self._max_batch - len(batch)]
            del self._pending[: len(take)]
            batch += [it for it in take if self._live(it, now)]
        if not batch:
            return
        self._busy = True
        self.batches += 1
        self.requests += len(batch)
        work = loop.run_in_executor(
            self._executor, self._core.serve_many, [(a, b, s) for a, b, s, *_ in batch]
        )
        work.add_done_callback(lambda done: self._finish(batch, done))

    def _live(self, item: _Pending, now: float) -> bool:
        """False for a request nobody waits for any more: cancelled (the caller left, gRPC
        cancels the handler at its deadline) or past its deadline; it is answered, not run."""
        fut, deadline = item[3], item[4]
        if fut.done():
            self.dropped += 1
            return False
        if deadline is not None and now >= deadline:
            self.dropped += 1
            fut.set_exception(
                DeadlineExceededError("the deadline expired while the request was queued")
            )
            return False
        return True

    def _finish(
        self,
        batch: list[_Pending],
        done: asyncio.Future[list[bytes | BaseException]],
    ) -> None:
        self._busy = False
        err = done.exception()
        results: list[bytes | BaseException] = (
            [err] * len(batch) if err is not None else done.result()
        )
        for (*_, fut, _deadline), r in zip(batch, results, strict=True):
            if fut.done():  # the caller went away (deadline, disconnect)
                continue
            if isinstance(r, BaseException):
                fut.set_exception(r)
            else:
                fut.set_result(r)
        if self._pending:
            self._flush()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _json_error(status: int, code: str, message: str) -> web.Response:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return web.Response(status=status, body=body, content_type=JSON)


class Frontend(ABC):
    """What every serving frontend shares (a node's `FeatureServer`, the `FeatureRouter`):
    HTTP middlewares (metrics, errors, auth), gRPC method wrapping, health and listing
    endpoints. Subclasses set ``settings``, ``metrics``, ``auth`` and provide ``registry``."""

    settings: ServeSettings
    metrics: ServingMetrics
    auth: Authenticator | None

    @property
    @abstractmethod
    def registry(self) -> Registry:
        """The registry the frontend answers for."""

    # -- lifecycle shared by the node and the router ----------------------------------------

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.grpc_port = 0
        self.http_port = 0
        self.ready = False
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._health_status: int | None = None
        self._stopping = asyncio.Event()

    @abstractmethod
    def _serving_routes(self) -> dict[str, Callable[[web.Request], Awaitable[web.Response]]]:
        """HTTP POST routes of the serving APIs (Feast and v1)."""

    @abstractmethod
    def _serving_methods(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """gRPC method handlers of the serving APIs: (Feast service, v1 service)."""

    @abstractmethod
    async def _readyz(self, request: web.Request) -> web.Response: ...

    @abstractmethod
    def _extra_routes(self, app: web.Application) -> None:
        """Adds the routes only this kind of frontend has."""

    def _require_admin(self, request: web.Request) -> None:
        p = self._principal(request)
        if self.auth is not None:
            if p is None:
                raise UnauthenticatedError("missing API key")
            p.require_admin()

    @staticmethod
    async def _serving_body(request: web.Request) -> tuple[bytes, int | None]:
        """The body of a serving request and the caller's read scope (None: everything)."""
        ctype = request.content_type
        # Feast's SDK and curl -d send application/json or no type; anything else is a
        # client mistake worth naming.
        if ctype not in (JSON, "application/octet-stream") and request.headers.get("Content-Type"):
            raise InvalidArgumentError(f"unsupported content type '{ctype}'; send application/json")
        body = await request.read()
        p = request.get("principal")
        return body, None if p is None or p.read_all else p.scope_id

    def _http_app(self) -> web.Application:
        """The aiohttp application: serving routes, health, metrics, listings, extras."""
        app = web.Application(
            client_max_size=self.settings.max_message_bytes,
            middlewares=[self._http_metrics, self._http_errors, self._http_auth],
        )
        for path, handler in self._serving_routes().items():
            app.router.add_post(path, handler)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/feature-views", self._http_list_views)
        self._extra_routes(app)
        return app

    def _grpc_server(self) -> grpc.aio.Server:
        """The gRPC server (not bound yet): the serving methods, the listings, health and
        reflection, behind the auth interceptor."""
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
        feast, v1 = self._serving_methods()
        feast["GetFeastServingInfo"] = self._grpc_unary(
            self._serving_info, "feast-grpc", "GetFeastServingInfo"
        )
        v1["ListFeatureViews"] = self._grpc_unary(self._list_views, "grpc", "ListFeatureViews")
        v1["ListFeatureServices"] = self._grpc_unary(
            self._list_services, "grpc", "ListFeatureServices"
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(FEAST_SERVICE, feast),
                grpc.method_handlers_generic_handler(V1_SERVICE, v1),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (FEAST_SERVICE, V1_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return server

    @abstractmethod
    async def start(self) -> None:
        """Binds both ports and starts answering."""

    @abstractmethod
    async def stop(self) -> None:
        """Stops accepting, drains within the grace period, releases everything."""

    async def _set_health(self, serving: bool) -> None:
        """gRPC health of every service name: SERVING or NOT_SERVING (set when it changes)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if status != self._health_status:
            self._health_status = status
            for name in ("", FEAST_SERVICE, V1_SERVICE):
                await self._health.set(name, status)

    async def _listen(self) -> None:
        """Binds gRPC and HTTP (ports 0: any free one; the bound ports are set)."""
        s = self.settings
        await self._set_health(False)
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
            self._runner,
            s.host,
            s.http_port,
            reuse_address=True,
            ssl_context=_ssl_context(s),
            backlog=s.http_backlog,
        )
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else s.http_port

    async def _close_listeners(self, also: Iterable[Awaitable[Any]] = ()) -> None:
        """Health NOT_SERVING, then gRPC and HTTP drain within the grace period, while
        ``also`` (other shutdown work) runs alongside."""
        with contextlib.suppress(Exception):
            await self._health.enter_graceful_shutdown()
        tasks: list[Awaitable[Any]] = list(also)
        if self._grpc is not None:
            tasks.append(self._grpc.stop(self.settings.grace_seconds))
        if self._runner is not None:
            tasks.append(self._runner.cleanup())
        await asyncio.gather(*tasks, return_exceptions=True)

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(
        self, on_started: Callable[[Self], Awaitable[None]] | None = None
    ) -> None:
        """Starts, runs until SIGTERM / SIGINT (or :meth:`request_stop`), stops."""
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

    @web.middleware
    async def _http_metrics(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = HTTP_ROUTES.get(request.path)
        if route is None or not self.settings.request_metrics:
            return await handler(request)
        api, method = route
        gauge = self.metrics.in_flight.labels(api)
        gauge.inc()
        t0 = time.perf_counter()
        code = "500"
        try:
            resp = await handler(request)
            code = str(resp.status)
        except asyncio.CancelledError:
            code = "499"  # the client went away
            raise
        finally:
            elapsed = time.perf_counter() - t0
            gauge.dec()
            self.metrics.observe(api, method, code, elapsed)
        if resp.status >= 400:
            err = request.get("error")
            reason = rejection_reason(err) if isinstance(err, FeatureServingError) else None
            if reason is not None:
                self.metrics.rejected.labels(api, reason).inc()
            if isinstance(err, UnauthenticatedError):
                self.metrics.auth_failures.inc()
        self._maybe_log_slow(api, method, code, elapsed, request.headers.get("X-Request-Id"))
        return resp

    def _maybe_log_slow(
        self, api: str, method: str, code: str, elapsed: float, request_id: str | None
    ) -> None:
        limit = self.settings.slow_request_ms
        if limit > 0 and elapsed * 1000 > limit:
            log.warning(
                "slow request",
                extra={
                    "request_id": request_id or uuid.uuid4().hex,
                    "api": api,
                    "method": method,
                    "code": code,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )

    async def _metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @web.middleware
    async def _http_auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.auth is not None and not (
            self.settings.open_health and request.path in OPEN_HTTP_PATHS
        ):
            request["principal"] = self.auth.authenticate(request.headers.get("Authorization"))
        return await handler(request)

    @staticmethod
    def _principal(request: web.Request) -> Principal | None:
        p = request.get("principal")
        return p if isinstance(p, Principal) else None

    @web.middleware
    async def _http_errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except FeatureServingError as e:
            request["error"] = e
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

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _http_list_views(self, _request: web.Request) -> web.Response:
        reg = self.registry
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

    def _grpc_unary(
        self,
        fn: Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]],
        api: str = "grpc",
        method: str = "",
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Bytes in, bytes out (no Python protobuf objects), errors mapped and requests
        counted in one place."""
        metrics = self.metrics
        gauge = metrics.in_flight.labels(api)
        if not self.settings.request_metrics:

            async def bare(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                try:
                    return await fn(request, context)
                except FeatureServingError as e:
                    await context.abort(grpc.StatusCode[e.grpc_status], e.message)
                    raise AssertionError("unreachable: abort raises") from None

            return grpc.unary_unary_rpc_method_handler(bare)

        async def handler(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            t0 = time.perf_counter()
            gauge.inc()
            code = "INTERNAL"
            try:
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceededError("the deadline expired before the request started")
                out = await fn(request, context)
                code = "OK"
                return out
            except FeatureServingError as e:
                code = e.grpc_status
                reason = rejection_reason(e)
                if reason is not None:
                    metrics.rejected.labels(api, reason).inc()
                await context.abort(grpc.StatusCode[e.grpc_status], e.message)
                raise AssertionError("unreachable: abort raises") from None
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            finally:
                gauge.dec()
                elapsed = time.perf_counter() - t0
                metrics.observe(api, method, code, elapsed)
                self._maybe_log_slow(api, method, code, elapsed, None)

        return grpc.unary_unary_rpc_method_handler(handler)

    async def _serving_info(
        self, _request: bytes, _ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        return feast_pb2.GetFeastServingInfoResponse(version=__version__).SerializeToString()

    async def _list_views(self, _request: bytes, _ctx: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        resp = v1_pb2.ListFeatureViewsResponse()
        for v in self.registry.feature_views.values():
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
        for s in self.registry.feature_services.values():
            resp.feature_services.add(name=s.name, refs=[str(r) for r in s.features])
        return resp.SerializeToString()


class FeatureServer(Frontend):
    """Both frontends over one open :class:`Store`."""

    def __init__(self, store: Store, settings: ServeSettings) -> None:
        super().__init__(settings)
        self.store = store
        self._core = store.core
        self._core.configure_serving(
            max_entities=settings.max_entities,
            max_features=settings.max_features,
            json_float32_shortest=settings.json_float32_shortest,
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
        self.batcher: RequestBatcher | None = None
        if settings.batch_window_us > 0:
            self.batcher = RequestBatcher(
                self._core, settings.batch_window_us / 1e6, settings.max_batch, settings.max_queue
            )
        #: overload guard of the serving routes (both modes); None when max_loop_lag_ms is 0
        self.guard: LoopLagGuard | None = None
        if settings.max_loop_lag_ms > 0:
            overflow = None
            if self.batcher is None:
                overflow = RequestBatcher(self._core, 0.0, settings.max_batch, settings.max_queue)
            self.guard = LoopLagGuard(settings.max_loop_lag_ms / 1000, overflow)
        #: per view: time of the last batch job this server ran, and the rows those jobs applied
        self.batch_runs: dict[str, float] = {}
        self.batch_totals: dict[str, dict[str, int]] = {}
        #: this node's shard (None: not sharded; no ownership check at all)
        self.shard = settings.shard()
        self._configure_sharding()
        #: the cluster map handed out by GetNodeInfo / GET /v1/node (None: not given)
        self.cluster = settings.cluster()
        #: background loaders (Kafka) started with the server; each has start/stop/stats
        self.loaders: list[Any] = []
        self.auth: Authenticator | None = None
        if not settings.no_auth:
            keys = KeyFile(settings.keys_file or default_keys_file(settings.data_dir))
            self.auth = Authenticator(keys, self._core)
        self._health_task: asyncio.Task[None] | None = None

    @property
    def registry(self) -> Registry:
        return self.store.registry

    def _configure_sharding(self) -> None:
        """Ownership check in the Rust serving path: only views with a stream source are
        sharded (their keys are spread over the topic's partitions)."""
        if self.shard is None:
            return
        views = {
            v.name: self.settings.topic_partitions
            for v in self.store.registry.feature_views.values()
            if v.stream_source is not None
        }
        self._core.configure_sharding((self.shard.index, self.shard.count, views))

    # -- HTTP ------------------------------------------------------------------------------

    def _serving_routes(self) -> dict[str, Callable[[web.Request], Awaitable[web.Response]]]:
        return {
            "/get-online-features": self._http_handler("feast_http"),
            "/v1/feature-vector": self._http_handler("v1_http"),
            # internal: a router's part of a request over HTTP (serving/router.py)
            "/v1/cells": self._http_handler("cells", "application/octet-stream"),
        }

    def _extra_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/node", self._http_node)
        app.router.add_post("/v1/push", self._http_push)
        app.router.add_post("/admin/materialize", self._admin_materialize)
        app.router.add_post("/admin/registry/reload", self._admin_reload_registry)
        app.router.add_post("/admin/snapshot", self._admin_snapshot)

    def _loader_stats(self) -> list[dict[str, Any]]:
        """Batch-loader progress from the store's meta (watermarks, Delta versions) and the
        jobs this server ran; Kafka loaders add theirs."""
        from serving import batch_loader

        views: dict[str, dict[str, Any]] = {}
        for v in self.store.registry.feature_views.values():
            if v.batch_source is None:
                continue
            entry: dict[str, Any] = {}
            raw = self.store.get_meta(batch_loader.watermark_key(v.name))
            if raw:
                with contextlib.suppress(ValueError, InvalidArgumentError):
                    t = batch_loader.parse_time(raw.decode())
                    if t is not None:
                        entry["watermark"] = t.timestamp()
            raw = self.store.get_meta(batch_loader.delta_version_key(v.name))
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

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError as e:
            raise InvalidArgumentError(f"malformed JSON: {e}") from None
        if not isinstance(body, dict):
            raise InvalidArgumentError("the body must be a JSON object")
        return body

    async def _http_push(self, request: web.Request) -> web.Response:
        """Writes rows to a view: ``{"feature_view": "v", "rows": {"col": [...], ...}}``
        (columns: join keys, ``event_timestamp`` as RFC 3339 or epoch micros, features)."""
        import pyarrow as pa

        body = await self._json_body(request)
        view = body.get("feature_view")
        rows = body.get("rows")
        if not isinstance(view, str) or not isinstance(rows, dict) or not rows:
            raise InvalidArgumentError(
                'expected {"feature_view": name, "rows": {column: [values, ...]}}'
            )
        p = self._principal(request)
        if self.auth is not None and p is not None:
            p.require_write(view)
        self.store.registry.view(view)
        schema = self.store.registry.arrow_schema(view)
        cols = {}
        for name, values in rows.items():
            if not isinstance(values, list):
                raise InvalidArgumentError(f"rows['{name}'] must be a list")
            typ = schema.field(name).type if name in schema.names else None
            try:
                if typ is not None and pa.types.is_timestamp(typ) and values:
                    arr = pa.array(values)
                    if pa.types.is_string(arr.type):
                        import pyarrow.compute as pc

                        arr = pc.cast(pc.strptime(arr, "%Y-%m-%dT%H:%M:%S%z", "us"), typ)
                    cols[name] = arr.cast(typ)
                else:
                    cols[name] = pa.array(values, type=typ)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                raise InvalidArgumentError(f"rows['{name}']: {e}") from None
        try:
            table = pa.table(cols)
        except pa.ArrowInvalid as e:
            raise InvalidArgumentError(f"rows: {e}") from None
        stats = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.store.write(view, table)
        )
        return web.json_response(
            {"rows": stats.rows, "written": stats.written, "skipped_older": stats.skipped_older}
        )

    async def _admin_materialize(self, request: web.Request) -> web.Response:
        """Runs a batch-loader job in the server, which owns the store:
        ``{"views": [...], "start": T, "end": T, "incremental": bool, "on_error": "fail",
        "via_kafka": bool}`` (``via_kafka``: publish to the views' stream-source topics; the
        store is written only when this node consumes them)."""
        from serving import batch_loader

        self._require_admin(request)
        body = await self._json_body(request)
        views = body.get("views") or None
        start = batch_loader.parse_time(body["start"]) if body.get("start") else None
        end = batch_loader.parse_time(body["end"]) if body.get("end") else None
        on_error = body.get("on_error", "fail")
        if on_error not in ("fail", "skip"):
            raise InvalidArgumentError("on_error must be 'fail' or 'skip'")
        if body.get("via_kafka") and body.get("incremental"):
            raise InvalidArgumentError(
                "via_kafka incremental runs are not offered through the admin API: run "
                "`feature-serving materialize-incremental --via-kafka` (it needs only the "
                "registry)"
            )

        def job() -> Any:
            if body.get("incremental"):
                return batch_loader.materialize_incremental(
                    self.store, views, end=end, on_error=on_error, progress=False,
                    dry_run=bool(body.get("dry_run")),
                )  # fmt: skip
            return batch_loader.materialize(
                self.store, views, start, end, on_error=on_error, progress=False,
                dry_run=bool(body.get("dry_run")),
                as_of_version=body.get("as_of_version"),
                via_kafka=bool(body.get("via_kafka")),
            )  # fmt: skip

        summary = await asyncio.get_running_loop().run_in_executor(None, job)
        now = time.time()
        for vs in summary.views:
            self.batch_runs[vs.view] = now
            totals = self.batch_totals.setdefault(
                vs.view, {"applied": 0, "skipped_older": 0, "errors": 0}
            )
            totals["applied"] += vs.written
            totals["skipped_older"] += vs.skipped_older
            totals["errors"] += vs.errors
        return web.json_response({"summary": str(summary)})

    async def _admin_snapshot(self, request: web.Request) -> web.Response:
        """Writes a snapshot (RocksDB checkpoint, with the loader offsets) of the live store:
        ``{"path": "/abs/dir"}``, a new directory on the server's file system. It runs in a
        worker thread: reads go on; writes (loader, push, batch jobs) wait for it."""
        from serving import snapshot

        self._require_admin(request)
        body = await self._json_body(request)
        path = body.get("path")
        if not isinstance(path, str) or not path or not os.path.isabs(path):
            raise InvalidArgumentError(
                'expected {"path": "/absolute/dir"} (a new directory on the server\'s machine)'
            )
        dest = Path(path)

        def job() -> tuple[int, int]:
            self.store.checkpoint(dest)
            return snapshot.size(dest)

        files, size = await asyncio.get_running_loop().run_in_executor(None, job)
        log.info("snapshot written to %s (%d files, %d bytes)", dest, files, size)
        return web.json_response({"snapshot": str(dest), "files": files, "bytes": size})

    async def _admin_reload_registry(self, request: web.Request) -> web.Response:
        """Re-reads the registry file and applies it to the live store (``{"force": bool}``)."""
        self._require_admin(request)
        body = await self._json_body(request)
        registry = Registry.from_yaml(self.settings.config)
        changes = self.store.apply_registry(registry, force=bool(body.get("force")))
        self._configure_sharding()
        return web.json_response({"changes": changes})

    def _http_handler(
        self, api: str, content_type: str = JSON
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        serve = self._core.serve
        batcher = self.batcher
        guard = self.guard

        async def handle(request: web.Request) -> web.Response:
            body, scope = await self._serving_body(request)
            if batcher is not None:
                if guard is not None:
                    guard.check_hard()
                out = await batcher.serve(api, body, scope)
            elif guard is not None and guard.behind():
                out = await guard.serve_overflow(api, body, scope)
            else:
                out = serve(api, body, scope)
            return web.Response(body=out, content_type=content_type)

        return handle

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

    def _grpc_core(self, api: str, label: str, method: str) -> grpc.RpcMethodHandler[Any, Any]:
        serve = self._core.serve
        batcher = self.batcher
        guard = self.guard

        async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            p = _principal.get()
            if p is None and self.auth is not None:
                raise UnauthenticatedError("missing API key")
            scope = None if p is None or p.read_all else p.scope_id
            if batcher is not None:
                if guard is not None:
                    guard.check_hard()
                return await batcher.serve(api, request, scope, context.time_remaining())
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError("the deadline expired before the request started")
            if guard is not None and guard.behind():
                return await guard.serve_overflow(api, request, scope, remaining)
            return serve(api, request, scope)

        return self._grpc_unary(call, label, method)

    async def _node_info(self, _request: bytes, _ctx: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return self.node_info().to_proto().SerializeToString()

    def _serving_methods(self) -> tuple[dict[str, Any], dict[str, Any]]:
        feast = {
            "GetOnlineFeatures": self._grpc_core("feast_grpc", "feast-grpc", "GetOnlineFeatures")
        }
        v1 = {
            "GetFeatureVector": self._grpc_core("v1_grpc", "grpc", "GetFeatureVector"),
            # internal: a router's part of a request (serving/router.py)
            "GetCells": self._grpc_core("cells", "grpc", "GetCells"),
            "GetNodeInfo": self._grpc_unary(self._node_info, "grpc", "GetNodeInfo"),
        }
        return feast, v1

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if self.guard is not None:
            self.guard.start(asyncio.get_running_loop())
        await self._listen()
        if s.ingest and any(v.stream_source for v in self.store.registry.feature_views.values()):
            from serving.kafka_loader import KafkaLoader

            loader = KafkaLoader(
                self.store,
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
        self.ready = True
        await self._publish_health()
        if self.loaders:
            self._health_task = asyncio.create_task(self._watch_health())
        log.info(
            "serving on %s: gRPC port %d, HTTP port %d", s.host, self.grpc_port, self.http_port
        )
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
        if self.guard is not None:
            self.guard.stop()
        if self.batcher is not None:
            self.batcher.close()
        self.store.close()
        log.info("stopped")


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read TLS file '{path}': {e}") from None


def _grpc_credentials(s: ServeSettings) -> grpc.ServerCredentials | None:
    if not s.tls_cert:
        return None
    if not s.tls_key:
        raise InvalidArgumentError("--tls-cert needs --tls-key")
    ca = _read(s.tls_client_ca) if s.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(s.tls_key), _read(s.tls_cert))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _ssl_context(s: ServeSettings) -> ssl.SSLContext | None:
    if not s.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(s.tls_cert, s.tls_key or None)
        if s.tls_client_ca:
            ctx.load_verify_locations(s.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgumentError(f"TLS setup failed: {e}") from None
    return ctx


def _deny(
    error: FeatureServingError, metrics: ServingMetrics, api: str, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    async def handler(_request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        metrics.observe(api, method, error.grpc_status, 0.0)
        await context.abort(grpc.StatusCode[error.grpc_status], error.message)
        raise AssertionError("unreachable: abort raises")

    return grpc.unary_unary_rpc_method_handler(handler)


class _AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks ``authorization: Bearer <key>`` for every gRPC method, in one place."""

    def __init__(
        self, auth: Authenticator, settings: ServeSettings, metrics: ServingMetrics
    ) -> None:
        self._auth = auth
        self._open = settings.open_health
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = details.method or ""
        if self._open and method.startswith(OPEN_GRPC_PREFIXES):
            return await continuation(details)
        header = None
        for k, v in details.invocation_metadata or ():
            if k == "authorization":
                header = v if isinstance(v, str) else v.decode()
                break
        try:
            _principal.set(self._auth.authenticate(header))
        except FeatureServingError as e:
            api = "feast-grpc" if method.startswith("/feast.") else "grpc"
            self._metrics.rejected.labels(api, "auth").inc()
            self._metrics.auth_failures.inc()
            return _deny(e, self._metrics, api, method.rsplit("/", 1)[-1])
        return await continuation(details)


def run(
    store: Store,
    settings: ServeSettings,
    on_started: Callable[[FeatureServer], Awaitable[None]] | None = None,
) -> None:
    """Serves until SIGTERM / SIGINT on uvloop (measured faster than asyncio's default loop)."""
    import uvloop

    server = FeatureServer(store, settings)
    uvloop.run(server.run_until_stopped(on_started))
