"""Overload: at about twice the measured capacity the server sheds load with 429 instead of
queueing without bound, the p99 of admitted requests stays bounded, and it recovers as soon as
the load drops. Inline mode sheds with the event-loop lag guard (``--max-loop-lag-ms``), batched
mode from its bounded queue (``--max-queue``). Also measures the guard's hot-path cost."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from serving.frontend.admission import LoopLagGuard
from tests.harness import Server, metric, scrape, start_server, stop_server
from tests.harness.profile import preload, write_config

pytestmark = pytest.mark.integration

N_USERS = 100_000
#: admitted requests at 2x capacity must answer within this (client-observed, from the time
#: the request was due to be sent: queueing in the client's connection pool counts)
P99_BOUND_S = 0.5
LAG_LIMIT_MS = 20


def _body() -> bytes:
    # 1000 scattered entities with the hot tier off: ~2 ms of RocksDB lookups per request and a
    # small answer, so the server, not the Python load generator, is the bottleneck.
    users = list(range(0, N_USERS, N_USERS // 1000))
    return json.dumps(
        {"features": ["profile:f0", "profile:f1"], "entities": {"user_id": users}}
    ).encode()


async def _closed_loop(url: str, body: bytes, conc: int, seconds: float) -> float:
    n = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as sess:
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal n
            while time.monotonic() < end:
                async with sess.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as r:
                    await r.read()
                    if r.status == 200:
                        n += 1

        await asyncio.gather(*(worker() for _ in range(conc)))
    return n / seconds


async def _open_loop(
    url: str, body: bytes, rate: float, seconds: float
) -> list[tuple[int | str, float]]:
    """Requests at a fixed rate whatever the answers do (open loop); latency from the time
    each was due."""
    out: list[tuple[int | str, float]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as sess:

        async def one(due: float) -> None:
            try:
                async with sess.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as r:
                    await r.read()
                    out.append((r.status, time.monotonic() - due))
            except aiohttp.ClientError as e:
                out.append((type(e).__name__, time.monotonic() - due))

        tasks = []
        t0 = time.monotonic()
        i = 0
        while (due := t0 + i / rate) < t0 + seconds:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.create_task(one(due)))
            i += 1
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return out


def _summary(res: list[tuple[int | str, float]], seconds: float) -> dict[str, object]:
    ok = [lat for code, lat in res if code == 200]
    return {
        "codes": dict(Counter(code for code, _ in res)),
        "admitted_per_s": round(len(ok) / seconds),
        "p50_ms": round(float(np.percentile(ok, 50)) * 1000, 1) if ok else None,
        "p99_ms": round(float(np.percentile(ok, 99)) * 1000, 1) if ok else None,
    }


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("overload")
    config = write_config(tmp, n_features=4)
    preload(config, tmp / "db", N_USERS, 1, 4)
    return config, tmp


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(
            ("--max-loop-lag-ms", str(LAG_LIMIT_MS), "--max-queue", "32"), id="inline-lag-guard"
        ),
        pytest.param(
            (
                "--batch-window-us",
                "200",
                "--max-batch",
                "8",
                "--max-queue",
                "32",
                "--max-loop-lag-ms",
                "0",
            ),
            id="batched-bounded-queue",
        ),
    ],
)
def test_sheds_at_twice_capacity_and_recovers(loaded: tuple[Path, Path], mode: tuple[str]) -> None:
    config, tmp = loaded
    server: Server = start_server(
        config,
        tmp / "db",
        tmp / f"log-{mode[0]}",
        "--no-auth",
        "--hot-tier-bytes",
        "0",
        "--block-cache-bytes",
        "4000000",
        *mode,
    )
    url = server.url + "/get-online-features"
    body = _body()
    try:
        capacity = asyncio.run(_closed_loop(url, body, 32, 2.0))
        shed0 = metric(scrape(server.url), "feature_serving_rejected_requests_total")
        overload = _summary(asyncio.run(_open_loop(url, body, 2 * capacity, 3.0)), 3.0)
        recovered = _summary(asyncio.run(_open_loop(url, body, 0.4 * capacity, 2.0)), 2.0)
        shed = metric(scrape(server.url), "feature_serving_rejected_requests_total") - shed0
        print(
            f"\n{mode[0]}: capacity {capacity:.0f} req/s; at 2x: {overload}; "
            f"at 0.4x: {recovered}; shed (metric) {shed:.0f}"
        )
        codes = overload["codes"]
        assert isinstance(codes, dict)
        assert set(codes) <= {200, 429}, codes  # no 5xx, no connection errors
        assert codes.get(429, 0) > 0, "nothing was shed at twice the capacity"
        assert shed == codes.get(429, 0)
        assert isinstance(overload["admitted_per_s"], int)
        assert overload["admitted_per_s"] >= 0.5 * capacity  # goodput holds
        p99 = overload["p99_ms"]
        assert isinstance(p99, float)
        assert p99 < P99_BOUND_S * 1000, overload
        # Recovery: as soon as the load drops, nothing is refused and latency is back.
        assert recovered["codes"] == {200: int(0.4 * capacity * 2.0 + 0.999)} or set(
            recovered["codes"]  # type: ignore[arg-type]
        ) == {200}, recovered
        p99r = recovered["p99_ms"]
        assert isinstance(p99r, float)
        assert p99r < 100, recovered
    finally:
        assert stop_server(server) == 0


def _connect_burst(port: int, n: int, timeout: float) -> tuple[int, list[socket.socket]]:
    """Starts ``n`` TCP connects at once; how many complete their handshake within ``timeout``
    (the kernel completes them into the listen backlog without the server process)."""
    socks, sel = [], selectors.DefaultSelector()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE)
        socks.append(s)
    done, end = 0, time.monotonic() + timeout
    while done < n and (left := end - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            sel.unregister(key.fileobj)
            done += key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # type: ignore[union-attr]
    sel.close()
    return done, socks


@pytest.mark.parametrize(("backlog", "expect_all"), [(None, True), ("64", False)])
def test_connection_burst_while_busy_is_queued_not_dropped(
    loaded: tuple[Path, Path], backlog: str | None, expect_all: bool
) -> None:
    """A burst of new connections while the server process is not accepting (here: stopped;
    in production: the loop busy at overload) waits in the listen backlog. aiohttp's default
    backlog of 128 overflowed in the overload test: the kernel drops the SYNs past it and the
    client retries after 1 s, a 1 s p99. The default (1024) holds the burst; a small
    ``--http-backlog`` shows the drop, so this test fails if the setting stops reaching the
    socket."""
    config, tmp = loaded
    extra = ("--http-backlog", backlog) if backlog else ()
    server = start_server(config, tmp / "db", tmp / f"log-backlog-{backlog}", "--no-auth", *extra)
    n = 400
    socks: list[socket.socket] = []
    try:
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            done, socks = _connect_burst(server.http, n, 0.5)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        print(f"\n--http-backlog {backlog or 'default'}: {done} of {n} connected while stopped")
        if expect_all:
            assert done == n
        else:
            assert done < 100, done  # the backlog (64, plus one) and nothing past it
        for s in socks:
            s.close()
        # and the server goes on serving
        assert server.post("/get-online-features", json.loads(_body()))[0] == 200
    finally:
        for s in socks:
            s.close()
        assert stop_server(server) == 0


def test_guard_costs_well_under_a_microsecond() -> None:
    """The hot-path cost when not overloaded: one loop.time() and a comparison."""
    import uvloop

    async def measure() -> float:
        guard = LoopLagGuard(0.1)  # no overflow batcher: nothing to close
        guard.start(asyncio.get_running_loop())
        n = 200_000
        check = guard.behind
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                check()
            best = min(best, (time.perf_counter() - t0) / n)
        guard.stop()
        return best

    per_call = uvloop.run(measure())
    print(f"\nLoopLagGuard.check: {per_call * 1e9:.0f} ns per request")
    assert per_call < 0.5e-6
