"""Cluster map, node metadata and routing clients against real `serve` shard processes on a
real broker (tansu), as tests/integration/test_scale_out_serve.py: two shards on a 4-partition
topic plus a second replica of shard 0, 2,000 keys, API keys on.

- ``GetNodeInfo`` / ``GET /v1/node`` and ``serve --cluster-map`` (and its startup checks);
- :class:`serving.cluster.ClusterChannels` (raw bytes) against the nodes;
- ``ShardedFeatureClient`` and ``AsyncShardedFeatureClient``: every key through both layouts,
  fail-over when a replica is killed, hedging when a replica is slow.

The only fake is :class:`SlowReplica`, a deliberately slow endpoint that forwards to a real
node after a delay; every answer checked comes from a real node. See docs/scale-out.md."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
import yaml

import serving
from serving._proto.feature_serving.v1 import feature_service_pb2 as pb
from serving.client import (
    AsyncShardedFeatureClient,
    ColumnsResult,
    FeatureClient,
    ShardedFeatureClient,
)
from serving.client.codec import METHOD
from serving.cluster import ClusterChannels, ClusterMap, ClusterMapError, fetch_node_info
from serving.errors import PermissionDeniedError, StorageError, UnauthenticatedError
from serving.frontend.auth import KeyFile
from serving.loaders.kafka import produce_rows
from serving.store import DenseResult
from tests.harness import Broker, Server, ShardedCluster, free_port, http, run_cli

pytestmark = pytest.mark.integration

PARTITIONS = 4
SHARDS = 2
N = 2000
#: event time of every row (microseconds)
TS = 1_700_000_000_000_000
JOIN_KEYS = [("user_id", "int64")]
FEATURES = ["users:seq", "users:name", "users:emb"]


def registry_text(bootstrap: str) -> str:
    return f"""
project: clusterclient
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: users
    entities: [user]
    features:
      - {{name: seq, dtype: int64}}
      - {{name: name, dtype: string}}
      - {{name: emb, dtype: float32_array, dim: 2}}
    stream_source: {{type: kafka, topic: users, bootstrap_servers: "{bootstrap}", format: json,
                    options: {{loader.dlq_topic: ""}}}}
"""


def row(u: int) -> dict[str, Any]:
    return {
        "user_id": u,
        "event_timestamp": TS,
        "seq": u * 10 + 1,
        "name": f"user-{u}",
        "emb": [float(u), -float(u)],
    }


def check_dense(m: DenseResult, users: list[int]) -> None:
    assert m.feature_names == ["users:seq"]
    assert m.values[:, 0].tolist() == [float(u * 10 + 1) for u in users]
    assert m.statuses.tolist() == [[1]] * len(users)


def check_columns(c: ColumnsResult, users: list[int]) -> None:
    """Every value, status and timestamp of every entity, in request order."""
    assert c.feature_names == FEATURES
    assert c.columns["users:seq"].dtype == np.int64
    assert c.columns["users:seq"].tolist() == [u * 10 + 1 for u in users]
    assert c.columns["users:name"] == [f"user-{u}" for u in users]
    assert c.columns["users:emb"].shape == (len(users), 2)
    assert c.columns["users:emb"].tolist() == [[float(u), -float(u)] for u in users]
    assert c.statuses.tolist() == [[1, 1, 1]] * len(users)
    assert c.event_timestamps is not None
    assert c.event_timestamps.tolist() == [[TS] * 3] * len(users)


def dense_body(users: list[int]) -> bytes:
    req = pb.GetFeatureVectorRequest(layout=pb.LAYOUT_DENSE, include_statuses=True)
    req.features.refs.append("users:seq")
    req.entities["user_id"].int64_values.values.extend(users)
    return req.SerializeToString()


def dense_values(out: bytes) -> list[float]:
    d = pb.GetFeatureVectorResponse.FromString(out).dense
    return np.frombuffer(d.values, dtype="<f4").tolist()


def requests_total(server: Server, code: str = "OK") -> float:
    """The node's count of v1 gRPC GetFeatureVector requests answered with ``code``."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    want = (
        'feature_serving_requests_total{api="grpc",code="' + code + '",method="GetFeatureVector"}'
    )
    for line in text.splitlines():
        if line.startswith(want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def http_get(server: Server, path: str, key: str | None) -> tuple[int, Any]:
    return http(server.url + path, key=key)


class Env(ShardedCluster):
    """The broker's topic with N keys and three `serve` nodes: shard 0 twice ("0a", "0b") and
    shard 1 ("1"), all started with the cluster map of the three."""

    def __init__(self, broker: Broker, tmp: Path) -> None:
        super().__init__(
            broker, tmp, registry_text(broker.bootstrap), n=N, partitions=PARTITIONS, shards=SHARDS
        )
        produce_rows(self.producer, self.view, [row(u) for u in range(N)])
        self.keys_file = tmp / "keys.json"
        keyfile = KeyFile(self.keys_file)
        self.keys = {
            "reader": keyfile.create("reader", read=["users"])[0],
            "bare": keyfile.create("bare")[0],  # valid, reads nothing
        }
        self.nodes: dict[str, Server] = {}
        ports = {name: free_port() for name in ("0a", "0b", "1")}
        self.cluster = ClusterMap(
            {0: [f"127.0.0.1:{ports['0a']}", f"127.0.0.1:{ports['0b']}"],
             1: [f"127.0.0.1:{ports['1']}"]},
            PARTITIONS,
        )  # fmt: skip
        self.map_path = tmp / "cluster.yaml"
        self.map_path.write_text(yaml.safe_dump(self.cluster.to_dict()))
        self.ports = ports

    def start_nodes(self) -> None:
        for name, port in self.ports.items():
            flags = (*self.shard_flags(int(name[0])), "--cluster-map", str(self.map_path))
            self.caught_up(self.start(name, *flags, grpc_port=port), int(name[0]))

    def endpoint(self, name: str) -> str:
        return f"127.0.0.1:{self.nodes[name].grpc}"

    def start(self, name: str, *flags: str, **ports: int | None) -> Server:
        self.nodes[name] = super().start(name, *flags, **ports)
        return self.nodes[name]

    def stop(self, server: Server) -> int:
        self.nodes = {k: v for k, v in self.nodes.items() if v is not server}
        return super().stop(server)

    def caught_up(self, node: Server, shard: int, timeout: float = 30) -> Server:
        """Waits until ``node`` answers every key of ``shard``: /readyz can say ready before
        the loader's first fetch (its lag counts only partitions it has fetched)."""
        mine = self.keys_of(shard)
        deadline = time.monotonic() + timeout
        with FeatureClient(f"127.0.0.1:{node.grpc}", api_key=self.keys["reader"], timeout=5) as c:
            while True:
                parts = [mine[i : i + 500] for i in range(0, len(mine), 500)]
                if all(
                    (c.get_dense({"user_id": p}, ["users:seq"]).statuses == 1).all() for p in parts
                ):
                    return node
                assert time.monotonic() < deadline, f"{node.url} did not catch up"
                time.sleep(0.1)

    def shard_flags(self, index: int) -> tuple[str, ...]:
        return ("--keys-file", str(self.keys_file), *super().shard_flags(index))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, module_broker: Broker) -> Iterator[Env]:
    with Env(module_broker, tmp_path_factory.mktemp("cluster")) as e:
        e.start_nodes()
        yield e


# -- node metadata ----------------------------------------------------------------------------


def test_node_info_over_grpc_and_http(env: Env) -> None:
    cluster_json = {
        "topic_partitions": PARTITIONS,
        "shards": {str(k): eps for k, eps in env.cluster.shards.items()},
    }
    for name, shard in (("0a", 0), ("0b", 0), ("1", 1)):
        ep, node = env.endpoint(name), env.nodes[name]
        info = fetch_node_info(ep, api_key=env.keys["reader"])
        assert info.version == serving.__version__
        assert (info.shard_index, info.shard_count, info.topic_partitions) == (shard, 2, 4)
        assert info.sharded_views == ("users",)
        assert info.ready is True
        assert info.loader_lag == {"users": 0}
        assert info.cluster == env.cluster
        # any valid key will do, as for the other read RPCs
        assert ClusterMap.fetch(ep, api_key=env.keys["bare"]) == env.cluster
        status, body = http_get(node, "/v1/node", env.keys["bare"])
        assert status == 200, body
        assert body == {
            "version": serving.__version__,
            "shard_index": shard,
            "shard_count": 2,
            "topic_partitions": 4,
            "sharded_views": ["users"],
            "ready": True,
            "loader_lag": {"users": 0},
            "cluster": cluster_json,
        }
    # no key, or a bad one: refused like every read RPC
    for key in (None, "fs_not_a_key"):
        with pytest.raises(UnauthenticatedError, match="UNAUTHENTICATED"):
            fetch_node_info(env.endpoint("1"), api_key=key)
        status, body = http_get(env.nodes["1"], "/v1/node", key)
        assert status == 401, body
        assert body["error"]["code"] == "unauthenticated"


def test_node_without_shard_or_map(env: Env) -> None:
    node = env.start("plain", "--no-auth", "--max-ready-lag", "0")
    ep = f"127.0.0.1:{node.grpc}"
    try:
        info = fetch_node_info(ep)  # --no-auth: no key needed
        assert (info.shard_index, info.shard_count, info.topic_partitions) == (0, 0, 0)
        assert info.sharded_views == ()
        assert info.cluster is None
        assert info.ready is True
        assert info.loader_lag == {"users": 0}
        status, body = http_get(node, "/v1/node", None)
        assert status == 200, body
        assert body["cluster"] is None
        assert body["shard_count"] == 0
        with pytest.raises(ClusterMapError, match=f"node {ep} has no cluster map"):
            ClusterMap.fetch(ep)
        with pytest.raises(ClusterMapError, match=f"node {ep} has no cluster map"):
            ShardedFeatureClient.from_node(ep)
    finally:
        env.stop(node)


def test_serve_refuses_a_cluster_map_that_does_not_fit(tmp_path: Path) -> None:
    def serve(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(
            "serve", "--config", str(tmp_path / "f.yaml"), "--data-dir", str(tmp_path / "store"),
            "--no-auth", "--grpc-port", "0", "--http-port", "0", *flags,
            env=env,
        )  # fmt: skip

    three = tmp_path / "three.yaml"
    three.write_text(
        yaml.safe_dump({"topic_partitions": 4, "shards": {0: ["a:1"], 1: ["b:1"], 2: ["c:1"]}})
    )
    shard = ("--shard-index", "0", "--shard-count", "2", "--topic-partitions", "4")
    done = serve(*shard, "--cluster-map", str(three))
    assert done.returncode == 1, done.stderr
    assert (
        f"error: cluster map '{three}' has 3 shard(s) over 4 topic partition(s), but this node "
        "is shard 0 of 2 over 4 partitions (--shard-count/--topic-partitions): they must be "
        "the same"
    ) in done.stderr
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"topic_partitions": 8, "shards": {"0": ["a:1"], "1": ["b:1"]}}))
    done = serve(*shard, env={"FS_CLUSTER_MAP": str(two)})  # the env var is read too
    assert done.returncode == 1, done.stderr
    assert "has 2 shard(s) over 8 topic partition(s), but this node is shard 0 of 2" in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("topic_partitions: 4\nshards: {0: [a:1], 1: []}\n")
    done = serve("--cluster-map", str(bad))
    assert done.returncode == 1, done.stderr
    assert f"error: cluster map '{bad}': shard 1 has no endpoint" in done.stderr
    # nothing was created: the checks run before the store is touched
    assert not (tmp_path / "store").exists()


def test_node_warns_when_the_map_does_not_list_it(env: Env) -> None:
    """A node whose ports are on none of its shard's endpoints in its cluster map says so at
    start (routing by the map would never reach it); the map's own nodes do not."""
    warning = "none on this node's ports"
    for name in ("0a", "0b", "1"):
        assert warning not in (env.tmp / f"{name}.log").read_text()
    stray = env.start("stray", *env.shard_flags(1), "--cluster-map", str(env.map_path))
    try:
        log = (env.tmp / "stray.log").read_text()
        assert warning in log, log[-2000:]
        assert f"lists shard 1 at {env.endpoint('1')}" in log
    finally:
        env.stop(stray)


# -- ClusterChannels --------------------------------------------------------------------------


def test_cluster_channels_against_real_nodes(env: Env) -> None:
    md = [("authorization", f"Bearer {env.keys['reader']}")]
    mine = {k: env.keys_of(k)[:500] for k in range(SHARDS)}
    before = {name: requests_total(env.nodes[name]) for name in ("0a", "0b")}
    refused = sum(requests_total(env.nodes[n], "FAILED_PRECONDITION") for n in ("0a", "0b"))

    async def run() -> None:
        ch = ClusterChannels(env.cluster, hedge_after=None)
        try:
            for _ in range(2):
                for k in range(SHARDS):
                    out = await ch.call(k, METHOD, dense_body(mine[k]), metadata=md, timeout=5)
                    assert dense_values(out) == [float(u * 10 + 1) for u in mine[k]]
            # errors other than UNAVAILABLE are raised as they are, not retried elsewhere
            other = env.keys_of(1)[0]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.call(0, METHOD, dense_body([other]), metadata=md, timeout=5)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"entity user_id={other} of feature view 'users'" in (err.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.call(1, METHOD, b"\xff\xff", metadata=md, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.call(1, METHOD, dense_body(mine[1]), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # a replica marked down is still tried when it is the only one, and is up after
            ep1 = env.endpoint("1")
            ch._down[ep1] = time.monotonic() + 60
            assert ch.up_replicas(1) == []
            out = await ch.call(1, METHOD, dense_body(mine[1][:5]), metadata=md, timeout=5)
            assert dense_values(out) == [float(u * 10 + 1) for u in mine[1][:5]]
            assert ch.up_replicas(1) == [ep1]
        finally:
            await ch.close()

    asyncio.run(run())
    # round robin: the two shard-0 calls went one to each replica; the refused one to one only
    assert {n: requests_total(env.nodes[n]) - before[n] for n in ("0a", "0b")} == {
        "0a": 1,
        "0b": 1,
    }
    after = sum(requests_total(env.nodes[n], "FAILED_PRECONDITION") for n in ("0a", "0b"))
    assert after - refused == 1


# -- routing clients: every key ---------------------------------------------------------------


def test_clients_answer_every_key_in_both_layouts(env: Env) -> None:
    users = list(range(N))
    batches = [users[i::4] for i in range(4)]  # 500 each, both shards interleaved
    key = env.keys["reader"]
    # blocking client bootstrapped from a node: map and join keys from GetNodeInfo and
    # ListFeatureViews
    with ShardedFeatureClient.from_node(env.endpoint("1"), api_key=key, timeout=5) as client:
        assert client.cluster == env.cluster
        assert client.join_keys == ["user_id"]
        assert client.shards_of({"user_id": users}) == [env.owner[u] for u in users]
        for batch in batches:
            check_dense(client.get_dense({"user_id": batch}, ["users:seq"]), batch)
            check_columns(client.get_features({"user_id": np.array(batch)}, FEATURES), batch)
        only1 = env.keys_of(1)[:300]  # one shard only: no split
        check_columns(client.get_features({"user_id": only1}, FEATURES), only1)

    async def run() -> None:
        async with AsyncShardedFeatureClient.from_cluster_map(
            env.map_path, join_keys=JOIN_KEYS, api_key=key, timeout=5
        ) as client:
            assert client.cluster == env.cluster
            dense = await asyncio.gather(
                *(client.get_dense({"user_id": b}, ["users:seq"]) for b in batches)
            )
            for m, batch in zip(dense, batches, strict=True):
                check_dense(m, batch)
            for batch in batches:
                check_columns(await client.get_features({"user_id": batch}, FEATURES), batch)
        async with await AsyncShardedFeatureClient.from_node(
            env.endpoint("0b"), api_key=key, timeout=5
        ) as client:
            assert client.join_keys == ["user_id"]
            check_dense(
                await client.get_dense({"user_id": users[:1000]}, ["users:seq"]), users[:1000]
            )

    asyncio.run(run())


def cells_total(server: Server) -> float:
    """The node's count of raw-cells parts answered (HTTP ``cells`` and gRPC ``GetCells``)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("feature_serving_requests_total{")
        and ('method="cells"' in line or 'method="GetCells"' in line)
    )


def test_clients_with_the_registry_route_like_the_router(env: Env) -> None:
    """``registry=``: split and merge in Rust, cells parts over the nodes' HTTP ports (a map
    with HTTP addresses) or gRPC (the env's map): every key right, the same answers as the
    GetFeatureVector path, the caller's key enforced by the nodes."""
    users = list(range(N))[::-1]  # both shards interleaved, not in key order
    key = env.keys["reader"]
    with_http = ClusterMap.from_dict(
        {
            "topic_partitions": PARTITIONS,
            "shards": {
                shard: [
                    {"grpc": env.endpoint(name), "http": f"127.0.0.1:{env.nodes[name].http}"}
                    for name in names
                ]
                for shard, names in ((0, ("0a", "0b")), (1, ("1",)))
            },
        }
    )
    with ShardedFeatureClient(env.cluster, join_keys=JOIN_KEYS, api_key=key, timeout=5) as plain:
        want_dense = plain.get_dense({"user_id": users[:700]}, ["users:seq"])
    for cluster in (with_http, env.cluster):
        before = sum(cells_total(env.nodes[n]) for n in ("0a", "0b", "1"))
        with ShardedFeatureClient(
            cluster, join_keys=JOIN_KEYS, api_key=key, timeout=5, registry=env.config
        ) as client:
            for batch in (users[:700], users[700:1400], users[1400:]):
                check_columns(client.get_features({"user_id": batch}, FEATURES), batch)
            got = client.get_dense({"user_id": users[:700]}, ["users:seq"])
            assert got.values.tobytes() == want_dense.values.tobytes()
            assert got.statuses.tobytes() == want_dense.statuses.tobytes()
            only1 = env.keys_of(1)[:300]  # one shard only: one part
            check_dense(client.get_dense({"user_id": only1}, ["users:seq"]), only1)
            unknown = client.get_dense({"user_id": [N + 5, 3]}, ["users:seq"])
            assert unknown.statuses[:, 0].tolist() == [3, 1]  # NOT_FOUND, then PRESENT
        after = sum(cells_total(env.nodes[n]) for n in ("0a", "0b", "1"))
        assert after - before >= 2 * 4 + 1  # two parts per split request, one for only1
        with (
            ShardedFeatureClient(
                cluster, join_keys=JOIN_KEYS, api_key=env.keys["bare"], registry=env.config
            ) as bare,
            pytest.raises(PermissionDeniedError),
        ):
            bare.get_dense({"user_id": [1, 2]}, ["users:seq"])


# -- fail-over --------------------------------------------------------------------------------


def test_fail_over_when_a_replica_is_killed(env: Env) -> None:
    victim = env.caught_up(env.start("0c", *env.shard_flags(0)), 0)
    served_before = requests_total(victim)
    dead = f"127.0.0.1:{victim.grpc}"
    cluster = ClusterMap({0: [dead, env.endpoint("0a")], 1: [env.endpoint("1")]}, PARTITIONS)
    key = env.keys["reader"]
    users = list(range(N))
    batches = [users[i::8][:250] for i in range(8)]
    opts: dict[str, Any] = {"join_keys": JOIN_KEYS, "api_key": key, "timeout": 5}

    async def run(client: AsyncShardedFeatureClient, before_kill: bool) -> None:
        for batch in batches[:2] if before_kill else batches:
            check_dense(await client.get_dense({"user_id": batch}, ["users:seq"]), batch)
            check_columns(await client.get_features({"user_id": batch}, FEATURES), batch)

    loop = asyncio.new_event_loop()
    sync = ShardedFeatureClient(cluster, hedge_after=None, **opts)
    aclient = AsyncShardedFeatureClient(cluster, hedge_after=None, **opts)
    hedging = AsyncShardedFeatureClient(cluster, **opts)  # hedge_after=0.05
    try:
        # all three use the victim before it dies (round robin over both replicas)
        for batch in batches[:2]:
            check_dense(sync.get_dense({"user_id": batch}, ["users:seq"]), batch)
        loop.run_until_complete(run(aclient, True))
        loop.run_until_complete(run(hedging, True))
        # round robin gave it 1 of the blocking client's calls, 2 of each async client's
        assert requests_total(victim) - served_before >= 5

        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)

        for batch in batches:
            check_dense(sync.get_dense({"user_id": batch}, ["users:seq"]), batch)
            check_columns(sync.get_features({"user_id": batch}, FEATURES), batch)
        assert sync.up_replicas(0) == [env.endpoint("0a")]  # it was tried, and marked down
        loop.run_until_complete(run(aclient, False))
        assert aclient.up_replicas(0) == [env.endpoint("0a")]
        loop.run_until_complete(run(hedging, False))

        # a shard whose every replica is gone: UNAVAILABLE naming the shard and endpoints
        with (
            ShardedFeatureClient({0: [dead]}, topic_partitions=PARTITIONS, **opts) as alone,
            pytest.raises(
                StorageError,
                match=rf"^UNAVAILABLE: shard 0 of 1 is unavailable: replica {dead} refused the "
                "connection$",
            ),
        ):
            alone.get_dense({"user_id": env.keys_of(0)[:3]}, ["users:seq"])
    finally:
        sync.close()
        loop.run_until_complete(aclient.close())
        loop.run_until_complete(hedging.close())
        loop.close()


# -- hedging ----------------------------------------------------------------------------------


class SlowReplica:
    """A deliberately slow endpoint, the only fake of this module: a grpc.aio server on its own
    thread and event loop that waits ``delay`` seconds, then forwards the call (with its
    authorization header) to the real node ``target``. Counts the calls it received, those
    cancelled before it answered (the client took another replica's answer) and answered."""

    def __init__(self, target: str, delay: float) -> None:
        self.target, self.delay = target, delay
        self.port = free_port()
        self.started = self.cancelled = self.answered = 0
        self._loop = asyncio.new_event_loop()
        self._up = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._up.wait(10)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._up.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.target)
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((_Forward(self),))
        assert self._server.add_insecure_port(self.endpoint) == self.port
        await self._server.start()

    async def handle(self, method: str, request: bytes, context: Any) -> bytes:
        self.started += 1
        try:
            await asyncio.sleep(self.delay)
            md = [(k, v) for k, v in context.invocation_metadata() or () if k == "authorization"]
            forward = self._channel.unary_unary(method, None, None)
            out: bytes = await forward(request, metadata=md, timeout=context.time_remaining())
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.answered += 1
        return out

    def stop(self) -> None:
        async def stop() -> None:
            await self._server.stop(0)
            await self._channel.close(None)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class _Forward(grpc.GenericRpcHandler):
    def __init__(self, replica: SlowReplica) -> None:
        self.replica = replica

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        method = details.method

        async def behavior(request: bytes, context: Any) -> bytes:
            return await self.replica.handle(method, request, context)

        return grpc.unary_unary_rpc_method_handler(behavior)


def wait_until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_hedging_when_a_replica_is_slow(env: Env) -> None:
    slow = SlowReplica(env.endpoint("0a"), delay=3.0)
    cluster = ClusterMap({0: [slow.endpoint, env.endpoint("0b")], 1: [env.endpoint("1")]}, 4)
    key = env.keys["reader"]
    md = [("authorization", f"Bearer {key}")]
    mine = env.keys_of(0)[:400]
    users = list(range(N))
    batches = [users[i::4] for i in range(4)]
    try:
        # the slow replica really is slow: without hedging, a call it gets first times out
        async def unhedged() -> None:
            ch = ClusterChannels(cluster, hedge_after=None)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.call(0, METHOD, dense_body(mine), metadata=md, timeout=0.5)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            finally:
                await ch.close()

        asyncio.run(unhedged())
        assert slow.started == 1
        wait_until(lambda: slow.cancelled == 1)

        # with hedging every call is answered, by the other replica, well before the delay
        async def hedged() -> None:
            ch = ClusterChannels(cluster, hedge_after=0.05)
            try:
                for _ in range(4):
                    t0 = time.monotonic()
                    out = await ch.call(0, METHOD, dense_body(mine), metadata=md, timeout=2.5)
                    assert time.monotonic() - t0 < 1.5
                    assert dense_values(out) == [float(u * 10 + 1) for u in mine]
                    # the losing call is cancelled at once, not left to run (or to close())
                    t0 = time.monotonic()
                    while slow.cancelled != slow.started:
                        assert time.monotonic() - t0 < 2, (slow.started, slow.cancelled)
                        await asyncio.sleep(0.02)
                assert slow.endpoint in ch.up_replicas(0)  # slow is not down
            finally:
                await ch.close()

        asyncio.run(hedged())
        assert slow.started >= 3  # round robin gave it calls 1 and 3 first
        wait_until(lambda: slow.cancelled == slow.started)

        # hedges are budgeted: with one in reserve and none earned, the first slow call is
        # hedged and the next one waits for the slow replica (here: past its deadline)
        async def budgeted() -> None:
            ch = ClusterChannels(cluster, hedge_after=0.05, hedge_budget=0.0, hedge_burst=1.0)
            try:
                outcomes = []
                for _ in range(4):  # round robin: the slow replica is first for 2 of them
                    try:
                        await ch.call(0, METHOD, dense_body(mine), metadata=md, timeout=0.5)
                        outcomes.append("ok")
                    except grpc.aio.AioRpcError as e:
                        outcomes.append(e.code().name)
                assert outcomes.count("DEADLINE_EXCEEDED") == 1, outcomes
                assert ch.hedges == {"sent": 1, "over_budget": 1}
            finally:
                await ch.close()

        asyncio.run(budgeted())
        # every call it got was cancelled once the other replica had answered
        wait_until(lambda: slow.cancelled == slow.started)
        assert slow.answered == 0

        # the routing clients hedge the same way
        async def via_async_client() -> None:
            async with AsyncShardedFeatureClient(
                cluster, join_keys=JOIN_KEYS, api_key=key, timeout=2.5
            ) as client:
                for batch in batches:
                    t0 = time.monotonic()
                    check_columns(await client.get_features({"user_id": batch}, FEATURES), batch)
                    assert time.monotonic() - t0 < 1.5

        started = slow.started
        asyncio.run(via_async_client())
        with ShardedFeatureClient(cluster, join_keys=JOIN_KEYS, api_key=key, timeout=2.5) as client:
            for batch in batches:
                t0 = time.monotonic()
                check_dense(client.get_dense({"user_id": batch}, ["users:seq"]), batch)
                assert time.monotonic() - t0 < 1.5
        assert slow.started >= started + 4  # both clients sent it calls, and did not wait
        wait_until(lambda: slow.cancelled == slow.started)
        assert slow.answered == 0
    finally:
        slow.stop()
