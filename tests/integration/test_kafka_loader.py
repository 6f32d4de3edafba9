"""The Kafka loader against a real Kafka-protocol broker (tansu, memory storage) on loopback:
formats, tombstones, the merge rule, dead letters, kill -9 of a standalone loader, and a broker
restart. (Serving answers during ingestion is covered with the server tests.)"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving import Registry, Store
from serving.loaders.kafka import (
    KafkaLoader,
    encode_key,
    offset_key,
    produce_deletes,
    produce_rows,
)
from serving.store import FieldStatus
from tests.harness import ROOT, Broker

pytestmark = pytest.mark.integration

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
BASE_US = 1_704_067_200_000_000


def registry_text(bootstrap: str, dlq: str | None = None) -> str:
    dlq_opt = f", options: {{loader.dlq_topic: '{dlq}'}}" if dlq is not None else ""
    return f"""
project: kafkatest
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
  - {{name: item, join_keys: [{{name: item_id, dtype: string}}]}}
feature_views:
  - name: all_types
    entities: [user]
    features:
      - {{name: b, dtype: bool}}
      - {{name: i32, dtype: int32}}
      - {{name: i64, dtype: int64}}
      - {{name: f32, dtype: float32}}
      - {{name: f64, dtype: float64}}
      - {{name: s, dtype: string}}
      - {{name: raw, dtype: bytes}}
      - {{name: ts, dtype: timestamp}}
      - {{name: emb, dtype: float32_array, dim: 3}}
    stream_source: {{type: kafka, topic: all_types, bootstrap_servers: "{bootstrap}",
                    format: json{dlq_opt}}}
  - name: item_proto
    entities: [item]
    features:
      - {{name: ctr, dtype: float32}}
      - {{name: title, dtype: string}}
      - {{name: emb, dtype: float32_array, dim: 2}}
      - {{name: seen, dtype: timestamp}}
      - {{name: clicks, dtype: int64}}
    stream_source: {{type: kafka, topic: items, bootstrap_servers: "{bootstrap}",
                    format: protobuf}}
  - name: counters
    entities: [user]
    features: [{{name: seq, dtype: int64}}, {{name: label, dtype: string}}]
    stream_source: {{type: kafka, topic: counters, bootstrap_servers: "{bootstrap}",
                    format: json}}
"""


@pytest.fixture
def registry(broker: Broker) -> Registry:
    return Registry.from_yaml_text(registry_text(broker.bootstrap))


@pytest.fixture
def store(tmp_path: Path, registry: Registry) -> Iterator[Store]:
    s = Store(tmp_path / "db", registry)
    yield s
    s.close()


def running_loader(store: Store, *views: str) -> KafkaLoader:
    loader = KafkaLoader(store, list(views))
    loader.start()
    return loader


def wait_for(cond: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_json_rows_land_with_right_values(broker: Broker, store: Store) -> None:
    broker.create_topic("all_types", 2)
    view = store.registry.view("all_types")
    rows = [
        {
            "user_id": 1,
            "event_timestamp": BASE,
            "b": True,
            "i32": -7,
            "i64": 1 << 40,
            "f32": 0.25,
            "f64": 1e100,
            "s": "héllo",
            "raw": b"\x00\xff",
            "ts": BASE + dt.timedelta(seconds=1),
            "emb": [1.0, -2.5, 0.125],
        },
        # Absent features and explicit nulls are null.
        {"user_id": 2, "event_timestamp": BASE_US + 5, "s": None},
    ]
    produce_rows(broker.producer(), view, rows)
    loader = running_loader(store, "all_types")
    try:
        assert loader.wait_caught_up(15), loader.stats()
        st = loader.stats()["all_types"]
    finally:
        assert loader.stop(10)
    assert (st["applied"], st["errors"]) == (2, 0), st
    assert st["newest_event_time"] == pytest.approx((BASE_US + 5) / 1e6)
    r = store.get({"user_id": [1, 2, 3]}, ["all_types:*"])
    got = r.to_dict()
    assert got["all_types:b"] == [True, None, None]
    assert got["all_types:i32"] == [-7, None, None]
    assert got["all_types:i64"] == [1 << 40, None, None]
    assert got["all_types:f32"] == [0.25, None, None]
    assert got["all_types:f64"] == [1e100, None, None]
    assert got["all_types:s"] == ["héllo", None, None]
    assert got["all_types:raw"] == [b"\x00\xff", None, None]
    assert got["all_types:ts"][0] == BASE + dt.timedelta(seconds=1)
    assert got["all_types:emb"][0] == [1.0, -2.5, 0.125]
    assert r.status("all_types:s") == [
        FieldStatus.PRESENT,
        FieldStatus.NULL_VALUE,
        FieldStatus.NOT_FOUND,
    ]
    # Offsets ride in the store (next offset per partition) and reach Kafka's group.
    stored = {p: store.get_meta(offset_key("all_types", "all_types", p)) for p in (0, 1)}
    assert sum(int(v) for v in stored.values() if v is not None) == 2
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "feature-serving"})
    committed = c.committed([TopicPartition("all_types", p) for p in (0, 1)], timeout=10)
    c.close()
    assert sum(max(tp.offset, 0) for tp in committed) == 2


def test_protobuf_rows_land_with_right_values(broker: Broker, store: Store) -> None:
    broker.create_topic("items", 3)
    view = store.registry.view("item_proto")
    rows = [
        {
            "item_id": f"sku-{i}",
            "event_timestamp": BASE_US + i,
            "ctr": i / 4,
            "title": f"item {i}",
            "emb": [float(i), 0.5],
            "seen": BASE_US - i,
            "clicks": i * 1000,
        }
        for i in range(50)
    ]
    rows[7]["title"] = None
    del rows[8]["emb"]
    produce_rows(broker.producer(), view, rows)
    loader = running_loader(store, "item_proto")
    try:
        assert loader.wait_caught_up(15), loader.stats()
    finally:
        loader.stop()
    got = store.get({"item_id": ["sku-3", "sku-7", "sku-8"]}, ["item_proto:*"]).to_dict()
    assert got["item_proto:ctr"] == [0.75, 1.75, 2.0]
    assert got["item_proto:title"] == ["item 3", None, "item 8"]
    assert got["item_proto:emb"] == [[3.0, 0.5], [7.0, 0.5], None]
    assert got["item_proto:clicks"] == [3000, 7000, 8000]
    assert got["item_proto:seen"][0] == BASE - dt.timedelta(microseconds=3)


def test_tombstones_delete_under_the_merge_rule(broker: Broker, store: Store) -> None:
    broker.create_topic("counters", 3)
    view = store.registry.view("counters")
    p = broker.producer()
    produce_rows(p, view, [{"user_id": u, "event_timestamp": BASE_US, "seq": u} for u in range(10)])
    loader = running_loader(store, "counters")
    try:
        assert loader.wait_caught_up(15)
        # Users 0-4 deleted now; user 9's delete is older than its row, so the row survives.
        produce_deletes(p, view, [[u] for u in range(5)])
        produce_deletes(p, view, [[9]], timestamp=BASE - dt.timedelta(seconds=1))
        wait_for(lambda: loader.stats()["counters"]["tombstones"] == 6, what="tombstones")
        assert loader.wait_caught_up(15)
        st = loader.stats()["counters"]
    finally:
        loader.stop()
    assert st["skipped_older"] == 1, st
    r = store.get({"user_id": list(range(10))}, ["counters:seq"])
    assert r.column("counters:seq") == [None] * 5 + [5, 6, 7, 8, 9]
    assert r.status("counters:seq")[:5] == [FieldStatus.NOT_FOUND] * 5


def test_out_of_order_events_keep_the_newest(broker: Broker, store: Store) -> None:
    broker.create_topic("counters", 1)
    view = store.registry.view("counters")
    # Written in the order 3, 1, 2 (by event time) for user 1; user 2 gets a replayed duplicate.
    rows = [
        {"user_id": 1, "event_timestamp": BASE_US + 3, "seq": 3, "label": "newest"},
        {"user_id": 1, "event_timestamp": BASE_US + 1, "seq": 1, "label": "old"},
        {"user_id": 2, "event_timestamp": BASE_US + 1, "seq": 10},
        {"user_id": 1, "event_timestamp": BASE_US + 2, "seq": 2, "label": "older"},
        {"user_id": 2, "event_timestamp": BASE_US + 1, "seq": 10},
    ]
    produce_rows(broker.producer(), view, rows)
    loader = running_loader(store, "counters")
    try:
        assert loader.wait_caught_up(15)
    finally:
        loader.stop()
    got = store.get({"user_id": [1, 2]}, ["counters:seq", "counters:label"]).to_dict()
    assert got["counters:seq"] == [3, 10]
    assert got["counters:label"] == ["newest", None]
    # Later batches (a replay after a restart) do not change anything either.
    produce_rows(broker.producer(), view, rows[1:2])
    loader = running_loader(store, "counters")
    try:
        wait_for(lambda: loader.stats()["counters"]["records"] == 1, what="the replayed row")
        assert loader.stats()["counters"]["skipped_older"] == 1
    finally:
        loader.stop()
    assert store.get({"user_id": [1]}, ["counters:seq"]).column("counters:seq") == [3]


def test_poison_records_are_dead_lettered_and_the_partition_moves_on(
    broker: Broker,
    tmp_path: Path,
) -> None:
    registry = Registry.from_yaml_text(registry_text(broker.bootstrap, dlq="bad-rows"))
    broker.create_topic("all_types", 1)
    view = registry.view("all_types")
    p = broker.producer()
    good = [{"user_id": u, "event_timestamp": BASE_US, "i32": u} for u in range(3)]
    key = encode_key(view, [9])
    poison: list[tuple[bytes | None, bytes | None, str]] = [
        (key, b"{not json", "invalid JSON"),
        (
            key,
            json.dumps({"user_id": 9, "event_timestamp": 1, "nope": 1}).encode(),
            "unknown field",
        ),
        (
            key,
            json.dumps({"user_id": 9, "event_timestamp": 1, "i32": "x"}).encode(),
            "invalid type",
        ),
        (key, json.dumps({"user_id": 9, "event_timestamp": 1, "i32": 1 << 40}).encode(), "int32"),
        (b"not-a-key", None, "tombstone key"),
    ]
    produce_rows(p, view, good[:1], flush=False)
    for k, v, _ in poison[:3]:
        p.produce("all_types", key=k, value=v, headers=[("trace", b"abc")])
    produce_rows(p, view, good[1:2], flush=False)
    for k, v, _ in poison[3:]:
        p.produce("all_types", key=k, value=v)
    produce_rows(p, view, good[2:])
    with Store(tmp_path / "db", registry) as store:
        loader = running_loader(store, "all_types")
        try:
            assert loader.wait_caught_up(15), loader.stats()
            st = loader.stats()["all_types"]
        finally:
            loader.stop()
        assert (st["applied"], st["errors"], st["dead_lettered"]) == (3, 5, 5), st
        assert store.get({"user_id": [0, 1, 2, 9]}, ["all_types:i32"]).column("all_types:i32") == [
            0,
            1,
            2,
            None,
        ]
        assert store.get_meta(offset_key("all_types", "all_types", 0)) == b"8"
    letters = broker.read_all("bad-rows", 5)
    assert len(letters) == 5
    letters.sort(key=lambda m: int(dict(m.headers())["dlq.source.offset"]))
    for m, (k, v, why) in zip(letters, poison, strict=True):
        h = {name: value.decode() for name, value in m.headers()}
        assert h["dlq.source.topic"] == "all_types"
        assert h["dlq.source.partition"] == "0"
        assert why in h["dlq.error"], h
        assert h["dlq.feature_view"] == "all_types"
        assert (m.key(), m.value()) == (k, v)
    assert [int(dict(m.headers())["dlq.source.offset"]) for m in letters] == [1, 2, 3, 5, 6]
    assert dict(letters[0].headers())["trace"] == b"abc", "original headers are kept"


# --------------------------------------------------------------------------------------------
# crashes and restarts

N_STREAM = 100_000
N_KEYS = 1000


def stream_record(i: int) -> tuple[int, bytes | None, int]:
    """Record i of the crash test: (user, value or None for a tombstone, timestamp ms)."""
    user = (i * 7919) % N_KEYS
    ts_us = BASE_US + i * 1000
    if i % 97 == 13:
        return user, None, ts_us // 1000
    return user, b'{"user_id":%d,"event_timestamp":%d,"seq":%d}' % (user, ts_us, i), ts_us // 1000


def test_kill_9_mid_stream_then_restart_applies_everything_once(
    broker: Broker,
    tmp_path: Path,
) -> None:
    broker.create_topic("counters", 3)
    reg_path = tmp_path / "features.yaml"
    reg_path.write_text(registry_text(broker.bootstrap))
    registry = Registry.from_yaml(reg_path)
    view = registry.view("counters")
    data_dir = tmp_path / "db"
    ends: dict[int, int] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None, err
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    def produce() -> None:
        p = broker.producer()
        t0 = time.monotonic()
        for i in range(N_STREAM):
            user, value, ts_ms = stream_record(i)
            while True:
                try:
                    p.produce(
                        "counters",
                        key=encode_key(view, [user]),
                        value=value,
                        timestamp=ts_ms,
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:
                    p.poll(0.01)
            if i % 1000 == 999:  # about 25,000 records/s, so the kill lands mid-stream
                p.poll(0)
                time.sleep(max(0.0, t0 + (i + 1) / 25_000 - time.monotonic()))
        assert p.flush(30) == 0

    def ingest(log_name: str, *extra: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log_name, "wb") as log:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "serving",
                    "ingest",
                    "counters",
                    "--config",
                    str(reg_path),
                    "--data-dir",
                    str(data_dir),
                    "--stats-interval",
                    "0",
                    *extra,
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    producer = threading.Thread(target=produce)
    second: subprocess.Popen[bytes] | None = None
    first = ingest("ingest-1.log")
    producer.start()
    try:
        # Kill once the loader has visibly applied part of the stream (its Kafka commits).
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "feature-serving"})
        tps = [TopicPartition("counters", p) for p in range(3)]
        wait_for(
            lambda: sum(max(t.offset, 0) for t in c.committed(tps, timeout=5)) >= 20_000,
            timeout=30,
            what="the first loader to apply 20,000 records",
        )
        c.close()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert producer.is_alive(), "the stream ended before the kill"
        killed_at = sum(ends.values())
        second = ingest("ingest-2.log", "--stop-when-idle", "1.5")
        producer.join(60)
        assert second.wait(60) == 0, (tmp_path / "ingest-2.log").read_text()[-3000:]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        producer.join(60)
    assert 20_000 < killed_at < N_STREAM, killed_at

    expected: dict[int, int | None] = {}
    for i in range(N_STREAM):
        user, value, _ = stream_record(i)
        expected[user] = None if value is None else i
    with Store(data_dir, registry) as store:
        users = list(range(N_KEYS))
        got = store.get({"user_id": users}, ["counters:seq"]).column("counters:seq")
        assert got == [expected[u] for u in users]
        stored = {p: store.get_meta(offset_key("counters", "counters", p)) for p in range(3)}
    assert {p: int(v) for p, v in stored.items() if v is not None} == ends


def test_broker_restart_reconnects_and_catches_up(broker: Broker, store: Store) -> None:
    broker.create_topic("counters", 2)
    view = store.registry.view("counters")
    produce_rows(
        broker.producer(),
        view,
        [{"user_id": i % 20, "event_timestamp": BASE_US + i, "seq": i} for i in range(200)],
    )
    loader = running_loader(store, "counters")
    try:
        assert loader.wait_caught_up(15)
        assert store.get({"user_id": [0]}, ["counters:seq"]).column("counters:seq") == [180]
        # Memory storage: the restarted broker has no topics, and the loader's offsets (about
        # 100 per partition) are past the end of the new, shorter log.
        broker.restart()
        broker.create_topic("counters", 2)
        produce_rows(
            broker.producer(),
            view,
            [
                {"user_id": i, "event_timestamp": BASE_US + 1000 + i, "seq": 1000 + i}
                for i in range(20)
            ],
        )
        wait_for(
            lambda: (
                store.get({"user_id": list(range(20))}, ["counters:seq"]).column("counters:seq")
                == [1000 + i for i in range(20)]
            ),
            timeout=30,
            what="the rows produced after the restart",
        )
        st = loader.stats()["counters"]
        assert st["resets"] >= 1, st
        assert loader.wait_caught_up(10), loader.stats()
    finally:
        loader.stop()


def test_lag_is_unknown_not_zero_until_every_partition_was_fetched(
    broker: Broker,
    store: Store,
) -> None:
    """Readiness depends on lag_total: a loader that has not fetched yet must not report 0
    (a new replica said ready while it still answered NOT_FOUND)."""
    broker.create_topic("counters", 4)
    view = store.registry.view("counters")
    n = 3000
    produce_rows(
        broker.producer(),
        view,
        [{"user_id": u, "event_timestamp": BASE_US, "seq": u, "label": "x"} for u in range(n)],
    )
    loader = running_loader(store, "counters")
    samples: list[tuple[int | None, int]] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = loader.stats()["counters"]
            samples.append((st["lag_total"], st["applied"]))
            if st["applied"] == n and st["lag_total"] == 0:
                break
            time.sleep(0.002)
    finally:
        assert loader.stop(10)
    assert samples[-1] == (0, n), samples[-5:]
    assert samples[0][0] is None, samples[:5]  # before the first fetch: unknown
    early_zero = [s for s in samples if s[0] == 0 and s[1] < n]
    assert not early_zero, early_zero[:5]
