"""The scale-out cluster of issue 12, end to end on loopback (docs/scale-out.md).

One tansu broker with a 4-partition topic, three `serve` processes (shard 0 twice, shard 1
once) and a `route` process, 10,000 keys. Every key is answered correctly through the router
and through the routing client; a replica killed under concurrent load leaves every answer
correct; a node restored from a snapshot catches up and serves the newest values; a batch
backfill published with `materialize --via-kafka` reaches every shard; a node refuses a key it
does not own, naming the owner.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving import Registry, Store
from serving.client import FeatureClient, ShardedFeatureClient
from serving.cluster import ClusterMap
from serving.errors import FeatureServingError, PermissionDeniedError
from serving.frontend.auth import KeyFile
from serving.loaders.kafka import produce_rows
from tests.harness import Broker, Server, Servers, ShardedCluster, free_port, http, run_cli
from tests.harness.metrics import rows_applied
from tests.harness.tls import client_context, make_certs

pytestmark = pytest.mark.integration

PARTITIONS = 4
SHARDS = 2
N = 10_000
#: event time of generation g of the values (seconds); later generations win the merge
T0 = 1_700_000_000


def registry_text(bootstrap: str, parquet: Path) -> str:
    return f"""
project: cluster
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: users
    entities: [user]
    features: [{{name: seq, dtype: int64}}, {{name: score, dtype: float32}},
               {{name: tag, dtype: string}}]
    batch_source: {{type: parquet, path: "{parquet}"}}
    stream_source: {{type: kafka, topic: users, bootstrap_servers: "{bootstrap}", format: json,
                    options: {{loader.dlq_topic: ""}}}}
feature_services:
  - name: ranking
    features: [users:seq, users:score]
"""


def seq(u: int, gen: int) -> int:
    return u * 10 + gen


def score(u: int, gen: int) -> float:
    return (u % 1000) / 8 + gen  # exact in float32


def rows(users: range | list[int], gen: int) -> list[dict[str, Any]]:
    return [
        {
            "user_id": u,
            "event_timestamp": (T0 + gen) * 1_000_000,
            "seq": seq(u, gen),
            "score": score(u, gen),
            "tag": f"g{gen}-{u}",
        }
        for u in users
    ]


class Cluster(ShardedCluster):
    """The sharded cluster with API keys on: ``reader`` (every view), ``ranking`` (the service
    only), ``admin``; the batch source ``users.parquet`` for backfills."""

    def __init__(self, broker: Broker, tmp: Path) -> None:
        self.parquet = tmp / "users.parquet"
        super().__init__(
            broker,
            tmp,
            registry_text(broker.bootstrap, self.parquet),
            n=N,
            partitions=PARTITIONS,
            shards=SHARDS,
        )
        keys = KeyFile(tmp / "keys.json")
        self.keys_file = tmp / "keys.json"
        self.reader, _ = keys.create("reader", read=["*"])
        self.ranking, _ = keys.create("ranking-only", read=["ranking"])
        self.admin, _ = keys.create("ops", read=["*"], admin=True)

    def node(
        self,
        name: str,
        shard: int,
        *extra: str,
        grpc_port: int | None = None,
        http_port: int | None = None,
    ) -> Server:
        return self.start(
            name, "--keys-file", str(self.keys_file), *self.shard_flags(shard), *extra,
            grpc_port=grpc_port, http_port=http_port,
        )  # fmt: skip

    def router(self, cluster_map: Path) -> Server:
        return self.servers.cli(
            ["route", "--config", str(self.config), "--cluster-map", str(cluster_map),
             "--keys-file", str(self.keys_file), "--route-probe-seconds", "0.2"],
            "router",
        )  # fmt: skip


@pytest.fixture
def cluster(broker: Broker, tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(broker, tmp_path) as c:
        yield c


def post(server: Server, path: str, body: Any, key: str) -> tuple[int, Any]:
    return http(server.url + path, body, key=key, timeout=30)


def ask(server: Server, users: list[int], key: str) -> tuple[int, Any]:
    return post(
        server,
        "/get-online-features",
        {"features": ["users:seq", "users:score", "users:tag"], "entities": {"user_id": users}},
        key,
    )


def check_answer(got: Any, users: list[int], gen: dict[int, int] | int) -> None:
    g = (lambda u: gen) if isinstance(gen, int) else gen.__getitem__
    assert got["metadata"]["feature_names"] == ["user_id", "seq", "score", "tag"]
    res = got["results"]
    assert res[0]["values"] == users
    assert res[1]["values"] == [seq(u, g(u)) for u in users]
    assert res[2]["values"] == [score(u, g(u)) for u in users]
    assert res[3]["values"] == [f"g{g(u)}-{u}" for u in users]
    for col in res[1:]:
        assert set(col["statuses"]) == {"PRESENT"}


def wait_until(server: Server, users: list[int], gen: int, key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    got: Any = None
    while time.monotonic() < deadline:
        status, got = ask(server, users, key)
        if status == 200 and got["results"][1]["values"] == [seq(u, gen) for u in users]:
            return
        time.sleep(0.2)
    raise AssertionError(f"{server.url} did not reach generation {gen}: {str(got)[:400]}")


def write_cluster_map(path: Path, shards: dict[int, list[tuple[int, int]]]) -> ClusterMap:
    """The map of (gRPC port, HTTP port) replicas per shard, both addresses given: the
    router sends its parts over HTTP (the default transport with HTTP addresses)."""
    cmap = ClusterMap.from_dict(
        {
            "topic_partitions": PARTITIONS,
            "shards": {
                k: [{"grpc": f"127.0.0.1:{g}", "http": f"127.0.0.1:{h}"} for g, h in ports]
                for k, ports in shards.items()
            },
        }
    )
    path.write_text(json.dumps(cmap.to_dict()))
    return cmap


class Load:
    """Threads asking random batches through the router and the client until stopped; every
    answer is checked against the generation the caller expects."""

    def __init__(self, router: Server, client: ShardedFeatureClient, key: str) -> None:
        self.router, self.client, self.key = router, client, key
        self.stop = threading.Event()
        self.done = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._http, args=(i,)) for i in range(3)]
        self.threads.append(threading.Thread(target=self._client))

    def _http(self, seed: int) -> None:
        rnd = random.Random(seed)
        while not self.stop.is_set():
            users = rnd.sample(range(N), 100)
            try:
                status, got = ask(self.router, users, self.key)
                assert status == 200, got
                check_answer(got, users, 1)
                self.done += 1
            except Exception as e:
                self.failures.append(f"router: {e!r}"[:500])

    def _client(self) -> None:
        rnd = random.Random(99)
        while not self.stop.is_set():
            users = rnd.sample(range(N), 100)
            try:
                m = self.client.get_dense({"user_id": users}, ["users:seq"])
                assert m.values[:, 0].tolist() == [float(seq(u, 1)) for u in users]
                self.done += 1
            except Exception as e:
                self.failures.append(f"client: {e!r}"[:500])

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_three_node_cluster_through_router_and_client(cluster: Cluster) -> None:
    produce_rows(cluster.producer, cluster.view, rows(range(N), 1))
    shard0a = cluster.node("shard0a", 0)
    shard0b = cluster.node("shard0b", 0)
    shard1 = cluster.node("shard1", 1)
    mine = {k: [u for u in range(N) if cluster.owner[u] == k] for k in range(SHARDS)}
    assert all(0.4 < len(mine[k]) / N < 0.6 for k in mine)
    for k, node in ((0, shard0a), (0, shard0b), (1, shard1)):
        wait_until(node, mine[k][-200:], 1, cluster.reader)

    # The map also names a third shard-0 replica that does not run yet: the router starts
    # ready (every shard has a SERVING replica) and avoids the missing one.
    spare_port, spare_http = free_port(), free_port()
    cmap_path = cluster.tmp / "cluster.json"
    cmap = write_cluster_map(
        cmap_path,
        {
            0: [
                (shard0a.grpc, shard0a.http),
                (shard0b.grpc, shard0b.http),
                (spare_port, spare_http),
            ],
            1: [(shard1.grpc, shard1.http)],
        },
    )
    router = cluster.router(cmap_path)
    assert ready_shards(ready_body(router)) == {"0": 2, "1": 1}

    # 1. every key, correct, through the router (Feast HTTP) in request order, mixed shards
    users = list(range(N))
    random.Random(1).shuffle(users)
    for lo in range(0, N, 1000):
        part = users[lo : lo + 1000]
        status, got = ask(router, part, cluster.reader)
        assert status == 200, got
        check_answer(got, part, 1)
    # ... through the router's gRPC (v1 dense) and through the routing client
    with (
        FeatureClient(f"127.0.0.1:{router.grpc}", api_key=cluster.reader, timeout=10) as via,
        ShardedFeatureClient(
            cmap.shards, topic_partitions=PARTITIONS, join_keys=[("user_id", "int64")],
            api_key=cluster.reader, timeout=10.0,
        ) as client,
    ):  # fmt: skip
        for lo in range(0, N, 1000):
            part = users[lo : lo + 1000]
            want = [float(seq(u, 1)) for u in part]
            assert via.get_dense({"user_id": part}, ["users:seq"]).values[:, 0].tolist() == want
            assert client.get_dense({"user_id": part}, ["users:seq"]).values[:, 0].tolist() == want

        # 2. the caller's key travels: a key scoped to the service reads it, not other views
        status, got = post(
            router, "/get-online-features",
            {"feature_service": "ranking", "entities": {"user_id": users[:50]}}, cluster.ranking,
        )  # fmt: skip
        assert status == 200, got
        assert got["results"][1]["values"] == [seq(u, 1) for u in users[:50]]
        status, got = ask(router, users[:5], cluster.ranking)
        assert status == 403, got
        assert got["error"]["code"] == "permission_denied", got
        status, got = ask(router, users[:5], "fs_bogus_key")
        assert status == 401, got
        with (
            FeatureClient(f"127.0.0.1:{router.grpc}", api_key=cluster.ranking, timeout=10) as c,
            pytest.raises(PermissionDeniedError),
        ):
            c.get_dense({"user_id": users[:5]}, ["users:tag"])

        # 3. a node asked for a key it does not own refuses it, naming the owner
        other = mine[1][0]
        status, got = ask(shard0a, [mine[0][0], other], cluster.reader)
        assert status == 409, got
        assert got["error"]["code"] == "wrong_shard", got
        assert (
            f"entity user_id={other} of feature view 'users' belongs to shard 1"
            in (got["error"]["message"])
        )

        # 4. a shard-0 replica killed under concurrent load: every answer stays correct
        with Load(router, client, cluster.reader) as load:
            time.sleep(1.5)
            before = load.done
            shard0a.proc.send_signal(signal.SIGKILL)
            shard0a.proc.wait(10)
            time.sleep(2.5)
        assert not load.failures, load.failures[:5]
        assert before > 10, before
        assert load.done > before + 10, (before, load.done)
        wait_for_replicas(
            router,
            "0",
            {
                f"127.0.0.1:{shard0a.grpc}": False,
                f"127.0.0.1:{shard0b.grpc}": True,
                f"127.0.0.1:{spare_port}": False,
            },
        )

    # the router's own metrics, through Prometheus' parser
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(router.url + "/metrics", timeout=10) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    parts = {s.labels["shard"]: s.value for s in families["feature_serving_router_parts"].samples}
    assert min(parts["0"], parts["1"]) > 100, parts
    counts = [
        s.value
        for s in families["feature_serving_router_part_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert sum(counts) >= parts["0"] - sum(
        s.value for s in families["feature_serving_router_part_errors"].samples
    )
    ready = {
        s.labels["endpoint"]: s.value
        for s in families["feature_serving_router_replica_ready"].samples
    }
    assert ready[f"127.0.0.1:{shard0a.grpc}"] == 0
    assert ready[f"127.0.0.1:{shard0b.grpc}"] == 1
    assert {s.labels["outcome"] for s in families["feature_serving_router_hedges"].samples} == {
        "sent",
        "over_budget",
    }

    # the parts went over the nodes' HTTP port (the map gives HTTP addresses)
    with urllib.request.urlopen(shard1.url + "/metrics", timeout=10) as r:
        node_families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    cells = [
        s.value
        for s in node_families["feature_serving_requests"].samples
        if s.labels.get("method") == "cells" and s.labels.get("api") == "http"
    ]
    assert sum(cells) > 100, cells

    # 5. a fresh replica restored from a snapshot of a serving node catches up and serves
    # the newest values: snapshot shard0b through its admin API, then newer records arrive
    snap = cluster.tmp / "snaps" / "shard0"
    done = run_cli(
        "snapshot",
        "create",
        "--server",
        shard0b.url,
        "--api-key",
        cluster.admin,
        str(snap),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    newer = mine[0][:500] + mine[1][:500]
    produce_rows(cluster.producer, cluster.view, rows(newer, 2))
    shard0c = cluster.node(
        "shard0c", 0, "--restore-from", str(snap), grpc_port=spare_port, http_port=spare_http
    )
    gen = {u: 2 if u in set(newer) else 1 for u in range(N)}
    wait_until(shard0c, mine[0][:500], 2, cluster.reader)
    cluster.stop(shard0b)  # shard 0 is now served by the restored replica alone
    wait_for_replicas(
        router,
        "0",
        {
            f"127.0.0.1:{shard0a.grpc}": False,
            f"127.0.0.1:{shard0b.grpc}": False,
            f"127.0.0.1:{spare_port}": True,
        },
    )
    wait_until(router, mine[1][:500], 2, cluster.reader)
    for lo in range(0, N, 1000):
        part = users[lo : lo + 1000]
        status, got = ask(router, part, cluster.reader)
        assert status == 200, got
        check_answer(got, part, gen)
    # it did not replay the topic: it applied only the 500 records after the snapshot
    assert "restored snapshot" in shard0c.log.read_text()
    assert rows_applied(shard0c.url, "users") == 500

    # 6. a batch backfill published with `materialize --via-kafka` reaches every shard
    t = dt.datetime.fromtimestamp(T0 + 3, dt.UTC)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(range(N), pa.int64()),
                "event_timestamp": pa.array([t] * N, pa.timestamp("us", tz="UTC")),
                "seq": pa.array([seq(u, 3) for u in range(N)], pa.int64()),
                "score": pa.array([score(u, 3) for u in range(N)], pa.float32()),
                "tag": pa.array([f"g3-{u}" for u in range(N)]),
            }
        ),
        cluster.parquet,
    )
    done = run_cli(
        "materialize", "--via-kafka", "--config", str(cluster.config),
        "--data-dir", str(cluster.tmp / "unused"), "--progress", "never",
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    wait_until(router, [mine[0][-1], mine[1][-1]], 3, cluster.reader)
    for lo in range(0, N, 1000):
        part = users[lo : lo + 1000]
        wait_until(router, part, 3, cluster.reader, timeout=30)
        status, got = ask(router, part, cluster.reader)
        check_answer(got, part, 3)


def ready_body(router: Server) -> Any:
    try:
        with urllib.request.urlopen(router.url + "/readyz", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def ready_shards(body: Any) -> dict[str, int]:
    """Shard -> number of replicas the router saw SERVING."""
    return {k: sum(1 for ok in v.values() if ok) for k, v in body["shards"].items()}


def wait_for_replicas(
    router: Server, shard: str, want: dict[str, bool], timeout: float = 15
) -> None:
    """Until the router's health checks see exactly ``want`` for the shard's replicas."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready_body(router)["shards"][shard] == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"router replicas {ready_body(router)} != {want}")


PLAIN_REGISTRY = """
project: cluster
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: users
    entities: [user]
    features: [{name: seq, dtype: DTYPE}]
"""


def test_router_refuses_what_it_cannot_answer(tmp_path: Path, servers: Servers) -> None:
    """No reachable replica: not ready and 503 shard_unavailable; a node running another
    registry: 502 bad_shard_answer, never a misread value; bad settings: clear errors."""
    ours = tmp_path / "router.yaml"
    ours.write_text(PLAIN_REGISTRY.replace("DTYPE", "int64"))
    theirs = tmp_path / "node.yaml"
    theirs.write_text(PLAIN_REGISTRY.replace("DTYPE", "float32"))
    with Store(tmp_path / "db", Registry.from_yaml(theirs)) as store:
        store.write(
            "users",
            pa.table(
                {
                    "user_id": pa.array([1, 2], pa.int64()),
                    "event_timestamp": pa.array([T0 * 10**6] * 2, pa.timestamp("us", tz="UTC")),
                    "seq": pa.array([1.5, 2.5], pa.float32()),
                }
            ),
        )
    node = servers.serve(theirs, "db")
    dead = free_port()
    cmap = tmp_path / "cluster.yaml"
    cmap.write_text(f"topic_partitions: 1\nshards:\n  0: ['127.0.0.1:{node.grpc}']\n")
    router = servers.cli(
        ["route", "--config", str(ours), "--cluster-map", str(cmap), "--no-auth"], "router"
    )
    status, got = router.post(
        "/get-online-features", {"features": ["users:seq"], "entities": {"user_id": [1, 2]}}
    )
    assert status == 502, got
    assert got["error"]["code"] == "bad_shard_answer"
    assert "different registries" in got["error"]["message"]
    # the router's own checks come first, with a node's wording
    status, got = router.post(
        "/get-online-features", {"features": ["users:nope"], "entities": {"user_id": [1]}}
    )
    assert status == 404, got
    assert "has no feature 'nope'" in got["error"]["message"]
    with urllib.request.urlopen(router.url + "/v1/cluster", timeout=5) as r:
        assert json.loads(r.read())["shards"] == {"0": [f"127.0.0.1:{node.grpc}"]}

    # a map whose only replica is not running: the router starts, is not ready, refuses
    cmap.write_text(f"topic_partitions: 1\nshards:\n  0: ['127.0.0.1:{dead}']\n")
    lone = servers.cli(
        ["route", "--config", str(ours), "--cluster-map", str(cmap), "--no-auth",
         "--route-timeout-ms", "300"],
        "router2", ready=False,
    )  # fmt: skip
    body = ready_body(lone)
    assert body["status"] == "not ready", body
    status, got = lone.post(
        "/get-online-features", {"features": ["users:seq"], "entities": {"user_id": [1]}}
    )
    assert status == 503, got
    assert got["error"]["code"] == "shard_unavailable", got
    assert f"127.0.0.1:{dead}" in got["error"]["message"]

    # settings: a map is required, and keys (or --no-auth)
    for args, msg in [
        (["--no-auth"], "needs --cluster-map"),
        (["--cluster-map", str(cmap)], "keys file"),
        (["--cluster-map", str(tmp_path / "missing.yaml"), "--no-auth"], "missing.yaml"),
    ]:
        done = run_cli("route", "--config", str(ours), *args)
        assert done.returncode != 0, done
        assert msg in done.stderr, done.stderr[-1000:]


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_router_talks_mutual_tls_to_nodes(tmp_path: Path, servers: Servers, transport: str) -> None:
    """Nodes serving TLS with client certificates required: the router reaches them with
    --node-tls-ca/--node-tls-cert/--node-tls-key, over gRPC or (the map giving the node's HTTP
    address) HTTPS, and without a client certificate the shard is unreachable."""
    make_certs(tmp_path)
    config = tmp_path / "features.yaml"
    config.write_text(PLAIN_REGISTRY.replace("DTYPE", "int64"))
    with Store(tmp_path / "db", Registry.from_yaml(config)) as store:
        store.write(
            "users",
            pa.table(
                {
                    "user_id": pa.array([1, 2], pa.int64()),
                    "event_timestamp": pa.array([T0 * 10**6] * 2, pa.timestamp("us", tz="UTC")),
                    "seq": pa.array([10, 20], pa.int64()),
                }
            ),
        )
    tls = [
        "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"),
        "--tls-client-ca", str(tmp_path / "ca.pem"),
    ]  # fmt: skip
    http, grpc_port = free_port(), free_port()
    cmap = tmp_path / "cluster.yaml"
    entry = (
        f"{{grpc: '127.0.0.1:{grpc_port}', http: '127.0.0.1:{http}'}}"
        if transport == "http"
        else f"'127.0.0.1:{grpc_port}'"
    )
    cmap.write_text(f"topic_partitions: 1\nshards:\n  0: [{entry}]\n")
    ctx = client_context(tmp_path)
    servers.serve(
        config, "db", "--no-auth", "--cluster-map", str(cmap), *tls,
        http_port=http, grpc_port=grpc_port, ssl_context=ctx,
    )  # fmt: skip
    router = servers.cli(
        ["route", "--config", str(config), "--cluster-map", str(cmap), "--no-auth",
         "--route-transport", transport,
         "--node-tls-ca", str(tmp_path / "ca.pem"),
         "--node-tls-cert", str(tmp_path / "client.pem"),
         "--node-tls-key", str(tmp_path / "client.key")],
        "router",
    )  # fmt: skip
    status, got = router.post(
        "/get-online-features", {"features": ["users:seq"], "entities": {"user_id": [2, 1]}}
    )
    assert status == 200, got
    assert got["results"][1]["values"] == [20, 10]
    with urllib.request.urlopen(router.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    # the node counted the part on the transport the router chose
    with urllib.request.urlopen(f"https://127.0.0.1:{http}/metrics", timeout=10, context=ctx) as r:
        node_text = r.read().decode()
    method = 'method="cells"' if transport == "http" else 'method="GetCells"'
    assert any(
        line.startswith("feature_serving_requests_total{") and method in line
        for line in node_text.splitlines()
    ), node_text[-2000:]
    assert "feature_serving_router_parts_total" in text
    # the project's clients over mutual TLS: a routing client bootstrapped from the node
    # (GetNodeInfo over TLS too), and a plain one
    creds = grpc.ssl_channel_credentials(
        (tmp_path / "ca.pem").read_bytes(),
        (tmp_path / "client.key").read_bytes(),
        (tmp_path / "client.pem").read_bytes(),
    )
    with ShardedFeatureClient.from_node(
        f"127.0.0.1:{grpc_port}", join_keys=[("user_id", "int64")], credentials=creds
    ) as sharded:
        got_cols = sharded.get_features({"user_id": [2, 1]}, ["users:seq"])
        assert list(got_cols.columns["users:seq"]) == [20, 10]
    with FeatureClient(f"127.0.0.1:{grpc_port}", credentials=creds) as client:
        assert list(client.get_features({"user_id": [1]}, ["users:seq"]).columns["users:seq"]) == [
            10
        ]
    with FeatureClient(f"https://127.0.0.1:{http}", transport="http", ssl_context=ctx) as client:
        assert list(client.get_features({"user_id": [2]}, ["users:seq"]).columns["users:seq"]) == [
            20
        ]
    with pytest.raises(FeatureServingError):  # no client certificate
        ShardedFeatureClient.from_node(
            f"127.0.0.1:{grpc_port}",
            join_keys=[("user_id", "int64")],
            credentials=grpc.ssl_channel_credentials((tmp_path / "ca.pem").read_bytes()),
            bootstrap_timeout=2.0,
        )
    # the same router without a client certificate cannot reach the node
    plain = servers.cli(
        ["route", "--config", str(config), "--cluster-map", str(cmap), "--no-auth",
         "--node-tls-ca", str(tmp_path / "ca.pem"), "--route-timeout-ms", "500"],
        "router2", ready=False,
    )  # fmt: skip
    assert ready_body(plain)["status"] == "not ready"
    status, got = plain.post(
        "/get-online-features", {"features": ["users:seq"], "entities": {"user_id": [1]}}
    )
    assert status == 503, got
    assert got["error"]["code"] == "shard_unavailable"


def test_router_reloads_registry_and_cluster_map(tmp_path: Path, servers: Servers) -> None:
    """POST /admin/reload (admin key): a new cluster map moves the traffic, a new registry
    makes a view routable; a broken file changes nothing."""
    config = tmp_path / "features.yaml"
    both = PLAIN_REGISTRY.replace("DTYPE", "int64") + (
        "  - name: extra\n    entities: [user]\n    features: [{name: z, dtype: int64}]\n"
    )
    config.write_text(both)
    nodes = []
    for name, base in (("a", 100), ("b", 200)):
        with Store(tmp_path / name, Registry.from_yaml(config)) as store:
            for view, col in (("users", "seq"), ("extra", "z")):
                store.write(
                    view,
                    pa.table(
                        {
                            "user_id": pa.array([1], pa.int64()),
                            "event_timestamp": pa.array([T0 * 10**6], pa.timestamp("us", tz="UTC")),
                            col: pa.array([base], pa.int64()),
                        }
                    ),
                )
    keys = KeyFile(tmp_path / "keys.json")
    reader, _ = keys.create("reader", read=["*"])
    admin, _ = keys.create("ops", read=["*"], admin=True)
    for name in ("a", "b"):
        nodes.append(servers.serve(config, name, "--no-auth"))
    router_config = tmp_path / "router.yaml"
    router_config.write_text(PLAIN_REGISTRY.replace("DTYPE", "int64"))  # no view 'extra'
    cmap = tmp_path / "cluster.yaml"
    cmap.write_text(f"topic_partitions: 1\nshards:\n  0: ['127.0.0.1:{nodes[0].grpc}']\n")
    router = servers.cli(
        ["route", "--config", str(router_config), "--cluster-map", str(cmap),
         "--keys-file", str(tmp_path / "keys.json")],
        "router",
    )  # fmt: skip

    def seq(view: str = "users", feature: str = "seq") -> tuple[int, Any]:
        return post(
            router,
            "/get-online-features",
            {"features": [f"{view}:{feature}"], "entities": {"user_id": [1]}},
            reader,
        )

    assert seq()[1]["results"][1]["values"] == [100]
    assert seq("extra", "z")[0] == 404
    # a non-admin key may not reload
    status, got = post(router, "/admin/reload", {}, reader)
    assert status == 403, got
    # a broken map: refused, nothing changed
    cmap.write_text("topic_partitions: 1\nshards: {1: ['127.0.0.1:1']}\n")
    status, got = post(router, "/admin/reload", {}, admin)
    assert status == 400, got
    assert seq()[1]["results"][1]["values"] == [100]
    # node b, and the registry with 'extra'
    cmap.write_text(f"topic_partitions: 1\nshards:\n  0: ['127.0.0.1:{nodes[1].grpc}']\n")
    router_config.write_text(both)
    status, got = post(router, "/admin/reload", {}, admin)
    assert status == 200, got
    assert got["cluster_changed"] is True
    assert got["feature_views"] == ["extra", "users"]
    assert seq()[1]["results"][1]["values"] == [200]
    assert seq("extra", "z")[1]["results"][1]["values"] == [200]
    body = ready_body(router)
    assert body["shards"] == {"0": {f"127.0.0.1:{nodes[1].grpc}": True}}, body
