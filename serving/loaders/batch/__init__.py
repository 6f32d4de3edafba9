"""The batch loader: keeps the online store in sync with the offline store (Parquet, Delta Lake).

``materialize`` loads the rows whose event timestamp falls in ``[start, end)`` from each view's
batch source; ``materialize_incremental`` loads what arrived since the last successful run
(Parquet: an event-time watermark; Delta: the last synced table version). See
``docs/batch-loader.md`` for the user-facing semantics.

How a run works
---------------
1. *Plan* every view first (``plan``, ``delta``): list the files (pruning hive/Delta partitions
   and Parquet row groups that cannot hold rows of the window), read each file's schema from its
   footer and check every column the view needs (present, castable). Nothing is read or written
   yet.
2. *Validate* (``on_error="fail"`` and dry runs; ``read``): a first pass over the data that reads
   only the columns needing per-row checks (join keys, the timestamp, features whose file type
   differs from the registry's). In the usual case that is 2 columns out of hundreds, so it is
   cheap; in the worst case it doubles the reading. It guarantees the issue's promise: bad input
   fails the run *before anything is written*, naming file, column and row.
3. *Load* (``read``, ``convert``): stream record batches (bounded memory: one row group slice at
   a time, a read-ahead of two batches on a background thread), convert each to the registry's
   Arrow schema and hand it to :meth:`Store.write`. Progress meta (watermark, Delta version,
   ``meta``) rides in the SAME write as the view's last batch, so it commits atomically with the
   data that completes it; a crash before that leaves the old meta, and the rerun re-applies
   rows idempotently (merge rule: a row only replaces an older one).

``via_kafka`` runs (``publish``) send the rows to the views' stream topics instead; ``api``
holds the two entry points, ``cli`` the commands, ``summary`` what a run reports.
"""

from __future__ import annotations

from serving.loaders.batch.api import materialize, materialize_incremental
from serving.loaders.batch.cli import add_commands
from serving.loaders.batch.meta import BATCH_ROWS, delta_version_key, parse_time, watermark_key
from serving.loaders.batch.summary import LoadSummary, RowError, ViewSummary

__all__ = [
    "BATCH_ROWS",
    "LoadSummary",
    "RowError",
    "ViewSummary",
    "add_commands",
    "delta_version_key",
    "materialize",
    "materialize_incremental",
    "parse_time",
    "watermark_key",
]
