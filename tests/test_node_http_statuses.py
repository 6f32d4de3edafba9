"""A node's HTTP error answers as the router reads them (``HttpClusterChannels``): the JSON error
code names the gRPC status, else the HTTP status does (serving.errors), with a proxy's 502 and
aiohttp's 413 read as what gRPC would answer."""

from __future__ import annotations

import asyncio
import json

import grpc
import grpc.aio
import pytest
from aiohttp import web

from serving.cluster import ClusterMap, HttpClusterChannels

ENDPOINT = "127.0.0.1:1"  # the gRPC address: never used, the map gives the HTTP one


async def answer(request: web.Request) -> web.Response:
    """Answers the status and (when given) the JSON error code the request body asks for."""
    ask = json.loads(await request.read())
    if ask.get("code"):
        return web.json_response(
            {"error": {"code": ask["code"], "message": "from the node"}}, status=ask["status"]
        )
    return web.Response(status=ask["status"], text="<html>proxy page</html>")


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (409, "wrong_shard", grpc.StatusCode.FAILED_PRECONDITION),
        (409, "schema_conflict", grpc.StatusCode.FAILED_PRECONDITION),
        (400, "invalid_registry", grpc.StatusCode.INVALID_ARGUMENT),
        (429, "resource_exhausted", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (503, "storage_error", grpc.StatusCode.UNAVAILABLE),
        (401, None, grpc.StatusCode.UNAUTHENTICATED),
        (404, None, grpc.StatusCode.NOT_FOUND),
        (413, "message_too_large", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (502, None, grpc.StatusCode.UNAVAILABLE),
        (503, None, grpc.StatusCode.UNAVAILABLE),
        (504, None, grpc.StatusCode.DEADLINE_EXCEEDED),
        (500, None, grpc.StatusCode.INTERNAL),
        (418, None, grpc.StatusCode.INTERNAL),
        # a code names its status even when the HTTP status says otherwise
        (500, "not_found", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_http_error_answers_map_to_grpc_statuses(
    status: int, code: str | None, expected: grpc.StatusCode
) -> None:
    async def go() -> None:
        app = web.Application()
        app.router.add_post("/v1/cells", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        cluster = ClusterMap.from_dict(
            {
                "topic_partitions": 1,
                "shards": {0: [{"grpc": ENDPOINT, "http": f"127.0.0.1:{port}"}]},
            }
        )
        ch = HttpClusterChannels(cluster, http_paths={"/x/Cells": "/v1/cells"})
        try:
            body = json.dumps({"status": status, "code": code}).encode()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ch.call_replica(ENDPOINT, "/x/Cells", body, timeout=5.0)
            assert e.value.code() == expected
            if code is not None:
                assert e.value.details() == "from the node"
        finally:
            await ch.close()
            await runner.cleanup()

    asyncio.run(go())
