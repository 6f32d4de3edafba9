"""The embedded feature store: a typed Python face over the Rust core (``serving._rust_core``).

Data crosses into Rust as Arrow record batches through the Arrow C data interface; answers come
back as Arrow arrays and numpy matrices, never as one Python object per value.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from serving import _rust_core

# the answers the clients return too; defined client-side (the client wheel has no Store)
from serving.client.results import DenseResult, FieldStatus
from serving.errors import InvalidArgumentError
from serving.ondemand import Observer, OnDemandRunner
from serving.registry import EVENT_TIMESTAMP, Registry

__all__ = [
    "DEFAULT_BLOCK_CACHE_BYTES",
    "DEFAULT_HOT_TIER_BYTES",
    "WRITE_CHUNK_ROWS",
    "DenseResult",
    "EntityInput",
    "FeatureResult",
    "FieldStatus",
    "Store",
    "WriteStats",
]

#: Default RAM budget of the hot tier and of RocksDB's block cache.
DEFAULT_HOT_TIER_BYTES = 256 << 20
DEFAULT_BLOCK_CACHE_BYTES = 256 << 20
#: Rows per batch handed to Rust on writes: large enough to amortise the call, small enough
#: to keep memory bounded whatever the table size.
WRITE_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class WriteStats:
    rows: int = 0
    written: int = 0
    skipped_older: int = 0

    def __add__(self, other: WriteStats) -> WriteStats:
        return WriteStats(
            self.rows + other.rows,
            self.written + other.written,
            self.skipped_older + other.skipped_older,
        )


@dataclass(frozen=True)
class FeatureResult:
    """Answer of :meth:`Store.get`: entities in request order, features in request order."""

    #: ``view:feature`` references, in request order
    feature_names: list[str]
    #: entity columns followed by one column per feature (named by its reference); null where
    #: the status is not PRESENT
    table: pa.Table
    #: ``[entities x features]`` uint8 matrix of :class:`FieldStatus` values
    statuses: npt.NDArray[np.uint8]
    #: ``[entities x features]`` event timestamps (``datetime64[us]``, epoch where none)
    event_timestamps: npt.NDArray[np.datetime64]

    def column(self, name: str) -> list[Any]:
        """Values of one feature (``view:feature``) or entity column as Python objects."""
        return list(self.table.column(name).to_pylist())

    def status(self, name: str) -> list[FieldStatus]:
        j = self.feature_names.index(name)
        return [FieldStatus(int(s)) for s in self.statuses[:, j]]

    def to_dict(self) -> dict[str, list[Any]]:
        return {str(k): list(v) for k, v in self.table.to_pydict().items()}


EntityInput: TypeAlias = (
    Mapping[str, Sequence[Any] | npt.NDArray[Any] | pa.Array] | pa.RecordBatch | pa.Table
)


class Store:
    """A feature store in ``data_dir``: hot tier in RAM over an embedded RocksDB.

    Opening applies ``registry``: new views are created and new features added on the fly;
    removing a feature, changing its type or a view's join keys raises
    :class:`~serving.errors.SchemaError` unless ``force=True``. One process may have a data
    directory open at a time (RocksDB's lock); use the running server's admin API otherwise.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        registry: Registry | str | os.PathLike[str],
        *,
        hot_tier_bytes: int = DEFAULT_HOT_TIER_BYTES,
        block_cache_bytes: int = DEFAULT_BLOCK_CACHE_BYTES,
        sync_writes: bool = False,
        force: bool = False,
    ) -> None:
        self.registry = registry if isinstance(registry, Registry) else Registry.from_yaml(registry)
        self.data_dir = Path(data_dir)
        self._core = _rust_core.Store(
            self.data_dir,
            self.registry.to_core_json(),
            hot_tier_bytes=hot_tier_bytes,
            block_cache_bytes=block_cache_bytes,
            sync_writes=sync_writes,
            force=force,
        )
        self._on_demand: OnDemandRunner | None = None
        self._observe_transforms: Observer | None = None

    @property
    def on_demand(self) -> OnDemandRunner:
        """The registry's on-demand views, ready to run (static artifacts are loaded when the
        registry is first used, and again after a registry change)."""
        runner = self._on_demand
        if runner is None or runner.registry is not self.registry:
            runner = self._on_demand = OnDemandRunner(self.registry, self._observe_transforms)
        return runner

    def observe_transforms(self, observer: Observer) -> None:
        """Reports every transform run, ``(view, seconds, failed)``, to ``observer`` (a
        server's metrics)."""
        self._observe_transforms = observer
        self._on_demand = None

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._core.close()

    @property
    def closed(self) -> bool:
        return self._core.closed

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def core(self) -> _rust_core.Store:
        """The Rust handle, for the serving path."""
        return self._core

    def apply_registry(self, registry: Registry, *, force: bool = False) -> list[str]:
        """Applies a changed registry to the open store; returns a line per change."""
        changes = self._core.apply_registry(registry.to_core_json(), force=force)
        self.registry = registry
        return changes

    # -- writes ----------------------------------------------------------------------------

    def _batches(
        self, view: str, data: pa.Table | pa.RecordBatch, timestamp_field: str, keys_only: bool
    ) -> Iterator[pa.RecordBatch]:
        fv = self.registry.view(view)
        schema = self.registry.arrow_schema(view)
        if keys_only:
            names = [k.name for k in fv.join_keys] + [EVENT_TIMESTAMP]
            schema = pa.schema([schema.field(n) for n in names])
        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        if timestamp_field != EVENT_TIMESTAMP and timestamp_field in table.column_names:
            table = table.rename_columns(
                [EVENT_TIMESTAMP if c == timestamp_field else c for c in table.column_names]
            )
        columns = []
        # pyarrow builds column_names anew on each access (0.25 ms for a 200-feature view):
        # once per field made a 1-row write of W1's view cost 100 ms
        present = set(table.column_names)
        for field in schema:
            if field.name not in present:
                raise InvalidArgumentError(
                    f"feature view '{view}': missing column '{field.name}' ({field.type})"
                )
            col = table.column(field.name)
            if col.type != field.type:
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise InvalidArgumentError(
                        f"feature view '{view}': column '{field.name}' has type {col.type}, "
                        f"which cannot be converted to {field.type}: {e}"
                    ) from None
            columns.append(col)
        table = pa.Table.from_arrays(columns, schema=schema)
        yield from table.to_batches(max_chunksize=WRITE_CHUNK_ROWS)

    def write(
        self,
        view: str,
        data: pa.Table | pa.RecordBatch,
        *,
        meta: Mapping[str, bytes] | None = None,
        timestamp_field: str = EVENT_TIMESTAMP,
    ) -> WriteStats:
        """Writes rows (join keys, event timestamp, every feature of the view).

        A row replaces the stored row of its entity only if its event timestamp is newer, so
        reruns and out-of-order loads converge. Columns are cast to the registry's types (an
        impossible cast is an error naming the column); extra columns are ignored. ``meta``
        (loader progress) is stored atomically with the last chunk of rows.
        """
        return self._apply(view, data, meta, timestamp_field, delete=False)

    def delete(
        self,
        view: str,
        entities: EntityInput,
        *,
        event_timestamp: dt.datetime | None = None,
        meta: Mapping[str, bytes] | None = None,
    ) -> WriteStats:
        """Deletes entities with tombstones timed ``event_timestamp`` (default: now).

        Deletes follow the merge rule: a row newer than the tombstone survives it.
        """
        table = _entity_table(entities)
        if EVENT_TIMESTAMP not in table.column_names:
            ts = event_timestamp or dt.datetime.now(dt.UTC)
            table = table.append_column(
                EVENT_TIMESTAMP,
                pa.array([ts] * table.num_rows, type=pa.timestamp("us", tz="UTC")),
            )
        return self._apply(view, table, meta, EVENT_TIMESTAMP, delete=True)

    def _apply(
        self,
        view: str,
        data: pa.Table | pa.RecordBatch,
        meta: Mapping[str, bytes] | None,
        timestamp_field: str,
        *,
        delete: bool,
    ) -> WriteStats:
        op = self._core.delete if delete else self._core.write
        batches = list(self._batches(view, data, timestamp_field, keys_only=delete))
        total = WriteStats()
        meta_items = list(meta.items()) if meta else None
        if not batches and meta_items:
            batches = [pa.RecordBatch.from_pylist([], schema=self.registry.arrow_schema(view))]
        # Write-time on-demand views are derived from the rows that won, after they are
        # written; the loader's progress goes with the derived rows, so that a crash between
        # the two writes makes the loader apply the batch again (idempotent under the merge
        # rule) rather than leave derived rows missing.
        derive = bool(self.registry.write_time_views(view))
        for i, batch in enumerate(batches):
            m = meta_items if i == len(batches) - 1 else None
            total += WriteStats(*op(view, batch, None if derive else m))
            if derive:
                self.on_demand.derive(self._core, view, batch, m)
        return total

    def get_meta(self, key: str) -> bytes | None:
        """Loader progress stored with :meth:`write`'s ``meta``."""
        return self._core.get_meta(key)

    # -- reads -----------------------------------------------------------------------------

    def get(
        self,
        entities: EntityInput,
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        max_entities: int = 1_000_000,
    ) -> FeatureResult:
        """Latest values of ``features`` (``view:feature`` refs) or a feature service for a
        batch of entities given column-wise by join key."""
        ent = _entity_batch(entities)
        names, batch, statuses, timestamps = self._core.get(
            ent,
            features=list(features) if features is not None else None,
            feature_service=feature_service,
            max_entities=max_entities,
        )
        n, f = ent.num_rows, len(names)
        values = pa.Table.from_batches([batch])
        table = pa.Table.from_arrays(
            list(ent.columns) + list(values.columns), names=list(ent.schema.names) + names
        )
        return FeatureResult(
            feature_names=names,
            table=table,
            statuses=np.frombuffer(statuses, dtype=np.uint8).reshape(n, f),
            event_timestamps=np.frombuffer(timestamps, dtype="<i8")
            .reshape(n, f)
            .astype("datetime64[us]"),
        )

    def get_dense(
        self,
        entities: EntityInput,
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        max_entities: int = 1_000_000,
    ) -> DenseResult:
        """Numeric features as one ``[entities x features]`` float32 matrix (NaN where not
        PRESENT), built without a Python object per value."""
        ent = _entity_batch(entities)
        refs = list(features) if features is not None else None
        # Explicit refs are the answer's names; only services and `view:*` need them back.
        known = refs is not None and not any(r.endswith(":*") for r in refs)
        names, values, statuses = self._core.get_dense(
            ent,
            features=refs,
            feature_service=feature_service,
            max_entities=max_entities,
            names=not known,
        )
        feature_names = refs if known and refs is not None else list(names)
        n, f = ent.num_rows, len(feature_names)
        return DenseResult(
            feature_names=feature_names,
            values=np.frombuffer(values, dtype="<f4").reshape(n, f),
            statuses=np.frombuffer(statuses, dtype=np.uint8).reshape(n, f),
            entities={name: ent.column(name) for name in ent.schema.names},
        )

    # -- maintenance -----------------------------------------------------------------------

    def flush(self) -> None:
        self._core.flush()

    def checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Writes a consistent snapshot of the store (rows, registry, loader offsets) to
        ``path``, which must not exist: a RocksDB checkpoint (hard links on the same file
        system). Reads go on meanwhile; writes wait for it. See ``serving/snapshot.py``."""
        self._core.checkpoint(path)

    def compact(self) -> None:
        """Flushes memtables and compacts every view (reclaims space of replaced rows)."""
        self._core.compact()

    def stats(self) -> dict[str, dict[str, int]]:
        return self._core.stats()


def _entity_table(entities: EntityInput) -> pa.Table:
    if isinstance(entities, pa.Table):
        return entities
    if isinstance(entities, pa.RecordBatch):
        return pa.Table.from_batches([entities])
    if not entities:
        raise InvalidArgumentError("no entity columns given")
    cols = {}
    for name, values in entities.items():
        try:
            cols[name] = values if isinstance(values, pa.Array) else pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InvalidArgumentError(f"entity column '{name}': {e}") from None
    lengths = {name: len(col) for name, col in cols.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"'{k}' has {v}" for k, v in lengths.items())
        raise InvalidArgumentError(f"entity columns have different lengths: {shown}")
    return pa.table(cols)


def _entity_batch(entities: EntityInput) -> pa.RecordBatch:
    table = _entity_table(entities).combine_chunks()
    batches = table.to_batches()
    if not batches:
        raise InvalidArgumentError("no entities given")
    return batches[0]
