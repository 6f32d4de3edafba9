"""Data and registry of the vector-search tests (tests/vector/): items with an HNSW (cosine)
and an exact (l2) index, a 20-feature stats view, a view with a 1 h TTL and a stream-sourced
view, and clustered vectors on a fixed seed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

DIM = 16
N = 3000
SEED = 7
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


STREAM_VIEW = """
  - name: item_stream
    entities: [item]
    features:
      - {{name: emb, dtype: float32_array, dim: {DIM}, vector_index: true}}
    stream_source:
      {{type: kafka, topic: item_stream, bootstrap_servers: "{bootstrap}", format: json}}
"""


def registry_text(tmp: Path, bootstrap: str | None = None) -> str:
    """The registry; with ``bootstrap`` also the Kafka-sourced view ``item_stream``."""
    stream = "" if bootstrap is None else STREAM_VIEW.format(bootstrap=bootstrap, DIM=DIM)
    return f"""
project: vectors
entities:
  - {{name: item, join_keys: [{{name: item_id, dtype: int64}}]}}
feature_views:
  - name: item_vec
    entities: [item]
    features:
      - {{name: emb, dtype: float32_array, dim: {DIM}, vector_index: {{metric: cosine}}}}
      - {{name: exact_emb, dtype: float32_array, dim: {DIM},
          vector_index: {{metric: l2, kind: exact, max_k: 50}}}}
      - {{name: category, dtype: string}}
      - {{name: price, dtype: float32}}
    batch_source: {{type: parquet, path: "{tmp / "items.parquet"}"}}
    push_source: item_push
  - name: item_stats
    entities: [item]
    features: [{{name: "s{{00..19}}", dtype: float32}}]
  - name: item_short
    entities: [item]
    ttl: 1h
    features:
      - {{name: emb, dtype: float32_array, dim: {DIM}, vector_index: {{kind: exact}}}}
{stream}feature_services:
  - name: rank
    features: ["item_stats:*", "item_vec:price"]
"""


def vectors(n: int, seed: int = SEED) -> np.ndarray:
    """Clustered data: 50 Gaussian centres, each vector a centre plus noise 0.3."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, DIM)).astype(np.float32)
    pick = rng.integers(0, 50, n)
    return (centres[pick] + 0.3 * rng.standard_normal((n, DIM))).astype(np.float32)


def item_table(ids: np.ndarray, vecs: np.ndarray, ts: dt.datetime = NOW) -> pa.Table:
    n = len(ids)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), DIM)
    return pa.table(
        {
            "item_id": pa.array(ids, pa.int64()),
            "event_timestamp": pa.array([ts] * n, pa.timestamp("us", tz="UTC")),
            "emb": arr,
            "exact_emb": arr,
            "category": pa.array(["even" if i % 2 == 0 else "odd" for i in ids]),
            "price": pa.array((ids % 100).astype(np.float32)),
        }
    )
