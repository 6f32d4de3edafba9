"""Durability: a writer process killed with SIGKILL mid-stream loses no acknowledged write and
leaves no partial batch behind (a write is one RocksDB write batch: all or nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from serving.registry import Registry
from serving.store import FieldStatus

if TYPE_CHECKING:
    from tests.harness import StoreFactory

REPO = Path(__file__).resolve().parent.parent
ROWS_PER_BATCH = 500
N_FEATURES = 200

# The writer: batch k holds users k*B .. k*B+B-1 of user_profile, every value a function of
# (user, feature, k), plus the batch number as loader progress (meta) in the same write.
# After each write returns it prints the batch number, flushed: an acknowledged batch.
WRITER = """
import sys
import datetime as dt
import numpy as np
import pyarrow as pa
from serving.store import Store

path, registry, rows, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = Store(path, registry)
schema = store.registry.arrow_schema("user_profile")
feat = np.arange(200, dtype=np.float32)
k = start
while True:
    ids = np.arange(k * rows, (k + 1) * rows, dtype=np.int64)
    cols = [pa.array(ids), pa.array(
        [dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=k)] * rows,
        pa.timestamp("us", tz="UTC"))]
    vals = (ids[:, None] % 997).astype(np.float32) + feat[None, :] / 256 + np.float32(k % 3)
    cols += [pa.array(vals[:, j]) for j in range(200)]
    store.write("user_profile", pa.Table.from_arrays(cols, schema=schema),
                meta={"batch": str(k).encode()})
    print(k, flush=True)
    k += 1
"""


def expected_values(k: int) -> np.ndarray:
    ids = np.arange(k * ROWS_PER_BATCH, (k + 1) * ROWS_PER_BATCH, dtype=np.int64)
    feat = np.arange(N_FEATURES, dtype=np.float32)
    return (ids[:, None] % 997).astype(np.float32) + feat[None, :] / 256 + np.float32(k % 3)


def run_and_kill(script: Path, data: Path, registry_path: Path, start: int, min_acked: int) -> int:
    """Starts the writer, waits for ``min_acked`` more acknowledged batches, kills it with
    SIGKILL while it is writing; returns the last acknowledged batch."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(data),
            str(registry_path),
            str(ROWS_PER_BATCH),
            str(start),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked = start - 1
    deadline = time.monotonic() + 120
    try:
        assert proc.stdout is not None
        while acked < start - 1 + min_acked:
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.stderr else ""
                pytest.fail(f"writer exited early: rc={proc.wait()} {err}")
            acked = int(line)
            assert time.monotonic() < deadline, "writer too slow"
        # kill at an arbitrary point of a later write
        time.sleep(np.random.default_rng(start).uniform(0, 0.02))
        os.kill(proc.pid, signal.SIGKILL)
        # batches acknowledged before the kill landed are still in the pipe
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for line in rest.splitlines():
        acked = int(line)
    return acked


def check(store_factory: StoreFactory, data: Path, registry: Registry, acked: int) -> int:
    store = store_factory(registry, data_dir=data)
    progress = store.get_meta("batch")
    assert progress is not None
    last = int(progress)
    # every acknowledged batch is durable (the in-flight one may have made it too)
    assert last >= acked, (last, acked)
    assert last <= acked + 1, (last, acked)
    names = [f"user_profile:f{j:03d}" for j in range(N_FEATURES)]
    for k in range(last + 1):
        ids = np.arange(k * ROWS_PER_BATCH, (k + 1) * ROWS_PER_BATCH, dtype=np.int64)
        dense = store.get_dense({"user_id": ids}, names)
        assert (dense.statuses == FieldStatus.PRESENT).all(), f"batch {k} incomplete"
        np.testing.assert_array_equal(dense.values, expected_values(k), err_msg=f"batch {k}")
    # nothing of a batch whose progress marker did not land
    after = np.arange((last + 1) * ROWS_PER_BATCH, (last + 3) * ROWS_PER_BATCH, dtype=np.int64)
    dense = store.get_dense({"user_id": after}, names)
    assert (dense.statuses == FieldStatus.NOT_FOUND).all(), "partial batch after the last one"
    store.close()
    return last


@pytest.mark.slow
def test_kill_9_writer_loses_no_acknowledged_batch(
    tmp_store: StoreFactory, registry: Registry, registry_path: Path, tmp_path: Path
) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    data = tmp_path / "data"
    start = 0
    # kill, recover, continue writing into the recovered store, kill again
    for _ in range(3):
        acked = run_and_kill(script, data, registry_path, start, min_acked=15)
        assert acked >= start + 14
        last = check(tmp_store, data, registry, acked)
        start = last + 1
