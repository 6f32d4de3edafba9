"""Shards and the partitioner without a broker (the broker tests: tests/integration/
test_partitioner.py and test_scale_out.py)."""

from __future__ import annotations

import pytest

from serving import _rust_core
from serving.errors import InvalidArgumentError
from serving.loaders.kafka import LoaderOptions
from serving.registry import StreamSource
from serving.sharding import Shard, partition_for_key, partitions_for_keys, shard_for_key


def test_murmur2_java_vectors_through_the_binding() -> None:
    # Apache Kafka UtilsTest.testMurmur2
    assert _rust_core.murmur2(b"21") == -973932308
    assert _rust_core.murmur2(b"foobar") == -790332482
    assert _rust_core.murmur2(b"abc") == 479470107
    assert partition_for_key(b"foobar", 50) == 16
    assert partitions_for_keys([b"foobar", b"21"], 50) == [16, partition_for_key(b"21", 50)]
    assert shard_for_key(b"foobar", 50, 3) == 16 % 3


@pytest.mark.parametrize("n", [0, -1, 2**31])
def test_bad_partition_counts_are_refused(n: int) -> None:
    with pytest.raises(InvalidArgumentError, match="num_partitions"):
        partition_for_key(b"k", n)
    with pytest.raises(InvalidArgumentError, match="num_partitions"):
        partitions_for_keys([b"k"], n)


def test_shard_owns_partitions_modulo_count() -> None:
    assert Shard(1, 3).partitions(range(8)) == [1, 4, 7]
    assert Shard(0, 1).partitions([3, 0, 1]) == [0, 1, 3]
    assert Shard(2, 4).partitions(range(2)) == []
    assert str(Shard(0, 2)) == "shard 0 of 2"


@pytest.mark.parametrize(
    ("index", "count", "msg"),
    [
        (2, 2, r"in 0\.\.1"),
        (-1, 2, r"in 0\.\.1"),
        (0, 0, "count must be an integer >= 1"),
        (True, 2, "index must be an integer"),
    ],
)
def test_bad_shards_are_refused(index: int, count: int, msg: str) -> None:
    with pytest.raises(InvalidArgumentError, match=msg):
        Shard(index, count)


def test_shard_parse() -> None:
    assert Shard.parse(None, None) is None
    assert Shard.parse("", "") is None
    assert Shard.parse("1", " 4 ") == Shard(1, 4)
    with pytest.raises(InvalidArgumentError, match="give both"):
        Shard.parse(1, None)
    with pytest.raises(InvalidArgumentError, match="must be integers"):
        Shard.parse("a", "2")


def test_stream_source_shard_options() -> None:
    def opts(**o: str) -> LoaderOptions:
        return LoaderOptions.from_source(
            StreamSource(type="kafka", topic="t", bootstrap_servers="x", options=o)
        )

    assert opts().shard is None
    got = opts(**{"loader.shard_index": "1", "loader.shard_count": "2", "loader.partitions": "1"})
    assert got.shard == Shard(1, 2)
    assert got.partitions == (1,)
    with pytest.raises(InvalidArgumentError, match=r"topic 't'.*give both"):
        opts(**{"loader.shard_count": "2"})
