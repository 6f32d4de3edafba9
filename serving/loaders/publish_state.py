"""How far ``materialize-incremental --via-kafka`` has published each view: a compacted Kafka topic.

A ``--via-kafka`` run writes no store. It may run where no store exists at all: publishing
needs only the registry. So the watermark of what was published cannot live in a local store
(a job pod's disk is gone at the next run, and another machine's store says nothing about the
topic). It lives next to the data it describes, on the same Kafka cluster as the view's stream
topic, in one compacted topic (default :data:`STATE_TOPIC`). There is one record per
(stream topic, view), keyed ``<topic>/<view>``, as Kafka Connect keeps source offsets in its
``connect-offsets`` topic. The latest record of a key is the state (compaction keeps just that),
and a tombstone (null value) for the key clears it, so the next run publishes from the beginning.

The value is JSON::

    {"format": 1, "topic": "users", "view": "users", "source_type": "parquet",
     "source_path": "data/users", "watermark": "2024-01-02T00:00:00.000000Z",
     "delta_version": null, "published": 2000, "recorded_at": "2024-01-02T00:00:05.1Z"}

``watermark``: Parquet sources, every row with an event time before it was published.
``delta_version``: Delta sources, every file live at that table version was published. A run
records its state only after the broker acknowledged every record it produced (flush, every
delivery report without error). A crash in between leaves the old state, and the next run
publishes the same rows again. That is harmless under the merge rule: the nodes keep the
newer row of a key, and for equal event times always the same one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from serving.errors import InvalidArgumentError, StorageError

__all__ = ["STATE_TOPIC", "PublishState", "StateTopic", "check_topic", "state_key"]

log = logging.getLogger("serving.batch_loader")

#: default name of the compacted topic holding the published watermarks
STATE_TOPIC = "feature-serving.batch-state"
#: version of the record layout
_FORMAT = 1


def state_key(topic: str, view: str) -> bytes:
    """Key of the state record of ``view`` published to ``topic`` (topic names have no ``/``).

    The stream topic is part of the key: a view moved to a new topic (a new partition count,
    ``docs/scale-out.md``) starts from the beginning there, as it must."""
    return f"{topic}/{view}".encode()


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    t = dt.datetime.fromisoformat(text)
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


@dataclass(frozen=True)
class PublishState:
    """What was published of one view's batch source to its stream topic."""

    topic: str
    view: str
    source_type: str
    source_path: str
    #: Parquet: rows with an event time before this were published
    watermark: dt.datetime | None = None
    #: Delta: every file live at this table version was published
    delta_version: int | None = None
    #: Iceberg (snapshot id) / Hudi (instant): the same
    table_version: int | None = None
    #: rows the run that recorded this state published
    published: int = 0
    recorded_at: dt.datetime | None = None

    def to_json(self) -> bytes:
        d = asdict(self)
        d["watermark"] = _iso(self.watermark) if self.watermark else None
        d["recorded_at"] = _iso(self.recorded_at or dt.datetime.now(dt.UTC))
        return json.dumps({"format": _FORMAT, **d}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PublishState:
        d = json.loads(raw)
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(f"not a state record of format {_FORMAT}")
        version = d.get("delta_version")
        table_version = d.get("table_version")
        return cls(
            topic=str(d["topic"]),
            view=str(d["view"]),
            source_type=str(d.get("source_type", "")),
            source_path=str(d.get("source_path", "")),
            watermark=_time(d.get("watermark")),
            delta_version=int(version) if version is not None else None,
            table_version=int(table_version) if table_version is not None else None,
            published=int(d.get("published") or 0),
            recorded_at=_time(d.get("recorded_at")),
        )

    def describe(self) -> str:
        if self.delta_version is not None:
            return f"Delta version {self.delta_version}"
        if self.table_version is not None:
            what = {"iceberg": "Iceberg snapshot", "hudi": "Hudi instant"}
            return f"{what.get(self.source_type, 'version')} {self.table_version}"
        if self.watermark is not None:
            return f"watermark {_iso(self.watermark)}"
        return "nothing"


def _unreachable(conf: Mapping[str, Any], what: str, timeout: float, e: Exception) -> StorageError:
    from confluent_kafka import KafkaError

    err = e.args[0] if e.args else None
    detail = err.str() if isinstance(err, KafkaError) else str(e)
    return StorageError(
        f"cannot reach the Kafka brokers {conf.get('bootstrap.servers')} within "
        f"{timeout:g} s ({what}): {detail}"
    )


def _describe(admin: Any, topic: str, conf: Mapping[str, Any], timeout: float) -> Any | None:
    """The topic's description, None if it does not exist. Unlike a metadata request, this
    never makes a broker auto-create the topic."""
    from confluent_kafka import KafkaError, KafkaException, TopicCollection

    try:
        futures = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)
        return futures[topic].result(timeout + 1)
    except KafkaException as e:
        err = e.args[0] if e.args else None
        if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return None
        raise _unreachable(conf, f"describing topic '{topic}'", timeout, e) from None


def check_topic(conf: Mapping[str, Any], topic: str, view: str, timeout: float) -> int:
    """Fails clearly, within ``timeout`` seconds, unless ``topic`` exists and the brokers
    answer; returns its partition count. (Producing to a missing topic would leave the records
    waiting, or let a broker auto-create the topic with its default partition count, which is
    not the one the shards were planned with.)"""
    from confluent_kafka.admin import AdminClient

    description = _describe(AdminClient(dict(conf)), topic, conf, timeout)
    if description is None:
        raise InvalidArgumentError(
            f"feature view '{view}': its stream topic '{topic}' does not exist on "
            f"{conf.get('bootstrap.servers')}; create it with the partition count the nodes "
            f"expect (docs/scale-out.md)"
        )
    return len(description.partitions)


class StateTopic:
    """The state topic on one Kafka cluster (``conf``: librdkafka connection settings)."""

    def __init__(self, conf: Mapping[str, Any], name: str, timeout: float) -> None:
        if not name or "/" in name:
            raise InvalidArgumentError(f"invalid state topic name '{name}'")
        self.conf = dict(conf)
        self.name = name
        self.timeout = timeout
        self._states: dict[bytes, PublishState] | None = None

    def ensure(self) -> None:
        """Creates the topic (one partition, ``cleanup.policy=compact``) if it does not exist."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        admin = AdminClient(dict(self.conf))
        if _describe(admin, self.name, self.conf, self.timeout) is not None:
            return
        new = NewTopic(self.name, num_partitions=1, config={"cleanup.policy": "compact"})
        try:
            admin.create_topics([new], request_timeout=self.timeout)[self.name].result(
                self.timeout + 1
            )
        except KafkaException as e:
            err = e.args[0] if e.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return  # another run created it meanwhile
            raise StorageError(
                f"cannot create the state topic '{self.name}' on "
                f"{self.conf.get('bootstrap.servers')}: {e}. Create it yourself (1 partition, "
                f"cleanup.policy=compact) or name another one (--state-topic)"
            ) from None
        log.info("created the state topic %s (compacted)", self.name)

    def read(self) -> dict[bytes, PublishState]:
        """The latest state of every key (read once, then cached)."""
        if self._states is None:
            self._states = self._read()
        return self._states

    def get(self, topic: str, view: str) -> PublishState | None:
        return self.read().get(state_key(topic, view))

    def _read(self) -> dict[bytes, PublishState]:
        from confluent_kafka import Consumer, KafkaException, TopicPartition
        from confluent_kafka.admin import AdminClient

        what = f"reading the state topic '{self.name}'"
        description = _describe(AdminClient(dict(self.conf)), self.name, self.conf, self.timeout)
        if description is None:
            return {}
        deadline = time.monotonic() + self.timeout
        consumer = Consumer(
            {
                **self.conf,
                "group.id": "feature-serving-batch-state",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
            }
        )
        states: dict[bytes, PublishState] = {}
        try:
            ends: dict[int, int] = {}
            starts: list[Any] = []
            for p in description.partitions:
                tp = TopicPartition(self.name, p.id)
                lo, hi = consumer.get_watermark_offsets(tp, timeout=self.timeout)
                if hi > lo:
                    ends[p.id] = hi
                    starts.append(TopicPartition(self.name, p.id, lo))
            consumer.assign(starts)
            while ends:
                if time.monotonic() > deadline:
                    raise StorageError(
                        f"{what}: not read to its end within {self.timeout:g} s "
                        f"(partitions {sorted(ends)} unfinished)"
                    )
                for m in consumer.consume(1000, 0.1):
                    offset, partition = m.offset(), m.partition()
                    if m.error() is not None or offset is None or partition is None:
                        continue
                    self._apply(states, m)
                    if offset + 1 >= ends.get(partition, 0):
                        ends.pop(partition, None)
        except KafkaException as e:
            raise _unreachable(self.conf, what, self.timeout, e) from None
        finally:
            consumer.close()
        return states

    def _apply(self, states: dict[bytes, PublishState], m: Any) -> None:
        key = m.key()
        if key is None:
            return
        if m.value() is None:
            states.pop(key, None)  # a tombstone clears the state
            return
        try:
            states[key] = PublishState.from_json(m.value())
        except (ValueError, KeyError, TypeError) as e:
            log.warning(
                "state topic %s: ignoring record %d of partition %d (key %r): %s",
                self.name,
                m.offset(),
                m.partition(),
                key,
                e,
            )

    def record(self, producer: Any, state: PublishState) -> None:
        """Produces ``state`` and waits until the broker acknowledged it."""
        failed: list[str] = []
        delivered: list[bool] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failed.append(str(err))
            else:
                delivered.append(True)

        key = state_key(state.topic, state.view)
        while True:
            try:
                producer.produce(self.name, key=key, value=state.to_json(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        left = producer.flush(self.timeout)
        if left or failed or not delivered:
            raise StorageError(
                f"feature view '{state.view}': every row was published to '{state.topic}', "
                f"but its {state.describe()} could not be recorded in the state topic "
                f"'{self.name}' ({'; '.join(failed) or f'not acknowledged in {self.timeout:g} s'}"
                f"). The next incremental run publishes the same rows again, which the merge "
                f"rule makes harmless"
            )
        if self._states is not None:
            self._states[key] = state
