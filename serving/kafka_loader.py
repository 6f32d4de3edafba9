"""The Kafka loader: applies fresh feature values from Kafka topics to the store.

One consumer per feature view with a ``stream_source`` (``features.yaml``), each on its own
thread, inside the server process (:meth:`KafkaLoader.start` / :meth:`KafkaLoader.stop`) or
standalone (``feature-serving ingest``). See ``docs/kafka-loader.md`` for formats, keys,
operations; the short version of how it works:

- **Explicit assignment, offsets in RocksDB.** The consumer ``assign()``s every partition of the
  topic itself (no group join, which costs seconds to tens of seconds and buys nothing when one
  process consumes every partition). It resumes from the offsets stored in the store's meta
  under ``kafka/<view>/<topic>/<partition>`` (the offset of the next record to apply), written
  in the *same* RocksDB write batch as the rows they cover. A crash therefore never loses or
  double-applies a batch; with the merge rule (newer event time wins) a replay would be
  harmless anyway. Without a stored offset a partition is read from its beginning. Offsets are
  also committed to Kafka (asynchronously, about once a second, under the source's
  ``group_id``) so standard lag tools see progress; those commits are informational only.
- **Batches in, Rust decodes and writes.** ``consume(num_messages=...)`` batches are handed to
  :func:`serving._rust_core.decode_batch` (GIL released, split over the cores); bad records come
  back as ``(index, reason)``. They are produced to the dead-letter topic (``<topic>.dlq`` by
  default) and flushed *before* the batch's rows and offsets are written, so a crash cannot
  lose a dead letter; then one atomic write applies the rows, tombstones and offsets.
- **Partitions are checked.** ``decode_batch`` also hashes each row's entity key (murmur2, as
  shard ownership does) over the topic's partition count and reports the records that arrived
  on another partition (a producer without ``partitioner=murmur2_random``): counted as
  ``misrouted``, warned about (rate-limited), and applied, skipped or dead-lettered as
  ``loader.misrouted`` says (default: applied).
- **Failures rewind.** If a batch cannot be applied (store error, dead-letter topic
  unreachable), the consumer is re-assigned at the last applied offsets and the batch is
  retried with a growing back-off: a partition never skips records it did not apply.
- **Broker restarts.** librdkafka reconnects by itself. A broker that lost its log (a
  memory-storage broker restarted, a topic recreated) leaves the stored offset *past* the log
  end; the loader notices (the high watermark of the fetch responses stays below its position
  for two checks in a row, or the topic's id changed after a lost connection), logs it, and
  re-reads the partitions from their beginning (replays are harmless under the merge rule).
  Broker connection state comes from librdkafka's statistics (``seconds_since_broker_contact``
  in the stats; the server's readiness uses it). On Apache Kafka an offset outside the log
  (retention, truncation) is reported by the broker and ``auto.offset.reset=earliest`` does
  the same.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from serving import _rust_core
from serving.errors import InvalidArgumentError, StorageError
from serving.logs import RepeatFilter
from serving.registry import EVENT_TIMESTAMP, FeatureView, StreamSource
from serving.sharding import Shard
from serving.store import Store

__all__ = [
    "DLQ_HEADERS",
    "PRODUCER_DEFAULTS",
    "KafkaLoader",
    "LoaderOptions",
    "add_commands",
    "encode_key",
    "offset_key",
    "produce_deletes",
    "produce_rows",
]

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
_TRUNCATION_CHECKS = 2
_CHECK_INTERVAL_S = 1.0
_METADATA_REFRESH_S = 30.0
_MAX_BACKOFF_S = 10.0
#: librdkafka reports every failed reconnect (many a second while a broker is down): log the
#: first, then at most one line this often with the number left out
_ERROR_LOG_INTERVAL_S = 10.0
#: librdkafka's own lines (``logger`` of every client): repeats collapsed, since a client logs
#: each failed connection attempt, about 20 a second while a broker is down
_RDKAFKA_LOG = logging.getLogger("serving.kafka.rdkafka")
if not any(isinstance(f, RepeatFilter) for f in _RDKAFKA_LOG.filters):
    _RDKAFKA_LOG.addFilter(RepeatFilter(_ERROR_LOG_INTERVAL_S))
#: what the loader does with a record whose entity key belongs to another partition than the one
#: it arrived on (``loader.misrouted``): apply it anyway (default), skip it, or dead-letter it
MISROUTED_ACTIONS = ("apply", "skip", "dlq")
#: the fix named in every misrouted-record warning
MISROUTED_HINT = "producer must use partitioner=murmur2_random"
#: the id of a topic on a broker that has none (base64 of 16 zero bytes)
_NO_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"


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


# --------------------------------------------------------------------------------------------
# one source


class _DeadLetterError(Exception):
    pass


class _Source:
    """One view's consumer: assignment, the batch loop, dead letters, counters."""

    def __init__(
        self,
        store: Store,
        view: FeatureView,
        *,
        bootstrap_servers: str | None,
        overrides: Mapping[str, Any],
        shard: Shard | None = None,
        expected_partitions: int | None = None,
    ) -> None:
        assert view.stream_source is not None
        self.expected_partitions = expected_partitions
        self.store = store
        self.view = view
        self.source = view.stream_source
        self.topic = self.source.topic
        self.format = self.source.format
        self.opts = LoaderOptions.from_source(self.source)
        # the loader's shard (CLI --shard-index/--shard-count) replaces the source's option
        self.shard = shard or self.opts.shard
        self.bootstrap = bootstrap_servers or self.source.bootstrap_servers
        self.overrides = dict(overrides)
        self.lock = threading.Lock()
        # next offset to apply per assigned partition; None = from the beginning
        self.next: dict[int, int | None] = {}
        self.high: dict[int, int] = {}
        self.suspect: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "records",
                "applied",
                "skipped_older",
                "upserts",
                "tombstones",
                "ignored",
                "errors",
                "dead_lettered",
                "batches",
                "failed_batches",
                "resets",
                "misrouted",
            ),
            0,
        )
        # the topic's partition count (metadata at each assignment): the misrouted-record check
        self.num_partitions: int | None = None
        self._misrouted_logged_at = -math.inf
        self._misrouted_unlogged = 0
        self.newest_event_us: int | None = None
        self.last_error: str | None = None
        self.last_record_at = 0.0
        self.started_at = time.monotonic()
        # last statistics (every statistics.interval.ms) that showed a broker connection up;
        # None until the first one; broker_up: the newest statistics showed one
        self.broker_contact_at: float | None = None
        self.broker_up: bool | None = None
        self._errors_logged_at = -math.inf
        self._errors_unlogged = 0
        # the topic's id as last seen, checked again after a lost connection and at every
        # metadata refresh: a new id is a new log (see _verify_topic)
        self.topic_id: str | None = None
        self.verify_topic = True
        self.admin: Any = None
        self.consumer: Any = None
        self.producer: Any = None
        self.dlq_failures: list[str] = []
        # False when `options:` set statistics.interval.ms to 0: no connection states then
        self.tracks_brokers = int(self.consumer_conf().get("statistics.interval.ms") or 0) > 0

    # -- configuration -----------------------------------------------------------------------

    def _base_conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": f"feature-serving-{self.view.name}",
            "logger": _RDKAFKA_LOG,
        }
        return conf

    def consumer_conf(self) -> dict[str, Any]:
        conf = self._base_conf()
        conf["group.id"] = self.source.group_id
        conf.update(CONSUMER_DEFAULTS)
        conf.update(self.opts.kafka)
        conf.update(self.overrides)
        conf["error_cb"] = self._on_kafka_error
        conf["stats_cb"] = self._on_kafka_stats
        return conf

    def producer_conf(self) -> dict[str, Any]:
        conf = self._base_conf()
        conf.update(PRODUCER_DEFAULTS)
        return self._client_conf(conf)

    def _client_conf(self, conf: dict[str, Any]) -> dict[str, Any]:
        # Consumer-only settings would make librdkafka warn at every start.
        for k, v in {**self.opts.kafka, **self.overrides}.items():
            if not k.startswith(("group.", "fetch.", "auto.", "enable.", "isolation.", "max.poll")):
                conf[k] = v
        return conf

    def _on_kafka_error(self, err: Any) -> None:
        # Transport errors are retried by librdkafka; they are logged (rate-limited), not raised.
        now = time.monotonic()
        with self.lock:
            self.last_error = str(err)
            if now - self._errors_logged_at < _ERROR_LOG_INTERVAL_S:
                self._errors_unlogged += 1
                return
            left_out, self._errors_unlogged = self._errors_unlogged, 0
            self._errors_logged_at = now
        more = f" ({left_out} more errors in the last {_ERROR_LOG_INTERVAL_S:.0f} s)"
        log.warning(
            "kafka (%s, topic %s): %s%s", self.view.name, self.topic, err, more if left_out else ""
        )

    def _on_kafka_stats(self, raw: str) -> None:
        """Notes whether any broker connection is up (``state`` of each broker in librdkafka's
        statistics; the logical group coordinator and the internal broker do not count)."""
        try:
            brokers = json.loads(raw).get("brokers", {}).values()
            up = any(
                b.get("state") == "UP" and b.get("source") not in ("logical", "internal")
                for b in brokers
            )
        except (ValueError, AttributeError):
            return
        now = time.monotonic()
        with self.lock:
            if up and self.broker_up is False:
                log.info("kafka loader: view %s: broker connection is back", self.view.name)
            elif not up and self.broker_up is not False:
                log.warning("kafka loader: view %s: no broker connection", self.view.name)
            self.broker_up = up
            if up:
                self.broker_contact_at = now
            else:
                self.verify_topic = True  # the broker may come back with another log

    # -- assignment --------------------------------------------------------------------------

    def _stored_offset(self, partition: int) -> int | None:
        raw = self.store.get_meta(offset_key(self.view.name, self.topic, partition))
        return int(raw) if raw is not None else None

    def assign(self) -> bool:
        """(Re)assigns every partition at its next offset; False while the topic is unknown."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        md = self.consumer.list_topics(self.topic, timeout=5.0)
        meta = md.topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return False
        parts = sorted(meta.partitions)
        self.num_partitions = len(parts)
        if self.expected_partitions is not None and len(parts) != self.expected_partitions:
            log.error(
                "kafka loader: topic %s has %d partitions but this node was configured with "
                "--topic-partitions %d: its shard ownership check disagrees with the topic; "
                "fix the setting",
                self.topic,
                len(parts),
                self.expected_partitions,
            )
        if self.opts.partitions is not None:
            parts = [p for p in parts if p in self.opts.partitions]
        if self.shard is not None:
            owned = self.shard.partitions(parts)
            if not owned:
                log.warning(
                    "kafka loader: view %s is %s but %s has only %d partition(s): it owns none",
                    self.view.name,
                    self.shard,
                    self.topic,
                    len(meta.partitions),
                )
            parts = owned
        for p in parts:
            if p not in self.next:
                self.next[p] = self._stored_offset(p)
        for p in list(self.next):
            if p not in parts:  # a partition that went away
                del self.next[p]
        self.consumer.assign(
            [
                TopicPartition(self.topic, p, o if o is not None else OFFSET_BEGINNING)
                for p, o in sorted(self.next.items())
            ]
        )
        log.info(
            "kafka loader: view %s consumes %s partitions %s from offsets %s",
            self.view.name,
            self.topic,
            parts,
            {p: ("beginning" if o is None else o) for p, o in sorted(self.next.items())},
        )
        return True

    # -- the batch ---------------------------------------------------------------------------

    def apply(self, msgs: list[Any]) -> None:
        records = [
            (m.key(), m.value(), m.partition(), m.offset(), m.timestamp()[1])
            for m in msgs
            if m.error() is None
        ]
        if len(records) != len(msgs):
            for m in msgs:
                if m.error() is not None:
                    self._on_kafka_error(m.error())
            msgs = [m for m in msgs if m.error() is None]
        if not records:
            return
        batch = _rust_core.decode_batch(
            self.store.core,
            self.view.name,
            self.format,
            records,
            num_partitions=self.num_partitions,
            drop_misrouted=self.opts.misrouted != "apply",
        )
        errors = batch.errors
        misrouted = batch.misrouted
        if errors:
            self._log_bad(msgs, errors)
        if misrouted:
            self._warn_misrouted(msgs, misrouted)
        letters = list(errors)
        if misrouted and self.opts.misrouted == "dlq":
            letters += [
                (i, self._misrouted_reason(msgs[i], expected, key_ok))
                for i, expected, key_ok in misrouted
            ]
        if letters:
            self._dead_letter(msgs, letters)
        meta = [
            (offset_key(self.view.name, self.topic, p), str(o).encode())
            for p, o in batch.next_offsets
        ]
        written, skipped = batch.write(meta)
        now = time.monotonic()
        with self.lock:
            for p, o in batch.next_offsets:
                self.next[p] = o
            c = self.counters
            c["records"] += len(records)
            c["applied"] += written
            c["skipped_older"] += skipped
            c["upserts"] += batch.upserts
            c["tombstones"] += batch.tombstones
            c["ignored"] += batch.ignored
            c["errors"] += len(errors)
            c["misrouted"] += len(misrouted)
            c["batches"] += 1
            ts = batch.max_event_ts
            if ts is not None and (self.newest_event_us is None or ts > self.newest_event_us):
                self.newest_event_us = ts
            self.last_record_at = now

    def _misrouted_reason(self, m: Any, expected: int, key_ok: bool) -> str:
        if m.key() is None:
            why = "the record has no key: key records with serving.kafka_loader.encode_key"
        elif not key_ok:
            why = (
                "its record key is not the entity's encoded key (serving.kafka_loader."
                "encode_key), so the producer placed it by other bytes"
            )
        else:
            why = f"{MISROUTED_HINT} (librdkafka's default, consistent_random, is crc32)"
        return (
            f"misrouted: arrived on partition {m.partition()} but its entity key belongs to "
            f"partition {expected} of {self.num_partitions} (murmur2): {why}"
        )

    def _warn_misrouted(self, msgs: list[Any], misrouted: list[tuple[int, int, bool]]) -> None:
        """One warning per ``_ERROR_LOG_INTERVAL_S`` at most, naming the first record."""
        now = time.monotonic()
        with self.lock:
            if now - self._misrouted_logged_at < _ERROR_LOG_INTERVAL_S:
                self._misrouted_unlogged += len(misrouted)
                return
            left_out, self._misrouted_unlogged = self._misrouted_unlogged, 0
            self._misrouted_logged_at = now
        i, expected, key_ok = misrouted[0]
        m = msgs[i]
        action = {
            "apply": "applied anyway (loader.misrouted: apply)",
            "skip": "not applied (loader.misrouted: skip)",
            "dlq": f"sent to {self.opts.dlq_topic} (loader.misrouted: dlq)",
        }[self.opts.misrouted]
        more = f"; {left_out} more since the last warning" if left_out else ""
        log.warning(
            "kafka loader: view %s: %d record(s) of topic %s in this batch arrived on the wrong "
            "partition, e.g. %s[%d]@%d: %s; sharded nodes refuse such keys and the owning "
            "shard never gets them; %s%s",
            self.view.name,
            len(misrouted),
            self.topic,
            self.topic,
            m.partition(),
            m.offset(),
            self._misrouted_reason(m, expected, key_ok),
            action,
            more,
        )

    def _log_bad(self, msgs: list[Any], errors: list[tuple[int, str]]) -> None:
        for i, reason in errors[:3]:
            m = msgs[i]
            log.warning(
                "kafka loader: view %s: bad record %s[%d]@%d: %s",
                self.view.name,
                self.topic,
                m.partition(),
                m.offset(),
                reason,
            )
        if len(errors) > 3:
            log.warning(
                "kafka loader: view %s: %d more bad records", self.view.name, len(errors) - 3
            )

    def _dead_letter(self, msgs: list[Any], errors: list[tuple[int, str]]) -> None:
        """Produces ``errors`` (bad or misrouted records: ``(index, reason)``) to the dead-letter
        topic and waits until each is delivered."""
        if self.opts.dlq_topic is None:
            return
        if self.producer is None:
            from confluent_kafka import Producer

            self.producer = Producer(self.producer_conf())
        self.dlq_failures = []
        for i, reason in errors:
            m = msgs[i]
            headers = list(m.headers() or [])
            headers += [
                ("dlq.source.topic", self.topic.encode()),
                ("dlq.source.partition", str(m.partition()).encode()),
                ("dlq.source.offset", str(m.offset()).encode()),
                ("dlq.error", reason.encode()),
                ("dlq.feature_view", self.view.name.encode()),
            ]
            while True:
                try:
                    self.producer.produce(
                        self.opts.dlq_topic,
                        key=m.key(),
                        value=m.value(),
                        headers=headers,
                        on_delivery=self._on_dlq_delivery,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)
        remaining = self.producer.flush(30.0)
        if remaining or self.dlq_failures:
            raise _DeadLetterError(
                f"could not deliver {remaining + len(self.dlq_failures)} dead letter(s) to "
                f"'{self.opts.dlq_topic}': {'; '.join(self.dlq_failures[:3]) or 'timeout'}"
            )
        with self.lock:
            self.counters["dead_lettered"] += len(errors)

    def _on_dlq_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.dlq_failures.append(str(err))

    # -- housekeeping ------------------------------------------------------------------------

    def check_partitions(self) -> None:
        """Updates high watermarks and lag; re-reads partitions whose log was truncated."""
        from confluent_kafka import TopicPartition

        if self.verify_topic and self.broker_up is not False:
            self._verify_topic()
        reset = []
        for p, nxt in list(self.next.items()):
            try:
                _, hi = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), cached=True
                )
            except Exception:  # no fetch yet or unknown partition
                continue
            if hi is None or hi < 0:
                continue
            self.high[p] = hi
            if nxt is not None and nxt > hi:
                self.suspect[p] = self.suspect.get(p, 0) + 1
                if self.suspect[p] >= _TRUNCATION_CHECKS:
                    reset.append((p, nxt, hi))
            else:
                self.suspect.pop(p, None)
        if reset:
            for p, nxt, hi in reset:
                log.warning(
                    "kafka loader: view %s: %s[%d] ends at offset %d but the store has applied "
                    "up to %d: the broker lost its log (restart of a memory broker, topic "
                    "recreated); re-reading the partition from its beginning",
                    self.view.name,
                    self.topic,
                    p,
                    hi,
                    nxt,
                )
                self.next[p] = None
                self.suspect.pop(p, None)
            with self.lock:
                self.counters["resets"] += len(reset)
            self.assign()

    def _verify_topic(self) -> None:
        """Compares the topic's id with the one seen before. A new id is a new log (topic
        deleted and recreated, memory broker restarted): its offsets say nothing about what
        was applied, so every partition is re-read from its beginning. This catches what the
        watermark check cannot: a new log that is already as long as the old position."""
        from confluent_kafka import TopicCollection
        from confluent_kafka.admin import AdminClient

        if self.admin is None:
            self.admin = AdminClient(self._client_conf(self._base_conf()))
        try:
            futures = self.admin.describe_topics(TopicCollection([self.topic]), request_timeout=2)
            new = str(futures[self.topic].result(3.0).topic_id)
        except Exception as e:  # broker or topic not back yet: at the next check
            log.debug("kafka loader: view %s: topic id not known: %s", self.view.name, e)
            return
        self.verify_topic = False
        if new == _NO_TOPIC_ID:  # a broker without topic ids (Kafka < 2.8): cannot tell
            return
        if self.topic_id is not None and new != self.topic_id and self.next:
            log.warning(
                "kafka loader: view %s: topic %s has a new id (%s, was %s): the broker lost its "
                "log (restart of a memory broker, topic recreated); re-reading every partition "
                "from its beginning",
                self.view.name,
                self.topic,
                new,
                self.topic_id,
            )
            for p in self.next:
                self.next[p] = None
            self.suspect.clear()
            with self.lock:
                self.counters["resets"] += len(self.next)
            self.topic_id = new
            self.assign()
        self.topic_id = new

    def commit(self, *, asynchronous: bool = True) -> None:
        from confluent_kafka import TopicPartition

        offsets = [
            TopicPartition(self.topic, p, o)
            for p, o in sorted(self.next.items())
            if o is not None and self.committed.get(p) != o
        ]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
            for tp in offsets:
                self.committed[tp.partition] = tp.offset
        except Exception as e:  # informational commits must not stop loading
            log.debug("kafka loader: commit to Kafka failed: %s", e)

    def lag(self) -> dict[int, int | None]:
        out: dict[int, int | None] = {}
        for p, nxt in sorted(self.next.items()):
            hi = self.high.get(p)
            out[p] = None if hi is None else max(hi - (nxt or 0), 0)
        return out

    def caught_up(self) -> bool:
        if not self.next:
            return False
        lag = self.lag()
        return all(v == 0 for v in lag.values())

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            lag = self.lag()
            newest = self.newest_event_us
            return {
                "view": self.view.name,
                "topic": self.topic,
                "format": self.format,
                "dlq_topic": self.opts.dlq_topic,
                **self.counters,
                "lag": lag,
                "lag_total": self._lag_total(lag),
                "offsets": dict(sorted(self.next.items())),
                "newest_event_time": None if newest is None else newest / 1e6,
                "seconds_since_last_record": (
                    None if not self.last_record_at else time.monotonic() - self.last_record_at
                ),
                "last_error": self.last_error,
                "broker_up": self.broker_up,
                "seconds_since_broker_contact": self._since_contact(),
            }

    def _lag_total(self, lag: dict[int, int | None]) -> int | None:
        """Messages behind on the assigned partitions; None (not caught up) while a partition's
        lag is unknown and a broker is, or may be, reachable: it is known after the first
        fetch, and until then the partition may hold any number of records. With the broker
        known to be unreachable, partitions never fetched count as 0 and the server's
        broker-timeout rule decides readiness (docs/reliability.md)."""
        known = [v for v in lag.values() if v is not None]
        if (not lag or len(known) < len(lag)) and self.broker_up is not False:
            return None
        return sum(known)

    def _since_contact(self) -> float | None:
        """Seconds since statistics last showed a broker connection up (since the start while
        none did); None when statistics are off."""
        if not self.tracks_brokers:
            return None
        return time.monotonic() - (self.broker_contact_at or self.started_at)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        from confluent_kafka import Consumer

        self.consumer = Consumer(self.consumer_conf())
        backoff = 0.5
        assigned = False
        next_check = next_commit = next_refresh = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if not assigned or now >= next_refresh:
                    try:
                        assigned = self.assign()
                    except Exception as e:  # broker down at start: retry
                        log.warning("kafka loader: view %s: %s", self.view.name, e)
                        assigned = False
                        with self.lock:  # no statistics arrive before an assignment
                            self.broker_up = False
                    next_refresh = now + _METADATA_REFRESH_S
                    self.verify_topic = True
                    if not assigned:
                        next_refresh = now + 1.0
                        stop.wait(1.0)
                        continue
                msgs = self.consumer.consume(self.opts.batch_size, self.opts.batch_timeout_s)
                if msgs:
                    try:
                        self.apply(msgs)
                        backoff = 0.5
                    except StorageError as e:
                        if self.store.closed:
                            log.info("kafka loader: store closed, view %s stops", self.view.name)
                            return
                        backoff = self._failed(e, backoff, stop)
                    except Exception as e:  # retried after a rewind
                        backoff = self._failed(e, backoff, stop)
                now = time.monotonic()
                if now >= next_check:
                    self.check_partitions()
                    next_check = now + _CHECK_INTERVAL_S
                if now >= next_commit:
                    self.commit()
                    next_commit = now + self.opts.commit_interval_s
        finally:
            self.commit(asynchronous=False)
            self.consumer.close()
            self.admin = None
            if self.producer is not None:
                self.producer.flush(5.0)

    def _failed(self, e: Exception, backoff: float, stop: threading.Event) -> float:
        log.error(
            "kafka loader: view %s: batch not applied, retrying in %.1f s: %s",
            self.view.name,
            backoff,
            e,
        )
        with self.lock:
            self.counters["failed_batches"] += 1
            self.last_error = str(e)
        stop.wait(backoff)
        try:
            self.assign()  # rewind to the last applied offsets
        except Exception as e2:
            log.warning("kafka loader: view %s: re-assign failed: %s", self.view.name, e2)
        return min(backoff * 2, _MAX_BACKOFF_S)


# --------------------------------------------------------------------------------------------
# the loader


class KafkaLoader:
    """Consumes the stream sources of ``views`` (default: every online view with one) into
    ``store``, each on a background thread.

    ``bootstrap_servers`` overrides every source's brokers; ``kafka_config`` adds librdkafka
    settings to every consumer (after the source's own ``options``). ``shard`` makes every
    consumer take only the partitions that shard owns (``p % count == index``), replacing the
    sources' ``loader.shard_index`` / ``loader.shard_count``. ``expected_partitions`` (the
    server's ``--topic-partitions``) logs an error when a topic has another partition count.
    """

    def __init__(
        self,
        store: Store,
        views: Sequence[str] | None = None,
        *,
        bootstrap_servers: str | None = None,
        kafka_config: Mapping[str, Any] | None = None,
        shard: Shard | None = None,
        expected_partitions: int | None = None,
    ) -> None:
        registry = store.registry
        if views is None:
            chosen = [
                v
                for v in registry.feature_views.values()
                if v.stream_source is not None and v.online
            ]
        else:
            chosen = [registry.view(n) for n in views]
            missing = [v.name for v in chosen if v.stream_source is None]
            if missing:
                raise InvalidArgumentError(
                    f"feature view(s) {', '.join(missing)} have no stream_source"
                )
        self.store = store
        self.sources = [
            _Source(
                store,
                v,
                bootstrap_servers=bootstrap_servers,
                overrides=kafka_config or {},
                shard=shard,
                expected_partitions=expected_partitions,
            )
            for v in chosen
        ]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self) -> None:
        """Starts one consumer thread per source (no-op without sources)."""
        if self._threads:
            raise RuntimeError("the loader was already started")
        self._stop.clear()
        for s in self.sources:
            t = threading.Thread(
                target=self._run_source, args=(s,), name=f"kafka-loader-{s.view.name}", daemon=True
            )
            self._threads.append(t)
            t.start()

    def _run_source(self, s: _Source) -> None:
        try:
            s.run(self._stop)
        except Exception:
            log.exception("kafka loader: view %s stopped on an unexpected error", s.view.name)

    def request_stop(self) -> None:
        """Asks every consumer to stop after its current batch (safe from a signal handler)."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stops every consumer after its current batch (applied, offsets stored and committed).
        Returns False if a thread did not finish within ``timeout`` seconds."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("kafka loader: %s did not stop within %.1f s", ", ".join(alive), timeout)
        return not alive

    def caught_up(self) -> bool:
        """True when every source has applied up to the end of each of its partitions."""
        return bool(self.sources) and all(s.caught_up() for s in self.sources)

    def wait_caught_up(self, timeout: float, *, poll: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.caught_up():
                return True
            time.sleep(poll)
        return self.caught_up()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Counters per view: records, applied, skipped_older, upserts, tombstones, ignored,
        errors, misrouted (records on another partition than their key's), dead_lettered,
        batches, failed_batches, resets; ``lag`` per partition (None until the first fetch),
        ``lag_total`` (None while an assigned partition's lag is unknown and the broker is not
        known to be down), ``offsets`` (next to apply), ``newest_event_time`` (unix seconds),
        ``seconds_since_last_record``, ``last_error``, ``broker_up`` (the newest librdkafka
        statistics showed a broker connection up; None before the first),
        ``seconds_since_broker_contact`` (since statistics last showed one up, or since the
        start; None when ``statistics.interval.ms`` is 0)."""
        return {s.view.name: s.snapshot() for s in self.sources}

    def run(
        self,
        *,
        stop_when_idle: float | None = None,
        stats_interval: float | None = None,
        on_stats: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    ) -> None:
        """Runs in the foreground until :meth:`stop` (or a signal handler calling it), or until
        every source has been caught up and without new records for ``stop_when_idle`` s."""
        self.start()
        next_stats = time.monotonic() + (stats_interval or math.inf)
        idle_since: float | None = None
        try:
            while self.running and not self._stop.wait(0.1):
                now = time.monotonic()
                if stats_interval and now >= next_stats and on_stats is not None:
                    on_stats(self.stats())
                    next_stats = now + stats_interval
                if stop_when_idle is not None:
                    quiet = all(
                        s.last_record_at == 0 or now - s.last_record_at >= stop_when_idle
                        for s in self.sources
                    )
                    if self.caught_up() and quiet:
                        idle_since = idle_since or now
                        if now - idle_since >= min(stop_when_idle, 1.0):
                            break
                    else:
                        idle_since = None
        finally:
            self.stop()


# --------------------------------------------------------------------------------------------
# producing (tests, benchmarks, backfills from Python)


def encode_key(view: FeatureView, values: Sequence[int | str | bytes]) -> bytes:
    """The record key of an entity of ``view``: its join-key values in the view's order,
    encoded like the store's entity keys (what a tombstone must carry)."""
    return _rust_core.encode_entity_key([k.dtype for k in view.join_keys], list(values))


def _micros(v: Any) -> int:
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.UTC)
        delta: dt.timedelta = v - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(v, int) and not isinstance(v, bool):
        return int(v)
    raise InvalidArgumentError(f"event timestamp must be a datetime or int microseconds, got {v!r}")


def _rows(
    data: pa.Table | pa.RecordBatch | Iterable[Mapping[str, Any]],
) -> Iterable[Mapping[str, Any]]:
    if isinstance(data, pa.Table | pa.RecordBatch):
        for batch in data.to_batches() if isinstance(data, pa.Table) else [data]:
            yield from batch.to_pylist()
    else:
        yield from data


def _json_value(dtype: str, v: Any) -> Any:
    if v is None:
        return None
    if dtype == "bytes":
        return base64.b64encode(v).decode()
    if dtype == "timestamp":
        return _micros(v)
    return v


def _encode_json(view: FeatureView, row: Mapping[str, Any]) -> bytes:
    obj: dict[str, Any] = {}
    for k in view.join_keys:
        v = row[k.name]
        obj[k.name] = base64.b64encode(v).decode() if k.dtype == "bytes" else v
    obj[EVENT_TIMESTAMP] = _micros(row[EVENT_TIMESTAMP])
    for f in view.features:
        if f.name in row:
            obj[f.name] = _json_value(f.dtype, row[f.name])
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _encode_protobuf(view: FeatureView, row: Mapping[str, Any]) -> bytes:
    from serving._proto.feature_serving.v1 import feature_row_pb2 as pb

    msg = pb.FeatureRow(event_timestamp_micros=_micros(row[EVENT_TIMESTAMP]))
    for k in view.join_keys:
        ev = msg.join_keys[k.name]
        setattr(
            ev,
            {
                "int64": "int64_value",
                "int32": "int32_value",
                "string": "string_value",
                "bytes": "bytes_value",
            }[k.dtype],
            row[k.name],
        )
    for f in view.features:
        if f.name not in row:
            continue
        v = row[f.name]
        fv = msg.features[f.name]
        if v is None:
            fv.null_value.SetInParent()
        elif f.dtype == "float32_array":
            fv.float_array_value.values.extend(v)
        elif f.dtype == "timestamp":
            fv.timestamp_micros_value = _micros(v)
        else:
            name = {"float32": "float_value", "float64": "double_value"}.get(
                f.dtype, f"{f.dtype}_value"
            )
            setattr(fv, name, v)
    return bytes(msg.SerializeToString())


def produce_rows(
    producer: Any,
    view: FeatureView,
    rows: pa.Table | pa.RecordBatch | Iterable[Mapping[str, Any]],
    format: str | None = None,
    *,
    topic: str | None = None,
    flush: bool = True,
) -> int:
    """Produces rows of ``view`` (join keys, ``event_timestamp`` as datetime or int
    microseconds, features by name; absent features are null) as records the loader reads:
    the key is :func:`encode_key` of the row, the value JSON or a ``FeatureRow``. ``format``
    and ``topic`` default to the view's stream source. Create the producer with
    :data:`PRODUCER_DEFAULTS` so that keys are partitioned like the Java client does.
    Returns the number of records produced (flushed unless ``flush=False``)."""
    src = view.stream_source
    topic = topic or (src.topic if src else None)
    fmt = format or (src.format if src else "json")
    if topic is None:
        raise InvalidArgumentError(f"feature view '{view.name}' has no stream_source: give a topic")
    encode = {"json": _encode_json, "protobuf": _encode_protobuf}.get(fmt)
    if encode is None:
        raise InvalidArgumentError(f"unknown format '{fmt}' (json or protobuf)")
    n = 0
    for row in _rows(rows):
        key = encode_key(view, [row[k.name] for k in view.join_keys])
        _produce(producer, topic, key, encode(view, row))
        n += 1
    if flush:
        producer.flush()
    return n


def produce_deletes(
    producer: Any,
    view: FeatureView,
    keys: Iterable[Sequence[int | str | bytes]],
    *,
    timestamp: dt.datetime | int | None = None,
    topic: str | None = None,
    flush: bool = True,
) -> int:
    """Produces tombstones (null values) deleting the entities ``keys`` (join-key values in
    the view's order). The delete is timed by the record's timestamp: ``timestamp`` (datetime
    or int milliseconds), default now."""
    src = view.stream_source
    topic = topic or (src.topic if src else None)
    if topic is None:
        raise InvalidArgumentError(f"feature view '{view.name}' has no stream_source: give a topic")
    if isinstance(timestamp, dt.datetime):
        ts_ms: int | None = _micros(timestamp) // 1000
    else:
        ts_ms = timestamp
    n = 0
    for values in keys:
        _produce(producer, topic, encode_key(view, values), None, ts_ms)
        n += 1
    if flush:
        producer.flush()
    return n


def _produce(
    producer: Any, topic: str, key: bytes, value: bytes | None, ts_ms: int | None = None
) -> None:
    kwargs: dict[str, Any] = {"key": key, "value": value}
    if ts_ms is not None:
        kwargs["timestamp"] = ts_ms
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


# --------------------------------------------------------------------------------------------
# CLI


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Registers ``ingest`` on the CLI's subparsers (``common`` defines --config, --data-dir)."""
    p = subparsers.add_parser(
        "ingest",
        parents=[common],
        help="consume the Kafka stream sources into the store (standalone loader)",
        description="Consume each view's Kafka stream source into the store until stopped "
        "(SIGTERM / Ctrl-C finish the current batch). Use it when no server runs; `serve` "
        "runs the same loader in-process.",
    )
    p.add_argument(
        "views", nargs="*", help="feature views to consume (default: all with a stream source)"
    )
    p.add_argument("--bootstrap-servers", help="override every source's bootstrap servers")
    p.add_argument(
        "--stop-when-idle",
        type=float,
        metavar="SECONDS",
        help="exit once every partition is consumed to its end and no record came for SECONDS",
    )
    p.add_argument(
        "--stats-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="log counters this often (0: never; default 10)",
    )
    p.add_argument("--log-level", default=os.environ.get("FS_LOG_LEVEL", "info"))
    p.add_argument(
        "--shard-index",
        type=int,
        metavar="K",
        help="this node is shard K of --shard-count: consume only partitions p with p %% N == K",
    )
    p.add_argument(
        "--shard-count", type=int, metavar="N", help="number of shards (with --shard-index)"
    )
    p.add_argument(
        "--restore-from",
        metavar="SNAPSHOT_DIR",
        help="first copy this snapshot (`feature-serving snapshot create`) into the data "
        "directory, which must be empty or absent; consumption resumes at its offsets",
    )
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    data_dir = args.data_dir or os.environ.get("FS_DATA_DIR") or ".data/store"
    config = args.config or os.environ.get("FS_CONFIG") or "features.yaml"
    shard = Shard.parse(args.shard_index, args.shard_count, what="--shard-index / --shard-count")
    if args.restore_from:
        from serving.snapshot import restore

        restore(args.restore_from, data_dir)
    store = Store(data_dir, config)
    with store:
        loader = KafkaLoader(
            store, args.views or None, bootstrap_servers=args.bootstrap_servers, shard=shard
        )
        if not loader.sources:
            print("error: no feature view has a stream_source", file=sys.stderr)
            return 1

        def on_signal(signum: int, _frame: Any) -> None:
            log.info(
                "kafka loader: %s, stopping after the current batch", signal.Signals(signum).name
            )
            loader.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("kafka loader: started for %s", ", ".join(s.view.name for s in loader.sources))
        loader.run(
            stop_when_idle=args.stop_when_idle,
            stats_interval=args.stats_interval or None,
            on_stats=lambda st: log.info("kafka loader: %s", json.dumps(_brief(st))),
        )
        log.info("kafka loader: stopped: %s", json.dumps(_brief(loader.stats())))
    return 0


def _brief(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    keys = (
        "records",
        "applied",
        "skipped_older",
        "errors",
        "misrouted",
        "dead_lettered",
        "lag_total",
        "resets",
    )
    return {view: {k: s[k] for k in keys} for view, s in stats.items()}
