"""Feast's write endpoints (issue 17) on a real server process, with Feast's request bodies:
``POST /push`` with each ``to``, ``/write-to-online-store``, ``/materialize`` and
``/materialize-incremental``; the offline half read back by our batch loader from a Parquet
directory and a Delta table; every bad input answered 4xx with nothing stored; keys.
The Feast SDK's side of the same endpoints is in test_feast_sdk.py."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import deltalake
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from serving.frontend.auth import KeyFile
from tests.harness import Server, Servers, http, metric, scrape

pytestmark = pytest.mark.integration

REGISTRY = """
project: feastwrite
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: account
    entities: [user]
    push_source: account_push
    features:
      - {name: country, dtype: string}
      - {name: age, dtype: int32}
      - {name: orders, dtype: int64}
      - {name: premium, dtype: bool}
      - {name: balance, dtype: float64}
      - {name: signup_ts, dtype: timestamp}
      - {name: avatar, dtype: bytes}
      - {name: embedding, dtype: float32_array, dim: 2}
    batch_source: {type: parquet, path: account_dir}
  - name: clicks
    entities: [user]
    push_source: clicks_push
    features: [{name: ctr, dtype: float32}]
    batch_source: {type: delta, path: clicks_delta, timestamp_field: ts}
  - name: no_source
    entities: [user]
    push_source: bare_push
    features: [{name: x, dtype: float32}]
  - name: split_a
    entities: [user]
    push_source: split_push
    features: [{name: x, dtype: float32}]
    batch_source: {type: parquet, path: split_a_dir}
  - name: split_b
    entities: [user]
    push_source: split_push
    features: [{name: x, dtype: float32}]
    batch_source: {type: parquet, path: a_file/split_b_dir}
  - name: crashed
    entities: [user]
    features: [{name: x, dtype: float32}]
    batch_source: {type: parquet, path: crashed_dir}
"""

T0 = "2026-01-01T00:00:00"


def account_df(users: list[int], t: str = T0, age: int = 30) -> dict[str, list[Any]]:
    n = len(users)
    return {
        "user_id": users,
        "event_timestamp": [t] * n,
        "created": [None] * n,  # Feast's SDK sends it; ignored
        "country": ["DE"] * n,
        "age": [age + u for u in users],
        "orders": [2**40 + u for u in users],
        "premium": [u % 2 == 0 for u in users],
        "balance": [u + 0.25 for u in users],
        "signup_ts": [1_700_000_000 + u for u in users],
        "avatar": [base64.b64encode(bytes([u % 256]) * (u % 5)).decode() for u in users],
        "embedding": [[u, -u] for u in users],
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("feast_write")
    config = tmp / "features.yaml"
    config.write_text(REGISTRY)
    (tmp / "a_file").write_text("not a directory")
    keys = KeyFile(tmp / "keys.json")
    tokens = {
        "writer": keys.create("writer", read=["*"], write=["*"])[0],
        "reader": keys.create("reader", read=["*"])[0],
        "admin": keys.create("admin", read=["*"], write=["*"], admin=True)[0],
    }
    # what a crash during an offline push leaves: a hidden temporary file, removed when a
    # server starts once it is old; a recent one may be another node's push in progress
    stale_dir = tmp / "crashed_dir"
    stale_dir.mkdir()
    for name, age in ((".push-crashed.parquet.tmp", 7200), (".push-recent.parquet.tmp", 10)):
        (stale_dir / name).write_bytes(b"PAR1 half")
        t = time.time() - age
        os.utime(stale_dir / name, (t, t))
    servers = Servers(tmp)
    try:
        node = servers.serve(config, "db")
        authed = servers.serve(config, "db_authed", "--keys-file", str(tmp / "keys.json"))
        small = servers.serve(config, "db_small", "--no-auth", "--max-message-bytes", "2000")
        yield {"tmp": tmp, "node": node, "authed": authed, "small": small, "tokens": tokens}
    finally:
        servers.close()


def read(server: Server, refs: list[str], users: list[int]) -> dict[str, Any]:
    """{feature: (values, statuses)} from Feast's /get-online-features."""
    status, body = server.post(
        "/get-online-features", {"features": refs, "entities": {"user_id": users}}
    )
    assert status == 200, body
    names = body["metadata"]["feature_names"]
    return {n: (r["values"], r["statuses"]) for n, r in zip(names, body["results"], strict=True)}


def parquet_files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_push_online_counts_and_merge_rule(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    status, body = node.post(
        "/push", {"push_source_name": "account_push", "df": account_df([1, 2, 3]), "to": "online"}
    )
    assert status == 200, body
    assert body["views"] == [
        {"feature_view": "account", "rows": 3, "written": 3, "skipped_older": 0}
    ]
    got = read(node, ["account:age", "account:orders", "account:premium", "account:avatar",
                      "account:embedding", "account:signup_ts"], [1, 2, 3, 99])  # fmt: skip
    assert got["age"] == ([31, 32, 33, None], ["PRESENT"] * 3 + ["NOT_FOUND"])
    assert got["orders"][0][:3] == [2**40 + 1, 2**40 + 2, 2**40 + 3]
    assert got["premium"][0][:3] == [False, True, False]
    assert got["avatar"][0][:3] == [base64.b64encode(bytes([u]) * u).decode() for u in (1, 2, 3)]
    assert got["embedding"][0][:3] == [[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]]
    assert got["signup_ts"][0][:3] == [1_700_000_001, 1_700_000_002, 1_700_000_003]
    # an older event for user 1 and a newer one for user 2: one skipped, one written
    df = account_df([1, 2], age=50)
    df["event_timestamp"] = ["2025-12-31T23:59:59Z", "2026-01-02T00:00:00+01:00"]
    status, body = node.post("/push", {"push_source_name": "account_push", "df": df})
    assert status == 200, body
    assert body["views"][0] == {
        "feature_view": "account",
        "rows": 2,
        "written": 1,
        "skipped_older": 1,
    }
    assert read(node, ["account:age"], [1, 2])["age"][0] == [31, 52]


def test_write_to_online_store_is_an_online_push(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    status, body = node.post(
        "/write-to-online-store",
        {"feature_view_name": "account", "df": account_df([10, 11]), "allow_registry_cache": True},
    )
    assert status == 200, body
    assert body == {"feature_view": "account", "rows": 2, "written": 2, "skipped_older": 0}
    assert read(node, ["account:age"], [10, 11])["age"][0] == [40, 41]


def test_offline_push_parquet_then_materialize_incremental(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    directory: Path = env["tmp"] / "account_dir"
    before = parquet_files(directory)
    status, body = node.post(
        "/push", {"push_source_name": "account_push", "df": account_df([20, 21]), "to": "offline"}
    )
    assert status == 200, body
    (entry,) = body["views"]
    new = [f for f in parquet_files(directory) if f not in before]
    assert len(new) == 1, new
    assert not new[0].startswith("."), new  # no temporary file left behind
    assert entry == {"feature_view": "account", "offline": str(directory / new[0])}
    # offline only: the store does not have them yet
    assert read(node, ["account:age"], [20, 21])["age"][1] == ["NOT_FOUND"] * 2
    # the batch loader reads the new file: the next materialize-incremental loads it
    status, body = node.post(
        "/materialize-incremental", {"end_ts": "2026-06-01T00:00:00Z", "feature_views": ["account"]}
    )
    assert status == 200, body
    assert body["views"][0]["feature_view"] == "account"
    assert read(node, ["account:age", "account:avatar"], [20, 21])["age"][0] == [50, 51]
    rows = pads.dataset(str(directory), format="parquet").to_table().to_pylist()
    assert {r["user_id"] for r in rows} >= {20, 21}


def test_offline_push_delta_then_materialize_incremental(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    table = env["tmp"] / "clicks_delta"
    deltalake.write_deltalake(
        str(table),
        pa.table({
            "user_id": pa.array([1], pa.int64()),
            "ts": pa.array([0], pa.timestamp("us", tz="UTC")),
            "ctr": pa.array([0.5], pa.float32()),
        }),
    )  # fmt: skip
    df = {"user_id": [5, 6], "ts": [T0, T0], "ctr": [0.25, 0.75]}
    status, body = node.post(
        "/push", {"push_source_name": "clicks_push", "df": df, "to": "online_and_offline"}
    )
    assert status == 200, body
    offline, online = body["views"]
    assert offline == {"feature_view": "clicks", "offline": str(table), "delta_version": 1}
    assert online == {"feature_view": "clicks", "rows": 2, "written": 2, "skipped_older": 0}
    assert deltalake.DeltaTable(str(table)).version() == 1
    rows = deltalake.DeltaTable(str(table)).to_pyarrow_table().to_pylist()
    assert sorted((r["user_id"], r["ctr"]) for r in rows) == [(1, 0.5), (5, 0.25), (6, 0.75)]
    # an offline-only push: the next incremental run loads the new Delta version
    status, body = node.post(
        "/push", {"push_source_name": "clicks_push", "df": {"user_id": [7], "ts": [T0],
                                                              "ctr": [1.5]}, "to": "offline"},
    )  # fmt: skip
    assert status == 200, body
    assert read(node, ["clicks:ctr"], [7])["ctr"][1] == ["NOT_FOUND"]
    status, body = node.post(
        "/materialize-incremental", {"end_ts": "2026-06-01T00:00:00Z", "feature_views": ["clicks"]}
    )
    assert status == 200, body
    assert read(node, ["clicks:ctr"], [1, 5, 7])["ctr"][0] == [0.5, 0.25, 1.5]


def test_materialize_window(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    status, body = node.post(
        "/push",
        {"push_source_name": "account_push", "to": "offline",
         "df": account_df([30], t="2026-03-01T00:00:00") | {}},
    )  # fmt: skip
    assert status == 200, body
    # a window that ends before the row: nothing; one that holds it: loaded
    status, body = node.post(
        "/materialize",
        {"start_ts": "2026-02-01T00:00:00Z", "end_ts": "2026-02-02T00:00:00Z",
         "feature_views": ["account"]},
    )  # fmt: skip
    assert status == 200, body
    assert read(node, ["account:age"], [30])["age"][1] == ["NOT_FOUND"]
    status, body = node.post(
        "/materialize",
        {"start_ts": "2026-02-28T00:00:00", "end_ts": "2026-03-02T00:00:00",
         "feature_views": ["account"]},
    )  # fmt: skip
    assert status == 200, body
    assert body["views"][0]["written"] >= 1
    assert read(node, ["account:age"], [30])["age"][0] == [60]


def test_failure_between_halves_says_what_was_written_where(env: dict[str, Any]) -> None:
    """split_push feeds two views; the second one's source directory cannot be created (its
    parent is a file), after the first one's file was written."""
    node: Server = env["node"]
    df = {"user_id": [1], "event_timestamp": [T0], "x": [1.0]}
    status, body = node.post("/push", {"push_source_name": "split_push", "df": df,
                                       "to": "online_and_offline"})  # fmt: skip
    assert status == 503, body
    message = body["error"]["message"]
    written = parquet_files(env["tmp"] / "split_a_dir")
    assert len(written) == 1
    assert "failed part way" in message
    assert f"offline: 1 rows to {env['tmp'] / 'split_a_dir' / written[0]}" in message
    assert "split_b_dir" in message
    # the online half was not reached
    assert read(node, ["split_a:x", "split_b:x"], [1])["x"][1] == ["NOT_FOUND"]


def _bad(df_change: dict[str, Any], **body: Any) -> dict[str, Any]:
    df = account_df([40, 41])
    df.update(df_change)
    for k, v in list(df.items()):
        if v is None:
            del df[k]
    return {"push_source_name": "account_push", "df": df, **body}


BAD_INPUTS = [
    (
        "unknown push source",
        {"push_source_name": "acount_push", "df": account_df([40])},
        404,
        "push source 'acount_push' not found (no feature view declares it as push_source) "
        "(did you mean 'account_push'?)",
    ),
    (
        "missing column",
        _bad({"age": None}),
        400,
        "df: missing column 'age' (int32) of feature view 'account'",
    ),
    (
        "wrong type",
        _bad({"age": [1, "old"]}),
        400,
        "df['age'] row 1: expected an integer (int32), got a string 'old'",
    ),
    (
        "fraction into an integer",
        _bad({"orders": [1, 2.5]}),
        400,
        "df['orders'] row 1: expected an integer (int64), got a number 2.5",
    ),
    (
        "bool into a float",
        _bad({"balance": [1.0, True]}),
        400,
        "df['balance'] row 1: expected a number (double), got a boolean True",
    ),
    (
        "event timestamp that does not parse",
        _bad({"event_timestamp": [T0, "yesterday"]}),
        400,
        "df['event_timestamp'] row 1: expected an ISO 8601 time or epoch seconds",
    ),
    (
        "null join key",
        _bad({"user_id": [40, None]}),
        400,
        "df['user_id'] row 1: must not be null (a join key)",
    ),
    (
        "wrong array length",
        _bad({"embedding": [[1, 2], [1, 2, 3]]}),
        400,
        "df['embedding'] row 1: expected a list of numbers",
    ),
    (
        "bad base64",
        _bad({"avatar": ["", "abc"]}),
        400,
        "df['avatar'] row 1: expected base64 text (binary), got a string 'abc'",
    ),
    (
        "unequal lengths",
        _bad({"country": ["DE"]}),
        400,
        "df: columns of unequal length: 'user_id' has 2, 'event_timestamp' has 2",
    ),
    (
        "bad to",
        _bad({}, to="everywhere"),
        400,
        "field 'to' must be one of online, offline, online_and_offline, got 'everywhere'",
    ),
    (
        "df not columns",
        {"push_source_name": "account_push", "df": [1, 2]},
        400,
        "field 'df' must be a JSON object of columns",
    ),
    ("no push source name", {"df": account_df([40])}, 400, "missing field 'push_source_name'"),
]


@pytest.mark.parametrize("to", ["online", "offline", "online_and_offline"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_push_writes_nothing(env: dict[str, Any], case: tuple[Any, ...], to: str) -> None:
    _, body, status, message = case
    node: Server = env["node"]
    directory: Path = env["tmp"] / "account_dir"
    before = parquet_files(directory)
    got, answer = node.post("/push", {"to": to, **body})
    assert got == status, answer
    assert message in answer["error"]["message"], answer
    assert answer["detail"] == answer["error"]["message"]  # FastAPI's field, for Feast clients
    assert parquet_files(directory) == before
    assert read(node, ["account:age"], [40, 41])["age"][1] == ["NOT_FOUND"] * 2


def test_bad_write_to_online_store_writes_nothing(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    cases = [
        ({"feature_view_name": "acount", "df": account_df([42])}, 404,
         "feature view 'acount' not found (did you mean 'account'?)"),
        ({"feature_view_name": "account", "df": _bad({"premium": [True, 1]})["df"]}, 400,
         "df['premium'] row 1: expected true or false (bool), got a number 1"),
        ({"feature_view_name": "account", "df": account_df([42]), "allow_registry_cache": "y"},
         400, "field 'allow_registry_cache' must be true or false"),
    ]  # fmt: skip
    for body, status, message in cases:
        got, answer = node.post("/write-to-online-store", body)
        assert (got, message in answer["error"]["message"]) == (status, True), answer
    assert read(node, ["account:age"], [40, 41, 42])["age"][1] == ["NOT_FOUND"] * 3


def test_offline_push_needs_a_directory_or_delta_source(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    df = {"user_id": [1], "event_timestamp": [T0], "x": [1.0]}
    status, body = node.post("/push", {"push_source_name": "bare_push", "df": df, "to": "offline"})
    assert status == 400, body
    assert body["error"]["message"] == (
        "feature view 'no_source' has no batch_source: an offline push appends to it"
    )
    assert read(node, ["no_source:x"], [1])["x"][1] == ["NOT_FOUND"]


def test_body_over_the_size_limit(env: dict[str, Any]) -> None:
    small: Server = env["small"]
    status, body = small.post("/push", {"push_source_name": "account_push",
                                        "df": account_df(list(range(100)))})  # fmt: skip
    assert status == 413, body
    assert body["error"]["code"] == "message_too_large"
    # the limit, and the flag that changes it
    assert body["detail"] == "request body exceeds 2000 bytes (the server's --max-message-bytes)"
    assert read(small, ["account:age"], [0])["age"][1] == ["NOT_FOUND"]


def test_bad_materialize_bodies(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    cases = [
        ({"end_ts": "2026-01-01T00:00:00"}, 400, "missing field 'start_ts'"),
        ({"start_ts": "soon", "end_ts": T0}, 400, "field 'start_ts'"),
        ({"start_ts": T0, "end_ts": T0, "feature_views": ["acount"]}, 404,
         "feature view 'acount' not found"),
        ({"start_ts": T0, "end_ts": T0, "version": "v2"}, 400, "field 'version'"),
    ]  # fmt: skip
    for body, status, message in cases:
        got, answer = node.post("/materialize", body)
        assert (got, message in answer["error"]["message"]) == (status, True), answer
    got, answer = node.post("/materialize-incremental", {})
    assert got == 400, answer
    assert "missing field 'end_ts'" in answer["error"]["message"], answer


def test_keys(env: dict[str, Any]) -> None:
    url, tokens = env["authed"].url, env["tokens"]
    push = {"push_source_name": "account_push", "df": account_df([60])}
    write = {"feature_view_name": "account", "df": account_df([60])}
    mat = {"start_ts": T0, "end_ts": "2026-06-01T00:00:00", "feature_views": ["account"]}
    for path, body in [("/push", push), ("/push", {**push, "to": "offline"}),
                       ("/write-to-online-store", write)]:  # fmt: skip
        status, answer = http(url + path, body)
        assert status == 401, answer
        status, answer = http(url + path, body, key=tokens["reader"])
        assert status == 403, answer
        assert answer["error"]["message"] == "this API key may not write feature view 'account'"
    for path, body in [
        ("/materialize", mat),
        ("/materialize-incremental", {"end_ts": T0, "feature_views": ["account"]}),
    ]:
        assert http(url + path, body)[0] == 401
        status, answer = http(url + path, body, key=tokens["writer"])
        assert status == 403, answer
        assert answer["detail"] == "this API key is not an admin key", answer
    q = {"features": ["account:age"], "entities": {"user_id": [60]}}
    status, answer = http(url + "/get-online-features", q, key=tokens["reader"])
    assert answer["results"][1]["statuses"] == ["NOT_FOUND"]
    status, answer = http(url + "/push", push, key=tokens["writer"])
    assert status == 200, answer
    status, answer = http(url + "/push", {**push, "to": "offline"}, key=tokens["writer"])
    assert status == 200, answer
    status, answer = http(url + "/materialize", mat, key=tokens["admin"])
    assert status == 200, answer
    status, answer = http(url + "/get-online-features", q, key=tokens["reader"])
    assert answer["results"][1]["values"] == [90]


def test_read_errors_carry_detail_too(env: dict[str, Any]) -> None:
    """Every HTTP error body has FastAPI's `detail` beside ours, reads and unknown paths too."""
    node: Server = env["node"]
    status, body = node.post(
        "/get-online-features", {"features": ["acount:age"], "entities": {"user_id": [1]}}
    )
    assert status == 404, body
    assert body["detail"] == body["error"]["message"]
    assert "unknown feature view 'acount'" in body["detail"]
    status, body = node.post("/no-such-endpoint", {})
    assert status == 404, body
    assert body["detail"] == body["error"]["message"]


def test_a_batch_without_rows_is_a_no_op(env: dict[str, Any]) -> None:
    """Feast's remote store sends `df: {}` for a batch without rows (an empty materialize
    window): answered 200, nothing written, no empty file in the source."""
    node: Server = env["node"]
    directory: Path = env["tmp"] / "account_dir"
    before = parquet_files(directory)
    status, body = node.post("/write-to-online-store", {"feature_view_name": "account", "df": {}})
    assert status == 200, body
    assert body == {"feature_view": "account", "rows": 0, "written": 0, "skipped_older": 0}
    empty = {k: [] for k in account_df([1])}
    for df in ({}, empty):
        status, body = node.post(
            "/push", {"push_source_name": "account_push", "df": df, "to": "online_and_offline"}
        )
        assert status == 200, body
        assert body["views"] == [
            {"feature_view": "account", "rows": 0, "written": 0, "skipped_older": 0}
        ]
    assert parquet_files(directory) == before


def test_stale_push_temp_files_are_removed_at_start(env: dict[str, Any]) -> None:
    """The env fixture left two temporary files of offline pushes before the servers started."""
    directory: Path = env["tmp"] / "crashed_dir"
    assert ".push-crashed.parquet.tmp" not in os.listdir(directory)
    assert ".push-recent.parquet.tmp" in os.listdir(directory)  # maybe another node's
    log = (env["tmp"] / "db.log").read_text()
    assert "crashed_dir/.push-crashed.parquet.tmp, left by an offline push that did not" in log


def test_v1_push_refuses_a_fraction_for_an_integer_column(env: dict[str, Any]) -> None:
    """pyarrow's cast would store 1.5 as 1: the column and row are named instead, nothing
    of the batch is written."""
    node: Server = env["node"]
    df = account_df([80, 81])
    rows = {k: v for k, v in df.items() if k not in ("created", "avatar", "signup_ts")}
    rows["event_timestamp"] = [1_767_225_600_000_000] * 2  # epoch microseconds
    rows["signup_ts"] = [1_700_000_000_000_000] * 2
    rows["avatar"] = ["ab", "cd"]
    rows["age"] = [1, 1.5]
    status, body = node.post("/v1/push", {"feature_view": "account", "rows": rows})
    assert status == 400, body
    assert body["detail"] == "rows['age'] row 1: expected an integer (int32), got a number 1.5"
    assert read(node, ["account:age"], [80, 81])["age"][1] == ["NOT_FOUND"] * 2
    rows["age"] = [1, 2]
    status, body = node.post("/v1/push", {"feature_view": "account", "rows": rows})
    assert status == 200, body
    got = read(node, ["account:age", "account:avatar", "account:signup_ts"], [80, 81])
    assert got["age"][0] == [1, 2]
    assert got["avatar"][0] == [base64.b64encode(b"ab").decode(), base64.b64encode(b"cd").decode()]
    assert got["signup_ts"][0] == [1_700_000_000] * 2


def test_write_endpoints_are_in_the_request_metrics(env: dict[str, Any]) -> None:
    node: Server = env["node"]
    before = scrape(node.url)
    assert (
        node.post("/push", {"push_source_name": "account_push", "df": account_df([90])})[0] == 200
    )
    assert node.post("/write-to-online-store", {"feature_view_name": "nope", "df": {}})[0] == 404
    after = scrape(node.url)
    name = "feature_serving_requests_total"
    for labels in (
        {"api": "feast-http", "method": "push", "code": "200"},
        {"api": "feast-http", "method": "write-to-online-store", "code": "404"},
    ):
        assert metric(after, name, **labels) == metric(before, name, **labels) + 1, labels
    assert metric(after, "feature_serving_request_duration_seconds_count", api="feast-http",
                  method="push") > 0  # fmt: skip
