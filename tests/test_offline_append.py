"""An offline push's Parquet file is never visible half-written: a process that dies in the
middle of writing it (here: it exits from inside the Parquet writer, after part of the file is
on disk) leaves only a hidden temporary file, which the batch loader does not read; a later
append and a materialize run see exactly the complete files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa

from serving.loaders import batch as bl
from serving.loaders.batch import append
from serving.registry import Registry
from serving.store import Store

REPO = Path(__file__).resolve().parent.parent

REGISTRY = """
project: p
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: v
    entities: [user]
    features: [{name: x, dtype: float32}]
    batch_source: {type: parquet, path: v_dir}
"""

CHILD = """
import os, sys
import pyarrow as pa
import pyarrow.parquet as pq
from serving.loaders.batch import append
from serving.registry import Registry

real = pq.write_table

def dies_half_way(table, where, **kw):
    real(table.slice(0, table.num_rows // 2), where, **kw)
    where.flush()
    os._exit(3)  # the process dies with part of the file written

pq.write_table = dies_half_way
fv = Registry.from_yaml(sys.argv[1]).view("v")
rows = pa.table({
    "user_id": pa.array(range(1000), pa.int64()),
    "event_timestamp": pa.array([0] * 1000, pa.timestamp("us", tz="UTC")),
    "x": pa.array([1.0] * 1000, pa.float32()),
})
append.append(append.prepare(fv, rows))
"""


def rows(users: range, x: float) -> pa.Table:
    n = len(users)
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "event_timestamp": pa.array([1_000_000] * n, pa.timestamp("us", tz="UTC")),
        "x": pa.array([x] * n, pa.float32()),
    })  # fmt: skip


def test_a_crash_mid_write_leaves_no_visible_file(tmp_path: Path) -> None:
    config = tmp_path / "features.yaml"
    config.write_text(REGISTRY)
    fv = Registry.from_yaml(config).view("v")
    directory = tmp_path / "v_dir"
    first = append.append(append.prepare(fv, rows(range(10), 2.0)))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(config)],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    names = sorted(os.listdir(directory))
    visible = [n for n in names if not n.startswith(".")]
    assert visible == [Path(first.path).name], names
    (temp,) = [n for n in names if n.startswith(".")]
    assert temp.endswith(".parquet.tmp")
    assert (directory / temp).stat().st_size > 0  # part of a file was on disk
    second = append.append(append.prepare(fv, rows(range(10, 12), 3.0)))
    assert second.rows == 2
    with Store(tmp_path / "db", Registry.from_yaml(config)) as store:
        summary = bl.materialize(store, ["v"], progress=False)
        assert summary.views[0].written == 12
        got = store.get({"user_id": [0, 9, 10, 11, 500]}, ["v:x"]).column("v:x")
    assert got == [2.0, 2.0, 3.0, 3.0, None]
