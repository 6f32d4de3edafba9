"""kill -9 in the middle of a batch load, then rerun: the store ends in the correct state.

A child process loads a directory of Parquet files in small batches (every key appears twice:
an old version in the first file, the newest in the last) and prints a line after every
store write; the test SIGKILLs it after some writes, checks that the watermark was not stored
(it rides with the last batch), reruns the load in-process and checks every key and the
watermark.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.loaders import batch as bl
from serving.registry import Registry
from serving.sample import BASE_TIME, user_profile_schema
from serving.store import FieldStatus, Store

REPO = Path(__file__).resolve().parent.parent
N = 40_000
D1 = BASE_TIME
D2 = BASE_TIME + dt.timedelta(days=1)
D3 = BASE_TIME + dt.timedelta(days=2)
PROFILE_REFS = [f"user_profile:f{i:03d}" for i in range(200)]


def expected(ids: np.ndarray, shift: int = 0) -> np.ndarray:
    u = ids.astype(np.int64)[:, None]
    j = np.arange(200, dtype=np.int64)[None, :]
    return (((u * 31 + j * 17 + shift) % 1000) / 10.0).astype(np.float32)


def profile_table(ids: np.ndarray, ts: dt.datetime, shift: int = 0) -> pa.Table:
    values = expected(ids, shift)
    cols = [pa.array(ids, pa.int64()), pa.array([ts] * len(ids), pa.timestamp("us", tz="UTC"))]
    cols.extend(pa.array(values[:, i]) for i in range(200))
    return pa.Table.from_arrays(cols, schema=user_profile_schema())


def registry_for(path: Path) -> Registry:
    return Registry.from_dict(
        {
            "project": "batch_loader_test",
            "entities": [{"name": "user", "join_keys": [{"name": "user_id", "dtype": "int64"}]}],
            "feature_views": [
                {
                    "name": "user_profile",
                    "entities": ["user"],
                    "features": [{"name": "f{000..199}", "dtype": "float32"}],
                    "batch_source": {"type": "parquet", "path": str(path)},
                }
            ],
        }
    )


CHILD = textwrap.dedent(
    """
    import sys
    from serving.loaders import batch as bl
    from serving.registry import Registry
    from serving.store import Store

    src, db = sys.argv[1], sys.argv[2]
    registry = Registry.from_dict({
        "project": "batch_loader_test",
        "entities": [{"name": "user", "join_keys": [{"name": "user_id", "dtype": "int64"}]}],
        "feature_views": [{
            "name": "user_profile", "entities": ["user"],
            "features": [{"name": "f{000..199}", "dtype": "float32"}],
            "batch_source": {"type": "parquet", "path": src},
        }],
    })
    store = Store(db, registry)
    write = store.write
    def traced(*args, **kwargs):
        stats = write(*args, **kwargs)
        print("wrote", stats.rows, flush=True)
        return stats
    store.write = traced
    bl.materialize_incremental(store, end=sys.argv[3], batch_rows=1000, progress=False)
    print("done", flush=True)
    """
)


@pytest.mark.slow
def test_kill_9_mid_load_then_rerun(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ids = np.arange(N)
    # stale values first, newest last, so a torn load would show stale values
    pq.write_table(profile_table(ids, D1, shift=11), src / "a-old.parquet", row_group_size=5000)
    pq.write_table(profile_table(ids, D2), src / "b-new.parquet", row_group_size=5000)
    db = tmp_path / "db"
    end = "2024-01-05T00:00:00Z"
    errors = tmp_path / "child.err"
    writes = 0
    with (
        open(errors, "w") as err,
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(src), str(db), end],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        ) as child,
    ):
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("wrote"):
                writes += 1
                if writes == 20:  # half of the old file: mid-load, mid-file
                    os.kill(child.pid, signal.SIGKILL)
                    break
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, errors.read_text()
    registry = registry_for(src)
    with Store(db, registry) as store:
        # what was written is durable; the watermark is not there: it rides with the last batch
        assert store.get_meta(bl.watermark_key("user_profile")) is None
        partial = store.get_dense({"user_id": ids}, PROFILE_REFS[:1])
        present = int((partial.statuses == FieldStatus.PRESENT).sum())
        assert 0 < present < N
        summary = bl.materialize_incremental(store, end=end, progress=False)["user_profile"]
        assert summary.rows_read == 2 * N
        assert summary.written + summary.skipped_older == 2 * N
        res = store.get_dense({"user_id": ids}, PROFILE_REFS)
        assert (res.statuses == FieldStatus.PRESENT).all()
        np.testing.assert_array_equal(res.values, expected(ids))
        assert store.get_meta(bl.watermark_key("user_profile")) == b"2024-01-05T00:00:00.000000Z"
        # a rerun changes nothing
        again = bl.materialize(store, start=D1, end=D3, progress=False)["user_profile"]
        assert (again.written, again.skipped_older) == (0, 2 * N)
