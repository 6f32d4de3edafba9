"""Served-feature logging (issue 19) on a real server process writing real Delta / Parquet files
and a real Kafka topic: every served row of a logged service appears with the values, statuses
and timestamps the caller got, in all four APIs, on-demand outputs and request data included;
sampling; a full buffer drops and counts without slowing requests; a failing destination
keeps serving, says so and catches up; graceful shutdown flushes; kill -9 loses at most the
documented interval; ``logs export`` joins labels."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from serving import Store
from serving._proto.feast.serving import ServingService_pb2 as feast_pb2
from serving._proto.feast.types import Value_pb2
from serving._proto.feature_serving.v1 import feature_service_pb2 as v1_pb2
from serving.feature_log.writer import TICK_S
from tests.harness import Broker, Server, Servers, metric, run_cli, scrape, wait_until

pytestmark = pytest.mark.integration

TRANSFORMS = """
import pyarrow as pa, pyarrow.compute as pc

def fit(b):
    return {
        "score": pc.cast(pc.add(pc.cast(b["u0"], pa.float64()), b["budget"]), pa.float32()),
        "tag": pc.if_else(pc.greater(b["price"], 1.0), "dear", "cheap"),
    }
"""

REGISTRY = """
project: flog
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
  - {name: item, join_keys: [{name: item_id, dtype: string}]}
feature_views:
  - name: users
    entities: [user]
    ttl: 1d
    features: [{name: u0, dtype: float32}, {name: u1, dtype: int64}, {name: name, dtype: string}]
  - name: items
    entities: [item]
    features: [{name: price, dtype: float64}]
on_demand_feature_views:
  - name: fit
    sources: ["users:u0", "items:price"]
    request_source:
      schema: [{name: budget, dtype: float64}]
    features: [{name: score, dtype: float32}, {name: tag, dtype: string}]
    transform: flog_tx:fit
feature_services:
  - name: ranking
    features: ["users:*", "items:price", "fit:*"]
    logging:
      sample_rate: 1.0
      destination: {type: delta, path: logs/ranking}
      flush_interval_seconds: 0.3
  - name: sampled
    features: ["users:u0"]
    logging:
      sample_rate: 0.1
      destination: {type: parquet, path: logs/sampled}
      flush_interval_seconds: 0.3
  - name: plain
    features: ["users:u0"]
"""

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
T_USERS = NOW - dt.timedelta(hours=1)
T_OLD = NOW - dt.timedelta(days=3)  # outside users' 1-day TTL
T_ITEMS = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
USERS = {1: (1.5, 7, "ann"), 2: (-3.0, -2, "bob"), 4: (0.25, 1, "old")}  # 4 is expired
ITEMS = {"a": 10.0, "b": 0.5}
REQ_USERS = [1, 2, 9, 4]
REQ_ITEMS = ["a", "b", "a", "zz"]
BUDGET = [2.0, 0.5, 1.0, 4.0]
STATUS = {"PRESENT": 1, "NULL_VALUE": 2, "NOT_FOUND": 3, "OUTSIDE_MAX_AGE": 4}


def ts_col(ts: list[dt.datetime]) -> pa.Array:
    return pa.array(ts, pa.timestamp("us", tz="UTC"))


def us(t: dt.datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def setup_store(tmp: Path, registry: str = REGISTRY) -> Path:
    (tmp / "flog_tx.py").write_text(TRANSFORMS)
    config = tmp / "features.yaml"
    config.write_text(registry)
    with Store(tmp / "db", config) as store:
        store.write(
            "users",
            pa.table({
                "user_id": pa.array(list(USERS), pa.int64()),
                "event_timestamp": ts_col([T_USERS, T_USERS, T_OLD]),
                "u0": pa.array([v[0] for v in USERS.values()], pa.float32()),
                "u1": pa.array([v[1] for v in USERS.values()], pa.int64()),
                "name": [v[2] for v in USERS.values()],
            }),
        )  # fmt: skip
        store.write(
            "items",
            pa.table({
                "item_id": list(ITEMS),
                "event_timestamp": ts_col([T_ITEMS] * len(ITEMS)),
                "price": list(ITEMS.values()),
            }),
        )  # fmt: skip
    return config


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("flog")
    config = setup_store(tmp)
    servers = Servers(tmp)
    try:
        node = servers.serve(config, "db", "--no-auth")
        yield {"tmp": tmp, "config": config, "servers": servers, "node": node}
    finally:
        servers.close()


# -- the four APIs, each answer made into {column: [(value, status, event time us)]} ------------


Answer = dict[str, list[tuple[Any, int, int]]]


def post(server: Server, path: str, body: Any, rid: str | None) -> tuple[dict[str, Any], str]:
    headers = {"Content-Type": "application/json"}
    if rid is not None:
        headers["X-Request-Id"] = rid
    req = urllib.request.Request(server.url + path, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read()), r.headers["X-Request-Id"]


def rfc3339_us(text: str) -> int:
    return us(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))


def feast_http(server: Server, rid: str | None) -> tuple[Answer, str]:
    entities = {"user_id": REQ_USERS, "item_id": REQ_ITEMS, "budget": BUDGET}
    body = {"feature_service": "ranking", "entities": entities, "full_feature_names": True}
    out, got_rid = post(server, "/get-online-features", body, rid)
    names = out["metadata"]["feature_names"]
    ans: Answer = {}
    for name, r in zip(names, out["results"], strict=True):
        ans[name] = [
            (v, STATUS[s], rfc3339_us(t))
            for v, s, t in zip(r["values"], r["statuses"], r["event_timestamps"], strict=True)
        ]
    return ans, got_rid


def v1_http(server: Server, rid: str | None) -> tuple[Answer, str]:
    body = {
        "feature_service": "ranking",
        "entities": {"user_id": REQ_USERS, "item_id": REQ_ITEMS},
        "request_data": {"budget": BUDGET},
        "include_statuses": True,
        "include_event_timestamps": True,
    }
    out, got_rid = post(server, "/v1/feature-vector", body, rid)
    ans: Answer = {}
    for name, c in zip(out["feature_names"], out["columns"], strict=True):
        ans[name.replace(":", "__")] = [
            (v, STATUS[s], t)
            for v, s, t in zip(c["values"], c["statuses"], c["event_timestamps"], strict=True)
        ]
    return ans, got_rid


def grpc_call(
    server: Server, method: str, req: Any, resp_type: Any, rid: str | None
) -> tuple[Any, str]:
    with server.channel() as ch:
        call = ch.unary_unary(
            method,
            request_serializer=type(req).SerializeToString,
            response_deserializer=resp_type.FromString,
        )
        md = (("x-request-id", rid),) if rid is not None else ()
        resp, info = call.with_call(req, timeout=10, metadata=md)
    trailing = dict(info.trailing_metadata() or ())
    return resp, trailing["x-request-id"]


def feast_value(v: Value_pb2.Value) -> Any:
    kind = v.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(v, kind)


def feast_grpc(server: Server, rid: str | None) -> tuple[Answer, str]:
    req = feast_pb2.GetOnlineFeaturesRequest(feature_service="ranking", full_feature_names=True)
    req.entities["user_id"].val.extend([Value_pb2.Value(int64_val=u) for u in REQ_USERS])
    req.entities["item_id"].val.extend([Value_pb2.Value(string_val=i) for i in REQ_ITEMS])
    req.request_context["budget"].val.extend([Value_pb2.Value(double_val=b) for b in BUDGET])
    resp, got_rid = grpc_call(
        server,
        "/feast.serving.ServingService/GetOnlineFeatures",
        req,
        feast_pb2.GetOnlineFeaturesResponse,
        rid,
    )
    ans: Answer = {}
    for name, r in zip(resp.metadata.feature_names.val, resp.results, strict=True):
        ans[name] = [
            (feast_value(v), int(s), t.seconds * 1_000_000 + t.nanos // 1000)
            for v, s, t in zip(r.values, r.statuses, r.event_timestamps, strict=True)
        ]
    return ans, got_rid


def v1_grpc(server: Server, rid: str | None) -> tuple[Answer, str]:
    req = v1_pb2.GetFeatureVectorRequest(
        feature_service="ranking", include_statuses=True, include_event_timestamps=True
    )
    req.entities["user_id"].int64_values.values.extend(REQ_USERS)
    req.entities["item_id"].string_values.values.extend(REQ_ITEMS)
    req.request_data["budget"].double_values.values.extend(BUDGET)
    resp, got_rid = grpc_call(
        server,
        "/feature_serving.v1.FeatureService/GetFeatureVector",
        req,
        v1_pb2.GetFeatureVectorResponse,
        rid,
    )
    ans: Answer = {}
    for name, c in zip(resp.feature_names, resp.columns, strict=True):
        kind = c.WhichOneof("values")
        values = list(getattr(c, kind).values)
        statuses = list(c.statuses)
        ans[name.replace(":", "__")] = [
            (v if s == 1 else None, s, t)
            for v, s, t in zip(values, statuses, c.event_timestamps, strict=True)
        ]
    return ans, got_rid


API_CALLS = {"feast_http": feast_http, "v1_http": v1_http, "feast_grpc": feast_grpc,
             "v1_grpc": v1_grpc}  # fmt: skip


# -- reading the logs ---------------------------------------------------------------------------


def delta_rows(path: Path) -> pa.Table:
    if not (path / "_delta_log").is_dir():
        return pa.table({"__request_id": pa.array([], pa.string())})
    return DeltaTable(str(path)).to_pyarrow_table()


def logged(path: Path, rid: str) -> list[dict[str, Any]]:
    t = delta_rows(path)
    t = t.filter(pc.equal(t.column("__request_id"), rid))
    # timestamps as integer microseconds, as the APIs give them
    for i, f in enumerate(t.schema):
        if pa.types.is_timestamp(f.type):
            t = t.set_column(i, f.name, pc.cast(t.column(i), pa.int64()))
    return t.to_pylist()


def wait_logged(path: Path, rid: str, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def enough() -> bool:
        nonlocal rows
        rows = logged(path, rid)
        return len(rows) >= n

    wait_until(enough, timeout, f"{n} logged rows of request {rid}")
    return rows


def same_value(got: Any, logged_value: Any) -> bool:
    if isinstance(got, float) or isinstance(logged_value, float):
        return (
            got is not None
            and logged_value is not None
            and np.float32(got) == np.float32(logged_value)
        )
    return bool(got == logged_value)


@pytest.mark.parametrize("api", list(API_CALLS))
def test_every_served_row_is_logged_with_what_the_caller_got(env: dict[str, Any], api: str) -> None:
    rid = f"req-{api}-{time.time_ns()}"
    answer, got_rid = API_CALLS[api](env["node"], rid)
    assert got_rid == rid, "the caller's request id comes back"
    rows = wait_logged(env["tmp"] / "logs" / "ranking", rid, len(REQ_USERS))
    assert len(rows) == len(REQ_USERS), "one row per entity, each once"
    by_key = {(r["user_id"], r["item_id"]): r for r in rows}
    assert set(by_key) == set(zip(REQ_USERS, REQ_ITEMS, strict=True))
    feature_cols = [c for c in answer if "__" in c]
    assert sorted(feature_cols) == sorted(
        ["users__u0", "users__u1", "users__name", "items__price", "fit__score", "fit__tag"]
    )
    for e, key in enumerate(zip(REQ_USERS, REQ_ITEMS, strict=True)):
        row = by_key[key]
        assert row["budget"] == BUDGET[e], "request data of the on-demand view is logged"
        assert (
            row["__log_timestamp"] // 86_400_000_000
            == (row["__log_date"] - dt.date(1970, 1, 1)).days
        )
        for col in feature_cols:
            value, status, ts = answer[col][e]
            assert row[f"{col}__status"] == status, (api, col, e)
            assert row[f"{col}__timestamp"] == ts, (api, col, e)
            if status == 1:
                assert same_value(value, row[col]), (api, col, e, value, row[col])
            else:
                assert row[col] is None, (api, col, e)
    # the statuses the request was built to show: present, missing, expired
    assert {r["users__u0__status"] for r in rows} == {1, 3, 4}


def test_a_request_without_an_id_gets_one_and_it_is_logged(env: dict[str, Any]) -> None:
    _, rid = feast_http(env["node"], None)
    assert len(rid) == 32
    assert int(rid, 16) >= 0
    rows = wait_logged(env["tmp"] / "logs" / "ranking", rid, len(REQ_USERS))
    assert {r["__request_id"] for r in rows} == {rid}


def test_feature_references_and_unlogged_services_are_not_logged(env: dict[str, Any]) -> None:
    node = env["node"]
    rid = f"refs-{time.time_ns()}"
    post(node, "/get-online-features",
         {"features": ["users:u0"], "entities": {"user_id": [1]}}, rid)  # fmt: skip
    rid2 = f"plain-{time.time_ns()}"
    post(node, "/get-online-features",
         {"feature_service": "plain", "entities": {"user_id": [1]}}, rid2)  # fmt: skip
    # a later logged request's rows arriving shows the writer passed the earlier ones
    _, mrid = feast_http(node, None)
    wait_logged(env["tmp"] / "logs" / "ranking", mrid, len(REQ_USERS))
    assert logged(env["tmp"] / "logs" / "ranking", rid) == []
    assert logged(env["tmp"] / "logs" / "ranking", rid2) == []
    assert not (env["tmp"] / "logs" / "plain").exists()


def test_sampling_logs_a_tenth_of_the_requests(env: dict[str, Any]) -> None:
    node = env["node"]
    n = 1500
    prefix = f"s{time.time_ns()}-"
    body = {"feature_service": "sampled", "entities": {"user_id": [1, 2]}}
    for i in range(n):
        post(node, "/get-online-features", body, f"{prefix}{i}")
    path = env["tmp"] / "logs" / "sampled"

    def read() -> pa.Table:
        t = ds.dataset(path, format="parquet").to_table()
        return t.filter(pc.starts_with(t.column("__request_id"), prefix))

    def stats() -> dict[str, Any]:
        with urllib.request.urlopen(node.url + "/readyz", timeout=5) as r:
            return dict(json.loads(r.read())["feature_logging"]["sampled"])

    wait_until(lambda: stats()["buffered_rows"] == 0, 10, "the sampled log flushed")
    time.sleep(4 * TICK_S)
    t = read()
    ids = t.column("__request_id").to_pylist()
    k = len(set(ids))
    # binomial(1500, 0.1): mean 150, sd 11.6; 5 sd either side (a false failure ~1e-6)
    assert 92 <= k <= 208, k
    assert len(ids) == 2 * k, "a sampled request is logged whole"
    assert t.column("users__u0").to_pylist().count(1.5) == k


def test_metrics_and_readyz_show_the_log(env: dict[str, Any]) -> None:
    node = env["node"]
    feast_http(node, None)
    text = scrape(node.url)
    assert metric(text, "feature_serving_feature_log_rows_total", service="ranking") >= 4
    assert metric(
        text, "feature_serving_feature_log_dropped_rows_total", service="ranking",
        reason="buffer_full",
    ) == 0  # fmt: skip
    with urllib.request.urlopen(node.url + "/readyz", timeout=5) as r:
        body = json.loads(r.read())
    dests = body["feature_logging"]["ranking"]["destinations"]
    (name,) = dests
    assert name.startswith("delta:")
    assert dests[name]["ok"] is True


# -- destinations that fail or stall -------------------------------------------------------------


def one_service(dest: str, **extra: Any) -> str:
    opts = "".join(f"\n      {k}: {v}" for k, v in extra.items())
    return REGISTRY.split("feature_services:", maxsplit=1)[0] + (
        'feature_services:\n  - name: ranking\n    features: ["users:*"]\n    logging:\n'
        f"      sample_rate: 1.0\n      destination: {dest}{opts}\n"
    )


def readyz(node: Server) -> dict[str, Any]:
    with urllib.request.urlopen(node.url + "/readyz", timeout=5) as r:
        assert r.status == 200, "a failing log destination does not make the node unready"
        return dict(json.loads(r.read()))


def user_request(node: Server, rid: str) -> float:
    t0 = time.perf_counter()
    post(node, "/get-online-features",
         {"feature_service": "ranking", "entities": {"user_id": [1, 2]}}, rid)  # fmt: skip
    return time.perf_counter() - t0


@pytest.mark.slow
def test_a_failing_destination_keeps_serving_retries_and_catches_up(
    tmp_path: Path, servers: Servers
) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the table's folder should be")
    config = setup_store(
        tmp_path, one_service("{type: delta, path: logs/ranking}", flush_interval_seconds=0.2)
    )
    node = servers.serve(config, "db", "--no-auth")
    for i in range(5):
        user_request(node, f"fail-{i}")

    def failing() -> bool:
        d = next(iter(readyz(node)["feature_logging"]["ranking"]["destinations"].values()))
        return d["write_errors"] >= 2 and d["ok"] is False and d["pending_rows"] == 10

    wait_until(failing, 15, "write errors shown in /readyz")
    text = scrape(node.url)
    assert metric(text, "feature_serving_feature_log_write_errors_total", service="ranking",
                  destination=f"delta:{tmp_path / 'logs' / 'ranking'}") >= 2  # fmt: skip
    blocker.unlink()  # the disk is back: the retry (with back-off) writes what waited
    user_request(node, "after")
    wait_until(lambda: len(delta_rows(tmp_path / "logs" / "ranking")) == 12, 40, "caught up")
    d = next(iter(readyz(node)["feature_logging"]["ranking"]["destinations"].values()))
    assert d["ok"] is True
    assert (d["pending_rows"], d["written_rows"]) == (0, 12)


@pytest.mark.slow
def test_a_full_buffer_drops_and_counts_instead_of_slowing_requests(
    tmp_path: Path, servers: Servers
) -> None:
    # Kafka at a port nobody listens on: each write waits out the delivery timeout (10 s),
    # the writer is stalled, and the 20-row buffer fills.
    from tests.harness import free_port

    dest = f"{{type: kafka, topic: served, bootstrap_servers: '127.0.0.1:{free_port()}'}}"
    config = setup_store(tmp_path, one_service(dest, flush_interval_seconds=0.1, buffer_rows=20))
    node = servers.serve(config, "db", "--no-auth")
    user_request(node, "first")
    time.sleep(1.0)  # the writer took the first rows and is now stuck delivering them
    took = [user_request(node, f"r{i}") for i in range(200)]
    # while the writer is stuck for seconds, no request waits for it
    assert max(took) < 1.0, max(took)
    text = scrape(node.url)
    dropped = metric(text, "feature_serving_feature_log_dropped_rows_total", service="ranking",
                     reason="buffer_full")  # fmt: skip
    appended = metric(text, "feature_serving_feature_log_rows_total", service="ranking")
    assert appended + dropped == 2 * 201
    assert dropped >= 2 * 200 - 20, (appended, dropped)
    st = readyz(node)["feature_logging"]["ranking"]
    assert st["dropped_rows_buffer_full"] == dropped


# -- shutdown and crashes ------------------------------------------------------------------------


@pytest.mark.slow
def test_graceful_shutdown_flushes_the_buffer(tmp_path: Path, servers: Servers) -> None:
    # a flush interval longer than the test: only the shutdown flush can write the rows
    config = setup_store(
        tmp_path, one_service("{type: parquet, path: logs/ranking}", flush_interval_seconds=600)
    )
    node = servers.serve(config, "db", "--no-auth")
    for i in range(7):
        user_request(node, f"g{i}")
    assert not (tmp_path / "logs" / "ranking").exists()
    assert servers.stop(node) == 0
    day = NOW.date().isoformat()
    assert [p.name for p in (tmp_path / "logs" / "ranking").iterdir()] == [day]
    t = ds.dataset(tmp_path / "logs" / "ranking", format="parquet").to_table()
    assert sorted(set(t.column("__request_id").to_pylist())) == [f"g{i}" for i in range(7)]
    assert t.num_rows == 14


@pytest.mark.slow
def test_kill_9_loses_at_most_the_flush_interval(tmp_path: Path, servers: Servers) -> None:
    interval = 0.5
    config = setup_store(
        tmp_path,
        one_service("{type: delta, path: logs/ranking}", flush_interval_seconds=interval),
    )
    node = servers.serve(config, "db", "--no-auth")
    answered: list[tuple[str, float]] = []
    t_end = time.monotonic() + 3.0
    i = 0
    while time.monotonic() < t_end:
        user_request(node, f"k{i}")
        answered.append((f"k{i}", time.monotonic()))
        i += 1
    node.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    node.proc.wait()
    servers.started.remove(node)
    got = set(delta_rows(tmp_path / "logs" / "ranking").column("__request_id").to_pylist())
    # the documented bound: rows answered within flush_interval_seconds + one writer tick +
    # one write (a commit here takes well under a second) of the crash may be lost
    bound = interval + TICK_S + 1.0
    must = [rid for rid, t in answered if t < killed - bound]
    missing = [rid for rid in must if rid not in got]
    assert not missing, f"{len(missing)} requests answered > {bound} s before kill -9 lost"
    assert len(got) > len(answered) // 2


# -- Kafka, against the real broker -------------------------------------------------------------


@pytest.mark.slow
def test_kafka_destination_gets_one_json_message_per_row_keyed_by_request_id(
    tmp_path: Path, servers: Servers, broker: Broker
) -> None:
    broker.create_topic("served_features", partitions=2)
    dest = (
        "[{type: delta, path: logs/ranking}, {type: kafka, topic: served_features, "
        f"bootstrap_servers: '{broker.bootstrap}'}}]"
    )
    config = setup_store(tmp_path, one_service(dest, flush_interval_seconds=0.2))
    node = servers.serve(config, "db", "--no-auth")
    rids = [f"kafka-{i}" for i in range(5)]
    for rid in rids:
        user_request(node, rid)
    msgs = broker.read_all("served_features", expected=10)
    assert len(msgs) == 10
    rows = [json.loads(m.value()) for m in msgs]
    assert sorted({m.key().decode() for m in msgs}) == rids
    assert all(m.key().decode() == r["__request_id"] for m, r in zip(msgs, rows, strict=True))
    # the same rows as the Delta table, field by field
    wait_until(lambda: len(delta_rows(tmp_path / "logs" / "ranking")) == 10, 15, "delta rows")
    table = delta_rows(tmp_path / "logs" / "ranking").to_pylist()
    by_key = {(r["__request_id"], r["user_id"]): r for r in table}
    for r in rows:
        want = by_key[(r["__request_id"], r["user_id"])]
        assert r["users__u0"] == want["users__u0"]
        assert r["users__name"] == want["users__name"]
        assert r["users__u0__status"] == want["users__u0__status"]
        ts = dt.datetime.fromisoformat(r["users__u0__timestamp"].replace("Z", "+00:00"))
        assert ts == want["users__u0__timestamp"]
        assert r["__log_date"] == want["__log_date"].isoformat()


# -- logs export --------------------------------------------------------------------------------


@pytest.mark.slow
def test_logs_export_joins_labels_by_request_id_and_as_of_time(
    tmp_path: Path, servers: Servers
) -> None:
    config = setup_store(
        tmp_path, one_service("{type: delta, path: logs/ranking}", flush_interval_seconds=0.2)
    )
    node = servers.serve(config, "db", "--no-auth")
    for rid in ("e1", "e2"):
        user_request(node, rid)
    wait_until(lambda: len(delta_rows(tmp_path / "logs" / "ranking")) == 4, 15, "logged")
    servers.stop(node)
    logs = delta_rows(tmp_path / "logs" / "ranking")
    t_e2 = max(logs.filter(pc.equal(logs.column("__request_id"), "e2"))
               .column("__log_timestamp").to_pylist())  # fmt: skip
    start = (NOW - dt.timedelta(days=1)).isoformat()
    end = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()

    # by request id: e1 / user 1, e2 / user 2, and a label for a request never logged
    pq.write_table(
        pa.table({
            "__request_id": ["e1", "e2", "never"],
            "user_id": pa.array([1, 2, 1], pa.int64()),
            "clicked": [True, False, True],
        }),
        tmp_path / "labels.parquet",
    )  # fmt: skip
    r = run_cli(*["logs", "export", "--config", str(config), "--service", "ranking",
                 "--start", start, "--end", end, "--labels", str(tmp_path / "labels.parquet"),
                 "--out", str(tmp_path / "train.parquet")])  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "1 without a logged row left out" in r.stderr
    train = pq.read_table(tmp_path / "train.parquet").sort_by("__request_id").to_pylist()
    assert [(t["__request_id"], t["user_id"], t["clicked"]) for t in train] == [
        ("e1", 1, True),
        ("e2", 2, False),
    ]
    assert (train[0]["users__u0"], train[1]["users__name"]) == (1.5, "bob")

    # as of the label's time, on the join keys: a label after e2 gets e2's row; one before
    # anything was logged gets none
    pq.write_table(
        pa.table({
            "user_id": pa.array([2, 2], pa.int64()),
            "label_timestamp": ts_col([t_e2 + dt.timedelta(seconds=5), NOW - dt.timedelta(hours=5)]),  # noqa: E501
            "clicked": [True, False],
        }),
        tmp_path / "labels2.parquet",
    )  # fmt: skip
    r = run_cli(*["logs", "export", "--config", str(config), "--service", "ranking",
                 "--start", start, "--end", end, "--labels", str(tmp_path / "labels2.parquet"),
                 "--out", str(tmp_path / "train2.parquet")])  # fmt: skip
    assert r.returncode == 0, r.stderr
    train2 = pq.read_table(tmp_path / "train2.parquet").to_pylist()
    assert [(t["__request_id"], t["clicked"]) for t in train2] == [("e2", True)]
    assert "1 without a logged row left out" in r.stderr


# -- a router in front: --log-at nodes (default) or router, never both --------------------------


@pytest.mark.slow
def test_router_log_at_nodes_or_router_logs_each_request_once(
    tmp_path: Path, servers: Servers
) -> None:
    config = setup_store(
        tmp_path, one_service("{type: delta, path: logs/nodes}", flush_interval_seconds=0.2)
    )
    # the router that logs itself reads a copy of the registry logging elsewhere
    router_config = tmp_path / "router.yaml"
    router_config.write_text(config.read_text().replace("logs/nodes", "logs/router"))
    node = servers.serve(config, "db", "--no-auth")
    cmap = tmp_path / "cluster.yaml"
    cmap.write_text(f"topic_partitions: 1\nshards:\n  0: ['127.0.0.1:{node.grpc}']\n")
    at_nodes = servers.cli(
        ["route", "--config", str(config), "--cluster-map", str(cmap), "--no-auth"], "r-nodes"
    )
    at_router = servers.cli(
        ["route", "--config", str(router_config), "--cluster-map", str(cmap), "--no-auth",
         "--log-at", "router"], "r-router",
    )  # fmt: skip
    for router, rid in ((at_nodes, "via-nodes"), (at_router, "via-router")):
        assert user_request(router, rid) < 5
    _, generated = feast_http_service(at_nodes)
    nodes_log, router_log = tmp_path / "logs" / "nodes", tmp_path / "logs" / "router"

    def ids(path: Path) -> list[str]:
        return sorted(delta_rows(path).column("__request_id").to_pylist())

    wait_until(lambda: len(ids(nodes_log)) == 4 and len(ids(router_log)) == 2, 20, "logged")
    time.sleep(4 * TICK_S)
    # each request's rows once: by the node (with the id the router passed on) or the router
    assert ids(nodes_log) == sorted([generated, generated, "via-nodes", "via-nodes"])
    assert ids(router_log) == ["via-router", "via-router"]
    routed = delta_rows(router_log).sort_by("user_id").to_pylist()
    assert [(r["user_id"], r["users__u0"], r["users__u0__status"]) for r in routed] == [
        (1, 1.5, 1),
        (2, -3.0, 1),
    ]


def feast_http_service(server: Server) -> tuple[dict[str, Any], str]:
    """A logged request without an id: the router makes one and returns it."""
    body = {"feature_service": "ranking", "entities": {"user_id": [1, 2]}}
    return post(server, "/get-online-features", body, None)
