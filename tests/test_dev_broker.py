"""`make broker` (``python -m serving.dev.broker``): a local tansu broker in the foreground, with
the registry's stream topics created, that a produce / consume round trip works against; Ctrl-C
stops it and the broker process with it; a taken port is one ``error:`` line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving import Registry
from serving.loaders.kafka import PRODUCER_DEFAULTS, encode_key, produce_rows
from tests.harness.paths import ROOT
from tests.harness.ports import free_port

pytestmark = pytest.mark.integration


def _start(port: int, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.dev.broker", "--port", str(port), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the ready line, or "" when it exited
    return proc, line


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of an ended child counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")", 1)[1].split()[0] != "Z"


def test_broker_round_trip_and_ctrl_c(tmp_path: Path) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    port = free_port()
    proc, line = _start(port, "--partitions", "2", "--log", str(tmp_path / "tansu.log"))
    try:
        assert line.startswith(f"broker ready on 127.0.0.1:{port} (tansu pid "), (
            line + proc.communicate(timeout=10)[1]
        )
        assert "user_profile (2 partitions)" in line, line
        tansu_pid = int(line.split("tansu pid ", 1)[1].split(",", 1)[0])
        bootstrap = f"127.0.0.1:{port}"

        # the topic of features.yaml's stream source exists: the loader's records round-trip
        view = Registry.from_yaml(ROOT / "features.yaml").view("user_profile")
        producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS})
        rows = [
            {"user_id": u, "event_timestamp": 1_700_000_000_000_000, "f000": u / 2}
            for u in range(10)
        ]
        assert produce_rows(producer, view, rows) == 10
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": False})
        try:
            c.assign([TopicPartition("user_profile", p, OFFSET_BEGINNING) for p in (0, 1)])
            got: list[bytes] = []
            deadline = time.monotonic() + 15
            while len(got) < 10 and time.monotonic() < deadline:
                got += [m.key() for m in c.consume(100, 0.2) if m.error() is None]
        finally:
            c.close()
        assert sorted(got) == sorted(encode_key(view, [u]) for u in range(10))

        # what docs/kafka-loader.md says of tansu's log end: the last batch's first offset + 1
        # (10 records in one batch on one partition: offsets 0..9, high watermark 1, not 10)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics([NewTopic("wm", num_partitions=1)]).values():
            f.result(10)
        batcher = Producer({"bootstrap.servers": bootstrap, "linger.ms": 200})
        for i in range(10):
            batcher.produce("wm", key=b"k", value=str(i).encode(), partition=0)
        batcher.flush()
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "w"})
        try:
            assert c.get_watermark_offsets(TopicPartition("wm", 0), timeout=10) == (0, 1)
        finally:
            c.close()

        # Ctrl-C: the command ends, and the broker process with it
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "broker stopped" in out
        assert not _pid_alive(tansu_pid)
    finally:
        if proc.poll() is None:
            # Ctrl-C first: a killed command would leave its tansu running
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_broker_on_a_taken_port_is_one_error_line(tmp_path: Path) -> None:
    port = free_port()
    first, line = _start(port, "--config", "", "--log", str(tmp_path / "tansu.log"))
    try:
        assert line.startswith("broker ready"), line
        second = subprocess.run(
            [sys.executable, "-m", "serving.dev.broker", "--port", str(port), "--config", ""],
            cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert second.returncode == 1
        assert second.stderr.splitlines() == [
            f"error: port {port} on 127.0.0.1 is taken (a broker already running?); "
            "choose another with --port (make broker BROKER_PORT=...)"
        ], second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=15)
