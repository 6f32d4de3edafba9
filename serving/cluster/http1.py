"""A minimal keep-alive HTTP/1.1 client for the router's parts (``POST /v1/cells``)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl


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
