"""A sharded deployment seen from the outside: its map, and calls to its shards.

A *cluster map* (docs/scale-out.md, "Cluster map") lists, for every shard index ``0..N-1``, the
gRPC endpoints of the shard's replicas, plus the partition count of the views' stream topics;
the owner of an entity is ``murmur2(encode_key(values)) % topic_partitions % N``. It comes from
a file (:meth:`ClusterMap.load`, also what ``serve --cluster-map`` reads) or from a node that
was started with one (:meth:`ClusterMap.fetch`, the ``GetNodeInfo`` RPC)::

    topic_partitions: 12
    shards:
      0: ["fs-shard-0-0:6565", "fs-shard-0-1:6565"]
      1: ["fs-shard-1-0:6565", "fs-shard-1-1:6565"]

- ``map``: :class:`ClusterMap`, :class:`NodeInfo`, :func:`fetch_node_info`;
- ``channels``: :class:`ClusterChannels` (``grpc.aio`` channels to every replica, raw-bytes
  unary calls to one shard: replicas in turn, fail-over on UNAVAILABLE, a hedge to a second
  replica when the first is slow, all within one deadline) and :class:`HttpClusterChannels`
  (the same over the nodes' HTTP ports, through ``http1``'s keep-alive client);
- ``rpc``: method paths, blocking channels, gRPC errors as ``serving.errors`` classes.

The routing clients (``serving.client.AsyncShardedFeatureClient``, ``ShardedFeatureClient``) and
the router (``serving.frontend.router``) are built on it. Partitioning itself (which shard owns
a key) is ``serving.sharding``, below this package: the loaders use it without gRPC.
"""

from __future__ import annotations

from serving.cluster.channels import ClusterChannels, HttpClusterChannels
from serving.cluster.map import ClusterMap, ClusterMapError, NodeInfo, fetch_node_info
from serving.cluster.rpc import NODE_INFO_METHOD, error_from_rpc, open_channel

__all__ = [
    "NODE_INFO_METHOD",
    "ClusterChannels",
    "ClusterMap",
    "ClusterMapError",
    "HttpClusterChannels",
    "NodeInfo",
    "error_from_rpc",
    "fetch_node_info",
    "open_channel",
]
