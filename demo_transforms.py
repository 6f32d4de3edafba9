"""The demo registry's on-demand transforms (features.yaml, docs/on-demand.md).

Each function gets the whole request's (or written batch's) rows at once, one call per
request, never one per entity: a ``pyarrow.RecordBatch`` in pyarrow mode, a pandas
``DataFrame`` in pandas mode.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def ranking_context(batch: pa.RecordBatch) -> dict[str, pa.Array]:
    """Request-time: what an item at the request's ``price`` is worth to this user.

    ``expected_revenue`` = the item's stored click-through rate times the price the ranking
    service sends; ``affordable`` = the user's stored balance covers the price. Inputs that are
    not found arrive as nulls, and nulls propagate (answered NULL_VALUE)."""
    price = batch.column("price")
    revenue = pc.multiply(pc.cast(batch.column("ctr"), pa.float64()), price)
    return {
        "expected_revenue": pc.cast(revenue, pa.float32()),
        "affordable": pc.greater_equal(batch.column("balance"), price),
    }


def ctr_statistics() -> dict[str, float]:
    """Static artifacts, run once when the server starts: the training set's ctr statistics
    (the sample's ctr is uniform on [0, 0.2): mean 0.1, std 0.2 / sqrt(12))."""
    return {"mean": 0.1, "std": 0.0577}


def standardize_ctr(batch: pa.RecordBatch, stats: Any) -> dict[str, pa.Array]:
    """Write-time: the ctr standardised with the training statistics, stored beside the rows
    it derives from, so serving it costs nothing."""
    z = pc.divide(pc.subtract(pc.cast(batch.column("ctr"), pa.float64()), stats["mean"]),
                  stats["std"])  # fmt: skip
    return {"ctr_z": pc.cast(z, pa.float32())}
