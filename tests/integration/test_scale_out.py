"""Scale-out on a real broker (tansu): shard ownership (node k of N consumes the partitions
p % N == k) and snapshots (a RocksDB checkpoint carrying the Kafka offsets; a replica restored
from it consumes only what came after). See docs/scale-out.md."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from serving import Registry, Store
from serving.errors import InvalidArgumentError
from serving.loaders.kafka import KafkaLoader, encode_key, offset_key, produce_rows
from serving.sharding import Shard, partition_for_key
from serving.snapshot import restore
from tests.harness import (
    Broker,
    ingest_until_idle,
    present,
    run_cli,
    scale_out_registry,
    stopped_stats,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
N = 2000


def rows(users: range, seq: int, ts: int) -> list[dict[str, int]]:
    return [{"user_id": u, "event_timestamp": ts, "seq": seq} for u in users]


def test_two_shards_each_hold_exactly_their_partitions(
    broker: Broker,
    tmp_path: Path,
) -> None:
    reg_path = tmp_path / "features.yaml"
    reg_path.write_text(scale_out_registry(broker.bootstrap))
    registry = Registry.from_yaml(reg_path)
    view = registry.view("users")
    broker.create_topic("users", PARTITIONS)
    produce_rows(broker.producer(), view, rows(range(N), 1, 1_000))

    # shard 0 in-process (KafkaLoader(shard=...)), shard 1 through the CLI flags
    with Store(tmp_path / "shard0", registry) as s0:
        loader = KafkaLoader(s0, shard=Shard(0, 2))
        loader.start()
        try:
            assert loader.wait_caught_up(20), loader.stats()
            st = loader.stats()["users"]
        finally:
            assert loader.stop(10)
        assert sorted(st["offsets"]) == [0, 2]
        held0 = present(s0, list(range(N)))
    done = ingest_until_idle(
        reg_path, tmp_path / "shard1", "--shard-index", "1", "--shard-count", "2"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with Store(tmp_path / "shard1", registry) as s1:
        held1 = present(s1, list(range(N)))
        assert s1.get_meta(offset_key("users", "users", 0)) is None
        assert s1.get_meta(offset_key("users", "users", 1)) is not None

    owner = {u: partition_for_key(encode_key(view, [u]), PARTITIONS) % 2 for u in range(N)}
    assert set(held0) == {u for u in range(N) if owner[u] == 0}
    assert set(held1) == {u for u in range(N) if owner[u] == 1}
    assert set(held0) | set(held1) == set(range(N))
    assert 0.4 < len(held0) / N < 0.6, len(held0)


def test_shard_flags_are_validated(tmp_path: Path) -> None:
    reg_path = tmp_path / "features.yaml"
    reg_path.write_text(scale_out_registry("127.0.0.1:1"))
    for extra, msg in [
        (("--shard-index", "2", "--shard-count", "2"), "shard index must be an integer in 0..1"),
        (("--shard-index", "0"), "give both the shard index and the shard count"),
    ]:
        done = ingest_until_idle(reg_path, tmp_path / "db", *extra)
        assert done.returncode == 1, done.stderr
        assert msg in done.stderr, done.stderr
    assert not (tmp_path / "db").exists()


def test_snapshot_restore_resumes_from_its_offsets(
    broker: Broker,
    tmp_path: Path,
) -> None:
    reg_path = tmp_path / "features.yaml"
    reg_path.write_text(scale_out_registry(broker.bootstrap))
    registry = Registry.from_yaml(reg_path)
    view = registry.view("users")
    broker.create_topic("users", PARTITIONS)
    producer = broker.producer()
    produce_rows(producer, view, rows(range(1000), 1, 1_000))
    snap = tmp_path / "snaps" / "s1"

    with Store(tmp_path / "live", registry) as live:
        loader = KafkaLoader(live)
        loader.start()
        try:
            assert loader.wait_caught_up(20), loader.stats()
            # checkpoint of the open store, its loader running
            live.checkpoint(snap)
            offsets = {p: live.get_meta(offset_key("users", "users", p)) for p in range(PARTITIONS)}
            assert sum(int(o or 0) for o in offsets.values()) == 1000
            with pytest.raises(InvalidArgumentError, match="already exists"):
                live.checkpoint(snap)
            # after the snapshot: 300 new users and a newer value for users 0..199
            produce_rows(producer, view, rows(range(1000, 1300), 1, 1_000))
            produce_rows(producer, view, rows(range(200), 2, 2_000))
            # (caught_up() may still see the cached high watermarks of before these records)
            deadline = time.monotonic() + 20
            while loader.stats()["users"]["records"] < 1500 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert loader.stats()["users"]["records"] == 1500, loader.stats()
        finally:
            assert loader.stop(10)
        assert len(present(live, list(range(1300)))) == 1300

    # the snapshot holds the rows and offsets of its moment, not what came after
    restored = tmp_path / "restored"
    restore(snap, restored)
    with Store(restored, registry) as s:
        assert present(s, list(range(1300))) == dict.fromkeys(range(1000), 1)
        assert {
            p: s.get_meta(offset_key("users", "users", p)) for p in range(PARTITIONS)
        } == offsets
    # SST files were hard-linked, not copied
    ssts = list(restored.glob("*.sst"))
    assert ssts
    assert all(f.stat().st_nlink >= 2 for f in ssts)

    # a refused restore changes nothing
    with pytest.raises(InvalidArgumentError, match="not empty"):
        restore(snap, restored)
    with pytest.raises(InvalidArgumentError, match="not a snapshot"):
        restore(tmp_path / "snaps", tmp_path / "other")

    # a loader started from the snapshot consumes only the 500 records produced after it
    fresh = tmp_path / "fresh"
    done = ingest_until_idle(reg_path, fresh, "--restore-from", str(snap))
    assert done.returncode == 0, done.stderr[-3000:]
    assert stopped_stats(done.stderr)["users"]["records"] == 500
    with Store(fresh, registry) as s:
        expected = {u: (2 if u < 200 else 1) for u in range(1300)}
        assert present(s, list(range(1300))) == expected

    # refused when the data directory is not empty
    again = ingest_until_idle(reg_path, fresh, "--restore-from", str(snap))
    assert again.returncode == 1
    assert "not empty" in again.stderr

    # `snapshot create` of a store no process holds open
    done = run_cli(
        "snapshot", "create", "--config", str(reg_path), "--data-dir", str(fresh),
        str(tmp_path / "snaps" / "s2"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["snapshot"] == str(tmp_path / "snaps" / "s2")
    with Store(tmp_path / "snaps" / "s2", registry) as s:
        assert len(present(s, list(range(1300)))) == 1300
