"""The router's HTTP transport to nodes (serving.cluster ``HttpClusterChannels`` over
``_Http1Pool``), against a real aiohttp server on loopback: keep-alive reuse, a node closing
idle connections, ``Connection: close``, a cancelled call not leaking its answer into the
next one, the node's errors mapped to gRPC statuses, deadlines, and answers it cannot read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from aiohttp import web

from serving.cluster import ClusterMap, HttpClusterChannels
from serving.cluster.http1 import _Http1Pool

METHOD = "/feature_serving.v1.FeatureService/GetCells"


class Node:
    """An aiohttp app echoing the body back, counting connections and recording headers."""

    def __init__(self) -> None:
        self.peers: set[Any] = set()
        self.headers: list[Any] = []
        self.counts: dict[Any, int] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, **server: Any) -> None:
        app = web.Application()
        app.router.add_post("/v1/cells", self.echo)
        app.router.add_post("/slow", self.slow)
        app.router.add_post("/close", self.close_after)
        app.router.add_post("/chunked", self.chunked)
        app.router.add_post("/error", self.error)
        app.router.add_post("/second-dropped", self.second_dropped)
        app.router.add_post("/dropped", self.dropped)
        self.runner = web.AppRunner(app, access_log=None, **server)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _seen(self, request: web.Request) -> None:
        self.peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        self.headers.append(request.headers.copy())

    async def echo(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(body=b"echo:" + await request.read())

    async def slow(self, request: web.Request) -> web.Response:
        self._seen(request)
        body = await request.read()
        await asyncio.sleep(0.3)
        return web.Response(body=b"slow:" + body)

    async def close_after(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(body=b"bye", headers={"Connection": "close"})

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        r = web.StreamResponse()
        r.enable_chunked_encoding()
        await r.prepare(request)
        await r.write(b"part")
        await r.write_eof()
        return r

    async def error(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.json_response(
            {"error": {"code": "wrong_shard", "message": "key 7 belongs to shard 1"}}, status=409
        )

    async def second_dropped(self, request: web.Request) -> web.Response:
        """Closes a connection without answering its second request (an idle connection the
        node closed just as the request went out)."""
        self._seen(request)
        peer = request.transport.get_extra_info("peername")  # type: ignore[union-attr]
        self.counts[peer] = self.counts.get(peer, 0) + 1
        if self.counts[peer] > 1:
            request.transport.close()  # type: ignore[union-attr]
            raise ConnectionResetError
        return web.Response(body=b"ok")

    async def dropped(self, request: web.Request) -> web.Response:
        self._seen(request)
        request.transport.close()  # type: ignore[union-attr]
        raise ConnectionResetError

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def run(fn: Callable[[], Any]) -> Any:
    return asyncio.run(fn())


def with_pool(scenario: Callable[[Node, _Http1Pool], Awaitable[None]], **server: Any) -> None:
    """Runs ``scenario`` against a fresh node (aiohttp ``AppRunner`` options ``server``) and a
    pool of connections to it, and closes both."""

    async def go() -> None:
        n = Node()
        await n.start(**server)
        pool = _Http1Pool(f"127.0.0.1:{n.port}", None)
        try:
            await scenario(n, pool)
        finally:
            pool.close()
            await n.stop()

    asyncio.run(go())


def test_keep_alive_reuses_one_connection_per_concurrent_call() -> None:
    async def scenario(n: Node, pool: _Http1Pool) -> None:
        for i in range(20):
            assert await pool.post(b"/v1/cells", b"%d" % i, b"") == (200, b"echo:%d" % i)
        assert len(n.peers) == 1
        got = await asyncio.gather(*(pool.post(b"/v1/cells", b"x" * i, b"") for i in range(5)))
        assert got == [(200, b"echo:" + b"x" * i) for i in range(5)]
        assert len(n.peers) <= 5
        # a large answer arrives in many reads
        big = bytes(range(256)) * 3000
        assert await pool.post(b"/v1/cells", big, b"") == (200, b"echo:" + big)

    with_pool(scenario)


def test_idle_connection_closed_by_the_node_is_replaced() -> None:
    async def scenario(n: Node, pool: _Http1Pool) -> None:
        assert await pool.post(b"/v1/cells", b"a", b"") == (200, b"echo:a")
        await asyncio.sleep(0.3)  # the node closed the idle connection meanwhile
        assert await pool.post(b"/v1/cells", b"b", b"") == (200, b"echo:b")
        assert len(n.peers) == 2

    with_pool(scenario, keepalive_timeout=0.05)


def test_reused_connection_dropped_before_answering_is_retried_once() -> None:
    async def scenario(n: Node, pool: _Http1Pool) -> None:
        assert await pool.post(b"/second-dropped", b"", b"") == (200, b"ok")
        # reused, dropped unanswered, sent again on a new connection
        assert await pool.post(b"/second-dropped", b"", b"") == (200, b"ok")
        assert len(n.peers) == 2
        # a node dropping every request: the retry is once, then the error
        with pytest.raises(ConnectionError):
            await pool.post(b"/dropped", b"", b"")
        assert len(n.peers) == 3
        assert not pool.idle
        with pytest.raises(ConnectionError):  # a new connection: not retried
            await pool.post(b"/dropped", b"", b"")
        assert len(n.peers) == 4

    with_pool(scenario)


def test_connection_close_answer_is_not_reused() -> None:
    async def scenario(n: Node, pool: _Http1Pool) -> None:
        assert await pool.post(b"/close", b"", b"") == (200, b"bye")
        assert not pool.idle
        assert await pool.post(b"/v1/cells", b"c", b"") == (200, b"echo:c")
        assert len(n.peers) == 2

    with_pool(scenario)


def test_cancelled_call_does_not_leak_its_answer_into_the_next() -> None:
    async def scenario(n: Node, pool: _Http1Pool) -> None:
        task = asyncio.ensure_future(pool.post(b"/slow", b"old", b""))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not pool.idle  # the connection with an answer still owed was dropped
        assert await pool.post(b"/v1/cells", b"new", b"") == (200, b"echo:new")
        await asyncio.sleep(0.4)  # the slow answer is sent now, to a closed connection
        assert await pool.post(b"/v1/cells", b"newer", b"") == (200, b"echo:newer")

    with_pool(scenario)


def test_chunked_answer_is_a_protocol_error() -> None:
    async def scenario(n: Node, pool: _Http1Pool) -> None:
        with pytest.raises(ConnectionError, match="unexpected HTTP answer head"):
            await pool.post(b"/chunked", b"", b"")

    with_pool(scenario)


def _channels(port: int) -> HttpClusterChannels:
    endpoint = "127.0.0.1:1"  # gRPC address: never used, the map gives the HTTP one
    cluster = ClusterMap.from_dict(
        {"topic_partitions": 1, "shards": {0: [{"grpc": endpoint, "http": f"127.0.0.1:{port}"}]}}
    )
    return HttpClusterChannels(
        cluster, http_paths={METHOD: "/v1/cells", "/x/Slow": "/slow", "/x/Error": "/error"}
    )


def test_channels_send_metadata_as_headers_and_map_errors() -> None:
    async def go() -> None:
        n = Node()
        await n.start()
        ch = _channels(n.port)
        try:
            out = await ch.call(0, METHOD, b"part", metadata=[("authorization", "Bearer k")])
            assert out == b"echo:part"
            assert n.headers[-1]["authorization"] == "Bearer k"
            assert n.headers[-1]["Content-Type"] == "application/octet-stream"
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ch.call(0, "/x/Error", b"")
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "belongs to shard 1" in (e.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ch.call(0, "/x/Slow", b"", timeout=0.05)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(grpc.aio.AioRpcError) as e:  # header injection refused
                await ch.call(0, METHOD, b"", metadata=[("authorization", "k\r\nX-Evil: 1")])
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await ch.close()
            await n.stop()
        # the node gone: UNAVAILABLE naming the shard
        ch = _channels(n.port)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ch.call(0, METHOD, b"", timeout=1.0)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shard 0" in (e.value.details() or "")
        finally:
            await ch.close()

    run(go)
