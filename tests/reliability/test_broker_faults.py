"""Broker faults: the Kafka broker is killed while the server serves and comes back (empty:
tansu keeps its log in memory). Reads go on throughout, readiness turns false once the broker
has been unreachable for ``--broker-timeout-seconds`` and comes back once the loader has caught
up, and no key ever loses its value or goes back a generation."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import Registry
from serving.loaders.kafka import produce_rows
from tests.harness import Broker, http, scrape, start_server, stop_server, wait_until
from tests.harness.profile import columns, feast_body, generation_table, write_config

pytestmark = pytest.mark.integration

N_USERS = 600
NF = 4
PARTITIONS = 3
OUTAGE_S = 6.0
BROKER_TIMEOUT_S = 2.0
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Observations:
    """What the watcher thread saw: every read and every readiness probe, timed."""

    reads: list[tuple[float, int]] = field(default_factory=list)  # (time, status)
    problems: list[str] = field(default_factory=list)
    ready: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    health: list[tuple[float, int]] = field(default_factory=list)
    seen: np.ndarray = field(default_factory=lambda: np.zeros(N_USERS))  # newest generation


def watch(url: str, grpc_target: str, stop: threading.Event, obs: Observations) -> None:
    """Reads every key over and over (each must be a whole row of generation 1 or 2, never
    missing, never older than before) and probes /readyz and gRPC health in between."""
    body = feast_body(list(range(N_USERS)), NF)
    with grpc.insecure_channel(grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            t = time.monotonic()
            status, got = http(url + "/get-online-features", body)
            obs.reads.append((t, status))
            if status != 200:
                obs.problems.append(f"{t:.1f}: read answered {status}: {got}")
            else:
                vals = np.array(columns(got), dtype=float).T  # users x features
                for u in np.flatnonzero(~(vals == vals[:, :1]).all(axis=1))[:3]:
                    obs.problems.append(f"{t:.1f}: user {u} torn row {vals[u].tolist()}")
                gen = vals[:, 0]
                bad = np.flatnonzero(~np.isin(gen, (1.0, 2.0)) | (gen < obs.seen))
                for u in bad[:3]:
                    obs.problems.append(f"{t:.1f}: user {u} at {gen[u]} after {obs.seen[u]}")
                obs.seen = np.maximum(obs.seen, np.nan_to_num(gen))
            status, ready = http(url + "/readyz")
            obs.ready.append((time.monotonic(), status, ready))
            serving = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            obs.health.append((time.monotonic(), serving))
            time.sleep(0.02)


def gauges(url: str) -> dict[str, float]:
    """/metrics through Prometheus' own parser: readiness and the view's broker silence."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(scrape(url)):
        for sample in fam.samples:
            if sample.name == "feature_serving_ready":
                out["ready"] = sample.value
            if (
                sample.name == "feature_serving_kafka_seconds_since_broker_contact"
                and sample.labels == {"view": "profile"}
            ):
                out["silence"] = sample.value
    return out


def test_broker_outage_and_empty_restart(broker: Broker, tmp_path: Path) -> None:
    broker.create_topic("profile", PARTITIONS)
    config = write_config(tmp_path, n_features=NF, bootstrap=broker.bootstrap)
    view = Registry.from_yaml(config).view("profile")
    users = np.arange(N_USERS)
    server = start_server(
        config,
        tmp_path / "db",
        tmp_path / "server.log",
        "--no-auth",
        "--broker-timeout-seconds",
        str(BROKER_TIMEOUT_S),
    )
    t_started = time.monotonic()
    url = server.url + "/get-online-features"
    body = feast_body(list(range(N_USERS)), NF)
    stop = threading.Event()
    obs = Observations()
    watcher: threading.Thread | None = None

    def all_at(g: float) -> bool:
        status, got = http(url, body)
        return status == 200 and {v for c in columns(got) for v in c} == {g}

    def ready_and_caught_up() -> bool:
        status, got = http(server.url + "/readyz")
        contact = got.get("kafka_seconds_since_broker_contact", {}).get("profile")
        # connected: librdkafka's statistics (once a second) showed the broker up
        return status == 200 and got["kafka_lag"] == {"profile": 0} and contact < 1.5

    try:
        # generation 1, acknowledged by the broker (flushed); producers never auto-create the
        # topic on the restarted broker behind the test's back
        producer = broker.producer(**{"allow.auto.create.topics": False})
        produce_rows(producer, view, generation_table(users, 1, NF))
        del producer
        wait_until(lambda: all_at(1.0), 20, "generation 1 applied")
        # until the loader's statistics have shown the broker up at least once, its
        # "seconds since contact" count from its start
        time.sleep(max(t_started + 2.5 - time.monotonic(), 0))
        wait_until(ready_and_caught_up, 10, "ready, lag 0, broker connected")
        watcher = threading.Thread(
            target=watch, args=(server.url, f"127.0.0.1:{server.grpc}", stop, obs)
        )
        watcher.start()
        time.sleep(0.5)

        t_kill = time.monotonic()
        broker.stop()  # SIGKILL by PID; the port stays free for the restart
        time.sleep(OUTAGE_S)
        in_outage = gauges(server.url)
        t_up = time.monotonic()
        broker.start()
        broker.create_topic("profile", PARTITIONS)
        producer = broker.producer(**{"allow.auto.create.topics": False})
        produce_rows(producer, view, generation_table(users, 2, NF))  # acknowledged
        t_acked = time.monotonic()
        del producer
        wait_until(lambda: all_at(2.0), 30, "generation 2 applied after the restart")
        t_applied = time.monotonic()
        wait_until(ready_and_caught_up, 15, "ready again, lag 0, broker connected")
        t_ready = time.monotonic()
        after = gauges(server.url)
        # gRPC health follows readiness within its 1 s refresh
        wait_until(lambda: obs.health[-1][1] == SERVING, 5, "gRPC health SERVING again")
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(30)
        code = stop_server(server)
    assert code == 0
    assert watcher is not None
    assert not watcher.is_alive()

    # Reads: every one answered, whole rows, never missing, never back a generation.
    assert not obs.problems, obs.problems[:10]
    assert (obs.seen == 2.0).all()
    outage_reads = [s for t, s in obs.reads if t_kill <= t < t_up]
    assert len(outage_reads) > 20
    assert set(outage_reads) == {200}

    # Readiness: ready before the fault; not ready within the broker timeout (+ the 1 s
    # statistics interval and the 1 s health refresh) with the lag reported unknown; ready
    # again at the end.
    before = [(s, r) for t, s, r in obs.ready if t < t_kill]
    assert before
    assert all(s == 200 for s, _ in before), before[-1:]
    during = [(t - t_kill, s, r) for t, s, r in obs.ready if t_kill <= t < t_up]
    flipped = [d for d in during if d[1] == 503]
    assert flipped, during[-1:]
    t_not_ready = flipped[0][0]
    # still ready on the last known lag until the timeout (counted from the last statistics
    # that saw the broker up, up to 1 s before the kill)
    assert BROKER_TIMEOUT_S - 1.5 <= t_not_ready <= BROKER_TIMEOUT_S + 2.5, during
    assert all(s == 503 for t, s, _ in during if t > t_not_ready), "ready again mid-outage"
    last = flipped[-1][2]
    assert last["kafka_lag"] == {"profile": None}, last
    assert last["kafka_seconds_since_broker_contact"]["profile"] > BROKER_TIMEOUT_S, last
    not_serving = [t - t_kill for t, s in obs.health if t_kill <= t < t_up and s != SERVING]
    assert not_serving
    assert min(not_serving) <= BROKER_TIMEOUT_S + 3.5, not_serving
    assert obs.ready[-1][1] == 200
    assert obs.health[-1][1] == SERVING
    # ... and the same in /metrics, for alerting (FeatureServingNotReady,
    # FeatureServingKafkaBrokerUnreachable in docs/ops/alerts.yml)
    assert in_outage["ready"] == 0, in_outage
    assert in_outage["silence"] > OUTAGE_S - 1.5, in_outage
    assert after["ready"] == 1, after
    assert after["silence"] < 1.5, after
    # the loader noticed that the restarted broker's log is a new one and re-read it
    assert "re-reading" in server.log.read_text()

    # Figures for docs/reliability.md.
    print(
        f"\nbroker down {t_up - t_kill:.1f} s; {len(outage_reads)} reads of {N_USERS} keys "
        f"answered during it (all 200, generation 1); /readyz 503 after {t_not_ready:.1f} s, "
        f"gRPC NOT_SERVING after {min(not_serving):.1f} s; broker up to generation 2 "
        f"acknowledged {t_acked - t_up:.1f} s, all applied {t_applied - t_acked:.1f} s after "
        f"that, ready with lag 0 {t_ready - t_acked:.1f} s after; {len(obs.reads)} reads in all"
    )
