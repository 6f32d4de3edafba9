"""Batch loader: Parquet files, directories, hive datasets and Delta tables into a real store."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.errors import InvalidArgumentError
from serving.loaders import batch as bl
from serving.loaders.batch import meta as blm
from serving.registry import Registry
from serving.sample import BASE_TIME, generate, user_profile_schema
from serving.store import FieldStatus, Store

deltalake = pytest.importorskip("deltalake")

UTC = dt.UTC
DAY = dt.timedelta(days=1)
D1 = BASE_TIME
D2 = BASE_TIME + DAY
D3 = BASE_TIME + 2 * DAY
D4 = BASE_TIME + 3 * DAY
N_F = 200
REPO = Path(__file__).resolve().parent.parent
PROFILE_REFS = [f"user_profile:f{i:03d}" for i in range(N_F)]


# --------------------------------------------------------------------------------------------
# helpers


def registry_for(
    profile: dict[str, Any] | None = None, small: dict[str, Any] | None = None
) -> Registry:
    views: list[dict[str, Any]] = []
    if profile is not None:
        views.append(
            {
                "name": "user_profile",
                "entities": ["user"],
                "features": [{"name": "f{000..199}", "dtype": "float32"}],
                "batch_source": profile,
            }
        )
    if small is not None:
        views.append(
            {
                "name": "small",
                "entities": ["user"],
                "features": [
                    {"name": "x", "dtype": "float32"},
                    {"name": "label", "dtype": "string"},
                ],
                "batch_source": small,
            }
        )
    return Registry.from_dict(
        {
            "project": "batch_loader_test",
            "entities": [{"name": "user", "join_keys": [{"name": "user_id", "dtype": "int64"}]}],
            "feature_views": views,
        }
    )


def expected(ids: Sequence[int] | np.ndarray, shift: int = 0) -> np.ndarray:
    """WORKLOADS.md values (shift=0) or a shifted variant, ``[len(ids) x 200]`` float32."""
    u = np.asarray(ids, dtype=np.int64)[:, None]
    j = np.arange(N_F, dtype=np.int64)[None, :]
    return (((u * 31 + j * 17 + shift) % 1000) / 10.0).astype(np.float32)


def profile_table(ids: Sequence[int] | np.ndarray, ts: dt.datetime, shift: int = 0) -> pa.Table:
    ids = np.asarray(ids, dtype=np.int64)
    values = expected(ids, shift)
    cols: list[pa.Array] = [
        pa.array(ids, pa.int64()),
        pa.array(np.full(len(ids), blm._micros(ts)), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    ]
    cols.extend(pa.array(values[:, i]) for i in range(N_F))
    return pa.Table.from_arrays(cols, schema=user_profile_schema())


def check_profile(
    store: Store, ids: Sequence[int] | np.ndarray, shift: int = 0, ts: dt.datetime | None = None
) -> None:
    res = store.get_dense({"user_id": np.asarray(ids, dtype=np.int64)}, PROFILE_REFS)
    assert (res.statuses == FieldStatus.PRESENT).all()
    np.testing.assert_array_equal(res.values, expected(ids, shift))
    if ts is not None:
        got = store.get({"user_id": [int(ids[0])]}, PROFILE_REFS[:1])
        assert got.event_timestamps[0, 0] == np.datetime64(ts.replace(tzinfo=None), "us")


def check_absent(store: Store, ids: Sequence[int] | np.ndarray) -> None:
    res = store.get_dense({"user_id": np.asarray(ids, dtype=np.int64)}, PROFILE_REFS[:1])
    assert (res.statuses == FieldStatus.NOT_FOUND).all()


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Any]:
    opened: list[Store] = []

    def make(registry: Registry, name: str = "db") -> Store:
        store = Store(tmp_path / name, registry, hot_tier_bytes=16 << 20)
        opened.append(store)
        return store

    yield make
    for s in opened:
        if not s.closed:
            s.close()


def load(store: Store, *args: Any, **kwargs: Any) -> bl.LoadSummary:
    kwargs.setdefault("progress", False)
    return bl.materialize(store, *args, **kwargs)


def incremental(store: Store, *args: Any, **kwargs: Any) -> bl.LoadSummary:
    kwargs.setdefault("progress", False)
    return bl.materialize_incremental(store, *args, **kwargs)


# --------------------------------------------------------------------------------------------
# Parquet


def test_parquet_file_sample(tmp_path: Path, open_store: Any) -> None:
    info = generate(tmp_path / "sample", 3000)
    store = open_store(registry_for({"type": "parquet", "path": info.paths["user_profile"]}))
    summary = load(store, end=D2)
    v = summary["user_profile"]
    assert (v.rows_read, v.written, v.skipped_older, v.errors) == (3000, 3000, 0, 0)
    assert v.files_read == 1
    check_profile(store, range(3000), ts=D1)
    # the window reached back to the beginning: the watermark is the window's end
    assert store.get_meta(bl.watermark_key("user_profile")) == b"2024-01-02T00:00:00.000000Z"
    assert v.watermark == D2
    assert "3,000 written" in str(summary)


def test_idempotent_rerun(tmp_path: Path, open_store: Any) -> None:
    info = generate(tmp_path / "sample", 2000)
    store = open_store(registry_for({"type": "parquet", "path": info.paths["user_profile"]}))
    first = load(store)["user_profile"]
    second = load(store)["user_profile"]
    assert (first.written, first.skipped_older) == (2000, 0)
    assert (second.rows_read, second.written, second.skipped_older) == (2000, 0, 2000)
    check_profile(store, range(2000))


def test_directory_and_statistics_pruning(tmp_path: Path, open_store: Any) -> None:
    src = tmp_path / "dir"
    src.mkdir()
    pq.write_table(profile_table(range(0, 100), D1), src / "a.parquet")
    pq.write_table(profile_table(range(100, 200), D2), src / "b.parquet")
    pq.write_table(profile_table(range(200, 300), D3), src / "c.parquet")
    (src / "_SUCCESS").write_text("")  # ignored, as Spark writes it
    store = open_store(registry_for({"type": "parquet", "path": str(src)}))
    v = load(store, start=D2, end=D3)["user_profile"]
    # a.parquet and c.parquet are skipped on their row-group statistics, never read
    assert (v.rows_read, v.written, v.files_read, v.files_pruned) == (100, 100, 1, 2)
    check_profile(store, range(100, 200))
    check_absent(store, [*range(0, 100), *range(200, 300)])
    # no watermark: the window did not start at the beginning
    assert store.get_meta(bl.watermark_key("user_profile")) is None
    v = load(store)["user_profile"]
    assert (v.rows_read, v.written, v.skipped_older, v.files_read) == (300, 200, 100, 3)
    check_profile(store, range(300))


def write_hive(root: Path, days: Sequence[dt.datetime], per_day: int = 50) -> None:
    for i, day in enumerate(days):
        part = root / f"date={day.date().isoformat()}"
        part.mkdir(parents=True)
        ids = range(i * per_day, (i + 1) * per_day)
        # timestamps spread over the day, so statistics alone would not prune
        t = profile_table(ids, day)
        spread = pa.array(
            [blm._micros(day) + k * 3_600_000_000 // per_day * 23 for k in range(per_day)],
            pa.int64(),
        ).cast(pa.timestamp("us", tz="UTC"))
        t = t.set_column(1, "event_timestamp", spread)
        pq.write_table(t.drop_columns([]), part / "part-0.parquet")


def test_hive_partitioned_dataset_prunes_partitions(tmp_path: Path, open_store: Any) -> None:
    root = tmp_path / "hive"
    write_hive(root, [D1, D2, D3, D4])
    store = open_store(registry_for({"type": "parquet", "path": str(root)}))
    v = load(store, start=D2, end=D4)["user_profile"]
    assert (v.rows_read, v.written, v.files_read, v.files_pruned) == (100, 100, 2, 2)
    check_profile(store, range(50, 150))
    check_absent(store, [*range(0, 50), *range(150, 200)])
    # a window inside one day reads one partition
    v = load(store, start=D3 + dt.timedelta(hours=1), end=D3 + dt.timedelta(hours=2))[
        "user_profile"
    ]
    assert v.files_read == 1


def test_hive_date_partition_must_match_event_date(tmp_path: Path, open_store: Any) -> None:
    root = tmp_path / "hive"
    part = root / "date=2024-01-02"
    part.mkdir(parents=True)
    pq.write_table(profile_table(range(10), D3), part / "p.parquet")  # event on the 3rd
    store = open_store(registry_for({"type": "parquet", "path": str(root)}))
    with pytest.raises(InvalidArgumentError, match=r"not on the day of partition date=2024-01-02"):
        load(store, start=D2, end=D4)
    check_absent(store, range(10))
    v = load(store, start=D2, end=D4, prune_partitions=False)["user_profile"]
    assert v.written == 10


def test_window_boundaries(tmp_path: Path, open_store: Any) -> None:
    us = dt.timedelta(microseconds=1)
    times = [D2 - us, D2, D3 - us, D3]
    t = pa.concat_tables([profile_table([i], ts) for i, ts in enumerate(times)])
    path = tmp_path / "edges.parquet"
    pq.write_table(t, path)
    store = open_store(registry_for({"type": "parquet", "path": str(path)}))
    v = load(store, start=D2, end=D3)["user_profile"]
    assert (v.rows_read, v.written) == (2, 2)
    check_profile(store, [1, 2])
    check_absent(store, [0, 3])


def test_out_of_order_backfill_keeps_newest(tmp_path: Path, open_store: Any) -> None:
    new, old = tmp_path / "new.parquet", tmp_path / "old.parquet"
    pq.write_table(profile_table(range(500), D2), new)
    pq.write_table(profile_table(range(500), D1, shift=7), old)
    store = open_store(registry_for({"type": "parquet", "path": str(new)}))
    assert load(store)["user_profile"].written == 500
    store.close()
    store = open_store(registry_for({"type": "parquet", "path": str(old)}), name="db")
    v = load(store)["user_profile"]
    assert (v.written, v.skipped_older) == (0, 500)
    check_profile(store, range(500), ts=D2)


def test_duplicate_keys_keep_latest_event(tmp_path: Path, open_store: Any) -> None:
    # each key appears three times, the newest in the middle, across and within batches
    t = pa.concat_tables(
        [
            profile_table(range(300), D1, shift=1),
            profile_table(range(300), D3),
            profile_table(range(300), D2, shift=2),
        ]
    )
    path = tmp_path / "dups.parquet"
    pq.write_table(t, path, row_group_size=250)
    store = open_store(registry_for({"type": "parquet", "path": str(path)}))
    v = load(store, batch_rows=100)["user_profile"]
    assert v.rows_read == 900
    assert v.written + v.skipped_older == 900
    check_profile(store, range(300), ts=D3)


def test_incremental_parquet_watermark(tmp_path: Path, open_store: Any) -> None:
    src = tmp_path / "dir"
    src.mkdir()
    pq.write_table(profile_table(range(100), D1), src / "a.parquet")
    store = open_store(registry_for({"type": "parquet", "path": str(src)}))
    v = incremental(store, end=D2)["user_profile"]
    assert (v.rows_read, v.written, v.watermark) == (100, 100, D2)
    pq.write_table(profile_table(range(100, 150), D2 + dt.timedelta(hours=5)), src / "b.parquet")
    v = incremental(store, end=D3)["user_profile"]
    assert (v.rows_read, v.written, v.files_read) == (50, 50, 1)
    assert store.get_meta(bl.watermark_key("user_profile")) == b"2024-01-03T00:00:00.000000Z"
    # nothing new: nothing read, watermark unchanged
    v = incremental(store, end=D3)["user_profile"]
    assert (v.rows_read, v.watermark) == (0, D3)
    check_profile(store, range(150))


def test_string_and_naive_timestamps(tmp_path: Path, open_store: Any) -> None:
    path = tmp_path / "small.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 2, 3], pa.int64()),
                "ts": ["2024-01-02T00:00:00Z", "2024-01-02 12:00:00", "2024-01-02T13:00:00+01:00"],
                "x": pa.array([1.0, 2.0, 3.0], pa.float64()),  # cast to float32
                "label": ["a", "b", None],
            }
        ),
        path,
    )
    store = open_store(
        registry_for(small={"type": "parquet", "path": str(path), "timestamp_field": "ts"})
    )
    v = load(store, start=D2, end=D3)["small"]
    assert (v.rows_read, v.written) == (3, 3)
    res = store.get({"user_id": [1, 2, 3]}, ["small:x", "small:label"])
    assert res.column("small:x") == [1.0, 2.0, 3.0]
    assert res.column("small:label") == ["a", "b", None]
    assert res.event_timestamps[:, 0].tolist() == [
        dt.datetime(2024, 1, 2),
        dt.datetime(2024, 1, 2, 12),
        dt.datetime(2024, 1, 2, 12),
    ]


# --------------------------------------------------------------------------------------------
# Delta


def delta_rows(path: Path) -> int:
    return int(
        pa.table(deltalake.DeltaTable(path).get_add_actions(flatten=True))["num_records"]
        .to_numpy()
        .sum()
    )


def test_delta_incremental_versions_overwrite_compaction(tmp_path: Path, open_store: Any) -> None:
    path = tmp_path / "delta"
    w = deltalake.write_deltalake
    w(path, profile_table(range(0, 1000), D1))  # v0
    store = open_store(registry_for({"type": "delta", "path": str(path)}))
    v = incremental(store)["user_profile"]
    assert (v.rows_read, v.written, v.delta_version) == (1000, 1000, 0)
    assert store.get_meta(bl.delta_version_key("user_profile")) == b"0"

    w(path, profile_table(range(1000, 1500), D2), mode="append")  # v1
    v = incremental(store)["user_profile"]
    assert (v.rows_read, v.written, v.delta_version) == (500, 500, 1)

    deltalake.DeltaTable(path).optimize.compact()  # v2: rewrites only synced rows
    v = incremental(store)["user_profile"]
    assert (v.rows_read, v.files_read, v.delta_version) == (0, 0, 2)

    # v3: overwrite with 300 rows, newer values for keys 0..299
    w(path, profile_table(range(300), D3, shift=5), mode="overwrite")
    v = incremental(store)["user_profile"]
    assert (v.rows_read, v.written, v.delta_version, v.deleted) == (300, 300, 3, 1200)
    check_profile(store, range(300), shift=5, ts=D3)
    # rows the overwrite removed are deleted online too (tombstones, issue 20)
    check_absent(store, range(300, 1500))

    w(path, profile_table(range(2000, 2100), D3), mode="append")  # v4
    w(path, profile_table(range(2100, 2150), D3), mode="append")  # v5
    v = incremental(store)["user_profile"]
    assert (v.rows_read, v.written, v.delta_version) == (150, 150, 5)

    # v6 appends, v7 compacts synced and unsynced files together: the compacted file is
    # read again (idempotent), only the new rows are written
    w(path, profile_table(range(3000, 3010), D4), mode="append")
    deltalake.DeltaTable(path).optimize.compact()
    v = incremental(store)["user_profile"]
    assert v.delta_version == 7
    assert v.written == 10
    assert v.skipped_older == v.rows_read - 10
    check_profile(store, [*range(2000, 2150), *range(3000, 3010)])

    # nothing new
    v = incremental(store)["user_profile"]
    assert (v.rows_read, v.delta_version) == (0, 7)


def test_delta_time_travel_and_full_load(tmp_path: Path, open_store: Any) -> None:
    path = tmp_path / "delta"
    deltalake.write_deltalake(path, profile_table(range(100), D1))  # v0
    deltalake.write_deltalake(path, profile_table(range(100), D2, shift=3), mode="overwrite")
    deltalake.write_deltalake(path, profile_table(range(100, 120), D2), mode="append")  # v2
    reg = registry_for({"type": "delta", "path": str(path)})
    old = open_store(reg, name="old")
    v = load(old, as_of_version=0)["user_profile"]
    assert (v.rows_read, v.delta_version) == (100, 0)
    check_profile(old, range(100), shift=0, ts=D1)
    check_absent(old, range(100, 120))
    # time travel does not mark the table synced
    assert old.get_meta(bl.delta_version_key("user_profile")) is None

    latest = open_store(reg, name="latest")
    v = load(latest)["user_profile"]
    assert (v.rows_read, v.delta_version) == (120, 2)
    check_profile(latest, range(100), shift=3)
    assert latest.get_meta(bl.delta_version_key("user_profile")) == b"2"
    # a windowed load of the table
    v = load(open_store(reg, name="window"), start=D2, end=D3)["user_profile"]
    assert v.rows_read == 120

    with pytest.raises(InvalidArgumentError, match="version 9"):
        load(old, as_of_version=9)


def test_delta_partitioned_by_date(tmp_path: Path, open_store: Any) -> None:
    path = tmp_path / "delta"
    t = pa.concat_tables([profile_table(range(50), D1), profile_table(range(50, 100), D2)])
    t = t.append_column("date", pa.array(["2024-01-01"] * 50 + ["2024-01-02"] * 50))
    deltalake.write_deltalake(path, t, partition_by=["date"])
    store = open_store(registry_for({"type": "delta", "path": str(path)}))
    v = load(store, start=D2, end=D3)["user_profile"]
    assert (v.rows_read, v.files_read, v.files_pruned) == (50, 1, 1)
    check_profile(store, range(50, 100))


# --------------------------------------------------------------------------------------------
# bad input


def small_file(path: Path, **overrides: Any) -> Path:
    cols: dict[str, Any] = {
        "user_id": pa.array(list(range(10)), pa.int64()),
        "event_timestamp": pa.array([D2] * 10, pa.timestamp("us", tz="UTC")),
        "x": pa.array([float(i) for i in range(10)], pa.float32()),
        "label": [f"l{i}" for i in range(10)],
    }
    for k, val in overrides.items():
        if val is None:
            del cols[k]
        else:
            cols[k] = val
    pq.write_table(pa.table(cols), path, row_group_size=4)
    return path


def small_store(open_store: Any, path: Path, **src: Any) -> Store:
    return open_store(registry_for(small={"type": "parquet", "path": str(path), **src}))


def assert_nothing_written(store: Store) -> None:
    res = store.get({"user_id": list(range(10))}, ["small:x"])
    assert set(res.status("small:x")) == {FieldStatus.NOT_FOUND}
    assert store.get_meta(bl.watermark_key("small")) is None


def test_missing_source(tmp_path: Path, open_store: Any) -> None:
    store = small_store(open_store, tmp_path / "nope.parquet")
    with pytest.raises(InvalidArgumentError, match=r"nope\.parquet does not exist"):
        load(store)
    delta = open_store(
        registry_for(small={"type": "delta", "path": str(tmp_path / "nodelta")}), name="d"
    )
    with pytest.raises(InvalidArgumentError, match="nodelta does not exist"):
        load(delta)


def test_missing_column_names_file_and_column(tmp_path: Path, open_store: Any) -> None:
    src = tmp_path / "dir"
    src.mkdir()
    small_file(src / "a.parquet")
    small_file(src / "b.parquet", label=None)
    store = small_store(open_store, src)
    with pytest.raises(InvalidArgumentError) as e:
        load(store)
    assert "b.parquet" in e.value.message
    assert "column 'label'" in e.value.message
    assert "missing feature column" in e.value.message
    assert_nothing_written(store)
    # skip mode skips the file and counts its rows
    v = load(store, on_error="skip")["small"]
    assert (v.written, v.errors) == (10, 10)
    assert "b.parquet" in str(v.first_errors[0])


def test_uncastable_dtype(tmp_path: Path, open_store: Any) -> None:
    path = small_file(tmp_path / "s.parquet", x=pa.array([[1.0]] * 10, pa.list_(pa.float64())))
    store = small_store(open_store, path)
    with pytest.raises(InvalidArgumentError, match=r"s\.parquet: column 'x': has type list"):
        load(store)
    assert_nothing_written(store)


def test_bad_value_names_file_column_row(tmp_path: Path, open_store: Any) -> None:
    values = [str(i) for i in range(10)]
    values[7] = "seven"
    path = small_file(tmp_path / "s.parquet", x=pa.array(values))
    store = small_store(open_store, path)
    with pytest.raises(InvalidArgumentError) as e:
        load(store, batch_rows=3)
    msg = e.value.message
    assert "s.parquet: row 7: column 'x': value 'seven' cannot be converted to float" in msg
    assert_nothing_written(store)
    v = load(store, on_error="skip")["small"]
    assert (v.rows_read, v.written, v.errors) == (10, 9, 1)
    assert store.get({"user_id": [6]}, ["small:x"]).column("small:x") == [6.0]


def test_null_join_key_fails_before_writing(tmp_path: Path, open_store: Any) -> None:
    # the bad row is in the last batch: a single-pass loader would have written rows 0..7
    path = small_file(tmp_path / "s.parquet", user_id=pa.array([*range(9), None], pa.int64()))
    store = small_store(open_store, path)
    with pytest.raises(InvalidArgumentError) as e:
        load(store, batch_rows=2)
    assert "s.parquet: row 9: column 'user_id': null join key" in e.value.message
    assert "nothing was written" in e.value.message
    assert_nothing_written(store)


def test_unparsable_timestamp(tmp_path: Path, open_store: Any) -> None:
    ts = ["2024-01-02T00:00:00Z"] * 10
    ts[3] = "yesterday"
    ts[5] = "2024-13-45"
    path = small_file(tmp_path / "s.parquet", event_timestamp=pa.array(ts))
    store = small_store(open_store, path)
    with pytest.raises(InvalidArgumentError) as e:
        load(store)
    assert "s.parquet: row 3: column 'event_timestamp': cannot parse timestamp 'yesterday'" in (
        e.value.message
    )
    assert_nothing_written(store)
    v = load(store, on_error="skip")["small"]
    assert (v.rows_read, v.written, v.errors) == (10, 8, 2)
    assert [e.row for e in v.first_errors] == [3, 5]
    assert "2024-13-45" in str(v)


def test_timestamp_of_wrong_type(tmp_path: Path, open_store: Any) -> None:
    path = small_file(tmp_path / "s.parquet", event_timestamp=pa.array(range(10), pa.int64()))
    store = small_store(open_store, path)
    with pytest.raises(InvalidArgumentError, match="column 'event_timestamp': has type int64"):
        load(store)


def test_bad_rows_outside_the_window_are_ignored(tmp_path: Path, open_store: Any) -> None:
    ts = pa.array([D1] * 5 + [D2] * 5, pa.timestamp("us", tz="UTC"))
    ids = pa.array([None, 1, 2, 3, 4, 5, 6, 7, 8, 9], pa.int64())
    path = small_file(tmp_path / "s.parquet", event_timestamp=ts, user_id=ids)
    store = small_store(open_store, path)
    v = load(store, start=D2)["small"]
    assert (v.rows_read, v.written, v.errors) == (5, 5, 0)


def test_dry_run_writes_nothing(tmp_path: Path, open_store: Any) -> None:
    path = small_file(tmp_path / "s.parquet", user_id=pa.array([*range(8), None, None], pa.int64()))
    store = small_store(open_store, path)
    summary = load(store, dry_run=True, on_error="skip")
    v = summary["small"]
    assert (v.rows_read, v.written, v.errors) == (10, 0, 2)
    assert summary.dry_run
    assert "dry run" in str(summary)
    assert_nothing_written(store)
    with pytest.raises(InvalidArgumentError, match="null join key"):
        load(store, dry_run=True)
    assert_nothing_written(store)


def test_arguments(tmp_path: Path, open_store: Any) -> None:
    path = small_file(tmp_path / "s.parquet")
    store = small_store(open_store, path)
    with pytest.raises(InvalidArgumentError, match="empty window"):
        load(store, start=D3, end=D2)
    with pytest.raises(InvalidArgumentError, match=r"table formats \(Delta, Iceberg, Hudi\) only"):
        load(store, as_of_version=1)
    with pytest.raises(InvalidArgumentError, match="invalid time"):
        load(store, start="last tuesday")
    assert bl.parse_time("2024-01-02") == D2
    assert bl.parse_time("now-1d", now=D3) == D2


# --------------------------------------------------------------------------------------------
# CLI


def cli(argv: list[str]) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    common.add_argument("--data-dir")
    parser = argparse.ArgumentParser()
    bl.add_commands(parser.add_subparsers(dest="command", required=True), common)
    return parser.parse_args(argv)


def test_cli_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = generate(tmp_path / "sample", 500)
    config = tmp_path / "features.yaml"
    config.write_text(
        "project: t\n"
        "entities: [{name: user, join_keys: [{name: user_id, dtype: int64}]}]\n"
        "feature_views:\n"
        "  - name: user_profile\n"
        "    entities: [user]\n"
        '    features: [{name: "f{000..199}", dtype: float32}]\n'
        f"    batch_source: {{type: parquet, path: {info.paths['user_profile']}}}\n"
    )
    data = tmp_path / "store"
    base = ["--config", str(config), "--data-dir", str(data), "--progress", "never"]
    args = cli(["materialize", "user_profile", "--end", "2024-01-02", *base])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "500 written" in out
    args = cli(["materialize-incremental", *base])
    assert args.func(args) == 0
    assert "0 rows read" in capsys.readouterr().out
    args = cli(["materialize", "--dry-run", *base])
    assert args.func(args) == 0
    # a store held by another process (a running server): a clear message and exit code 2
    script = (
        "import argparse, sys\n"
        "from serving.loaders import batch as bl\n"
        "common = argparse.ArgumentParser(add_help=False)\n"
        "common.add_argument('--config'); common.add_argument('--data-dir')\n"
        "p = argparse.ArgumentParser()\n"
        "bl.add_commands(p.add_subparsers(dest='command', required=True), common)\n"
        "a = p.parse_args(sys.argv[1:])\n"
        "sys.exit(a.func(a))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "FS_SERVER_URL": "http://127.0.0.1:9"}
    with Store(data, Registry.from_yaml(config)):
        proc = subprocess.run(
            [sys.executable, "-c", script, "materialize", *base],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert proc.returncode == 2, proc.stderr
    assert "in use by another process" in proc.stderr
    assert "no feature-serving server answered at http://127.0.0.1:9" in proc.stderr
    # a server named with --server gets the job even though the local store is free
    proc = subprocess.run(
        [sys.executable, "-c", script, "materialize", "--server", "http://127.0.0.1:9", *base],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "error: no feature-serving server answered at http://127.0.0.1:9" in proc.stderr
    assert "in use" not in proc.stderr
    # bad input: message and exit code 1
    args = cli(["materialize", "--start", "2024-02-01", "--end", "2024-01-01", *base])
    assert args.func(args) == 1
    assert "empty window" in capsys.readouterr().err
