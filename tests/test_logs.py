"""serving/logs.py: one JSON object per line, with the fields passed as `extra=`."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.logs import JsonFormatter, RepeatFilter, setup_logging

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("serving.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_object_per_line_with_extra_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.warning(
        "slow request",
        extra={"request_id": "r-1", "api": "grpc", "method": "GetFeatureVector",
               "code": "OK", "duration_ms": 12.5},
    )  # fmt: skip
    logger.info("multi\nline %s", "message ü")
    out = lines(stream)
    assert len(out) == 2
    assert out[0]["msg"] == "slow request"
    assert out[0]["level"] == "WARNING"
    assert out[0]["logger"] == "serving.test_logs"
    assert out[0]["request_id"] == "r-1"
    assert out[0]["duration_ms"] == 12.5
    assert out[0]["code"] == "OK"
    assert out[0]["method"] == "GetFeatureVector"
    assert str(out[0]["ts"]).endswith("Z")
    assert out[1]["msg"] == "multi\nline message ü"
    assert "request_id" not in out[1]


def test_exceptions_and_odd_extras(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"path": Path("/x"), "msg_id": 3})
    logger.info("reserved", extra={"ts": "mine"})
    first, second = lines(stream)
    assert first["level"] == "ERROR"
    assert "ValueError: boom" in str(first["exc"])
    assert first["path"] == "/x"
    assert first["msg_id"] == 3
    assert second["extra_ts"] == "mine"
    assert second["ts"] != "mine"


def test_setup_logging_formats() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("debug", "text")
        assert root.level == logging.DEBUG
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
        setup_logging("info")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        with pytest.raises(ValueError, match="json"):
            setup_logging("info", "xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_cli_logs_json_by_default_and_text_on_request(tmp_path: Path) -> None:
    """The CLI's `_setup_logging` (used by `serve` and `demo`): JSON unless FS_LOG_FORMAT=text.
    Run in a child process, where replacing the root logger's handlers is harmless."""
    code = (
        "import logging; from serving.cli import _setup_logging; _setup_logging('info'); "
        "logging.getLogger('serving.x').warning('hello', extra={'request_id': 'q'})"
    )
    env = {k: v for k, v in os.environ.items() if k != "FS_LOG_FORMAT"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    rec = json.loads(r.stderr)
    assert rec["msg"] == "hello"
    assert rec["request_id"] == "q"
    assert rec["logger"] == "serving.x"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
        env={**env, "FS_LOG_FORMAT": "text"}, check=True,
    )  # fmt: skip
    assert r.stderr.rstrip().endswith("WARNING serving.x: hello")


def test_repeat_filter_collapses_lines_equal_up_to_numbers(
    captured: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream = captured
    f = RepeatFilter(10.0)
    logger.addFilter(f)
    clock = [100.0]
    monkeypatch.setattr("serving.logs.time.monotonic", lambda: clock[0])
    try:
        for i in range(50):  # 5 s of a line every 0.1 s, its numbers changing
            logger.error("Connect to 127.0.0.1:%d failed (after %dms)", 40000 + i, i)
            clock[0] += 0.1
        logger.error("something else")
        clock[0] = 111.0
        logger.error("Connect to 127.0.0.1:1 failed (after 3ms)")
        logger.warning("Connect to 127.0.0.1:1 failed (after 3ms)")  # another level passes
    finally:
        logger.removeFilter(f)
    msgs = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    assert msgs == [
        "Connect to 127.0.0.1:40000 failed (after 0ms)",
        "something else",
        "Connect to 127.0.0.1:1 failed (after 3ms) (49 similar lines in the last 11 s not logged)",
        "Connect to 127.0.0.1:1 failed (after 3ms)",
    ]


def test_librdkafka_connection_failures_are_collapsed() -> None:
    """A real librdkafka consumer on a port nobody listens on logs each failed connection
    attempt (about 20 a second); through the loader's logger a few lines get out."""
    import socket
    import time

    from confluent_kafka import Consumer, TopicPartition

    from serving.loaders.kafka.options import CONSUMER_DEFAULTS
    from serving.loaders.kafka.options import RDKAFKA_LOG as _RDKAFKA_LOG

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got: list[logging.LogRecord] = []
    raw: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    class Count(logging.Filter):  # sees every record, before the RepeatFilter
        def filter(self, record: logging.LogRecord) -> bool:
            raw.append(record)
            return True

    handler, count = Keep(), Count()
    _RDKAFKA_LOG.filters.insert(0, count)
    _RDKAFKA_LOG.addHandler(handler)
    try:
        conf = {"bootstrap.servers": f"127.0.0.1:{port}", "group.id": "g", **CONSUMER_DEFAULTS}
        c = Consumer({**conf, "logger": _RDKAFKA_LOG})
        c.assign([TopicPartition("t", 0, 0)])
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            c.consume(100, 0.05)
        c.close()
    finally:
        _RDKAFKA_LOG.removeHandler(handler)
        _RDKAFKA_LOG.removeFilter(count)
    failed = [r for r in raw if "failed" in r.getMessage()]
    assert len(failed) >= 10, [r.getMessage() for r in raw]
    assert 1 <= len([r for r in got if "failed" in r.getMessage()]) <= 3, [
        r.getMessage() for r in got
    ]
