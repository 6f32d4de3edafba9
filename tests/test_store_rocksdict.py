"""The data directory is a plain RocksDB database that other RocksDB clients can read: checked
with the PyPI package ``rocksdict`` (its own RocksDB build), read-only, after the store closed."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from serving.registry import Registry
from serving.sample import BASE_TIME, SampleInfo, user_profile_value

if TYPE_CHECKING:
    from tests.harness import StoreFactory

rocksdict = pytest.importorskip("rocksdict")

HEADER = struct.Struct("<BBHq")  # version, flags, n_slots, event_ts (us)


@pytest.fixture
def written(
    tmp_store: StoreFactory, registry: Registry, sample: SampleInfo, tmp_path: Path
) -> Path:
    path = tmp_path / "data"
    store = tmp_store(data_dir=path)
    data = pq.read_table(sample.user_profile_path)
    # twice: the second load loses the merge everywhere and must not add keys
    for _ in range(2):
        store.write("user_profile", data, meta={"watermark": b"user_profile@1"})
    store.close()
    return path


@pytest.fixture
def rdb(written: Path) -> Iterator[Any]:
    db = rocksdict.Rdict(
        str(written),
        rocksdict.Options(raw_mode=True),
        access_type=rocksdict.AccessType.read_only(),
    )
    try:
        yield db
    finally:
        db.close()


def user_id(key: bytes) -> int:
    """An int64 join key is stored big-endian with the sign bit flipped (sorts numerically)."""
    (u,) = struct.unpack(">Q", key)
    return int(u ^ (1 << 63)) - (1 << 64 if u < (1 << 63) else 0)


def test_column_families(written: Path, registry: Registry) -> None:
    cfs = rocksdict.Rdict.list_cf(str(written))
    assert "meta" in cfs
    for view in registry.feature_views:
        assert f"view:{view}" in cfs


def test_view_keys_and_rows(rdb: Any, sample: SampleInfo) -> None:
    n = sample.n_entities
    cf = rdb.get_column_family("view:user_profile")
    items = list(cf.items())
    assert len(items) == n
    ids = [user_id(k) for k, _ in items]
    # every user once, in numeric order
    assert ids == list(range(n))
    for uid, (_, row) in zip(ids, items, strict=True):
        version, flags, n_slots, event_us = HEADER.unpack_from(row)
        assert (version, flags, n_slots) == (1, 0, 200)
        assert event_us == int(BASE_TIME.timestamp()) * 1_000_000
        bitmap = row[HEADER.size : HEADER.size + 25]
        assert bitmap == b"\xff" * 25  # every value present
        values = np.frombuffer(row, dtype="<f4", count=200, offset=HEADER.size + 25)
        assert len(row) == HEADER.size + 25 + 800
        if uid % 97 == 0:
            want = [user_profile_value(uid, j) for j in range(200)]
            assert values.tolist() == want
    # other views hold nothing
    assert list(rdb.get_column_family("view:all_types").keys()) == []


def test_meta(rdb: Any) -> None:
    meta = rdb.get_column_family("meta")
    assert meta[b"ext/watermark"] == b"user_profile@1"
    schema = json.loads(meta[b"schema/user_profile"])
    assert schema["join_keys"] == [{"name": "user_id", "dtype": "int64"}]
    assert [s["name"] for s in schema["slots"]] == [f"f{i:03d}" for i in range(200)]
    registry = json.loads(meta[b"registry"])
    assert registry["project"] == "store_tests"


def test_store_reopens_after_external_read(
    rdb: Any, written: Path, tmp_store: StoreFactory, sample: SampleInfo
) -> None:
    # a read-only reader holds no lock: the store opens while it is open
    store = tmp_store(data_dir=written)
    dense = store.get_dense({"user_id": [0, sample.n_entities - 1]}, ["user_profile:f001"])
    assert dense.values[:, 0].tolist() == [
        user_profile_value(0, 1),
        user_profile_value(sample.n_entities - 1, 1),
    ]
