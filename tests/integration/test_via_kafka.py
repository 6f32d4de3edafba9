"""`materialize --via-kafka`: the batch loader publishes a backfill to the views' stream-source
topic, and every shard applies its part of it through its Kafka loader (docs/batch-loader.md,
docs/scale-out.md)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving import Registry, Store
from serving.errors import InvalidArgumentError
from serving.loaders.batch import materialize, materialize_incremental, watermark_key
from serving.loaders.kafka import encode_key
from serving.loaders.publish_state import STATE_TOPIC
from serving.sharding import Shard, partition_for_key
from tests.harness import (
    Broker,
    free_port,
    ingest_until_idle,
    load_until_caught_up,
    present,
    run_cli,
)

pytestmark = pytest.mark.integration

#: the topic's partitions, as in test_scale_out.py
PARTITIONS = 4
N = 2000


def registry_text(bootstrap: str, parquet: Path, *, stream: bool = True) -> str:
    source = (
        f"""    stream_source: {{type: kafka, topic: users, bootstrap_servers: "{bootstrap}",
                    format: json, options: {{loader.dlq_topic: ""}}}}
"""
        if stream
        else ""
    )
    return f"""
project: viakafka
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: users
    entities: [user]
    features: [{{name: seq, dtype: int64}}, {{name: label, dtype: string}}]
    batch_source: {{type: parquet, path: "{parquet}"}}
{source}"""


def write_parquet(path: Path) -> None:
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(range(N), pa.int64()),
                "event_timestamp": pa.array(
                    [t0 + dt.timedelta(seconds=u) for u in range(N)], pa.timestamp("us", tz="UTC")
                ),
                "seq": pa.array([u * 7 for u in range(N)], pa.int64()),
                "label": pa.array([f"u{u}" for u in range(N)]),
            }
        ),
        path,
        row_group_size=500,
    )


def materialize_cli(
    reg_path: Path, data_dir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "materialize", "--via-kafka", "--config", str(reg_path), "--data-dir", str(data_dir),
        "--progress", "never", *extra,
        timeout=120,
    )  # fmt: skip


def test_via_kafka_backfill_reaches_every_shard(
    broker: Broker,
    tmp_path: Path,
) -> None:
    parquet = tmp_path / "users.parquet"
    write_parquet(parquet)
    reg_path = tmp_path / "features.yaml"
    reg_path.write_text(registry_text(broker.bootstrap, parquet))
    registry = Registry.from_yaml(reg_path)
    view = registry.view("users")
    broker.create_topic("users", PARTITIONS)

    # the CLI publishes without opening (or creating) the store
    unused = tmp_path / "never-opened"
    done = materialize_cli(reg_path, unused)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2,000 published" in done.stdout or "2000 published" in done.stdout, done.stdout
    assert "no watermark" in done.stdout
    assert not unused.exists()

    # every record is keyed like produce_rows and sits on its murmur2 partition
    records = broker.read_all("users", N)
    assert len(records) == N
    for m in records:
        assert m.partition() == partition_for_key(m.key(), PARTITIONS)

    # shard 0 in-process, shard 1 through `ingest`; each holds exactly its keys, right values
    with Store(tmp_path / "shard0", registry) as s0:
        load_until_caught_up(s0, shard=Shard(0, 2))
        held0 = present(s0, list(range(N)))
        labels0 = s0.get({"user_id": list(held0)}, ["users:label"]).column("users:label")
        assert list(labels0) == [f"u{u}" for u in held0]
        assert s0.get_meta(watermark_key("users")) is None
    done = ingest_until_idle(
        reg_path, tmp_path / "shard1", "--shard-index", "1", "--shard-count", "2"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with Store(tmp_path / "shard1", registry) as s1:
        held1 = present(s1, list(range(N)))

    owner = {u: partition_for_key(encode_key(view, [u]), PARTITIONS) % 2 for u in range(N)}
    assert held0 == {u: u * 7 for u in range(N) if owner[u] == 0}
    assert held1 == {u: u * 7 for u in range(N) if owner[u] == 1}
    assert 0.4 < len(held0) / N < 0.6, len(held0)


def test_via_kafka_needs_a_stream_source_and_valid_input(
    broker: Broker,
    tmp_path: Path,
) -> None:
    parquet = tmp_path / "users.parquet"
    write_parquet(parquet)
    no_stream = Registry.from_yaml_text(registry_text("127.0.0.1:1", parquet, stream=False))
    with pytest.raises(InvalidArgumentError, match="'users' have none"):
        materialize(no_stream, via_kafka=True, progress=False)
    # a Registry alone is refused without via_kafka
    with pytest.raises(InvalidArgumentError, match="needs a Store"):
        materialize(no_stream, progress=False)

    # bad input fails before anything is published
    bad = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, None], pa.int64()),
                "event_timestamp": pa.array([1, 2], pa.timestamp("us", tz="UTC")),
                "seq": pa.array([1, 2], pa.int64()),
                "label": pa.array(["a", "b"]),
            }
        ),
        bad,
    )
    reg_path = tmp_path / "bad.yaml"
    reg_path.write_text(registry_text(broker.bootstrap, bad))
    broker.create_topic("users", PARTITIONS)
    done = materialize_cli(reg_path, tmp_path / "db")
    assert done.returncode == 1, done.stdout
    assert "user_id" in done.stderr, done.stderr
    assert "nothing was written" in done.stderr, done.stderr
    assert broker.read_all("users", 1, timeout=2) == []


def test_admin_materialize_via_kafka_reaches_the_node_through_its_loader(
    broker: Broker,
    tmp_path: Path,
) -> None:
    from tests.harness import start_server, stop_server

    parquet = tmp_path / "users.parquet"
    write_parquet(parquet)
    reg_path = tmp_path / "features.yaml"
    reg_path.write_text(registry_text(broker.bootstrap, parquet))
    broker.create_topic("users", PARTITIONS)
    server = start_server(reg_path, tmp_path / "db", tmp_path / "log")
    try:
        status, got = server.post("/admin/materialize", {"via_kafka": True})
        assert status == 200, got
        assert "published" in got["summary"], got
        status, got = server.post("/admin/materialize", {"via_kafka": True, "incremental": True})
        assert status == 400, got
        users = list(range(0, N, 13))
        deadline = time.monotonic() + 30
        seqs: Any = None
        while time.monotonic() < deadline:
            status, got = server.post(
                "/get-online-features", {"features": ["users:seq"], "entities": {"user_id": users}}
            )
            seqs = got["results"][1]["values"] if status == 200 else got
            if seqs == [u * 7 for u in users]:
                break
            time.sleep(0.1)
        assert seqs == [u * 7 for u in users]
    finally:
        assert stop_server(server) == 0
    with Store(tmp_path / "db", Registry.from_yaml(reg_path)) as s:
        # the node applied the rows from the topic; the run itself recorded no watermark
        assert s.get_meta(watermark_key("users")) is None


# --------------------------------------------------------------------------------------------
# materialize-incremental --via-kafka: the published watermark lives in a compacted topic


def users_table(users: range, day: int, seq: int) -> pa.Table:
    """Rows of ``users`` on 2024-01-``day`` (one second apart), ``seq`` = u * 7 + seq."""
    t0 = dt.datetime(2024, 1, day, tzinfo=dt.UTC)
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array(
                [t0 + dt.timedelta(seconds=i) for i in range(len(users))],
                pa.timestamp("us", tz="UTC"),
            ),
            "seq": pa.array([u * 7 + seq for u in users], pa.int64()),
            "label": pa.array([f"u{u}/{seq}" for u in users]),
        }
    )


def incremental_cli(reg_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "materialize-incremental", "--via-kafka", "--config", str(reg_path),
        "--progress", "never", *extra,
        timeout=120,
    )  # fmt: skip


def topic_exists(b: Broker, topic: str) -> bool:
    """Without a metadata request, which makes tansu auto-create the topic."""
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    f = admin.describe_topics(TopicCollection([topic]))
    try:
        f[topic].result(10)
    except Exception as e:
        if "UNKNOWN_TOPIC" not in str(e):
            raise
        return False
    return True


def state_records(b: Broker) -> list[tuple[bytes, dict[str, Any] | None]]:
    got = b.read_all(STATE_TOPIC, 10**6, timeout=3)
    got.sort(key=lambda m: m.offset())
    return [(m.key(), None if m.value() is None else json.loads(m.value())) for m in got]


def published(b: Broker, expected: int) -> dict[tuple[bytes, int], Any]:
    """(key, offset) -> record of every record of the users topic."""
    got = b.read_all("users", expected, timeout=10)
    assert len(got) == expected, len(got)
    return {(m.key(), m.offset()): m for m in got}


def test_incremental_via_kafka_publishes_only_what_is_new(
    broker: Broker,
    tmp_path: Path,
) -> None:
    source = tmp_path / "users"
    source.mkdir()
    pq.write_table(users_table(range(1000), 1, 0), source / "part-0.parquet", row_group_size=300)
    reg_path = tmp_path / "features.yaml"
    reg_path.write_text(registry_text(broker.bootstrap, source))
    registry = Registry.from_yaml(reg_path)
    view = registry.view("users")
    broker.create_topic("users", PARTITIONS)

    # a dry run reads the (missing) state, creates nothing, publishes nothing
    done = incremental_cli(reg_path, "--end", "2024-01-02", "--dry-run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dry run" in done.stdout, done.stdout
    assert not topic_exists(broker, STATE_TOPIC)

    # run 1: everything before 2024-01-02; the store is never opened
    unused = tmp_path / "never-opened"
    done = incremental_cli(
        reg_path, "--end", "2024-01-02", "--data-dir", str(unused), "--progress", "always"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1,000 published" in done.stdout, done.stdout
    assert "from the beginning" in done.stdout, done.stdout
    assert "2024-01-02T00:00:00.000000Z" in done.stdout, done.stdout
    assert f"progress recorded in Kafka topic '{STATE_TOPIC}'" in done.stdout, done.stdout
    # progress lines as in other runs (log lines when not on a terminal)
    assert "publish users: 1,000 rows in window, 1,000 published" in done.stderr, done.stderr
    assert "record users: watermark 2024-01-02T00:00:00.000000Z" in done.stderr, done.stderr
    assert not unused.exists()
    first = published(broker, 1000)
    assert {k for k, _ in first} == {encode_key(view, [u]) for u in range(1000)}
    states = state_records(broker)
    assert len(states) == 1
    key, state = states[0]
    assert key == b"users/users"
    assert state is not None
    assert state["watermark"] == "2024-01-02T00:00:00.000000Z"
    assert (state["published"], state["delta_version"]) == (1000, None)

    # the source grows: 1,000 new users and new values of users 0..99 on Jan 2, and one late
    # row timed before the watermark (event-time watermark: not published, as documented)
    pq.write_table(
        pa.concat_tables([users_table(range(1000, 2000), 2, 1), users_table(range(100), 2, 2)]),
        source / "part-1.parquet",
    )
    pq.write_table(users_table(range(5000, 5001), 1, 9), source / "part-2.parquet")

    # run 2 (end: now) publishes exactly the 1,100 new rows
    done = incremental_cli(reg_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1,100 published" in done.stdout, done.stdout
    assert "continuing from the watermark 2024-01-02T00:00:00.000000Z" in done.stdout
    both = published(broker, 2100)
    new = [m for (k, off), m in both.items() if (k, off) not in first]
    want = {encode_key(view, [u]): u * 7 + 1 for u in range(1000, 2000)}
    want.update({encode_key(view, [u]): u * 7 + 2 for u in range(100)})
    assert {m.key(): json.loads(m.value())["seq"] for m in new} == want
    assert len(new) == len(want)
    for m in new:  # on the partition murmur2 gives the key, like every published record
        assert m.partition() == partition_for_key(m.key(), PARTITIONS)
    states = state_records(broker)
    assert len(states) == 2
    latest = states[-1][1]
    assert latest is not None
    assert latest["published"] == 1100
    mark = dt.datetime.fromisoformat(latest["watermark"])
    assert dt.datetime.now(dt.UTC) - mark < dt.timedelta(minutes=2)

    # a sharded pair: shard 0 in-process, shard 1 through `ingest`; newest values everywhere
    with Store(tmp_path / "shard0", registry) as s0:
        load_until_caught_up(s0, shard=Shard(0, 2))
        held0 = present(s0, [*range(2000), 5000])
        assert s0.get_meta(watermark_key("users")) is None
    done = ingest_until_idle(
        reg_path, tmp_path / "shard1", "--shard-index", "1", "--shard-count", "2"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with Store(tmp_path / "shard1", registry) as s1:
        held1 = present(s1, [*range(2000), 5000])
    value = {u: u * 7 + (2 if u < 100 else 1 if u >= 1000 else 0) for u in range(2000)}
    owner = {u: partition_for_key(encode_key(view, [u]), PARTITIONS) % 2 for u in range(2000)}
    assert held0 == {u: v for u, v in value.items() if owner[u] == 0}
    assert held1 == {u: v for u, v in value.items() if owner[u] == 1}

    # a tombstone for the state key clears it: the next run publishes from the beginning
    p = broker.producer()
    p.produce(STATE_TOPIC, key=b"users/users", value=None)
    assert p.flush(10) == 0
    done = incremental_cli(reg_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2,101 published" in done.stdout, done.stdout


def test_incremental_via_kafka_state_failure_republishes_harmlessly(
    broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that dies after publishing but before recording its watermark: the state is
    unchanged, the next run publishes the same rows again, and the nodes end the same."""
    from serving.errors import StorageError
    from serving.loaders.publish_state import StateTopic

    parquet = tmp_path / "users.parquet"
    pq.write_table(users_table(range(300), 1, 0), parquet)
    registry = Registry.from_yaml_text(registry_text(broker.bootstrap, parquet))
    broker.create_topic("users", PARTITIONS)

    def lost(self: StateTopic, producer: Any, state: Any) -> None:
        raise StorageError("simulated crash before the state was recorded")

    with monkeypatch.context() as m:
        m.setattr(StateTopic, "record", lost)
        with pytest.raises(StorageError, match="simulated crash"):
            materialize_incremental(registry, via_kafka=True, end="2024-01-02", progress=False)
    assert len(broker.read_all("users", 300)) == 300  # the rows went out
    assert state_records(broker) == []  # the watermark did not

    s = materialize_incremental(registry, via_kafka=True, end="2024-01-02", progress=False)
    assert s["users"].published == 300
    assert s["users"].watermark == dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    assert len(broker.read_all("users", 600)) == 600
    assert len(state_records(broker)) == 1
    # a third run has nothing left to publish
    s = materialize_incremental(registry, via_kafka=True, end="2024-01-02", progress=False)
    assert s["users"].published == 0
    assert any("already published up to 2024-01-02" in n for n in s["users"].notes)

    with Store(tmp_path / "db", registry) as store:
        loader = load_until_caught_up(store)
        assert loader.stats()["users"]["records"] == 600
        assert present(store, list(range(300))) == {u: u * 7 for u in range(300)}


def test_incremental_via_kafka_delta_versions(
    broker: Broker,
    tmp_path: Path,
) -> None:
    deltalake = pytest.importorskip("deltalake")
    table = tmp_path / "users_delta"
    deltalake.write_deltalake(table, users_table(range(500), 1, 0))  # v0
    text = registry_text(broker.bootstrap, table).replace("{type: parquet,", "{type: delta,")
    registry = Registry.from_yaml_text(text)
    broker.create_topic("users", PARTITIONS)
    s = materialize_incremental(registry, via_kafka=True, progress=False)
    assert (s["users"].published, s["users"].delta_version) == (500, 0)
    deltalake.write_deltalake(table, users_table(range(500, 800), 3, 1), mode="append")  # v1
    s = materialize_incremental(registry, via_kafka=True, progress=False)
    assert (s["users"].published, s["users"].delta_version) == (300, 1)
    got = broker.read_all("users", 800)
    assert len(got) == 800
    view = registry.view("users")
    assert {m.key() for m in got} == {encode_key(view, [u]) for u in range(800)}
    states = state_records(broker)
    assert [st["delta_version"] for _k, st in states if st is not None] == [0, 1]


def test_incremental_via_kafka_errors(
    broker: Broker,
    tmp_path: Path,
) -> None:
    parquet = tmp_path / "users.parquet"
    write_parquet(parquet)
    no_stream = Registry.from_yaml_text(registry_text("127.0.0.1:1", parquet, stream=False))
    with pytest.raises(InvalidArgumentError, match="'users' have none"):
        materialize_incremental(no_stream, via_kafka=True, progress=False)
    with pytest.raises(InvalidArgumentError, match="needs a Store"):
        materialize_incremental(no_stream, progress=False)

    reg_path = tmp_path / "features.yaml"
    reg_path.write_text(registry_text(broker.bootstrap, parquet))
    # the stream topic does not exist: nothing is published, no state topic is created
    done = incremental_cli(reg_path)
    assert done.returncode == 1, done.stdout
    assert "stream topic 'users' does not exist" in done.stderr, done.stderr
    assert not topic_exists(broker, STATE_TOPIC)

    # brokers that do not answer: a clear error within the deadline
    t0 = time.monotonic()
    done = incremental_cli(
        reg_path, "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--kafka-timeout", "2"
    )
    assert done.returncode == 2, done.stdout
    assert "cannot reach the Kafka brokers" in done.stderr, done.stderr
    assert "within 2 s" in done.stderr, done.stderr
    assert time.monotonic() - t0 < 30
    assert done.stderr.count("\n") <= 2, done.stderr  # no librdkafka connection chatter

    # the state topic can be named; a state record of another format is ignored
    broker.create_topic("users", PARTITIONS)
    p = broker.producer()
    p.produce("team.state", key=b"users/users", value=b"not json")
    assert p.flush(10) == 0
    done = incremental_cli(reg_path, "--state-topic", "team.state", "--end", "2024-01-02")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2,000 published" in done.stdout, done.stdout
    assert "recorded in topic 'team.state'" in done.stdout, done.stdout
    assert not topic_exists(broker, STATE_TOPIC)


def test_incremental_via_kafka_iceberg_snapshots_and_deletes(
    broker: Broker,
    tmp_path: Path,
) -> None:
    pytest.importorskip("pyiceberg")
    from tests.harness.tables import IcebergLake

    lake = IcebergLake(tmp_path / "lake")
    table = lake.create(users_table(range(500), 1, 0), "fs.users")
    src = lake.source("fs.users")
    text = registry_text(broker.bootstrap, tmp_path).replace(
        f'{{type: parquet, path: "{tmp_path}"}}',
        "{type: iceberg, table: fs.users, catalog: {type: sql, "
        f'uri: "{src["catalog"]["uri"]}", warehouse: "{src["catalog"]["warehouse"]}"}}}}',
    )
    registry = Registry.from_yaml_text(text)
    broker.create_topic("users", PARTITIONS)
    s = materialize_incremental(registry, via_kafka=True, progress=False)
    first = lake.snapshot("fs.users")
    assert (s["users"].published, s["users"].table_version) == (500, first)
    table.append(users_table(range(500, 800), 3, 1))
    lake.table("fs.users").delete("user_id < 50")
    last = lake.snapshot("fs.users")
    s = materialize_incremental(registry, via_kafka=True, progress=False)
    # the appended file, the rewritten file's 450 surviving rows, then 50 tombstones
    assert (s["users"].published, s["users"].deleted, s["users"].table_version) == (750, 50, last)
    states = [st for _k, st in state_records(broker) if st is not None]
    assert [(st["source_type"], st["table_version"]) for st in states] == [
        ("iceberg", first),
        ("iceberg", last),
    ]
    # a store consuming the topic ends with the table's rows, the deleted users gone
    with Store(tmp_path / "node", registry) as node:
        load_until_caught_up(node)
        assert sorted(present(node, list(range(800)))) == list(range(50, 800))
    # nothing new: nothing published
    s = materialize_incremental(registry, via_kafka=True, progress=False)
    assert (s["users"].published, s["users"].deleted) == (0, 0)
