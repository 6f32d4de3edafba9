"""Ceiling of a Python asyncio frontend on this machine: handlers that return prebuilt bytes.

Adapted from the project's shared benchmark kit (../shared/bench/frontend_ceiling.py, which
measured the "ceiling" column of the serving issue's Performance table): grpc.aio with a generic
bytes-in/bytes-out handler and aiohttp with a raw bytes response, here both on one uvloop loop
like the real server, on the real server's paths, and answering with the size of the real W1 or
W2 answer (told apart by the request size; no other work). `bench_serving.py --ceiling` runs every
measurement against this process right after the real server, so the two are compared in the
same conditions.

Usage: python loadtest/frontend_ceiling.py HTTP_PORT GRPC_PORT W1_HTTP W2_HTTP W1_GRPC W2_GRPC
(the last four are answer sizes in bytes). Prints "ready" when both ports listen.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from aiohttp import web

#: W1 requests (100 feature names, 1 id) are about 2 KB; W2 (200 names, 100 ids) above 4 KB
SPLIT_BYTES = 3500


async def main(http_port: int, grpc_port: int, sizes: list[int]) -> None:
    w1_http, w2_http, w1_grpc, w2_grpc = (b"x" * n for n in sizes)

    async def grpc_get(request: bytes, context: object) -> bytes:
        return w2_grpc if len(request) > SPLIT_BYTES else w1_grpc

    handler = grpc.method_handlers_generic_handler(
        "feature_serving.v1.FeatureService",
        {
            "GetFeatureVector": grpc.unary_unary_rpc_method_handler(grpc_get),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()

    async def http_get(request: web.Request) -> web.Response:
        body = await request.read()
        payload = w2_http if len(body) > SPLIT_BYTES else w1_http
        return web.Response(body=payload, content_type="application/json")

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ready")

    app = web.Application()
    app.router.add_post("/get-online-features", http_get)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import uvloop

    args = [int(a) for a in sys.argv[1:7]]
    uvloop.run(main(args[0], args[1], args[2:]))
