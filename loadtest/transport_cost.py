"""Caller-side CPU of one small call to a node: grpc.aio unary, aiohttp keep-alive POST, and
the router's own HTTP/1.1 client (``serving.cluster.http1._Http1Pool``, keep-alive POST).

Measures what a router (or any asyncio caller) pays per call for the transports a node
offers, on this machine: a node is started on a one-row store (no auth, no request metrics),
then 3,000 calls per transport are made by 4 concurrent tasks on uvloop, after 200 warm-up
calls, twice each, interleaved. Prints CPU microseconds per call of this process and wall
time per call. Run: ``.venv/bin/python loadtest/transport_cost.py``. Figures in
docs/benchmarks.md ("Scale-out").
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import pyarrow as pa
import uvloop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving import Registry, Store  # noqa: E402
from serving._proto.feature_serving.v1 import feature_service_pb2 as pb  # noqa: E402
from serving.cluster.http1 import _Http1Pool  # noqa: E402
from tests.harness.server import start_cli, stop_server  # noqa: E402

REGISTRY = """
project: t
entities: [{name: user, join_keys: [{name: user_id, dtype: int64}]}]
feature_views:
  - name: users
    entities: [user]
    features: [{name: seq, dtype: int64}]
"""
CALLS, TASKS, WARMUP = 3000, 4, 200


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fs-transport-") as tmp_dir:
        tmp = Path(tmp_dir)
        cfg = tmp / "features.yaml"
        cfg.write_text(REGISTRY)
        with Store(tmp / "db", Registry.from_yaml(cfg)) as store:
            store.write(
                "users",
                pa.table(
                    {
                        "user_id": pa.array([1], pa.int64()),
                        "event_timestamp": pa.array([10**15], pa.timestamp("us", tz="UTC")),
                        "seq": pa.array([1], pa.int64()),
                    }
                ),
            )
        node = start_cli(
            ["serve", "--config", str(cfg), "--data-dir", str(tmp / "db"), "--no-auth",
             "--no-request-metrics"],
            tmp / "node.log",
        )  # fmt: skip
        req = pb.GetFeatureVectorRequest(features=pb.FeatureRefs(refs=["users:seq"]))
        req.entities["user_id"].int64_values.values.extend([1])
        grpc_body = req.SerializeToString()
        http_body = json.dumps({"features": ["users:seq"], "entities": {"user_id": [1]}}).encode()

        async def via_grpc() -> tuple[float, float]:
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{node.grpc}")
            call = ch.unary_unary("/feature_serving.v1.FeatureService/GetFeatureVector")
            for _ in range(WARMUP):
                await call(grpc_body)
            c0, t0 = cpu(), time.perf_counter()

            async def worker() -> None:
                for _ in range(CALLS // TASKS):
                    await call(grpc_body)

            await asyncio_gather(worker)
            out = (cpu() - c0) / CALLS, (time.perf_counter() - t0) / CALLS
            await ch.close()
            return out

        async def via_http() -> tuple[float, float]:
            url = f"http://127.0.0.1:{node.http}/get-online-features"
            headers = {"Content-Type": "application/json"}
            async with aiohttp.ClientSession() as s:
                for _ in range(WARMUP):
                    async with s.post(url, data=http_body, headers=headers) as r:
                        await r.read()
                c0, t0 = cpu(), time.perf_counter()

                async def worker() -> None:
                    for _ in range(CALLS // TASKS):
                        async with s.post(url, data=http_body, headers=headers) as r:
                            await r.read()

                await asyncio_gather(worker)
                return (cpu() - c0) / CALLS, (time.perf_counter() - t0) / CALLS

        async def via_router_http() -> tuple[float, float]:
            pool = _Http1Pool(f"127.0.0.1:{node.http}", None)
            path, headers = b"/get-online-features", b"Content-Type: application/json\r\n"
            for _ in range(WARMUP):
                status, _ = await pool.post(path, http_body, headers)
                assert status == 200
            c0, t0 = cpu(), time.perf_counter()

            async def worker() -> None:
                for _ in range(CALLS // TASKS):
                    await pool.post(path, http_body, headers)

            await asyncio_gather(worker)
            out = (cpu() - c0) / CALLS, (time.perf_counter() - t0) / CALLS
            pool.close()
            return out

        transports = (("grpc.aio", via_grpc), ("aiohttp", via_http), ("router", via_router_http))
        try:
            for name, fn in transports * 2:
                c, w = uvloop.run(fn())
                print(f"{name:9s} {c * 1e6:5.0f} us CPU per call, {w * 1e6:5.0f} us wall per call")
        finally:
            stop_server(node)
    return 0


async def asyncio_gather(worker: Callable[[], Awaitable[None]]) -> None:
    """Runs ``TASKS`` copies of ``worker`` concurrently."""
    await asyncio.gather(*(worker() for _ in range(TASKS)))


if __name__ == "__main__":
    sys.exit(main())
