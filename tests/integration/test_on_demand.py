"""On-demand feature views (issue 16) on a real server process: a request-time transform over
two views keyed by different entities plus request data, answered in every layout and checked
against the same arithmetic done here; pandas and pyarrow modes equal; write-time transforms
through the batch loader, push and the Kafka loader, surviving a restart; every error."""

from __future__ import annotations

import datetime as dt
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from serving import Registry, Store
from serving._proto.feast.serving import ServingService_pb2 as feast_pb2
from serving._proto.feast.types import Value_pb2
from serving.client import FeatureClient
from serving.errors import DeadlineExceededError
from serving.loaders.batch import materialize
from serving.loaders.kafka import PRODUCER_DEFAULTS, produce_deletes, produce_rows
from tests.harness import Broker, Server, Servers, http

pytestmark = pytest.mark.integration

TRANSFORMS = """
import pathlib, time
import pyarrow as pa, pyarrow.compute as pc

def fit(b):
    score = pc.add(pc.multiply(pc.cast(b["u0"], pa.float64()), b["boost"]), b["price"])
    return {
        "score": pc.cast(score, pa.float32()),
        "over_budget": pc.greater(b["price"], b["budget"]),
        "tag": pc.if_else(pc.greater(b["u1"], 0), "hi", "lo"),
    }

def fit_pandas(df):
    import pandas as pd
    out = pd.DataFrame()
    out["score"] = df.u0.astype("float64") * df.boost + df.price
    # pandas compares NaN as False: keep a missing price missing, as pyarrow does
    out["over_budget"] = (df.price > df.budget).where(df.price.notna())
    out["tag"] = [None if pd.isna(u) else ("hi" if u > 0 else "lo") for u in df.u1]
    return out

def sumdiff(b):
    return {"s": pc.add(b["u0"], b["u1"]), "d": pc.subtract(b["u0"], b["u1"])}

def offset():
    return {"offset": 100.0}

def derive(b, art):
    return {"total": pc.add(pc.add(pc.cast(b["u0"], pa.float64()), b["u1"]), art["offset"])}

def broken(b):
    raise ValueError("boom 17")

def no_column(b):
    return {"other": b["u0"]}

def wrong_type(b):
    return {"x": pc.cast(b["u0"], pa.int64())}

def wrong_length(b):
    return {"x": b["u0"].slice(0, 1)}

def slow(b):
    release = pathlib.Path(__file__).with_name("release")
    for _ in range(100):
        if release.exists():
            break
        time.sleep(0.05)
    return {"x": b["u0"]}
"""

REGISTRY = """
project: odfv
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
  - {name: item, join_keys: [{name: item_id, dtype: string}]}
feature_views:
  - name: users
    entities: [user]
    features: [{name: u0, dtype: float32}, {name: u1, dtype: float32}]
    batch_source: {type: parquet, path: users.parquet}
  - name: items
    entities: [item]
    features: [{name: price, dtype: float64}]
on_demand_feature_views:
  - name: fit
    sources: ["users:u0", "users:u1", "items:price"]
    request_source:
      schema: [{name: budget, dtype: float64}, {name: boost, dtype: int64}]
    features:
      - {name: score, dtype: float32}
      - {name: over_budget, dtype: bool}
      - {name: tag, dtype: string}
    transform: odfv_tx:fit
  - name: fit_pandas
    sources: ["users:u0", "users:u1", "items:price"]
    request_source:
      schema: [{name: budget, dtype: float64}, {name: boost, dtype: int64}]
    features:
      - {name: score, dtype: float32}
      - {name: over_budget, dtype: bool}
      - {name: tag, dtype: string}
    transform: odfv_tx:fit_pandas
    mode: pandas
  - name: sumdiff
    sources: ["users:*"]
    features: [{name: s, dtype: float32}, {name: d, dtype: float32}]
    transform: odfv_tx:sumdiff
  - name: derived
    sources: ["users:u0", "users:u1"]
    features: [{name: total, dtype: float64}]
    transform: odfv_tx:derive
    static_artifacts: odfv_tx:offset
    write_to_online_store: true
  - {name: broken, sources: ["users:u0"], features: [{name: x, dtype: float32}],
     transform: "odfv_tx:broken"}
  - {name: no_column, sources: ["users:u0"], features: [{name: x, dtype: float32}],
     transform: "odfv_tx:no_column"}
  - {name: wrong_type, sources: ["users:u0"], features: [{name: x, dtype: float32}],
     transform: "odfv_tx:wrong_type"}
  - {name: wrong_length, sources: ["users:u0"], features: [{name: x, dtype: float32}],
     transform: "odfv_tx:wrong_length"}
  - {name: slow, sources: ["users:u0"], features: [{name: x, dtype: float32}],
     transform: "odfv_tx:slow"}
feature_services:
  - name: ranking
    features: ["users:u0", "fit:*", "derived:total"]
"""

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
USERS = {1: (1.5, 2.0), 2: (-3.0, 0.5), 3: (4.0, -1.0)}  # user -> (u0, u1)
ITEMS = {"a": 10.0, "b": 0.25}
# one request: four rows over two entities; user 9 and item "zz" are not stored
REQ_USERS = [1, 2, 9, 3]
REQ_ITEMS = ["a", "b", "a", "zz"]
BUDGET = [12.0, 0.1, 5.0, 1.0]
BOOST = [2, 3, 1, 4]


def expected_fit() -> dict[str, list[Any]]:
    """The transform's arithmetic done here, with Feast's null semantics for missing inputs."""
    score: list[Any] = []
    over: list[Any] = []
    tag: list[Any] = []
    for u, i, b, k in zip(REQ_USERS, REQ_ITEMS, BUDGET, BOOST, strict=True):
        u0, u1 = USERS.get(u, (None, None))
        price = ITEMS.get(i)
        score.append(None if u0 is None or price is None else float(np.float32(u0 * k + price)))
        over.append(None if price is None else price > b)
        tag.append(None if u1 is None else ("hi" if u1 > 0 else "lo"))
    return {"score": score, "over_budget": over, "tag": tag}


def status_of(v: Any) -> str:
    return "NULL_VALUE" if v is None else "PRESENT"


def write_users(path: Path, users: dict[int, tuple[float, float]], t: dt.datetime) -> None:
    pq.write_table(
        pa.table({
            "user_id": pa.array(list(users), pa.int64()),
            "event_timestamp": pa.array([t] * len(users), pa.timestamp("us", tz="UTC")),
            "u0": pa.array([v[0] for v in users.values()], pa.float32()),
            "u1": pa.array([v[1] for v in users.values()], pa.float32()),
        }),
        path,
    )  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("odfv")
    (tmp / "odfv_tx.py").write_text(TRANSFORMS)
    config = tmp / "features.yaml"
    config.write_text(REGISTRY)
    write_users(tmp / "users.parquet", USERS, T0)
    # the batch loader writes users (and derives `derived` from them); items through Store.write
    with Store(tmp / "db", config) as store:
        materialize(store)
        store.write(
            "items",
            pa.table({
                "item_id": list(ITEMS),
                "event_timestamp": pa.array([T0] * len(ITEMS), pa.timestamp("us", tz="UTC")),
                "price": list(ITEMS.values()),
            }),
        )  # fmt: skip
    servers = Servers(tmp)
    try:
        node = servers.serve(config, "db", "--no-auth", "--transform-timeout-ms", "1500")
        yield {"tmp": tmp, "config": config, "servers": servers, "node": node}
    finally:
        servers.close()


def feast_http(server: Server, features: list[str], **extra: Any) -> tuple[int, Any]:
    entities = {"user_id": REQ_USERS, "item_id": REQ_ITEMS, "budget": BUDGET, "boost": BOOST}
    return server.post(
        "/get-online-features", {"features": features, "entities": entities, **extra}
    )


def columns(body: dict[str, Any]) -> dict[str, tuple[list[Any], list[str]]]:
    names = body["metadata"]["feature_names"]
    return {n: (r["values"], r["statuses"]) for n, r in zip(names, body["results"], strict=True)}


def test_feast_json_answers_the_transform_over_two_entities_and_request_data(
    env: dict[str, Any],
) -> None:
    status, body = feast_http(env["node"], ["users:u0", "fit:score", "fit:over_budget", "fit:tag"])
    assert status == 200, body
    got = columns(body)
    # request data is not answered (as in Feast); the join keys are
    assert list(got) == ["user_id", "item_id", "u0", "score", "over_budget", "tag"]
    want = expected_fit()
    for name in ("score", "over_budget", "tag"):
        assert got[name] == (want[name], [status_of(v) for v in want[name]]), name
    assert got["u0"][1] == ["PRESENT", "PRESENT", "NOT_FOUND", "PRESENT"]
    ts = body["results"][3]["event_timestamps"]
    assert ts == ["1970-01-01T00:00:00Z"] * 4  # on-demand outputs have no event time (Feast's)


def test_pandas_mode_gives_the_same_answer(env: dict[str, Any]) -> None:
    node = env["node"]
    _, arrow_body = feast_http(node, ["fit:score", "fit:over_budget", "fit:tag"])
    status, pandas_body = feast_http(
        node, ["fit_pandas:score", "fit_pandas:over_budget", "fit_pandas:tag"]
    )
    assert status == 200, pandas_body
    assert pandas_body["results"] == arrow_body["results"]


def test_feast_grpc_with_request_context(env: dict[str, Any]) -> None:
    req = feast_pb2.GetOnlineFeaturesRequest()
    req.features.val.extend(["fit:score", "fit:tag"])
    req.entities["user_id"].val.extend([Value_pb2.Value(int64_val=u) for u in REQ_USERS])
    req.entities["item_id"].val.extend([Value_pb2.Value(string_val=i) for i in REQ_ITEMS])
    req.request_context["budget"].val.extend([Value_pb2.Value(double_val=b) for b in BUDGET])
    req.request_context["boost"].val.extend([Value_pb2.Value(int64_val=b) for b in BOOST])
    with env["node"].channel() as ch:
        call = ch.unary_unary(
            "/feast.serving.ServingService/GetOnlineFeatures",
            request_serializer=feast_pb2.GetOnlineFeaturesRequest.SerializeToString,
            response_deserializer=feast_pb2.GetOnlineFeaturesResponse.FromString,
        )
        resp = call(req, timeout=10)
    names = list(resp.metadata.feature_names.val)
    assert names == ["user_id", "item_id", "score", "tag"] or names[2:] == ["score", "tag"]
    want = expected_fit()
    score = resp.results[names.index("score")]
    got = [v.float_val if v.HasField("float_val") else None for v in score.values]
    assert got == want["score"]
    want_status = [feast_pb2.PRESENT if v is not None else feast_pb2.NULL_VALUE for v in got]
    assert list(score.statuses) == want_status
    tag = resp.results[names.index("tag")]
    assert [v.string_val if v.HasField("string_val") else None for v in tag.values] == want["tag"]


def test_v1_columns_and_dense_with_request_data(env: dict[str, Any]) -> None:
    node = env["node"]
    entities = {"user_id": REQ_USERS, "item_id": REQ_ITEMS}
    request_data = {"budget": BUDGET, "boost": BOOST}
    status, body = node.post(
        "/v1/feature-vector",
        {"features": ["fit:score", "fit:tag"], "entities": entities, "request_data": request_data,
         "include_statuses": True},
    )  # fmt: skip
    assert status == 200, body
    want = expected_fit()
    assert body["columns"][0]["values"] == want["score"]
    assert body["columns"][0]["statuses"] == [status_of(v) for v in want["score"]]
    assert body["columns"][1]["values"] == want["tag"]
    status, body = node.post(
        "/v1/feature-vector",
        {"features": ["fit:score", "fit:over_budget", "users:u1"], "entities": entities,
         "request_data": request_data, "layout": "dense"},
    )  # fmt: skip
    assert status == 200, body
    rows = body["dense"]["values"]
    assert [r[0] for r in rows] == want["score"]
    assert [r[1] for r in rows] == [None if v is None else float(v) for v in want["over_budget"]]


def test_grpc_dense_of_a_transform_over_stored_features_only(env: dict[str, Any]) -> None:
    with FeatureClient(f"127.0.0.1:{env['node'].grpc}") as client:
        m = client.get_dense({"user_id": [1, 2, 9]}, features=["sumdiff:s", "sumdiff:d"])
    assert m.values.shape == (2 + 1, 2)
    assert m.values[:2].tolist() == [[3.5, -0.5], [-2.5, -3.5]]
    assert np.isnan(m.values[2]).all()


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_python_client_sends_request_data(env: dict[str, Any], transport: str) -> None:
    target = f"127.0.0.1:{env['node'].grpc}" if transport == "grpc" else env["node"].url
    with FeatureClient(target, transport=transport, timeout=10) as client:
        cols = client.get_features(
            {"user_id": REQ_USERS, "item_id": REQ_ITEMS},
            ["fit:score", "fit:tag"],
            request_data={"budget": np.array(BUDGET), "boost": BOOST},
        )
        dense = client.get_dense(
            {"user_id": REQ_USERS, "item_id": REQ_ITEMS},
            ["fit:score"],
            request_data={"budget": BUDGET, "boost": np.array(BOOST)},
        )
    want = expected_fit()
    tags = [t if st == 1 else None for t, st in zip(cols.columns["fit:tag"], cols.statuses[:, 1],
                                                      strict=True)]  # fmt: skip
    assert tags == want["tag"]
    score = [None if np.isnan(x) else float(x) for x in dense.values[:, 0]]
    assert score == want["score"]


def test_feature_service_with_on_demand_and_write_time_outputs(env: dict[str, Any]) -> None:
    entities = {"user_id": REQ_USERS, "item_id": REQ_ITEMS, "budget": BUDGET, "boost": BOOST}
    status, body = env["node"].post(
        "/get-online-features", {"feature_service": "ranking", "entities": entities}
    )
    assert status == 200, body
    got = columns(body)
    assert got["score"][0] == expected_fit()["score"]
    # write-time: derived from users when the batch loader wrote them (offset 100 from the
    # static artifacts), stored, served with the source rows' event time
    assert got["total"] == ([103.5, 97.5, None, 103.0], ["PRESENT"] * 2 + ["NOT_FOUND", "PRESENT"])
    assert body["results"][list(got).index("total")]["event_timestamps"][0] == (
        "2026-01-01T00:00:00Z"
    )


def test_write_time_through_push_and_after_a_restart(env: dict[str, Any]) -> None:
    servers: Servers = env["servers"]
    node: Server = env["node"]
    rows = {"user_id": [1, 4], "event_timestamp": ["2026-02-01T00:00:00Z"] * 2,
            "u0": [10.0, 1.0], "u1": [20.0, 2.0]}  # fmt: skip
    status, body = node.post("/v1/push", {"feature_view": "users", "rows": rows})
    assert status == 200, body
    # an older row for user 4 changes neither the source nor the derived view
    old = {"user_id": [4], "event_timestamp": ["2025-01-01T00:00:00Z"], "u0": [0.0], "u1": [0.0]}
    assert node.post("/v1/push", {"feature_view": "users", "rows": old})[0] == 200

    def totals(server: Server) -> list[Any]:
        status, body = server.post(
            "/get-online-features",
            {"features": ["derived:total"], "entities": {"user_id": [1, 4, 3]}},
        )
        assert status == 200, body
        return body["results"][1]["values"]  # type: ignore[no-any-return]

    assert totals(node) == [130.0, 103.0, 103.0]
    servers.stop(node)
    again = servers.serve(env["config"], "db", "--no-auth", "--transform-timeout-ms", "1500")
    env["node"] = again
    assert totals(again) == [130.0, 103.0, 103.0]


def test_transform_errors_are_500_naming_the_view_and_counted(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    for view, words in (
        ("broken", ["broken", "ValueError", "boom 17"]),
        ("no_column", ["no_column", "no column 'x'"]),
        ("wrong_type", ["wrong_type", "column 'x'", "int64", "float32"]),
        ("wrong_length", ["wrong_length", "1 rows", "4 entities"]),
    ):
        status, body = node.post(
            "/get-online-features", {"features": [f"{view}:x"], "entities": {"user_id": REQ_USERS}}
        )
        assert status == 500, (view, body)
        assert body["error"]["code"] == "transform_failed"
        for w in words:
            assert w in body["error"]["message"], (view, w, body)
        assert body["detail"] == body["error"]["message"]
    # the server goes on
    assert feast_http(node, ["fit:score"])[0] == 200
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'feature_serving_transform_errors_total{view="broken"} 1.0' in text
    assert 'feature_serving_transform_duration_seconds_count{view="fit"}' in text


def test_bad_request_data_is_400_naming_the_field(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    entities: dict[str, Any] = {"user_id": [1, 2], "item_id": ["a", "b"], "boost": [1, 2]}
    status, body = node.post(
        "/get-online-features", {"features": ["fit:score"], "entities": entities}
    )
    assert status == 400, body
    assert "missing request field 'budget'" in body["error"]["message"]
    assert "'fit'" in body["error"]["message"]
    entities["budget"] = ["cheap", "dear"]
    status, body = node.post(
        "/get-online-features", {"features": ["fit:score"], "entities": entities}
    )
    assert status == 400, body
    msg = body["error"]["message"]
    for words in ("request field 'budget'", "float64", '"cheap"'):
        assert words in msg, msg
    entities["budget"] = [1.0, 2.0]
    entities["boost"] = [1.5, 2]
    status, body = node.post(
        "/get-online-features", {"features": ["fit:score"], "entities": entities}
    )
    assert status == 400, body
    assert "request field 'boost'" in body["error"]["message"]
    # a float column that no on-demand view takes is still an error about a join key
    status, body = node.post(
        "/get-online-features",
        {"features": ["users:u0"], "entities": {"user_id": [1], "junk": [0.5]}},
    )
    assert status == 400, body
    assert "'junk'" in body["error"]["message"]


def test_slow_transform_is_a_deadline_and_does_not_hold_up_others(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    release = env["tmp"] / "release"
    result: list[Any] = []
    slow = threading.Thread(
        target=lambda: result.append(
            node.post(
                "/get-online-features",
                {"features": ["slow:x"], "entities": {"user_id": [1]}},
            )
        )
    )
    try:
        slow.start()
        time.sleep(0.2)
        status, _ = feast_http(node, ["fit:score"])
        assert status == 200
        assert slow.is_alive()  # the slow transform still runs: the loop was not held up
        slow.join(timeout=10)
        ((status, body),) = result
        assert status == 504, body
        assert "slow" in body["error"]["message"]
        assert "1500 ms" in body["error"]["message"]
    finally:
        release.write_text("")
        slow.join(timeout=10)


def test_grpc_deadline_is_deadline_exceeded(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    release = env["tmp"] / "release"
    release.unlink(missing_ok=True)
    try:
        with (
            FeatureClient(f"127.0.0.1:{node.grpc}", timeout=0.5) as client,
            pytest.raises(DeadlineExceededError),
        ):
            client.get_features({"user_id": [1]}, features=["slow:x"])
    finally:
        release.write_text("")


def test_write_time_through_the_kafka_loader(
    broker: Broker, tmp_path: Path, servers: Servers
) -> None:
    (tmp_path / "odfv_tx.py").write_text(TRANSFORMS)
    config = tmp_path / "features.yaml"
    config.write_text(f"""
project: odfv_kafka
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: users
    entities: [user]
    features: [{{name: u0, dtype: float32}}, {{name: u1, dtype: float32}}]
    stream_source: {{type: kafka, topic: users, bootstrap_servers: "{broker.bootstrap}"}}
on_demand_feature_views:
  - name: derived
    sources: ["users:u0", "users:u1"]
    features: [{{name: total, dtype: float64}}]
    transform: odfv_tx:derive
    static_artifacts: odfv_tx:offset
    write_to_online_store: true
""")
    broker.create_topic("users", 1)
    view = Registry.from_yaml(config).view("users")
    producer = Producer({"bootstrap.servers": broker.bootstrap, **PRODUCER_DEFAULTS})
    t_us = 1_767_225_600_000_000
    produce_rows(producer, view, [
        {"user_id": 1, "event_timestamp": t_us, "u0": 1.0, "u1": 2.0},
        {"user_id": 2, "event_timestamp": t_us, "u0": 5.0, "u1": 5.0},
    ])  # fmt: skip
    node = servers.serve(config, "db", "--no-auth")

    def totals(server: Server) -> list[Any]:
        deadline = time.monotonic() + 20
        while True:
            status, body = http(
                server.url + "/get-online-features",
                {"features": ["derived:total"], "entities": {"user_id": [1, 2]}},
            )
            assert status == 200, body
            values = body["results"][1]["values"]
            if None not in values or time.monotonic() > deadline:
                return values  # type: ignore[no-any-return]
            time.sleep(0.1)

    assert totals(node) == [103.0, 110.0]
    # a tombstone for user 2 removes its derived row too
    produce_deletes(producer, view, [(2,)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, body = http(
            node.url + "/get-online-features",
            {"features": ["derived:total"], "entities": {"user_id": [2]}},
        )
        if body["results"][1]["statuses"] == ["NOT_FOUND"]:
            break
        time.sleep(0.1)
    assert body["results"][1]["statuses"] == ["NOT_FOUND"], body
    servers.stop(node)
    again = servers.serve(config, "db", "--no-auth")
    _status, body = http(
        again.url + "/get-online-features",
        {"features": ["derived:total"], "entities": {"user_id": [1, 2]}},
    )
    assert body["results"][1]["values"] == [103.0, None], body
