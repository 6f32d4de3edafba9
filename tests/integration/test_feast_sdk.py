"""The real Feast Python SDK against a real server: issue 3's "the Feast Python SDK, configured
with its `remote` online store pointing at this server, must work unchanged".

Feast has pins of its own, so it lives in its own venv, `.venv-feast` (`make feast-venv`). The
server runs under this project's Python; a Feast feature repo is written to a temp dir, `feast
apply`'d with the Feast venv's CLI, and `FeatureStore.get_online_features(...)` is called by a
script run with the Feast venv's Python, which prints what the SDK returned as JSON for this test
to compare with the WORKLOADS formula (`serving.sample.user_profile_value`). See
docs/feast-compatibility.md.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from serving import Registry, Store
from serving.frontend.auth import KeyFile
from serving.sample import generate, user_profile_value
from tests.harness import ROOT, Server, start_cli, start_server, stop_server

pytestmark = pytest.mark.integration

FEAST_VENV = ROOT / ".venv-feast"
FEAST_PY = FEAST_VENV / "bin" / "python"
FEAST_CLI = FEAST_VENV / "bin" / "feast"
N_USERS = 300
MISSING = 10**9  # a user id with no row
KEY_ENV = "FEATURE_SERVING_API_KEY"

# What the server serves: the WORKLOADS user_profile view, a view of every type, and a
# feature service with the same name as the Feast repo's (Feast sends only the name).
SERVER_REGISTRY = """
project: feastsdk
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: user_profile
    entities: [user]
    features: [{name: "f{000..199}", dtype: float32}]
  - name: user_account
    entities: [user]
    features:
      - {name: country, dtype: string}
      - {name: age, dtype: int32}
      - {name: lifetime_orders, dtype: int64}
      - {name: is_premium, dtype: bool}
      - {name: balance, dtype: float64}
      - {name: signup_ts, dtype: timestamp}
      - {name: avatar_sha, dtype: bytes}
      - {name: embedding, dtype: float32_array, dim: 8}
feature_services:
  - name: user_profile_svc
    features: ["user_profile:f{000..004}"]
"""

# The Feast side, as a Feast user writes it. SAMPLE_DIR is filled in.
FEAST_DEFINITIONS = """
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Bool, Bytes, Float32, Float64, Int32, Int64, String, UnixTimestamp

user = Entity(name="user", join_keys=["user_id"])

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name="user_id", dtype=Int64)]
    + [Field(name=f"f{i:03d}", dtype=Float32) for i in range(5)],
    source=FileSource(path="SAMPLE_DIR/user_profile.parquet", timestamp_field="event_timestamp"),
    online=True,
)

user_account = FeatureView(
    name="user_account",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="user_id", dtype=Int64),
        Field(name="country", dtype=String),
        Field(name="age", dtype=Int32),
        Field(name="lifetime_orders", dtype=Int64),
        Field(name="is_premium", dtype=Bool),
        Field(name="balance", dtype=Float64),
        Field(name="signup_ts", dtype=UnixTimestamp),
        Field(name="avatar_sha", dtype=Bytes),
        Field(name="embedding", dtype=Array(Float32)),
    ],
    source=FileSource(path="SAMPLE_DIR/user_account.parquet", timestamp_field="event_timestamp"),
    online=True,
)

user_profile_svc = FeatureService(name="user_profile_svc", features=[user_profile])
"""

FEATURE_STORE_YAML = """
project: feastsdk
registry: {registry}
provider: local
online_store:
  type: remote
  path: {url}
offline_store:
  type: file
entity_key_serialization_version: 3
{auth}"""

# Run with the Feast venv's Python in the repo dir. stdin: a JSON list of calls, each
# {"features": [...]} or {"service": name}, "rows" (a list of dicts or a dict of columns),
# optional "full" (full_feature_names) and "env" (set before the call); or {"model": {...}}: POST
# Feast's server request model, serialized, as is. stdout: one JSON object
# with Feast's version and, per call, what the SDK returned or the exception it raised.
CLIENT = r"""
import json, os, sys
import feast
from feast import FeatureStore
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

calls = json.load(sys.stdin)
store = FeatureStore(repo_path=".")
out = []
for call in calls:
    os.environ.update(call.get("env", {}))
    if "model" in call:  # a body serialized from Feast's own server request model
        import requests
        from feast.feature_server import GetOnlineFeaturesRequest

        body = GetOnlineFeaturesRequest(**call["model"]).model_dump()
        r = requests.post(store.config.online_store.path + "/get-online-features", json=body)
        out.append({"body": body, "status": r.status_code, "json": r.json()})
        continue
    features = (
        store.get_feature_service(call["service"]) if "service" in call else call["features"]
    )
    try:
        resp = store.get_online_features(
            features=features,
            entity_rows=call["rows"],
            full_feature_names=call.get("full", False),
        )
        d = resp.to_dict()
        out.append({
            "columns": list(d),
            "dict": d,
            "statuses": [[FieldStatus.Name(s) for s in r.statuses] for r in resp.proto.results],
            "df_shape": list(resp.to_df().shape),
        })
    except Exception as e:
        out.append({"error": f"{type(e).__name__}: {e}"})
json.dump({"feast_version": feast.__version__, "calls": out}, sys.stdout)
"""


def _feast_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["VIRTUAL_ENV"] = str(FEAST_VENV)
    env["FEAST_USAGE"] = "False"  # no telemetry attempt
    return env


def _require_feast_venv() -> None:
    if not (FEAST_PY.exists() and FEAST_CLI.exists()):
        pytest.fail(
            f"the Feast SDK venv is missing: {FEAST_PY} (and {FEAST_CLI.name}) not found. "
            "Create it with `make feast-venv` (installs the pinned feast into .venv-feast/).",
            pytrace=False,
        )


def run_sdk(repo: Path, calls: list[dict[str, Any]], **env: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(FEAST_PY), "-c", CLIENT],
        check=False,
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        cwd=repo,
        env={**_feast_env(), **env},
        timeout=120,
    )
    assert proc.returncode == 0, f"Feast SDK script failed:\n{proc.stderr}"
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def feast_pin() -> str:
    """FEAST_VERSION from the Makefile (what `make feast-venv` installs)."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("FEAST_VERSION"):
            return line.split("=", 1)[1].strip()
    raise AssertionError("no FEAST_VERSION in the Makefile")


def write_repo(repo: Path, server: Server, registry: Path, auth: str = "") -> None:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        FEATURE_STORE_YAML.format(registry=registry, url=server.url, auth=auth)
    )


@pytest.fixture(scope="module")
def feast_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    _require_feast_venv()
    tmp = tmp_path_factory.mktemp("feast")
    config = tmp / "features.yaml"
    config.write_text(SERVER_REGISTRY)
    sample = generate(tmp / "sample", N_USERS)
    account = pq.read_table(Path(sample.user_profile_path).parent / "user_account.parquet")
    for db in ("db", "db_authed"):  # one server per RocksDB directory
        with Store(tmp / db, Registry.from_yaml(config)) as store:
            store.write("user_profile", pq.read_table(sample.user_profile_path))
            store.write("user_account", account)
    keys = KeyFile(tmp / "keys.json")
    token = keys.create("feast-profile", read=["user_profile"])[0]

    open_server = start_server(config, tmp / "db", tmp / "open.log")
    started = [open_server]
    try:
        authed = start_server(
            config, tmp / "db_authed", tmp / "authed.log", "--keys-file", str(tmp / "keys.json")
        )
        started.append(authed)
        # a router in front of the open server (one shard; these views are not sharded)
        cmap = tmp / "cluster.yaml"
        cmap.write_text(f"topic_partitions: 1\nshards:\n  0: ['127.0.0.1:{open_server.grpc}']\n")
        router = start_cli(
            ["route", "--config", str(config), "--cluster-map", str(cmap), "--no-auth"],
            tmp / "router.log",
        )
        started.append(router)
    except BaseException:
        for server in started:
            stop_server(server)
        raise
    try:
        repo = tmp / "repo"
        registry = repo / "data" / "registry.db"
        write_repo(repo, open_server, registry)
        (repo / "definitions.py").write_text(
            FEAST_DEFINITIONS.replace("SAMPLE_DIR", str(Path(sample.user_profile_path).parent))
        )
        proc = subprocess.run(
            [str(FEAST_CLI), "apply"],
            check=False, capture_output=True, text=True, cwd=repo, env=_feast_env(),
            timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, f"feast apply failed:\n{proc.stdout}\n{proc.stderr}"
        # The same Feast registry, with Feast's client auth sending our API key.
        authed_repo = tmp / "authed_repo"
        auth = f"auth:\n  type: oidc\n  token_env_var: {KEY_ENV}\n"
        write_repo(authed_repo, authed, registry, auth)
        # The same Feast registry, the online store pointed at the router.
        router_repo = tmp / "router_repo"
        write_repo(router_repo, router, registry)
        yield {
            "repo": repo,
            "authed_repo": authed_repo,
            "router_repo": router_repo,
            "token": token,
            "account": account.to_pylist(),
        }
    finally:
        for server in reversed(started):
            stop_server(server)


def test_sdk_get_online_features(feast_env: dict[str, Any]) -> None:
    users = [1, 7, N_USERS - 1, MISSING, 0]
    refs = ["user_profile:f003", "user_profile:f000", "user_profile:f004"]
    idx = [3, 0, 4]
    out = run_sdk(
        feast_env["repo"],
        [
            {"features": refs, "rows": [{"user_id": u} for u in users]},
            {"service": "user_profile_svc", "rows": {"user_id": [2, MISSING]}, "full": True},
            {"features": ["user_profile:f001"], "rows": [{"user_id": 3}], "full": True},
            {"model": {"entities": {"user_id": [3]}, "feature_service": "user_profile_svc"}},
        ],
    )
    pin = feast_pin()
    assert out["feast_version"] == pin, (
        f".venv-feast has feast {out['feast_version']}, the Makefile pins {pin}: "
        "run `make feast-venv`"
    )
    plain, service, full, model = out["calls"]
    assert "error" not in plain, plain

    # Columns: the join key first, then the features in request order.
    assert plain["columns"] == ["user_id", "f003", "f000", "f004"]
    assert plain["dict"]["user_id"] == users
    for name, f in zip(plain["columns"][1:], idx, strict=True):
        want = [None if u == MISSING else user_profile_value(u, f) for u in users]
        assert plain["dict"][name] == want, name  # exact: float32 widened to double
    assert plain["statuses"][0] == ["PRESENT"] * len(users)
    for col in plain["statuses"][1:]:
        assert col == ["PRESENT", "PRESENT", "PRESENT", "NOT_FOUND", "PRESENT"]
    assert plain["df_shape"] == [len(users), 4]

    # A feature service (Feast sends its name), full feature names, entity rows as columns.
    assert "error" not in service, service
    names = [f"user_profile__f{i:03d}" for i in range(5)]
    assert service["columns"] == ["user_id", *names]
    assert service["dict"]["user_id"] == [2, MISSING]
    for i, name in enumerate(names):
        assert service["dict"][name] == [user_profile_value(2, i), None]
    assert full["dict"] == {"user_id": [3], "user_profile__f001": [user_profile_value(3, 1)]}

    # Feast's request model defaults `features` to [] beside `feature_service`.
    assert model["body"]["features"] == [], model
    assert model["status"] == 200, model
    assert model["json"]["metadata"]["feature_names"] == ["user_id"] + [
        f"f{i:03d}" for i in range(5)
    ]
    assert [c["values"] for c in model["json"]["results"]] == [[3]] + [
        [user_profile_value(3, i)] for i in range(5)
    ]


def test_sdk_every_type(feast_env: dict[str, Any]) -> None:
    fields = ["country", "age", "lifetime_orders", "is_premium", "balance", "signup_ts",
              "avatar_sha", "embedding"]  # fmt: skip
    users = [0, 1, 2, MISSING]
    out = run_sdk(
        feast_env["repo"],
        [
            {
                "features": [f"user_account:{f}" for f in fields],
                "rows": [{"user_id": u} for u in users],
            }
        ],
    )
    (call,) = out["calls"]
    assert "error" not in call, call
    rows = feast_env["account"]
    for f, statuses in zip(fields, call["statuses"][1:], strict=True):
        got = call["dict"][f]
        assert got[3] is None, f
        assert statuses[3] == "NOT_FOUND", f
        for u in range(3):
            want = rows[u][f]
            if want is None:
                assert got[u] is None, (f, u)
                assert statuses[u] == "NULL_VALUE", (f, u)
                continue
            assert statuses[u] == "PRESENT", (f, u)
            if f == "avatar_sha":  # bytes: base64 text, as Feast's own server sends them
                want = base64.b64encode(want).decode()
            elif f == "signup_ts":  # epoch seconds, as Feast's own server sends them
                want = int(want.timestamp())
            assert got[u] == want, (f, u)


def test_sdk_errors_are_reported(feast_env: dict[str, Any]) -> None:
    out = run_sdk(
        feast_env["repo"],
        [
            {"features": ["user_profile:nope"], "rows": [{"user_id": 1}]},
            {"features": ["no_such_view:f000"], "rows": [{"user_id": 1}]},
        ],
    )
    unknown_feature, unknown_view = out["calls"]
    assert unknown_feature["error"].startswith("RuntimeError: Failed to get online features: 404")
    assert "has no feature 'nope'" in unknown_feature["error"]
    assert unknown_view["error"].startswith("RuntimeError: Failed to get online features: 404")
    assert "no_such_view" in unknown_view["error"]


def test_sdk_auth_sends_our_api_key(feast_env: dict[str, Any]) -> None:
    """Feast's client auth (`auth: {type: oidc, token_env_var: ...}`) sends
    `Authorization: Bearer <token>`: our API key goes there."""
    good = {KEY_ENV: feast_env["token"]}
    out = run_sdk(
        feast_env["authed_repo"],
        [
            {"features": ["user_profile:f000"], "rows": [{"user_id": 5}], "env": good},
            {"features": ["user_account:age"], "rows": [{"user_id": 5}], "env": good},
            {
                "features": ["user_profile:f000"],
                "rows": [{"user_id": 5}],
                "env": {KEY_ENV: "fsk_00000000_bogus"},
            },
        ],
    )
    ok, out_of_scope, bad_key = out["calls"]
    assert ok.get("dict") == {"user_id": [5], "f000": [user_profile_value(5, 0)]}, ok
    assert "403" in out_of_scope["error"], out_of_scope
    assert "permission_denied" in out_of_scope["error"]
    assert "401" in bad_key["error"], bad_key
    assert "unauthenticated" in bad_key["error"]


def test_sdk_through_the_router_gets_the_same_answers(feast_env: dict[str, Any]) -> None:
    """`feature-serving route` in front of the server: the SDK, unchanged, gets what it gets
    from the server itself (docs/scale-out.md, "Router")."""
    fields = ["country", "age", "lifetime_orders", "is_premium", "balance", "signup_ts",
              "avatar_sha", "embedding"]  # fmt: skip
    calls = [
        {
            "features": ["user_profile:f003", "user_profile:f000"],
            "rows": [{"user_id": u} for u in [1, 7, N_USERS - 1, MISSING, 0]],
        },
        {"service": "user_profile_svc", "rows": {"user_id": [2, MISSING]}, "full": True},
        {
            "features": [f"user_account:{f}" for f in fields],
            "rows": [{"user_id": u} for u in [0, 1, 2, MISSING]],
        },
        {"features": ["user_profile:nope"], "rows": [{"user_id": 1}]},
    ]
    direct = run_sdk(feast_env["repo"], calls)["calls"]
    routed = run_sdk(feast_env["router_repo"], calls)["calls"]
    assert "error" not in direct[0], direct[0]
    assert routed == direct
