"""Which shard owns each row of a write: the hashing reads use (``murmur2(entity key) %
partitions % shards``, ``serving.sharding``), over a whole Arrow table at once (the keys are
encoded and hashed in Rust). A sharded node refuses a direct write of a key it does not own
(:func:`check_owned`); a router splits nothing by it, see ``serving.frontend.router_writes``."""

from __future__ import annotations

import pyarrow as pa

from serving import _rust_core
from serving.errors import WrongShardError
from serving.registry import FeatureView
from serving.sharding import Shard


def partitions_of(view: FeatureView, rows: pa.Table, partitions: int) -> list[int]:
    """The topic partition of each row's entity key (what the producer's partitioner picks)."""
    if rows.num_rows == 0:
        return []
    keys = _rust_core.encode_entity_keys(
        [k.dtype for k in view.join_keys], [rows.column(k.name).to_pylist() for k in view.join_keys]
    )
    return _rust_core.partitions_for_keys(keys, partitions)


def check_owned(view: FeatureView, rows: pa.Table, shard: Shard, partitions: int) -> None:
    """Refuses (409 ``wrong_shard``, nothing written) a write holding a key of ``view`` that
    another shard owns, naming the first such key and its owner."""
    for i, p in enumerate(partitions_of(view, rows, partitions)):
        if shard.owns(p):
            continue
        key = ", ".join(f"{k.name}={rows.column(k.name)[i].as_py()!r}" for k in view.join_keys)
        owner = p % shard.count
        raise WrongShardError(
            f"row {i}: entity {key} of feature view '{view.name}' belongs to shard {owner} of "
            f"{shard.count} (partition {p} of {partitions}); this node is {shard}: write it to "
            f"shard {owner}, through the router, or to the view's topic "
            f"(POST /push publishes it there); nothing was written"
        )
