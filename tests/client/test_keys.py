"""The client wheel routes without the Rust extension: ``serving.client.keys`` must give the
entity keys and partitions the core gives (the nodes check ownership with the core's)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import _rust_core
from serving.client import keys
from serving.errors import InvalidArgumentError

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
INT32 = st.integers(-(1 << 31), (1 << 31) - 1)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(INT64, INT32, st.text(max_size=9), st.binary(max_size=9)), max_size=20),
    st.integers(1, 1000),
)
def test_python_keys_and_partitions_are_the_cores(
    rows: list[tuple[int, int, str, bytes]], partitions: int
) -> None:
    dtypes = ["int64", "int32", "string", "bytes"]
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[], [], [], []]
    want = _rust_core.encode_entity_keys(dtypes, columns)
    got = keys.encode_entity_keys(dtypes, columns)
    assert got == want
    assert keys.partitions_for_keys(got, partitions) == _rust_core.partitions_for_keys(
        want, partitions
    )


def test_murmur2_known_values() -> None:
    """Kafka's own test vectors (Utils.murmur2, as unsigned)."""
    assert keys.murmur2(b"21") & 0xFFFFFFFF == (-973932308) & 0xFFFFFFFF
    assert keys.murmur2(b"foobar") & 0xFFFFFFFF == (-790332482) & 0xFFFFFFFF
    assert keys.murmur2(b"a-little-bit-long-string") & 0xFFFFFFFF == (-985981536) & 0xFFFFFFFF


def test_bad_key_values_are_named() -> None:
    with pytest.raises(InvalidArgumentError, match="join key 'user_id': value 4294967296"):
        keys.encode_entity_keys(["int32"], [[1 << 32]], ["user_id"])
    with pytest.raises(InvalidArgumentError, match="join key 'item_id' has type string"):
        keys.encode_entity_keys(["string"], [[1]], ["item_id"])
