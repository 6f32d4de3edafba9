"""Iceberg batch sources: real tables written by pyiceberg (SQL catalog on SQLite), loaded in
full, incrementally across appends, upserts and deletes (tombstones), by time travel, by
metadata location, and bad input answered before anything is written."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from serving.errors import InvalidArgumentError
from serving.loaders import batch as bl
from serving.loaders.batch.meta import table_version_key
from serving.registry import Registry
from serving.store import FieldStatus, Store
from tests.harness.tables import IcebergLake, small_registry_dict, small_rows

pytest.importorskip("pyiceberg")

UTC = dt.UTC
D1 = dt.datetime(2024, 1, 1, tzinfo=UTC)
D2 = dt.datetime(2024, 1, 2, tzinfo=UTC)
D3 = dt.datetime(2024, 1, 3, tzinfo=UTC)
KEY = table_version_key("small", "iceberg")


def store_for(tmp_path: Path, source: dict[str, Any], name: str = "db") -> Store:
    return Store(tmp_path / name, Registry.from_dict(small_registry_dict(source)))


def values(store: Store, ids: list[int]) -> dict[int, tuple[float, str] | None]:
    res = store.get({"user_id": ids}, ["small:x", "small:label"])
    out: dict[int, tuple[float, str] | None] = {}
    for i, st, x, label in zip(
        ids, res.status("small:x"), res.column("small:x"), res.column("small:label"), strict=True
    ):
        out[i] = (round(x, 3), label) if st == FieldStatus.PRESENT else None
    return out


def test_full_incremental_upsert_delete(tmp_path: Path) -> None:
    lake = IcebergLake(tmp_path / "lake")
    table = lake.create(small_rows(range(10), D1, 1.0))
    s1 = lake.snapshot()
    with store_for(tmp_path, lake.source()) as store:
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert (v.rows_read, v.written, v.table_version) == (10, 10, s1)
        assert store.get_meta(KEY) == str(s1).encode()

        table.append(small_rows([10, 11], D2, 2.0))  # append
        table = lake.table()
        table.upsert(small_rows([5, 6], D2, 5.0, "u"), join_cols=["user_id"])  # update 5, 6
        table = lake.table()
        table.delete("user_id < 2")  # delete 0, 1
        s2 = lake.snapshot()
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert v.table_version == s2
        assert v.deleted == 2
        # only the added data files are read: the appended rows, the upserted rows and the
        # rows of files the upsert and the delete rewrote, never the untouched rows twice
        assert v.written == 4
        assert store.get_meta(KEY) == str(s2).encode()
        got = values(store, list(range(12)))
        assert (got[0], got[1]) == (None, None)
        assert (got[5], got[6]) == ((5.005, "u5"), (5.006, "u6"))
        assert (got[10], got[2]) == ((2.01, "a10"), (1.002, "a2"))

        # nothing new: nothing read, version unchanged
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert (v.rows_read, v.deleted, v.table_version) == (0, 0, s2)


def test_append_only_reads_only_new_files(tmp_path: Path) -> None:
    lake = IcebergLake(tmp_path / "lake")
    table = lake.create(small_rows(range(100), D1, 1.0))
    with store_for(tmp_path, lake.source()) as store:
        bl.materialize_incremental(store, progress=False)
        table.append(small_rows(range(100, 130), D2, 1.0))
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert (v.rows_read, v.written, v.files_read, v.deleted) == (30, 30, 1, 0)


def test_time_travel_and_full_load_after_sync(tmp_path: Path) -> None:
    lake = IcebergLake(tmp_path / "lake")
    table = lake.create(small_rows(range(5), D1, 1.0))
    s1 = lake.snapshot()
    table.overwrite(small_rows(range(3), D2, 7.0, "o"))  # keys 3, 4 gone
    with store_for(tmp_path, lake.source(), "old") as old:
        v = bl.materialize(old, as_of_version=s1, progress=False)["small"]
        assert v.rows_read == 5
        assert values(old, [0, 4]) == {0: (1.0, "a0"), 4: (1.004, "a4")}
        assert old.get_meta(KEY) is None  # time travel records no version
        with pytest.raises(InvalidArgumentError, match="no snapshot 42"):
            bl.materialize(old, as_of_version=42, progress=False)
    with store_for(tmp_path, lake.source(), "synced") as synced:
        bl.materialize(synced, as_of_version=s1, progress=False)
        synced.write(
            "small",
            small_rows([], D1, 0).rename_columns(["user_id", "event_timestamp", "x", "label"]),
            meta={KEY: str(s1).encode()},
        )
        # a full load of the latest snapshot over an older synced one applies the deletes too
        v = bl.materialize(synced, progress=False)["small"]
        assert (v.rows_read, v.deleted) == (3, 2)
        assert values(synced, [0, 3, 4]) == {0: (7.0, "o0"), 3: None, 4: None}
        assert synced.get_meta(KEY) == str(lake.snapshot()).encode()


def test_table_by_metadata_location(tmp_path: Path) -> None:
    lake = IcebergLake(tmp_path / "lake")
    table = lake.create(small_rows(range(4), D1, 1.0))
    table.append(small_rows([4], D2, 1.0))
    directory = Path(table.metadata_location.removeprefix("file://")).parent.parent
    for path in (str(directory), table.metadata_location.removeprefix("file://")):
        with store_for(tmp_path, {"type": "iceberg", "path": path}, f"db{len(path)}") as store:
            v = bl.materialize(store, progress=False)["small"]
            assert (v.rows_read, v.table_version) == (5, lake.snapshot())


def nothing_written(store: Store) -> None:
    assert set(values(store, list(range(5))).values()) == {None}
    assert store.get_meta(KEY) is None


def test_bad_input(tmp_path: Path) -> None:
    lake = IcebergLake(tmp_path / "lake")
    lake.create(small_rows(range(5), D1, 1.0))

    missing = {**lake.source(), "catalog": {"type": "sql", "uri": f"sqlite:///{tmp_path}/no.db"}}
    with store_for(tmp_path, missing, "a") as store:
        with pytest.raises(
            InvalidArgumentError, match=r"catalog sqlite:///.*no\.db does not exist"
        ):
            bl.materialize(store, progress=False)
        nothing_written(store)
    assert not (tmp_path / "no.db").exists()  # no empty catalog created by the attempt

    with (
        store_for(tmp_path, lake.source("fs.nope"), "b") as store,
        pytest.raises(InvalidArgumentError, match=r"Iceberg table fs\.nope not found"),
    ):
        bl.materialize(store, progress=False)

    # a schema that does not match the view: no 'label' column
    no_label = small_rows(range(5), D1, 1.0).drop_columns(["label"])
    lake.create(no_label, "fs.no_label")
    with store_for(tmp_path, lake.source("fs.no_label"), "c") as store:
        with pytest.raises(
            InvalidArgumentError, match=r"fs/no_label/data/.*\.parquet: column 'label': missing"
        ):
            bl.materialize(store, progress=False)
        nothing_written(store)

    # a timestamp column of the wrong type (int64)
    rows = small_rows(range(5), D1, 1.0)
    int_ts = rows.set_column(1, "event_timestamp", pa.array(range(5), pa.int64()))
    lake.create(int_ts, "fs.int_ts")
    with store_for(tmp_path, lake.source("fs.int_ts"), "d") as store:
        with pytest.raises(
            InvalidArgumentError, match=r"column 'event_timestamp': has type int64; expected a "
        ):
            bl.materialize(store, progress=False)
        nothing_written(store)

    # a bad row (null key): table file, row and column named, nothing written
    null_key = rows.set_column(0, "user_id", pa.array([0, 1, None, 3, 4], pa.int64()))
    lake.create(null_key, "fs.null_key")
    with store_for(tmp_path, lake.source("fs.null_key"), "e") as store:
        with pytest.raises(
            InvalidArgumentError, match=r"fs/null_key/data/.*\.parquet: row 2: column 'user_id'"
        ):
            bl.materialize(store, progress=False)
        nothing_written(store)


def test_registry_checks_iceberg_keys() -> None:
    base = small_registry_dict({"type": "iceberg", "table": "fs.t"})
    with pytest.raises(Exception, match="needs its 'catalog'"):
        Registry.from_dict(base)
    both = small_registry_dict(
        {"type": "iceberg", "table": "fs.t", "path": "x", "catalog": {"type": "sql", "uri": "x"}}
    )
    with pytest.raises(Exception, match="either 'table'"):
        Registry.from_dict(both)
    parquet = small_registry_dict({"type": "parquet", "path": "x", "table": "t"})
    with pytest.raises(Exception, match="'table' is for iceberg sources only"):
        Registry.from_dict(parquet)


def test_offline_push_to_an_iceberg_source_is_refused(tmp_path: Path) -> None:
    from serving.loaders.batch.append import prepare

    lake = IcebergLake(tmp_path / "lake")
    lake.create(small_rows(range(3), D1, 1.0))
    registry = Registry.from_dict(small_registry_dict(lake.source()))
    with pytest.raises(InvalidArgumentError, match=r"offline pushes to iceberg sources"):
        prepare(registry.view("small"), small_rows([7], D2, 1.0))
    assert len(lake.table().snapshots()) == 1


def test_renamed_column_is_read_by_field_id(tmp_path: Path) -> None:
    lake = IcebergLake(tmp_path / "lake")
    rows = small_rows(range(3), D1, 1.0).rename_columns(
        ["user_id", "event_timestamp", "y", "label"]
    )
    table = lake.create(rows)
    with table.update_schema() as update:
        update.rename_column("y", "x")  # the data file still calls it y
    table = lake.table()
    table.append(small_rows([3], D2, 4.0))  # a new file, written with x
    with store_for(tmp_path, lake.source()) as store:
        v = bl.materialize(store, progress=False)["small"]
        assert (v.rows_read, v.written) == (4, 4)
        assert values(store, [0, 2, 3]) == {0: (1.0, "a0"), 2: (1.002, "a2"), 3: (4.003, "a3")}
