"""serving.cluster without servers: the cluster map's validation and formats, NodeInfo's two
renderings, and ClusterChannels against endpoints nobody listens on. The transport against real
`serve` nodes is tested in tests/integration/test_cluster_client.py."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from serving.cluster import ClusterChannels, ClusterMap, ClusterMapError, NodeInfo
from serving.errors import InvalidArgumentError

GOOD: dict[str, Any] = {
    "topic_partitions": 12,
    "shards": {0: ["fs-shard-0-0:6565", "fs-shard-0-1:6565"], 1: ["fs-shard-1-0:6565"]},
}


def test_from_dict_normalizes_and_round_trips() -> None:
    m = ClusterMap.from_dict(GOOD)
    assert m.shard_count == 2
    assert m.topic_partitions == 12
    assert m.shards == {0: ["fs-shard-0-0:6565", "fs-shard-0-1:6565"], 1: ["fs-shard-1-0:6565"]}
    assert m.endpoints == ["fs-shard-0-0:6565", "fs-shard-0-1:6565", "fs-shard-1-0:6565"]
    assert m.to_dict() == GOOD
    assert ClusterMap.from_dict(m.to_dict()) == m
    # through JSON the indices become strings; they are read back as ints, in index order
    via_json = json.loads(
        json.dumps({"topic_partitions": 12, "shards": {"1": ["b:1"], "0": ["a:1"]}})
    )
    m2 = ClusterMap.from_dict(via_json)
    assert list(m2.shards) == [0, 1]
    assert m2.shards[0] == ["a:1"]
    # the caller's lists are not kept
    src = {"topic_partitions": 4, "shards": {0: ["a:1"]}}
    m3 = ClusterMap.from_dict(src)
    src["shards"][0].append("b:2")  # type: ignore[index]
    assert m3.shards == {0: ["a:1"]}
    # other target forms: IPv6, a scheme
    ClusterMap.from_dict({"topic_partitions": 1, "shards": {0: ["[::1]:6565", "dns:///x:1"]}})


def cm(shards: Any, topic_partitions: Any = 4, **extra: Any) -> dict[str, Any]:
    return {"topic_partitions": topic_partitions, "shards": shards, **extra}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"shards": {0: ["a:1"]}}, "has no 'topic_partitions'"),
        ({"topic_partitions": 4}, "has no 'shards'"),
        (cm({0: ["a:1"]}, replicas=2), r"unknown key\(s\) \['replicas'\]"),
        (cm({0: ["a:1"]}, 0), "topic_partitions must be at least 1, got 0"),
        (cm({0: ["a:1"]}, "12"), "topic_partitions must be an integer, got '12'"),
        (cm({0: ["a:1"]}, True), "topic_partitions must be an integer"),
        (cm({}), "shards must map every shard index"),
        (cm([["a:1"]]), "shards must map every shard index"),
        (cm({1: ["a:1"]}), r"exactly 0..0 \(1 shards\), got \[1\]: shard\(s\) \[0\] missing"),
        (cm({0: ["a:1"], 2: ["b:1"]}), r"got \[0, 2\]: shard\(s\) \[1\] missing"),
        (cm({-1: ["a:1"]}), "shard index -1 must be at least 0"),
        (cm({"x": ["a:1"]}), "shard index 'x' must be an integer"),
        (cm({0: ["a:1"], "0": ["b:1"]}), "shard 0 is listed twice"),
        (cm({0: []}), "shard 0 has no endpoint"),
        (cm({0: "a:1"}), "shard 0: expected a list of endpoints"),
        (cm({0: ["a"]}), "shard 0: endpoint 'a' is not 'host:port'"),
        (cm({0: ["a:99999"]}), "endpoint 'a:99999' is not 'host:port'"),
        (cm({0: ["a :1"]}), "is not 'host:port'"),
        (cm({0: [""]}), "an endpoint must be a 'host:port' string"),
        (cm({0: [6565]}), "an endpoint must be a 'host:port' string, got 6565"),
        (cm({0: ["a:1"], 1: ["a:1"]}), "endpoint a:1 is listed in shards 0 and 1"),
        (cm({0: ["a:1", "a:1"]}), "endpoint a:1 is listed twice in shard 0"),
        ([1, 2], "a cluster map is a mapping"),
    ],
)
def test_invalid_maps_are_refused_with_the_problem_named(data: Any, message: str) -> None:
    with pytest.raises(ClusterMapError, match=message) as err:
        ClusterMap.from_dict(data)
    # a ValueError, and an InvalidArgumentError of the project's hierarchy (CLI: "error: ...")
    assert isinstance(err.value, ValueError)
    assert isinstance(err.value, InvalidArgumentError)


def test_the_constructor_validates_too() -> None:
    with pytest.raises(ClusterMapError, match="shard 0 has no endpoint"):
        ClusterMap({0: []}, 4)


def test_load_reads_yaml_and_json_files(tmp_path: Path) -> None:
    yml = tmp_path / "cluster.yaml"
    yml.write_text(
        "topic_partitions: 12\n"
        "shards:\n"
        '  0: ["fs-shard-0-0:6565", "fs-shard-0-1:6565"]\n'
        '  1: ["fs-shard-1-0:6565"]\n'
    )
    assert ClusterMap.load(yml) == ClusterMap.from_dict(GOOD)
    js = tmp_path / "cluster.json"
    js.write_text(json.dumps(GOOD))
    assert ClusterMap.load(str(js)) == ClusterMap.from_dict(GOOD)

    bad = tmp_path / "bad.yaml"
    bad.write_text("topic_partitions: 12\nshards: {0: []}\n")
    with pytest.raises(ClusterMapError, match=r"cluster map '.*bad.yaml': shard 0 has no endpoint"):
        ClusterMap.load(bad)
    bad.write_text("topic_partitions: [12\n")
    with pytest.raises(ClusterMapError, match=r"cluster map '.*bad.yaml': while parsing"):
        ClusterMap.load(bad)
    bad.write_text("")
    with pytest.raises(ClusterMapError, match="a cluster map is a mapping"):
        ClusterMap.load(bad)
    with pytest.raises(ClusterMapError, match=r"cluster map '.*missing.yaml': \[Errno 2\]"):
        ClusterMap.load(tmp_path / "missing.yaml")


def test_proto_round_trip() -> None:
    m = ClusterMap.from_dict(GOOD)
    msg = m.to_proto()
    assert [(s.index, list(s.endpoints)) for s in msg.shards] == [
        (0, ["fs-shard-0-0:6565", "fs-shard-0-1:6565"]),
        (1, ["fs-shard-1-0:6565"]),
    ]
    assert ClusterMap.from_proto(type(msg).FromString(msg.SerializeToString())) == m
    msg.shards.add(index=1, endpoints=["x:1"])
    with pytest.raises(ClusterMapError, match="shard 1 is listed twice"):
        ClusterMap.from_proto(msg)


def test_node_info_renderings_agree() -> None:
    info = NodeInfo(
        version="0.1.0",
        shard_index=1,
        shard_count=2,
        topic_partitions=12,
        sharded_views=("users",),
        ready=True,
        loader_lag={"items": None, "users": 3},
        cluster=ClusterMap.from_dict(GOOD),
    )
    msg = info.to_proto()
    back = NodeInfo.from_proto(type(msg).FromString(msg.SerializeToString()))
    assert back == info
    assert back.loader_lag == {"items": None, "users": 3}  # unknown stays unknown, not 0
    d = json.loads(json.dumps(info.to_dict()))
    assert d["cluster"] == {
        "topic_partitions": 12,
        "shards": {"0": GOOD["shards"][0], "1": GOOD["shards"][1]},
    }
    assert NodeInfo.from_dict(d) == info
    bare = NodeInfo("0.1.0", 0, 0, 0, (), False)
    assert not bare.sharded
    assert NodeInfo.from_proto(bare.to_proto()) == bare
    assert bare.to_dict()["cluster"] is None
    assert not bare.to_proto().HasField("cluster")


def test_serve_settings_check_the_map_against_the_shard(tmp_path: Path) -> None:
    from serving.config import load_settings

    path = tmp_path / "cluster.yaml"
    path.write_text(json.dumps(GOOD))
    env = {"FS_CLUSTER_MAP": str(path)}
    # a node that is not sharded may hand out a map
    assert load_settings(env=env).cluster() == ClusterMap.from_dict(GOOD)
    ok = {"shard_index": 1, "shard_count": 2, "topic_partitions": 12}
    assert load_settings(ok, env=env).cluster() == ClusterMap.from_dict(GOOD)
    for flags in (
        {"shard_index": 0, "shard_count": 3, "topic_partitions": 12},
        {"shard_index": 0, "shard_count": 2, "topic_partitions": 4},
    ):
        with pytest.raises(
            InvalidArgumentError,
            match=r"has 2 shard\(s\) over 12 topic partition\(s\).*must be the same",
        ):
            load_settings(flags, env=env).cluster()
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(f"cluster_map: {path}\n")
    assert load_settings(env={}, settings_file=settings_file).cluster_map == str(path)
    assert load_settings(env={}).cluster() is None


def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_replica_unreachable_is_unavailable_naming_shard_and_endpoints() -> None:
    a, b = f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"
    cluster = ClusterMap({0: [a, b]}, 4)

    async def run(hedge_after: float | None) -> None:
        ch = ClusterChannels(cluster, hedge_after=hedge_after)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.call(0, "/feature_serving.v1.FeatureService/GetNodeInfo", b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            details = err.value.details() or ""
            head, _, tried = details.partition(": ")
            assert head == "shard 0 of 1 is unavailable", details
            assert set(tried.split("; ")) == {
                f"replica {a} refused the connection",
                f"replica {b} refused the connection",
            }, details
            assert ch.up_replicas(0) == []  # both marked down
            # down marks are a preference, not a ban: both are tried again
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.call(0, "/feature_serving.v1.FeatureService/GetNodeInfo", b"", timeout=5)
            assert time.monotonic() - t0 < 4  # refused, not timed out
            details = err.value.details() or ""
            assert a in details, details
            assert b in details, details
            with pytest.raises(
                InvalidArgumentError, match=r"no shard 3: the cluster has shards 0..0"
            ):
                await ch.call(3, "/x/y", b"")
        finally:
            await ch.close()

    asyncio.run(run(None))
    asyncio.run(run(0.05))


def test_hedge_after_must_not_be_negative() -> None:
    with pytest.raises(InvalidArgumentError, match="hedge_after"):
        ClusterChannels(ClusterMap.from_dict(GOOD), hedge_after=-1)


def test_http_addresses_in_the_map() -> None:
    """Endpoints may name their replica's HTTP address too ({grpc, http}); a shard has HTTP
    addresses only when every replica has one; they survive dict, JSON, YAML and proto."""
    d = {
        "topic_partitions": 4,
        "shards": {
            0: [{"grpc": "a:6565", "http": "a:6566"}, {"grpc": "b:6565", "http": "b:6566"}],
            1: [{"grpc": "c:6565", "http": "c:6566"}, "d:6565"],
        },
    }
    m = ClusterMap.from_dict(d)
    assert m.shards == {0: ["a:6565", "b:6565"], 1: ["c:6565", "d:6565"]}
    assert m.http_of(0) == ["a:6566", "b:6566"]
    assert m.http_of(1) is None  # d has none
    assert m.to_dict()["shards"][1] == [{"grpc": "c:6565", "http": "c:6566"}, "d:6565"]
    assert ClusterMap.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert ClusterMap.from_proto(m.to_proto()) == m
    plain = ClusterMap.from_dict({"topic_partitions": 4, "shards": {0: ["a:6565"]}})
    assert plain.http == {}
    assert plain.http_of(0) is None
    assert ClusterMap.from_proto(plain.to_proto()) == plain
    for bad, message in [
        ({"grpc": "a:6565", "http": "nope"}, "not 'host:port'"),
        ({"http": "a:6566"}, "an endpoint is 'host:port' or"),
        ({"grpc": "a:6565", "https": "a:6566"}, "an endpoint is 'host:port' or"),
    ]:
        with pytest.raises(ClusterMapError, match=message):
            ClusterMap.from_dict({"topic_partitions": 1, "shards": {0: [bad]}})
    with pytest.raises(ClusterMapError, match="not in the map"):
        ClusterMap({0: ["a:6565"]}, 1, http={"z:1": "z:2"})
