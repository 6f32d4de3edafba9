"""Memory bounds: 50,000 users of 200 float32 features (about 42 MB of rows) behind an 8 MB hot
tier and a 16 MB block cache, a read load that churns the hot tier for a bounded soak: the
process RSS stays within the budgets plus a stated overhead and stops growing."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness import http, rss_bytes, start_server, stop_server
from tests.harness.profile import feast_body, preload, write_config

pytestmark = pytest.mark.integration

N_USERS = 50_000
NF = 200
HOT = 8_000_000
CACHE = 16_000_000
SOAK_S = 15.0
#: the interpreter, grpc, aiohttp, pyarrow, RocksDB memtables and allocator slack, measured
#: idle after start (the RSS at ready) plus this margin for request buffers
MARGIN = 64 << 20


def test_rss_stays_within_budgets(tmp_path: Path) -> None:
    config = write_config(tmp_path, n_features=NF)
    preload(config, tmp_path / "db", N_USERS, 1, NF)
    server = start_server(
        config,
        tmp_path / "db",
        tmp_path / "log",
        "--no-auth",
        "--hot-tier-bytes",
        str(HOT),
        "--block-cache-bytes",
        str(CACHE),
    )
    base = rss_bytes(server.proc.pid)
    limit = base + HOT + CACHE + MARGIN
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    answered = [0]

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            users = rnd.sample(range(N_USERS), 100)
            status, _ = http(server.url + "/get-online-features", feast_body(users, NF))
            assert status == 200
            answered[0] += 1

    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(reader, i) for i in range(4)]
            while time.monotonic() - t0 < SOAK_S:
                samples.append((time.monotonic() - t0, rss_bytes(server.proc.pid)))
                time.sleep(0.5)
            stop.set()
            for f in futs:
                f.result()
    finally:
        stop.set()
        code = stop_server(server)
    peak = max(r for _, r in samples)
    first_half = max(r for t, r in samples if t < SOAK_S / 2)
    second_half = max(r for t, r in samples if t >= SOAK_S / 2)
    print(
        f"\nRSS at ready {base / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB over {SOAK_S:.0f} s "
        f"({answered[0]} requests of 100 random users x {NF} features); "
        f"limit {limit / 2**20:.0f} MiB; "
        f"max first half {first_half / 2**20:.0f}, second half {second_half / 2**20:.0f} MiB"
    )
    assert code == 0
    assert peak <= limit
    assert second_half <= first_half + (16 << 20), "RSS still growing"
