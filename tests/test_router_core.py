"""The router core through its Python binding (`_rust_core.RouterCore`): parts are
`GetCellsRequest`s for the owning shards, and merging the shards' answers gives the bytes one
node holding every row gives. Byte equality on every API is also tested in Rust
(rust_core/src/route.rs); this checks the binding and the proto on the Python side."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from serving import Registry, Store, _rust_core
from serving._proto.feature_serving.v1 import feature_service_pb2 as pb
from serving.errors import InvalidArgumentError, PermissionDeniedError, ShardAnswerError
from serving.loaders.kafka import encode_key
from serving.sharding import shard_for_key, sharded_views

REGISTRY = """
project: r
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: users
    entities: [user]
    features: [{name: seq, dtype: int64}, {name: tag, dtype: string}]
    stream_source: {type: kafka, topic: users, bootstrap_servers: "127.0.0.1:1", format: json}
feature_services:
  - name: svc
    features: [users:seq]
"""
N = 200
PARTITIONS, SHARDS = 6, 3


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Registry, Store, _rust_core.RouterCore]:
    config = tmp_path / "features.yaml"
    config.write_text(REGISTRY)
    registry = Registry.from_yaml(config)
    store = Store(tmp_path / "db", registry)
    store.write(
        "users",
        pa.table(
            {
                "user_id": pa.array(range(N), pa.int64()),
                "event_timestamp": pa.array([10**15] * N, pa.timestamp("us", tz="UTC")),
                "seq": pa.array([u * 3 for u in range(N)], pa.int64()),
                "tag": pa.array([f"t{u}" if u % 7 else None for u in range(N)]),
            }
        ),
    )
    core = _rust_core.RouterCore(
        registry.to_core_json(), SHARDS, sharded_views(registry, PARTITIONS)
    )
    return registry, store, core


def test_parts_go_to_owners_and_merge_to_one_nodes_answer(
    setup: tuple[Registry, Store, _rust_core.RouterCore],
) -> None:
    registry, store, core = setup
    view = registry.view("users")
    users = [*range(N - 1, -1, -1), 5000, 3]  # reversed, a missing key, a repeat
    body = json.dumps(
        {"features": ["users:tag", "users:seq"], "entities": {"user_id": users}}
    ).encode()
    routed = core.route("feast_http", body)
    assert routed.num_entities == len(users)
    assert routed.num_features == 2
    assert routed.views == ["users"]
    parts = routed.parts()
    assert sorted(s for s, _ in parts) == [0, 1, 2]
    seen: list[int] = []
    for shard, part in parts:
        req = pb.GetCellsRequest.FromString(part)
        assert list(req.refs) == ["users:tag", "users:seq"]
        assert req.feature_service == ""
        ids = list(req.entities["user_id"].int64_values.values)
        assert {shard_for_key(encode_key(view, [u]), PARTITIONS, SHARDS) for u in ids} == {shard}
        assert ids == [u for u in users if u in set(ids)]  # request order within a part
        seen += ids
    assert sorted(seen) == sorted(users)
    answers = [store.core.serve("cells", part) for _, part in parts]
    assert routed.merge(answers) == store.core.serve("feast_http", body)
    # answers out of order are refused, not misread
    with pytest.raises(ShardAnswerError):
        routed.merge(answers[::-1])
    with pytest.raises(ShardAnswerError):
        routed.merge(answers[:-1])


def test_scopes_are_checked_before_splitting_and_travel_with_the_parts(
    setup: tuple[Registry, Store, _rust_core.RouterCore],
) -> None:
    _, store, core = setup
    core.set_scope(7, [], ["svc"])
    store.core.set_scope(7, [], ["svc"])
    body = json.dumps({"feature_service": "svc", "entities": {"user_id": [1, 2, 3]}}).encode()
    routed = core.route("feast_http", body, 7)
    parts = routed.parts()
    assert {pb.GetCellsRequest.FromString(p).feature_service for _, p in parts} == {"svc"}
    answers = [store.core.serve("cells", p, 7) for _, p in parts]
    assert routed.merge(answers) == store.core.serve("feast_http", body, 7)
    refs = json.dumps({"features": ["users:tag"], "entities": {"user_id": [1]}}).encode()
    with pytest.raises(PermissionDeniedError):
        core.route("feast_http", refs, 7)
    with pytest.raises(PermissionDeniedError, match="no read scope"):
        core.route("feast_http", body, 8)
    core.clear_scopes()
    with pytest.raises(PermissionDeniedError):
        core.route("feast_http", body, 7)
    with pytest.raises(InvalidArgumentError, match="a router does not answer GetCells"):
        core.route("cells", parts[0][1])


def test_router_refuses_at_once_while_its_event_loop_is_behind(tmp_path: Path) -> None:
    """The router's overload guard (--max-loop-lag-ms): a request that starts while the loop
    is behind is refused with RESOURCE_EXHAUSTED before any part is sent."""
    import asyncio

    from serving.cluster import ClusterMap
    from serving.config import ServeSettings
    from serving.errors import ResourceExhaustedError
    from serving.frontend.router import FeatureRouter

    config = tmp_path / "features.yaml"
    config.write_text(REGISTRY)
    registry = Registry.from_yaml(config)
    cluster = ClusterMap({0: ["127.0.0.1:9"]}, 1)  # nothing listens: no part may be sent
    body = json.dumps({"features": ["users:seq"], "entities": {"user_id": [1]}}).encode()

    async def scenario() -> None:
        router = FeatureRouter(registry, cluster, ServeSettings(no_auth=True, max_loop_lag_ms=20))
        assert router.guard is not None
        loop = asyncio.get_running_loop()
        router.guard.start(loop)
        try:
            router.guard.due = loop.time() - 1.0  # the loop is a second behind its timer
            with pytest.raises(ResourceExhaustedError, match="router overloaded"):
                await router.route("feast_http", body, None, None, 1.0)
            assert router.guard.shed == 1
            sent = router.metrics.registry.get_sample_value(
                "feature_serving_router_parts_total", {"shard": "0"}
            )
            assert sent == 0  # no part was sent
        finally:
            router.guard.stop()
            await router.channels.close()
        off = FeatureRouter(registry, cluster, ServeSettings(no_auth=True, max_loop_lag_ms=0))
        assert off.guard is None
        await off.channels.close()

    asyncio.run(scenario())
