"""SearchNearest against a real server process: HTTP and gRPC answer the same hits with the
features of the hits; a push and a Kafka record make a vector searchable; bad input over gRPC
is INVALID_ARGUMENT naming the problem, and the server keeps serving."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from serving import Registry
from serving._proto.feature_serving.v1 import feature_service_pb2 as v1
from serving.loaders.kafka import PRODUCER_DEFAULTS, produce_rows
from tests.harness import Broker, http, start_server, stop_server
from tests.harness.vectors import DIM, NOW, item_table, registry_text, vectors

pytestmark = pytest.mark.integration

SEARCH = "/feature_serving.v1.FeatureService/SearchNearest"


def grpc_search(channel: grpc.Channel, req: v1.SearchNearestRequest) -> v1.SearchNearestResponse:
    call = channel.unary_unary(
        SEARCH,
        request_serializer=v1.SearchNearestRequest.SerializeToString,
        response_deserializer=v1.SearchNearestResponse.FromString,
    )
    out: v1.SearchNearestResponse = call(req, timeout=10)
    return out


def wait_for(pred: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_http_grpc_push_and_kafka(broker: Broker, tmp_path: Path) -> None:
    cfg = tmp_path / "features.yaml"
    cfg.write_text(registry_text(tmp_path, broker.bootstrap))
    broker.create_topic("item_stream", 1)
    reg = Registry.from_yaml(cfg)
    n = 500
    vecs = vectors(n)
    pq.write_table(item_table(np.arange(n), vecs), tmp_path / "items.parquet")
    server = start_server(cfg, tmp_path / "db", tmp_path / "server.log", "--no-auth")
    try:
        status, out = http(server.url + "/admin/materialize", {"views": ["item_vec"]})
        assert status == 200, out
        q = vecs[42].tolist()
        status, got = http(
            server.url + "/v1/search-nearest",
            {"view": "item_vec", "feature": "emb", "query": q, "k": 5,
             "features": ["item_vec:price"], "include_statuses": True},
        )  # fmt: skip
        assert status == 200, got
        assert got["keys"]["item_id"][0] == 42
        assert got["features"]["columns"][0]["statuses"][0] == "PRESENT"
        with server.channel() as ch:
            req = v1.SearchNearestRequest(
                view="item_vec", feature="emb", query=q, k=5,
                features=v1.FeatureRefs(refs=["item_vec:price"]), layout=v1.LAYOUT_DENSE,
            )  # fmt: skip
            r = grpc_search(ch, req)
            assert list(r.keys["item_id"].int64_values.values) == got["keys"]["item_id"]
            assert r.num_hits == 5
            assert np.allclose(list(r.distances), got["distances"], atol=1e-6)
            dense = np.frombuffer(r.features.dense.values, "<f4").reshape(5, 1)
            assert dense[:, 0].tolist() == [float(i % 100) for i in got["keys"]["item_id"]]
            # bad input: INVALID_ARGUMENT naming it; NaN only gRPC can send
            for bad, message in [
                (v1.SearchNearestRequest(view="item_vec", feature="emb", query=[math.nan] * DIM),
                 "NaN"),
                (v1.SearchNearestRequest(view="item_vec", feature="emb", query=[math.inf] * DIM),
                 "inf"),
                (v1.SearchNearestRequest(view="item_vec", feature="emb", query=q, k=-1),
                 "k must be"),
                (v1.SearchNearestRequest(view="item_vec", feature="category", query=q),
                 "no vector index"),
                (v1.SearchNearestRequest(view="item_vec", feature="emb", query=q[:3]),
                 "query has 3 components"),
            ]:  # fmt: skip
                with pytest.raises(grpc.RpcError) as e:
                    grpc_search(ch, bad)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert message in (e.value.details() or ""), e.value.details()
            assert grpc_search(ch, req).num_hits == 5
        status, err = http(
            server.url + "/v1/search-nearest",
            {"view": "item_vec", "feature": "emb", "query": q, "k": 0},
        )
        assert status == 400, err
        assert "k must be" in json.dumps(err), err

        # push: a new entity onto the query
        status, out = http(
            server.url + "/v1/push",
            {"feature_view": "item_vec",
             "rows": {"item_id": [9001], "event_timestamp": [NOW.isoformat()],
                      "emb": [q], "exact_emb": [q], "category": ["new"], "price": [1.0]}},
        )  # fmt: skip
        assert status == 200, out
        status, got = http(
            server.url + "/v1/search-nearest",
            {"view": "item_vec", "feature": "exact_emb", "query": q, "k": 2},
        )
        assert set(got["keys"]["item_id"]) == {42, 9001}, got

        # Kafka: a record of the stream-sourced view becomes searchable, a tombstone removes it
        producer = Producer({"bootstrap.servers": broker.bootstrap, **PRODUCER_DEFAULTS})
        rows = [{"item_id": 7, "event_timestamp": NOW, "emb": q}]
        produce_rows(producer, reg.view("item_stream"), rows)
        body = {"view": "item_stream", "feature": "emb", "query": q, "k": 3}

        def found() -> bool:
            s, g = http(server.url + "/v1/search-nearest", body)
            return s == 200 and g["keys"]["item_id"] == [7]

        wait_for(found, "the Kafka record to be searchable")
        stats = http(server.url + "/admin/stats")[1]
        assert "vector_indexes" in json.dumps(stats)
    finally:
        stop_server(server)


def test_ttl_hides_without_deleting(tmp_path: Path) -> None:
    """An expired row is not found while its stored row stays (a fresh write finds it again)."""
    cfg = tmp_path / "features.yaml"
    cfg.write_text(registry_text(tmp_path))
    pq.write_table(item_table(np.arange(3), vectors(3)), tmp_path / "items.parquet")
    server = start_server(cfg, tmp_path / "db", tmp_path / "server.log", "--no-auth")
    try:
        v = vectors(3)[0].tolist()
        old = (NOW - dt.timedelta(hours=3)).isoformat()
        status, out = http(
            server.url + "/v1/push",
            {"feature_view": "item_short",
             "rows": {"item_id": [1], "event_timestamp": [old], "emb": [v]}},
        )  # fmt: skip
        assert status == 200, out
        body = {"view": "item_short", "feature": "emb", "query": v, "k": 3}
        assert http(server.url + "/v1/search-nearest", body)[1]["num_hits"] == 0
        http(
            server.url + "/v1/push",
            {"feature_view": "item_short",
             "rows": {"item_id": [1], "event_timestamp": [NOW.isoformat()], "emb": [v]}},
        )  # fmt: skip
        assert http(server.url + "/v1/search-nearest", body)[1]["keys"]["item_id"] == [1]
    finally:
        stop_server(server)
