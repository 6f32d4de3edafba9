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
            "grpc": {"node": open_server.grpc, "router": router.grpc},
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


# Feast's own gRPC feature server's client (`feast listen`): its generated stubs, from the
# Feast venv, asking GrpcFeatureServer/GetOnlineFeatures.
GRPC_CLIENT = """
import json, sys
import grpc
from feast.protos.feast.serving import GrpcServer_pb2_grpc, ServingService_pb2
from feast.protos.feast.types import Value_pb2

target, users = sys.argv[1], json.loads(sys.argv[2])
req = ServingService_pb2.GetOnlineFeaturesRequest()
req.features.val.extend(["user_profile:f003", "user_profile:f000"])
req.entities["user_id"].val.extend([Value_pb2.Value(int64_val=u) for u in users])
with grpc.insecure_channel(target) as ch:
    resp = GrpcServer_pb2_grpc.GrpcFeatureServerStub(ch).GetOnlineFeatures(req, timeout=10)
json.dump({
    "names": list(resp.metadata.feature_names.val),
    "values": [[v.float_val if v.WhichOneof("val") else None for v in r.values]
               for r in resp.results[1:]],
    "statuses": [list(r.statuses) for r in resp.results[1:]],
}, sys.stdout)
"""


@pytest.mark.parametrize("via", ["node", "router"])
def test_feast_grpc_feature_server_stub(feast_env: dict[str, Any], via: str) -> None:
    users = [1, MISSING, 7]
    proc = subprocess.run(
        [
            str(FEAST_PY),
            "-c",
            GRPC_CLIENT,
            f"127.0.0.1:{feast_env['grpc'][via]}",
            json.dumps(users),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=_feast_env(),
        timeout=120,
    )
    assert proc.returncode == 0, f"Feast gRPC stub script failed:\n{proc.stderr}"
    out = json.loads(proc.stdout)
    assert out["names"] == ["user_id", "f003", "f000"]
    for got, f in zip(out["values"], (3, 0), strict=True):
        want = [user_profile_value(1, f), None, user_profile_value(7, f)]
        assert got == want, f  # float32 widened exactly, as the HTTP tests compare it
    assert out["statuses"] == [[1, 3, 1], [1, 3, 1]]  # PRESENT, NOT_FOUND


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


# -- writes (issue 17): the SDK's write calls against the server ------------------------------

WRITE_REGISTRY = """
project: feastsdkw
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: events
    entities: [user]
    push_source: events_push
    features:
      - {name: clicks, dtype: int64}
      - {name: score, dtype: float32}
      - {name: label, dtype: string}
    batch_source: {type: parquet, path: events.parquet}
  - name: narrow
    entities: [user]
    features: [{name: a, dtype: float32}, {name: b, dtype: float32}]
"""

# The Feast side: `events` fed by a PushSource over the same Parquet file the server's batch
# source reads; `narrow` declares one feature fewer than the server's view.
WRITE_DEFINITIONS = """
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource
from feast.types import Float32, Int64, String

user = Entity(name="user", join_keys=["user_id"])
events_file = FileSource(path="EVENTS", timestamp_field="event_timestamp")
events_push = PushSource(name="events_push", batch_source=events_file)
events = FeatureView(
    name="events",
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name="user_id", dtype=Int64), Field(name="clicks", dtype=Int64),
            Field(name="score", dtype=Float32), Field(name="label", dtype=String)],
    source=events_push,
    online=True,
)
narrow = FeatureView(
    name="narrow",
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name="user_id", dtype=Int64), Field(name="a", dtype=Float32)],
    source=events_file,
    online=True,
)
"""

# stdin: a JSON list of ops, each {"op": "write" | "push" | "materialize" |
# "materialize_incremental" | "read" | "post", ...}; stdout: per op, what came back or the
# exception the SDK raised.
WRITER = r"""
import json, sys
from datetime import datetime

import pandas as pd
import requests
from feast import FeatureStore
from feast.data_source import PushMode
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

def frame(users, t):
    ts = pd.Timestamp(t, tz="UTC")
    return pd.DataFrame({
        "user_id": pd.array(users, dtype="int64"),
        "event_timestamp": [ts] * len(users),
        "clicks": pd.array([10 * u for u in users], dtype="int64"),
        "score": pd.array([u / 4 for u in users], dtype="float32"),
        "label": [f"u{u}" for u in users],
    })

store = FeatureStore(repo_path=".")
modes = {"online": PushMode.ONLINE, "offline": PushMode.OFFLINE,
         "online_and_offline": PushMode.ONLINE_AND_OFFLINE}
out = []
for op in json.load(sys.stdin):
    try:
        kind = op["op"]
        if kind == "write":
            df = frame(op["users"], op["t"])
            if op.get("view") == "narrow":
                df = df.rename(columns={"score": "a"})[["user_id", "event_timestamp", "a"]]
            store.write_to_online_store(op.get("view", "events"), df)
            out.append({"ok": True})
        elif kind == "push":
            store.push("events_push", frame(op["users"], op["t"]), to=modes[op["to"]])
            out.append({"ok": True})
        elif kind == "materialize":
            start, end = (datetime.fromisoformat(op[k]) for k in ("start", "end"))
            store.materialize(start, end)
            out.append({"ok": True})
        elif kind == "materialize_incremental":
            store.materialize_incremental(datetime.fromisoformat(op["end"]))
            out.append({"ok": True})
        elif kind == "post":
            r = requests.post(store.config.online_store.path + op["path"], json=op["body"])
            out.append({"status": r.status_code, "json": r.json()})
        else:
            resp = store.get_online_features(
                features=["events:clicks", "events:score", "events:label"],
                entity_rows=[{"user_id": u} for u in op["users"]],
            )
            d = resp.to_dict()
            d["statuses"] = [[FieldStatus.Name(s) for s in r.statuses] for r in resp.proto.results]
            out.append(d)
    except Exception as e:
        out.append({"error": f"{type(e).__name__}: {e}"})
json.dump(out, sys.stdout)
"""


def run_writer(repo: Path, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(FEAST_PY), "-c", WRITER],
        check=False, input=json.dumps(ops), capture_output=True, text=True, cwd=repo,
        env=_feast_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"Feast SDK script failed:\n{proc.stderr}"
    out: list[dict[str, Any]] = json.loads(proc.stdout)
    return out


def expected(users: list[int]) -> dict[str, list[Any]]:
    """What `read` returns for users whose rows came from WRITER's `frame`."""
    return {
        "user_id": users,
        "clicks": [10 * u for u in users],
        "score": [u / 4 for u in users],
        "label": [f"u{u}" for u in users],
    }


def test_sdk_writes(tmp_path: Path) -> None:
    """`write_to_online_store`, `push` with each `to`, `materialize`, `materialize_incremental`
    from the SDK, unchanged, against a real server; read back through `get_online_features`."""
    import pyarrow as pa

    _require_feast_venv()
    config = tmp_path / "features.yaml"
    config.write_text(WRITE_REGISTRY)
    events = tmp_path / "events.parquet"
    # in the offline store before any call: users 100, 101 in January, 110, 111 in February
    users = [100, 101, 110, 111]
    times = ["2026-01-01T00:00:00Z"] * 2 + ["2026-02-01T00:00:00Z"] * 2
    pq.write_table(
        pa.table({
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array(times, pa.string()).cast(pa.timestamp("us", tz="UTC")),
            "clicks": pa.array([10 * u for u in users], pa.int64()),
            "score": pa.array([u / 4 for u in users], pa.float32()),
            "label": pa.array([f"u{u}" for u in users]),
        }),
        events,
    )  # fmt: skip
    server = start_server(config, tmp_path / "db", tmp_path / "server.log")
    try:
        repo = tmp_path / "repo"
        write_repo(repo, server, repo / "data" / "registry.db")
        (repo / "definitions.py").write_text(WRITE_DEFINITIONS.replace("EVENTS", str(events)))
        proc = subprocess.run(
            [str(FEAST_CLI), "apply"],
            check=False, capture_output=True, text=True, cwd=repo, env=_feast_env(), timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, f"feast apply failed:\n{proc.stdout}\n{proc.stderr}"
        march = "2026-03-01T00:00:00"
        out = run_writer(
            repo,
            [
                {"op": "materialize", "start": "2025-12-31T00:00:00+00:00",
                 "end": "2026-01-15T00:00:00+00:00"},
                {"op": "read", "users": [100, 101, 110]},
                {"op": "materialize_incremental", "end": "2026-02-15T00:00:00+00:00"},
                {"op": "read", "users": [110, 111]},
                {"op": "write", "users": [1, 2], "t": march},
                {"op": "push", "users": [3, 4], "t": march, "to": "online"},
                {"op": "push", "users": [5, 6], "t": march, "to": "offline"},
                {"op": "push", "users": [7, 8], "t": march, "to": "online_and_offline"},
                {"op": "read", "users": [1, 2, 3, 4, 7, 8]},
                {"op": "read", "users": [5, 6]},
                # the offline pushes are in the Parquet file: our incremental run loads them
                {"op": "post", "path": "/materialize-incremental",
                 "body": {"end_ts": "2026-06-01T00:00:00Z", "feature_views": ["events"]}},
                {"op": "read", "users": [5, 6]},
                {"op": "write", "view": "narrow", "users": [1], "t": march},
            ],
        )  # fmt: skip
    finally:
        stop_server(server)
    (mat, jan, inc, feb, write, push_on, push_off, push_both, online, not_yet, ours, offline,
     narrow) = out  # fmt: skip
    for step in (mat, inc, write, push_on, push_off, push_both):
        assert step == {"ok": True}, step
    assert {k: v for k, v in jan.items() if k != "statuses"} == {
        "user_id": [100, 101, 110],
        "clicks": [1000, 1010, None],
        "score": [25.0, 25.25, None],
        "label": ["u100", "u101", None],
    }
    assert feb["clicks"] == [1100, 1110], feb
    assert {k: v for k, v in online.items() if k != "statuses"} == expected([1, 2, 3, 4, 7, 8])
    assert not_yet["statuses"][1:] == [["NOT_FOUND"] * 2] * 3, not_yet  # offline only
    assert ours["status"] == 200, ours
    assert {k: v for k, v in offline.items() if k != "statuses"} == expected([5, 6])
    rows = pq.read_table(events).to_pylist()
    assert {r["user_id"] for r in rows} == {100, 101, 110, 111, 5, 6, 7, 8}
    # our 400 reaches the SDK's exception with its message
    assert narrow["error"].startswith("RuntimeError: Unable to write online store data"), narrow
    assert "Error_code=400" in narrow["error"]
    assert "df: missing column 'b' (float) of feature view 'narrow'" in narrow["error"]


ODFV_SERVER_REGISTRY = """
project: feastsdk_odfv
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: user_account
    entities: [user]
    features: [{name: balance, dtype: float64}]
on_demand_feature_views:
  - name: headroom
    sources: ["user_account:balance"]
    request_source: {name: price_request, schema: [{name: price, dtype: float64}]}
    features: [{name: headroom, dtype: float64}]
    transform: sdk_tx:headroom
    mode: pandas
feature_services:
  - name: budget_svc
    features: ["user_account:balance", "headroom:headroom"]
"""

ODFV_SERVER_TRANSFORM = """
import pandas as pd

def headroom(df):
    return pd.DataFrame({"headroom": df["balance"] - df["price"]})
"""

# The same view, request source and on-demand view as a Feast user defines them: Feast's SDK
# with a `remote` online store sends the feature service's name and the request data to the
# server, which runs the transform (docs/on-demand.md, "Feast").
ODFV_FEAST_DEFINITIONS = """
from datetime import timedelta

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

user = Entity(name="user", join_keys=["user_id"])
user_account = FeatureView(
    name="user_account",
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name="user_id", dtype=Int64), Field(name="balance", dtype=Float64)],
    source=FileSource(path="SAMPLE_DIR/user_account.parquet", timestamp_field="event_timestamp"),
)
price_request = RequestSource(name="price_request", schema=[Field(name="price", dtype=Float64)])


@on_demand_feature_view(
    sources=[user_account, price_request],
    schema=[Field(name="headroom", dtype=Float64)],
    mode="pandas",
)
def headroom(inputs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"headroom": inputs["balance"] - inputs["price"]})


budget_svc = FeatureService(name="budget_svc", features=[user_account[["balance"]], headroom])
"""


def test_sdk_feature_service_with_an_on_demand_view(tmp_path: Path) -> None:
    _require_feast_venv()
    config = tmp_path / "features.yaml"
    config.write_text(ODFV_SERVER_REGISTRY)
    (tmp_path / "sdk_tx.py").write_text(ODFV_SERVER_TRANSFORM)
    sample = generate(tmp_path / "sample", 20)
    sample_dir = Path(sample.user_profile_path).parent
    account = pq.read_table(sample_dir / "user_account.parquet")
    with Store(tmp_path / "db", Registry.from_yaml(config)) as store:
        store.write("user_account", account)
    balance = dict(zip(account.column("user_id").to_pylist(),
                       account.column("balance").to_pylist(), strict=True))  # fmt: skip
    server = start_server(config, tmp_path / "db", tmp_path / "server.log", "--no-auth")
    try:
        repo = tmp_path / "repo"
        write_repo(repo, server, repo / "data" / "registry.db")
        (repo / "definitions.py").write_text(
            ODFV_FEAST_DEFINITIONS.replace("SAMPLE_DIR", str(sample_dir))
        )
        proc = subprocess.run(
            [str(FEAST_CLI), "apply"],
            check=False, capture_output=True, text=True, cwd=repo, env=_feast_env(),
            timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, f"feast apply failed:\n{proc.stdout}\n{proc.stderr}"
        rows = [{"user_id": 3, "price": 10.0}, {"user_id": 5, "price": 0.5},
                {"user_id": MISSING, "price": 1.0}]  # fmt: skip
        out = run_sdk(repo, [{"service": "budget_svc", "rows": rows}])
    finally:
        stop_server(server)
    (call,) = out["calls"]
    assert "error" not in call, call
    d = call["dict"]
    assert d["user_id"] == [3, 5, MISSING]
    assert d["balance"][:2] == [balance[3], balance[5]]
    assert d["headroom"][:2] == [balance[3] - 10.0, balance[5] - 0.5]
    assert d["headroom"][2] is None  # the balance is not found: pandas NaN, answered null
    assert "price" not in d  # request data is not answered, as Feast's own server does
