"""Settings of the `serve` command: flags, else environment variables, else a settings file,
else the defaults below."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from serving.errors import InvalidArgumentError
from serving.sharding import Shard

if TYPE_CHECKING:
    from serving.cluster.map import ClusterMap

ENV_PREFIX = "FS_"


@dataclass
class ServeSettings:
    """Every setting of a serving process; env var ``FS_<NAME>`` (upper case) sets each one."""

    config: str = "features.yaml"
    data_dir: str = ".data/store"
    host: str = "127.0.0.1"
    grpc_port: int = 6565
    http_port: int = 6566
    #: listen backlog of the HTTP port: connections the kernel completes while the event loop
    #: is busy. aiohttp's default of 128 overflows under a burst of new connections at
    #: overload, and a dropped SYN costs the client a 1 s retransmit (capped by the kernel's
    #: net.core.somaxconn)
    http_backlog: int = 1024
    #: RAM budget of the hot tier (0 disables it) and of RocksDB's block cache
    hot_tier_bytes: int = 256 << 20
    block_cache_bytes: int = 256 << 20
    #: limits enforced before any lookup
    max_entities: int = 1000
    max_features: int = 1000
    max_message_bytes: int = 16 << 20
    #: seconds in-flight requests get to finish after SIGTERM
    grace_seconds: float = 10.0
    #: JSON floats as the shortest float32 text (4.8) instead of Feast's widened double
    #: (4.800000190734863); both parse back to the same float32, the former is ~35 % faster
    json_float32_shortest: bool = False
    #: threads that may encode one large Feast JSON answer (W2: 20,000 cells), in ranges of
    #: its columns; 1 = the event loop's thread alone. Worth it only with cores free beside
    #: the loop: on the shared 2-core machine a second thread made W2 slower (docs/benchmarks.md)
    encode_threads: int = 1
    #: request batching: coalesce requests arriving within this window (microseconds) into one
    #: Rust call on a worker thread; 0 = off (each request is answered inline on the event
    #: loop). docs/benchmarks.md has the measurement behind the default.
    batch_window_us: float = 0.0
    max_batch: int = 64
    #: requests waiting for a batch beyond this are refused with RESOURCE_EXHAUSTED / 429
    max_queue: int = 512
    #: overload guard: a serving request that starts while the event loop is more than this
    #: many milliseconds behind is refused at once with RESOURCE_EXHAUSTED / 429, which bounds
    #: the queueing delay of admitted requests (0 disables; docs/reliability.md)
    max_loop_lag_ms: float = 100.0
    #: how long a request waits for its on-demand views' transforms (they run on worker
    #: threads, off the event loop) before it is answered DEADLINE_EXCEEDED / 504; a gRPC
    #: deadline that ends sooner wins
    transform_timeout_ms: float = 1000.0
    #: per-request metrics (counters, latency histograms, in-flight); off only to measure
    #: their cost: answer-quality counters in Rust stay on
    request_metrics: bool = True
    #: the serving routes over HTTP on the hot path's own protocol (serving.frontend.hot_http);
    #: off: aiohttp answers them too (to measure the difference, docs/benchmarks.md)
    hot_http: bool = True
    #: run the Kafka loaders of the views' stream sources inside the server
    ingest: bool = True
    #: brokers of every stream source, replacing the registry's ``bootstrap_servers``
    #: (as `ingest --bootstrap-servers`); empty = the registry's
    bootstrap_servers: str = ""
    #: readiness (/readyz, gRPC health) waits until the loaders' lag is at most this
    max_ready_lag: int = 1000
    #: ... and turns false when a loader has had no broker connection for this many seconds:
    #: its lag is then unknown (0 = stay ready on the last known lag; docs/reliability.md)
    broker_timeout_seconds: float = 30.0
    #: requests slower than this are logged (0 disables)
    slow_request_ms: float = 0.0
    log_level: str = "info"
    #: API keys are required unless this is set (`--no-auth`, for local experiments only)
    no_auth: bool = False
    #: keys file (hashes only); default `<data_dir>.keys.json`
    keys_file: str = ""
    #: identity sources beyond API keys (JWT bearer tokens against a JWKS): a YAML file,
    #: docs/security.md; empty = API keys only
    auth_config: str = ""
    #: health endpoints (/healthz, /readyz, gRPC health, reflection) and /metrics answer
    #: without a key, so load balancers and Prometheus need none
    open_health: bool = True
    #: TLS for both gRPC and HTTP: certificate chain and key (PEM); with a client CA, mutual
    #: TLS: clients must present a certificate signed by it
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    #: scale-out (docs/scale-out.md): this node is shard ``shard_index`` of ``shard_count``
    #: (-1 / 0 = not sharded). Its Kafka loader consumes only the partitions p with
    #: p % shard_count == shard_index, and requests for entities of stream-sourced views that
    #: another shard owns are refused (FAILED_PRECONDITION / HTTP 409 ``wrong_shard``).
    shard_index: int = -1
    shard_count: int = 0
    #: partition count of the views' stream topics, required with a shard: ownership of a
    #: key is murmur2(key) % topic_partitions % shard_count, and must not depend on reaching
    #: the broker; the loader logs an error if the topic has a different count
    topic_partitions: int = 0
    #: copy this snapshot (`feature-serving snapshot create`) into the data directory, which
    #: must be empty or absent, before opening the store; the loader resumes at its offsets
    restore_from: str = ""
    #: router (`feature-serving route`, docs/scale-out.md): the longest a routed request may
    #: take when the caller sets no shorter deadline (all parts, retries and hedges included)
    route_timeout_ms: float = 1000.0
    #: send a part also to another replica of its shard when the first has not answered
    #: within this many milliseconds (0 = never hedge)
    route_hedge_after_ms: float = 50.0
    #: ... but hedge at most this fraction of parts over time (plus a reserve of 10): when
    #: every replica is slow (overload), unbounded hedging would double the load
    route_hedge_budget: float = 0.1
    #: how a router sends parts to the nodes: `auto` over HTTP to replicas whose HTTP
    #: address the cluster map gives (half the CPU of gRPC per part, docs/benchmarks.md),
    #: gRPC to the others; `grpc` always gRPC; `http` requires every HTTP address
    route_transport: str = "auto"
    #: served-feature logging on a cluster (docs/feature-logging.md): `nodes` (each node logs
    #: the rows it served; the router passes the request id on) or `router` (the router logs
    #: the merged answer, the nodes log nothing of it); never both
    log_at: str = "nodes"
    #: a replica that refused a connection is avoided for this long
    route_down_seconds: float = 5.0
    #: how often the router health-checks every replica (not SERVING = avoided)
    route_probe_seconds: float = 1.0
    #: API key the router presents to the nodes' health checks (data calls carry the
    #: caller's own key); empty when the nodes answer health without a key (open_health)
    node_api_key: str = ""
    #: TLS from the router to the nodes: the CA (PEM) that signed the nodes' certificates
    #: (turns TLS on), and a client certificate and key for nodes that require one
    #: (`serve --tls-client-ca`)
    node_tls_ca: str = ""
    node_tls_cert: str = ""
    node_tls_key: str = ""
    #: cluster map file (YAML or JSON, docs/scale-out.md "Cluster map"): every shard's replica
    #: endpoints, which the node hands out through GetNodeInfo / GET /v1/node so clients can
    #: route (and `route` routes by); on a sharded node its shard count and topic partitions must
    #: match the node's
    cluster_map: str = ""
    #: the web console links its charts to this Prometheus (its base URL) when set
    prometheus_url: str = ""

    def shard(self) -> Shard | None:
        """The node's shard, or None when not sharded; validates the three settings."""
        if self.shard_index < 0 and self.shard_count <= 0:
            if self.topic_partitions > 0:
                raise InvalidArgumentError("--topic-partitions needs --shard-index/--shard-count")
            return None
        if self.shard_index < 0 or self.shard_count <= 0:
            raise InvalidArgumentError(
                "--shard-index / --shard-count: give both the shard index and the shard count"
            )
        shard = Shard(self.shard_index, self.shard_count)
        if self.topic_partitions < 1:
            raise InvalidArgumentError(
                "--shard-index/--shard-count need --topic-partitions P (env FS_TOPIC_PARTITIONS): "
                "the partition count of the views' stream topics"
            )
        return shard

    def cluster(self) -> ClusterMap | None:
        """The cluster map of ``cluster_map`` (None without one), checked against the node's
        shard settings: a sharded node's map must have its shard count and topic partitions."""
        if not self.cluster_map:
            return None
        from serving.cluster.map import ClusterMap

        cluster = ClusterMap.load(self.cluster_map)
        shard = self.shard()
        if shard is not None and (
            cluster.shard_count != shard.count or cluster.topic_partitions != self.topic_partitions
        ):
            raise InvalidArgumentError(
                f"cluster map '{self.cluster_map}' has {cluster.shard_count} shard(s) over "
                f"{cluster.topic_partitions} topic partition(s), but this node is {shard} over "
                f"{self.topic_partitions} partitions (--shard-count/--topic-partitions): "
                "they must be the same"
            )
        return cluster


def default_keys_file(data_dir: str | os.PathLike[str]) -> Path:
    """``<data_dir>.keys.json``: beside the store, not inside RocksDB's directory."""
    p = Path(data_dir)
    return p.with_name(p.name + ".keys.json")


def _coerce(name: str, kind: type, raw: object) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise InvalidArgumentError(f"setting '{name}': expected a boolean, got {raw!r}")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"setting '{name}': expected {kind.__name__}, got {raw!r}"
        ) from None


def _types() -> dict[str, type]:
    return {
        f.name: {"int": int, "float": float, "bool": bool}.get(str(f.type), str)
        for f in fields(ServeSettings)
    }


def load_settings(
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    settings_file: str | os.PathLike[str] | None = None,
) -> ServeSettings:
    """Merges the settings file, the environment and explicit flags (highest wins)."""
    env = os.environ if env is None else env
    types = _types()
    merged: dict[str, object] = {}
    if settings_file:
        path = Path(settings_file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InvalidArgumentError(f"settings file '{path}': {e}") from None
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"settings file '{path}': expected a mapping")
        for k, v in data.items():
            key = str(k).replace("-", "_")
            if key not in types:
                raise InvalidArgumentError(f"settings file '{path}': unknown setting '{k}'")
            merged[key] = v
    for name in types:
        if (v := env.get(ENV_PREFIX + name.upper())) is not None:
            merged[name] = v
    for name, v in (flags or {}).items():
        if v is not None and name in types:
            merged[name] = v
    return ServeSettings(**{k: _coerce(k, types[k], v) for k, v in merged.items()})


def add_frontend_flags(p: argparse.ArgumentParser) -> None:
    """Flags every frontend takes (`serve`, `demo`, `route`); each defaults to None so env and
    file can fill it."""
    p.add_argument("--settings", help="YAML file of settings (same names as the flags)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 6565; 0 = any free)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 6566; 0 = any free)")
    p.add_argument(
        "--http-backlog", type=int, help="listen backlog of the HTTP port (default 1024)"
    )
    p.add_argument("--max-entities", type=int, help="entities per request (default 1000)")
    p.add_argument("--max-features", type=int, help="features per request (default 1000)")
    p.add_argument("--max-message-bytes", type=int, help="request size limit (default 16 MiB)")
    p.add_argument("--grace-seconds", type=float, help="drain time on SIGTERM (default 10)")
    p.add_argument(
        "--json-float32-shortest",
        action="store_const",
        const=True,
        help="write JSON floats as the shortest float32 text (4.8, not 4.800000190734863)",
    )
    p.add_argument(
        "--encode-threads",
        type=int,
        help="threads that may encode one large Feast JSON answer (default 1: the loop's own)",
    )
    p.add_argument(
        "--slow-request-ms", type=float, help="log requests slower than this (default 0 = off)"
    )
    p.add_argument(
        "--no-request-metrics",
        dest="request_metrics",
        action="store_const",
        const=False,
        help="skip per-request metrics (to measure their cost)",
    )
    p.add_argument(
        "--no-hot-http",
        dest="hot_http",
        action="store_const",
        const=False,
        help="answer the HTTP serving routes through aiohttp too (to measure the hot path)",
    )
    p.add_argument("--log-level", help="debug, info, warning, error (default info)")
    p.add_argument(
        "--no-auth",
        action="store_const",
        const=True,
        help="serve without API keys (local experiments only; logs a warning)",
    )
    p.add_argument("--keys-file", help="API keys file (default <data-dir>.keys.json)")
    p.add_argument(
        "--auth-config",
        metavar="FILE",
        help="YAML file configuring JWT bearer tokens (JWKS, issuer, audience, claims -> "
        "project roles); docs/security.md",
    )
    p.add_argument(
        "--protect-health",
        dest="open_health",
        action="store_const",
        const=False,
        help="require a key for health, reflection and /metrics too",
    )
    p.add_argument("--tls-cert", help="PEM certificate chain: serve gRPC and HTTP over TLS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA: require client certificates (mutual TLS)")
    p.add_argument(
        "--prometheus-url",
        help="base URL of a Prometheus scraping this process: the console (/ui) links to it",
    )
    p.add_argument(
        "--transform-timeout-ms",
        type=float,
        help="answer DEADLINE_EXCEEDED when on-demand transforms take longer (default 1000)",
    )
    p.add_argument(
        "--max-loop-lag-ms",
        type=float,
        help="refuse serving requests (429 / RESOURCE_EXHAUSTED) while the event loop is more "
        "than this behind (default 100; 0 = off)",
    )


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    """Flags of `serve` (and `demo`); each defaults to None so env and file can fill it."""
    add_frontend_flags(p)
    p.add_argument("--hot-tier-bytes", type=int, help="hot tier RAM budget (default 256 MiB)")
    p.add_argument("--block-cache-bytes", type=int, help="RocksDB block cache (default 256 MiB)")
    p.add_argument(
        "--batch-window-us",
        type=float,
        help="coalesce requests arriving within this many microseconds (default 0 = off)",
    )
    p.add_argument(
        "--no-ingest",
        dest="ingest",
        action="store_const",
        const=False,
        help="do not run the Kafka loaders of stream sources in this process",
    )
    p.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka brokers of every stream source, replacing the registry's (default: the "
        "registry's bootstrap_servers)",
    )
    p.add_argument(
        "--max-ready-lag",
        type=int,
        help="readiness (/readyz 200, gRPC health SERVING) means every Kafka loader is at most "
        "this many messages behind the log end, not fully caught up (default 1000)",
    )
    p.add_argument(
        "--broker-timeout-seconds",
        type=float,
        help="not ready after this long without a Kafka broker connection (default 30; 0 = never)",
    )
    p.add_argument("--max-batch", type=int, help="requests per batched call (default 64)")
    p.add_argument(
        "--max-queue",
        type=int,
        help="queued requests before 429 / RESOURCE_EXHAUSTED (default 512)",
    )
    p.add_argument(
        "--shard-index",
        type=int,
        metavar="K",
        help="this node is shard K of --shard-count: consume only partitions p with p %% N == K "
        "and refuse entities other shards own (docs/scale-out.md; default: not sharded)",
    )
    p.add_argument(
        "--shard-count",
        type=int,
        metavar="N",
        help="number of shards (with --shard-index; default: not sharded)",
    )
    p.add_argument(
        "--topic-partitions",
        type=int,
        metavar="P",
        help="partition count of the stream topics (required with --shard-index; default: none)",
    )
    p.add_argument(
        "--restore-from",
        metavar="SNAPSHOT_DIR",
        help="first copy this snapshot into the data directory, which must be empty or absent; "
        "the Kafka loader resumes at the snapshot's offsets",
    )
    p.add_argument(
        "--cluster-map",
        metavar="FILE",
        help="cluster map (YAML/JSON: topic_partitions and every shard's replica endpoints) "
        "that the node hands out through GetNodeInfo and GET /v1/node (docs/scale-out.md)",
    )


def add_route_flags(p: argparse.ArgumentParser) -> None:
    """Flags of `route` (docs/scale-out.md, "Router")."""
    add_frontend_flags(p)
    p.add_argument(
        "--cluster-map",
        metavar="FILE",
        help="the cluster map: shard index -> replica gRPC endpoints (env FS_CLUSTER_MAP)",
    )
    p.add_argument(
        "--route-timeout-ms",
        type=float,
        help="longest a routed request may take when the caller sets no deadline (default 1000)",
    )
    p.add_argument(
        "--route-hedge-after-ms",
        type=float,
        help="also ask another replica when one has not answered within this (default 50; 0 = off)",
    )
    p.add_argument(
        "--route-transport",
        choices=("auto", "grpc", "http"),
        help="parts to the nodes over HTTP where the map gives HTTP addresses (auto, default), "
        "always gRPC, or always HTTP",
    )
    p.add_argument(
        "--log-at",
        choices=("nodes", "router"),
        help="who logs the answers of logged feature services: each node its part (nodes, "
        "default) or the router the merged answer (router); never both",
    )
    p.add_argument(
        "--route-hedge-budget",
        type=float,
        help="hedge at most this fraction of parts over time (default 0.1)",
    )
    p.add_argument(
        "--route-down-seconds",
        type=float,
        help="avoid a replica that refused a connection for this long (default 5)",
    )
    p.add_argument(
        "--route-probe-seconds",
        type=float,
        help="interval of the router's health checks of every replica (default 1)",
    )
    p.add_argument("--node-api-key", help="key for the nodes' health checks when they require one")
    p.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka brokers the router publishes online writes of stream-backed views to, "
        "replacing the registry's (default: the registry's bootstrap_servers)",
    )
    p.add_argument(
        "--node-tls-ca",
        metavar="PEM",
        help="talk TLS to the nodes, verifying their certificates with this CA",
    )
    p.add_argument(
        "--node-tls-cert", metavar="PEM", help="client certificate for nodes that require one"
    )
    p.add_argument("--node-tls-key", metavar="PEM", help="private key of --node-tls-cert")
