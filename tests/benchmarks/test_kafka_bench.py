"""Kafka loader benchmark: broker -> store throughput and produce -> visible freshness.

Against the real tansu broker (memory storage) on loopback; ``user_profile`` rows of
WORKLOADS.md (200 float32 features, JSON, about 2.8 KB a record). Figures of record are in
docs/benchmarks.md ("Kafka loader"); rerun with

    .venv/bin/python -m pytest -q -s -m benchmark --benchmark-enable -p no:randomly \\
        tests/benchmarks/test_kafka_bench.py

Targets (read from the report, not asserted: a shared 2-core machine drifts): >= 100,000
rows/s broker -> store; freshness p99 <= 100 ms at 1,000 records/s. The ``smoke`` variants
are not marked ``benchmark``; they run with the integration tests and keep this file working.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.loaders.kafka import KafkaLoader, encode_key
from serving.registry import Registry
from serving.store import Store
from tests.harness import Broker

BASE_US = 1_704_067_200_000_000
N_FEATURES = 200
PARTITIONS = 3


def registry(bootstrap: str) -> Registry:
    return Registry.from_dict(
        {
            "project": "bench",
            "entities": [{"name": "user", "join_keys": [{"name": "user_id", "dtype": "int64"}]}],
            "feature_views": [
                {
                    "name": "user_profile",
                    "entities": ["user"],
                    "features": [{"name": "f{000..199}", "dtype": "float32"}],
                    "stream_source": {
                        "type": "kafka",
                        "topic": "user_profile",
                        "bootstrap_servers": bootstrap,
                        "format": "json",
                    },
                }
            ],
        }
    )


def feature_texts(n: int = 500) -> list[bytes]:
    """``n`` distinct JSON feature lists (float32 values, 5 significant digits)."""
    rng = random.Random(7)
    return [
        ",".join(f'"f{j:03d}":{rng.uniform(-100, 100):.5g}' for j in range(N_FEATURES)).encode()
        for _ in range(n)
    ]


def record(user: int, ts_us: int, feats: bytes) -> bytes:
    return b'{"user_id":%d,"event_timestamp":%d,%s}' % (user, ts_us, feats)


def produce_stream(b: Broker, reg: Registry, n: int) -> int:
    """Produces ``n`` user_profile records (users 0..n-1); returns the mean record size."""
    view = reg.view("user_profile")
    texts = feature_texts()
    p = b.producer()
    size = 0
    for i in range(n):
        value = record(i, BASE_US + i, texts[i % len(texts)])
        size += len(value)
        while True:
            try:
                p.produce("user_profile", key=encode_key(view, [i]), value=value)
                break
            except BufferError:
                p.poll(0.01)
    assert p.flush(60) == 0
    return size // max(n, 1)


@pytest.mark.parametrize(
    "n",
    [
        pytest.param(2_000, id="smoke", marks=pytest.mark.integration),
        pytest.param(300_000, id="300k", marks=pytest.mark.benchmark),
    ],
)
def test_throughput(benchmark: Any, broker: Broker, tmp_path: Path, n: int) -> None:
    reg = registry(broker.bootstrap)
    broker.create_topic("user_profile", PARTITIONS)
    t = time.perf_counter()
    size = produce_stream(broker, reg, n)
    produce_s = time.perf_counter() - t
    store = Store(tmp_path / "db", reg)
    loader = KafkaLoader(store)

    def run() -> float:
        t0 = time.perf_counter()
        loader.start()
        while loader.stats()["user_profile"]["records"] < n:
            time.sleep(0.005)
        return time.perf_counter() - t0

    try:
        seconds = benchmark.pedantic(run, rounds=1, iterations=1)
        st = loader.stats()["user_profile"]
    finally:
        loader.stop()
    try:
        assert (st["applied"], st["errors"]) == (n, 0), st
        probe = [0, n // 2, n - 1]
        dense = store.get_dense({"user_id": probe}, ["user_profile:f000"])
        assert not np.isnan(dense.values).any()
    finally:
        store.close()
    rate = n / seconds
    benchmark.extra_info.update(rows=n, record_bytes=size, rows_per_s=round(rate))
    print(
        f"\nkafka throughput: {n:,} records of {size:,} B: {seconds:.2f} s, {rate:,.0f} rows/s "
        f"({rate * size / 1e6:,.0f} MB/s; producing took {produce_s:.1f} s, "
        f"{st['batches']} batches)"
    )


@pytest.mark.parametrize(
    ("rate", "seconds"),
    [
        pytest.param(200, 1.0, id="smoke", marks=pytest.mark.integration),
        pytest.param(1_000, 15.0, id="1000rps", marks=pytest.mark.benchmark),
    ],
)
def test_freshness(
    benchmark: Any,
    broker: Broker,
    tmp_path: Path,
    rate: int,
    seconds: float,
) -> None:
    """Time from ``produce()`` to the value answering through ``Store.get_dense``."""
    reg = registry(broker.bootstrap)
    broker.create_topic("user_profile", PARTITIONS)
    view = reg.view("user_profile")
    texts = feature_texts(50)
    n = int(rate * seconds)
    sent = [0.0] * n
    store = Store(tmp_path / "db", reg)
    loader = KafkaLoader(store)
    loader.start()
    p = broker.producer()

    def produce() -> None:
        t0 = time.perf_counter()
        for i in range(n):
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            sent[i] = time.perf_counter()
            p.produce(
                "user_profile",
                key=encode_key(view, [i]),
                value=record(i, BASE_US + i, texts[i % 50]),
            )
            p.poll(0)
        p.flush(10)

    def measure() -> list[float]:
        th = threading.Thread(target=produce)
        th.start()
        lat = []
        for i in range(n):
            while sent[i] == 0.0:
                time.sleep(0.0002)
            while True:
                d = store.get_dense({"user_id": [i]}, ["user_profile:f000"])
                if not np.isnan(d.values[0, 0]):
                    lat.append(time.perf_counter() - sent[i])
                    break
                time.sleep(0.0002)
        th.join()
        return lat

    try:
        loader.wait_caught_up(15)  # assigned and fetching before the clock starts
        lat = benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        loader.stop()
        store.close()
    ms = np.array(lat) * 1000
    p50, p99, worst = (float(np.percentile(ms, q)) for q in (50, 99, 100))
    benchmark.extra_info.update(rate=rate, records=n, p50_ms=p50, p99_ms=p99, max_ms=worst)
    print(
        f"\nkafka freshness at {rate:,} records/s ({n:,} records): p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, max {worst:.1f} ms"
    )


@pytest.mark.benchmark
@pytest.mark.parametrize("check", [False, True], ids=["no-check", "partition-check"])
def test_decode_partition_check(benchmark: Any, tmp_path: Path, check: bool) -> None:
    """Cost of the loader's misrouted-record check: ``decode_batch`` of 5,000 user_profile
    records (the loader's batch size) without and with ``num_partitions`` (the check hashes
    each row's entity key with murmur2 and compares the partition). No broker."""
    from serving import _rust_core
    from serving.sharding import partition_for_key

    reg = registry("127.0.0.1:1")
    view = reg.view("user_profile")
    texts = feature_texts()
    n = 5_000
    records = []
    for i in range(n):
        key = encode_key(view, [i])
        value = record(i, BASE_US + i, texts[i % len(texts)])
        records.append((key, value, partition_for_key(key, 12), i, None))
    with Store(tmp_path / "db", reg) as store:

        def decode() -> Any:
            return _rust_core.decode_batch(
                store.core, "user_profile", "json", records, num_partitions=12 if check else None
            )

        batch = benchmark.pedantic(decode, rounds=40, iterations=1, warmup_rounds=3)
    assert not batch.errors
    assert not batch.misrouted
    assert batch.upserts == n
