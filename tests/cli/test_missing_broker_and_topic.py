"""A stream source whose broker never answers or whose topic does not exist, through the
real CLI (issue 25): `serve` is not ready and says why, naming the brokers or the topic;
`ingest --stop-when-idle` ends with an error instead of waiting forever."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.harness import (
    Broker,
    Server,
    Servers,
    free_port,
    run_cli,
    scale_out_registry,
    wait_until,
)

pytestmark = pytest.mark.integration


def _readyz(s: Server) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"{s.url}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _config(tmp_path: Path, bootstrap: str) -> Path:
    config = tmp_path / "features.yaml"
    config.write_text(scale_out_registry(bootstrap))
    return config


def test_serve_without_a_reachable_broker_is_not_ready_and_names_the_brokers(
    servers: Servers, tmp_path: Path
) -> None:
    # the registry names a broker that exists nowhere; --bootstrap-servers replaces it with
    # another address where nothing listens either
    config = _config(tmp_path, "192.0.2.1:9092")
    nowhere = f"127.0.0.1:{free_port()}"
    s = servers.cli(
        ["serve", "--config", str(config), "--data-dir", str(tmp_path / "store"), "--no-auth",
         "--bootstrap-servers", nowhere, "--broker-timeout-seconds", "30"],
        "node", ready=False,
    )  # fmt: skip
    wait_until(lambda: f"no broker answers at {nowhere}" in s.log.read_text(), 30, "the warning")
    status, body = _readyz(s)
    assert status == 503, body
    assert body["kafka_lag"] == {"users": None}
    assert nowhere in str(body["kafka_waiting_for"])
    assert "192.0.2.1" not in s.log.read_text()
    warning = next(ln for ln in s.log.read_text().splitlines() if "no broker answers" in ln)
    assert '"level":"WARNING"' in warning


def test_serve_names_a_missing_topic_and_stays_not_ready(
    servers: Servers, broker: Broker, tmp_path: Path
) -> None:
    s = servers.cli(
        ["serve", "--config", str(_config(tmp_path, broker.bootstrap)),
         "--data-dir", str(tmp_path / "store"), "--no-auth"],
        "node", ready=False,
    )  # fmt: skip
    wait_until(lambda: "topic 'users' does not exist" in s.log.read_text(), 30, "the warning")
    status, body = _readyz(s)
    assert status == 503, body
    assert "topic 'users' does not exist" in str(body["kafka_waiting_for"])


def test_ingest_stop_when_idle_fails_on_a_missing_topic(broker: Broker, tmp_path: Path) -> None:
    r = run_cli(
        "ingest", "--config", str(_config(tmp_path, broker.bootstrap)),
        "--data-dir", str(tmp_path / "store"), "--stop-when-idle", "1", "--stats-interval", "0",
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: view users: topic 'users' does not exist on {broker.bootstrap} "
        "(Broker: Unknown topic or partition), for longer than --stop-when-idle 1 s"
    ], r.stderr


def test_ingest_stop_when_idle_fails_without_a_broker(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    r = run_cli(
        "ingest", "--config", str(_config(tmp_path, "192.0.2.1:9092")),
        "--data-dir", str(tmp_path / "store"), "--bootstrap-servers", nowhere,
        "--stop-when-idle", "1", "--stats-interval", "0",
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert f"error: view users: no broker answers at {nowhere}" in r.stderr
