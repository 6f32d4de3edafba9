"""One view's consumer: assignment, the batch loop, dead letters, counters."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from serving import _rust_core
from serving.errors import StorageError
from serving.loaders.kafka.options import (
    CHECK_INTERVAL_S,
    CONSUMER_DEFAULTS,
    ERROR_LOG_INTERVAL_S,
    MAX_BACKOFF_S,
    METADATA_REFRESH_S,
    MISROUTED_HINT,
    NO_TOPIC_ID,
    PRODUCER_DEFAULTS,
    RDKAFKA_LOG,
    TRUNCATION_CHECKS,
    WAITING_LOG_INTERVAL_S,
    LoaderOptions,
    offset_key,
)
from serving.registry import FeatureView
from serving.sharding import Shard
from serving.store import Store

log = logging.getLogger("serving.kafka")


class _DeadLetterError(Exception):
    pass


class Source:
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
        # a broker answered a metadata request at least once: before that nothing about the
        # topic is known, and the lag is unknown however long the broker has been away
        self.reached = False
        # why the topic is not assigned (missing topic, no broker), since when; None: assigned
        self.waiting_for: str | None = None
        self.waiting_since: float | None = None
        self._waiting_logged_at = -math.inf
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
            "logger": RDKAFKA_LOG,
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
            if now - self._errors_logged_at < ERROR_LOG_INTERVAL_S:
                self._errors_unlogged += 1
                return
            left_out, self._errors_unlogged = self._errors_unlogged, 0
            self._errors_logged_at = now
        more = f" ({left_out} more errors in the last {ERROR_LOG_INTERVAL_S:.0f} s)"
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
        with self.lock:
            self.reached = True
        meta = md.topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            why = (
                meta.error.str() if meta is not None and meta.error is not None else "no partitions"
            )
            self.wait(f"topic '{self.topic}' does not exist on {self.bootstrap} ({why})")
            return False
        with self.lock:
            self.waiting_for = self.waiting_since = None
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

    def wait(self, reason: str) -> None:
        """Notes why the topic cannot be assigned; a WARNING at once and every
        ``WAITING_LOG_INTERVAL_S`` while it lasts (the loader keeps retrying every second)."""
        now = time.monotonic()
        with self.lock:
            changed = reason != self.waiting_for
            self.waiting_for = reason
            self.waiting_since = self.waiting_since or now
            since = now - self.waiting_since
            if not changed and now - self._waiting_logged_at < WAITING_LOG_INTERVAL_S:
                return
            self._waiting_logged_at = now
        log.warning(
            "kafka loader: view %s: %s; retrying every second (for %.0f s so far)",
            self.view.name,
            reason,
            since,
        )

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
        if self.store.registry.write_time_views(self.view.name):
            # Derived after the rows they derive from, with the offsets (Store._apply says why).
            entities = batch.entities()
            written, skipped = batch.write(None)
            self.store.on_demand.derive(self.store.core, self.view.name, entities, meta)
        else:
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
            why = "the record has no key: key records with serving.loaders.kafka.encode_key"
        elif not key_ok:
            why = (
                "its record key is not the entity's encoded key (serving.loaders.kafka."
                "encode_key), so the producer placed it by other bytes"
            )
        else:
            why = f"{MISROUTED_HINT} (librdkafka's default, consistent_random, is crc32)"
        return (
            f"misrouted: arrived on partition {m.partition()} but its entity key belongs to "
            f"partition {expected} of {self.num_partitions} (murmur2): {why}"
        )

    def _warn_misrouted(self, msgs: list[Any], misrouted: list[tuple[int, int, bool]]) -> None:
        """One warning per ``ERROR_LOG_INTERVAL_S`` at most, naming the first record."""
        now = time.monotonic()
        with self.lock:
            if now - self._misrouted_logged_at < ERROR_LOG_INTERVAL_S:
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
                if self.suspect[p] >= TRUNCATION_CHECKS:
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
        if new == NO_TOPIC_ID:  # a broker without topic ids (Kafka < 2.8): cannot tell
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
                "waiting_for": self.waiting_for,
            }

    def _lag_total(self, lag: dict[int, int | None]) -> int | None:
        """Messages behind on the assigned partitions; None (not caught up) while a partition's
        lag is unknown and a broker is, or may be, reachable: it is known after the first
        fetch, and until then the partition may hold any number of records. With the broker
        known to be unreachable, partitions never fetched count as 0 and the server's
        broker-timeout rule decides readiness (docs/reliability.md)."""
        known = [v for v in lag.values() if v is not None]
        if not self.reached:
            return None
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
                        self.wait(f"no broker answers at {self.bootstrap} ({e})")
                        assigned = False
                        with self.lock:  # no statistics arrive before an assignment
                            self.broker_up = False
                    next_refresh = now + METADATA_REFRESH_S
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
                    next_check = now + CHECK_INTERVAL_S
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
        return min(backoff * 2, MAX_BACKOFF_S)
