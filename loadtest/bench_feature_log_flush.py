"""The feature-log writer's CPU per 1,000 logged rows, in-process (docs/benchmarks.md, "Served-
feature logging"): a real store with W1's / W2's view (float32 features), requests of a logged
feature service served through the core (the buffer filled as on a server), then one flush
drained and written to each destination, timed with the process's CPU clock (deltalake writes
on threads of its own, which a thread clock would miss; nothing else runs meanwhile).

    .venv/bin/python loadtest/bench_feature_log_flush.py [--rows 60000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from serving import Store
from serving.feature_log.destinations import DeltaDestination, ParquetDestination
from serving.feature_log.writer import _concat

REGISTRY = """
project: flushbench
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: user_profile
    entities: [user]
    features: [{name: "f{000..199}", dtype: float32}]
feature_services:
  - {name: w1, features: ["user_profile:f{000..099}"]}
  - {name: w2, features: ["user_profile:f{000..199}"]}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=60_000, help="logged rows per flush")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "features.yaml").write_text(REGISTRY)
        n = 20_000
        t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        cols: dict[str, pa.Array] = {
            "user_id": pa.array(np.arange(n), pa.int64()),
            "event_timestamp": pa.array([t0] * n, pa.timestamp("us", tz="UTC")),
        }
        rng = np.random.default_rng(7)
        for i in range(200):
            cols[f"f{i:03d}"] = pa.array(rng.random(n, dtype=np.float32))
        with Store(tmp / "db", tmp / "features.yaml") as store:
            store.write("user_profile", pa.table(cols))
            core = store.core
            for service, batch in (("w1", 1), ("w2", 100)):
                core.configure_logging({service: (1.0, 10 * args.rows)})
                for kind, dest in (
                    ("delta", DeltaDestination(str(tmp / "logs" / f"{service}-delta"))),
                    ("parquet", ParquetDestination(str(tmp / "logs" / f"{service}-parquet"))),
                ):
                    requests = args.rows // batch
                    t_serve = time.perf_counter()
                    for r in range(requests):
                        ids = [int(x) for x in rng.integers(0, n, batch)]
                        q = {"feature_service": service, "entities": {"user_id": ids}}
                        core.serve("feast_http", json.dumps(q).encode(), None, f"{r:032x}")
                    serve_s = time.perf_counter() - t_serve
                    c0, w0 = time.process_time(), time.perf_counter()
                    table = _concat(core.drain_log(service))
                    dest.write(table)
                    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                    per = 1_000_000 / table.num_rows
                    print(
                        f"{service} ({table.num_columns} columns) -> {kind}: {table.num_rows} "
                        f"rows, writer CPU {cpu * per:.1f} ms and wall {wall * per:.1f} ms per "
                        f"1,000 rows (serving the {requests} requests: {serve_s:.2f} s)"
                    )


if __name__ == "__main__":
    main()
