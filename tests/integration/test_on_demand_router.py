"""Request-time on-demand views through a router (issue 16 on a sharded cluster): the router
asks the shards for the view's stored inputs, which come from two views keyed by different
entities and so from different shards, runs the transform itself over the whole request and
answers every layout; the values are checked against the same arithmetic done here. A
transform error and bad request data are answered by the router as a node answers them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from serving import Registry
from serving.client import FeatureClient
from serving.cluster import ClusterMap
from serving.loaders.kafka import produce_rows
from tests.harness import Broker, Server, ShardedCluster, http
from tests.harness.polling import wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 4
SHARDS = 2
N_USERS = 200
ITEMS = [f"i{k}" for k in range(40)]
T = 1_700_000_000_000_000  # event time of every row (us)

TRANSFORMS = """
import pyarrow as pa, pyarrow.compute as pc

def fit(b):
    score = pc.add(pc.multiply(pc.cast(b["u0"], pa.float64()), b["budget"]), b["price"])
    return {"score": pc.cast(score, pa.float32()), "cheap": pc.less(b["price"], b["budget"])}

def broken(b):
    raise RuntimeError("model file missing")
"""


def registry_text(bootstrap: str) -> str:
    stream = f"type: kafka, bootstrap_servers: '{bootstrap}', format: json"
    return f"""
project: odfv_cluster
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
  - {{name: item, join_keys: [{{name: item_id, dtype: string}}]}}
feature_views:
  - name: users
    entities: [user]
    features: [{{name: u0, dtype: float32}}]
    stream_source: {{{stream}, topic: users}}
  - name: items
    entities: [item]
    features: [{{name: price, dtype: float64}}]
    stream_source: {{{stream}, topic: items}}
on_demand_feature_views:
  - name: fit
    sources: ["users:u0", "items:price"]
    request_source: {{schema: [{{name: budget, dtype: float64}}]}}
    features: [{{name: score, dtype: float32}}, {{name: cheap, dtype: bool}}]
    transform: odfv_router_tx:fit
  - name: broken
    sources: ["users:u0"]
    features: [{{name: x, dtype: float32}}]
    transform: odfv_router_tx:broken
feature_services:
  - name: ranking
    features: ["users:u0", "fit:*"]
"""


def u0(u: int) -> float:
    return (u % 50) / 4  # exact in float32


def price(k: int) -> float:
    return 1.5 * k


@pytest.fixture(scope="module")
def cluster(
    module_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    broker = module_broker
    tmp = tmp_path_factory.mktemp("odfv_router")
    (tmp / "odfv_router_tx.py").write_text(TRANSFORMS)
    broker.create_topic("items", PARTITIONS)
    with ShardedCluster(
        broker, tmp, registry_text(broker.bootstrap), n=N_USERS, partitions=PARTITIONS,
        shards=SHARDS,
    ) as c:  # fmt: skip
        reg = Registry.from_yaml(c.config)
        produce_rows(c.producer, reg.view("users"), [
            {"user_id": u, "event_timestamp": T, "u0": u0(u)} for u in range(N_USERS)
        ])  # fmt: skip
        produce_rows(c.producer, reg.view("items"), [
            {"item_id": i, "event_timestamp": T, "price": price(k)} for k, i in enumerate(ITEMS)
        ])  # fmt: skip
        nodes = [c.start(f"shard{k}", "--no-auth", *c.shard_flags(k)) for k in range(SHARDS)]
        cmap = tmp / "cluster.json"
        cmap.write_text(
            json.dumps(
                ClusterMap.from_dict({
                    "topic_partitions": PARTITIONS,
                    "shards": {
                        k: [{"grpc": f"127.0.0.1:{n.grpc}", "http": f"127.0.0.1:{n.http}"}]
                        for k, n in enumerate(nodes)
                    },
                }).to_dict()
            )
        )  # fmt: skip
        router = c.servers.cli(
            ["route", "--config", str(c.config), "--cluster-map", str(cmap), "--no-auth",
             "--route-probe-seconds", "0.2"],
            "router",
        )  # fmt: skip
        yield {"router": router, "nodes": nodes, "owner": c.owner}


#: one request: users of both shards, items of both shards, an unknown user and item
USERS = [3, 150, 7, 999, 42, 199]
ITEM_IDS = ["i1", "i30", "nope", "i2", "i39", "i0"]
BUDGET = [2.0, 0.5, 1.0, 3.0, 4.0, 100.0]


def expected() -> tuple[list[Any], list[Any]]:
    score: list[Any] = []
    cheap: list[Any] = []
    for u, i, b in zip(USERS, ITEM_IDS, BUDGET, strict=True):
        p = price(ITEMS.index(i)) if i in ITEMS else None
        x = u0(u) if u < N_USERS else None
        score.append(None if p is None or x is None else float(np.float32(x * b + p)))
        cheap.append(None if p is None else p < b)
    return score, cheap


def ask(router: Server, body: dict[str, Any]) -> tuple[int, Any]:
    return http(router.url + "/get-online-features", body, timeout=30)


def request(features: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "entities": {"user_id": USERS, "item_id": ITEM_IDS, "budget": BUDGET},
        **extra,
    }
    if features is not None:
        body["features"] = features
    return body


def caught_up(router: Server) -> None:
    """Waits until both shards answer every stored row of the request."""
    last: list[Any] = []

    def answered() -> bool:
        body = request(["users:u0", "items:price"])
        del body["entities"]["budget"]  # request data of no requested view is refused
        status, got = ask(router, body)
        last[:] = [status, got]
        return status == 200 and [r["statuses"].count("PRESENT") for r in got["results"][2:]] == [
            5,
            5,
        ]

    try:
        wait_until(answered, 60, "both shards caught up")
    except AssertionError as e:
        raise AssertionError(f"{e}; last answer: {last}") from None


def test_router_computes_the_view_over_inputs_from_both_shards(cluster: dict[str, Any]) -> None:
    router = cluster["router"]
    assert {cluster["owner"][u] for u in USERS if u < N_USERS} == {0, 1}
    caught_up(router)
    status, got = ask(router, request(["users:u0", "fit:score", "fit:cheap", "items:price"]))
    assert status == 200, got
    names = got["metadata"]["feature_names"]
    # request data is not answered, the join keys are (as a node answers)
    assert names == ["user_id", "item_id", "u0", "score", "cheap", "price"]
    cols = {n: r for n, r in zip(names, got["results"], strict=True)}
    score, cheap = expected()
    assert cols["score"]["values"] == score
    assert cols["cheap"]["values"] == cheap
    assert cols["score"]["statuses"] == ["NULL_VALUE" if v is None else "PRESENT" for v in score]
    assert cols["u0"]["statuses"][3] == "NOT_FOUND"


def test_router_answers_a_service_with_the_view_and_grpc_dense(cluster: dict[str, Any]) -> None:
    router = cluster["router"]
    caught_up(router)
    status, got = ask(router, request(feature_service="ranking"))
    assert status == 200, got
    score, cheap = expected()
    assert got["results"][3]["values"] == score
    with FeatureClient(f"127.0.0.1:{router.grpc}", timeout=10) as client:
        dense = client.get_dense(
            {"user_id": USERS, "item_id": ITEM_IDS},
            ["fit:score", "fit:cheap"],
            request_data={"budget": BUDGET},
        )
    want = np.array([[np.nan if s is None else s for s in score],
                     [np.nan if c is None else float(c) for c in cheap]], np.float32).T  # fmt: skip
    np.testing.assert_array_equal(dense.values, want)


def test_router_answers_transform_errors_and_bad_request_data(cluster: dict[str, Any]) -> None:
    router = cluster["router"]
    status, got = ask(router, {"features": ["broken:x"], "entities": {"user_id": USERS}})
    assert status == 500, got
    assert got["error"]["code"] == "transform_failed", got
    assert "broken" in got["error"]["message"]
    assert "model file missing" in got["error"]["message"]
    body = request(["fit:score"])
    body["entities"]["budget"] = ["a"] * len(USERS)
    status, got = ask(router, body)
    assert status == 400, got
    assert "request field 'budget'" in got["error"]["message"], got
    del body["entities"]["budget"]
    status, got = ask(router, body)
    assert status == 400, got
    assert "budget" in got["error"]["message"], got
    # the router goes on answering
    status, got = ask(router, request(["fit:score"]))
    assert status == 200, got
