"""Feast's gRPC feature server writes (``GrpcFeatureServer/Push`` and ``/WriteToOnlineStore``,
what clients of ``feast listen`` call) on a node and through a router, called with the stubs
Feast generates from its own protos (the pinned ``.venv-feast``); values read back over HTTP.
Write scope on the call's metadata, INVALID_ARGUMENT naming the field for bad input, and
nothing stored then."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from serving.frontend.auth import KeyFile
from tests.harness import (
    FEAST_PY,
    Broker,
    Server,
    Servers,
    feast_env,
    free_port,
    require_feast_venv,
    wait_until,
)

pytestmark = pytest.mark.integration


def registry(bootstrap: str) -> str:
    return f"""
project: grpcwrite
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: account
    entities: [user]
    push_source: account_push
    features:
      - {{name: country, dtype: string}}
      - {{name: age, dtype: int32}}
      - {{name: premium, dtype: bool}}
      - {{name: balance, dtype: float64}}
      - {{name: avatar, dtype: bytes}}
      - {{name: embedding, dtype: float32_array, dim: 2}}
      - {{name: signup_ts, dtype: timestamp}}
  - name: clicks
    entities: [user]
    push_source: clicks_push
    features: [{{name: n, dtype: int64}}]
    stream_source: {{type: kafka, topic: clicks, bootstrap_servers: "{bootstrap}", format: json,
                    options: {{loader.dlq_topic: ""}}}}
"""


# stdin: [{"target", "method", "request" (fields; typed_features as Value dicts), "key"?}];
# stdout: per call {"status": bool} or {"code": name, "details": text}
CLIENT = r"""
import importlib.util, json, sys, types
import grpc
from google.protobuf import json_format

# Feast's generated modules without running feast/__init__.py (the whole SDK: 20 s to import
# on a loaded 2-core machine); they are the same files Feast's own gRPC clients import
feast = types.ModuleType("feast")
feast.__path__ = list(importlib.util.find_spec("feast").submodule_search_locations)
sys.modules["feast"] = feast
from feast.protos.feast.serving import GrpcServer_pb2 as pb, GrpcServer_pb2_grpc as rpc
from feast.protos.feast.types import Value_pb2

out = []
for call in json.load(sys.stdin):
    fields = dict(call["request"])
    typed = fields.pop("typed_features", {})
    cls = pb.PushRequest if call["method"] == "Push" else pb.WriteToOnlineStoreRequest
    req = cls(**fields)
    for k, v in typed.items():
        req.typed_features[k].CopyFrom(json_format.ParseDict(v, Value_pb2.Value()))
    md = [("authorization", "Bearer " + call["key"])] if call.get("key") else None
    with grpc.insecure_channel(call["target"]) as ch:
        stub = rpc.GrpcFeatureServerStub(ch)
        try:
            resp = getattr(stub, call["method"])(req, timeout=20, metadata=md)
            out.append({"status": resp.status})
        except grpc.RpcError as e:
            out.append({"code": e.code().name, "details": e.details()})
json.dump(out, sys.stdout)
"""


def call(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(FEAST_PY), "-c", CLIENT], input=json.dumps(calls), capture_output=True, text=True,
        env=feast_env(), timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"Feast stub script failed:\n{proc.stderr}"
    out: list[dict[str, Any]] = json.loads(proc.stdout)
    return out


@pytest.fixture(scope="module")
def env(
    module_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    require_feast_venv()
    tmp = tmp_path_factory.mktemp("grpc_write")
    config = tmp / "features.yaml"
    config.write_text(registry(module_broker.bootstrap))
    module_broker.create_topic("clicks", 1)
    keys = KeyFile(tmp / "keys.json")
    tokens = {
        "writer": keys.create("writer", read=["*"], write=["account"])[0],
        "reader": keys.create("reader", read=["*"])[0],
    }
    servers = Servers(tmp)
    try:
        http, grpc_port = free_port(), free_port()
        node = servers.serve(config, "db", "--no-auth", http_port=http, grpc_port=grpc_port)
        cmap = tmp / "cluster.yaml"
        cmap.write_text(
            f"topic_partitions: 1\nshards:\n  0: [{{grpc: '127.0.0.1:{grpc_port}', "
            f"http: '127.0.0.1:{http}'}}]\n"
        )
        router = servers.cli(
            ["route", "--config", str(config), "--cluster-map", str(cmap), "--no-auth"], "router"
        )
        authed = servers.serve(config, "db_authed", "--keys-file", str(tmp / "keys.json"))
        yield {"node": node, "router": router, "authed": authed, "tokens": tokens}
    finally:
        servers.close()


def target(server: Server) -> str:
    return f"127.0.0.1:{server.grpc}"


def read(server: Server, refs: list[str], users: list[int]) -> list[Any]:
    status, body = server.post(
        "/get-online-features", {"features": refs, "entities": {"user_id": users}}
    )
    assert status == 200, body
    return [r["values"] for r in body["results"][1:]]


ACCOUNT = ["account:country", "account:age", "account:premium", "account:balance",
           "account:avatar", "account:embedding", "account:signup_ts"]  # fmt: skip


@pytest.mark.parametrize("via", ["node", "router"])
def test_push_and_write_to_online_store(env: dict[str, Any], via: str) -> None:
    server: Server = env[via]
    node: Server = env["node"]
    base = 10 if via == "node" else 20
    text = {"user_id": str(base), "event_timestamp": "2026-01-01T00:00:00Z", "country": "DE",
            "age": "41", "premium": "true", "balance": "2.5",
            "avatar": base64.b64encode(b"\x00\x01").decode(), "embedding": "[1, -2]",
            "signup_ts": "1700000000"}  # fmt: skip
    typed = {"user_id": {"int64Val": str(base + 1)},
             "event_timestamp": {"unixTimestampVal": "1767225600"},
             "country": {"stringVal": "FR"}, "age": {"int32Val": 7}, "premium": {"boolVal": False},
             "balance": {"doubleVal": -1.25}, "avatar": {"bytesVal": "eg=="},  # b"z"
             "embedding": {"floatListVal": {"val": [0.5, 0.25]}},
             "signup_ts": {"nullVal": "NULL"}}  # fmt: skip
    out = call([
        {"target": target(server), "method": "Push",
         "request": {"stream_feature_view": "account_push", "features": text, "to": "online"}},
        {"target": target(server), "method": "Push",
         "request": {"stream_feature_view": "account_push", "typed_features": typed}},
        {"target": target(server), "method": "WriteToOnlineStore",
         "request": {"feature_view_name": "account",
                     "features": {**text, "user_id": str(base + 2), "age": "43"}}},
    ])  # fmt: skip
    assert out == [{"status": True}] * 3, out
    got = read(node, ACCOUNT, [base, base + 1, base + 2])
    assert got[0] == ["DE", "FR", "DE"]
    assert got[1] == [41, 7, 43]
    assert got[2] == [True, False, True]
    assert got[3] == [2.5, -1.25, 2.5]
    assert got[4] == [base64.b64encode(b"\x00\x01").decode(), base64.b64encode(b"z").decode(),
                      base64.b64encode(b"\x00\x01").decode()]  # fmt: skip
    assert got[5] == [[1.0, -2.0], [0.5, 0.25], [1.0, -2.0]]
    assert got[6] == [1_700_000_000, None, 1_700_000_000]


@pytest.mark.parametrize("via", ["node", "router"])
def test_push_of_a_stream_backed_view_is_published(env: dict[str, Any], via: str) -> None:
    user = 30 if via == "node" else 31
    out = call([
        {"target": target(env[via]), "method": "Push",
         "request": {"stream_feature_view": "clicks_push", "to": "online",
                     "features": {"user_id": str(user), "event_timestamp": "2026-01-01T00:00:00",
                                  "n": "5"}}},
    ])  # fmt: skip
    assert out == [{"status": True}], out
    wait_until(lambda: read(env["node"], ["clicks:n"], [user]) == [[5]], 30, "the loader")


BAD = [
    ({"stream_feature_view": "account_push", "features": {"user_id": "1", "age": "1.5"}},
     "field 'features' key 'age': expected a int32 value as text"),
    ({"stream_feature_view": "account_push",
      "features": {"user_id": "1", "event_timestamp": "2026-01-01T00:00:00"}},
     "features: missing column 'country' (string) of feature view 'account'"),
    ({"stream_feature_view": "account_push", "features": {"user_id": "1"},
      "typed_features": {"user_id": {"int64Val": "1"}}},
     "fields 'features' and 'typed_features': only one of them may be set"),
    ({"stream_feature_view": "account_push", "typed_features": {"user_id": {"stringVal": "x"}}},
     "typed_features['user_id']: expected an integer"),
    ({"stream_feature_view": "account_push", "features": {"user_id": "1"}, "to": "sideways"},
     "field 'to' must be one of online, offline, online_and_offline, got 'sideways'"),
    ({"features": {"user_id": "1"}}, "missing field 'stream_feature_view'"),
    ({"stream_feature_view": "account_push"}, "missing field 'features'"),
]  # fmt: skip


@pytest.mark.parametrize("via", ["node", "router"])
def test_bad_pushes_are_invalid_argument_naming_the_field(env: dict[str, Any], via: str) -> None:
    nope = {"feature_view_name": "nope", "features": {"user_id": "1"}}
    *out, unknown = call(
        [{"target": target(env[via]), "method": "Push", "request": req} for req, _ in BAD]
        + [{"target": target(env[via]), "method": "WriteToOnlineStore", "request": nope}]
    )
    for got, (_, words) in zip(out, BAD, strict=True):
        assert got["code"] == "INVALID_ARGUMENT", got
        assert words in got["details"], got
    assert unknown == {"code": "NOT_FOUND", "details": "feature view 'nope' not found"}
    assert read(env["node"], ["account:age"], [1]) == [[None]]


def test_write_scope_on_grpc_metadata(env: dict[str, Any]) -> None:
    authed: Server = env["authed"]
    tokens = env["tokens"]
    row = {"user_id": "5", "event_timestamp": "2026-01-01T00:00:00", "n": "1"}
    account = {"user_id": "5", "event_timestamp": "2026-01-01T00:00:00", "country": "IT",
               "age": "1", "premium": "0", "balance": "0", "avatar": "", "embedding": "[0, 0]",
               "signup_ts": "0"}  # fmt: skip
    push = {"stream_feature_view": "account_push", "features": account}
    out = call([
        {"target": target(authed), "method": "Push", "request": push},
        {"target": target(authed), "method": "Push", "request": push, "key": tokens["reader"]},
        {"target": target(authed), "method": "Push", "key": tokens["writer"],
         "request": {"stream_feature_view": "clicks_push", "features": row}},
        {"target": target(authed), "method": "Push", "request": push, "key": tokens["writer"]},
    ])  # fmt: skip
    assert out[0]["code"] == "UNAUTHENTICATED", out
    assert out[1]["code"] == "PERMISSION_DENIED", out
    assert "may not write feature view 'account'" in out[1]["details"], out
    assert out[2]["code"] == "PERMISSION_DENIED", out  # this key writes account only
    assert out[3] == {"status": True}, out
