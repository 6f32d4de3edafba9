# Typed interface of the Rust extension (rust_core/src/py/, the module root mod.rs lists every
# name); checked by mypy.stubtest.
from os import PathLike
from typing import Any, Protocol, final

import pyarrow

__all__ = [
    "ROCKSDB_BINDING",
    "DecodedBatch",
    "PendingAnswer",
    "Routed",
    "RouterCore",
    "Store",
    "__version__",
    "decode_batch",
    "encode_entity_key",
    "encode_entity_keys",
    "ingest_batch",
    "murmur2",
    "partition_for_key",
    "partitions_for_keys",
]

__version__: str
ROCKSDB_BINDING: str

class _ArrowArrayExportable(Protocol):
    """A record batch through the Arrow PyCapsule interface (a pyarrow ``RecordBatch``)."""

    def __arrow_c_array__(
        self, requested_schema: object | None = None
    ) -> tuple[object, object]: ...

# -- a node's store (rust_core/src/py/store.rs) -------------------------------------------------

@final
class Store:
    def __new__(
        cls,
        path: str | PathLike[str],
        registry_json: str,
        *,
        hot_tier_bytes: int = 268435456,
        block_cache_bytes: int = 268435456,
        sync_writes: bool = False,
        force: bool = False,
    ) -> Store: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def apply_registry(self, registry_json: str, *, force: bool = False) -> list[str]: ...
    def write(
        self, view: str, batch: _ArrowArrayExportable, meta: list[tuple[str, bytes]] | None = None
    ) -> tuple[int, int, int]: ...
    def delete(
        self, view: str, batch: _ArrowArrayExportable, meta: list[tuple[str, bytes]] | None = None
    ) -> tuple[int, int, int]: ...
    def get(
        self,
        entities: _ArrowArrayExportable,
        *,
        features: list[str] | None = None,
        feature_service: str | None = None,
        max_entities: int = 1000000,
    ) -> tuple[list[str], pyarrow.RecordBatch, bytes, bytes]: ...
    def get_dense(
        self,
        entities: _ArrowArrayExportable,
        *,
        features: list[str] | None = None,
        feature_service: str | None = None,
        max_entities: int = 1000000,
        names: bool = True,
    ) -> tuple[tuple[str, ...], bytes, bytes]: ...
    def get_meta(self, key: str) -> bytes | None: ...
    def registry_json(self) -> str: ...
    def physical_schema_json(self, view: str) -> str | None: ...
    def flush(self) -> None: ...
    def checkpoint(self, path: str | PathLike[str]) -> None: ...
    def compact(self) -> None: ...
    def stats(self) -> dict[str, dict[str, int]]: ...
    def serving_stats(self) -> dict[str, Any]: ...
    def configure_serving(
        self,
        *,
        max_entities: int = 1000,
        max_features: int = 1000,
        json_float32_shortest: bool = False,
        encode_threads: int = 1,
    ) -> None: ...
    def configure_sharding(self, shard: tuple[int, int, dict[str, int]] | None) -> None: ...
    def serve(
        self, api: str, body: bytes, scope_id: int | None = None
    ) -> bytes | PendingAnswer: ...
    def serve_many(
        self, requests: list[tuple[str, bytes, int | None]]
    ) -> list[bytes | PendingAnswer | BaseException]: ...
    def set_scope(self, scope_id: int, views: list[str] | None, services: list[str]) -> None: ...
    def clear_scopes(self) -> None: ...

@final
class PendingAnswer:
    @property
    def views(self) -> list[str]: ...
    @property
    def num_entities(self) -> int: ...
    def inputs(self, k: int) -> pyarrow.RecordBatch: ...
    def set_output(self, k: int, batch: _ArrowArrayExportable) -> None: ...
    def finish(self) -> bytes: ...

# -- Kafka loader (rust_core/src/py/ingest.rs) -------------------------------------------------

#: ``(key, value, partition, offset, timestamp_ms)``; a timestamp of None or below 0 means none
_Record = tuple[bytes | None, bytes | None, int, int, int | None]

@final
class DecodedBatch:
    @property
    def errors(self) -> list[tuple[int, str]]: ...
    @property
    def next_offsets(self) -> list[tuple[int, int]]: ...
    @property
    def upserts(self) -> int: ...
    @property
    def tombstones(self) -> int: ...
    @property
    def ignored(self) -> int: ...
    @property
    def max_event_ts(self) -> int | None: ...
    @property
    def misrouted(self) -> list[tuple[int, int, bool]]: ...
    def entities(self) -> pyarrow.RecordBatch: ...
    def write(self, meta: list[tuple[str, bytes]] | None = None) -> tuple[int, int]: ...

def decode_batch(
    store: Store,
    view: str,
    format: str,
    records: list[_Record],
    num_partitions: int | None = None,
    drop_misrouted: bool = False,
) -> DecodedBatch: ...
def ingest_batch(
    store: Store,
    view: str,
    format: str,
    records: list[_Record],
    meta: list[tuple[str, bytes]] | None = None,
) -> tuple[int, int, list[tuple[int, str]]]: ...
def encode_entity_key(dtypes: list[str], values: list[int | str | bytes]) -> bytes: ...
def encode_entity_keys(
    dtypes: list[str], columns: list[list[int | str | bytes]]
) -> list[bytes]: ...

# -- partitioner (rust_core/src/partition.rs, bound in py/ingest.rs) ---------------------------

def partition_for_key(key: bytes, num_partitions: int) -> int: ...
def partitions_for_keys(keys: list[bytes], num_partitions: int) -> list[int]: ...
def murmur2(data: bytes) -> int: ...

# -- a router (rust_core/src/py/route.rs) -------------------------------------------------------

@final
class RouterCore:
    """A router's view of the cluster (rust_core/src/route.rs): splits requests by shard and
    merges the shards' answers."""

    def __new__(
        cls, registry_json: str, shard_count: int, partitions: dict[str, int]
    ) -> RouterCore: ...
    def reload(self, registry_json: str, shard_count: int, partitions: dict[str, int]) -> None: ...
    @property
    def shard_count(self) -> int: ...
    def configure_serving(
        self,
        *,
        max_entities: int = 1000,
        max_features: int = 1000,
        json_float32_shortest: bool = False,
    ) -> None: ...
    def set_scope(self, scope_id: int, views: list[str] | None, services: list[str]) -> None: ...
    def clear_scopes(self) -> None: ...
    def route(self, api: str, body: bytes, scope_id: int | None = None) -> Routed: ...

@final
class Routed:
    """A request split into per-shard parts (`GetCellsRequest` bodies)."""

    def parts(self) -> list[tuple[int, bytes]]: ...
    def merge(self, answers: list[bytes]) -> bytes: ...
    @property
    def num_entities(self) -> int: ...
    @property
    def num_features(self) -> int: ...
    @property
    def views(self) -> list[str]: ...
