"""API keys, scopes and TLS against a real server process."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import Registry, Store
from serving._proto.feast.serving import ServingService_pb2 as feast_pb2
from serving._proto.feast.types import Value_pb2
from serving._proto.feature_serving.v1 import feature_service_pb2 as v1
from serving.client import AsyncFeatureClient
from serving.frontend.auth import KeyFile
from tests import harness
from tests.harness import TEST_REGISTRY, Server, copy_store, start_server, stop_server
from tests.harness.tls import client_context, make_certs

pytestmark = pytest.mark.integration

FEAST_BODY = {"features": ["user_profile:f000"], "entities": {"user_id": [1]}}
ITEM_BODY = {"features": ["item_stats:ctr"], "entities": {"item_id": ["item-1"]}}


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("auth")
    config = tmp / "features.yaml"
    config.write_text(TEST_REGISTRY)
    import pyarrow as pa

    with Store(tmp / "db", Registry.from_yaml(config)) as store:
        store.write(
            "user_profile",
            pa.table(
                {
                    "user_id": pa.array([1], pa.int64()),
                    "event_timestamp": pa.array([int(time.time() * 1e6)], pa.int64()).cast(
                        pa.timestamp("us", tz="UTC")
                    ),
                    **{f"f{i:03d}": pa.array([float(i)], pa.float32()) for i in range(200)},
                }
            ),
        )
    keys = KeyFile(tmp / "keys.json")
    tokens = {
        "all": keys.create("all", read=["*"])[0],
        "profile": keys.create("profile", read=["user_profile"])[0],
        "ranking": keys.create("ranking", read=["ranking"])[0],
        "admin": keys.create("admin", read=["*"], write=["*"], admin=True)[0],
        "revoked": keys.create("revoked", read=["*"])[0],
        "expired": keys.create("expired", read=["*"], expires_in_seconds=0.5)[0],
    }
    keys.revoke("revoked")
    time.sleep(0.6)
    server = start_server(config, tmp / "db", tmp / "log", "--keys-file", str(tmp / "keys.json"))
    try:
        yield {"server": server, "tokens": tokens, "keys": keys, "tmp": tmp, "config": config}
    finally:
        stop_server(server)


def http(
    s: Server, path: str, body: Any, token: str | None, raw_header: str | None = None
) -> tuple[int, Any]:
    """POSTs ``body`` with ``token`` as a bearer key, or ``raw_header`` as the whole
    Authorization header."""
    headers = {"Authorization": raw_header} if raw_header is not None else None
    return harness.http(s.url + path, body, key=token, headers=headers)


def grpc_v1(
    s: Server, token: str | None, refs: list[str], entities: dict[str, Any]
) -> grpc.StatusCode:
    req = v1.GetFeatureVectorRequest()
    req.features.refs.extend(refs)
    for k, vals in entities.items():
        if isinstance(vals[0], str):
            req.entities[k].string_values.values.extend(vals)
        else:
            req.entities[k].int64_values.values.extend(vals)
    md = (("authorization", f"Bearer {token}"),) if token else ()
    with s.channel() as ch:
        call = ch.unary_unary("/feature_serving.v1.FeatureService/GetFeatureVector")
        try:
            call(req.SerializeToString(), metadata=md, timeout=5)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()


def grpc_feast(s: Server, token: str | None) -> grpc.StatusCode:
    req = feast_pb2.GetOnlineFeaturesRequest()
    req.features.val.append("user_profile:f000")
    req.entities["user_id"].val.append(Value_pb2.Value(int64_val=1))
    md = (("authorization", f"Bearer {token}"),) if token else ()
    with s.channel() as ch:
        call = ch.unary_unary("/feast.serving.ServingService/GetOnlineFeatures")
        try:
            call(req.SerializeToString(), metadata=md, timeout=5)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()


BAD = ["missing", "malformed", "unknown", "revoked", "expired"]


def bad_header(kind: str, tokens: dict[str, str]) -> str | None:
    return {
        "missing": None,
        "malformed": "Basic abc",
        "unknown": "Bearer fsk_00000000_" + "x" * 43,
        "revoked": f"Bearer {tokens['revoked']}",
        "expired": f"Bearer {tokens['expired']}",
    }[kind]


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize(
    "path", ["/get-online-features", "/v1/feature-vector", "/v1/push", "/admin/materialize",
             "/admin/registry/reload"],
)  # fmt: skip
def test_http_routes_refuse_bad_keys(authed: dict[str, Any], kind: str, path: str) -> None:
    s = authed["server"]
    header = bad_header(kind, authed["tokens"])
    status, body = http(s, path, FEAST_BODY, None, raw_header=header if header else None)
    assert status == 401, body
    assert body["error"]["code"] == "unauthenticated"
    assert "fsk_" not in body["error"]["message"]


@pytest.mark.parametrize("kind", BAD)
def test_grpc_services_refuse_bad_keys(authed: dict[str, Any], kind: str) -> None:
    s = authed["server"]
    header = bad_header(kind, authed["tokens"])
    md = (("authorization", header),) if header else ()
    with s.channel() as ch:
        for method in (
            "/feature_serving.v1.FeatureService/GetFeatureVector",
            "/feature_serving.v1.FeatureService/ListFeatureViews",
            "/feast.serving.ServingService/GetOnlineFeatures",
            "/feast.serving.ServingService/GetFeastServingInfo",
        ):
            with pytest.raises(grpc.RpcError) as e:
                ch.unary_unary(method)(b"", metadata=md, timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, method


def test_valid_key_reads_and_health_stays_open(authed: dict[str, Any]) -> None:
    s, t = authed["server"], authed["tokens"]
    status, body = http(s, "/get-online-features", FEAST_BODY, t["all"])
    assert status == 200
    assert body["results"][1]["values"] == [0.0]
    assert grpc_feast(s, t["all"]) == grpc.StatusCode.OK
    assert grpc_v1(s, t["all"], ["item_stats:ctr"], {"item_id": ["a"]}) == grpc.StatusCode.OK
    with urllib.request.urlopen(s.url + "/healthz", timeout=5) as r:
        assert r.status == 200
    with s.channel() as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_scoped_key_gets_exactly_its_views(authed: dict[str, Any]) -> None:
    s, t = authed["server"], authed["tokens"]
    assert http(s, "/get-online-features", FEAST_BODY, t["profile"])[0] == 200
    status, body = http(s, "/get-online-features", ITEM_BODY, t["profile"])
    assert status == 403
    assert body["error"]["code"] == "permission_denied"
    # An unknown view answers exactly like an existing one outside the scope.
    status2, body2 = http(
        s, "/get-online-features",
        {"features": ["no_such_view:x"], "entities": {"user_id": [1]}}, t["profile"],
    )  # fmt: skip
    assert status2 == 403
    assert body2["error"]["code"] == "permission_denied"
    # A request that touches any view outside the scope is refused as a whole.
    mixed = {"features": ["user_profile:f000", "item_stats:ctr"],
             "entities": {"user_id": [1], "item_id": ["a"]}}  # fmt: skip
    assert http(s, "/get-online-features", mixed, t["profile"])[0] == 403
    assert grpc_v1(s, t["profile"], ["user_profile:f000"], {"user_id": [1]}) == grpc.StatusCode.OK
    assert (
        grpc_v1(s, t["profile"], ["item_stats:ctr"], {"item_id": ["a"]})
        == grpc.StatusCode.PERMISSION_DENIED
    )


def test_feature_service_scope_spans_views(authed: dict[str, Any]) -> None:
    s, t = authed["server"], authed["tokens"]
    body = {"feature_service": "ranking", "entities": {"user_id": [1], "item_id": ["item-1"]}}
    assert http(s, "/get-online-features", body, t["ranking"])[0] == 200
    # ...but the service's views one by one are outside the key's scope.
    assert http(s, "/get-online-features", FEAST_BODY, t["ranking"])[0] == 403
    # A key scoped to one of the views may not read the service spanning two.
    assert http(s, "/get-online-features", body, t["profile"])[0] == 403


def test_admin_and_write_scopes(authed: dict[str, Any]) -> None:
    s, t = authed["server"], authed["tokens"]
    status, body = http(s, "/admin/registry/reload", {}, t["all"])
    assert status == 403
    status, body = http(s, "/admin/registry/reload", {}, t["admin"])
    assert status == 200, body
    push = {"feature_view": "item_stats",
            "rows": {"item_id": ["pushed"], "event_timestamp": [int(time.time() * 1e6)],
                     "ctr": [0.75], "title": ["p"], "embedding": [[1.0, 2.0, 3.0]]}}  # fmt: skip
    assert http(s, "/v1/push", push, t["all"])[0] == 403
    status, body = http(s, "/v1/push", push, t["admin"])
    assert status == 200, body
    assert body["written"] == 1
    status, got = http(
        s, "/get-online-features",
        {"features": ["item_stats:ctr"], "entities": {"item_id": ["pushed"]}}, t["all"],
    )  # fmt: skip
    assert got["results"][1]["values"] == [0.75]


def test_new_and_revoked_keys_apply_without_restart(authed: dict[str, Any]) -> None:
    s, keys = authed["server"], authed["keys"]
    token, _ = keys.create("late", read=["*"])
    time.sleep(1.2)  # the server re-checks the keys file at most once a second
    assert http(s, "/get-online-features", FEAST_BODY, token)[0] == 200
    keys.revoke("late")
    time.sleep(1.2)
    assert http(s, "/get-online-features", FEAST_BODY, token)[0] == 401


def test_keys_file_holds_no_secret(authed: dict[str, Any]) -> None:
    text = (authed["tmp"] / "keys.json").read_text()
    for token in authed["tokens"].values():
        assert token not in text
        assert token.split("_", 2)[2] not in text


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_and_mutual_tls(authed: dict[str, Any], tmp_path: Path, mutual: bool) -> None:
    make_certs(tmp_path)
    copy_store(authed["tmp"] / "db", tmp_path / "db")
    args = ["--no-auth", "--tls-cert", str(tmp_path / "server.pem"),
            "--tls-key", str(tmp_path / "server.key")]  # fmt: skip
    if mutual:
        args += ["--tls-client-ca", str(tmp_path / "ca.pem")]
    ctx = client_context(tmp_path, client_cert=mutual)
    server = start_server(
        authed["config"], tmp_path / "db", tmp_path / "server.log", *args, ssl_context=ctx
    )
    try:
        ca = (tmp_path / "ca.pem").read_bytes()
        client_pair = (
            (tmp_path / "client.key").read_bytes(),
            (tmp_path / "client.pem").read_bytes(),
        )
        req = urllib.request.Request(
            f"https://127.0.0.1:{server.http}/get-online-features",
            data=json.dumps(FEAST_BODY).encode(), headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            assert json.loads(r.read())["results"][1]["values"] == [0.0]
        creds = grpc.ssl_channel_credentials(ca, *(client_pair if mutual else (None, None)))
        with grpc.secure_channel(f"127.0.0.1:{server.grpc}", creds) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING

        # the project's asyncio client over (mutual) TLS
        async def via_async_client() -> float:
            async with AsyncFeatureClient(
                f"127.0.0.1:{server.grpc}", credentials=creds, timeout=5
            ) as client:
                m = await client.get_dense({"user_id": [1]}, ["user_profile:f000"])
                return float(m.values[0, 0])

        assert asyncio.run(via_async_client()) == 0.0
        if mutual:
            # No client certificate: refused by both listeners.
            bare = client_context(tmp_path, client_cert=False)
            with (
                pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)),
                urllib.request.urlopen(req, timeout=10, context=bare) as r,
            ):
                r.read()
            with (
                grpc.secure_channel(
                    f"127.0.0.1:{server.grpc}", grpc.ssl_channel_credentials(ca)
                ) as ch,
                pytest.raises(grpc.RpcError) as e,
            ):
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop_server(server)
