"""The node's serving routes over HTTP/1.1 on a hand-written asyncio Protocol; aiohttp for
everything else, on the same port and the same connection.

Why: under wrk the aiohttp path of a W1 request spent about half of the event loop's busy time
in aiohttp itself (request object, three middlewares, response object, header writer;
``loadtest/profile_serving.sh w1 32``, docs/benchmarks.md "Issue 18"), and the Rust call a
fifth. A serving request needs none of that: a POST with a ``Content-Length`` body, one header
to authenticate, bytes in, bytes out.

How: every connection starts with :class:`HotPathProtocol`. It answers a request itself only
when the request is plainly one it understands: ``POST`` of a serving path of the endpoint
table, ``HTTP/1.1``, a ``Host``, a ``Content-Length`` within ``--max-message-bytes``, no
``Transfer-Encoding`` / ``Content-Encoding`` / ``Expect`` / ``Upgrade``, ``Connection`` absent,
``keep-alive`` or ``close``, a JSON or octet-stream content type or none, and header bytes a
strict HTTP parser accepts. On anything else (another path, a malformed request, an HTTP/2
preface ...) it hands the connection, with the bytes it holds, to aiohttp's own protocol
handler for good, so that every answer outside the hot path (errors of bad requests included)
is aiohttp's own.

What a hot request gets is what the aiohttp route gives (tests/test_hot_http.py checks them
side by side): the same auth check (``Authenticator.authenticate``), the same core dispatch
(``Admission.dispatch``), the same error bodies (``serving.errors.error_body``), the same
request metrics and slow-request log, the same response headers (``Content-Type``,
``Content-Length``, ``Date``, ``Server``). Pipelined requests are answered in order; a client
that does not read its answers stops being read (transport flow control); idle connections are
closed after aiohttp's keep-alive timeout; on shutdown idle connections close at once and busy
ones after their answer (within the grace period); TLS is the listener's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from serving.errors import FeatureServingError, UnauthenticatedError, error_body
from serving.feature_log import new_request_id
from serving.frontend.endpoints import ENDPOINTS, Endpoint

if TYPE_CHECKING:
    from serving.feature_log import FeatureLogger
    from serving.frontend.base import Frontend

log = logging.getLogger("serving.server")

#: the core's answer to a request body and the caller's scope: bytes, or an awaitable of them
#: ``Admission.dispatch``: (api, body, scope[, timeout, request id]) -> answer
Dispatch = Callable[..., "bytes | Awaitable[bytes]"]

#: aiohttp's keep-alive timeout (``RequestHandler(keepalive_timeout=75.0)``)
KEEPALIVE_SECONDS = 75.0
#: header blocks larger than this go to aiohttp, which answers them (its limit is 8190 per line)
MAX_HEADER_BYTES = 8190
#: the header block a strict HTTP/1.1 parser accepts: token names, no obs-fold, no control
#: characters in values (anything else goes to aiohttp, whose parser answers it)
_HEADERS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
_ACCEPTED_TYPES = frozenset({b"application/json", b"application/octet-stream", b""})
#: headers whose presence sends a request to aiohttp (it implements what they ask for)
_HANDED_OVER = frozenset({b"transfer-encoding", b"content-encoding", b"expect", b"upgrade"})
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Request Entity Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _Date:
    """The ``Date`` header's text, formatted once a second (as aiohttp does)."""

    def __init__(self) -> None:
        self._second = -1
        self.text = b""

    def now(self) -> bytes:
        t = int(time.time())
        if t != self._second:
            self._second = t
            self.text = formatdate(t, usegmt=True).encode()
        return self.text


_DATE = _Date()
_SERVER = SERVER_SOFTWARE.encode()


def response_head(
    status: int,
    content_type: bytes,
    length: int,
    close: bool = False,
    request_id: str | None = None,
) -> bytes:
    """The status line and headers aiohttp writes for a ``web.Response(body=...)``, with the
    ``X-Request-Id`` the node's handler adds while served features are logged."""
    reason = _REASONS.get(status, "Unknown").encode()
    extra = b"X-Request-Id: %s\r\n" % request_id.encode("latin-1") if request_id else b""
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s"
        b"Date: %s\r\nServer: %s\r\n%s\r\n"
        % (
            status,
            reason,
            content_type,
            length,
            extra,
            _DATE.now(),
            _SERVER,
            b"Connection: close\r\n" if close else b"",
        )
    )


class HotRoute:
    """One serving endpoint on the hot path: its core call and its metric labels."""

    __slots__ = (
        "api", "content_type", "dispatch", "feature_log", "gauge", "label", "method", "own_id",
        "path",
    )  # fmt: skip

    def __init__(self, endpoint: Endpoint, dispatch: Dispatch, frontend: Frontend) -> None:
        self.api = endpoint.api
        #: the node's served-feature log (docs/feature-logging.md): while it is active, every
        #: answer carries its request id, the caller's or a new one (a router's part only the
        #: router's), as the aiohttp handler does
        self.feature_log: FeatureLogger | None = getattr(frontend, "feature_log", None)
        self.own_id = endpoint.api != "cells"
        self.path = endpoint.path
        self.content_type = endpoint.content_type.encode()
        self.label = endpoint.label
        self.method = endpoint.method
        self.dispatch = dispatch
        self.gauge = frontend.metrics.in_flight.labels(endpoint.label)


class HotPaths:
    """The hot routes of one listener, its open connections, and their lifecycle."""

    def __init__(
        self,
        frontend: Frontend,
        routes: dict[str, HotRoute],
        aiohttp_server: web.Server,
        rejection_reason: Callable[[FeatureServingError], str | None],
    ) -> None:
        self.frontend = frontend
        #: ``serving.frontend.base.rejection_reason`` (passed in: base imports this module)
        self.rejection_reason = rejection_reason
        self.routes = {p.encode(): r for p, r in routes.items()}
        self.aiohttp_server = aiohttp_server
        self.max_body = frontend.settings.max_message_bytes
        self.connections: set[HotPathProtocol] = set()
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None
        #: requests answered on the hot path and connections handed to aiohttp (for tests
        #: and the profile; not exported as metrics)
        self.answered = 0
        self.handed_over = 0

    def protocol(self) -> HotPathProtocol:
        """The listener's protocol factory."""
        return HotPathProtocol(self)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = loop.call_later(KEEPALIVE_SECONDS / 5, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Closes connections idle for longer than the keep-alive timeout (one timer for all
        connections instead of one per request)."""
        limit = loop.time() - KEEPALIVE_SECONDS
        for c in list(self.connections):
            if c.idle() and c.last_active < limit:
                c.close()
        self._sweeper = loop.call_later(KEEPALIVE_SECONDS / 5, self._sweep, loop)

    async def drain(self, grace: float) -> None:
        """Shutdown: idle connections close now, busy ones after their answer, all within
        ``grace`` seconds (the listener is closed first by the caller)."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for c in list(self.connections):
            if c.idle():
                c.close()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for c in list(self.connections):
            c.close()


class HotPathProtocol(asyncio.Protocol):
    """One connection: hot requests answered here, the connection handed to aiohttp at the
    first request that is not one (see the module's docstring)."""

    __slots__ = (
        "_buf",
        "_close_after",
        "_eof",
        "_loop",
        "_paused",
        "_task",
        "hot",
        "last_active",
        "transport",
    )

    def __init__(self, hot: HotPaths) -> None:
        self.hot = hot
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        #: the answer being awaited (off the loop: overflow, batching, transforms); requests
        #: behind it wait in the buffer, so answers leave in request order
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        #: close once the answers are out: the client sent EOF or ``Connection: close``
        self._close_after = False
        self._eof = False
        self._loop = asyncio.get_running_loop()
        self.last_active = self._loop.time()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclass of asyncio.Transport, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # as aiohttp does: an answer's head and body go out at once, not after an ACK
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.hot.connections.add(self)
        if self.hot.closing:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.hot.connections.discard(self)
        if self._task is not None:
            self._task.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self.last_active = self._loop.time()
        if self._task is None and not self._paused:
            self._process()

    def eof_received(self) -> bool | None:
        # the client will send nothing more: answer what is complete, then close
        self._eof = self._close_after = True
        if self.idle():
            self.close()
        return True

    def pause_writing(self) -> None:
        # the client does not read its answers: stop reading its requests
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None:
            self.transport.resume_reading()
            if self._task is None:
                self._process()

    # -- the hot path --------------------------------------------------------------------

    def idle(self) -> bool:
        return self._task is None and not self._buf

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _process(self) -> None:
        """Answers every complete request in the buffer, in order; stops at an incomplete
        one, at an answer that must be awaited, or when the connection goes to aiohttp."""
        buf = self._buf
        while buf and self.transport is not None and not self._paused:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    self._hand_over()
                return
            head = self._parse_head(bytes(buf[: end + 2]))
            if head is None:
                self._hand_over()
                return
            route, length, authorization, request_id = head
            if len(buf) < end + 4 + length:
                return  # the body is still coming
            body = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            self.hot.answered += 1
            self._answer(route, body, authorization, request_id)
            if self._task is not None:
                return
        if self._close_after and self.idle():
            self.close()

    def _parse_head(self, head: bytes) -> tuple[HotRoute, int, str | None, str | None] | None:
        """The route, body length, ``Authorization`` and ``X-Request-Id`` of a request head
        (request line and header lines, each ending in CRLF), or None when it is not plainly
        a hot request."""
        line_end = head.find(b"\r\n")
        method, _, rest = head[:line_end].partition(b" ")
        target, _, version = rest.partition(b" ")
        if method != b"POST" or version != b"HTTP/1.1":
            return None
        route = self.hot.routes.get(target)
        if route is None:
            return None
        block = head[line_end + 2 :]
        if _HEADERS.fullmatch(block) is None:
            return None
        length = -1
        host = close = False
        authorization: str | None = None
        request_id: str | None = None
        for line in block.split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            name = name.lower()
            value = value.strip(b" \t")
            if name == b"content-length":
                if length >= 0 or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"host":
                if host:
                    return None
                host = True
            elif name == b"authorization":
                if authorization is not None:
                    return None
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                if value.partition(b";")[0].strip().lower() not in _ACCEPTED_TYPES:
                    return None
            elif name == b"connection":
                value = value.lower()
                if value == b"close":
                    close = True
                elif value != b"keep-alive":
                    return None
            elif name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name in _HANDED_OVER:
                return None
        if not host or length < 0 or length > self.hot.max_body:
            return None
        if close:
            self._close_after = True
        return route, length, authorization, request_id

    def _hand_over(self) -> None:
        """From now on aiohttp's protocol handler owns the connection, starting with the bytes
        held here."""
        transport = self.transport
        if transport is None:
            return
        self.hot.connections.discard(self)
        self.hot.handed_over += 1
        handler = self.hot.aiohttp_server()
        handler.connection_made(transport)
        transport.set_protocol(handler)
        data, self._buf = bytes(self._buf), bytearray()
        self.transport = None
        if data:
            handler.data_received(data)
        if self._eof:
            handler.eof_received()

    def _answer(
        self, route: HotRoute, body: bytes, authorization: str | None, request_id: str | None
    ) -> None:
        """What the aiohttp route does for one request (auth middleware, error middleware,
        metrics middleware, handler), without the request and response objects."""
        f = self.hot.frontend
        metrics = f.settings.request_metrics
        t0 = 0.0
        if metrics:
            route.gauge.inc()
            t0 = time.perf_counter()
        err: FeatureServingError | None = None
        out: bytes | tuple[int, bytes] | Awaitable[bytes]
        echo: str | None = None
        try:
            # the auth middleware's check (serving paths are never open paths)
            p = None if f.auth is None else f.auth.authenticate(authorization)
            scope = None if p is None or p.read_all else p.scope_id
            fl = route.feature_log
            if fl is not None and fl.active:
                echo = request_id or (new_request_id() if route.own_id else None)
                out = route.dispatch(route.api, body, scope, None, echo)
            else:
                out = route.dispatch(route.api, body, scope)
        except FeatureServingError as e:
            err = e
            out = _error(e)
        except Exception:
            log.exception("internal error on POST %s", route.path)
            out = _internal()
        if isinstance(out, bytes | tuple):
            self._respond(route, out, err, t0, request_id, echo=echo)
            return
        self._task = self._loop.create_task(self._awaited(route, out, t0, request_id, echo))

    async def _awaited(
        self,
        route: HotRoute,
        out: Awaitable[bytes],
        t0: float,
        request_id: str | None,
        echo: str | None,
    ) -> None:
        err: FeatureServingError | None = None
        try:
            answer: bytes | tuple[int, bytes] = await out
        except FeatureServingError as e:
            err = e
            answer = _error(e)
        except asyncio.CancelledError:
            # the client went away
            if self.hot.frontend.settings.request_metrics:
                self._observe(route, "499", None, t0, request_id)
            raise
        except Exception:
            log.exception("internal error on POST %s", route.path)
            answer = _internal()
        self._task = None
        self._respond(route, answer, err, t0, request_id, echo=echo)
        if self.transport is not None and not self._paused:
            self._process()

    def _respond(
        self,
        route: HotRoute,
        out: bytes | tuple[int, bytes],
        err: FeatureServingError | None,
        t0: float,
        request_id: str | None,
        *,
        echo: str | None = None,
    ) -> None:
        """``echo``: the request id the response carries (set while features are logged)."""
        transport = self.transport
        close = self.hot.closing or self._close_after
        if isinstance(out, bytes):
            status = 200
            head = response_head(200, route.content_type, len(out), close, echo)
        else:
            status, out = out
            head = response_head(status, b"application/json", len(out), close, echo)
        if transport is not None:
            if len(out) < 65536:
                transport.write(head + out)
            else:
                # no copy of a large answer into one buffer with its head
                transport.writelines((head, out))
            if close:
                transport.close()
        self.last_active = self._loop.time()
        if self.hot.frontend.settings.request_metrics:
            self._observe(route, str(status), err, t0, request_id)

    def _observe(
        self,
        route: HotRoute,
        code: str,
        err: FeatureServingError | None,
        t0: float,
        request_id: str | None,
    ) -> None:
        """The request metrics middleware's accounting (``Frontend._http_metrics``)."""
        f = self.hot.frontend
        elapsed = time.perf_counter() - t0
        route.gauge.dec()
        f.metrics.observe(route.label, route.method, code, elapsed)
        if err is not None:
            reason = self.hot.rejection_reason(err)
            if reason is not None:
                f.metrics.rejected.labels(route.label, reason).inc()
            if isinstance(err, UnauthenticatedError):
                f.metrics.auth_failures.inc()
        f._maybe_log_slow(route.label, route.method, code, elapsed, request_id)


def _error(e: FeatureServingError) -> tuple[int, bytes]:
    """The error middleware's answer to a refused request (``Frontend._http_errors``)."""
    return e.http_status, json.dumps(error_body(e.code, e.message)).encode()


def _internal() -> tuple[int, bytes]:
    return 500, json.dumps(error_body("internal", "internal error; see the server log")).encode()


def hot_routes(
    frontend: Frontend, serving: Callable[[Endpoint], Dispatch | None]
) -> dict[str, HotRoute]:
    """The hot routes of ``frontend``: every HTTP endpoint of the table it answers for which
    ``serving`` gives a raw dispatch."""
    routes: dict[str, HotRoute] = {}
    for e in ENDPOINTS:
        if e.transport == "http" and (frontend.answers_node_only or not e.node_only):
            dispatch = serving(e)
            if dispatch is not None:
                routes[e.path] = HotRoute(e, dispatch, frontend)
    return routes


class HotSite(web.TCPSite):
    """aiohttp's TCP site with :class:`HotPathProtocol` as the connections' protocol: started,
    stopped and drained by the runner as before (``site.stop`` closes the listener)."""

    __slots__ = ("_factory",)

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        factory: Callable[[], asyncio.Protocol],
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._factory = factory

    async def start(self) -> None:
        # TCPSite.start with this site's factory instead of the runner's aiohttp server
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
