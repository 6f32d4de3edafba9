"""Scale-out through `serve` on a real broker (tansu): sharded nodes consume only their
partitions and refuse entities another shard owns. See docs/scale-out.md."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving import Registry, Store
from serving.client import FeatureClient
from serving.errors import WrongShardError
from serving.loaders.kafka import produce_rows
from tests.harness import (
    Broker,
    Server,
    ShardedCluster,
    load_until_caught_up,
    rows_applied,
    run_cli,
    scale_out_registry,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
SHARDS = 2
N = 2000


def rows(users: range, seq: int, ts: int = 1_000) -> list[dict[str, int]]:
    return [{"user_id": u, "event_timestamp": ts, "seq": u * 10 + seq} for u in users]


def ask(server: Server, users: list[int]) -> tuple[int, Any]:
    return server.post(
        "/get-online-features", {"features": ["users:seq"], "entities": {"user_id": users}}
    )


class Cluster(ShardedCluster):
    """The broker's topic with N keys, and the `serve` processes started on it."""

    def __init__(self, broker: Broker, tmp: Path) -> None:
        super().__init__(
            broker, tmp, scale_out_registry(broker.bootstrap), n=N, partitions=PARTITIONS,
            shards=SHARDS,
        )  # fmt: skip
        produce_rows(self.producer, self.view, rows(range(N), 1))


@pytest.fixture
def cluster(broker: Broker, tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(broker, tmp_path) as c:
        yield c


def values(got: Any) -> list[Any]:
    return list(got["results"][1]["values"])


def wait_for(server: Server, users: list[int], seq: int, timeout: float = 30) -> None:
    """Until ``server`` answers ``users`` with the values of generation ``seq``."""
    want = [u * 10 + seq for u in users]
    deadline = time.monotonic() + timeout
    got: Any = None
    while time.monotonic() < deadline:
        status, got = ask(server, users)
        if status == 200 and values(got) == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"{server.url} did not catch up: {str(got)[:300]}")


def test_sharded_nodes_answer_their_keys_and_refuse_others(cluster: Cluster) -> None:
    nodes = [
        cluster.start(f"shard{k}", "--no-auth", *cluster.shard_flags(k)) for k in range(SHARDS)
    ]
    for k, node in enumerate(nodes):
        mine = cluster.keys_of(k)
        assert 0.4 < len(mine) / N < 0.6
        wait_for(node, mine[-500:], 1)
        for i in range(0, len(mine), 500):
            part = mine[i : i + 500]
            status, got = ask(node, part)
            assert status == 200, got
            assert values(got) == [u * 10 + 1 for u in part]
            assert set(got["results"][1]["statuses"]) == {"PRESENT"}
        # a key of the other shard (alone, or among owned keys) is refused, never answered
        other = cluster.keys_of(1 - k)[0]
        for users in ([other], [mine[0], other, mine[1]]):
            status, got = ask(node, users)
            assert status == 409, got
            assert got["error"]["code"] == "wrong_shard"
            msg = got["error"]["message"]
            assert f"entity user_id={other} of feature view 'users'" in msg, msg
            assert f"belongs to shard {1 - k} of 2 (partition " in msg, msg
            assert f"ask shard {1 - k}" in msg, msg
        # the v1 API and gRPC (FAILED_PRECONDITION) are checked too
        status, got = node.post(
            "/v1/feature-vector", {"features": ["users:seq"], "entities": {"user_id": [other]}}
        )
        assert status == 409, got
        with (
            FeatureClient(f"127.0.0.1:{node.grpc}", timeout=5) as client,
            pytest.raises(WrongShardError, match=f"FAILED_PRECONDITION: entity user_id={other}"),
        ):
            client.get_dense({"user_id": [other]}, ["users:seq"])
    # each node consumed only its own partitions
    for k, node in enumerate(nodes):
        log = node.log.read_text()
        assert f"consumes users partitions {[p for p in range(4) if p % 2 == k]}" in log, log


def test_shard_settings_are_validated(tmp_path: Path) -> None:
    from serving.config import load_settings
    from serving.errors import InvalidArgumentError

    for flags, msg in [
        ({"shard_index": 0}, "give both"),
        ({"shard_index": 0, "shard_count": 2}, "need --topic-partitions"),
        ({"shard_index": 2, "shard_count": 2, "topic_partitions": 4}, "0..1"),
        ({"topic_partitions": 4}, "needs --shard-index"),
    ]:
        with pytest.raises(InvalidArgumentError, match=msg):
            load_settings(flags, env={}).shard()
    s = load_settings(
        env={"FS_SHARD_INDEX": "1", "FS_SHARD_COUNT": "2", "FS_TOPIC_PARTITIONS": "4"}
    )
    assert str(s.shard()) == "shard 1 of 2"
    assert load_settings(env={}).shard() is None


def test_serve_restore_from_serves_the_snapshot_and_resumes_at_its_offsets(
    cluster: Cluster,
) -> None:
    # a store holding the N records, snapshotted; then 300 newer records the snapshot lacks
    snap = cluster.tmp / "snaps" / "s1"
    with Store(cluster.tmp / "source", Registry.from_yaml(cluster.config)) as store:
        load_until_caught_up(store)
        store.checkpoint(snap)
    produce_rows(cluster.producer, cluster.view, rows(range(300), 2, ts=2_000))

    node = cluster.start("restored", "--no-auth", "--restore-from", str(snap))
    wait_for(node, list(range(300)), 2)
    for lo in range(0, N, 1000):
        status, got = ask(node, list(range(lo, lo + 1000)))
        assert status == 200, got
        assert values(got) == [u * 10 + (2 if u < 300 else 1) for u in range(lo, lo + 1000)]
    # it read only what came after the snapshot: its offsets were restored
    assert rows_applied(node.url, "users") == 300
    assert "restored snapshot" in node.log.read_text()

    # refused when the data directory is not empty (a second start on the same directory)
    cluster.stop(node)
    done = run_cli(
        "serve", "--config", str(cluster.config), "--data-dir", str(cluster.tmp / "restored"),
        "--no-auth", "--restore-from", str(snap),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "not empty" in done.stderr


def test_client_routes_by_shard_and_fails_over_to_another_replica(cluster: Cluster) -> None:
    import signal

    from serving.client import ShardedFeatureClient

    shard0a = cluster.start("shard0a", "--no-auth", *cluster.shard_flags(0))
    shard1 = cluster.start("shard1", "--no-auth", *cluster.shard_flags(1))
    shard0b = cluster.start("shard0b", "--no-auth", *cluster.shard_flags(0))
    for k, node in ((0, shard0a), (1, shard1), (0, shard0b)):
        wait_for(node, cluster.keys_of(k)[-300:], 1)
    endpoints = {0: [f"127.0.0.1:{shard0a.grpc}", f"127.0.0.1:{shard0b.grpc}"]}
    endpoints[1] = [f"127.0.0.1:{shard1.grpc}"]
    users = list(range(N))
    # no hedging: this test is about fail-over (tests/integration/test_cluster_client.py hedges)
    with ShardedFeatureClient(
        endpoints,
        topic_partitions=PARTITIONS,
        join_keys=[("user_id", "int64")],
        timeout=5.0,
        hedge_after=None,
    ) as client:
        assert client.shards_of({"user_id": users}) == [cluster.owner[u] for u in users]
        for batch in range(8):
            if batch == 4:  # kill the shard-0 replica the client tries first, mid-test
                shard0a.proc.send_signal(signal.SIGKILL)
                shard0a.proc.wait(10)
            # interleaved users of both shards, answered in request order
            part = users[batch::8][:250]
            m = client.get_dense({"user_id": part}, ["users:seq"])
            assert m.feature_names == ["users:seq"]
            assert m.values[:, 0].tolist() == [float(u * 10 + 1) for u in part], batch
            assert set(m.statuses[:, 0].tolist()) == {1}
            if batch == 4:  # it did try the dead replica first, and marked it down
                assert client.up_replicas(0) == [f"127.0.0.1:{shard0b.grpc}"]
        # every key, after the fail-over, in batches of the node limit
        for lo in range(0, N, 1000):
            m = client.get_dense({"user_id": users[lo : lo + 1000]}, ["users:seq"])
            assert m.values[:, 0].tolist() == [float(u * 10 + 1) for u in range(lo, lo + 1000)]
