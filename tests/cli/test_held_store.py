"""Commands whose store a running server holds (`materialize`, `snapshot create`, `stats`),
through the real CLI (issue 25): they ask the server that holds it on whatever port it
serves, name `--api-key` / `FS_API_KEY` when it wants a key, and `stats` takes `--server`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.frontend.auth import KeyFile
from tests.harness import Servers, run_cli

pytestmark = pytest.mark.integration


def _setup(tmp_path: Path) -> tuple[Path, str]:
    source = tmp_path / "profile.parquet"
    ts = pa.array([1_704_067_200_000_000] * 3, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    pq.write_table(
        pa.table({"user_id": [1, 2, 3], "event_timestamp": ts,
                  "f": pa.array([0.5, 1.5, 2.5], pa.float32())}),
        source,
    )  # fmt: skip
    config = tmp_path / "features.yaml"
    config.write_text(f"""
project: held
entities: [{{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}]
feature_views:
  - name: profile
    entities: [user]
    features: [{{name: f, dtype: float32}}]
    batch_source: {{type: parquet, path: "{source}"}}
""")
    admin, _ = KeyFile(tmp_path / "store.keys.json").create("ops", read=["*"], admin=True)
    return config, admin


def test_a_held_store_is_asked_of_its_server_on_its_own_port(
    servers: Servers, tmp_path: Path
) -> None:
    config, admin = _setup(tmp_path)
    data = ["--config", str(config), "--data-dir", str(tmp_path / "store")]
    s = servers.cli(["serve", *data], "node")  # ports other than 6566
    recorded = tmp_path / "store.server.json"
    assert json.loads(recorded.read_text())["http"] == s.url
    env = {"FS_API_KEY": admin, "FS_SERVER_URL": ""}
    done = run_cli("materialize", *data, env=env)
    assert done.returncode == 0, done.stderr
    assert f"sending the job to {s.url}/admin/materialize" in done.stderr
    snap = run_cli("snapshot", "create", str(tmp_path / "snap"), *data, env=env)
    assert snap.returncode == 0, snap.stderr
    assert (tmp_path / "snap").is_dir()
    stats = run_cli("stats", *data, env=env)
    assert stats.returncode == 0, stats.stderr
    assert set(json.loads(stats.stdout)) == {"hot_tier", "rocksdb", "vector_indexes"}
    servers.stop(s)
    assert not recorded.exists()


def test_server_without_a_key_names_the_flag_and_the_variable(
    servers: Servers, tmp_path: Path
) -> None:
    config, admin = _setup(tmp_path)
    data = ["--config", str(config), "--data-dir", str(tmp_path / "store")]
    s = servers.cli(["serve", *data], "node")
    env = {k: v for k, v in os.environ.items() if k != "FS_API_KEY"}
    for args in (["materialize", "--server", s.url], ["stats", "--server", s.url]):
        r = run_cli(*args, *data, env={**env, "FS_API_KEY": ""})
        assert r.returncode == 1, r.stderr
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, r.stderr
        assert "--api-key" in errors[0], errors[0]
        assert "FS_API_KEY" in errors[0], errors[0]
        assert "Bearer" not in errors[0], errors[0]
    ok = run_cli("stats", "--server", s.url, "--api-key", admin, *data)
    assert ok.returncode == 0, ok.stderr
    assert set(json.loads(ok.stdout)) == {"hot_tier", "rocksdb", "vector_indexes"}


def test_the_error_says_which_server_it_asked(tmp_path: Path) -> None:
    config, _ = _setup(tmp_path)
    # a store held by this test process, with no server recorded
    from serving import Registry, Store

    with Store(tmp_path / "store", Registry.from_yaml(config)):
        r = run_cli(
            "materialize", "--config", str(config), "--data-dir", str(tmp_path / "store"),
            env={"FS_SERVER_URL": "", "FS_HTTP_PORT": "9"},
        )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "no feature-serving server answered at http://127.0.0.1:9 (FS_HOST / FS_HTTP_PORT" in (
        r.stderr
    )
