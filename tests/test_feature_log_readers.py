"""The readers docs/feature-logging.md names read real logs: a real store's answers logged by
the writer to a Delta table and a Parquet dataset, read back with pandas, polars and DuckDB
(the docs' recipes, each checked here)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from serving import Store
from serving.feature_log import FeatureLogger

REGISTRY = """
project: readers
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: users
    entities: [user]
    features: [{name: u0, dtype: float32}, {name: name, dtype: string}]
feature_services:
  - name: to_delta
    features: ["users:*"]
    logging: {sample_rate: 1.0, destination: {type: delta, path: logs/delta}}
  - name: to_parquet
    features: ["users:*"]
    logging: {sample_rate: 1.0, destination: {type: parquet, path: logs/parquet}}
"""


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("readers")
    (tmp / "features.yaml").write_text(REGISTRY)
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with Store(tmp / "db", tmp / "features.yaml") as store:
        store.write(
            "users",
            pa.table({
                "user_id": pa.array([1, 2], pa.int64()),
                "event_timestamp": pa.array([t, t], pa.timestamp("us", tz="UTC")),
                "u0": pa.array([1.5, 2.5], pa.float32()),
                "name": ["ann", "bob"],
            }),
        )  # fmt: skip
        writer = FeatureLogger(store.core)
        writer.configure(store.registry)
        for service in ("to_delta", "to_parquet"):
            body = f'{{"feature_service":"{service}","entities":{{"user_id":[1,2,3]}}}}'
            store.core.serve("feast_http", body.encode(), None, f"rid-{service}")
        writer.stop()  # the shutdown flush writes both
    return tmp / "logs"


def check(rows: list[tuple[object, ...]]) -> None:
    assert sorted(rows, key=lambda r: int(str(r[0]))) == [
        (1, 1.5, 1),
        (2, 2.5, 1),
        (3, None, 3),
    ]


def test_pandas(logs: Path) -> None:
    import pandas as pd
    from deltalake import DeltaTable

    df = DeltaTable(str(logs / "delta")).to_pandas()
    check(
        [
            (r.user_id, None if pd.isna(r.users__u0) else r.users__u0, r.users__u0__status)
            for r in df.itertuples()
        ]
    )
    pq_df = pd.read_parquet(logs / "parquet")  # every day's folder
    assert len(pq_df) == 3
    assert str(pq_df["__log_date"].iloc[0]) == dt.datetime.now(dt.UTC).date().isoformat()
    assert set(pq_df["__request_id"]) == {"rid-to_parquet"}


def test_polars(logs: Path) -> None:
    import polars as pl

    df = pl.read_delta(str(logs / "delta"))
    check(list(df.select("user_id", "users__u0", "users__u0__status").iter_rows()))
    pq_df = pl.read_parquet(logs / "parquet" / "*" / "*.parquet")
    check(list(pq_df.select("user_id", "users__u0", "users__u0__status").iter_rows()))
    assert pq_df.schema["__log_date"] == pl.Date


def test_duckdb(logs: Path) -> None:
    import duckdb
    from deltalake import DeltaTable

    con = duckdb.connect()
    q = "select user_id, users__u0, users__u0__status from {} order by user_id"
    rows = con.sql(q.format(f"read_parquet('{logs / 'parquet'}/*/*.parquet')")).fetchall()
    check(rows)
    # a Delta table through deltalake's Arrow dataset (DuckDB's own delta extension is a
    # download this machine does not make)
    delta = DeltaTable(str(logs / "delta")).to_pyarrow_dataset()
    con.register("served", delta)
    check(con.sql(q.format("served")).fetchall())
