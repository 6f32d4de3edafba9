"""JWT bearer tokens against a real server process: a locally generated RSA key pair, its JWKS
served over HTTPS on loopback, tokens for each role and every attack, rotation picked up without a
restart, keys and tokens of another project refused, over HTTP and gRPC; the audit log's lines
for each action."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pyarrow as pa
import pytest

from serving import Registry, Store
from serving._proto.feature_serving.v1 import feature_service_pb2 as v1
from serving.frontend.auth import KeyFile
from tests import harness
from tests.harness import TEST_REGISTRY, start_cli, start_server, stop_server, wait_until
from tests.harness.oidc import AUDIENCE, ISSUER, Issuer

pytestmark = pytest.mark.integration

FEAST_BODY = {"features": ["user_profile:f000"], "entities": {"user_id": [1]}}
ITEM_BODY = {"features": ["item_stats:ctr"], "entities": {"item_id": ["item-1"]}}
PUSH = {
    "feature_view": "item_stats",
    "rows": {"item_id": ["jwt-pushed"], "event_timestamp": [0], "ctr": [0.5], "title": ["t"],
             "embedding": [[1.0, 2.0, 3.0]]},
}  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("jwt")
    config = tmp / "features.yaml"
    config.write_text(TEST_REGISTRY)  # project: servetest
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
    issuer = Issuer(tmp)
    issuer.new_key("k1")
    url = issuer.serve()
    auth = tmp / "auth.yaml"
    auth.write_text(
        f"""
jwt:
  jwks: {url}
  jwks_ca: {issuer.ca_file}
  issuer: {ISSUER}
  audience: {AUDIENCE}
  leeway_seconds: 0
  refresh_seconds: 3600
  roles:
    - {{match: readers, project: servetest, role: reader, views: [user_profile]}}
    - {{match: writers, project: servetest, role: writer, views: [item_stats]}}
    - {{match: admins, project: servetest, role: admin}}
    - {{match: other-team, project: other, role: admin}}
audit:
  path: audit.jsonl
  read_sample: 1.0
"""
    )
    keys = KeyFile(tmp / "keys.json")
    tokens = {
        "mine": keys.create("mine", read=["*"], projects=["servetest"], role="reader")[0],
        "pusher": keys.create("pusher", write=["item_stats"], projects=["servetest"])[0],
        "other": keys.create("other", projects=["other"], role="admin")[0],
        "legacy": keys.create("legacy", read=["*"])[0],
    }
    server = start_server(
        config, tmp / "db", tmp / "log",
        "--keys-file", str(tmp / "keys.json"), "--auth-config", str(auth),
    )  # fmt: skip
    try:
        yield {"server": server, "issuer": issuer, "keys": tokens, "tmp": tmp}
    finally:
        stop_server(server)
        issuer.close()


def http(env: dict[str, Any], path: str, body: Any, token: str | None) -> tuple[int, Any]:
    return harness.http(env["server"].url + path, body, key=token)


def grpc_code(env: dict[str, Any], method: str, token: str) -> grpc.StatusCode:
    with env["server"].channel() as ch:
        try:
            ch.unary_unary(method)(b"", metadata=(("authorization", f"Bearer {token}"),), timeout=5)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()


def test_reader_token_reads_its_views_only(env: dict[str, Any]) -> None:
    token = env["issuer"].token(groups=["readers"])
    status, body = http(env, "/get-online-features", FEAST_BODY, token)
    assert status == 200, body
    assert body["results"][1]["values"] == [0.0]
    status, body = http(env, "/get-online-features", ITEM_BODY, token)
    assert status == 403
    assert body["error"]["code"] == "permission_denied"
    missing = {"features": ["no_such_view:x"], "entities": {"user_id": [1]}}
    status2, body2 = http(env, "/get-online-features", missing, token)
    assert (status2, body2["error"]["message"]) == (
        403,
        body["error"]["message"].replace("item_stats", "no_such_view"),
    )
    assert http(env, "/v1/push", PUSH, token)[0] == 403
    assert http(env, "/admin/stats", None, token)[0] == 403
    # listings and the console show the views of the scope only, over HTTP and gRPC
    status, listed = http(env, "/v1/feature-views", None, token)
    assert status == 200
    assert [v["name"] for v in listed["feature_views"]] == ["user_profile"]
    assert listed["feature_services"] == []
    status, console = http(env, "/ui/api/registry", None, token)
    assert status == 200
    assert [v["name"] for v in console["feature_views"]] == ["user_profile"]
    status, who = http(env, "/ui/api/whoami", None, token)
    assert (who["key"]["name"], who["key"]["role"], who["project"]) == (
        "jwt:alice",
        "reader",
        "servetest",
    )
    with env["server"].channel() as ch:
        raw = ch.unary_unary("/feature_serving.v1.FeatureService/ListFeatureViews")(
            b"", metadata=(("authorization", f"Bearer {token}"),), timeout=5
        )
    views = v1.ListFeatureViewsResponse.FromString(raw).feature_views
    assert [v.name for v in views] == ["user_profile"]


def test_writer_pushes_and_admin_administers(env: dict[str, Any]) -> None:
    writer = env["issuer"].token(groups=["writers"], sub="loader")
    push = {**PUSH, "rows": {**PUSH["rows"], "event_timestamp": [int(time.time() * 1e6)]}}
    status, body = http(env, "/v1/push", push, writer)
    assert status == 200, body
    assert body["written"] == 1
    status, body = http(
        env, "/get-online-features",
        {"features": ["item_stats:ctr"], "entities": {"item_id": ["jwt-pushed"]}}, writer,
    )  # fmt: skip
    assert status == 200
    assert body["results"][1]["values"] == [0.5]
    assert http(env, "/admin/stats", None, writer)[0] == 403
    admin = env["issuer"].token(groups=["admins"], sub="ops")
    assert http(env, "/admin/stats", None, admin)[0] == 200


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda i: i.token(signer="evil", groups=["admins"]), "signature does not verify"),
        (lambda i: i.token(iss="https://evil.test", groups=["admins"]), "issuer is not"),
        (lambda i: i.token(aud="another-service", groups=["admins"]), "audience is not"),
        (lambda i: i.token(exp=int(time.time()) - 1, groups=["admins"]), "token expired"),
        (lambda i: i.forged("none", groups=["admins"]), "'none' is not accepted"),
        (lambda i: i.forged("HS256", groups=["admins"]), "'HS256' is not accepted"),
    ],
    ids=["bad-signature", "issuer", "audience", "expired", "alg-none", "hmac-confusion"],
)
def test_attacks_are_401_with_the_reason(env: dict[str, Any], make: Any, reason: str) -> None:
    issuer: Issuer = env["issuer"]
    if "evil" not in issuer.keys:
        issuer.new_key("evil", publish=False)
    token = make(issuer)
    for path in ("/get-online-features", "/v1/push", "/admin/stats"):
        status, body = http(env, path, FEAST_BODY if path != "/admin/stats" else None, token)
        assert status == 401, (path, body)
        assert reason in body["error"]["message"]
        assert token not in body["error"]["message"]
    for method in ("/feature_serving.v1.FeatureService/GetFeatureVector",
                   "/feast.serving.ServingService/GetOnlineFeatures"):  # fmt: skip
        assert grpc_code(env, method, token) == grpc.StatusCode.UNAUTHENTICATED


def test_valid_token_without_a_role_here_is_403_everywhere(env: dict[str, Any]) -> None:
    for groups in ([], ["other-team"], ["nobody"]):
        token = env["issuer"].token(groups=groups)
        for path, body in (("/get-online-features", FEAST_BODY), ("/get-online-features",
                           {"features": ["nope:x"], "entities": {"user_id": [1]}}),
                           ("/v1/feature-views", None), ("/v1/push", PUSH)):  # fmt: skip
            status, got = http(env, path, body, token)
            assert status == 403, (groups, path, got)
            assert "no role in project 'servetest'" in got["error"]["message"]
        assert (
            grpc_code(env, "/feature_serving.v1.FeatureService/ListFeatureViews", token)
            == grpc.StatusCode.PERMISSION_DENIED
        )


def test_api_keys_of_another_project_are_refused(env: dict[str, Any]) -> None:
    k = env["keys"]
    assert http(env, "/get-online-features", FEAST_BODY, k["mine"])[0] == 200
    assert http(env, "/get-online-features", FEAST_BODY, k["legacy"])[0] == 200
    for path, body in (("/get-online-features", FEAST_BODY), ("/v1/feature-views", None),
                       ("/admin/stats", None), ("/v1/push", PUSH), ("/ui/api/registry", None),
                       ("/ui/api/whoami", None), ("/ui/api/views/user_profile", None)):  # fmt: skip
        status, got = http(env, path, body, k["other"])
        assert status == 403, (path, got)
    assert (
        grpc_code(env, "/feast.serving.ServingService/GetOnlineFeatures", k["other"])
        == grpc.StatusCode.PERMISSION_DENIED
    )


def test_cached_token_is_refused_once_expired(env: dict[str, Any]) -> None:
    token = env["issuer"].token(groups=["readers"], exp=int(time.time()) + 2)
    assert http(env, "/get-online-features", FEAST_BODY, token)[0] == 200
    wait_until(lambda: http(env, "/get-online-features", FEAST_BODY, token)[0] == 401, 10, "expiry")
    _status, body = http(env, "/get-online-features", FEAST_BODY, token)
    assert "expired" in body["error"]["message"]


def test_rotation_in_the_served_jwks_is_picked_up_without_restart(env: dict[str, Any]) -> None:
    issuer: Issuer = env["issuer"]
    issuer.new_key("k2", publish=False)
    token = issuer.token("k2", groups=["readers"])
    fetches = issuer.fetches
    issuer.publish(["k1", "k2"])
    # the unknown key id starts a re-fetch (at most every 5 s); a retry finds the key
    wait_until(
        lambda: http(env, "/get-online-features", FEAST_BODY, token)[0] == 200, 20, "rotation"
    )
    assert issuer.fetches > fetches


def _audit_lines(env: dict[str, Any]) -> list[dict[str, Any]]:
    path = env["tmp"] / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait_line(env: dict[str, Any], pred: Any) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [x for x in _audit_lines(env) if pred(x)]
        return bool(found)

    wait_until(seen, 5, "the audit line")
    return found[-1]


def test_audit_lines_for_each_action(env: dict[str, Any]) -> None:
    issuer: Issuer = env["issuer"]
    rid = "audit-read-1"
    reader = issuer.token(groups=["readers"], sub="auditor")
    harness.http(env["server"].url + "/get-online-features", FEAST_BODY, key=reader,
                 headers={"X-Request-Id": rid})  # fmt: skip
    line = _wait_line(env, lambda x: x["request_id"] == rid)
    assert line["event"] == "read"
    assert line["status"] == "200"
    assert (line["identity"], line["kind"], line["role"]) == ("jwt:auditor", "jwt", "reader")
    assert (line["project"], line["views"], line["entities"]) == ("servetest", ["user_profile"], 1)

    push = {**PUSH, "rows": {**PUSH["rows"], "item_id": ["a1", "a2"], "ctr": [0.1, 0.2],
            "title": ["x", "y"], "embedding": [[1.0, 2.0, 3.0]] * 2,
            "event_timestamp": [int(time.time() * 1e6)] * 2}}  # fmt: skip
    harness.http(env["server"].url + "/v1/push", push, key=env["keys"]["pusher"],
                 headers={"X-Request-Id": "audit-write-1"})  # fmt: skip
    line = _wait_line(env, lambda x: x["request_id"] == "audit-write-1")
    assert (line["event"], line["identity"], line["role"], line["status"]) == (
        "write",
        "pusher",
        "writer",
        "200",
    )
    assert (line["views"], line["entities"]) == (["item_stats"], 2)

    admin = issuer.token(groups=["admins"], sub="ops")
    harness.http(env["server"].url + "/admin/stats", None, key=admin,
                 headers={"X-Request-Id": "audit-admin-1"})  # fmt: skip
    line = _wait_line(env, lambda x: x["request_id"] == "audit-admin-1")
    assert (line["event"], line["identity"], line["role"], line["method"]) == (
        "admin",
        "jwt:ops",
        "admin",
        "/admin/stats",
    )

    forged = issuer.forged("none", groups=["admins"])
    harness.http(env["server"].url + "/get-online-features", FEAST_BODY, key=forged,
                 headers={"X-Request-Id": "audit-denied-1"})  # fmt: skip
    line = _wait_line(env, lambda x: x["request_id"] == "audit-denied-1")
    assert (line["event"], line["status"]) == ("denied", "401")
    assert "'none' is not accepted" in line["reason"]

    # a scope denial after authentication names the caller
    harness.http(env["server"].url + "/get-online-features", ITEM_BODY, key=reader,
                 headers={"X-Request-Id": "audit-denied-2"})  # fmt: skip
    line = _wait_line(env, lambda x: x["request_id"] == "audit-denied-2")
    assert (line["event"], line["status"], line["identity"]) == ("denied", "403", "jwt:auditor")

    # a key of another project: denied, named
    harness.http(env["server"].url + "/get-online-features", FEAST_BODY,
                 key=env["keys"]["other"], headers={"X-Request-Id": "audit-denied-3"})  # fmt: skip
    line = _wait_line(env, lambda x: x["request_id"] == "audit-denied-3")
    assert (line["event"], line["identity"]) == ("denied", "other")

    # gRPC: a refused call and a sampled read
    with env["server"].channel() as ch:
        with pytest.raises(grpc.RpcError):
            ch.unary_unary("/feast.serving.ServingService/GetOnlineFeatures")(
                b"",
                metadata=(("authorization", "Bearer nope"), ("x-request-id", "g-denied")),
                timeout=5,
            )
        from serving._proto.feast.serving import ServingService_pb2 as feast_pb2
        from serving._proto.feast.types import Value_pb2

        req = feast_pb2.GetOnlineFeaturesRequest()
        req.features.val.append("user_profile:f000")
        req.entities["user_id"].val.extend([Value_pb2.Value(int64_val=1)] * 3)
        ch.unary_unary("/feast.serving.ServingService/GetOnlineFeatures")(
            req.SerializeToString(),
            metadata=(("authorization", f"Bearer {reader}"), ("x-request-id", "g-read")),
            timeout=5,
        )
    line = _wait_line(env, lambda x: x["request_id"] == "g-denied")
    assert (line["event"], line["status"], line["method"]) == (
        "denied",
        "UNAUTHENTICATED",
        "GetOnlineFeatures",
    )
    line = _wait_line(env, lambda x: x["request_id"] == "g-read")
    assert (line["event"], line["identity"], line["views"], line["entities"]) == (
        "read",
        "jwt:auditor",
        ["user_profile"],
        3,
    )

    text = (env["tmp"] / "audit.jsonl").read_text()
    for secret in (*env["keys"].values(), reader, admin, forged):
        assert secret not in text
        signature = secret.split(".")[-1]
        assert not signature or signature not in text


@pytest.fixture(scope="module")
def router(env: dict[str, Any]) -> Iterator[Any]:
    """A router in front of the node, with the same keys file and auth config (it forwards the
    caller's credential, which the node checks again)."""
    s, tmp = env["server"], env["tmp"]
    cmap = tmp / "cluster.yaml"
    cmap.write_text(
        "topic_partitions: 1\n"
        f"shards:\n  0: [{{grpc: '127.0.0.1:{s.grpc}', http: '127.0.0.1:{s.http}'}}]\n"
    )
    r = start_cli(
        ["route", "--config", str(tmp / "features.yaml"), "--cluster-map", str(cmap),
         "--keys-file", str(tmp / "keys.json"), "--auth-config", str(tmp / "auth.yaml"),
         "--route-probe-seconds", "0.2"],
        tmp / "router.log",
    )  # fmt: skip
    try:
        yield r
    finally:
        stop_server(r)


def test_router_enforces_the_same(env: dict[str, Any], router: Any) -> None:
    issuer: Issuer = env["issuer"]
    url = router.url
    reader = issuer.token(groups=["readers"], sub="via-router")
    status, body = harness.http(url + "/get-online-features", FEAST_BODY, key=reader)
    assert status == 200, body
    assert body["results"][1]["values"] == [0.0]
    status, body = harness.http(url + "/get-online-features", ITEM_BODY, key=reader)
    assert status == 403
    for forged in (issuer.forged("none", groups=["admins"]),
                   issuer.forged("HS256", groups=["admins"]),
                   issuer.token(aud="x", groups=["admins"])):  # fmt: skip
        status, body = harness.http(url + "/get-online-features", FEAST_BODY, key=forged)
        assert status == 401, body
    nobody = issuer.token(groups=["other-team"])
    for path, b in (("/get-online-features", FEAST_BODY), ("/v1/feature-views", None),
                    ("/push", {"push_source_name": "x", "df": {}})):  # fmt: skip
        assert harness.http(url + path, b, key=nobody)[0] == 403, path
        assert harness.http(url + path, b, key=env["keys"]["other"])[0] == 403, path
    with grpc.insecure_channel(f"127.0.0.1:{router.grpc}") as ch:
        for token, code in ((reader, grpc.StatusCode.OK),
                            (nobody, grpc.StatusCode.PERMISSION_DENIED),
                            (issuer.forged("none"), grpc.StatusCode.UNAUTHENTICATED)):  # fmt: skip
            try:
                ch.unary_unary("/feature_serving.v1.FeatureService/ListFeatureViews")(
                    b"", metadata=(("authorization", f"Bearer {token}"),), timeout=5
                )
                got = grpc.StatusCode.OK
            except grpc.RpcError as e:
                got = e.code()
            assert got == code
