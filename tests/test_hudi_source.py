"""Hudi batch sources: real copy-on-write and merge-on-read tables written by hudi-rs
(tools/hudi-writer), read through the ``hudi`` package: full loads, incremental queries across
appends, upserts and deletes (tombstones), time travel to an instant, diff, bad input.

Skipped until ``make hudi-writer`` has built the writer (a long first build; see
docs/building.md). Written before the writer could be built on the shared machine, so these
tests have not run yet: expect to adjust them on their first run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from serving.errors import InvalidArgumentError
from serving.loaders import batch as bl
from serving.loaders.batch.meta import table_version_key
from serving.registry import Registry
from serving.store import FieldStatus, Store
from tests.harness import run_cli
from tests.harness.tables import HudiTable, hudi_writer_built, small_registry_dict, small_rows

pytest.importorskip("hudi")
needs_writer = pytest.mark.skipif(
    not hudi_writer_built(), reason="the Hudi writer is not built: make hudi-writer"
)

UTC = dt.UTC
D1 = dt.datetime(2024, 1, 1, tzinfo=UTC)
D2 = dt.datetime(2024, 1, 2, tzinfo=UTC)
KEY = table_version_key("small", "hudi")


def store_for(tmp_path: Path, path: Path, name: str = "db") -> Store:
    return Store(tmp_path / name, Registry.from_dict(small_registry_dict(source(path))))


def source(path: Path) -> dict[str, Any]:
    return {"type": "hudi", "path": str(path)}


def values(store: Store, ids: list[int]) -> dict[int, tuple[float, str] | None]:
    res = store.get({"user_id": ids}, ["small:x", "small:label"])
    out: dict[int, tuple[float, str] | None] = {}
    for i, st, x, label in zip(
        ids, res.status("small:x"), res.column("small:x"), res.column("small:label"), strict=True
    ):
        out[i] = (round(x, 3), label) if st == FieldStatus.PRESENT else None
    return out


@needs_writer
@pytest.mark.parametrize("kind", ["cow", "mor"])
def test_full_incremental_time_travel_diff(tmp_path: Path, kind: str) -> None:
    table = HudiTable(tmp_path / "hudi", kind)
    first = table.write("append", small_rows(range(10), D1, 1.0))
    with store_for(tmp_path, table.path) as store:
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert (v.rows_read, v.written, v.table_version) == (10, 10, first)
        assert store.get_meta(KEY) == str(first).encode()

        table.write("upsert", small_rows([5, 6], D2, 5.0, "u"))
        table.write("append", small_rows([10, 11], D2, 2.0))
        last = table.delete("user_id IN (0, 1)")
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert (v.written, v.deleted, v.table_version) == (4, 2, last)
        # the incremental query returns only the changed records, not the whole table
        assert v.rows_read == 4
        got = values(store, list(range(12)))
        assert (got[0], got[1]) == (None, None)
        assert (got[5], got[6], got[10]) == ((5.005, "u5"), (5.006, "u6"), (2.01, "a10"))
        assert got[2] == (1.002, "a2")
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert (v.rows_read, v.deleted, v.table_version) == (0, 0, last)

    # time travel to the first instant
    with store_for(tmp_path, table.path, "old") as old:
        v = bl.materialize(old, as_of_version=first, progress=False)["small"]
        assert v.rows_read == 10
        assert values(old, [0, 5, 10]) == {0: (1.0, "a0"), 5: (1.005, "a5"), 10: None}
        assert old.get_meta(KEY) is None
        with pytest.raises(InvalidArgumentError, match="no completed instant 42"):
            bl.materialize(old, as_of_version=42, progress=False)

    cfg = tmp_path / "features.yaml"
    cfg.write_text(yaml.safe_dump(small_registry_dict(source(table.path))))
    proc = run_cli("diff", "small", "--config", str(cfg), "--from", str(first), "--show")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        f"small ({table.path}): instant {first} -> latest instant: 2 added, 2 changed, 2 deleted"
    )
    assert [ln[:16] for ln in lines[1:]] == [
        "+ {user_id: 10, ",
        "+ {user_id: 11, ",
        "~ {user_id: 5} x",
        "~ {user_id: 6} x",
        "- {user_id: 0, x",
        "- {user_id: 1, x",
    ]


@needs_writer
def test_mor_compaction_brings_nothing_new(tmp_path: Path) -> None:
    table = HudiTable(tmp_path / "hudi", "mor")
    table.write("append", small_rows(range(10), D1, 1.0))
    table.write("upsert", small_rows([3], D2, 3.0, "u"))
    with store_for(tmp_path, table.path) as store:
        bl.materialize_incremental(store, progress=False)
        assert values(store, [3]) == {3: (3.003, "u3")}
        table.compact()
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert (v.written, v.deleted) == (0, 0)


def test_not_a_hudi_table(tmp_path: Path) -> None:
    not_hudi = tmp_path / "plain"
    not_hudi.mkdir()
    with (
        store_for(tmp_path, not_hudi, "a") as store,
        pytest.raises(InvalidArgumentError, match=r"plain is not a Hudi table \(no \.hoodie\)"),
    ):
        bl.materialize(store, progress=False)
    with (
        store_for(tmp_path, tmp_path / "nope", "b") as store,
        pytest.raises(InvalidArgumentError, match=r"batch source .*nope does not exist"),
    ):
        bl.materialize_incremental(store, progress=False)


@needs_writer
def test_bad_input(tmp_path: Path) -> None:

    no_label = HudiTable(tmp_path / "no_label")
    no_label.write("append", small_rows(range(3), D1, 1.0).drop_columns(["label"]))
    with store_for(tmp_path, no_label.path, "b") as store:
        with pytest.raises(InvalidArgumentError, match=r"no_label/.*column 'label': missing"):
            bl.materialize(store, progress=False)
        assert set(values(store, [0, 1, 2]).values()) == {None}
        assert store.get_meta(KEY) is None

    rows = small_rows(range(3), D1, 1.0)
    int_ts = HudiTable(tmp_path / "int_ts")
    int_ts.write("append", rows.set_column(1, "event_timestamp", pa.array([1, 2, 3], pa.int64())))
    with store_for(tmp_path, int_ts.path, "c") as store:
        with pytest.raises(
            InvalidArgumentError, match=r"int_ts/.*column 'event_timestamp': has type int64"
        ):
            bl.materialize(store, progress=False)
        assert store.get_meta(KEY) is None
