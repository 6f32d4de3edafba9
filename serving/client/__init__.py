"""Python clients for model servers.

``FeatureClient`` (blocking) and ``AsyncFeatureClient`` (asyncio) call ``GetFeatureVector`` over
gRPC (default) or ``POST /v1/feature-vector`` over HTTP. The dense layout returns one numpy
float32 matrix built straight from the response bytes, without a Python object per value::

    with FeatureClient("127.0.0.1:6565") as client:
        m = client.get_dense({"user_id": [1, 2, 3]}, feature_service="user_profile_all")
        m.values.shape  # (3, 200)

``ShardedFeatureClient`` (blocking) and ``AsyncShardedFeatureClient`` (asyncio) route over a
sharded cluster (docs/scale-out.md): they split a batch by owning shard, ask the shards
concurrently, merge the answers back in request order, fail over to another replica of a shard
that is unavailable and hedge to another replica when one is slow (``serving.cluster``).

``codec`` builds the requests and reads the answers for all of them (``results``: the answer
classes; ``frames``: their ``to_pandas()`` / ``to_polars()`` / ``to_arrow()``); ``node`` holds
the single-node clients, ``sharded`` the cluster ones (``keys``: which shard owns an entity).

Nothing here needs the Rust extension except the sharded clients' ``registry=`` (Rust split and
merge): the client wheel, ``feature-serving-client``, installs this package alone
(docs/client.md).
"""

from __future__ import annotations

from serving.client.node import AsyncFeatureClient, FeatureClient
from serving.client.results import ColumnsResult, DenseResult, FieldStatus
from serving.client.sharded import AsyncShardedFeatureClient, ShardedFeatureClient

__all__ = [
    "AsyncFeatureClient",
    "AsyncShardedFeatureClient",
    "ColumnsResult",
    "DenseResult",
    "FeatureClient",
    "FieldStatus",
    "ShardedFeatureClient",
]
