"""The server runs the Kafka loaders of its stream sources: while a stream of updates is
applied, every answer is a whole row (old or new, never a mix), readiness reports the lag, and
in the end every key holds its newest value."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from serving import Registry
from serving.loaders.kafka import PRODUCER_DEFAULTS, produce_rows
from tests.harness import Broker, http, start_server, stop_server

pytestmark = pytest.mark.integration

N_USERS = 200
N_FEATURES = 10
GENERATIONS = 30
BASE_US = 1_704_067_200_000_000


def registry_text(bootstrap: str) -> str:
    return f"""
project: ingest_serving
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: live
    entities: [user]
    features: [{{name: "f{{0..{N_FEATURES - 1}}}", dtype: float32}}]
    stream_source: {{type: kafka, topic: live, bootstrap_servers: "{bootstrap}", format: json}}
"""


def test_serving_answers_whole_rows_during_ingestion(
    broker: Broker,
    tmp_path: Path,
) -> None:
    config = tmp_path / "features.yaml"
    config.write_text(registry_text(broker.bootstrap))
    view = Registry.from_yaml(config).view("live")
    producer = Producer({"bootstrap.servers": broker.bootstrap, **PRODUCER_DEFAULTS})
    # Generation 0 exists before the server starts: it must catch up before it is ready.
    produce_rows(producer, view, _generation(0))
    server = start_server(config, tmp_path / "db", tmp_path / "server.log", "--no-auth")
    body = {
        "features": [f"live:f{i}" for i in range(N_FEATURES)],
        "entities": {"user_id": list(range(N_USERS))},
    }
    torn: list[str] = []
    answers = 0
    stop = threading.Event()

    def read() -> None:
        nonlocal answers
        while not stop.is_set():
            status, got = http(server.url + "/get-online-features", body)
            assert status == 200, got
            columns = [c["values"] for c in got["results"][1:]]
            for u in range(N_USERS):
                row = {col[u] for col in columns}
                if len(row) > 1:
                    torn.append(f"user {u}: {sorted(row, key=str)}")
            answers += 1

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, ready = http(server.url + "/readyz")
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200, ready
        assert ready["kafka_lag"] == {"live": 0}
        reader = threading.Thread(target=read)
        reader.start()
        for g in range(1, GENERATIONS + 1):
            produce_rows(producer, view, _generation(g))
        deadline = time.monotonic() + 30
        final: list[Any] = []
        while time.monotonic() < deadline:
            _, got = http(server.url + "/get-online-features", body)
            final = [c["values"] for c in got["results"][1:]]
            if all(v == float(GENERATIONS) for col in final for v in col):
                break
            time.sleep(0.1)
        stop.set()
        reader.join(timeout=20)
        assert not torn, torn[:5]
        assert answers > 5
        assert all(v == float(GENERATIONS) for col in final for v in col), final[0][:10]
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        assert 'feature_serving_kafka_lag_messages{partition="0",topic="live"} 0.0' in text
        assert "\nfeature_serving_ready 1.0\n" in text
        silence = [
            float(ln.split()[-1])
            for ln in text.splitlines()
            if ln.startswith('feature_serving_kafka_seconds_since_broker_contact{view="live"}')
        ]
        assert silence
        assert 0 <= silence[0] < 5, silence

        def counter(name: str) -> float:
            prefix = f'feature_serving_loader_{name}_total{{loader="kafka",view="live"}}'
            lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
            assert lines, prefix
            return float(lines[0].split()[-1])

        # Records of one key within a batch collapse to the newest, the rest count as older.
        assert counter("rows_applied") + counter("rows_skipped_older") == N_USERS * (
            GENERATIONS + 1
        )
        assert counter("rows_applied") >= N_USERS * 2
    finally:
        stop.set()
        assert stop_server(server) == 0


def _generation(g: int) -> list[dict[str, Any]]:
    """Every feature of every user equals ``g``: a row mixing two generations is visible."""
    return [
        {
            "user_id": u,
            "event_timestamp": BASE_US + g * 1_000_000,
            **{f"f{i}": float(g) for i in range(N_FEATURES)},
        }
        for u in range(N_USERS)
    ]
