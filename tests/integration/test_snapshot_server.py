"""Snapshots of a serving node without pausing reads: `POST /admin/snapshot` and `snapshot
create --server` (the local store is held by the server). See docs/scale-out.md."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from serving import Registry, Store
from serving.frontend.auth import KeyFile
from serving.snapshot import restore
from tests.harness import http, run_cli, start_server, stop_server

pytestmark = pytest.mark.integration

N_USERS = 20_000
REGISTRY = """
project: snap
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: users
    entities: [user]
    features: [{name: seq, dtype: int64}, {name: label, dtype: string}]
"""
META = {f"kafka/users/users/{p}": str(1000 + p).encode() for p in range(4)}


def seed(data_dir: Path, registry: Registry) -> None:
    users = list(range(N_USERS))
    table = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array([1_000_000] * N_USERS, pa.timestamp("us", tz="UTC")),
            "seq": pa.array([u * 3 for u in users], pa.int64()),
            "label": pa.array([f"u{u}" for u in users]),
        }
    )
    with Store(data_dir, registry) as s:
        s.write("users", table, meta=META)


def test_snapshot_of_a_serving_node_while_reads_go_on(tmp_path: Path) -> None:
    config = tmp_path / "features.yaml"
    config.write_text(REGISTRY)
    registry = Registry.from_yaml(config)
    seed(tmp_path / "db", registry)
    keys = KeyFile(tmp_path / "keys.json")
    admin, _ = keys.create("ops", read=["*"], admin=True)
    reader_key, _ = keys.create("model", read=["users"])
    server = start_server(
        config, tmp_path / "db", tmp_path / "log", "--keys-file", str(tmp_path / "keys.json")
    )
    stop = threading.Event()
    reads: list[int] = []
    failures: list[str] = []

    def read(offset: int) -> None:
        i = offset
        while not stop.is_set():
            users = [(i * 37 + k) % N_USERS for k in range(50)]
            i += 1
            status, got = http(
                server.url + "/get-online-features",
                {"features": ["users:seq", "users:label"], "entities": {"user_id": users}},
                key=reader_key,
                timeout=30,
            )
            if status != 200:
                failures.append(f"HTTP {status}: {got}")
                continue
            seqs, labels = got["results"][1]["values"], got["results"][2]["values"]
            if seqs != [u * 3 for u in users] or labels != [f"u{u}" for u in users]:
                failures.append(f"wrong values for {users[:3]}...")
            reads.append(1)

    readers = [threading.Thread(target=read, args=(k * 1000,)) for k in range(4)]
    try:
        for t in readers:
            t.start()
        while len(reads) < 20:  # the readers are going
            stop.wait(0.01)
        before = len(reads)

        # through the admin API
        snap1 = tmp_path / "snaps" / "api"
        status, got = http(
            server.url + "/admin/snapshot", {"path": str(snap1)}, key=admin, timeout=30
        )
        assert status == 200, got
        assert got["snapshot"] == str(snap1)
        assert got["files"] > 0

        # through the CLI, naming the server
        snap2 = tmp_path / "snaps" / "cli"
        done = run_cli(
            "snapshot", "create", "--config", str(config), "--data-dir", str(tmp_path / "db"),
            "--server", server.url, "--api-key", admin, str(snap2),
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"sending the snapshot to {server.url}/admin/snapshot" in done.stderr
        assert json.loads(done.stdout)["snapshot"] == str(snap2)

        # refusals: an existing path, a relative path, a non-admin key
        status, got = http(
            server.url + "/admin/snapshot", {"path": str(snap1)}, key=admin, timeout=30
        )
        assert status == 400, got
        assert "already exists" in got["error"]["message"], got
        status, got = http(
            server.url + "/admin/snapshot", {"path": "rel/dir"}, key=admin, timeout=30
        )
        assert status == 400, got
        status, got = http(
            server.url + "/admin/snapshot", {"path": str(tmp_path / "x")}, key=reader_key
        )
        assert status == 403, got
        bad = run_cli(
            "snapshot", "create", "--config", str(config), "--data-dir", str(tmp_path / "db"),
            "--server", server.url, str(tmp_path / "y"),
            env={"FS_API_KEY": reader_key},
        )  # fmt: skip
        assert bad.returncode == 1, bad.stderr
        assert "HTTP 403" in bad.stderr, bad.stderr

        target = len(reads) + 20
        while len(reads) < target and not failures:  # reads kept going throughout
            stop.wait(0.01)
        assert len(reads) > before
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=30)
        assert stop_server(server) == 0
    assert not failures, failures[:3]

    # each snapshot restores to the same rows and stored offsets / meta
    expected: dict[str, Any] = {"seq": [u * 3 for u in range(N_USERS)]}
    for name in ("api", "cli"):
        dest = tmp_path / f"restored-{name}"
        restore(tmp_path / "snaps" / name, dest)
        with Store(dest, registry) as s:
            got_rows = s.get({"user_id": list(range(N_USERS))}, ["users:seq", "users:label"])
            assert list(got_rows.column("users:seq")) == expected["seq"]
            assert list(got_rows.column("users:label")) == [f"u{u}" for u in range(N_USERS)]
            assert {k: s.get_meta(k) for k in META} == META
