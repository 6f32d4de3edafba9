"""Which shard owns an entity, for the sharded clients: the entity key's bytes
(``rust_core/src/key.rs``) and Kafka's murmur2 partitioner (``rust_core/src/partition.rs``).

With the Rust extension (the full ``feature-serving`` package) the core's functions do it; the
client wheel has no extension and uses this module's Python twin, which gives the same bytes
and partitions (``tests/client/test_keys.py`` compares them).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from serving.errors import InvalidArgumentError

_SEED, _M = 0x9747B28C, 0x5BD1E995
_MASK = 0xFFFFFFFF
_KEY_TYPES = ("int64", "int32", "string", "bytes")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``Utils.murmur2``) as an unsigned 32-bit value."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length - length % 4
    for (word,) in struct.iter_unpack("<I", data[:end]):
        k = (word * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[end:]
    if tail:
        if len(tail) >= 3:
            h ^= tail[2] << 16
        if len(tail) >= 2:
            h ^= tail[1] << 8
        h ^= tail[0]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def _encode_value(name: str, dtype: str, v: Any, out: bytearray) -> None:
    if dtype in ("int64", "int32"):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidArgumentError(
                f"join key '{name}' has type {dtype} but the request gives {type(v).__name__} "
                "values"
            )
        bits = 64 if dtype == "int64" else 32
        if not -(1 << (bits - 1)) <= v < 1 << (bits - 1):
            raise InvalidArgumentError(f"join key '{name}': value {v} does not fit {dtype}")
        out += ((v & ((1 << bits) - 1)) ^ (1 << (bits - 1))).to_bytes(bits // 8, "big")
    elif dtype == "string":
        if not isinstance(v, str):
            raise InvalidArgumentError(
                f"join key '{name}' has type string but the request gives {type(v).__name__} values"
            )
        b = v.encode()
        out += len(b).to_bytes(4, "big") + b
    else:
        if not isinstance(v, bytes):
            raise InvalidArgumentError(
                f"join key '{name}' has type bytes but the request gives {type(v).__name__} values"
            )
        out += len(v).to_bytes(4, "big") + v


def encode_entity_keys(
    dtypes: Sequence[str], columns: Sequence[Sequence[Any]], names: Sequence[str] | None = None
) -> list[bytes]:
    """The entity key of each row of ``columns`` (one column per join key, in the view's
    join-key order, typed ``dtypes``)."""
    unknown = [t for t in dtypes if t not in _KEY_TYPES]
    if unknown:
        raise InvalidArgumentError(f"unknown join key type(s) {unknown}; one of {_KEY_TYPES}")
    if len(columns) != len(dtypes):
        raise InvalidArgumentError(f"expected {len(dtypes)} key column(s), got {len(columns)}")
    n = len(columns[0]) if columns else 0
    if any(len(c) != n for c in columns):
        raise InvalidArgumentError("key columns have different lengths")
    labels = list(names) if names is not None else [f"#{i}" for i in range(len(dtypes))]
    keys = []
    for i in range(n):
        out = bytearray()
        for name, dtype, col in zip(labels, dtypes, columns, strict=True):
            _encode_value(name, dtype, col[i], out)
        keys.append(bytes(out))
    return keys


def partitions_for_keys(keys: Sequence[bytes], num_partitions: int) -> list[int]:
    """Kafka's default keyed partition of each key: ``(murmur2(k) & 0x7fffffff) % P``."""
    if num_partitions < 1:
        raise InvalidArgumentError("num_partitions must be at least 1")
    return [(murmur2(k) & 0x7FFFFFFF) % num_partitions for k in keys]
