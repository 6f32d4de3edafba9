"""Loading while the server serves: the CLI finds the store held by the server and sends the
job to its admin API; a reader running meanwhile only ever sees whole rows."""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.frontend.auth import KeyFile
from tests.harness import http, run_cli, start_server, stop_server

pytestmark = pytest.mark.integration

N_USERS = 3000
N_FEATURES = 20


def registry_text(source: Path) -> str:
    return f"""
project: admin_load
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: profile
    entities: [user]
    features: [{{name: "f{{0..{N_FEATURES - 1}}}", dtype: float32}}]
    batch_source: {{type: parquet, path: "{source}"}}
"""


def write_generation(path: Path, g: int) -> None:
    """Every feature of every user equals ``g``, event time 2024-01-01 + g seconds."""
    ts = pa.array([1_704_067_200_000_000 + g * 1_000_000] * N_USERS, pa.int64()).cast(
        pa.timestamp("us", tz="UTC")
    )
    cols: dict[str, Any] = {"user_id": pa.array(range(N_USERS), pa.int64()), "event_timestamp": ts}
    for i in range(N_FEATURES):
        cols[f"f{i}"] = pa.array([float(g)] * N_USERS, pa.float32())
    pq.write_table(pa.table(cols), path, row_group_size=500)


def test_cli_job_goes_to_running_server_and_readers_never_see_torn_rows(tmp_path: Path) -> None:
    source = tmp_path / "profile.parquet"
    config = tmp_path / "features.yaml"
    config.write_text(registry_text(source))
    keys = KeyFile(tmp_path / "keys.json")
    admin, _ = keys.create("ops", read=["*"], admin=True)
    reader_key, _ = keys.create("model", read=["profile"])
    write_generation(source, 1)
    server = start_server(
        config, tmp_path / "db", tmp_path / "log", "--keys-file", str(tmp_path / "keys.json")
    )
    body = {"features": [f"profile:f{i}" for i in range(N_FEATURES)],
            "entities": {"user_id": list(range(0, N_USERS, 7))}}  # fmt: skip
    torn: list[str] = []
    seen: set[float] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            status, got = http(
                server.url + "/get-online-features", body, key=reader_key, timeout=30
            )
            assert status == 200, got
            cols = [c["values"] for c in got["results"][1:]]
            for e in range(len(cols[0])):
                row = {c[e] for c in cols}
                seen.update(v for v in row if v is not None)
                if len(row) > 1:
                    torn.append(str(sorted(row, key=str)))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(
            *args, "--config", str(config), "--data-dir", str(tmp_path / "db"),
            "--server", server.url,
            timeout=120, env={"FS_API_KEY": admin},
        )  # fmt: skip

    try:
        first = cli("materialize")
        assert first.returncode == 0, first.stderr
        assert "sending the job to" in first.stderr
        assert "3,000" in first.stdout  # the summary of the run the server did
        reader = threading.Thread(target=read)
        reader.start()
        for g in range(2, 6):
            write_generation(source, g)
            done = cli("materialize")
            assert done.returncode == 0, done.stderr
        time.sleep(0.2)
        stop.set()
        reader.join(timeout=30)
        assert not torn, torn[:3]
        assert seen >= {5.0}
        status, got = http(server.url + "/get-online-features", body, key=reader_key, timeout=30)
        assert {v for c in got["results"][1:] for v in c["values"]} == {5.0}
        # The jobs the server ran show in its metrics.
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
        applied = 'feature_serving_loader_rows_applied_total{loader="batch",view="profile"}'
        assert f"{applied} {5 * N_USERS}.0" in metrics
        # A non-admin key cannot run jobs.
        status, err = http(server.url + "/admin/materialize", {}, key=reader_key, timeout=30)
        assert status == 403
        assert err["error"]["code"] == "permission_denied"
        bad = run_cli(
            "materialize", "--config", str(config), "--data-dir", str(tmp_path / "db"),
            "--server", server.url,
            env={"FS_API_KEY": reader_key},
        )  # fmt: skip
        assert bad.returncode == 1
        assert "HTTP 403" in bad.stderr
    finally:
        stop.set()
        assert stop_server(server) == 0
