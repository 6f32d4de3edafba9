"""Our murmur2 partitioner (rust_core/src/partition.rs) agrees with where librdkafka, configured
with ``partitioner=murmur2_random`` (PRODUCER_DEFAULTS), really puts keyed records on a real
broker (tansu); librdkafka's default partitioner does not."""

from __future__ import annotations

from collections import Counter

import pytest
from confluent_kafka.admin import AdminClient

from serving import Registry
from serving.loaders.kafka import PRODUCER_DEFAULTS, encode_key, produce_rows
from serving.sharding import partition_for_key, partitions_for_keys
from tests.harness import Broker

pytestmark = pytest.mark.integration

N = 2000
PARTITIONS = 4


def registry(bootstrap: str) -> Registry:
    return Registry.from_yaml_text(
        f"""
project: parttest
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
  - {{name: item, join_keys: [{{name: item_id, dtype: string}}]}}
feature_views:
  - name: users
    entities: [user]
    features: [{{name: x, dtype: int64}}]
    stream_source: {{type: kafka, topic: users, bootstrap_servers: "{bootstrap}", format: json}}
  - name: items
    entities: [item]
    features: [{{name: x, dtype: int64}}]
    stream_source: {{type: kafka, topic: items, bootstrap_servers: "{bootstrap}", format: json}}
"""
    )


def _partition_count(b: Broker, topic: str) -> int:
    md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(topic, timeout=5)
    return len(md.topics[topic].partitions)


def test_produced_partitions_match_partition_for_key(broker: Broker) -> None:
    assert PRODUCER_DEFAULTS["partitioner"] == "murmur2_random"
    reg = registry(broker.bootstrap)
    broker.create_topic("users", PARTITIONS)
    broker.create_topic("items", PARTITIONS)
    assert _partition_count(broker, "users") == PARTITIONS
    users, items = reg.view("users"), reg.view("items")
    producer = broker.producer()  # PRODUCER_DEFAULTS: partitioner=murmur2_random
    produce_rows(producer, users, [{"user_id": u, "event_timestamp": 1, "x": u} for u in range(N)])
    # string keys of every length 0..40 (u32 length + bytes: every murmur2 tail length)
    names = ["k" * (i % 41) + str(i) for i in range(500)]
    produce_rows(producer, items, [{"item_id": s, "event_timestamp": 1, "x": 0} for s in names])

    got = broker.read_all("users", N) + broker.read_all("items", len(names))
    assert len(got) == N + len(names)
    mismatches = [
        (m.key().hex(), m.partition(), partition_for_key(m.key(), PARTITIONS))
        for m in got
        if m.partition() != partition_for_key(m.key(), PARTITIONS)
    ]
    assert not mismatches, mismatches[:10]
    # the keys are the project's encoding, and every partition got its share
    user_msgs = [m for m in got if m.topic() == "users"]
    assert {m.key() for m in user_msgs} == {encode_key(users, [u]) for u in range(N)}
    counts = Counter(m.partition() for m in user_msgs)
    assert set(counts) == set(range(PARTITIONS))
    assert min(counts.values()) > N / PARTITIONS * 0.8, counts
    # the batched variant agrees with the single one
    keys = [m.key() for m in got]
    assert partitions_for_keys(keys, PARTITIONS) == [m.partition() for m in got]


def test_librdkafka_default_partitioner_differs(broker: Broker) -> None:
    """Why producers must set partitioner=murmur2_random: the default (consistent_random,
    crc32) sends many keys elsewhere."""
    reg = registry(broker.bootstrap)
    broker.create_topic("users", PARTITIONS)
    users = reg.view("users")
    conf = {k: v for k, v in PRODUCER_DEFAULTS.items() if k != "partitioner"}
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap, **conf})
    produce_rows(producer, users, [{"user_id": u, "event_timestamp": 1} for u in range(200)])
    got = broker.read_all("users", 200)
    assert len(got) == 200
    differ = sum(m.partition() != partition_for_key(m.key(), PARTITIONS) for m in got)
    assert differ > 50, differ
