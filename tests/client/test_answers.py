"""The clients against a real node serving the repo's features.yaml (every feature type, the
sample data): the same types over gRPC and HTTP, numpy scalars as entity values, a string where
a list of features belongs, and the answers as pandas / polars / arrow frames."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving import Registry, Store
from serving.client import (
    AsyncFeatureClient,
    AsyncShardedFeatureClient,
    ColumnsResult,
    FeatureClient,
    ShardedFeatureClient,
)
from serving.errors import InvalidArgumentError
from serving.sample import SampleInfo, generate, user_account_values, user_profile_value
from tests.harness import ROOT, Server, start_server, stop_server

pytestmark = pytest.mark.integration

N_USERS = 200
#: one reference of every feature of every view but the 200-wide user_profile (a few of those)
ACCOUNT = [
    "user_account:country",
    "user_account:age",
    "user_account:lifetime_orders",
    "user_account:is_premium",
    "user_account:balance",
    "user_account:signup_ts",
    "user_account:avatar_sha",
    "user_account:embedding",
]
PROFILE = ["user_profile:f000", "user_profile:f007"]
TYPES = {
    "user_account:country": "string",
    "user_account:age": "int32",
    "user_account:lifetime_orders": "int64",
    "user_account:is_premium": "bool",
    "user_account:balance": "float64",
    "user_account:signup_ts": "timestamp",
    "user_account:avatar_sha": "bytes",
    "user_account:embedding": "float32_array",
    "user_profile:f000": "float32",
    "user_profile:f007": "float32",
    "item_stats:ctr": "float32",
    "item_stats:impressions": "int64",
    "item_stats:category": "string",
    "user_item:affinity": "float32",
    "user_item:last_click_ts": "timestamp",
}
#: users with values and one without (NOT_FOUND), in a shuffled order
USERS = [17, 3, 10**9, 150, 42, 99, 0]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleInfo:
    return generate(tmp_path_factory.mktemp("sample"), N_USERS)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, sample: SampleInfo) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("client")
    config = ROOT / "features.yaml"
    with Store(tmp / "db", Registry.from_yaml(config)) as store:
        for view, path in sample.paths.items():
            store.write(view, pq.read_table(path))
    server = start_server(config, tmp / "db", tmp / "server.log", "--no-auth", "--no-ingest")
    try:
        yield server
    finally:
        stop_server(server)


def _clients(node: Server) -> dict[str, FeatureClient]:
    return {
        "grpc": FeatureClient(f"127.0.0.1:{node.grpc}", timeout=10),
        "http": FeatureClient(f"127.0.0.1:{node.http}", transport="http", timeout=10),
    }


def _same(a: Any, b: Any, what: str) -> None:
    """``a`` and ``b`` equal value by value and type by type (NaN equal to NaN)."""
    assert type(a) is type(b), f"{what}: {type(a)} vs {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, f"{what}: {a.dtype} vs {b.dtype}"
        assert a.shape == b.shape, f"{what}: {a.shape} vs {b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=what)
    else:
        assert [type(x) for x in a] == [type(x) for x in b], what
        assert a == b, what


def _answers(node: Server, entities: dict[str, Any], refs: list[str]) -> dict[str, ColumnsResult]:
    clients = _clients(node)
    try:
        return {t: c.get_features(entities, refs) for t, c in clients.items()}
    finally:
        for c in clients.values():
            c.close()


@pytest.mark.parametrize(
    ("entities", "refs"),
    [
        ({"user_id": USERS}, ACCOUNT + PROFILE),
        ({"item_id": ["item-0001", "item-0999", "no-such-item"]}, ["item_stats:*"]),
        ({}, ["user_item:affinity", "user_item:last_click_ts"]),
    ],
    ids=["user", "item", "user_item"],
)
def test_get_features_same_types_over_grpc_and_http(
    node: Server, sample: SampleInfo, entities: dict[str, Any], refs: list[str]
) -> None:
    if not entities:  # pairs the sample holds, and one it does not
        pairs = pq.read_table(sample.user_item_path).slice(0, 5).to_pydict()
        entities = {
            "user_id": [*pairs["user_id"], 10**9],
            "item_id": [*pairs["item_id"], "item-0001"],
        }
    answers = _answers(node, entities, refs)
    g, h = answers["grpc"], answers["http"]
    assert g.feature_names == h.feature_names
    assert g.dtypes == h.dtypes == {n: TYPES[n] for n in g.feature_names}
    for name in g.feature_names:
        _same(g.columns[name], h.columns[name], name)
    _same(g.statuses, h.statuses, "statuses")
    assert g.event_timestamps is not None
    assert h.event_timestamps is not None
    _same(g.event_timestamps, h.event_timestamps, "event_timestamps")
    assert (g.statuses == 1).any(), "no value present: the comparison proves nothing"


def test_get_features_types_are_the_documented_ones(node: Server) -> None:
    """int64 microseconds for timestamps, a [n x dim] float32 matrix for arrays, bytes as
    bytes (not base64 text), str as str: checked against the sample's own values."""
    for transport, r in _answers(node, {"user_id": USERS}, ACCOUNT).items():
        for i, user in enumerate(USERS):
            if user >= N_USERS:
                assert (r.statuses[i] == 3).all(), transport
                continue
            want = user_account_values(user)
            for j, ref in enumerate(ACCOUNT):
                feature = ref.split(":")[1]
                if want[feature] is None:
                    assert r.statuses[i, j] == 2, (transport, ref, user)
                    continue
                got = r.columns[ref][i]
                w = want[feature]
                if feature == "signup_ts":
                    assert isinstance(got, np.int64)
                    assert got == int(w.timestamp() * 1_000_000), (transport, user)
                elif feature == "embedding":
                    assert r.columns[ref].shape == (len(USERS), 8)
                    np.testing.assert_array_equal(got, np.array(w, np.float32))
                elif feature == "avatar_sha":
                    assert isinstance(got, bytes), (transport, user)
                    assert got == w, (transport, user)
                elif feature == "age":
                    assert r.columns[ref].dtype == np.int32
                    assert got == w
                else:
                    assert got == w, (transport, ref, user)


def test_dense_same_over_grpc_and_http(node: Server) -> None:
    refs = [f"user_profile:f{i:03d}" for i in range(200)]
    clients = _clients(node)
    try:
        g, h = (c.get_dense({"user_id": USERS}, refs) for c in clients.values())
    finally:
        for c in clients.values():
            c.close()
    _same(g.values, h.values, "values")
    _same(g.statuses, h.statuses, "statuses")
    assert g.values[0, 3] == np.float32(user_profile_value(17, 3))
    assert np.isnan(g.values[2]).all()


NUMPY_IDS = [
    list(np.arange(3)),
    [np.int64(0), np.int64(1), np.int64(2)],
    [np.int32(0), np.int32(1), np.int32(2)],
    np.arange(3, dtype=np.uint16),
]


@pytest.mark.parametrize("ids", NUMPY_IDS, ids=["arange-list", "int64", "int32", "uint16-array"])
def test_numpy_scalars_are_entity_values(node: Server, ids: Any) -> None:
    want = [[np.float32(user_profile_value(u, 0))] for u in range(3)]
    clients = _clients(node)
    try:
        for transport, c in clients.items():
            m = c.get_dense({"user_id": ids}, ["user_profile:f000"])
            np.testing.assert_array_equal(m.values, want, err_msg=transport)
    finally:
        for c in clients.values():
            c.close()
    with ShardedFeatureClient(
        {0: [f"127.0.0.1:{node.grpc}"]}, topic_partitions=4, join_keys=[("user_id", "int64")]
    ) as sharded:
        np.testing.assert_array_equal(
            sharded.get_dense({"user_id": ids}, ["user_profile:f000"]).values, want
        )


def test_numpy_strings_are_entity_values(node: Server) -> None:
    items = [np.str_("item-0001"), np.str_("item-0002")]
    for transport, c in _clients(node).items():
        with c:
            r = c.get_features({"item_id": items}, ["item_stats:category"])
            assert r.statuses.tolist() == [[1], [1]], transport
            assert list(r.entities["item_id"]) == ["item-0001", "item-0002"]


@pytest.mark.parametrize(
    ("entities", "message"),
    [
        ({"user_id": [1.5]}, "values must be all ints, all strings or all bytes, got float"),
        ({"user_id": [True]}, "got bool"),
        ({"user_id": [10**20]}, "100000000000000000000 does not fit a 64-bit integer"),
        ({"user_id": "12"}, "give a list of values, not a single string"),
        ({"user_id": np.zeros((2, 2), np.int64)}, "1-dimensional"),
    ],
)
def test_bad_entity_values_are_named(node: Server, entities: dict[str, Any], message: str) -> None:
    for c in _clients(node).values():
        with c, pytest.raises(InvalidArgumentError, match=message):
            c.get_dense(entities, ["user_profile:f000"])


STRING_ERROR = "features must be a list of feature references, not a string"


def test_a_string_for_features_is_refused_by_every_client(node: Server) -> None:
    grpc_target = f"127.0.0.1:{node.grpc}"
    sharded = {"cluster": {0: [grpc_target]}, "topic_partitions": 4}
    keys = [("user_id", "int64")]
    ents = {"user_id": [1]}
    for c in _clients(node).values():
        with c:
            for call in (c.get_dense, c.get_features):
                with pytest.raises(InvalidArgumentError, match=STRING_ERROR):
                    call(ents, "user_profile:f000")
    with ShardedFeatureClient(sharded["cluster"], topic_partitions=4, join_keys=keys) as s:
        for call in (s.get_dense, s.get_features):
            with pytest.raises(InvalidArgumentError, match=STRING_ERROR):
                call(ents, "user_profile:f000")

    async def run_async() -> None:
        async with AsyncFeatureClient(grpc_target) as a:
            for call in (a.get_dense, a.get_features):
                with pytest.raises(InvalidArgumentError, match=STRING_ERROR):
                    await call(ents, "user_profile:f000")
        async with AsyncShardedFeatureClient(
            sharded["cluster"], topic_partitions=4, join_keys=keys
        ) as s:
            for call in (s.get_dense, s.get_features):
                with pytest.raises(InvalidArgumentError, match=STRING_ERROR):
                    await call(ents, "user_profile:f000")

    asyncio.run(run_async())


# -- data frames -----------------------------------------------------------------------------


def test_dense_to_pandas_polars_arrow(node: Server) -> None:
    users = [3, 10**9, 7]
    with FeatureClient(f"127.0.0.1:{node.grpc}") as c:
        m = c.get_dense({"user_id": users}, PROFILE)
    df = m.to_pandas()
    assert list(df.columns) == ["user_id", "f000", "f007"]
    assert df["user_id"].tolist() == users
    assert df["f000"].dtype == np.float32
    assert df["f007"].iloc[2] == np.float32(user_profile_value(7, 7))
    assert np.isnan(df["f000"].iloc[1])
    full = m.to_pandas(full_feature_names=True, statuses=True)
    assert list(full.columns) == [
        "user_id",
        "user_profile__f000",
        "user_profile__f000__status",
        "user_profile__f007",
        "user_profile__f007__status",
    ]
    assert full["user_profile__f000__status"].tolist() == ["PRESENT", "NOT_FOUND", "PRESENT"]

    pdf = m.to_polars()
    assert pdf.columns == ["user_id", "f000", "f007"]
    assert pdf.schema["f000"] == pl.Float32
    assert pdf["f000"].to_list()[1] is None
    assert pdf["user_id"].to_list() == users

    t = m.to_arrow(full_feature_names=True)
    assert t.column_names == ["user_id", "user_profile__f000", "user_profile__f007"]
    assert t.column("user_profile__f000").null_count == 1
    assert t.column("user_profile__f007").to_pylist()[0] == pytest.approx(
        user_profile_value(3, 7), rel=1e-6
    )


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_columns_to_pandas(node: Server, transport: str) -> None:
    c = _clients(node)[transport]
    with c:
        r = c.get_features({"user_id": USERS}, ACCOUNT)
    df = r.to_pandas(event_timestamps=True)
    names = [ref.split(":")[1] for ref in ACCOUNT]
    assert list(df.columns)[:2] == ["user_id", "country"]
    assert [c for c in df.columns if not c.endswith("__event_timestamp")] == ["user_id", *names]
    assert str(df["age"].dtype) == "Int32"
    assert str(df["lifetime_orders"].dtype) == "Int64"
    assert str(df["is_premium"].dtype) == "boolean"
    assert str(df["signup_ts"].dtype) == "datetime64[us, UTC]"
    missing = USERS.index(10**9)
    assert df["age"].isna().iloc[missing]
    assert df["country"].isna().iloc[missing]
    assert df["signup_ts"].isna().iloc[missing]
    assert df["signup_ts__event_timestamp"].isna().iloc[missing]
    for i, user in enumerate(USERS):
        if user >= N_USERS:
            continue
        want = user_account_values(user)
        for f in names:
            got = df[f].iloc[i]
            if want[f] is None:
                assert pd.isna(got) if f != "embedding" else got is None, (f, user)
            elif f == "embedding":
                np.testing.assert_array_equal(got, np.array(want[f], np.float32))
            elif f == "signup_ts":
                assert got == pd.Timestamp(want[f])
            else:
                assert got == want[f], (f, user)


def test_columns_to_polars_and_arrow(node: Server) -> None:
    with FeatureClient(f"127.0.0.1:{node.http}", transport="http") as c:
        r = c.get_features({"user_id": USERS}, ACCOUNT)
    pdf = r.to_polars(full_feature_names=True, statuses=True)
    assert pdf.columns[0] == "user_id"
    assert pdf.schema["user_account__age"] == pl.Int32
    assert pdf.schema["user_account__embedding"] == pl.Array(pl.Float32, 8)
    assert pdf.schema["user_account__signup_ts"] == pl.Datetime("us", "UTC")
    assert pdf.schema["user_account__avatar_sha"] == pl.Binary
    missing = USERS.index(10**9)
    assert pdf["user_account__age"][missing] is None
    assert pdf["user_account__age__status"][missing] == "NOT_FOUND"

    t = r.to_arrow()
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert t.schema.field("signup_ts").type == pa.timestamp("us", tz="UTC")
    assert t.schema.field("avatar_sha").type == pa.binary()
    want = user_account_values(USERS[0])
    assert t.column("country")[0].as_py() == want["country"]
    assert t.column("avatar_sha")[0].as_py() in (want["avatar_sha"], None)
    assert t.column("age").null_count == int((r.statuses[:, 1] != 1).sum())


def test_frame_names_that_collide_need_full_feature_names(node: Server) -> None:
    """user_profile:f000 twice: Feast refuses short names that collide; so do the frames."""
    with FeatureClient(f"127.0.0.1:{node.grpc}") as c:
        r = c.get_features(
            {"user_id": [1], "item_id": ["item-0001"]}, ["item_stats:ctr", "user_item:affinity"]
        )
        assert list(r.to_pandas().columns) == ["user_id", "item_id", "ctr", "affinity"]
        collide = c.get_dense({"user_id": [1]}, ["user_profile:f000", "user_profile:f000"])
    with pytest.raises(InvalidArgumentError, match="pass full_feature_names=True"):
        collide.to_pandas()


def test_store_dense_result_has_frames_too(tmp_path: Path) -> None:
    """Store.get_dense returns the same DenseResult, with its entity columns."""
    sample = generate(tmp_path / "sample", 20)
    with Store(tmp_path / "db", Registry.from_yaml(ROOT / "features.yaml")) as store:
        store.write("user_profile", pq.read_table(sample.user_profile_path))
        m = store.get_dense({"user_id": [4, 5]}, ["user_profile:f001"])
    df = m.to_pandas(full_feature_names=True)
    assert list(df.columns) == ["user_id", "user_profile__f001"]
    assert df["user_id"].tolist() == [4, 5]


def test_sharded_answers_carry_the_request_entities(node: Server) -> None:
    """Merged in request order over two shards (both served by the one node), the frame's
    join-key column is the request's."""
    users = [5, 1, 9, 2, 7, 3]
    grpc_target = f"127.0.0.1:{node.grpc}"
    with ShardedFeatureClient(
        {0: [grpc_target], 1: [f"localhost:{node.grpc}"]},
        topic_partitions=8,
        join_keys=[("user_id", "int64")],
    ) as c:
        assert len(set(c.shards_of({"user_id": users}))) == 2
        df = c.get_features({"user_id": users}, ["user_profile:f002"]).to_pandas()
        dense = c.get_dense({"user_id": users}, ["user_profile:f002"]).to_polars()
    assert df["user_id"].tolist() == users
    assert df["f002"].tolist() == [np.float32(user_profile_value(u, 2)) for u in users]
    assert dense["user_id"].to_list() == users
