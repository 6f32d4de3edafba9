"""The Kafka loader checks that each record arrived on the partition its key belongs to
(murmur2, as shard ownership assumes): records from a producer with librdkafka's default
partitioner (consistent_random, crc32) are counted as misrouted, in the loader's stats and in
``feature_serving_kafka_misrouted_records_total``, with a warning; ``loader.misrouted`` decides
whether they are applied (default), skipped or dead-lettered. See docs/kafka-loader.md."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from serving import Registry, Store
from serving.errors import InvalidArgumentError
from serving.loaders.kafka import (
    MISROUTED_HINT,
    PRODUCER_DEFAULTS,
    LoaderOptions,
    produce_rows,
)
from serving.sharding import partition_for_key
from tests.harness import Broker, load_until_caught_up, samples, start_server, stop_server

pytestmark = pytest.mark.integration

PARTITIONS = 4
N = 1000


def view_text(name: str, topic: str, bootstrap: str, options: str = 'loader.dlq_topic: ""') -> str:
    return f"""
  - name: {name}
    entities: [user]
    features: [{{name: seq, dtype: int64}}]
    stream_source: {{type: kafka, topic: {topic}, bootstrap_servers: "{bootstrap}", format: json,
                    options: {{{options}}}}}
"""


def registry_text(*views: str) -> str:
    return """
project: misrouted
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
""" + "".join(views)


def default_partitioner_producer(b: Broker) -> Any:
    """A producer as most librdkafka users configure one: no `partitioner`, so librdkafka's
    default (consistent_random: crc32 of the key) places the records."""
    conf = {k: v for k, v in PRODUCER_DEFAULTS.items() if k != "partitioner"}
    return Producer({"bootstrap.servers": b.bootstrap, **conf})


def rows(seq: int) -> list[dict[str, int]]:
    return [{"user_id": u, "event_timestamp": 1_000 + seq, "seq": seq * N + u} for u in range(N)]


def misrouted_of(b: Broker, topic: str) -> dict[bytes, int]:
    """Record key -> partition of every record of ``topic`` not on its murmur2 partition."""
    got = b.read_all(topic, N)
    assert len(got) == N
    return {
        m.key(): m.partition()
        for m in got
        if m.partition() != partition_for_key(m.key(), PARTITIONS)
    }


def user_of(key: bytes) -> int:
    return int.from_bytes(key, "big") ^ (1 << 63)


def test_misrouted_records_are_counted_in_metrics_and_still_applied(
    broker: Broker,
    tmp_path: Path,
) -> None:
    b = broker.bootstrap
    config = tmp_path / "features.yaml"
    config.write_text(registry_text(view_text("crc", "crc", b), view_text("murmur", "murmur", b)))
    reg = Registry.from_yaml(config)
    broker.create_topic("crc", PARTITIONS)
    broker.create_topic("murmur", PARTITIONS)
    produce_rows(default_partitioner_producer(broker), reg.view("crc"), rows(1))
    produce_rows(broker.producer(), reg.view("murmur"), rows(1))  # murmur2_random
    wrong = misrouted_of(broker, "crc")
    assert len(wrong) > N / 4, len(wrong)  # crc32 agrees with murmur2 on about 1 key in 4
    assert misrouted_of(broker, "murmur") == {}

    server = start_server(config, tmp_path / "db", tmp_path / "server.log", "--no-auth")
    try:
        deadline = time.monotonic() + 30
        while True:
            m = samples(server.url)
            name = "feature_serving_loader_rows_applied_total"
            done = [m.get((name, (("loader", "kafka"), ("view", v)))) for v in ("crc", "murmur")]
            if done == [N, N] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert done == [N, N], done

        def misrouted(view: str) -> float | None:
            return m.get(
                (
                    "feature_serving_kafka_misrouted_records_total",
                    (("topic", view), ("view", view)),
                )
            )

        assert misrouted("crc") == len(wrong)
        assert misrouted("murmur") == 0
        # applied anyway (loader.misrouted: apply, the default): every key is answered
        users = list(range(0, N, 7))
        status, got = server.post(
            "/get-online-features", {"features": ["crc:seq"], "entities": {"user_id": users}}
        )
        assert status == 200, got
        assert got["results"][1]["values"] == [N + u for u in users]
    finally:
        assert stop_server(server) == 0
    log = (tmp_path / "server.log").read_text()
    warnings = [ln for ln in log.splitlines() if "arrived on the wrong partition" in ln]
    assert warnings, log[-3000:]
    # one warning per 10 s at most, naming view, topic, partitions and the fix
    assert len(warnings) <= 3, warnings
    w = warnings[0]
    for part in (
        "view crc",
        "topic crc",
        MISROUTED_HINT,
        "belongs to partition",
        f"of {PARTITIONS}",
    ):
        assert part in w, w
    assert "applied anyway" in w, w
    assert not any("view murmur" in ln for ln in warnings)


def test_misrouted_records_can_be_skipped_or_dead_lettered(
    broker: Broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = broker.bootstrap
    # two views consume the same topic, each with its own policy
    reg = Registry.from_yaml_text(
        registry_text(
            view_text("skipping", "crc", b, 'loader.misrouted: skip, loader.dlq_topic: ""'),
            view_text("lettering", "crc", b, "loader.misrouted: dlq, loader.dlq_topic: crc.dlq"),
        )
    )
    broker.create_topic("crc", PARTITIONS)
    produce_rows(default_partitioner_producer(broker), reg.view("skipping"), rows(1))
    wrong = misrouted_of(broker, "crc")
    assert len(wrong) > N / 4, len(wrong)
    right = {u for u in range(N)} - {user_of(k) for k in wrong}

    with Store(tmp_path / "db", reg) as store, caplog.at_level(logging.WARNING, "serving.kafka"):
        loader = load_until_caught_up(store)
        st = loader.stats()
        for view in ("skipping", "lettering"):
            got = store.get({"user_id": list(range(N))}, [f"{view}:seq"]).column(f"{view}:seq")
            held = {u for u, v in enumerate(got) if v is not None}
            assert held == right, view
            assert all(got[u] == N + u for u in held)
            s = st[view]
            assert (s["records"], s["misrouted"], s["applied"]) == (N, len(wrong), len(right)), s
            assert s["errors"] == 0, s
        assert st["skipping"]["dead_lettered"] == 0
        assert st["lettering"]["dead_lettered"] == len(wrong)
    text = caplog.text
    assert "not applied (loader.misrouted: skip)" in text
    assert "sent to crc.dlq (loader.misrouted: dlq)" in text

    letters = broker.read_all("crc.dlq", len(wrong))
    assert len(letters) == len(wrong)
    assert {m.key() for m in letters} == set(wrong)
    for m in letters:
        h = {name: value.decode() for name, value in m.headers()}
        assert h["dlq.feature_view"] == "lettering"
        assert int(h["dlq.source.partition"]) == wrong[m.key()]
        expected = partition_for_key(m.key(), PARTITIONS)
        assert h["dlq.error"].startswith(
            f"misrouted: arrived on partition {wrong[m.key()]} but its entity key belongs to "
            f"partition {expected} of {PARTITIONS}"
        ), h
        assert MISROUTED_HINT in h["dlq.error"]


def test_misrouted_option_is_validated() -> None:
    def opts(options: str) -> LoaderOptions:
        reg = Registry.from_yaml_text(registry_text(view_text("v", "t", "127.0.0.1:1", options)))
        source = reg.view("v").stream_source
        assert source is not None
        return LoaderOptions.from_source(source)

    assert opts('loader.dlq_topic: ""').misrouted == "apply"
    assert opts("loader.misrouted: skip").misrouted == "skip"
    assert opts("loader.misrouted: dlq").misrouted == "dlq"  # default dlq topic t.dlq
    with pytest.raises(InvalidArgumentError, match="must be one of apply, skip, dlq"):
        opts("loader.misrouted: drop")
    with pytest.raises(InvalidArgumentError, match="needs a dead-letter topic"):
        opts('loader.misrouted: dlq, loader.dlq_topic: ""')
