"""The cluster map of a sharded deployment (docs/scale-out.md, "Cluster map") and what a node says
about itself (:class:`NodeInfo`, the ``GetNodeInfo`` RPC)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml

from serving._proto.feature_serving.v1 import feature_service_pb2 as pb
from serving.cluster.rpc import NODE_INFO_METHOD, auth_metadata, error_from_rpc, open_channel
from serving.errors import InvalidArgumentError

# host:port, [v6]:port; a target with a scheme (dns:///..., unix:...) is taken as it is
_ENDPOINT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})$")


class ClusterMapError(InvalidArgumentError, ValueError):
    """An invalid cluster map (or a node without one); the message names the problem."""


def _int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClusterMapError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ClusterMapError(f"{what} must be at least {minimum}, got {value}")
    return value


def _shard_index(key: object) -> int:
    if isinstance(key, str) and key.strip().isdigit():
        return int(key.strip())  # JSON object keys are strings
    return _int(key, f"shard index {key!r}", 0)


def _check_endpoint(shard: int, ep: object) -> str:
    if not isinstance(ep, str) or not ep.strip():
        raise ClusterMapError(
            f"shard {shard}: an endpoint must be a 'host:port' string, got {ep!r}"
        )
    if "://" in ep or ep.startswith("unix:"):
        return ep
    m = _ENDPOINT.match(ep)
    if m is None or not 1 <= int(m.group(2)) <= 65535:
        raise ClusterMapError(
            f"shard {shard}: endpoint {ep!r} is not 'host:port' (a gRPC port of the replica)"
        )
    return ep


@dataclass(frozen=True)
class ClusterMap:
    """Every shard of a cluster with its replicas' gRPC endpoints.

    ``shards`` maps each shard index ``0..N-1`` (all of them, no gap) to the endpoints
    (``"host:port"``) of its replicas, at least one each; an endpoint belongs to one shard only.
    ``topic_partitions`` is the partition count of the views' stream topics (the nodes'
    ``--topic-partitions``). Invalid maps raise :class:`ClusterMapError` (a ``ValueError``).
    """

    shards: dict[int, list[str]]
    topic_partitions: int
    #: gRPC endpoint -> HTTP address ("host:port") of the same replica, where the map gives
    #: one (``{grpc: ..., http: ...}`` entries); a router sends its parts over HTTP to shards
    #: whose replicas all have one
    http: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.shards, Mapping) or not self.shards:
            raise ClusterMapError(
                "shards must map every shard index 0..N-1 to its replicas' endpoints, "
                f"got {self.shards!r}"
            )
        _int(self.topic_partitions, "topic_partitions", 1)
        shards: dict[int, list[str]] = {}
        http = {str(g): str(h) for g, h in (self.http or {}).items()}
        for key, eps in self.shards.items():
            k = _shard_index(key)
            if k in shards:
                raise ClusterMapError(f"shard {k} is listed twice")
            if isinstance(eps, str) or not isinstance(eps, Sequence):
                raise ClusterMapError(
                    f"shard {k}: expected a list of endpoints ('host:port'), got {eps!r}"
                )
            if not eps:
                raise ClusterMapError(f"shard {k} has no endpoint")
            shards[k] = []
            for ep in eps:
                if isinstance(ep, Mapping):
                    extra = sorted(str(x) for x in ep if x not in ("grpc", "http"))
                    if extra or "grpc" not in ep:
                        raise ClusterMapError(
                            f"shard {k}: an endpoint is 'host:port' or {{grpc: 'host:port', "
                            f"http: 'host:port'}}, got {dict(ep)!r}"
                        )
                    grpc_ep = _check_endpoint(k, ep["grpc"])
                    if "http" in ep:
                        http[grpc_ep] = _check_endpoint(k, ep["http"])
                    shards[k].append(grpc_ep)
                else:
                    shards[k].append(_check_endpoint(k, ep))
        n = len(shards)
        if sorted(shards) != list(range(n)):
            missing = sorted(set(range(n)) - set(shards))
            raise ClusterMapError(
                f"shard indices must be exactly 0..{n - 1} ({n} shards), got {sorted(shards)}"
                + (f": shard(s) {missing} missing" if missing else "")
            )
        owner: dict[str, int] = {}
        for k in range(n):
            for ep in shards[k]:
                if ep in owner:
                    where = "twice in shard" if owner[ep] == k else f"in shards {owner[ep]} and"
                    raise ClusterMapError(f"endpoint {ep} is listed {where} {k}")
                owner[ep] = k
        stray = sorted(set(http) - set(owner))
        if stray:
            raise ClusterMapError(f"HTTP addresses given for endpoints not in the map: {stray}")
        # normalized: int keys in index order, plain lists (the caller's objects are not kept)
        object.__setattr__(self, "shards", {k: list(shards[k]) for k in range(n)})
        object.__setattr__(self, "http", http)

    def http_of(self, shard: int) -> list[str] | None:
        """The HTTP addresses of a shard's replicas (in ``shards`` order), or None unless the
        map gives one for every replica of the shard."""
        eps = self.shards[shard]
        if not all(ep in self.http for ep in eps):
            return None
        return [self.http[ep] for ep in eps]

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    @property
    def endpoints(self) -> list[str]:
        """Every endpoint of the map, shard by shard."""
        return [ep for k in range(self.shard_count) for ep in self.shards[k]]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClusterMap:
        """From ``{"topic_partitions": P, "shards": {0: [...], ...}}``; shard indices may be
        ints or digit strings (JSON)."""
        if not isinstance(d, Mapping):
            raise ClusterMapError(
                f"a cluster map is a mapping with 'topic_partitions' and 'shards', got {d!r}"
            )
        unknown = sorted(str(k) for k in d if k not in ("shards", "topic_partitions"))
        if unknown:
            raise ClusterMapError(
                f"unknown key(s) {unknown} in the cluster map (expected 'topic_partitions' "
                "and 'shards')"
            )
        for key in ("topic_partitions", "shards"):
            if key not in d:
                raise ClusterMapError(f"the cluster map has no '{key}'")
        return cls(shards=d["shards"], topic_partitions=d["topic_partitions"])

    def to_dict(self) -> dict[str, Any]:
        """``{"topic_partitions": P, "shards": {0: [...], ...}}`` (what :meth:`from_dict`
        reads; ``json.dumps`` turns the indices into strings, which it reads too)."""
        return {
            "topic_partitions": self.topic_partitions,
            "shards": {
                k: [{"grpc": ep, "http": self.http[ep]} if ep in self.http else ep for ep in eps]
                for k, eps in self.shards.items()
            },
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClusterMap:
        """From a YAML or JSON file (module docstring, docs/scale-out.md "Cluster map")."""
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ClusterMapError(f"cluster map '{p}': {e}") from None
        try:
            return cls.from_dict(data)
        except ClusterMapError as e:
            raise ClusterMapError(f"cluster map '{p}': {e.message}") from None

    def to_proto(self) -> pb.ClusterMap:
        msg = pb.ClusterMap(topic_partitions=self.topic_partitions)
        for k, eps in self.shards.items():
            msg.shards.add(
                index=k,
                endpoints=eps,
                http_endpoints=[self.http.get(ep, "") for ep in eps] if self.http else [],
            )
        return msg

    @classmethod
    def from_proto(cls, msg: pb.ClusterMap) -> ClusterMap:
        shards: dict[int, list[str]] = {}
        http: dict[str, str] = {}
        for s in msg.shards:
            if s.index in shards:
                raise ClusterMapError(f"shard {s.index} is listed twice")
            shards[s.index] = list(s.endpoints)
            http.update((g, h) for g, h in zip(s.endpoints, s.http_endpoints, strict=False) if h)
        return cls(shards=shards, topic_partitions=msg.topic_partitions, http=http)

    @classmethod
    def fetch(
        cls,
        endpoint: str,
        *,
        api_key: str | None = None,
        timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> ClusterMap:
        """The cluster map a node was started with (``serve --cluster-map``), through its
        ``GetNodeInfo`` RPC (over TLS with ``credentials``). Raises :class:`ClusterMapError`
        when the node has none, and the call's error (:func:`error_from_rpc`) when the node
        does not answer."""
        info = fetch_node_info(endpoint, api_key=api_key, timeout=timeout, credentials=credentials)
        if info.cluster is None:
            raise ClusterMapError(
                f"node {endpoint} has no cluster map (start it with --cluster-map FILE)"
            )
        return info.cluster


@dataclass(frozen=True)
class NodeInfo:
    """What a node says about itself (``GetNodeInfo``, ``GET /v1/node``)."""

    version: str
    #: this node is shard ``shard_index`` of ``shard_count``; 0 and 0 when not sharded
    shard_index: int
    shard_count: int
    #: ``--topic-partitions`` (0 when not sharded)
    topic_partitions: int
    #: views whose keys are sharded (those with a stream source), sorted; empty when not sharded
    sharded_views: tuple[str, ...]
    #: ``/readyz``
    ready: bool
    #: Kafka loader lag per view (None while unknown)
    loader_lag: dict[str, int | None] = field(default_factory=dict)
    #: the map the node was started with (``--cluster-map``), or None
    cluster: ClusterMap | None = None

    @property
    def sharded(self) -> bool:
        return self.shard_count > 0

    def to_dict(self) -> dict[str, Any]:
        """The ``GET /v1/node`` JSON object (``cluster`` in :meth:`ClusterMap.to_dict` form)."""
        return {
            "version": self.version,
            "shard_index": self.shard_index,
            "shard_count": self.shard_count,
            "topic_partitions": self.topic_partitions,
            "sharded_views": list(self.sharded_views),
            "ready": self.ready,
            "loader_lag": dict(self.loader_lag),
            "cluster": None if self.cluster is None else self.cluster.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NodeInfo:
        cluster = d.get("cluster")
        return cls(
            version=str(d["version"]),
            shard_index=int(d["shard_index"]),
            shard_count=int(d["shard_count"]),
            topic_partitions=int(d["topic_partitions"]),
            sharded_views=tuple(d.get("sharded_views") or ()),
            ready=bool(d["ready"]),
            loader_lag=dict(d.get("loader_lag") or {}),
            cluster=None if cluster is None else ClusterMap.from_dict(cluster),
        )

    def to_proto(self) -> pb.GetNodeInfoResponse:
        msg = pb.GetNodeInfoResponse(
            version=self.version,
            shard_index=self.shard_index,
            shard_count=self.shard_count,
            topic_partitions=self.topic_partitions,
            sharded_views=list(self.sharded_views),
            ready=self.ready,
        )
        for view, lag in self.loader_lag.items():
            entry = msg.loader_lag.add(view=view)
            if lag is not None:
                entry.lag = lag
        if self.cluster is not None:
            msg.cluster.CopyFrom(self.cluster.to_proto())
        return msg

    @classmethod
    def from_proto(cls, msg: pb.GetNodeInfoResponse) -> NodeInfo:
        return cls(
            version=msg.version,
            shard_index=msg.shard_index,
            shard_count=msg.shard_count,
            topic_partitions=msg.topic_partitions,
            sharded_views=tuple(msg.sharded_views),
            ready=msg.ready,
            loader_lag={e.view: e.lag if e.HasField("lag") else None for e in msg.loader_lag},
            cluster=ClusterMap.from_proto(msg.cluster) if msg.HasField("cluster") else None,
        )


def fetch_node_info(
    endpoint: str,
    *,
    api_key: str | None = None,
    timeout: float = 5.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> NodeInfo:
    """A node's ``GetNodeInfo`` (blocking; over TLS with ``credentials``); gRPC errors are
    raised as :class:`FeatureServingError` (:func:`error_from_rpc`)."""
    with open_channel(endpoint, credentials) as channel:
        call = channel.unary_unary(
            NODE_INFO_METHOD,
            request_serializer=pb.GetNodeInfoRequest.SerializeToString,
            response_deserializer=pb.GetNodeInfoResponse.FromString,
        )
        try:
            resp = call(pb.GetNodeInfoRequest(), timeout=timeout, metadata=auth_metadata(api_key))
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
    return NodeInfo.from_proto(resp)
