"""The batch loader's public API under the import path docs/batch-loader.md gives
(``from serving.batch_loader import materialize, materialize_incremental``); the code lives in
``serving.loaders.batch``. Nothing inside the package imports this module."""

from __future__ import annotations

from serving.loaders.batch import (
    BATCH_ROWS,
    LoadSummary,
    RowError,
    ViewSummary,
    delta_version_key,
    materialize,
    materialize_incremental,
    parse_time,
    watermark_key,
)

__all__ = [
    "BATCH_ROWS",
    "LoadSummary",
    "RowError",
    "ViewSummary",
    "delta_version_key",
    "materialize",
    "materialize_incremental",
    "parse_time",
    "watermark_key",
]
