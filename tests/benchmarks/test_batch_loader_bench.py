"""Batch loader benchmark: materialize ``user_profile`` (WORKLOADS.md) from Parquet, Delta,
Iceberg and Hudi (the same rows in each).

End to end: open the source, plan, validation pass, read, convert, Store.write, watermark.
Figures of record are in docs/benchmarks.md ("Batch loader"); rerun with

    .venv/bin/python -m pytest -q -s -m benchmark --benchmark-enable \\
        tests/benchmarks/test_batch_loader_bench.py

Target (read from the report, not asserted: a shared 2-core machine drifts): >= 200,000
rows/s from Parquet, the same order from Delta; Iceberg and Hudi within 20 % of Parquet
for the same rows (issue 20). Each run also prints where the time goes:
reading + converting alone (the loader's read pipeline without writes) and Store.write alone
(the same batches already in memory, into an empty store). The ``smoke`` variant is not
marked ``benchmark`` so it runs in the default suite and keeps this file from rotting.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.loaders import batch as bl
from serving.loaders.batch import api as bla
from serving.loaders.batch import plan as blp
from serving.loaders.batch import read as blr
from serving.loaders.batch.formats import TABLE_FORMATS
from serving.registry import Registry
from serving.sample import generate, user_profile_value
from serving.store import FieldStatus, Store
from tests.harness.tables import HudiTable, IcebergLake, hudi_writer_built

deltalake = pytest.importorskip("deltalake")

SCALES = [
    pytest.param(300, id="smoke"),
    pytest.param(20_000, id="20k", marks=pytest.mark.benchmark),
    pytest.param(1_000_000, id="1M", marks=[pytest.mark.benchmark, pytest.mark.slow]),
]
# Hudi tables need the test-only writer (`make hudi-writer`, a long first build)
SOURCES = ["parquet", "delta", "iceberg", *(["hudi"] if hudi_writer_built() else [])]


def registry(kind: str, path: str | dict[str, Any]) -> Registry:
    return Registry.from_dict(
        {
            "project": "bench",
            "entities": [{"name": "user", "join_keys": [{"name": "user_id", "dtype": "int64"}]}],
            "feature_views": [
                {
                    "name": "user_profile",
                    "entities": ["user"],
                    "features": [{"name": "f{000..199}", "dtype": "float32"}],
                    "batch_source": path
                    if isinstance(path, dict)
                    else {"type": kind, "path": path},
                }
            ],
        }
    )


_DATA: dict[tuple[int, str], str | dict[str, Any]] = {}


def source(tmp_path_factory: pytest.TempPathFactory, n: int, kind: str) -> str | dict[str, Any]:
    """The same rows as Parquet (the sample's file) and as a table of each format, each
    written by its own library."""
    if (n, kind) not in _DATA:
        if (n, "parquet") not in _DATA:
            root = tmp_path_factory.mktemp(f"batch_loader_{n}")
            _DATA[n, "parquet"] = generate(root / "sample", n).paths["user_profile"]
        pq_path = str(_DATA[n, "parquet"])
        root = Path(pq_path).parent.parent
        f = pq.ParquetFile(pq_path)
        if kind == "delta":
            reader = pa.RecordBatchReader.from_batches(f.schema_arrow, f.iter_batches(65_536))
            deltalake.write_deltalake(root / "delta", reader)
            _DATA[n, kind] = str(root / "delta")
        elif kind == "iceberg":
            lake = IcebergLake(root / "iceberg")
            table = lake.catalog.create_table("fs.user_profile", schema=f.schema_arrow)
            for i in range(f.metadata.num_row_groups):
                table.append(f.read_row_group(i))
            _DATA[n, kind] = lake.source("fs.user_profile")
        elif kind == "hudi":
            hudi = HudiTable(root / "hudi")
            for i in range(f.metadata.num_row_groups):
                hudi.write("append", f.read_row_group(i))
            _DATA[n, kind] = str(root / "hudi")
    return _DATA[n, kind]


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("n", SCALES)
def test_materialize(
    benchmark: Any, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, n: int, kind: str
) -> None:
    path = source(tmp_path_factory, n, kind)
    reg = registry(kind, path)
    db = tmp_path / "db"
    stores: list[Store] = []

    def setup() -> tuple[tuple[Store], dict[str, Any]]:
        for s in stores:
            s.close()
        shutil.rmtree(db, ignore_errors=True)
        stores.append(Store(db, reg))
        return (stores[-1],), {}

    def run(store: Store) -> bl.LoadSummary:
        return bl.materialize(store, progress=False)

    started = time.perf_counter()
    summary = benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    elapsed = time.perf_counter() - started
    store = stores[-1]
    v = summary["user_profile"]
    assert (v.rows_read, v.written, v.errors) == (n, n, 0)
    probe = np.array([0, n // 2, n - 1], dtype=np.int64)
    res = store.get_dense({"user_id": probe}, ["user_profile:f001"])
    assert (res.statuses == FieldStatus.PRESENT).all()
    assert res.values[:, 0].tolist() == [user_profile_value(int(u), 1) for u in probe]

    # where the time goes: the read pipeline alone, then Store.write alone
    plan = bla._new_plan(store, reg.view("user_profile"), None, None)
    if kind != "parquet":
        TABLE_FORMATS[kind].plan(
            plan,
            version=None,
            synced=None,
            incremental=False,
            prune_partitions=True,
            on_error="fail",
        )
    else:
        blp._plan_parquet(plan, prune_partitions=True, on_error="fail")
    t0 = time.perf_counter()
    batches = [p.batch for _u, p in blr._prepared(plan, build=True, batch_rows=bl.BATCH_ROWS)]
    read_s = time.perf_counter() - t0
    store.close()
    shutil.rmtree(db, ignore_errors=True)
    with Store(db, reg) as fresh:
        t0 = time.perf_counter()
        for b in batches:
            fresh.write("user_profile", b)
        write_s = time.perf_counter() - t0
    benchmark.extra_info.update(
        rows=n,
        rows_per_s=round(n / v.seconds),
        read_convert_s=round(read_s, 3),
        store_write_s=round(write_s, 3),
    )
    print(
        f"\nbatch loader {kind} N={n:,}: {v.seconds:.2f} s in materialize "
        f"({n / v.seconds:,.0f} rows/s; {elapsed:.2f} s with store open); "
        f"read+convert alone {read_s:.2f} s ({n / read_s:,.0f} rows/s), "
        f"Store.write alone {write_s:.2f} s ({n / write_s:,.0f} rows/s)"
    )
