"""Feast writes on a sharded cluster (issue 17) on a real broker: shard 0 with two replicas,
shard 1 with one, and a router in front of them.

- an online push of a stream-backed view, to a node or through the router, is published to
  the view's topic and every replica applies its shard's keys (no node serves a foreign one);
- a batch-only view is not sharded (every node answers every key): a write through the router
  reaches every replica, and says which ones;
- a direct write of a foreign key to a shard (``/v1/push``) is refused, naming key and owner;
- a replica down during a router write: the answer says which replicas wrote and which failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest

from tests.harness import Broker, Server, ShardedCluster, free_port, wait_until

pytestmark = pytest.mark.integration

N = 40  # keys 0..N-1 of both shards (ShardedCluster's owner map)


def registry(bootstrap: str) -> str:
    return f"""
project: pushcluster
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: users
    entities: [user]
    push_source: users_push
    features: [{{name: seq, dtype: int64}}]
    stream_source: {{type: kafka, topic: users, bootstrap_servers: "{bootstrap}", format: json,
                    options: {{loader.dlq_topic: ""}}}}
  - name: profile
    entities: [user]
    push_source: profile_push
    features: [{{name: score, dtype: float64}}]
    batch_source: {{type: parquet, path: profile_dir}}
"""


@pytest.fixture(scope="module")
def env(
    module_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("push_cluster")
    with ShardedCluster(module_broker, tmp, registry(module_broker.bootstrap), n=N) as cluster:
        ports = {name: (free_port(), free_port()) for name in ("a0", "b0", "a1")}
        entry = "{{grpc: '127.0.0.1:{1}', http: '127.0.0.1:{0}'}}".format
        cmap = tmp / "cluster.yaml"
        cmap.write_text(
            f"topic_partitions: {cluster.partitions}\nshards:\n"
            f"  0: [{entry(*ports['a0'])}, {entry(*ports['b0'])}]\n"
            f"  1: [{entry(*ports['a1'])}]\n"
        )
        nodes = {
            name: cluster.start(
                name,
                "--no-auth",
                *cluster.shard_flags(int(name[1])),
                http_port=ports[name][0],
                grpc_port=ports[name][1],
            )
            for name in ports
        }
        router = cluster.servers.cli(
            ["route", "--config", str(cluster.config), "--cluster-map", str(cmap), "--no-auth"],
            "router",
        )
        yield {"cluster": cluster, "nodes": nodes, "router": router, "tmp": tmp}


def read(server: Server, ref: str, users: list[int]) -> tuple[int, Any]:
    return server.post("/get-online-features", {"features": [ref], "entities": {"user_id": users}})


def values(server: Server, ref: str, users: list[int]) -> list[Any]:
    status, body = read(server, ref, users)
    assert status == 200, body
    got: list[Any] = body["results"][1]["values"]
    return got


def shard_of(name: str) -> int:
    return int(name[1])


def wait_for_keys(env: dict[str, Any], users: list[int], seq: dict[int, int]) -> None:
    """Every node serves ``users:seq`` of its shard's keys among ``users`` as ``seq`` says,
    and refuses every foreign one (409 wrong_shard)."""
    cluster: ShardedCluster = env["cluster"]
    for name, node in env["nodes"].items():
        own = [u for u in users if cluster.owner[u] == shard_of(name)]
        foreign = [u for u in users if cluster.owner[u] != shard_of(name)]
        assert own
        assert foreign
        wait_until(
            lambda node=node, own=own: values(node, "users:seq", own) == [seq[u] for u in own],
            30, f"node {name} applying its shard's pushed keys",
        )  # fmt: skip
        for u in foreign:
            status, body = read(node, "users:seq", [u])
            assert status == 409, (name, u, body)
            assert body["error"]["code"] == "wrong_shard"


def test_push_of_a_stream_backed_view_to_a_node_is_published(env: dict[str, Any]) -> None:
    """A node takes an online push of any key of a stream-backed view: it publishes the rows,
    answers once the broker acknowledged them, and each shard's replicas apply their keys."""
    node: Server = env["nodes"]["a0"]
    users = list(range(20))
    df = {"user_id": users, "event_timestamp": ["2026-01-01T00:00:00"] * 20, "seq": users}
    status, body = node.post("/push", {"push_source_name": "users_push", "df": df})
    assert status == 200, body
    assert body["views"] == [
        {"feature_view": "users", "rows": 20, "published": 20, "topic": "users"}
    ]
    wait_for_keys(env, users, {u: u for u in users})
    # write-to-online-store (Feast's remote store) takes the same path; newer rows win
    df["event_timestamp"] = ["2026-01-02T00:00:00"] * 20
    df["seq"] = [u + 1000 for u in users]
    status, body = env["nodes"]["a1"].post(
        "/write-to-online-store", {"feature_view_name": "users", "df": df}
    )
    assert status == 200, body
    assert body == {"feature_view": "users", "rows": 20, "published": 20, "topic": "users"}
    wait_for_keys(env, users, {u: u + 1000 for u in users})


def test_a_shard_refuses_a_direct_write_of_a_foreign_key(env: dict[str, Any]) -> None:
    """``/v1/push`` writes into the node's own store: a key another shard owns is refused
    (409 naming the key and its owner) and nothing of the batch is stored."""
    cluster: ShardedCluster = env["cluster"]
    node: Server = env["nodes"]["a1"]
    own = [u for u in range(20, N) if cluster.owner[u] == 1][:2]
    foreign = next(u for u in range(20, N) if cluster.owner[u] == 0)
    rows = {"user_id": [*own, foreign], "event_timestamp": [1_767_225_600_000_000] * 3,
            "seq": [7, 7, 7]}  # fmt: skip
    status, body = node.post("/v1/push", {"feature_view": "users", "rows": rows})
    assert status == 409, body
    msg = body["error"]["message"]
    assert body["error"]["code"] == "wrong_shard"
    assert f"row 2: entity user_id={foreign} of feature view 'users' belongs to shard 0 of 2" in msg
    assert "this node is shard 1 of 2" in msg
    assert "nothing was written" in msg
    assert values(node, "users:seq", own) == [None, None]
    status, body = node.post(
        "/v1/push", {"feature_view": "users", "rows": {k: v[:2] for k, v in rows.items()}}
    )
    assert status == 200, body
    assert body["written"] == 2
    assert values(node, "users:seq", own) == [7, 7]


def test_writes_through_the_router(env: dict[str, Any]) -> None:
    """Through the router: the stream-backed view is published once (each shard serves its
    keys, none a foreign one); the batch-only view reaches every replica, online and
    offline halves both; /v1/push likewise."""
    router: Server = env["router"]
    users = list(range(N))
    t = ["2026-02-01T00:00:00"] * N
    status, body = router.post(
        "/push",
        {"push_source_name": "users_push", "df": {"user_id": users, "event_timestamp": t,
                                                   "seq": [u * 10 for u in users]}},
    )  # fmt: skip
    assert status == 200, body
    assert body["views"] == [{"feature_view": "users", "rows": N, "published": N, "topic": "users"}]
    wait_for_keys(env, users, {u: u * 10 for u in users})
    assert values(router, "users:seq", users) == [u * 10 for u in users]

    df = {"user_id": users, "event_timestamp": t, "score": [u + 0.5 for u in users]}
    status, body = router.post(
        "/push", {"push_source_name": "profile_push", "df": df, "to": "online_and_offline"}
    )
    assert status == 200, body
    offline, online = body["views"]
    assert offline["feature_view"] == "profile"
    assert Path(offline["offline"]).parent == env["tmp"] / "profile_dir"
    got = pads.dataset(env["tmp"] / "profile_dir", format="parquet").to_table()
    assert sorted(got.column("user_id").to_pylist()) == users  # appended once, by one node
    assert online["rows"] == N
    assert sorted((r["shard"], r["written"]) for r in online["replicas"]) == [
        (0, N),
        (0, N),
        (1, N),
    ]
    for name, node in env["nodes"].items():  # not sharded: every node answers every key
        assert values(node, "profile:score", users) == [u + 0.5 for u in users], name

    # /v1/push: epoch microseconds; published for the stream-backed view
    rows = {"user_id": [3, 4], "event_timestamp": [1_800_000_000_000_000] * 2, "seq": [-3, -4]}
    status, body = router.post("/v1/push", {"feature_view": "users", "rows": rows})
    assert status == 200, body
    assert body == {"rows": 2, "published": 2, "topic": "users"}
    wait_until(lambda: values(router, "users:seq", [3, 4]) == [-3, -4], 30, "v1 push applied")
    rows = {"user_id": [3, 4], "event_timestamp": [1_800_000_000_000_000] * 2, "score": [1.0, 2.0]}
    status, body = router.post("/v1/push", {"feature_view": "profile", "rows": rows})
    assert status == 200, body
    assert len(body["replicas"]) == 3
    for node in env["nodes"].values():
        assert values(node, "profile:score", [3, 4]) == [1.0, 2.0]


def test_bad_writes_through_the_router_send_nothing(env: dict[str, Any]) -> None:
    router: Server = env["router"]
    for path, body, status, words in [
        ("/push", {"push_source_name": "profile_push",
                   "df": {"user_id": [900], "event_timestamp": ["x"], "score": [1.0]}},
         400, "df['event_timestamp'] row 0"),
        ("/push", {"push_source_name": "nope", "df": {}}, 404, "nope"),
        ("/v1/push", {"feature_view": "users",
                      "rows": {"user_id": [900], "event_timestamp": [1], "seq": [1.5]}},
         400, "rows['seq'] row 0: expected an integer"),
    ]:  # fmt: skip
        got_status, got = router.post(path, body)
        assert got_status == status, got
        assert words in got["error"]["message"], got
    for node in env["nodes"].values():
        assert values(node, "profile:score", [900]) == [None]


def test_a_replica_down_during_a_router_write_is_reported(env: dict[str, Any]) -> None:
    """Last in this module: it stops a node. The write reaches the others; the answer (503)
    says which replicas wrote it and which one failed."""
    cluster: ShardedCluster = env["cluster"]
    cluster.stop(env["nodes"].pop("b0"))
    df = {"user_id": [1, 2], "event_timestamp": ["2026-03-01T00:00:00"] * 2, "score": [9.0, 9.0]}
    status, body = env["router"].post(
        "/write-to-online-store", {"feature_view_name": "profile", "df": df}
    )
    assert status == 503, body
    msg = body["error"]["message"]
    for words in ("written by shard 0 replica 127.0.0.1:", "shard 1 replica",
                  "failed on 1 of 3 replicas", "is unavailable"):  # fmt: skip
        assert words in msg, msg
    for node in env["nodes"].values():
        assert values(node, "profile:score", [1, 2]) == [9.0, 9.0]
