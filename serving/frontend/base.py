"""What every serving frontend shares (a node's ``FeatureServer``, the ``FeatureRouter``).

The serving endpoints come from the endpoint table (``serving.frontend.endpoints``); each
frontend says how it answers one (:meth:`Frontend._http_serving`, :meth:`Frontend._grpc_serving`).
Around them: the HTTP middlewares (request metrics, errors as JSON, API keys), the gRPC method
wrapper (errors as statuses, metrics, deadlines), health, readiness, ``/metrics`` and the
listings, and the lifecycle (bind, drain, stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import signal
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self

import grpc
from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError
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
    LimitExceededError,
    PermissionDeniedError,
    RateLimitedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    error_body,
)
from serving.frontend.auth import Authenticator, Principal
from serving.frontend.endpoints import (
    CONSOLE_OPEN_PATHS,
    CONSOLE_STATIC_PREFIX,
    ENDPOINTS,
    FEAST_GRPC_SERVER,
    FEAST_SERVICE,
    HTTP_METRIC_LABELS,
    JSON,
    OCTET_STREAM,
    OPEN_HTTP_PATHS,
    V1_SERVICE,
    Endpoint,
)
from serving.frontend.grpc_auth import AuthInterceptor, principal
from serving.frontend.hot_http import Dispatch, HotPaths, HotSite, hot_routes
from serving.frontend.tls import server_credentials, server_ssl_context
from serving.metrics import ServingMetrics
from serving.registry import Registry
from serving.security import audit
from serving.security.config import SecurityConfig, load_security
from serving.security.limits import Limiter

log = logging.getLogger("serving.server")


def rejection_reason(e: FeatureServingError) -> str | None:
    """Why a request was refused before any lookup, for the rejected-requests counter."""
    if isinstance(e, UnauthenticatedError | PermissionDeniedError):
        return "auth"
    if isinstance(e, LimitExceededError):
        return "limit"
    if isinstance(e, RateLimitedError):
        return "rate_limit"
    if isinstance(e, ResourceExhaustedError):
        return "overload"
    if isinstance(e, DeadlineExceededError):
        return "deadline"
    if isinstance(e, InvalidArgumentError):
        return "invalid"
    return None


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


#: Content-Encodings aiohttp decodes before a handler reads the body; it leaves any other as it
#: came, which would hand the core a body it cannot read
_DECODED_ENCODINGS = frozenset(
    ["identity", "gzip", "deflate"] + ["br"] * HAS_BROTLI + ["zstd"] * HAS_ZSTD
)


def check_encoding(request: web.Request) -> str | None:
    """The request's ``Content-Encoding`` (None: none); one aiohttp does not decode answers 415
    naming the header."""
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None and encoding.lower() not in _DECODED_ENCODINGS:
        raise web.HTTPUnsupportedMediaType(
            text=f"Content-Encoding '{encoding}' is not supported; send the body with "
            f"Content-Encoding {', '.join(sorted(_DECODED_ENCODINGS - {'identity'}))} or none"
        )
    return encoding


def invalid_encoding(encoding: str | None) -> InvalidArgumentError:
    """What a body that is not valid in its encoding answers (aiohttp raises a bare
    ``RequestPayloadError``, which would answer 500): 400 naming the header."""
    return InvalidArgumentError(
        f"the body is not valid {encoding} data (header Content-Encoding: {encoding})"
    )


async def read_body(request: web.Request) -> bytes:
    """A request's body, decoded as its ``Content-Encoding`` says (:func:`check_encoding`)."""
    encoding = check_encoding(request)
    try:
        return await request.read()
    except RequestPayloadError:
        raise invalid_encoding(encoding) from None


def _probe_bind(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (None: it can): grpc's own failure names no
    cause and prints a C-core log line first, so the port is tried here beforehand."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        return f"the host does not resolve ({e})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            return _bind_reason(e)
    return None


def _bind_reason(e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return "the port is in use"
    if e.errno == errno.EADDRNOTAVAIL:
        return "the address is not this host's"
    if e.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return e.strerror or str(e)


class _NotHttp1Filter(logging.Filter):
    """aiohttp logs a request it cannot parse as an ERROR with a traceback; the usual one on
    this port is a gRPC client given the HTTP port (its HTTP/2 preface ``PRI *``), which is
    the client's mistake, worth one WARNING line that says what to change."""

    def __init__(self, frontend: Frontend) -> None:
        super().__init__()
        self.frontend = frontend

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, BadHttpMessage):
            return True
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        f = self.frontend
        if "PRI" in str(exc):
            record.msg = (
                "HTTP port %s: an HTTP/2 connection from %s (a gRPC client given the HTTP port? "
                "gRPC is port %s); answered 400"
            )
            record.args = (f.http_port, peer, f.grpc_port)
        else:
            record.msg = "HTTP port %s: a malformed HTTP request from %s (%s); answered 400"
            record.args = (f.http_port, peer, str(exc).splitlines()[0])
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


def _json_error(status: int, code: str, message: str) -> web.Response:
    body = json.dumps(error_body(code, message)).encode()
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
        self._not_http1 = _NotHttp1Filter(self)
        #: the --auth-config file's identity sources and audit log (docs/security.md)
        self.security = (
            load_security(settings.auth_config) if settings.auth_config else SecurityConfig()
        )
        self.audit = audit.AuditLog(self.security.audit) if self.security.audit else None

    @property
    def project_name(self) -> str:
        """The project this frontend serves."""
        return self.auth.project if self.auth is not None else self.registry.project
        #: the serving routes answered without aiohttp (serving.frontend.hot_http)
        self._hot: HotPaths | None = None

    #: whether this frontend answers the table's ``node_only`` endpoints
    answers_node_only = False

    @abstractmethod
    def _http_serving(self, endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The HTTP handler of a serving endpoint of the table."""

    @abstractmethod
    def _grpc_serving(
        self, endpoint: Endpoint
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        """The gRPC call of a serving endpoint of the table (wrapped by :meth:`_grpc_unary`)."""

    def _hot_dispatch(self, endpoint: Endpoint) -> Dispatch | None:
        """The raw core dispatch of a serving endpoint for the hot HTTP path
        (``serving.frontend.hot_http``); None: aiohttp answers the endpoint."""
        return None

    def _extra_grpc_methods(self) -> dict[tuple[str, str], grpc.RpcMethodHandler[Any, Any]]:
        """gRPC methods only this kind of frontend has: (service, method) -> handler."""
        return {}

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
        if ctype not in (JSON, OCTET_STREAM) and request.headers.get("Content-Type"):
            raise InvalidArgumentError(f"unsupported content type '{ctype}'; send application/json")
        # read_body's steps inline (one lookup when no Content-Encoding): every serving request
        # takes this path
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None:
            check_encoding(request)
        try:
            body = await request.read()
        except RequestPayloadError:
            raise invalid_encoding(encoding) from None
        p = request.get("principal")
        return body, None if p is None or p.read_all else p.scope_id

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any]:
        """The JSON object body of an admin or push request (``{}`` when empty)."""
        try:
            body = json.loads(await read_body(request) or b"{}")
        except ValueError as e:
            raise InvalidArgumentError(f"malformed JSON: {e}") from None
        if not isinstance(body, dict):
            raise InvalidArgumentError("the body must be a JSON object")
        return body

    def _http_app(self) -> web.Application:
        """The aiohttp application: serving routes, health, metrics, listings, extras."""
        app = web.Application(
            client_max_size=self.settings.max_message_bytes,
            middlewares=[self._http_metrics, self._http_errors, self._http_auth],
        )
        if self.audit is not None:
            from serving.frontend.audit_layer import http_middleware

            # outside the errors middleware: it sees every answer's status and error
            app.middlewares.insert(1, http_middleware(self, self.audit))
        for e in ENDPOINTS:
            if e.transport == "http" and (self.answers_node_only or not e.node_only):
                app.router.add_post(e.path, self._http_serving(e))
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
            []
            if self.auth is None
            else [AuthInterceptor(self.auth, self.settings, self.metrics, self._grpc_denied)]
        )
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
        )
        methods: dict[tuple[str, str], grpc.RpcMethodHandler[Any, Any]] = {
            (e.path, e.grpc_method): self._grpc_unary(self._grpc_serving(e), e.label, e.method)
            for e in ENDPOINTS
            if e.transport == "grpc" and (self.answers_node_only or not e.node_only)
        }
        methods[FEAST_SERVICE, "GetFeastServingInfo"] = self._grpc_unary(
            self._serving_info, "feast-grpc", "GetFeastServingInfo"
        )
        methods[V1_SERVICE, "ListFeatureViews"] = self._grpc_unary(
            self._list_views, "grpc", "ListFeatureViews"
        )
        methods[V1_SERVICE, "ListFeatureServices"] = self._grpc_unary(
            self._list_services, "grpc", "ListFeatureServices"
        )
        methods.update(self._extra_grpc_methods())
        services: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
        for (service, method), handler in methods.items():
            services.setdefault(service, {})[method] = handler
        server.add_generic_rpc_handlers(
            tuple(grpc.method_handlers_generic_handler(n, h) for n, h in services.items())
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
            for name in ("", FEAST_SERVICE, FEAST_GRPC_SERVER, V1_SERVICE):
                await self._health.set(name, status)

    async def _listen(self) -> None:
        """Binds gRPC and HTTP (ports 0: any free one; the bound ports are set)."""
        s = self.settings
        if self.auth is not None and self.auth.limiter is not None:
            limited = self.metrics.limited
            self.auth.limiter.on_limited = lambda kind: limited.labels(
                self.project_name, kind
            ).inc()
        await self._set_health(False)
        self._grpc = self._grpc_server()
        address = f"{s.host}:{s.grpc_port}"
        creds = server_credentials(s)
        if (taken := _probe_bind(s.host, s.grpc_port)) is not None:
            raise InvalidArgumentError(
                f"cannot listen on {s.host}:{s.grpc_port} for gRPC: {taken}; choose another "
                "with --grpc-port (env FS_GRPC_PORT) or --host"
            )
        try:
            self.grpc_port = (
                self._grpc.add_secure_port(address, creds)
                if creds is not None
                else self._grpc.add_insecure_port(address)
            )
        except RuntimeError:
            # grpc says only "Failed to bind" (the errno is in its debug log); the usual
            # cause is a port in use, the other one an address not on this host
            self.grpc_port = 0
        if self.grpc_port == 0:
            raise InvalidArgumentError(
                f"cannot listen on {s.host}:{s.grpc_port} for gRPC: the port is in use or the "
                "address is not this host's; choose another with --grpc-port (env FS_GRPC_PORT) "
                "or --host"
            )
        await self._grpc.start()
        self._runner = web.AppRunner(
            self._http_app(), access_log=None, shutdown_timeout=s.grace_seconds
        )
        await self._runner.setup()
        site_options: dict[str, Any] = {
            "reuse_address": True,
            "ssl_context": server_ssl_context(s),
            "backlog": s.http_backlog,
        }
        routes = hot_routes(self, self._hot_dispatch)
        assert self._runner.server is not None
        if routes:
            self._hot = HotPaths(self, routes, self._runner.server, rejection_reason)
            self._hot.start(asyncio.get_running_loop())
            site: web.TCPSite = HotSite(
                self._runner, s.host, s.http_port, factory=self._hot.protocol, **site_options
            )
        else:
            site = web.TCPSite(self._runner, s.host, s.http_port, **site_options)
        try:
            await site.start()
        except OSError as e:
            await self._grpc.stop(None)
            raise InvalidArgumentError(
                f"cannot listen on {s.host}:{s.http_port} for HTTP: {_bind_reason(e)}; choose "
                "another with --http-port (env FS_HTTP_PORT) or --host"
            ) from None
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else s.http_port
        logging.getLogger("aiohttp.server").addFilter(self._not_http1)

    async def _close_listeners(self, also: Iterable[Awaitable[Any]] = ()) -> None:
        """Health NOT_SERVING, then gRPC and HTTP drain within the grace period, while
        ``also`` (other shutdown work) runs alongside."""
        logging.getLogger("aiohttp.server").removeFilter(self._not_http1)
        with contextlib.suppress(Exception):
            await self._health.enter_graceful_shutdown()
        tasks: list[Awaitable[Any]] = list(also)
        if self._grpc is not None:
            tasks.append(self._grpc.stop(self.settings.grace_seconds))
        if self._runner is not None:
            tasks.append(self._runner.cleanup())
        if self._hot is not None:
            tasks.append(self._hot.drain(self.settings.grace_seconds))
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
        labels = HTTP_METRIC_LABELS.get(request.path)
        if labels is None or not self.settings.request_metrics:
            return await handler(request)
        api, method = labels
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
        path = request.path
        if (
            self.auth is not None
            and not (self.settings.open_health and path in OPEN_HTTP_PATHS)
            and path not in CONSOLE_OPEN_PATHS
            and not path.startswith(CONSOLE_STATIC_PREFIX)
        ):
            p = self.auth.authenticate(request.headers.get("Authorization"))
            request["principal"] = p
            limiter = self.auth.limiter
            if limiter is not None and limiter.enter(p.key.name):
                try:
                    return await handler(request)
                finally:
                    limiter.leave(p.key.name)
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
            resp = _json_error(e.http_status, e.code, e.message)
            if isinstance(e, RateLimitedError):
                resp.headers["Retry-After"] = str(e.retry_after_seconds)
            return resp
        except web.HTTPRequestEntityTooLarge:
            return _json_error(
                413,
                "message_too_large",
                f"request body exceeds {self.settings.max_message_bytes} bytes (the server's "
                "--max-message-bytes)",
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

    def _listed(self, p: Principal | None) -> tuple[list[Any], list[Any]]:
        """The views and feature services a caller may see listed: those its read scope
        covers (a service when it is named or every view it spans is), so that a listing
        tells a scoped caller no more than a serving request would."""
        reg = self.registry
        if p is None or p.read_all:
            return list(reg.feature_views.values()), list(reg.feature_services.values())
        names = set(p.key.read)
        views = [v for v in reg.feature_views.values() if v.name in names]
        services = [
            s
            for s in reg.feature_services.values()
            if s.name in names or all(r.view in names for r in s.features)
        ]
        return views, services

    async def _http_list_views(self, request: web.Request) -> web.Response:
        views, services = self._listed(self._principal(request))
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
                    for v in views
                ],
                "feature_services": [
                    {"name": s.name, "features": [str(r) for r in s.features]} for s in services
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
        if self.auth is not None and self.auth.limiter is not None:
            fn = self._grpc_capped(fn, self.auth.limiter)
        if self.audit is not None:
            fn = self._grpc_audited(fn, method, self.audit)
        metrics = self.metrics
        gauge = metrics.in_flight.labels(api)
        if not self.settings.request_metrics:

            async def bare(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                try:
                    return await fn(request, context)
                except FeatureServingError as e:
                    retry_after(context, e)
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
                retry_after(context, e)
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

    @staticmethod
    def _grpc_capped(
        fn: Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]],
        limiter: Limiter,
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        """``fn`` under the caller's concurrent-request cap."""

        async def capped(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            p = principal.get()
            if p is None or not limiter.enter(p.key.name):
                return await fn(request, context)
            try:
                return await fn(request, context)
            finally:
                limiter.leave(p.key.name)

        return capped

    def _grpc_audited(
        self,
        fn: Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]],
        method: str,
        log: audit.AuditLog,
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        """``fn`` writing its audit line (serving.frontend.audit_layer)."""
        from serving.frontend.audit_layer import GRPC_EVENTS, grpc_record

        event = GRPC_EVENTS.get(method)

        async def audited(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            sampled = event != "read" or log.sampled()
            if not sampled:  # the common case, kept short: only a refusal gets a line
                try:
                    return await fn(request, context)
                except (UnauthenticatedError, PermissionDeniedError) as e:
                    grpc_record(
                        self, log, method, status=e.grpc_status, p=principal.get(), err=e,
                        noted=audit.Noted(), body=None, request_id=_request_id(context),
                    )  # fmt: skip
                    raise
            noted = audit.Noted()
            token = audit.current.set(noted)
            err: FeatureServingError | None = None
            status = "INTERNAL"
            try:
                out = await fn(request, context)
                status = "OK"
                return out
            except FeatureServingError as e:
                err, status = e, e.grpc_status
                raise
            finally:
                audit.current.reset(token)
                denied = isinstance(err, UnauthenticatedError | PermissionDeniedError)
                if event is not None and (sampled or denied):
                    grpc_record(
                        self, log, method, status=status, p=principal.get(), err=err,
                        noted=noted, body=request if event == "read" else None,
                        request_id=_request_id(context),
                    )  # fmt: skip

        return audited

    def _grpc_denied(self, method: str, error: FeatureServingError, request_id: str | None) -> None:
        """The audit line of a call the auth interceptor refused."""
        if self.audit is not None:
            from serving.frontend.audit_layer import grpc_record

            grpc_record(
                self, self.audit, method, status=error.grpc_status, p=None, err=error,
                noted=audit.Noted(), body=None, request_id=request_id,
            )  # fmt: skip

    async def _serving_info(
        self, _request: bytes, _ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        return feast_pb2.GetFeastServingInfoResponse(version=__version__).SerializeToString()

    async def _list_views(self, _request: bytes, _ctx: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        resp = v1_pb2.ListFeatureViewsResponse()
        for v in self._listed(principal.get())[0]:
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
        for s in self._listed(principal.get())[1]:
            resp.feature_services.add(name=s.name, refs=[str(r) for r in s.features])
        return resp.SerializeToString()


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == "x-request-id":
            return v if isinstance(v, str) else v.decode()
    return None


def retry_after(context: grpc.aio.ServicerContext[Any, Any], e: FeatureServingError) -> None:
    """A rate-limited call's ``retry-after`` trailing metadata (whole seconds)."""
    if isinstance(e, RateLimitedError):
        context.set_trailing_metadata((("retry-after", str(e.retry_after_seconds)),))
