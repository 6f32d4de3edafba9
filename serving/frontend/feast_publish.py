"""Online writes of stream-backed views go to the view's topic, not into one store: every
replica and shard then applies them through its Kafka loader, as it applies the stream itself
(docs/feast-compatibility.md, "Writes"; docs/kafka-loader.md, "Pushes").

The records are produced by the same code as ``materialize --via-kafka``
(:func:`serving.loaders.kafka.produce_rows`: the store's entity-key encoding as the record
key, ``partitioner=murmur2_random``, the stream source's ``format``), on one long-lived
producer per Kafka cluster, connected as :class:`~serving.loaders.batch.publish.KafkaTarget`
connects a via-kafka run. A write is answered only once the broker acknowledged every one of
its records; a record the broker refused or did not acknowledge in time fails the write
(503, naming the topic and how many records were acknowledged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from serving.errors import StorageError
from serving.registry import FeatureView

log = logging.getLogger("serving.server")

#: how long a write waits for the broker to acknowledge its records (librdkafka's
#: ``message.timeout.ms`` too, so a record is failed rather than retried past it)
PUBLISH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Published:
    """Rows of a view published to its topic and acknowledged by the broker."""

    view: str
    topic: str
    rows: int

    def to_json(self) -> dict[str, Any]:
        return {"feature_view": self.view, "rows": self.rows, "published": self.rows,
                "topic": self.topic}  # fmt: skip

    def describe(self) -> str:
        return f"{self.rows} rows of feature view '{self.view}' published to topic '{self.topic}'"


class _Acks:
    """Counts one write's delivery reports (called on the poll thread) and resolves a future on
    the event loop when every record was reported."""

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop) -> None:
        self.left = n
        self.acked = 0
        self.errors: list[str] = []
        self.loop = loop
        self.done: asyncio.Future[None] = loop.create_future()
        self._lock = threading.Lock()

    def __call__(self, err: Any, _msg: Any) -> None:
        with self._lock:
            self.left -= 1
            if err is None:
                self.acked += 1
            elif len(self.errors) < 3:
                self.errors.append(str(err))
            last = self.left == 0
        if last:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Producer:
    """One producer and the thread serving its delivery reports."""

    def __init__(self, conf: dict[str, Any]) -> None:
        from confluent_kafka import Producer

        self.producer = Producer(conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="push-producer", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def close(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join()
        self.producer.flush(timeout)


class TopicPublisher:
    """Producers of a frontend's online pushes, one per Kafka cluster (``bootstrap_servers``:
    the frontend's ``--bootstrap-servers``, replacing the stream sources' as the loader does)."""

    def __init__(self, bootstrap_servers: str | None, timeout: float = PUBLISH_TIMEOUT_S) -> None:
        self.bootstrap_servers = bootstrap_servers or None
        self.timeout = timeout
        self._producers: dict[str, _Producer] = {}
        self._lock = threading.Lock()

    def _producer(self, fv: FeatureView) -> Any:
        from serving.loaders.batch.publish import KafkaTarget
        from serving.loaders.kafka.options import PRODUCER_DEFAULTS

        conf = KafkaTarget(bootstrap_servers=self.bootstrap_servers).client_conf(fv)
        conf.update(PRODUCER_DEFAULTS)
        # a push waits for its acknowledgement: a record the broker cannot take is failed at
        # the push's deadline instead of being retried for librdkafka's default 5 minutes
        conf["message.timeout.ms"] = int(self.timeout * 1000)
        conf["linger.ms"] = "1"
        key = str(sorted((k, str(v)) for k, v in conf.items() if k != "logger"))
        with self._lock:
            p = self._producers.get(key)
            if p is None:
                p = self._producers[key] = _Producer(conf)
        return p.producer

    async def publish(self, fv: FeatureView, rows: pa.Table) -> Published:
        """Produces ``rows`` (the write path's schema: join keys, ``event_timestamp``, features)
        to ``fv``'s stream topic and returns once the broker acknowledged all of them."""
        from serving.loaders.kafka.produce import produce_rows

        src = fv.stream_source
        assert src is not None
        if rows.num_rows == 0:
            return Published(fv.name, src.topic, 0)
        loop = asyncio.get_running_loop()
        acks = _Acks(rows.num_rows, loop)

        def produce() -> int:
            return produce_rows(self._producer(fv), fv, rows, flush=False, on_delivery=acks)

        # encoding the rows costs ~10 us each in Python: off the event loop
        n = await loop.run_in_executor(None, produce)
        assert n == rows.num_rows
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(acks.done), self.timeout + 1.0)
        if acks.acked == n:
            return Published(fv.name, src.topic, n)
        why = "; ".join(acks.errors) or f"no acknowledgement within {self.timeout:.0f} s"
        raise StorageError(
            f"feature view '{fv.name}': publishing {n} rows to topic '{src.topic}' failed: "
            f"{acks.acked} of {n} acknowledged by the broker ({why}); the acknowledged rows "
            "will be applied, the others were not published"
        )

    def close(self) -> None:
        with self._lock:
            producers, self._producers = list(self._producers.values()), {}
        for p in producers:
            p.close(1.0)
