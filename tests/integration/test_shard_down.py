"""A shard whose only replica is down, said in words by everything that routes: the router over
HTTP and gRPC (its parts sent to the nodes over gRPC, or over their HTTP ports), and the routing
client. Two shards on a real broker, one node stopped: "shard 1 of 2 is unavailable: replica
127.0.0.1:P refused the connection", never the bare ``127.0.0.1:P: 127.0.0.1:Q: [Errno 111]``."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.client import FeatureClient, ShardedFeatureClient
from serving.errors import FeatureServingError, StorageError
from serving.loaders.kafka import produce_rows
from tests.harness import Broker, ShardedCluster, scale_out_registry

pytestmark = pytest.mark.integration

T0 = 1_700_000_000


def test_one_shard_down_is_named_in_words(broker: Broker, tmp_path: Path) -> None:
    with ShardedCluster(broker, tmp_path, scale_out_registry(broker.bootstrap), n=40) as c:
        rows = [{"user_id": u, "event_timestamp": T0 * 10**6, "seq": u} for u in range(c.n)]
        produce_rows(c.producer, c.view, rows)
        nodes = [c.start(f"shard{k}", "--no-auth", *c.shard_flags(k)) for k in range(2)]
        grpc_map, http_map = tmp_path / "cluster.yaml", tmp_path / "cluster-http.yaml"
        grpc_map.write_text(
            f"topic_partitions: {c.partitions}\nshards:\n"
            + "".join(f"  {k}: ['127.0.0.1:{n.grpc}']\n" for k, n in enumerate(nodes))
        )
        http_map.write_text(
            f"topic_partitions: {c.partitions}\nshards:\n"
            + "".join(
                f"  {k}: [{{grpc: '127.0.0.1:{n.grpc}', http: '127.0.0.1:{n.http}'}}]\n"
                for k, n in enumerate(nodes)
            )
        )
        route = ["route", "--config", str(c.config), "--no-auth", "--route-probe-seconds", "0.2"]
        routers = {
            name: c.servers.cli([*route, "--cluster-map", str(path)], name)
            for name, path in (("router", grpc_map), ("router-http", http_map))
        }
        ones = c.keys_of(1)[:3]
        request = {"features": ["users:seq"], "entities": {"user_id": ones}}
        for r in routers.values():
            status, got = r.post("/get-online-features", request)
            assert status == 200, got

        down = nodes[1]
        c.stop(down)
        refused = (
            f"shard 1 of 2 is unavailable: replica 127.0.0.1:{down.grpc} refused the connection"
        )
        expected = {
            "router": refused,
            "router-http": refused.replace(
                "refused", f"(its HTTP port 127.0.0.1:{down.http}) refused"
            ),
        }
        for name, r in routers.items():
            status, got = r.post("/get-online-features", request)
            assert status == 503, got
            assert got["error"]["code"] == "shard_unavailable", got
            assert got["error"]["message"] == expected[name], got
            # the router's gRPC port says the same
            with FeatureClient(f"127.0.0.1:{r.grpc}") as client:
                with pytest.raises(FeatureServingError) as err:
                    client.get_dense({"user_id": ones}, ["users:seq"])
                assert str(err.value) == f"UNAVAILABLE: {expected[name]}", err.value
            # a key of the shard that is up is still answered
            status, got = r.post(
                "/get-online-features",
                {"features": ["users:seq"], "entities": {"user_id": c.keys_of(0)[:2]}},
            )
            assert status == 200, got

        # the routing client, from the same map
        with ShardedFeatureClient.from_cluster_map(
            grpc_map, join_keys=[("user_id", "int64")]
        ) as client:
            with pytest.raises(StorageError) as err:
                client.get_dense({"user_id": ones}, ["users:seq"])
            assert str(err.value) == f"UNAVAILABLE: {refused}"
