"""``feature-serving diff`` through the real CLI: two versions of a Delta table and of an
Iceberg table (appends, an update, a delete), and a version against the online store, each
checked against the answer worked out by hand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import run_cli
from tests.harness.tables import IcebergLake, small_registry_dict, small_rows

deltalake = pytest.importorskip("deltalake")
pytest.importorskip("pyiceberg")

UTC = dt.UTC
D1 = dt.datetime(2024, 1, 1, tzinfo=UTC)
D2 = dt.datetime(2024, 1, 2, tzinfo=UTC)


def config(tmp_path: Path, source: dict[str, Any]) -> str:
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(small_registry_dict(source)))
    return str(path)


def diff(cfg: str, *args: str) -> list[str]:
    proc = run_cli("diff", "small", "--config", cfg, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


# By hand: version A holds users 0..9 (x = 1.00i, label ai). Then users 10 and 11 are
# appended, users 5 and 6 get x = 5.00i and label ui (a later event), users 0 and 1 are
# deleted. Between A and the last version: added 10, 11; changed 5, 6; deleted 0, 1.
EXPECTED_ROWS = [
    "+ {user_id: 10, x: 2.01, label: 'a10', event_timestamp: 2024-01-02T00:00:00Z}",
    "+ {user_id: 11, x: 2.011, label: 'a11', event_timestamp: 2024-01-02T00:00:00Z}",
    "~ {user_id: 5} x: 1.005 -> 5.005, label: 'a5' -> 'u5', "
    "event_timestamp: 2024-01-01T00:00:00Z -> 2024-01-02T00:00:00Z",
    "~ {user_id: 6} x: 1.006 -> 5.006, label: 'a6' -> 'u6', "
    "event_timestamp: 2024-01-01T00:00:00Z -> 2024-01-02T00:00:00Z",
    "- {user_id: 0, x: 1, label: 'a0', event_timestamp: 2024-01-01T00:00:00Z}",
    "- {user_id: 1, x: 1.001, label: 'a1', event_timestamp: 2024-01-01T00:00:00Z}",
]


def test_diff_delta_versions(tmp_path: Path) -> None:
    path = tmp_path / "delta"
    w = deltalake.write_deltalake
    w(path, small_rows(range(10), D1, 1.0))  # v0
    w(path, small_rows([10, 11], D2, 2.0), mode="append")  # v1
    t = deltalake.DeltaTable(path)
    (
        t.merge(small_rows([5, 6], D2, 5.0, "u"), "s.user_id = t.user_id", "s", "t")
        .when_matched_update_all()
        .execute()
    )  # v2: MERGE
    deltalake.DeltaTable(path).delete("user_id < 2")  # v3: DELETE
    cfg = config(tmp_path, {"type": "delta", "path": str(path)})
    lines = diff(cfg, "--from", "0", "--to", "3")
    assert lines == [f"small ({path}): version 0 -> version 3: 2 added, 2 changed, 2 deleted"]
    assert diff(cfg, "--from", "0", "--show")[1:] == EXPECTED_ROWS
    assert diff(cfg, "--from", "3", "--to", "3")[0].endswith("0 added, 0 changed, 0 deleted")
    # only the append between 0 and 1
    assert diff(cfg, "--from", "0", "--to", "1")[0].endswith("2 added, 0 changed, 0 deleted")

    # against the online store: loaded at v3, then compared with v3 and with v0
    data = str(tmp_path / "store")
    loaded = run_cli("materialize-incremental", "--config", cfg, "--data-dir", data)
    assert loaded.returncode == 0, loaded.stderr
    same = diff(cfg, "--data-dir", data, "--against-online")
    assert same[0].endswith("online store -> latest version: 0 added, 0 changed, 0 deleted")
    old = diff(cfg, "--data-dir", data, "--against-online", "--to", "0", "--show")
    # v0 has users 0, 1 the store no longer holds, 5, 6 with other values, and the store
    # holds 10, 11 that v0 does not
    assert old[0].endswith("online store -> version 0: 2 added, 2 changed, 2 deleted")
    assert [ln[:15] for ln in old if ln[:1] in "+~-"] == [
        "+ {user_id: 0, ",
        "+ {user_id: 1, ",
        "~ {user_id: 5} ",
        "~ {user_id: 6} ",
        "- {user_id: 10,",
        "- {user_id: 11,",
    ]


def test_diff_iceberg_snapshots(tmp_path: Path) -> None:
    lake = IcebergLake(tmp_path / "lake")
    table = lake.create(small_rows(range(10), D1, 1.0))
    first = lake.snapshot()
    table.append(small_rows([10, 11], D2, 2.0))
    lake.table().upsert(small_rows([5, 6], D2, 5.0, "u"), join_cols=["user_id"])
    lake.table().delete("user_id < 2")
    last = lake.snapshot()
    cfg = config(tmp_path, lake.source())
    lines = diff(cfg, "--from", str(first), "--to", str(last), "--show")
    assert lines[0] == (
        f"small (sql:fs.small): snapshot {first} -> snapshot {last}: 2 added, 2 changed, 2 deleted"
    )
    assert lines[1:] == EXPECTED_ROWS


def test_diff_errors(tmp_path: Path) -> None:
    parquet = config(tmp_path, {"type": "parquet", "path": str(tmp_path / "x.parquet")})
    proc = run_cli("diff", "small", "--config", parquet, "--from", "0")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: feature view 'small': diff needs a versioned source (delta, iceberg, hudi); "
        "its source is parquet"
    )
    proc = run_cli("diff", "small", "--config", parquet)
    assert (proc.returncode, proc.stderr.strip()) == (
        1,
        "error: diff needs --from V1 (or --against-online)",
    )
    path = tmp_path / "delta"
    deltalake.write_deltalake(path, small_rows(range(3), D1, 1.0))
    cfg = config(tmp_path, {"type": "delta", "path": str(path)})
    proc = run_cli("diff", "small", "--config", cfg, "--from", "0", "--to", "7")
    assert proc.returncode == 1
    assert "version 7" in proc.stderr
