"""Black-box tests of the serving process: a real `feature-serving serve` subprocess on free
loopback ports over a real RocksDB directory, called over HTTP and gRPC (the process harness:
tests/harness/server.py)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import Registry, Store
from serving._proto.feast.serving import ServingService_pb2 as feast_pb2
from serving._proto.feast.types import Value_pb2
from serving._proto.feature_serving.v1 import feature_service_pb2 as v1
from serving.client import FeatureClient
from serving.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    StorageError,
)
from serving.sample import generate, user_profile_value
from tests.harness import (
    TEST_REGISTRY,
    Outcome,
    Server,
    copy_store,
    post_whole,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration

N_USERS = 500


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("serve")
    config = tmp / "features.yaml"
    config.write_text(TEST_REGISTRY)
    registry = Registry.from_yaml(config)
    sample = generate(tmp / "sample", N_USERS)
    now = pa.scalar(int(time.time() * 1e6), type=pa.timestamp("us", tz="UTC"))
    old = pa.scalar(int((time.time() - 7200) * 1e6), type=pa.timestamp("us", tz="UTC"))
    with Store(tmp / "db", registry) as store:
        import pyarrow.parquet as pq

        store.write("user_profile", pq.read_table(sample.user_profile_path))
        store.write(
            "item_stats",
            pa.table(
                {
                    "item_id": ["item-1", "item-2", "item-old"],
                    "event_timestamp": pa.array([now, now, old]),
                    "ctr": pa.array([0.25, None, 0.5], type=pa.float32()),
                    "title": ['Red "shoe" ü', "x", "old"],
                    "embedding": pa.array(
                        [[1.0, 2.0, 3.0], None, [0.0, 0.0, 0.0]], type=pa.list_(pa.float32(), 3)
                    ),
                }
            ),
        )
    server = start_server(config, tmp / "db", tmp / "server.log")
    try:
        yield {"server": server, "tmp": tmp, "config": config}
    finally:
        stop_server(server)


def expected(user: int, feature: int) -> float:
    return user_profile_value(user, feature)


def test_feast_http_shape_field_by_field(env: dict[str, Any]) -> None:
    s: Server = env["server"]
    status, body = s.post(
        "/get-online-features",
        {
            "features": ["user_profile:f001", "user_profile:f000"],
            "entities": {"user_id": [1, 123, 10**9]},
            "include_feature_view_version_metadata": False,
        },
    )
    assert status == 200
    assert body["metadata"] == {"feature_names": ["user_id", "f001", "f000"]}
    assert len(body["results"]) == 3
    keys, f001, f000 = body["results"]
    assert keys == {
        "values": [1, 123, 10**9],
        "statuses": ["PRESENT"] * 3,
        "event_timestamps": ["1970-01-01T00:00:00Z"] * 3,
    }
    assert f001["values"][:2] == [expected(1, 1), expected(123, 1)]
    assert f001["values"][0] == 4.800000190734863
    assert f000["values"][:2] == [expected(1, 0), expected(123, 0)]
    for col in (f001, f000):
        assert col["values"][2] is None
        assert col["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]
        assert col["event_timestamps"] == [
            "2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
        ]


def test_feast_http_w2_values(env: dict[str, Any]) -> None:
    s: Server = env["server"]
    users = list(range(100, 200))
    status, body = s.post(
        "/get-online-features",
        {
            "features": [f"user_profile:f{i:03d}" for i in range(200)],
            "entities": {"user_id": users},
        },
    )
    assert status == 200
    got = np.array([c["values"] for c in body["results"][1:]], dtype=np.float32)
    want = np.array([[expected(u, f) for u in users] for f in range(200)], dtype=np.float32)
    np.testing.assert_array_equal(got, want)


def test_feature_service_across_views_keyed_by_different_entities(env: dict[str, Any]) -> None:
    s: Server = env["server"]
    status, body = s.post(
        "/get-online-features",
        {
            "feature_service": "ranking",
            "entities": {"user_id": [5, 6], "item_id": ["item-1", "nope"]},
        },
    )
    assert status == 200, body
    assert body["metadata"]["feature_names"] == [
        "user_id",
        "item_id",
        "f000",
        "f001",
        "ctr",
        "title",
    ]
    res = body["results"]
    assert res[1]["values"] == ["item-1", "nope"]
    assert res[2]["values"] == [expected(5, 0), expected(6, 0)]
    assert res[4]["values"] == [0.25, None]
    assert res[4]["statuses"] == ["PRESENT", "NOT_FOUND"]
    assert res[5]["values"] == ['Red "shoe" ü', None]


def test_ttl_and_null_statuses(env: dict[str, Any]) -> None:
    s: Server = env["server"]
    status, body = s.post(
        "/get-online-features",
        {"features": ["item_stats:ctr"], "entities": {"item_id": ["item-1", "item-2", "item-old"]}},
    )
    assert status == 200
    col = body["results"][1]
    assert col["statuses"] == ["PRESENT", "NULL_VALUE", "OUTSIDE_MAX_AGE"]
    assert col["values"] == [0.25, None, None]
    assert col["event_timestamps"][2] != "1970-01-01T00:00:00Z"


def test_feast_grpc(env: dict[str, Any]) -> None:
    s: Server = env["server"]
    req = feast_pb2.GetOnlineFeaturesRequest()
    req.features.val.extend(["user_profile:f003", "item_stats:title"])
    req.entities["user_id"].val.extend([Value_pb2.Value(int64_val=u) for u in (7, 8)])
    req.entities["item_id"].val.extend([Value_pb2.Value(string_val=i) for i in ("item-1", "zz")])
    with s.channel() as ch:
        call = ch.unary_unary(
            "/feast.serving.ServingService/GetOnlineFeatures",
            request_serializer=feast_pb2.GetOnlineFeaturesRequest.SerializeToString,
            response_deserializer=feast_pb2.GetOnlineFeaturesResponse.FromString,
        )
        resp = call(req, timeout=5)
    names = list(resp.metadata.feature_names.val)
    assert set(names[:2]) == {"user_id", "item_id"}
    assert names[2:] == ["f003", "title"]
    f003 = resp.results[2]
    assert [v.float_val for v in f003.values] == [
        np.float32(expected(7, 3)),
        np.float32(expected(8, 3)),
    ]
    assert list(f003.statuses) == [feast_pb2.PRESENT, feast_pb2.PRESENT]
    assert f003.event_timestamps[0].seconds == 1704067200
    title = resp.results[3]
    assert title.values[0].string_val == 'Red "shoe" ü'
    assert title.values[1].WhichOneof("val") is None
    assert list(title.statuses) == [feast_pb2.PRESENT, feast_pb2.NOT_FOUND]


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_client_dense_and_columns(env: dict[str, Any], transport: str) -> None:
    s: Server = env["server"]
    target = f"127.0.0.1:{s.grpc if transport == 'grpc' else s.http}"
    users = [3, 4, 10**9]
    with FeatureClient(target, transport=transport, timeout=5) as client:
        m = client.get_dense({"user_id": users}, [f"user_profile:f{i:03d}" for i in range(200)])
        assert m.values.shape == (3, 200)
        assert m.values.dtype == np.float32
        want = np.array([[expected(u, f) for f in range(200)] for u in users[:2]], np.float32)
        np.testing.assert_array_equal(m.values[:2], want)
        assert np.isnan(m.values[2]).all()
        assert (m.statuses[:2] == 1).all()
        assert (m.statuses[2] == 3).all()
        cols = client.get_features(
            {"item_id": ["item-1", "item-2"]}, ["item_stats:ctr", "item_stats:title"]
        )
        assert cols.feature_names == ["item_stats:ctr", "item_stats:title"]
        assert list(cols.columns["item_stats:title"]) == ['Red "shoe" ü', "x"]
        assert cols.statuses.tolist() == [[1, 1], [2, 1]]
        assert float(cols.columns["item_stats:ctr"][0]) == 0.25


def test_http_client_keeps_one_connection_per_thread(env: dict[str, Any]) -> None:
    """FeatureClient(transport="http"): keep-alive (one connection per calling thread, not per
    call), the node's errors as FeatureServingError subclasses, a dead or slow node as
    StorageError / DeadlineExceededError."""
    s: Server = env["server"]
    feats = ["user_profile:f000"]
    with FeatureClient(f"127.0.0.1:{s.http}", transport="http", timeout=5) as client:
        socks = set()
        for u in range(1, 6):
            assert client.get_dense({"user_id": [u]}, feats).values[0, 0] == expected(u, 0)
            socks.add(id(client._local.conn.sock))
        assert len(socks) == 1  # the same socket for every call
        with pytest.raises(NotFoundError, match="nope"):
            client.get_dense({"user_id": [1]}, ["nope:f1"])
        # the connection survives an error answer
        assert client.get_dense({"user_id": [2]}, feats).values[0, 0] == expected(2, 0)
        assert id(client._local.conn.sock) in socks
        # a node-closed idle connection is replaced without an error
        client._local.conn.sock.shutdown(socket.SHUT_RDWR)
        assert client.get_dense({"user_id": [3]}, feats).values[0, 0] == expected(3, 0)
        got: list[float] = []
        threads = [
            threading.Thread(
                target=lambda u=u: got.append(
                    float(client.get_dense({"user_id": [u]}, feats).values[0, 0])
                )
            )
            for u in (7, 8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == sorted([expected(7, 0), expected(8, 0)])
        assert len(client._conns) == 3  # this thread's and one per other thread
    # nothing listening: StorageError (UNAVAILABLE), as over gRPC
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with (
        FeatureClient(f"127.0.0.1:{port}", transport="http", timeout=2) as dead,
        pytest.raises(StorageError, match="UNAVAILABLE"),
    ):
        dead.get_dense({"user_id": [1]}, feats)
    # a listener that never answers: DeadlineExceededError
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        with (
            FeatureClient(
                f"127.0.0.1:{mute.getsockname()[1]}", transport="http", timeout=0.3
            ) as slow,
            pytest.raises(DeadlineExceededError),
        ):
            slow.get_dense({"user_id": [1]}, feats)


def test_health_and_reflection(env: dict[str, Any]) -> None:
    s: Server = env["server"]
    with s.channel() as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", "feature_serving.v1.FeatureService", "feast.serving.ServingService"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        out = list(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
        names = {svc.name for svc in out[0].list_services_response.service}
        assert {"feature_serving.v1.FeatureService", "feast.serving.ServingService"} <= names
    with urllib.request.urlopen(s.url + "/healthz", timeout=5) as r:
        assert json.loads(r.read())["status"] == "alive"


BAD_HTTP = [
    (b"{not json", 400, "invalid_argument"),
    ({"features": ["user_profile:f000"]}, 400, "invalid_argument"),
    ({"entities": {"user_id": [1]}}, 400, "invalid_argument"),
    ({"features": ["nope:f000"], "entities": {"user_id": [1]}}, 404, "not_found"),
    ({"features": ["user_profile:nope"], "entities": {"user_id": [1]}}, 404, "not_found"),
    ({"features": ["user_profile"], "entities": {"user_id": [1]}}, 400, "invalid_argument"),
    ({"feature_service": "nope", "entities": {"user_id": [1]}}, 404, "not_found"),
    ({"features": ["user_profile:f000"], "entities": {"user_id": ["a"]}}, 400, "invalid_argument"),
    ({"features": ["user_profile:f000"], "entities": {"item_id": ["a"]}}, 400, "invalid_argument"),
    ({"features": ["user_profile:f000"], "entities": {"user_id": []}}, 400, "invalid_argument"),
    (
        {"features": ["item_stats:ctr", "user_profile:f000"],
         "entities": {"user_id": [1, 2], "item_id": ["a"]}},
        400, "invalid_argument",
    ),
    (
        {"features": ["user_profile:f000"], "entities": {"user_id": list(range(1001))}},
        413, "limit_exceeded",
    ),
    ({"features": [], "entities": {"user_id": [1]}}, 400, "invalid_argument"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "code"), BAD_HTTP)
def test_bad_http_input_then_valid(env: dict[str, Any], body: Any, status: int, code: str) -> None:
    s: Server = env["server"]
    got_status, got = s.post("/get-online-features", body)
    assert got_status == status, got
    assert got["error"]["code"] == code
    assert got["error"]["message"]
    ok_status, ok = s.post(
        "/get-online-features", {"features": ["user_profile:f001"], "entities": {"user_id": [1]}}
    )
    assert ok_status == 200
    assert ok["results"][1]["values"] == [4.800000190734863]


def test_wrong_content_type_and_method(env: dict[str, Any]) -> None:
    s: Server = env["server"]
    status, body = s.post(
        "/get-online-features",
        {"features": ["user_profile:f000"], "entities": {"user_id": [1]}},
        ctype="text/plain",
    )
    assert status == 400
    assert "content type" in body["error"]["message"]
    status, body = s.post("/no-such-route", {})
    assert status == 404
    assert "error" in body


def test_bad_grpc_input_then_valid(env: dict[str, Any]) -> None:
    s: Server = env["server"]
    with s.channel() as ch:
        raw = ch.unary_unary("/feature_serving.v1.FeatureService/GetFeatureVector")
        with pytest.raises(grpc.RpcError) as e:
            raw(b"\xff\xff\xff\xff", timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        req = v1.GetFeatureVectorRequest()
        req.features.refs.append("user_profile:zzz")
        req.entities["user_id"].int64_values.values.append(1)
        with pytest.raises(grpc.RpcError) as e:
            raw(req.SerializeToString(), timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "zzz" in (e.value.details() or "")
        req = v1.GetFeatureVectorRequest(layout=v1.LAYOUT_DENSE)
        req.features.refs.append("item_stats:title")
        req.entities["item_id"].string_values.values.append("item-1")
        with pytest.raises(grpc.RpcError) as e:
            raw(req.SerializeToString(), timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "item_stats:title" in (e.value.details() or "")
    with FeatureClient(f"127.0.0.1:{s.grpc}") as client:
        m = client.get_dense({"user_id": [1]}, ["user_profile:f001"])
        assert m.values[0, 0] == np.float32(4.8)
        with pytest.raises(NotFoundError):
            client.get_dense({"user_id": [1]}, ["user_profile:zzz"])
        with pytest.raises(InvalidArgumentError):
            client.get_dense({"user_id": [1]}, ["item_stats:title"])


def test_graceful_shutdown_drains_in_flight(env: dict[str, Any], tmp_path: Path) -> None:
    """SIGTERM while clients hammer the server: requests already accepted complete, the process
    exits 0, and the store reopens with its data."""
    tmp = env["tmp"]
    # A second server over a copy of the data (the module's server keeps running).
    copy_store(tmp / "db", tmp_path / "db")
    server = start_server(env["config"], tmp_path / "db", tmp_path / "server.log")
    outcomes: list[Outcome] = []
    stop = threading.Event()
    body = {
        "features": [f"user_profile:f{i:03d}" for i in range(200)],
        "entities": {"user_id": list(range(100))},
    }

    def hammer() -> None:
        while not stop.is_set():
            outcome = post_whole(server.url + "/get-online-features", body)
            outcomes.append(outcome)
            if outcome.kind != "answered":
                break  # refused once the listener closed (or cut: asserted below)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    rc = stop_server(server)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert rc == 0, server.log.read_text()
    cut = [o for o in outcomes if o.kind == "cut"]
    assert not cut, cut
    answered = [o for o in outcomes if o.kind == "answered"]
    assert answered
    assert [o.status for o in answered if o.status != 200] == []
    registry = Registry.from_yaml(env["config"])
    with Store(tmp_path / "db", registry) as store:
        assert store.get({"user_id": [1]}, ["user_profile:f001"]).column("user_profile:f001") == [
            pytest.approx(4.8)
        ]


def test_v1_http_columns_and_dense(env: dict[str, Any]) -> None:
    s: Server = env["server"]
    status, body = s.post(
        "/v1/feature-vector",
        {"features": ["user_profile:f002", "item_stats:embedding"],
         "entities": {"user_id": [9, 10], "item_id": ["item-1", "item-2"]},
         "include_statuses": True},
    )  # fmt: skip
    assert status == 200, body
    assert body["feature_names"] == ["user_profile:f002", "item_stats:embedding"]
    assert body["num_entities"] == 2
    assert body["columns"][0]["values"] == [expected(9, 2), expected(10, 2)]
    assert body["columns"][1]["values"][0] == [1.0, 2.0, 3.0]
    assert body["columns"][1]["statuses"] == ["PRESENT", "NULL_VALUE"]
    status, body = s.post(
        "/v1/feature-vector",
        {"features": ["user_profile:f002"], "entities": {"user_id": [9]}, "layout": "dense"},
    )
    assert status == 200, body
    assert body["dense"]["values"] == [[expected(9, 2)]]


def test_env_var_settings(tmp_path: Path, env: dict[str, Any]) -> None:
    """FS_* environment variables configure the server (here: the entity limit)."""
    copy_store(env["tmp"] / "db", tmp_path / "db")
    os.environ["FS_MAX_ENTITIES"] = "2"
    try:
        server = start_server(env["config"], tmp_path / "db", tmp_path / "log")
    finally:
        del os.environ["FS_MAX_ENTITIES"]
    try:
        status, body = server.post(
            "/get-online-features",
            {"features": ["user_profile:f000"], "entities": {"user_id": [1, 2, 3]}},
        )
        assert status == 413, body
        assert body["error"]["code"] == "limit_exceeded"
        assert "3 entities requested; the limit is 2" in body["error"]["message"]
    finally:
        assert stop_server(server) == 0


def test_request_batching_mode_answers_correctly(env: dict[str, Any], tmp_path: Path) -> None:
    """With --batch-window-us, concurrent requests are coalesced into one Rust call on a worker
    thread; every caller still gets its own answer (and its own error)."""
    from concurrent.futures import ThreadPoolExecutor

    copy_store(env["tmp"] / "db", tmp_path / "db")
    server = start_server(
        env["config"], tmp_path / "db", tmp_path / "log", "--no-auth", "--batch-window-us", "500"
    )
    try:

        def one(u: int) -> tuple[int, Any]:
            if u % 7 == 0:
                bad = {"features": ["nope:x"], "entities": {"user_id": [u]}}
                return server.post("/get-online-features", bad)
            return server.post(
                "/get-online-features",
                {"features": ["user_profile:f001"], "entities": {"user_id": [u]}},
            )

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(1, 200)))
        for u, (status, body) in zip(range(1, 200), results, strict=True):
            if u % 7 == 0:
                assert status == 404
            else:
                assert status == 200
                assert body["results"][1]["values"] == [expected(u, 1)]
        with FeatureClient(f"127.0.0.1:{server.grpc}") as client:
            m = client.get_dense({"user_id": [3]}, ["user_profile:f001"])
            assert m.values[0, 0] == np.float32(expected(3, 1))
    finally:
        assert stop_server(server) == 0
