"""Real table-format tables for the tests, each written by its own library: Iceberg through
pyiceberg's SQL catalog on SQLite, Delta through deltalake, Hudi through hudi-rs (the
test-only ``tools/hudi-writer``, built by ``make hudi-writer``: the ``hudi`` package on PyPI
reads only)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.harness.paths import ROOT

UTC = dt.UTC
US_UTC = pa.timestamp("us", tz="UTC")
#: where ``make hudi-writer`` puts the binary (its own target dir, outside the extension's)
HUDI_WRITER_TARGET = Path(
    os.environ.get(
        "FS_HUDI_WRITER_TARGET", Path.home() / ".cache" / "feature-serving" / "hudi-writer-target"
    )
)


def small_rows(ids: Any, ts: dt.datetime, x: float, label: str = "a") -> pa.Table:
    """Rows of the ``small`` view: user_id, event_timestamp, x (float32), label."""
    ids = [int(i) for i in ids]
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "event_timestamp": pa.array([ts] * len(ids), US_UTC),
            "x": pa.array([x + i / 1000 for i in ids], pa.float32()),
            "label": pa.array([f"{label}{i}" for i in ids], pa.string()),
        }
    )


def small_registry_dict(batch_source: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": "small",
        "entities": ["user"],
        "features": [{"name": "x", "dtype": "float32"}, {"name": "label", "dtype": "string"}],
        "batch_source": batch_source,
    }
    return {
        "project": "table_formats_test",
        "entities": [{"name": "user", "join_keys": [{"name": "user_id", "dtype": "int64"}]}],
        "feature_views": [view],
    }


class IcebergLake:
    """A SQL catalog on SQLite with a file warehouse under ``root``."""

    def __init__(self, root: Path) -> None:
        from pyiceberg.catalog.sql import SqlCatalog

        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.db = root / "catalog.db"
        self.warehouse = root / "warehouse"
        self.warehouse.mkdir(exist_ok=True)
        self.catalog = SqlCatalog(
            "default", uri=f"sqlite:///{self.db}", warehouse=f"file://{self.warehouse}"
        )
        self.catalog.create_namespace("fs")

    def source(self, table: str = "fs.small") -> dict[str, Any]:
        """A ``batch_source`` naming ``table`` in this catalog."""
        return {
            "type": "iceberg",
            "table": table,
            "catalog": {
                "type": "sql",
                "uri": f"sqlite:///{self.db}",
                "warehouse": str(self.warehouse),
            },
        }

    def create(self, rows: pa.Table, name: str = "fs.small") -> Any:
        table = self.catalog.create_table(name, schema=rows.schema)
        table.append(rows)
        return table

    def table(self, name: str = "fs.small") -> Any:
        return self.catalog.load_table(name)

    def snapshot(self, name: str = "fs.small") -> int:
        return int(self.table(name).current_snapshot().snapshot_id)


def hudi_writer_built() -> bool:
    return (HUDI_WRITER_TARGET / "release" / "hudi-writer").exists()


def hudi_writer() -> Path:
    path = HUDI_WRITER_TARGET / "release" / "hudi-writer"
    if not path.exists():
        raise AssertionError(f"{path} is missing: `make hudi-writer` builds it (make test does)")
    return path


class HudiTable:
    """A Hudi table written by hudi-rs through ``tools/hudi-writer``."""

    def __init__(self, path: Path, kind: str = "cow") -> None:
        self.path = path
        self.kind = kind
        self._n = 0
        self._run("create", "--type", kind, "--key", "user_id", "--ordering", "event_timestamp")

    def _run(self, *args: str) -> str:
        proc = subprocess.run(
            [str(hudi_writer()), args[0], str(self.path), *args[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, f"hudi-writer {args}: {proc.stderr}"
        return proc.stdout.strip()

    def _rows_file(self, rows: pa.Table) -> str:
        self._n += 1
        f = self.path.parent / f"{self.path.name}-input-{self._n}.parquet"
        pq.write_table(rows, f)
        return str(f)

    def write(self, op: str, rows: pa.Table) -> int:
        """``append``, ``upsert`` or ``overwrite``; returns the commit's instant."""
        return int(self._run(op, self._rows_file(rows)))

    def delete(self, where: str) -> int:
        return int(self._run("delete", where))

    def compact(self) -> int:
        return int(self._run("compact"))


def source(kind: str, path: Path) -> dict[str, Any]:
    return {"type": kind, "path": str(path)}
