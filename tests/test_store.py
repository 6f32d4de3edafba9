"""The embedded store (serving.store over the Rust core): values, merge rule, TTL, deletes,
persistence, schema evolution, bad input, locking and loader metadata.

Every test uses a real RocksDB data directory under pytest's tmp_path.
"""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import serving.store as store_module
from serving.errors import (
    InvalidArgumentError,
    LimitExceededError,
    NotFoundError,
    ResourceExhaustedError,
    SchemaError,
    StorageError,
)
from serving.registry import Registry
from serving.sample import SampleInfo, user_profile_value
from serving.store import FieldStatus, Store, WriteStats

if TYPE_CHECKING:
    from tests.harness import StoreFactory

UTC = dt.UTC
TS = pa.timestamp("us", tz="UTC")
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
EPOCH = np.datetime64(0, "us")
P, NULL, NF, OLD = (
    FieldStatus.PRESENT,
    FieldStatus.NULL_VALUE,
    FieldStatus.NOT_FOUND,
    FieldStatus.OUTSIDE_MAX_AGE,
)
ALL_TYPES = ["b", "i32", "i64", "f32", "f64", "s", "raw", "ts", "emb"]
NUMERIC = ["b", "i32", "i64", "f32", "f64"]


def at(seconds: float = 0) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def us(t: dt.datetime) -> np.datetime64:
    """A datetime as the store reports event timestamps (naive datetime64[us], UTC)."""
    return np.datetime64(int(t.timestamp() * 1_000_000), "us")


def table(registry: Registry, view: str, rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (dicts; absent features are null) as a table of the view's write schema."""
    schema = registry.arrow_schema(view)
    return pa.Table.from_pylist(
        [{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema
    )


def refs(view: str, features: Sequence[str]) -> list[str]:
    return [f"{view}:{f}" for f in features]


def f32(x: float) -> float:
    return float(np.float32(x))


# --------------------------------------------------------------------------------------------
# round trip of every type

FULL: dict[str, Any] = {
    "user_id": 1,
    "event_timestamp": at(0),
    "b": True,
    "i32": -123456,
    "i64": 2**40 + 7,
    "f32": 1.1,  # not exact in float32: must come back as float32(1.1)
    "f64": 2.000000000000001,
    "s": "héllo wörld ✓ 日本語 🎉",
    "raw": b"\x00\xff\x10raw",
    "ts": dt.datetime(2023, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
    "emb": [0.5, -1.25, 3.0, 1e-3],
}
EXTREMES: dict[str, Any] = {
    "user_id": 3,
    "event_timestamp": at(5),
    "b": False,
    "i32": -(2**31),
    "i64": 2**63 - 1,
    "f32": -0.0,
    "f64": -1e300,
    "s": "",
    "raw": b"",
    "ts": dt.datetime(1960, 1, 1, tzinfo=UTC),
    "emb": [0.0, 0.0, 0.0, 0.0],
}
NULLS: dict[str, Any] = {"user_id": 2, "event_timestamp": at(1)}


def expected(row: dict[str, Any], feature: str) -> Any:
    v = row.get(feature)
    if v is None:
        return None
    if feature == "f32":
        return f32(v)
    if feature == "emb":
        return [f32(x) for x in v]
    return v


def test_round_trip_every_type(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    stats = store.write("all_types", table(registry, "all_types", [FULL, NULLS, EXTREMES]))
    assert stats == WriteStats(rows=3, written=3, skipped_older=0)

    ids = [3, 1, 99, 2]  # request order differs from write order; 99 was never written
    res = store.get({"user_id": ids}, refs("all_types", ALL_TYPES))
    assert res.feature_names == refs("all_types", ALL_TYPES)
    assert res.table.column_names == ["user_id", *refs("all_types", ALL_TYPES)]
    assert res.column("user_id") == ids
    by_id = {1: FULL, 2: NULLS, 3: EXTREMES}
    for feature in ALL_TYPES:
        got = res.column(f"all_types:{feature}")
        want = [expected(by_id[i], feature) if i in by_id else None for i in ids]
        assert got == want, feature
    # schema of the answer follows the registry
    assert res.table.schema.field("all_types:emb").type == pa.list_(pa.float32(), 4)
    assert res.table.schema.field("all_types:ts").type == TS
    assert res.table.schema.field("all_types:raw").type == pa.binary()

    assert res.statuses.shape == (4, len(ALL_TYPES))
    assert res.statuses.dtype == np.uint8
    assert (res.statuses[0] == P).all()
    assert (res.statuses[1] == P).all()
    assert (res.statuses[2] == NF).all()
    assert (res.statuses[3] == NULL).all()
    assert res.status("all_types:s") == [P, P, NF, NULL]
    # event timestamps: the row's, epoch where there is no row
    assert (res.event_timestamps[0] == us(at(5))).all()
    assert (res.event_timestamps[1] == us(at(0))).all()
    assert (res.event_timestamps[2] == EPOCH).all()
    assert (res.event_timestamps[3] == us(at(1))).all()


def test_round_trip_float_specials(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    rows = [
        {"user_id": 1, "event_timestamp": at(), "f32": math.inf, "f64": -math.inf},
        {"user_id": 2, "event_timestamp": at(), "f32": math.nan, "f64": math.nan},
    ]
    store.write("all_types", table(registry, "all_types", rows))
    res = store.get({"user_id": [1, 2]}, ["all_types:f32", "all_types:f64"])
    assert res.column("all_types:f32")[0] == math.inf
    assert res.column("all_types:f64")[0] == -math.inf
    # a stored NaN is a present value, not a null
    assert math.isnan(res.column("all_types:f32")[1])
    assert math.isnan(res.column("all_types:f64")[1])
    assert (res.statuses == P).all()


def test_get_dense_numeric(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    store.write("all_types", table(registry, "all_types", [FULL, NULLS, EXTREMES]))
    dense = store.get_dense({"user_id": [1, 2, 99, 3]}, refs("all_types", NUMERIC))
    assert dense.feature_names == refs("all_types", NUMERIC)
    assert dense.values.dtype == np.float32
    assert dense.values.shape == (4, 5)
    np.testing.assert_array_equal(
        dense.values[0],
        np.array([1.0, -123456, 2**40 + 7, 1.1, 2.000000000000001], dtype=np.float32),
    )
    assert np.isnan(dense.values[1]).all()
    assert np.isnan(dense.values[2]).all()
    np.testing.assert_array_equal(
        dense.values[3],
        # -1e300 does not fit a float32: -inf, as a float64 -> float32 conversion gives
        np.array([0.0, -(2**31), 2.0**63, -0.0, -np.inf], dtype=np.float32),
    )
    assert np.signbit(dense.values[3, 3])  # -0.0 kept
    np.testing.assert_array_equal(
        dense.statuses, np.array([[P] * 5, [NULL] * 5, [NF] * 5, [P] * 5], dtype=np.uint8)
    )
    # the dense answer agrees with the typed one
    typed = store.get({"user_id": [1, 2, 99, 3]}, refs("all_types", NUMERIC))
    np.testing.assert_array_equal(typed.statuses, dense.statuses)


def test_get_dense_refuses_non_numeric(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    store.write("all_types", table(registry, "all_types", [FULL]))
    for feature in ("s", "raw", "ts", "emb"):
        with pytest.raises(InvalidArgumentError, match=f"all_types:{feature}"):
            store.get_dense({"user_id": [1]}, ["all_types:f32", f"all_types:{feature}"])


def test_wildcard_and_feature_service(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    store.write("all_types", table(registry, "all_types", [FULL]))
    res = store.get({"user_id": [1]}, ["all_types:*"])
    assert res.feature_names == refs("all_types", ALL_TYPES)
    assert res.column("all_types:s") == [FULL["s"]]

    store.write(
        "device_stats",
        table(
            registry,
            "device_stats",
            [{"device_id": 4, "event_timestamp": at(), "battery": 0.25, "model": "pixel"}],
        ),
    )
    svc = store.get({"device_id": pa.array([4, 5], pa.int32())}, feature_service="device_service")
    assert svc.feature_names == ["device_stats:battery", "device_stats:model"]
    assert svc.to_dict() == {
        "device_id": [4, 5],
        "device_stats:battery": [0.25, None],
        "device_stats:model": ["pixel", None],
    }


def test_embedding_with_null_element_is_refused(
    tmp_store: StoreFactory, registry: Registry
) -> None:
    """A null *inside* a float32_array cannot be stored (the codec has one presence bit per
    feature): it must be refused rather than silently served as 0.0."""
    store = tmp_store()
    row = dict(FULL, emb=[1.0, None, 3.0, 4.0])
    with pytest.raises(InvalidArgumentError, match="emb"):
        store.write("all_types", table(registry, "all_types", [row]))
    assert store.get({"user_id": [1]}, ["all_types:emb"]).status("all_types:emb") == [NF]


# --------------------------------------------------------------------------------------------
# keys


def test_composite_key(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    rows = [
        {"user_id": 1, "item_id": "a", "event_timestamp": at(), "affinity": 0.1, "clicks": 10},
        {"user_id": 1, "item_id": "b", "event_timestamp": at(), "affinity": 0.2, "clicks": 20},
        {"user_id": 2, "item_id": "a", "event_timestamp": at(), "affinity": 0.3, "clicks": 30},
        # keys whose parts concatenate alike must not collide
        {"user_id": 12, "item_id": "", "event_timestamp": at(), "affinity": 0.4, "clicks": 40},
        {"user_id": 1, "item_id": "2", "event_timestamp": at(), "affinity": 0.5, "clicks": 50},
        {"user_id": -1, "item_id": "ü", "event_timestamp": at(), "affinity": 0.6, "clicks": 60},
    ]
    assert store.write("user_item", table(registry, "user_item", rows)).written == 6
    users = [1, 1, 2, 2, 12, 1, -1, 12]
    items = ["a", "b", "a", "b", "", "2", "ü", "2"]
    res = store.get(
        {"user_id": users, "item_id": items}, ["user_item:affinity", "user_item:clicks"]
    )
    assert res.column("user_item:affinity") == [
        f32(0.1),
        f32(0.2),
        f32(0.3),
        None,
        f32(0.4),
        f32(0.5),
        f32(0.6),
        None,
    ]
    assert res.column("user_item:clicks") == [10, 20, 30, None, 40, 50, 60, None]
    assert res.status("user_item:clicks") == [P, P, P, NF, P, P, P, NF]
    # entity columns may come in any order; the answer keeps the request's columns
    swapped = store.get({"item_id": items, "user_id": users}, ["user_item:clicks"])
    assert swapped.table.column_names == ["item_id", "user_id", "user_item:clicks"]
    assert swapped.column("user_item:clicks") == res.column("user_item:clicks")


def test_int32_join_key(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    ids = [-(2**31), -5, 0, 2**31 - 1]
    rows = [
        {"device_id": d, "event_timestamp": at(), "battery": i / 4, "model": f"m{i}"}
        for i, d in enumerate(ids)
    ]
    store.write("device_stats", table(registry, "device_stats", rows))
    want_battery = [0.0, 0.25, 0.5, 0.75, None]
    want_model = ["m0", "m1", "m2", "m3", None]
    # an int32 column, and plain Python ints (int64 in Arrow) that fit int32
    for entity in (pa.array([*ids, 7], pa.int32()), [*ids, 7]):
        res = store.get({"device_id": entity}, ["device_stats:battery", "device_stats:model"])
        assert res.column("device_stats:battery") == want_battery
        assert res.column("device_stats:model") == want_model
    with pytest.raises(InvalidArgumentError, match="device_id"):
        store.get({"device_id": [2**31]}, ["device_stats:battery"])


def test_views_with_same_key_are_separate(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    store.write("all_types", table(registry, "all_types", [FULL]))
    store.write(
        "sessions",
        table(registry, "sessions", [{"user_id": 2, "event_timestamp": dt.datetime.now(UTC)}]),
    )
    res = store.get({"user_id": [1, 2]}, ["all_types:i32", "sessions:last_page"])
    assert res.column("all_types:i32") == [FULL["i32"], None]
    assert res.status("all_types:i32") == [P, NF]
    assert res.status("sessions:last_page") == [NF, NULL]


# --------------------------------------------------------------------------------------------
# merge rule


def _clicks_row(ts: dt.datetime, clicks: int, affinity: float = 0.0) -> dict[str, Any]:
    return {
        "user_id": 1,
        "item_id": "x",
        "event_timestamp": ts,
        "affinity": affinity,
        "clicks": clicks,
    }


def _clicks(store: Store) -> tuple[Any, np.datetime64]:
    res = store.get({"user_id": [1], "item_id": ["x"]}, ["user_item:clicks"])
    return res.column("user_item:clicks")[0], res.event_timestamps[0, 0]


def test_newer_wins_older_ignored(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    assert store.write("user_item", table(registry, "user_item", [_clicks_row(at(10), 1)])) == (
        WriteStats(1, 1, 0)
    )
    # older: ignored and counted
    assert store.write("user_item", table(registry, "user_item", [_clicks_row(at(5), 2)])) == (
        WriteStats(1, 0, 1)
    )
    assert _clicks(store) == (1, us(at(10)))
    # newer: replaces
    assert store.write("user_item", table(registry, "user_item", [_clicks_row(at(20), 3)])) == (
        WriteStats(1, 1, 0)
    )
    assert _clicks(store) == (3, us(at(20)))
    # one microsecond older than stored still loses
    older = at(20) - dt.timedelta(microseconds=1)
    assert store.write("user_item", table(registry, "user_item", [_clicks_row(older, 4)])) == (
        WriteStats(1, 0, 1)
    )
    assert _clicks(store) == (3, us(at(20)))


def test_merge_rule_holds_without_hot_tier_and_after_reopen(
    tmp_store: StoreFactory, registry: Registry, tmp_path: Path
) -> None:
    """The stored row the merge compares against comes from RocksDB when not cached."""
    path = tmp_path / "merge"
    store = tmp_store(data_dir=path, hot_tier_bytes=0)
    store.write("user_item", table(registry, "user_item", [_clicks_row(at(10), 1)]))
    store.close()
    store = tmp_store(data_dir=path)  # empty hot tier: the old row is read from disk
    assert store.write("user_item", table(registry, "user_item", [_clicks_row(at(9), 2)])) == (
        WriteStats(1, 0, 1)
    )
    assert _clicks(store) == (1, us(at(10)))


def test_equal_timestamp_tie_break_is_order_independent(
    tmp_store: StoreFactory, registry: Registry
) -> None:
    a = _clicks_row(at(7), 100, 0.5)
    b = _clicks_row(at(7), 200, 0.25)
    answers = []
    for first, second in ((a, b), (b, a)):
        store = tmp_store()
        store.write("user_item", table(registry, "user_item", [first]))
        store.write("user_item", table(registry, "user_item", [second]))
        res = store.get(
            {"user_id": [1], "item_id": ["x"]}, ["user_item:clicks", "user_item:affinity"]
        )
        answers.append(res.to_dict())
    assert answers[0] == answers[1]
    assert answers[0]["user_item:clicks"][0] in (100, 200)
    # the row is kept whole: values from one write, never a mix
    winner = a if answers[0]["user_item:clicks"][0] == 100 else b
    assert answers[0]["user_item:affinity"] == [f32(winner["affinity"])]
    # and the same within one batch, in either order
    for batch in ([a, b], [b, a]):
        store = tmp_store()
        store.write("user_item", table(registry, "user_item", batch))
        res = store.get(
            {"user_id": [1], "item_id": ["x"]}, ["user_item:clicks", "user_item:affinity"]
        )
        assert res.to_dict() == answers[0]


def test_equal_timestamp_with_null_is_order_independent(
    tmp_store: StoreFactory, registry: Registry
) -> None:
    a = _clicks_row(at(7), 100)
    b = dict(_clicks_row(at(7), 0), clicks=None)
    got = []
    for first, second in ((a, b), (b, a)):
        store = tmp_store()
        store.write("user_item", table(registry, "user_item", [first]))
        store.write("user_item", table(registry, "user_item", [second]))
        got.append(_clicks(store)[0])
    assert got[0] == got[1]


def test_duplicates_within_a_batch_keep_latest(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    rows = [
        _clicks_row(at(3), 3),
        _clicks_row(at(9), 9),  # latest, in the middle of the batch
        _clicks_row(at(1), 1),
        _clicks_row(at(5), 5),
        {**_clicks_row(at(9), 0), "item_id": "y"},
    ]
    stats = store.write("user_item", table(registry, "user_item", rows))
    assert stats == WriteStats(rows=5, written=2, skipped_older=3)
    assert _clicks(store) == (9, us(at(9)))
    # against a stored newer row, the whole group loses
    stats = store.write(
        "user_item", table(registry, "user_item", [_clicks_row(at(2), 2), _clicks_row(at(4), 4)])
    )
    assert stats == WriteStats(rows=2, written=0, skipped_older=2)
    assert _clicks(store) == (9, us(at(9)))


def test_out_of_order_loads_converge(tmp_store: StoreFactory, registry: Registry) -> None:
    rng = np.random.default_rng(3)
    events = [
        {
            "user_id": int(u),
            "item_id": "x",
            "event_timestamp": at(int(t)),
            "affinity": float(v),
            "clicks": int(t),
        }
        for u, t, v in zip(
            rng.integers(0, 20, 300), rng.integers(0, 10_000, 300), rng.random(300), strict=True
        )
    ]
    answers = []
    for order in (events, events[::-1], [events[i] for i in rng.permutation(len(events))]):
        store = tmp_store()
        for start in range(0, len(order), 37):
            store.write("user_item", table(registry, "user_item", order[start : start + 37]))
        res = store.get({"user_id": list(range(20)), "item_id": ["x"] * 20}, ["user_item:clicks"])
        answers.append(res.column("user_item:clicks"))
    assert answers[0] == answers[1] == answers[2]
    latest: dict[int, int] = {}
    for e in events:
        latest[e["user_id"]] = max(latest.get(e["user_id"], -1), e["clicks"])
    assert answers[0] == [latest.get(u) for u in range(20)]


def test_timestamp_field_rename(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    t = table(registry, "user_item", [_clicks_row(at(3), 3)]).rename_columns(
        ["user_id", "item_id", "ts", "affinity", "clicks"]
    )
    store.write("user_item", t, timestamp_field="ts")
    assert _clicks(store) == (3, us(at(3)))


# --------------------------------------------------------------------------------------------
# TTL


def test_ttl(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    now = dt.datetime.now(UTC).replace(microsecond=0)
    stale, fresh = now - dt.timedelta(hours=2), now - dt.timedelta(minutes=5)
    rows = [
        {"user_id": 1, "event_timestamp": stale, "last_page": "/old", "dwell": 1.5},
        {"user_id": 2, "event_timestamp": fresh, "last_page": "/new", "dwell": 2.5},
        {"user_id": 3, "event_timestamp": fresh, "last_page": None, "dwell": None},
    ]
    store.write("sessions", table(registry, "sessions", rows))
    res = store.get({"user_id": [1, 2, 3, 4]}, ["sessions:last_page", "sessions:dwell"])
    assert res.column("sessions:last_page") == [None, "/new", None, None]
    assert res.column("sessions:dwell") == [None, 2.5, None, None]
    np.testing.assert_array_equal(
        res.statuses, np.array([[OLD, OLD], [P, P], [NULL, NULL], [NF, NF]], dtype=np.uint8)
    )
    # an expired value still reports its event time
    assert (res.event_timestamps[0] == us(stale)).all()
    assert (res.event_timestamps[1] == us(fresh)).all()
    assert (res.event_timestamps[3] == EPOCH).all()

    dense = store.get_dense({"user_id": [1, 2, 4]}, ["sessions:dwell"])
    assert np.isnan(dense.values[0, 0])
    assert dense.values[1, 0] == 2.5
    assert dense.statuses[:, 0].tolist() == [OLD, P, NF]

    # no TTL on all_types: a 2-hour-old (or 1-year-old) row is present
    store.write("all_types", table(registry, "all_types", [dict(FULL, event_timestamp=stale)]))
    assert store.get({"user_id": [1]}, ["all_types:i32"]).status("all_types:i32") == [P]


# --------------------------------------------------------------------------------------------
# deletes


def _ui(store: Store, users: Sequence[int]) -> list[Any]:
    res = store.get({"user_id": list(users), "item_id": ["x"] * len(users)}, ["user_item:clicks"])
    return res.column("user_item:clicks")


def test_delete(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    rows = [{**_clicks_row(at(10), 10 + u), "user_id": u} for u in range(4)]
    store.write("user_item", table(registry, "user_item", rows))
    assert _ui(store, range(4)) == [10, 11, 12, 13]

    stats = store.delete(
        "user_item", {"user_id": [0, 1], "item_id": ["x", "x"]}, event_timestamp=at(20)
    )
    assert stats.written == 2
    res = store.get({"user_id": [0, 1, 2], "item_id": ["x"] * 3}, ["user_item:clicks"])
    assert res.column("user_item:clicks") == [None, None, 12]
    assert res.status("user_item:clicks") == [NF, NF, P]
    assert (res.event_timestamps[:2] == EPOCH).all()

    # a delete older than the stored row does not remove it
    stats = store.delete("user_item", {"user_id": [2], "item_id": ["x"]}, event_timestamp=at(5))
    assert stats == WriteStats(rows=1, written=0, skipped_older=1)
    assert _ui(store, [2]) == [12]

    # a write older than the tombstone does not resurrect; a newer one does
    stats = store.write(
        "user_item", table(registry, "user_item", [{**_clicks_row(at(15), 99), "user_id": 0}])
    )
    assert stats == WriteStats(rows=1, written=0, skipped_older=1)
    assert _ui(store, [0]) == [None]
    store.write(
        "user_item", table(registry, "user_item", [{**_clicks_row(at(25), 77), "user_id": 1}])
    )
    assert _ui(store, [0, 1, 2, 3]) == [None, 77, 12, 13]

    # deleting what was never written is harmless, and blocks older writes too
    store.delete("user_item", {"user_id": [50], "item_id": ["x"]}, event_timestamp=at(30))
    store.write(
        "user_item", table(registry, "user_item", [{**_clicks_row(at(29), 1), "user_id": 50}])
    )
    assert _ui(store, [50]) == [None]


def test_delete_survives_reopen_and_cold_reads(
    tmp_store: StoreFactory, registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "del"
    store = tmp_store(data_dir=path)
    store.write("user_item", table(registry, "user_item", [_clicks_row(at(10), 1)]))
    store.delete("user_item", {"user_id": [1], "item_id": ["x"]}, event_timestamp=at(20))
    store.close()
    store = tmp_store(data_dir=path, hot_tier_bytes=0)
    assert _clicks(store) == (None, EPOCH)
    store.write("user_item", table(registry, "user_item", [_clicks_row(at(15), 2)]))
    assert _clicks(store) == (None, EPOCH)


def test_delete_default_time_is_now(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    future = dt.datetime.now(UTC) + dt.timedelta(days=1)
    store.write(
        "user_item",
        table(
            registry, "user_item", [_clicks_row(at(0), 1), {**_clicks_row(future, 2), "user_id": 2}]
        ),
    )
    store.delete("user_item", {"user_id": [1, 2], "item_id": ["x", "x"]})
    assert _ui(store, [1, 2]) == [None, 2]


# --------------------------------------------------------------------------------------------
# persistence


def _snapshot(store: Store) -> dict[str, Any]:
    out: dict[str, Any] = {}
    res = store.get({"user_id": [1, 2, 3, 99]}, ["all_types:*"])
    out["all_types"] = (res.to_dict(), res.statuses.tolist(), res.event_timestamps.tolist())
    res = store.get(
        {"user_id": [1, 1, 2], "item_id": ["x", "y", "x"]},
        ["user_item:clicks", "user_item:affinity"],
    )
    out["user_item"] = (res.to_dict(), res.statuses.tolist())
    dense = store.get_dense({"user_id": [1, 2, 3, 99]}, refs("all_types", NUMERIC))
    out["dense"] = (dense.values.tobytes(), dense.statuses.tolist())
    return out


def _fill(store: Store, registry: Registry) -> None:
    store.write("all_types", table(registry, "all_types", [FULL, NULLS, EXTREMES]))
    store.write(
        "user_item",
        table(
            registry,
            "user_item",
            [_clicks_row(at(1), 1, 0.5), {**_clicks_row(at(2), 2), "item_id": "y"}],
        ),
    )
    store.write("user_item", table(registry, "user_item", [_clicks_row(at(0), 5)]))  # older
    store.delete("user_item", {"user_id": [1], "item_id": ["y"]}, event_timestamp=at(3))


def test_restart_persistence(tmp_store: StoreFactory, registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "data"
    store = tmp_store(data_dir=path)
    _fill(store, registry)
    before = _snapshot(store)
    assert before["user_item"][0]["user_item:clicks"] == [1, None, None]
    store.close()
    assert store.closed
    with pytest.raises(StorageError, match="closed"):
        store.get({"user_id": [1]}, ["all_types:i32"])

    reopened = tmp_store(data_dir=path)
    assert _snapshot(reopened) == before
    reopened.close()
    # and with the hot tier disabled: every answer from RocksDB
    cold = tmp_store(data_dir=path, hot_tier_bytes=0)
    assert _snapshot(cold) == before
    assert _snapshot(cold) == before  # repeated reads (block cache) agree


def test_hot_tier_disabled_same_answers(tmp_store: StoreFactory, registry: Registry) -> None:
    hot, cold = tmp_store(), tmp_store(hot_tier_bytes=0)
    for s in (hot, cold):
        _fill(s, registry)
    assert "hot_tier" not in cold.stats()  # no tier at all, not an empty one
    first = _snapshot(hot)
    tier = hot.stats()["hot_tier"]
    assert tier["misses"] > 0
    assert tier["entries"] == tier["misses"]  # every row read once is cached (misses too)
    # the second read is answered from the tier, and agrees with the first and with RocksDB
    assert _snapshot(hot) == first == _snapshot(cold)
    again = hot.stats()["hot_tier"]
    assert again["misses"] == tier["misses"]
    assert again["hits"] - tier["hits"] == tier["hits"] + tier["misses"]  # every read a hit
    assert again["evictions"] == 0


def test_hot_tier_evicts_within_its_budget(tmp_store: StoreFactory, registry: Registry) -> None:
    """A tier far smaller than the rows read evicts (its stats say so), stays within its byte
    budget, and every answer still equals that of a store without a tier."""
    budget, n = 4096, 500  # 500 rows of about 100 bytes each, cached with 64 bytes overhead
    rows = [{**_clicks_row(at(1), u), "user_id": u} for u in range(n)]
    tiny, cold = tmp_store(hot_tier_bytes=budget), tmp_store(hot_tier_bytes=0)
    for s in (tiny, cold):
        s.write("user_item", table(registry, "user_item", rows))
    want = list(range(n))
    for _ in range(2):
        assert _ui(tiny, range(n)) == want == _ui(cold, range(n))
    tier = tiny.stats()["hot_tier"]
    assert tier["budget_bytes"] == budget
    assert tier["evictions"] > 0, tier
    assert 0 < tier["bytes"] <= budget, tier
    assert tier["entries"] < n, tier
    assert tier["misses"] > n, tier  # evicted rows were read from RocksDB again
    # the small view of _fill still reads right next to the churned one
    _fill(tiny, registry)
    _fill(cold, registry)
    assert _snapshot(tiny) == _snapshot(cold)


def test_hot_tier_sees_writes_after_reads(tmp_store: StoreFactory, registry: Registry) -> None:
    """A cached row (and a cached miss) must be replaced by a later write."""
    store = tmp_store()
    assert _clicks(store) == (None, EPOCH)  # caches the miss
    store.write("user_item", table(registry, "user_item", [_clicks_row(at(1), 1)]))
    assert _clicks(store) == (1, us(at(1)))  # cached now
    store.write("user_item", table(registry, "user_item", [_clicks_row(at(2), 2)]))
    assert _clicks(store) == (2, us(at(2)))
    store.delete("user_item", {"user_id": [1], "item_id": ["x"]}, event_timestamp=at(3))
    assert _clicks(store) == (None, EPOCH)


def test_sample_user_profile_values(
    tmp_store: StoreFactory, registry: Registry, sample: SampleInfo
) -> None:
    """The WORKLOADS.md data through write/get: every value equals the formula."""
    store = tmp_store()
    data = pq.read_table(sample.user_profile_path)
    stats = store.write("user_profile", data)
    assert stats == WriteStats(sample.n_entities, sample.n_entities, 0)
    ids = np.random.default_rng(0).permutation(sample.n_entities)[:100]
    names = [f"user_profile:f{i:03d}" for i in range(200)]
    dense = store.get_dense({"user_id": ids}, names)
    want = np.array(
        [[user_profile_value(int(u), j) for j in range(200)] for u in ids], dtype=np.float32
    )
    np.testing.assert_array_equal(dense.values, want)
    assert (dense.statuses == P).all()
    assert user_profile_value(1, 1) == 4.800000190734863
    one = store.get({"user_id": [1]}, ["user_profile:f001"])
    assert one.column("user_profile:f001") == [4.800000190734863]


def test_dense_gather_matches_cell_by_cell(
    tmp_store: StoreFactory, registry: Registry, sample: SampleInfo
) -> None:
    """The dense answer of float32 views (copied run by run from rows whose requested slots
    are all present, cell by cell otherwise) against `get`'s per-cell answer: slots in order,
    reversed, repeated, with gaps, rows with a null among them, unknown entities."""
    store = tmp_store()
    data = pq.read_table(sample.user_profile_path).slice(0, 50)
    # user 3 gets a null in f010, user 4 in f199: their rows take the cell-by-cell path
    f010 = data.column("f010").to_pylist()
    f010[3] = None
    f199 = data.column("f199").to_pylist()
    f199[4] = None
    data = data.set_column(
        data.schema.get_field_index("f010"), "f010", pa.array(f010, pa.float32())
    )
    data = data.set_column(
        data.schema.get_field_index("f199"), "f199", pa.array(f199, pa.float32())
    )
    store.write("user_profile", data)
    ids = [0, 3, 4, 7, 10**6, 49]
    shapes = {
        "in order": list(range(200)),
        "reversed": list(range(199, -1, -1)),
        "repeated": [5, 5, 6, 7, 7],
        "gaps": [0, 1, 2, 10, 11, 198, 199],
    }
    for name, cols in shapes.items():
        refs = [f"user_profile:f{j:03d}" for j in cols]
        dense = store.get_dense({"user_id": ids}, refs)
        typed = store.get({"user_id": ids}, refs)
        for c, ref in enumerate(refs):
            values = typed.table.column(1 + c).to_pylist()  # after the user_id column
            want = np.asarray([np.nan if v is None else v for v in values], np.float32)
            np.testing.assert_array_equal(dense.values[:, c], want, err_msg=f"{name} {ref}")
            assert dense.statuses[:, c].tolist() == typed.statuses[:, c].tolist(), name
    # the rows of each kind were there: whole, a null in f010 / f199, unknown
    dense = store.get_dense({"user_id": ids}, [f"user_profile:f{j:03d}" for j in range(200)])
    assert (dense.statuses[[0, 3, 5]] == P).all()
    assert (dense.statuses[1, 10], dense.statuses[2, 199]) == (NULL, NULL)
    assert (dense.statuses[4] == NF).all()


# --------------------------------------------------------------------------------------------
# schema evolution


def _with_features(registry_dict: dict[str, Any], view: str, features: list[Any]) -> Registry:
    data = registry_dict
    for v in data["feature_views"]:
        if v["name"] == view:
            v["features"] = features
    return Registry.from_dict(data)


UI_FEATURES = [{"name": "affinity", "dtype": "float32"}, {"name": "clicks", "dtype": "int64"}]


def test_add_features_live(
    tmp_store: StoreFactory,
    registry: Registry,
    registry_dict: dict[str, Any],
    tmp_path: Path,
) -> None:
    path = tmp_path / "evo"
    store = tmp_store(data_dir=path)
    store.write("user_item", table(registry, "user_item", [_clicks_row(at(1), 1, 0.5)]))
    assert _clicks(store) == (1, us(at(1)))  # cached in the hot tier too

    evolved = _with_features(
        registry_dict,
        "user_item",
        [*UI_FEATURES, {"name": "label", "dtype": "string"}, {"name": "score", "dtype": "float64"}],
    )
    changes = store.apply_registry(evolved)
    assert any("user_item" in c for c in changes), changes
    assert store.registry is evolved

    names = ["user_item:clicks", "user_item:label", "user_item:score"]
    res = store.get({"user_id": [1], "item_id": ["x"]}, names)
    assert res.column("user_item:clicks") == [1]
    assert res.column("user_item:label") == [None]
    assert res.status("user_item:label") == [NF]
    assert res.status("user_item:score") == [NF]
    assert res.event_timestamps[0, 1] == us(at(1))
    dense = store.get_dense({"user_id": [1], "item_id": ["x"]}, ["user_item:score"])
    assert np.isnan(dense.values[0, 0])
    assert dense.statuses[0, 0] == NF

    # new writes carry the new features; old rows of other entities keep answering NOT_FOUND
    new_row = {**_clicks_row(at(2), 2), "user_id": 2, "label": "new", "score": 0.125}
    store.write("user_item", table(evolved, "user_item", [new_row]))
    res = store.get({"user_id": [1, 2], "item_id": ["x", "x"]}, names)
    assert res.to_dict() == {
        "user_id": [1, 2],
        "item_id": ["x", "x"],
        "user_item:clicks": [1, 2],
        "user_item:label": [None, "new"],
        "user_item:score": [None, 0.125],
    }
    assert res.statuses.tolist() == [[P, NF, NF], [P, P, P]]
    # writing a table without the new columns is an error naming them
    with pytest.raises(InvalidArgumentError, match="label"):
        store.write("user_item", table(registry, "user_item", [_clicks_row(at(3), 3)]))

    # reopening with the evolved registry: same answers
    before = store.get({"user_id": [1, 2], "item_id": ["x", "x"]}, names).to_dict()
    store.close()
    store = tmp_store(evolved, data_dir=path)
    assert store.get({"user_id": [1, 2], "item_id": ["x", "x"]}, names).to_dict() == before


def test_add_features_on_reopen(
    tmp_store: StoreFactory,
    registry: Registry,
    registry_dict: dict[str, Any],
    tmp_path: Path,
) -> None:
    path = tmp_path / "evo"
    store = tmp_store(data_dir=path)
    store.write("user_item", table(registry, "user_item", [_clicks_row(at(1), 1)]))
    store.close()
    evolved = _with_features(
        registry_dict, "user_item", [*UI_FEATURES, {"name": "extra", "dtype": "int32"}]
    )
    store = tmp_store(evolved, data_dir=path)
    res = store.get({"user_id": [1], "item_id": ["x"]}, ["user_item:clicks", "user_item:extra"])
    assert res.column("user_item:clicks") == [1]
    assert res.status("user_item:extra") == [NF]


@pytest.mark.parametrize(
    ("features", "named"),
    [
        ([UI_FEATURES[0]], "clicks"),  # removed
        ([UI_FEATURES[0], {"name": "clicks", "dtype": "string"}], "clicks"),  # retyped
        ([{"name": "affinity", "dtype": "float64"}, UI_FEATURES[1]], "affinity"),  # retyped
    ],
    ids=["removed", "int64-to-string", "float32-to-float64"],
)
def test_incompatible_change_refused(  # noqa: PLR0917
    tmp_store: StoreFactory,
    registry: Registry,
    registry_dict: dict[str, Any],
    tmp_path: Path,
    features: list[Any],
    named: str,
) -> None:
    path = tmp_path / "evo"
    store = tmp_store(data_dir=path)
    store.write("user_item", table(registry, "user_item", [_clicks_row(at(1), 7, 0.5)]))
    both = ["user_item:affinity", "user_item:clicks"]
    before = store.get({"user_id": [1], "item_id": ["x"]}, both).to_dict()

    changed = _with_features(registry_dict, "user_item", features)
    with pytest.raises(SchemaError, match=f"'{named}'"):
        store.apply_registry(changed)
    # nothing changed: same registry object, same answers, writes of the old shape work
    assert store.registry is registry
    assert store.get({"user_id": [1], "item_id": ["x"]}, both).to_dict() == before
    store.write("user_item", table(registry, "user_item", [_clicks_row(at(2), 8, 0.5)]))
    assert _clicks(store) == (8, us(at(2)))
    store.close()

    # opening with the changed registry is refused the same way
    with pytest.raises(SchemaError, match=f"'{named}'"):
        Store(path, changed)
    # the old registry still opens it, with the data
    store = tmp_store(data_dir=path)
    assert _clicks(store) == (8, us(at(2)))

    # force: succeeds, the retyped / removed feature no longer answers old values
    store.apply_registry(changed, force=True)
    kept = [f"user_item:{f['name']}" for f in features]
    res = store.get({"user_id": [1], "item_id": ["x"]}, kept)
    for ref in kept:
        if ref.endswith(f":{named}"):
            assert res.status(ref) == [NF], ref
            assert res.column(ref) == [None]
        else:
            assert res.status(ref) == [P], ref
    if f"user_item:{named}" not in kept:
        with pytest.raises(NotFoundError, match=named):
            store.get({"user_id": [1], "item_id": ["x"]}, [f"user_item:{named}"])
    # new writes of the retyped feature round-trip with the new type
    if named == "clicks" and len(features) == 2:
        row = {**_clicks_row(at(3), 0), "clicks": "seven"}
        store.write("user_item", table(changed, "user_item", [row]))
        assert store.get({"user_id": [1], "item_id": ["x"]}, ["user_item:clicks"]).column(
            "user_item:clicks"
        ) == ["seven"]
    store.close()
    # reopening with the forced registry works
    store = tmp_store(changed, data_dir=path)
    res2 = store.get({"user_id": [1], "item_id": ["x"]}, kept)
    assert res2.table.num_rows == 1


def test_join_key_change_refused(
    tmp_store: StoreFactory, registry: Registry, registry_dict: dict[str, Any]
) -> None:
    store = tmp_store()
    store.write("user_item", table(registry, "user_item", [_clicks_row(at(1), 7)]))
    for v in registry_dict["feature_views"]:
        if v["name"] == "user_item":
            v["entities"] = ["user"]
    changed = Registry.from_dict(registry_dict)
    with pytest.raises(SchemaError, match="join keys"):
        store.apply_registry(changed)
    assert _clicks(store) == (7, us(at(1)))
    store.apply_registry(changed, force=True)
    res = store.get({"user_id": [1]}, ["user_item:clicks"])
    assert res.status("user_item:clicks") == [NF]  # stored rows discarded


def test_new_view_added_live(
    tmp_store: StoreFactory, registry: Registry, registry_dict: dict[str, Any]
) -> None:
    store = tmp_store()
    registry_dict["feature_views"].append(
        {"name": "fresh", "entities": ["user"], "features": [{"name": "v", "dtype": "int64"}]}
    )
    evolved = Registry.from_dict(registry_dict)
    store.apply_registry(evolved)
    store.write(
        "fresh",
        table(evolved, "fresh", [{"user_id": 5, "event_timestamp": at(), "v": 55}]),
    )
    assert store.get({"user_id": [5]}, ["fresh:v"]).column("fresh:v") == [55]


# --------------------------------------------------------------------------------------------
# bad input: a clear error, and nothing changes


@pytest.fixture
def loaded(tmp_store: StoreFactory, registry: Registry) -> Store:
    store = tmp_store()
    _fill(store, registry)
    return store


def _still_fine(store: Store, before: dict[str, Any]) -> None:
    assert _snapshot(store) == before


def test_write_missing_column(loaded: Store, registry: Registry) -> None:
    before = _snapshot(loaded)
    t = table(registry, "all_types", [dict(FULL, event_timestamp=at(100), i32=5)]).drop_columns(
        ["f64"]
    )
    with pytest.raises(InvalidArgumentError, match="'f64'"):
        loaded.write("all_types", t)
    t = table(registry, "all_types", [dict(FULL, event_timestamp=at(100))]).drop_columns(
        ["event_timestamp"]
    )
    with pytest.raises(InvalidArgumentError, match="'event_timestamp'"):
        loaded.write("all_types", t)
    t = table(registry, "all_types", [dict(FULL, event_timestamp=at(100))]).drop_columns(
        ["user_id"]
    )
    with pytest.raises(InvalidArgumentError, match="'user_id'"):
        loaded.write("all_types", t)
    _still_fine(loaded, before)


def test_write_uncastable_column(loaded: Store, registry: Registry) -> None:
    before = _snapshot(loaded)
    good = table(registry, "all_types", [dict(FULL, event_timestamp=at(100), i32=5)])
    bad = good.set_column(
        good.schema.get_field_index("i32"), "i32", pa.array(["not a number"], pa.string())
    )
    with pytest.raises(InvalidArgumentError, match="'i32'"):
        loaded.write("all_types", bad)
    bad = good.set_column(
        good.schema.get_field_index("emb"), "emb", pa.array([[1.0, 2.0]], pa.list_(pa.float32()))
    )
    with pytest.raises(InvalidArgumentError, match="'emb'"):
        loaded.write("all_types", bad)
    _still_fine(loaded, before)
    # castable types are converted: int64 into int32, float64 into float32
    ok = good.set_column(good.schema.get_field_index("i32"), "i32", pa.array([5], pa.int64()))
    loaded.write("all_types", ok)
    assert loaded.get({"user_id": [1]}, ["all_types:i32"]).column("all_types:i32") == [5]


def test_write_null_join_key_or_timestamp(loaded: Store, registry: Registry) -> None:
    before = _snapshot(loaded)
    rows = [dict(FULL, event_timestamp=at(100), i32=5), dict(FULL, user_id=None)]
    with pytest.raises(InvalidArgumentError, match="user_id"):
        loaded.write("all_types", table(registry, "all_types", rows))
    rows = [dict(FULL, event_timestamp=at(100), i32=5), dict(FULL, user_id=7, event_timestamp=None)]
    with pytest.raises(InvalidArgumentError, match="event_timestamp"):
        loaded.write("all_types", table(registry, "all_types", rows))
    # the good first row of each bad batch was not written either: a batch is all or nothing
    _still_fine(loaded, before)
    with pytest.raises(InvalidArgumentError, match="user_id"):
        loaded.delete(
            "all_types", {"user_id": pa.array([1, None], pa.int64())}, event_timestamp=at(99)
        )
    _still_fine(loaded, before)


def test_unknown_view(loaded: Store, registry: Registry) -> None:
    before = _snapshot(loaded)
    with pytest.raises(NotFoundError, match="did you mean 'all_types'"):
        loaded.write("all_typs", table(registry, "all_types", [FULL]))
    with pytest.raises(NotFoundError, match=r"all_typs.*did you mean 'all_types'"):
        loaded.get({"user_id": [1]}, ["all_typs:i32"])
    with pytest.raises(NotFoundError, match="all_typs"):
        loaded.delete("all_typs", {"user_id": [1]}, event_timestamp=at(99))
    _still_fine(loaded, before)


def test_unknown_feature(loaded: Store) -> None:
    before = _snapshot(loaded)
    with pytest.raises(NotFoundError, match=r"'i33'.*did you mean 'i32'"):
        loaded.get({"user_id": [1]}, ["all_types:i32", "all_types:i33"])
    with pytest.raises(NotFoundError, match="'i33'"):
        loaded.get_dense({"user_id": [1]}, ["all_types:i33"])
    with pytest.raises(NotFoundError, match="no_such_service"):
        loaded.get({"user_id": [1]}, feature_service="no_such_service")
    _still_fine(loaded, before)


@pytest.mark.parametrize("ref", ["nocolon", ":i32", "all_types:", ""])
def test_malformed_ref(loaded: Store, ref: str) -> None:
    before = _snapshot(loaded)
    with pytest.raises(InvalidArgumentError, match="feature reference"):
        loaded.get({"user_id": [1]}, [ref])
    _still_fine(loaded, before)


def test_missing_join_key(loaded: Store) -> None:
    before = _snapshot(loaded)
    with pytest.raises(InvalidArgumentError, match="missing join key 'item_id'"):
        loaded.get({"user_id": [1]}, ["user_item:clicks"])
    with pytest.raises(InvalidArgumentError, match="missing join key 'user_id'"):
        loaded.get({"uid": [1]}, ["all_types:i32"])
    # an entity column nobody asked for is an error too
    with pytest.raises(InvalidArgumentError, match="'item_id'"):
        loaded.get({"user_id": [1], "item_id": ["x"]}, ["all_types:i32"])
    _still_fine(loaded, before)


def test_entity_columns_of_different_lengths(loaded: Store) -> None:
    before = _snapshot(loaded)
    with pytest.raises(InvalidArgumentError, match="length"):
        loaded.get({"user_id": [1, 1], "item_id": ["x"]}, ["user_item:clicks"])
    with pytest.raises(InvalidArgumentError, match="length"):
        loaded.get_dense({"user_id": [1, 1], "item_id": ["x"]}, ["user_item:clicks"])
    _still_fine(loaded, before)


def test_bad_entities(loaded: Store) -> None:
    before = _snapshot(loaded)
    with pytest.raises(InvalidArgumentError, match="no entit"):
        loaded.get({"user_id": []}, ["all_types:i32"])
    with pytest.raises(InvalidArgumentError, match="no entit"):
        loaded.get({}, ["all_types:i32"])
    with pytest.raises(InvalidArgumentError, match="no entit"):
        loaded.get_dense({"user_id": pa.array([], pa.int64())}, ["all_types:i32"])
    with pytest.raises(InvalidArgumentError, match="user_id"):
        loaded.get({"user_id": [1, None]}, ["all_types:i32"])
    with pytest.raises(InvalidArgumentError, match="user_id"):
        loaded.get({"user_id": [1.5]}, ["all_types:i32"])
    with pytest.raises(InvalidArgumentError, match="features"):
        loaded.get({"user_id": [1]}, [])
    _still_fine(loaded, before)


def test_max_entities(loaded: Store) -> None:
    # a per-request limit is its own class: RESOURCE_EXHAUSTED over gRPC, 413 over HTTP
    with pytest.raises(LimitExceededError, match="3 entities requested; the limit is 2"):
        loaded.get({"user_id": [1, 2, 3]}, ["all_types:i32"], max_entities=2)
    assert loaded.get({"user_id": [1, 2]}, ["all_types:i32"], max_entities=2).table.num_rows == 2
    assert issubclass(LimitExceededError, ResourceExhaustedError)
    assert (LimitExceededError.grpc_status, LimitExceededError.http_status) == (
        "RESOURCE_EXHAUSTED",
        413,
    )


def test_max_features_per_request(loaded: Store) -> None:
    loaded.core.configure_serving(max_entities=10, max_features=1)
    body = b'{"features":["all_types:i32","all_types:i64"],"entities":{"user_id":[1]}}'
    with pytest.raises(LimitExceededError, match="2 features requested; the limit is 1"):
        loaded.core.serve("feast_http", body, None)


# --------------------------------------------------------------------------------------------
# locking


def test_data_dir_in_use_same_process(
    tmp_store: StoreFactory, registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "locked"
    store = tmp_store(data_dir=path)
    store.write("all_types", table(registry, "all_types", [FULL]))
    with pytest.raises(StorageError, match="in use"):
        Store(path, registry)
    # the first store is unaffected
    assert store.get({"user_id": [1]}, ["all_types:i32"]).column("all_types:i32") == [FULL["i32"]]
    store.close()
    reopened = tmp_store(data_dir=path)
    assert reopened.get({"user_id": [1]}, ["all_types:i32"]).column("all_types:i32") == [
        FULL["i32"]
    ]


def test_data_dir_in_use_other_process(
    tmp_store: StoreFactory, registry: Registry, registry_path: Path, tmp_path: Path
) -> None:
    path = tmp_path / "locked"
    store = tmp_store(data_dir=path)
    script = (
        "import sys\n"
        "from serving.errors import StorageError\n"
        "from serving.store import Store\n"
        "try:\n"
        "    Store(sys.argv[1], sys.argv[2])\n"
        "except StorageError as e:\n"
        "    print('StorageError:', e)\n"
        "    sys.exit(3)\n"
        "sys.exit(0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path), str(registry_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "in use" in proc.stdout
    assert str(path) in proc.stdout
    assert not store.closed
    assert store.get({"user_id": [1]}, ["all_types:i32"]).status("all_types:i32") == [NF]


def test_cannot_open_a_file_as_data_dir(registry: Registry, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("not a directory")
    with pytest.raises(StorageError, match=str(f)):
        Store(f, registry)


# --------------------------------------------------------------------------------------------
# loader metadata


def test_meta(tmp_store: StoreFactory, registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "meta"
    store = tmp_store(data_dir=path)
    assert store.get_meta("k") is None
    store.write("all_types", table(registry, "all_types", [FULL]), meta={"k": b"v"})
    assert store.get_meta("k") == b"v"
    # meta with rows that all lose the merge is still stored (progress moves on)
    store.write(
        "all_types",
        table(registry, "all_types", [dict(FULL, event_timestamp=at(-10))]),
        meta={"k": b"v2", "other": b"\x00\x01"},
    )
    assert store.get_meta("k") == b"v2"
    # meta with no rows at all
    store.write("all_types", table(registry, "all_types", []), meta={"empty": b""})
    assert store.get_meta("empty") == b""
    # meta with a delete
    store.delete("all_types", {"user_id": [1]}, event_timestamp=at(50), meta={"d": b"1"})
    # a failed write stores no meta
    bad = table(registry, "all_types", [dict(FULL, user_id=None)])
    with pytest.raises(InvalidArgumentError):
        store.write("all_types", bad, meta={"k": b"bad"})
    assert store.get_meta("k") == b"v2"
    store.close()

    store = tmp_store(data_dir=path)
    assert store.get_meta("k") == b"v2"
    assert store.get_meta("other") == b"\x00\x01"
    assert store.get_meta("empty") == b""
    assert store.get_meta("d") == b"1"
    assert store.get_meta("missing") is None
    # core keys are not visible through get_meta
    assert store.get_meta("registry") is None
    assert store.get({"user_id": [1]}, ["all_types:i32"]).status("all_types:i32") == [NF]


def test_meta_with_multi_chunk_write(
    tmp_store: StoreFactory, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write larger than one chunk stores its meta with the last chunk, and all rows land."""
    monkeypatch.setattr(store_module, "WRITE_CHUNK_ROWS", 7)
    store = tmp_store()
    rows = [
        {"user_id": u, "item_id": "x", "event_timestamp": at(1), "affinity": 0.0, "clicks": u}
        for u in range(30)
    ]
    stats = store.write("user_item", table(registry, "user_item", rows), meta={"off": b"30"})
    assert stats == WriteStats(30, 30, 0)
    assert store.get_meta("off") == b"30"
    assert _ui(store, range(30)) == list(range(30))


def test_stats_and_compact(tmp_store: StoreFactory, registry: Registry) -> None:
    store = tmp_store()
    _fill(store, registry)
    store.flush()
    store.compact()
    stats = store.stats()
    assert stats["hot_tier"]["budget_bytes"] == 256 << 20
    assert stats["rocksdb"]["all_types/estimate-num-keys"] == 3
    assert stats["rocksdb"]["all_types/total-sst-files-size"] > 0
    assert _snapshot(store)["user_item"][0]["user_item:clicks"] == [1, None, None]
