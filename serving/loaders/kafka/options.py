"""The Kafka loader's settings: librdkafka defaults, the stream source's ``loader.*`` options
(:class:`LoaderOptions`), and where offsets live in the store's meta."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.errors import InvalidArgumentError
from serving.logs import RepeatFilter
from serving.registry import StreamSource
from serving.sharding import Shard

log = logging.getLogger("serving.kafka")

#: what a producer of feature rows should set: the Java client's partitioner (murmur2 of the
#: key bytes), so producers in any language route an entity to the same partition, plus a
#: short linger and lz4 for throughput.
PRODUCER_DEFAULTS: Mapping[str, str] = {
    "partitioner": "murmur2_random",
    "linger.ms": "5",
    "compression.type": "lz4",
}
#: headers of a dead letter (values are UTF-8 text), after the original record's headers
DLQ_HEADERS = (
    "dlq.source.topic",
    "dlq.source.partition",
    "dlq.source.offset",
    "dlq.error",
    "dlq.feature_view",
)
#: prefix of the stream-source options read by the loader itself (the rest go to librdkafka)
OPTION_PREFIX = "loader."
#: consumer settings the loader needs; `options:` of the stream source may override them
CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
    # A broker may hold a fetch this long when little data is waiting; it bounds freshness
    # at low rates (some brokers hold it even when data is there).
    "fetch.wait.max.ms": 10,
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 2000,
    "max.partition.fetch.bytes": 8 << 20,
    # Prefetch while a batch is decoded and written: librdkafka stops fetching when its queue
    # holds this much and then waits fetch.queue.backoff.ms (default 1 s!) before trying again,
    # which left the loader idle two thirds of the time (34,000 rows/s instead of 100,000+).
    "queued.max.messages.kbytes": 128 << 10,
    "fetch.queue.backoff.ms": 5,
    # Broker connection states arrive with these statistics (stats_cb, served by consume()):
    # the only sign of an unreachable broker while the topic is idle (docs/reliability.md).
    "statistics.interval.ms": 1000,
}
TRUNCATION_CHECKS = 2
CHECK_INTERVAL_S = 1.0
METADATA_REFRESH_S = 30.0
MAX_BACKOFF_S = 10.0
#: librdkafka reports every failed reconnect (many a second while a broker is down): log the
#: first, then at most one line this often with the number left out
ERROR_LOG_INTERVAL_S = 10.0
#: a topic that does not exist (or a broker that never answered) is warned about at once and
#: then this often while the loader keeps waiting for it
WAITING_LOG_INTERVAL_S = 30.0
#: librdkafka's own lines (``logger`` of every client): repeats collapsed, since a client logs
#: each failed connection attempt, about 20 a second while a broker is down
RDKAFKA_LOG = logging.getLogger("serving.kafka.rdkafka")
if not any(isinstance(f, RepeatFilter) for f in RDKAFKA_LOG.filters):
    RDKAFKA_LOG.addFilter(RepeatFilter(ERROR_LOG_INTERVAL_S))
#: what the loader does with a record whose entity key belongs to another partition than the one
#: it arrived on (``loader.misrouted``): apply it anyway (default), skip it, or dead-letter it
MISROUTED_ACTIONS = ("apply", "skip", "dlq")
#: the fix named in every misrouted-record warning
MISROUTED_HINT = "producer must use partitioner=murmur2_random"
#: the id of a topic on a broker that has none (base64 of 16 zero bytes)
NO_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"


def offset_key(view: str, topic: str, partition: int) -> str:
    """Meta key of the next offset to apply (decimal text) of one partition for one view.

    The view is part of the key because several views may consume one topic, each at its own
    pace.
    """
    return f"kafka/{view}/{topic}/{partition}"


@dataclass(frozen=True)
class LoaderOptions:
    """The loader's own settings, read from a stream source's ``options`` (``loader.*``)."""

    #: dead-letter topic; None disables dead-lettering (bad records are counted and logged)
    dlq_topic: str | None
    #: records per batch handed to Rust
    batch_size: int = 5000
    #: how long ``consume`` waits to fill a batch
    batch_timeout_s: float = 0.01
    #: partitions to consume (None: all); for sharding a topic over several replicas
    partitions: tuple[int, ...] | None = None
    #: consume only the partitions this shard owns (p % count == index); with ``partitions``
    #: too, both restrict
    shard: Shard | None = None
    #: seconds between offset commits to Kafka
    commit_interval_s: float = 1.0
    #: records on another partition than their key's (wrong producer partitioner): ``apply``
    #: (counted and warned about, still written), ``skip`` or ``dlq`` (not written; dead-lettered)
    misrouted: str = "apply"
    #: librdkafka settings (everything in ``options`` not starting with ``loader.``)
    kafka: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_source(cls, source: StreamSource) -> LoaderOptions:
        own = {
            k[len(OPTION_PREFIX) :]: v
            for k, v in source.options.items()
            if k.startswith(OPTION_PREFIX)
        }
        kafka = {k: v for k, v in source.options.items() if not k.startswith(OPTION_PREFIX)}
        known = {
            "dlq_topic",
            "batch_size",
            "batch_timeout_ms",
            "partitions",
            "commit_interval_ms",
            "shard_index",
            "shard_count",
            "misrouted",
        }
        unknown = sorted(set(own) - known)
        if unknown:
            raise InvalidArgumentError(
                f"stream source of topic '{source.topic}': unknown option(s) "
                f"{', '.join(OPTION_PREFIX + u for u in unknown)} "
                f"(known: {', '.join(OPTION_PREFIX + k for k in sorted(known))})"
            )
        dlq = own.get("dlq_topic", f"{source.topic}.dlq").strip()
        partitions = None
        if own.get("partitions", "").strip():
            try:
                partitions = tuple(sorted({int(p) for p in own["partitions"].split(",")}))
            except ValueError:
                raise InvalidArgumentError(
                    f"stream source of topic '{source.topic}': {OPTION_PREFIX}partitions must be "
                    f"a comma-separated list of partition numbers, got '{own['partitions']}'"
                ) from None

        def number(name: str, default: float) -> float:
            raw = own.get(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not value > 0:
                raise InvalidArgumentError(
                    f"stream source of topic '{source.topic}': {OPTION_PREFIX}{name} must be a "
                    f"positive number, got '{raw}'"
                )
            return value

        misrouted = str(own.get("misrouted", "apply")).strip().lower()
        if misrouted not in MISROUTED_ACTIONS:
            raise InvalidArgumentError(
                f"stream source of topic '{source.topic}': {OPTION_PREFIX}misrouted must be one "
                f"of {', '.join(MISROUTED_ACTIONS)}, got '{own['misrouted']}'"
            )
        if misrouted == "dlq" and not dlq:
            raise InvalidArgumentError(
                f"stream source of topic '{source.topic}': {OPTION_PREFIX}misrouted: dlq needs a "
                f"dead-letter topic, but {OPTION_PREFIX}dlq_topic is empty"
            )
        return cls(
            misrouted=misrouted,
            dlq_topic=dlq or None,
            batch_size=int(number("batch_size", 5000)),
            batch_timeout_s=number("batch_timeout_ms", 10) / 1000,
            partitions=partitions,
            shard=Shard.parse(
                own.get("shard_index"),
                own.get("shard_count"),
                what=f"stream source of topic '{source.topic}': "
                f"{OPTION_PREFIX}shard_index / {OPTION_PREFIX}shard_count",
            ),
            commit_interval_s=number("commit_interval_ms", 1000) / 1000,
            kafka=kafka,
        )
