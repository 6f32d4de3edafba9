"""A sharded cluster on a real broker: a registry whose view ``users`` is fed by the topic
``users``, the keys 0..n-1 with the shard that owns each, and the `serve` / `route` processes
started on it (every one stopped by :meth:`ShardedCluster.close`)."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self

from serving import Registry
from serving.loaders.kafka import encode_key
from serving.sharding import shard_for_key
from tests.harness.broker import Broker
from tests.harness.server import Server, Servers


class ShardedCluster:
    """``registry_text`` is written to ``TMP/features.yaml``; its view ``users`` gets a topic of
    ``partitions`` partitions; key ``u`` (``user_id``) of ``range(n)`` belongs to shard
    ``owner[u]`` of ``shards``."""

    def __init__(
        self,
        broker: Broker,
        tmp: Path,
        registry_text: str,
        *,
        n: int,
        partitions: int = 4,
        shards: int = 2,
    ) -> None:
        self.tmp, self.n, self.partitions, self.shards = tmp, n, partitions, shards
        self.config = tmp / "features.yaml"
        self.config.write_text(registry_text)
        self.view = Registry.from_yaml(self.config).view("users")
        broker.create_topic("users", partitions)
        self.producer = broker.producer()
        self.owner = {
            u: shard_for_key(encode_key(self.view, [u]), partitions, shards) for u in range(n)
        }
        self.servers = Servers(tmp)

    def keys_of(self, shard: int) -> list[int]:
        return [u for u in range(self.n) if self.owner[u] == shard]

    def shard_flags(self, index: int) -> tuple[str, ...]:
        """`serve` flags of a node of shard ``index`` that is ready only when caught up (auth
        flags are the caller's)."""
        return (
            "--max-ready-lag", "0",
            "--shard-index", str(index), "--shard-count", str(self.shards),
            "--topic-partitions", str(self.partitions),
        )  # fmt: skip

    def start(self, name: str, *flags: str, **ports: int | None) -> Server:
        """``serve`` over the data directory ``TMP/NAME`` with ``flags``."""
        return self.servers.serve(self.config, name, *flags, **ports)

    def stop(self, server: Server) -> int:
        return self.servers.stop(server)

    def close(self) -> None:
        self.servers.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
