"""Core store benchmarks (in-process, no server): W2 lookups, write throughput, bytes on disk.

Data: ``user_profile`` of WORKLOADS.md (serving.sample.generate) at N = 20,000 and 1,000,000.
Figures of record are in docs/benchmarks.md; rerun with

    .venv/bin/python -m pytest -q -m benchmark --benchmark-enable tests/benchmarks

Every benchmark also has a ``smoke`` variant on a tiny dataset that is *not* marked
``benchmark``: it runs in the default test run (where ``--benchmark-disable`` makes the
``benchmark`` fixture call the function once), so these functions cannot rot.

Targets (checked by reading the report, not asserted: timings on a shared 2-core machine
drift): W2 core call <= 50 us median from the hot tier, <= 300 us from RocksDB's block cache;
writes >= 200,000 rows/s.
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.registry import Registry
from serving.sample import N_FEATURES, generate
from serving.store import FieldStatus, Store

REPO = Path(__file__).resolve().parents[2]
REGISTRY = REPO / "tests" / "registries" / "store_test.yaml"
W2_ENTITIES = 100
W2_FEATURES = [f"user_profile:f{i:03d}" for i in range(N_FEATURES)]
#: prebuilt requests cycled through by the lookup benchmarks
N_REQUESTS = 2000
#: raw size of one row's values: 200 float32
RAW_ROW_BYTES = 4 * N_FEATURES
MB = 1 << 20

SCALES = [
    pytest.param(300, id="smoke"),
    pytest.param(20_000, id="20k", marks=pytest.mark.benchmark),
    pytest.param(1_000_000, id="1M", marks=[pytest.mark.benchmark, pytest.mark.slow]),
]
TIERS = ["hot", "cold"]


@dataclass
class Dataset:
    n: int
    table: pa.Table
    #: the shuffled id pool of ids.txt
    ids: np.ndarray
    registry: Registry
    #: values by [user_id, feature], float32 (WORKLOADS.md formula, from the table itself)
    values: np.ndarray

    @property
    def cache_bytes(self) -> int:
        # RAM for every row in either tier (rows are ~850 bytes, plus per-entry overhead)
        return max(256 * MB, self.n * 2048)


@pytest.fixture(scope="module", params=SCALES)
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    n: int = request.param
    info = generate(tmp_path_factory.mktemp(f"sample{n}"), n_entities=n, seed=0)
    table = pq.read_table(info.user_profile_path)
    ids = np.loadtxt(info.ids_path, dtype=np.int64)
    assert sorted(ids.tolist()) == list(range(n))
    # expected values straight from the formula, [n x 200]
    u = np.arange(n, dtype=np.int64)[:, None]
    j = np.arange(N_FEATURES, dtype=np.int64)[None, :]
    values = (((u * 31 + j * 17) % 1000) / 10.0).astype(np.float32)
    return Dataset(n, table, ids, Registry.from_yaml(REGISTRY), values)


@pytest.fixture(scope="module")
def loaded(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding the dataset, compacted (the steady state after a bulk load)."""
    path = tmp_path_factory.mktemp(f"loaded{dataset.n}") / "data"
    with Store(path, dataset.registry, hot_tier_bytes=0) as store:
        stats = store.write("user_profile", dataset.table)
        assert stats.written == dataset.n
        store.compact()
    return path


def _requests(ds: Dataset, seed: int = 1) -> list[pa.RecordBatch]:
    """W2 requests: 100 distinct ids drawn uniformly from the pool, as entity batches."""
    rng = np.random.default_rng(seed)
    k = min(W2_ENTITIES, ds.n)
    return [
        pa.RecordBatch.from_arrays(
            [pa.array(rng.choice(ds.ids, size=k, replace=False))], ["user_id"]
        )
        for _ in range(N_REQUESTS)
    ]


@pytest.fixture(scope="module", params=TIERS)
def serving_store(
    request: pytest.FixtureRequest, dataset: Dataset, loaded: Path
) -> Iterator[Store]:
    """The loaded store, warm: hot = hot tier sized for every row; cold = hot tier off, every
    read from RocksDB's block cache (sized for every block). Every id is read once first."""
    hot = request.param == "hot"
    store = Store(
        loaded,
        dataset.registry,
        hot_tier_bytes=dataset.cache_bytes if hot else 0,
        block_cache_bytes=dataset.cache_bytes,
    )
    try:
        order = np.arange(dataset.n, dtype=np.int64)
        for start in range(0, dataset.n, 1000):
            chunk = pa.RecordBatch.from_arrays([pa.array(order[start : start + 1000])], ["user_id"])
            store.core.get_dense(chunk, features=W2_FEATURES, max_entities=1000)
        if hot:
            stats = store.stats()["hot_tier"]
            assert stats["entries"] == dataset.n, stats
            assert stats["evictions"] == 0, stats
        yield store
    finally:
        store.close()


def _cycle(requests: list[pa.RecordBatch]) -> Callable[[], pa.RecordBatch]:
    it = itertools.cycle(requests)
    return it.__next__


def _check_dense(
    ds: Dataset, batch: pa.RecordBatch, values: np.ndarray, statuses: np.ndarray
) -> None:
    ids = batch.column(0).to_numpy()
    np.testing.assert_array_equal(values, ds.values[ids])
    assert (statuses == FieldStatus.PRESENT).all()


def _info(benchmark: Any, ds: Dataset, tier: str, target_us: float | None) -> None:
    benchmark.extra_info.update({"n": ds.n, "tier": tier, "entities": W2_ENTITIES, "features": 200})
    if target_us is not None:
        benchmark.extra_info["target_median_us"] = target_us


TARGET_US = {"hot": 50.0, "cold": 300.0}


def test_w2_core_get_dense(benchmark: Any, dataset: Dataset, serving_store: Store) -> None:
    """W2 through the raw core call with a prebuilt entity batch (no Python wrapper)."""
    tier = "hot" if "hot_tier" in serving_store.stats() else "cold"
    core, nxt = serving_store.core, _cycle(_requests(dataset))
    _info(benchmark, dataset, tier, TARGET_US[tier])

    def call() -> tuple[pa.RecordBatch, Any]:
        batch = nxt()
        return batch, core.get_dense(batch, features=W2_FEATURES)

    batch, (names, values, statuses) = benchmark(call)
    k = batch.num_rows
    assert list(names) == W2_FEATURES
    _check_dense(
        dataset,
        batch,
        np.frombuffer(values, "<f4").reshape(k, 200),
        np.frombuffer(statuses, np.uint8).reshape(k, 200),
    )


def test_w2_core_get(benchmark: Any, dataset: Dataset, serving_store: Store) -> None:
    """W2 through the raw core call of the typed path (Arrow arrays, statuses, timestamps)."""
    tier = "hot" if "hot_tier" in serving_store.stats() else "cold"
    core, nxt = serving_store.core, _cycle(_requests(dataset))
    _info(benchmark, dataset, tier, TARGET_US[tier])

    def call() -> tuple[pa.RecordBatch, Any]:
        batch = nxt()
        return batch, core.get(batch, features=W2_FEATURES)

    batch, (names, values, statuses, _ts) = benchmark(call)
    k = batch.num_rows
    assert list(names) == W2_FEATURES
    got = np.column_stack([np.asarray(c) for c in pa.Table.from_batches([values]).columns])
    _check_dense(dataset, batch, got, np.frombuffer(statuses, np.uint8).reshape(k, 200))


def test_w2_store_get_dense(benchmark: Any, dataset: Dataset, serving_store: Store) -> None:
    """W2 through the Python ``Store.get_dense`` (entity batch and numpy views included)."""
    tier = "hot" if "hot_tier" in serving_store.stats() else "cold"
    nxt = _cycle(_requests(dataset))
    _info(benchmark, dataset, tier, None)

    def call() -> tuple[pa.RecordBatch, Any]:
        batch = nxt()
        return batch, serving_store.get_dense(batch, W2_FEATURES)

    batch, res = benchmark(call)
    _check_dense(dataset, batch, res.values, res.statuses)


def test_w2_store_get(benchmark: Any, dataset: Dataset, serving_store: Store) -> None:
    """W2 through the Python ``Store.get`` (an Arrow table with the entity column)."""
    tier = "hot" if "hot_tier" in serving_store.stats() else "cold"
    nxt = _cycle(_requests(dataset))
    _info(benchmark, dataset, tier, None)

    def call() -> tuple[pa.RecordBatch, Any]:
        batch = nxt()
        return batch, serving_store.get(batch, W2_FEATURES)

    batch, res = benchmark(call)
    got = np.column_stack([np.asarray(res.table.column(f)) for f in W2_FEATURES])
    _check_dense(dataset, batch, got, res.statuses)


def test_write_throughput(benchmark: Any, dataset: Dataset, tmp_path: Path) -> None:
    """``Store.write`` of the whole user_profile table into an empty store."""
    dirs = (tmp_path / f"w{i}" for i in itertools.count())
    opened: list[Store] = []

    def setup() -> tuple[tuple[Store], dict[str, Any]]:
        for s in opened:
            s.close()
            shutil.rmtree(s.data_dir)
        opened.clear()
        opened.append(Store(next(dirs), dataset.registry))
        return (opened[0],), {}

    def write(store: Store) -> Any:
        return store.write("user_profile", dataset.table)

    rounds = 1 if dataset.n >= 1_000_000 else 5
    try:
        stats = benchmark.pedantic(write, setup=setup, rounds=rounds, iterations=1)
        assert stats.written == dataset.n
        median = benchmark.stats.stats.median if benchmark.stats else None
        benchmark.extra_info.update({"n": dataset.n, "target_rows_per_s": 200_000})
        if median:
            benchmark.extra_info["rows_per_s"] = round(dataset.n / median)
        dense = opened[0].get_dense({"user_id": [0, dataset.n - 1]}, W2_FEATURES)
        np.testing.assert_array_equal(dense.values, dataset.values[[0, dataset.n - 1]])
    finally:
        for s in opened:
            s.close()


def test_bytes_on_disk_per_row(benchmark: Any, dataset: Dataset, tmp_path: Path) -> None:
    """Sum of *.sst sizes per row after ``Store.compact()`` (the compaction is what is timed)."""
    path = tmp_path / "data"
    with Store(path, dataset.registry) as store:
        # written twice: compaction must also reclaim the replaced versions (same timestamp,
        # so the second load is skipped by the merge rule; a newer copy replaces every row)
        store.write("user_profile", dataset.table)
        newer = dataset.table.set_column(
            1,
            "event_timestamp",
            pa.array(np.full(dataset.n, 1_704_153_600_000_000, dtype=np.int64), pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
        )
        assert store.write("user_profile", newer).written == dataset.n
        t0 = time.perf_counter()
        benchmark.pedantic(store.compact, rounds=1, iterations=1)
        compact_s = time.perf_counter() - t0
        sst = sum(p.stat().st_size for p in path.glob("*.sst"))
        per_row = sst / dataset.n
        benchmark.extra_info.update(
            {
                "n": dataset.n,
                "sst_bytes": sst,
                "bytes_per_row": round(per_row, 1),
                "raw_value_bytes_per_row": RAW_ROW_BYTES,
                "ratio_to_raw": round(per_row / RAW_ROW_BYTES, 3),
                "compact_s": round(compact_s, 3),
            }
        )
        assert store.stats()["rocksdb"]["user_profile/estimate-num-keys"] == dataset.n
        # stored rows are header + bitmap + values; compression must not cost more than that
        assert 0 < per_row < 2 * (RAW_ROW_BYTES + 64)
        dense = store.get_dense({"user_id": [dataset.n - 1]}, W2_FEATURES)
        np.testing.assert_array_equal(dense.values[0], dataset.values[dataset.n - 1])
