"""Deletes in a table-format source become tombstones online under the merge rule: Delta
DELETE and MERGE (delete clause), an Iceberg delete; the delete's event time is its commit's,
so a newer row (e.g. from the stream) survives it; and kill -9 during an incremental sync with
deletes, then a rerun: nothing lost, nothing applied twice, the version consistent."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from serving.loaders import batch as bl
from serving.loaders.batch.meta import table_version_key
from serving.registry import Registry
from serving.store import FieldStatus, Store
from tests.harness.paths import ROOT
from tests.harness.tables import IcebergLake, small_registry_dict, small_rows

deltalake = pytest.importorskip("deltalake")
pytest.importorskip("pyiceberg")

UTC = dt.UTC
D1 = dt.datetime(2024, 1, 1, tzinfo=UTC)
D2 = dt.datetime(2024, 1, 2, tzinfo=UTC)


def present(store: Store, ids: list[int]) -> list[int]:
    res = store.get({"user_id": ids}, ["small:x"])
    return [i for i, s in zip(ids, res.status("small:x"), strict=True) if s == FieldStatus.PRESENT]


def open_store(tmp_path: Path, source: dict[str, Any]) -> Store:
    return Store(tmp_path / "db", Registry.from_dict(small_registry_dict(source)))


def test_delta_delete_and_merge_become_tombstones(tmp_path: Path) -> None:
    path = tmp_path / "delta"
    deltalake.write_deltalake(path, small_rows(range(20), D1, 1.0))  # v0
    with open_store(tmp_path, {"type": "delta", "path": str(path)}) as store:
        bl.materialize_incremental(store, progress=False)
        before = dt.datetime.now(UTC)
        deltalake.DeltaTable(path).delete("user_id < 3")  # v1: DELETE 0, 1, 2
        (
            deltalake.DeltaTable(path)
            .merge(small_rows([3, 4, 30], D2, 9.0), "s.user_id = t.user_id", "s", "t")
            .when_matched_delete(predicate="s.user_id = 3")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )  # v2: MERGE deletes 3, updates 4, inserts 30
        # user 2 has a newer row online (a stream event after the delete): it survives
        newer = dt.datetime.now(UTC) + dt.timedelta(hours=1)
        store.write("small", small_rows([2], newer, 7.0, "s"))
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert (v.delta_version, v.deleted) == (2, 3)  # 0, 1 and 3; 2's tombstone was older
        assert present(store, [0, 1, 2, 3, 4, 30]) == [2, 4, 30]
        assert store.get({"user_id": [4]}, ["small:x"]).column("small:x") == [pytest.approx(9.004)]
        # the tombstones carry the DELETE's commit time (not older than the run started)
        note = next(n for n in v.notes if "entities deleted" in n)
        stamp = note.split("tombstones timed ")[1].split(" ")[0]
        assert dt.datetime.fromisoformat(stamp) >= before.replace(microsecond=0)
        # a rerun applies nothing again
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert (v.rows_read, v.deleted) == (0, 0)


def test_delta_optimize_deletes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "delta"
    for i in range(3):
        deltalake.write_deltalake(path, small_rows(range(i * 5, i * 5 + 5), D1, 1.0), mode="append")
    with open_store(tmp_path, {"type": "delta", "path": str(path)}) as store:
        bl.materialize_incremental(store, progress=False)
        deltalake.DeltaTable(path).optimize.compact()
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert (v.rows_read, v.deleted) == (0, 0)
        assert len(present(store, list(range(15)))) == 15


CHILD = textwrap.dedent(
    """
    import sys, yaml
    from serving.loaders import batch as bl
    from serving.registry import Registry
    from serving.store import Store

    registry = Registry.from_yaml(sys.argv[1])
    store = Store(sys.argv[2], registry)
    for name in ("write", "delete"):
        def traced(*args, _op=getattr(store, name), _name=name, **kwargs):
            stats = _op(*args, **kwargs)
            print(_name, stats.rows, flush=True)
            return stats
        setattr(store, name, traced)
    bl.materialize_incremental(store, batch_rows=500, progress=False)
    print("done", flush=True)
    """
)

N = 20_000


@pytest.mark.slow
def test_kill_9_mid_iceberg_sync_then_rerun(tmp_path: Path) -> None:
    import yaml

    lake = IcebergLake(tmp_path / "lake")
    table = lake.create(small_rows(range(N), D1, 1.0))
    cfg = tmp_path / "features.yaml"
    cfg.write_text(yaml.safe_dump(small_registry_dict(lake.source())))
    registry = Registry.from_yaml(cfg)
    db = tmp_path / "db"
    with Store(db, registry) as store:
        bl.materialize_incremental(store, progress=False)
        first = lake.snapshot()
    # the next sync: N new rows of the same users (newer values) and a delete of 100 users
    table.append(small_rows(range(N), D2, 3.0, "n"))
    lake.table().delete("user_id < 100")
    last = lake.snapshot()
    key = table_version_key("small", "iceberg")
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cfg), str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as child:
        assert child.stdout is not None
        writes = 0
        for line in child.stdout:
            if line.startswith("write"):
                writes += 1
                if writes == 10:  # mid-sync: a quarter of the new rows written
                    os.kill(child.pid, signal.SIGKILL)
                    break
        child.wait(timeout=60)
        assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    with Store(db, registry) as store:
        # the synced snapshot is still the first one: the new one rides with the last write
        assert store.get_meta(key) == str(first).encode()
        res = store.get({"user_id": list(range(N))}, ["small:label"])
        labels = res.column("small:label")
        assert 0 < sum(1 for x in labels if x and x.startswith("n")) < N
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert v.deleted == 100
        assert store.get_meta(key) == str(last).encode()
        res = store.get({"user_id": list(range(N))}, ["small:label"])
        statuses = res.status("small:label")
        assert all(s == FieldStatus.NOT_FOUND for s in statuses[:100])
        assert res.column("small:label")[100:] == [f"n{i}" for i in range(100, N)]
        # nothing applied twice: a rerun reads nothing
        v = bl.materialize_incremental(store, progress=False)["small"]
        assert (v.rows_read, v.written, v.deleted) == (0, 0, 0)
