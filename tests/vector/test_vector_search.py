"""Vector search (docs/vector-search.md): recall of the HNSW index against exact search on a
fixed seed; every write path (batch loader, Kafka loader, push) makes a vector searchable; a
tombstone and an expired row stop being found; restart and snapshot restore keep search
correct; the HTTP and gRPC APIs answer keys, distances and features in one call; every bad
input is INVALID_ARGUMENT / 400 naming the problem."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving import Registry
from serving.errors import InvalidArgumentError, NotFoundError
from serving.loaders import batch as batch_loader
from serving.store import Store
from tests.harness.vectors import DIM, NOW, N, item_table, registry_text, vectors


def search(store: Store, body: dict[str, Any]) -> dict[str, Any]:
    out = store.core.serve("v1_search_http", json.dumps(body).encode())
    assert isinstance(out, bytes)
    got: dict[str, Any] = json.loads(out)
    return got


def cos_exact(vecs: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    v = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    d = 1.0 - v @ (q / np.linalg.norm(q))
    return [int(i) for i in np.argsort(d, kind="stable")[:k]]


@pytest.fixture
def loaded(tmp_path: Path) -> tuple[Store, Registry, np.ndarray, Path]:
    cfg = tmp_path / "features.yaml"
    cfg.write_text(registry_text(tmp_path))
    reg = Registry.from_yaml(cfg)
    vecs = vectors(N)
    pq.write_table(item_table(np.arange(N), vecs), tmp_path / "items.parquet")
    store = Store(tmp_path / "db", reg)
    batch_loader.materialize(store, ["item_vec"], progress=False)
    return store, reg, vecs, cfg


def test_batch_rows_are_searchable_and_hnsw_recall_matches_exact(
    loaded: tuple[Store, Registry, np.ndarray, Path],
) -> None:
    store, _, vecs, _ = loaded
    queries = vectors(50, seed=99)
    hits = 0
    for q in queries:
        truth = cos_exact(vecs, q, 10)
        got = search(store, {"view": "item_vec", "feature": "emb", "query": q.tolist(), "k": 10})
        assert got["num_hits"] == 10
        assert got["distances"] == sorted(got["distances"])
        hits += len(set(got["keys"]["item_id"]) & set(truth))
    recall = hits / (10 * len(queries))
    assert recall >= 0.95, recall
    # the exact index is exact: l2 top-10 equals numpy's
    q = queries[0]
    got = search(store, {"view": "item_vec", "feature": "exact_emb", "query": q.tolist(), "k": 10})
    d = ((vecs - q) ** 2).sum(axis=1)
    assert got["keys"]["item_id"] == [int(i) for i in np.argsort(d, kind="stable")[:10]]
    assert np.allclose(got["distances"], np.sort(d)[:10], rtol=1e-4)
    stats = store.core.stats()["vector_indexes"]
    assert stats["item_vec:emb"]["vectors"] == N
    assert stats["item_vec:emb"]["memory_bytes"] > N * DIM * 4


def test_features_of_the_hits_in_the_same_call_columns_and_dense(
    loaded: tuple[Store, Registry, np.ndarray, Path],
) -> None:
    store, _, vecs, _ = loaded
    ids = np.arange(N)
    stats = pa.table(
        {
            "item_id": pa.array(ids, pa.int64()),
            "event_timestamp": pa.array([NOW] * N, pa.timestamp("us", tz="UTC")),
            **{f"s{j:02d}": pa.array((ids * 100 + j).astype(np.float32)) for j in range(20)},
        }
    )
    store.write("item_stats", stats)
    q = vecs[17].tolist()
    got = search(
        store,
        {"view": "item_vec", "feature": "emb", "query": q, "k": 5, "feature_service": "rank"},
    )
    assert got["keys"]["item_id"][0] == 17
    f = got["features"]
    assert f["num_entities"] == 5
    assert f["feature_names"][0] == "item_stats:s00"
    assert f["columns"][0]["values"] == [i * 100.0 for i in got["keys"]["item_id"]]
    dense = search(
        store,
        {
            "view": "item_vec",
            "feature": "emb",
            "query": q,
            "k": 3,
            "features": ["item_stats:s01", "item_vec:price"],
            "layout": "dense",
        },
    )
    rows = dense["features"]["dense"]["values"]
    assert [r[0] for r in rows] == [i * 100.0 + 1 for i in dense["keys"]["item_id"]]
    assert [r[1] for r in rows] == [float(i % 100) for i in dense["keys"]["item_id"]]


def test_filter_on_stored_features(loaded: tuple[Store, Registry, np.ndarray, Path]) -> None:
    store, _, vecs, _ = loaded
    q = vecs[17].tolist()
    odd = search(
        store,
        {
            "view": "item_vec",
            "feature": "emb",
            "query": q,
            "k": 10,
            "filter": [{"feature": "category", "equals": "odd"}, {"feature": "price", "max": 50}],
        },
    )
    assert odd["num_hits"] == 10
    assert all(i % 2 == 1 and i % 100 <= 50 for i in odd["keys"]["item_id"])
    assert odd["keys"]["item_id"][0] == 17


def test_tombstone_replacement_and_expiry(loaded: tuple[Store, Registry, np.ndarray, Path]) -> None:
    store, _, vecs, _ = loaded
    q = vecs[17].tolist()
    body = {"view": "item_vec", "feature": "exact_emb", "query": q, "k": 1}
    assert search(store, body)["keys"]["item_id"] == [17]
    # an older row loses under the merge rule: the index keeps the winner
    older = item_table(np.array([17]), -vecs[17:18], NOW - dt.timedelta(days=1))
    store.write("item_vec", older)
    assert search(store, body)["keys"]["item_id"] == [17]
    # a tombstone removes it
    store.delete(
        "item_vec",
        pa.table(
            {
                "item_id": pa.array([17], pa.int64()),
                "event_timestamp": pa.array(
                    [NOW + dt.timedelta(seconds=1)], pa.timestamp("us", tz="UTC")
                ),
            }
        ),
    )
    assert 17 not in search(store, {**body, "k": 20})["keys"]["item_id"]
    # a newer row moves entity 18 onto the query
    moved = item_table(np.array([18]), vecs[17:18], NOW + dt.timedelta(seconds=2))
    store.write("item_vec", moved)
    assert search(store, body)["keys"]["item_id"] == [18]
    # TTL: a row older than the view's 1h TTL is not found, a fresh one is
    old = pa.table(
        {
            "item_id": pa.array([1, 2], pa.int64()),
            "event_timestamp": pa.array(
                [NOW - dt.timedelta(hours=2), NOW], pa.timestamp("us", tz="UTC")
            ),
            "emb": pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate([vecs[5], vecs[5]]), pa.float32()), DIM
            ),
        }
    )
    store.write("item_short", old)
    got = search(store, {"view": "item_short", "feature": "emb", "query": vecs[5].tolist(), "k": 5})
    assert got["keys"]["item_id"] == [2]


def test_restart_and_snapshot_restore_rebuild_the_index(
    loaded: tuple[Store, Registry, np.ndarray, Path], tmp_path: Path
) -> None:
    store, reg, vecs, _ = loaded
    q = vecs[100].tolist()
    body = {"view": "item_vec", "feature": "emb", "query": q, "k": 10}
    before = search(store, body)
    store.write("item_vec", item_table(np.array([N + 1]), vecs[100:101]))
    store.checkpoint(tmp_path / "snap")
    store.write("item_vec", item_table(np.array([N + 2]), vecs[100:101]))
    after_write = search(store, {**body, "k": 3})
    assert set(after_write["keys"]["item_id"][:3]) == {100, N + 1, N + 2}
    store.close()
    reopened = Store(tmp_path / "db", reg)
    try:
        again = search(reopened, {**body, "k": 3})
        assert set(again["keys"]["item_id"]) == {100, N + 1, N + 2}
        assert reopened.core.stats()["vector_indexes"]["item_vec:emb"]["vectors"] == N + 2
    finally:
        reopened.close()
    restored = Store(tmp_path / "snap", reg)
    try:
        got = search(restored, {**body, "k": 3})
        assert N + 2 not in got["keys"]["item_id"]
        assert set(got["keys"]["item_id"][:2]) == {100, N + 1}
        assert search(restored, body)["keys"]["item_id"][0] in {100, N + 1}
        assert len(before["keys"]["item_id"]) == 10
    finally:
        restored.close()


BAD: list[tuple[dict[str, Any], str]] = [
    ({"query": [0.1] * (DIM - 1)}, "query has 15 components"),
    ({"k": 0}, "k must be between 1 and 1000"),
    ({"k": -3}, "k must be between 1 and 1000"),
    ({"k": 1001}, "k must be between 1 and 1000"),
    ({"feature": "category"}, "has no vector index"),
    ({"feature": "nope"}, "no feature 'nope'"),
    ({"view": "nope"}, "nope"),
    ({"query": [1e39] * DIM}, "outside float32's range"),
    ({"query": [0.0] * DIM}, "zero vector"),
    ({"filter": [{"feature": "colour", "equals": "red"}]}, "filter[0]"),
    ({"filter": [{"feature": "price"}]}, "no condition"),
    ({"layout": "rows"}, "unknown layout 'rows'"),
    ({"features": ["item_stats:s00"], "feature_service": "rank"}, "not both"),
    ({"features": ["item_stats:zz"]}, "zz"),
    ({"bogus": 1}, "unknown field `bogus`"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_input_names_the_problem(
    loaded: tuple[Store, Registry, np.ndarray, Path], change: dict[str, Any], message: str
) -> None:
    store, *_ = loaded
    body = {"view": "item_vec", "feature": "emb", "query": [0.1] * DIM, "k": 10, **change}
    expected = NotFoundError if "zz" in message else InvalidArgumentError
    with pytest.raises(expected) as e:
        search(store, body)
    assert message in str(e.value)
    # the store keeps serving
    assert (
        search(store, {"view": "item_vec", "feature": "emb", "query": [0.1] * DIM, "k": 1})[
            "num_hits"
        ]
        == 1
    )


def test_nan_in_json_is_invalid_argument(loaded: tuple[Store, Registry, np.ndarray, Path]) -> None:
    """JSON has no NaN; Python writes one anyway, and the body is refused as malformed JSON
    (gRPC floats can carry NaN: tests/vector/test_vector_server.py)."""
    store, *_ = loaded
    with pytest.raises(InvalidArgumentError, match="invalid SearchNearest JSON body"):
        search(store, {"view": "item_vec", "feature": "emb", "query": [float("nan")] * DIM})


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ("{metric: hamming}", "features[0].vector_index.metric: unknown metric 'hamming'"),
        ("{kind: ivf}", "unknown kind 'ivf'"),
        ("{kind: exact, m: 8}", "'m' is a parameter of kind hnsw"),
        ("{m: 1}", "must be between 2 and 128, got 1"),
        ("{ef_search: fast}", "expected an int"),
        ("{metric: l2, colour: red}", "unknown key 'colour'"),
    ],
)
def test_registry_refuses_bad_vector_index_with_file_and_line(
    tmp_path: Path, index: str, message: str
) -> None:
    cfg = tmp_path / "features.yaml"
    cfg.write_text(
        "project: p\nentities:\n  - {name: item, join_keys: [{name: item_id, dtype: int64}]}\n"
        "feature_views:\n  - name: v\n    entities: [item]\n    features:\n"
        f"      - {{name: emb, dtype: float32_array, dim: 4, vector_index: {index}}}\n"
    )
    with pytest.raises(InvalidArgumentError) as e:
        Registry.from_yaml(cfg)
    assert f"{cfg}:8" in str(e.value)
    assert message in str(e.value)


def test_vector_index_needs_a_float32_array(tmp_path: Path) -> None:
    cfg = tmp_path / "features.yaml"
    cfg.write_text(
        "project: p\nentities:\n  - {name: item, join_keys: [{name: item_id, dtype: int64}]}\n"
        "feature_views:\n  - name: v\n    entities: [item]\n    features:\n"
        "      - {name: f, dtype: float32, vector_index: true}\n"
    )
    with pytest.raises(InvalidArgumentError, match="needs a float32_array feature, not float32"):
        Registry.from_yaml(cfg)
