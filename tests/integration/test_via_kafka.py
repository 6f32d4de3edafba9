"""`materialize --via-kafka`: the batch loader publishes a backfill to the views' stream-source
topic, and every shard applies its part of it through its Kafka loader (docs/batch-loader.md,
docs/scale-out.md)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from integration.kafka_fixtures import Broker, broker  # noqa: F401 - the fixture
from integration.test_scale_out import PARTITIONS, ingest, present
from serving import Registry, Store
from serving.batch_loader import materialize, watermark_key
from serving.errors import InvalidArgumentError
from serving.kafka_loader import KafkaLoader, encode_key
from serving.sharding import Shard, partition_for_key

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
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
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "materialize",
            "--via-kafka",
            "--config",
            str(reg_path),
            "--data-dir",
            str(data_dir),
            "--progress",
            "never",
            *extra,
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_via_kafka_backfill_reaches_every_shard(
    broker: Broker,  # noqa: F811
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
        loader = KafkaLoader(s0, shard=Shard(0, 2))
        loader.start()
        try:
            assert loader.wait_caught_up(20), loader.stats()
        finally:
            assert loader.stop(10)
        held0 = present(s0, list(range(N)))
        labels0 = s0.get({"user_id": list(held0)}, ["users:label"]).column("users:label")
        assert list(labels0) == [f"u{u}" for u in held0]
        assert s0.get_meta(watermark_key("users")) is None
    done = ingest(reg_path, tmp_path / "shard1", "--shard-index", "1", "--shard-count", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    with Store(tmp_path / "shard1", registry) as s1:
        held1 = present(s1, list(range(N)))

    owner = {u: partition_for_key(encode_key(view, [u]), PARTITIONS) % 2 for u in range(N)}
    assert held0 == {u: u * 7 for u in range(N) if owner[u] == 0}
    assert held1 == {u: u * 7 for u in range(N) if owner[u] == 1}
    assert 0.4 < len(held0) / N < 0.6, len(held0)


def test_via_kafka_needs_a_stream_source_and_valid_input(
    broker: Broker,  # noqa: F811
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
    broker: Broker,  # noqa: F811
    tmp_path: Path,
) -> None:
    from tests.integration.test_server import start_server, stop_server

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
