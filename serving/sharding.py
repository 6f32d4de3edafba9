"""Shards of a stream topic: which partition a key lands on, which shard owns a partition.

Scale-out model (``docs/scale-out.md``): a view's Kafka topic is the source of truth; node ``k``
of ``N`` (its *shard*) consumes only the partitions ``p`` with ``p % N == k``; replicas of a
shard are nodes with the same shard index. The partition of a key is Kafka's default keyed
partitioner, ``(murmur2(key) & 0x7fffffff) % num_partitions`` (the Java client, librdkafka's
``partitioner=murmur2_random``), computed in Rust (``rust_core/src/partition.rs``) so that the
producer helpers, the loader and clients share one implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serving import _rust_core
from serving.errors import InvalidArgumentError

if TYPE_CHECKING:
    from serving.registry import FeatureView, Registry

__all__ = [
    "Ownership",
    "Shard",
    "partition_for_key",
    "partitions_for_keys",
    "shard_for_key",
    "sharded_views",
]


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition a record with ``key`` goes to under Kafka's default keyed partitioner."""
    return _rust_core.partition_for_key(key, num_partitions)


def partitions_for_keys(keys: Sequence[bytes], num_partitions: int) -> list[int]:
    """:func:`partition_for_key` for many keys."""
    return _rust_core.partitions_for_keys(list(keys), num_partitions)


def shard_for_key(key: bytes, num_partitions: int, shard_count: int) -> int:
    """The shard index owning ``key``: its partition modulo ``shard_count``."""
    if shard_count < 1:
        raise InvalidArgumentError(f"shard_count must be at least 1, got {shard_count}")
    return partition_for_key(key, num_partitions) % shard_count


@dataclass(frozen=True)
class Shard:
    """Node ``index`` of ``count``: owns the partitions ``p`` with ``p % count == index``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise InvalidArgumentError(f"shard count must be an integer >= 1, got {self.count!r}")
        if (
            isinstance(self.index, bool)
            or not isinstance(self.index, int)
            or not 0 <= self.index < self.count
        ):
            raise InvalidArgumentError(
                f"shard index must be an integer in 0..{self.count - 1} "
                f"(shard count {self.count}), got {self.index!r}"
            )

    @classmethod
    def parse(cls, index: object, count: object, *, what: str = "shard") -> Shard | None:
        """A shard from two optional settings (text or int); None when both are unset.
        Giving only one of them is an error."""
        unset = (None, "")
        if index in unset and count in unset:
            return None
        if index in unset or count in unset:
            raise InvalidArgumentError(f"{what}: give both the shard index and the shard count")
        try:
            i, n = int(str(index).strip()), int(str(count).strip())
        except ValueError:
            raise InvalidArgumentError(
                f"{what}: shard index and count must be integers, got {index!r} and {count!r}"
            ) from None
        return cls(i, n)

    def owns(self, partition: int) -> bool:
        return partition % self.count == self.index

    def partitions(self, partitions: Sequence[int]) -> list[int]:
        """The owned ones of ``partitions`` (a topic's partition ids), ascending."""
        return sorted(p for p in partitions if self.owns(p))

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


def sharded_views(registry: Registry, topic_partitions: int) -> dict[str, int]:
    """Views the nodes shard (those with a stream source, and the write-time on-demand views
    derived from one, whose rows each shard derives from its own) -> partition count of the
    topic."""

    def streamed(v: FeatureView) -> bool:
        if v.derived_by is not None:
            v = registry.view(registry.on_demand_views[v.derived_by].source_view)
        return v.stream_source is not None

    return {v.name: topic_partitions for v in registry.feature_views.values() if streamed(v)}


@dataclass(frozen=True)
class Ownership:
    """What a sharded node checks on every read (``Store.configure_sharding``): it is ``shard``,
    and the keys of ``views`` are spread over a topic of ``views[name]`` partitions; an entity
    of such a view that another shard owns is answered ``WrongShardError``."""

    shard: Shard
    views: Mapping[str, int]

    def to_core(self) -> tuple[int, int, dict[str, int]]:
        """The argument of the Rust core's ``configure_sharding``."""
        return self.shard.index, self.shard.count, dict(self.views)
