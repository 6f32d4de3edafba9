"""Crash safety: ``kill -9`` of the SERVER during Kafka ingestion, during an admin batch load
and during a burst of reads; after a restart the store holds the newest value of every
acknowledged write, rows are whole, loader progress resumes and answers are right."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from serving import Registry, Store
from serving.frontend.auth import KeyFile
from serving.loaders.kafka import offset_key, produce_rows
from tests.harness import Broker, http, metric, scrape, start_server, stop_server, wait_until
from tests.harness.profile import (
    BASE_US,
    columns,
    feast_body,
    generation_table,
    preload,
    write_config,
)

pytestmark = pytest.mark.integration

NF = 8


def kill9(server: object) -> None:
    proc = server.proc  # type: ignore[attr-defined]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def store_values(config: Path, db: Path, users: np.ndarray) -> np.ndarray:
    """[users x features] as stored (NaN where missing), read with the store itself."""
    with Store(db, Registry.from_yaml(config)) as store:
        got = store.get({"user_id": users}, [f"profile:f{i}" for i in range(NF)])
        return np.array(
            [[np.nan if v is None else v for v in got.column(f"profile:f{i}")] for i in range(NF)]
        ).T


def test_kill9_during_kafka_ingestion(broker: Broker, tmp_path: Path) -> None:
    n_users, gens = 5000, 12
    broker.create_topic("profile", 3)
    config = write_config(tmp_path, n_features=NF, bootstrap=broker.bootstrap)
    view = Registry.from_yaml(config).view("profile")
    producer = broker.producer()
    server = start_server(config, tmp_path / "db", tmp_path / "log", "--no-auth")
    users = np.arange(n_users)
    # produce (and have acknowledged by the broker) every generation; kill mid-stream
    for g in range(1, gens + 1):
        produce_rows(producer, view, generation_table(users, g, NF))
        if g == gens // 2:
            time.sleep(0.3)
            kill9(server)
    total = n_users * gens
    # The store as the crash left it: whole rows, and rows consistent with the offsets stored
    # in the same write batch (nothing applied beyond them is missing).
    vals = store_values(config, tmp_path / "db", users)
    with Store(tmp_path / "db", Registry.from_yaml(config)) as store:
        stored = sum(
            int(store.get_meta(offset_key("profile", "profile", p)) or 0) for p in range(3)
        )
    assert all(len(set(row[~np.isnan(row)])) <= 1 for row in vals), "torn row"
    print(f"\nkill -9 after {stored}/{total} records applied")
    assert 0 < stored < total
    server = start_server(config, tmp_path / "db", tmp_path / "log2", "--no-auth")
    try:
        body = feast_body(list(range(0, n_users, 10)), NF)
        url = server.url + "/get-online-features"
        wait_until(
            lambda: {v for c in columns(http(url, body)[1]) for v in c} == {float(gens)},
            30,
            "catch-up after restart",
        )
        text = scrape(server.url)
        consumed = metric(text, "feature_serving_loader_rows_applied_total") + metric(
            text, "feature_serving_loader_rows_skipped_older_total"
        )
        # progress resumed from the stored offsets: only the rest was read again
        assert consumed == total - stored, (consumed, total, stored)
    finally:
        assert stop_server(server) == 0
    assert (store_values(config, tmp_path / "db", users) == gens).all()


def test_kill9_during_admin_batch_load(tmp_path: Path) -> None:
    n_users = 300_000
    source = tmp_path / "profile.parquet"
    config = write_config(tmp_path, n_features=NF, batch_source=source)
    keys = KeyFile(tmp_path / "keys.json")
    admin, _ = keys.create("ops", read=["*"], admin=True)
    auth = {"Authorization": f"Bearer {admin}"}
    users = np.arange(n_users)
    pq.write_table(generation_table(users, 1, NF), source, row_group_size=20_000)
    server = start_server(
        config, tmp_path / "db", tmp_path / "log", "--keys-file", str(tmp_path / "keys.json")
    )
    status, got = http(server.url + "/admin/materialize", {}, headers=auth, timeout=120)
    assert status == 200, got  # generation 1 acknowledged
    pq.write_table(generation_table(users, 2, NF), source, row_group_size=20_000)

    def load() -> None:
        # the server dies under it: no answer, so not acknowledged
        with contextlib.suppress(OSError):
            http(server.url + "/admin/materialize", {}, headers=auth, timeout=120)

    job = threading.Thread(target=load)
    job.start()
    probe = feast_body(list(range(0, n_users, 997)), 1)

    def some_new() -> bool:
        s, g = http(server.url + "/get-online-features", probe, headers=auth)
        return s == 200 and 2.0 in columns(g)[0]

    wait_until(some_new, 60, "the load to start", poll=0.005)
    kill9(server)
    job.join(30)
    vals = store_values(config, tmp_path / "db", users)
    assert not np.isnan(vals).any(), "an acknowledged row is missing"
    assert all(len(set(r)) == 1 for r in vals[::101]), "torn row"
    new = int((vals[:, 0] == 2).sum())
    print(f"\nkill -9 with {new}/{n_users} rows of the second load applied")
    assert set(np.unique(vals)) <= {1.0, 2.0}
    server = start_server(
        config, tmp_path / "db", tmp_path / "log2", "--keys-file", str(tmp_path / "keys.json")
    )
    try:
        status, got = http(server.url + "/admin/materialize", {}, headers=auth, timeout=120)
        assert status == 200, got
        _, g = http(server.url + "/get-online-features", probe, headers=auth)
        assert {v for c in columns(g) for v in c} == {2.0}
    finally:
        assert stop_server(server) == 0
    assert (store_values(config, tmp_path / "db", users) == 2).all()


def test_kill9_during_read_burst(tmp_path: Path) -> None:
    n_users = 50_000
    config = write_config(tmp_path, n_features=NF)
    preload(config, tmp_path / "db", n_users, 3, NF, flush=False)  # rows still in the WAL
    server = start_server(config, tmp_path / "db", tmp_path / "log", "--no-auth")
    body = feast_body(list(range(0, n_users, 50)), NF)
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                http(server.url + "/get-online-features", body, timeout=5)
            except OSError:
                return

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(reader)
        time.sleep(1.0)
        kill9(server)
        stop.set()
    server = start_server(config, tmp_path / "db", tmp_path / "log2", "--no-auth")
    try:
        status, got = http(server.url + "/get-online-features", body)
        assert status == 200
        assert {v for c in columns(got) for v in c} == {3.0}
    finally:
        assert stop_server(server) == 0
    _ = BASE_US
